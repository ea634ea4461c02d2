//! Real programs' own test suites under brig against runc (issue 10): CPython's regression
//! tests and Go's standard library tests for the kernel interface, run by
//! scripts/compat-suites --quick in this binary's nested VM.
//! Fails when a test that passes under runc fails under brig and is not listed, with its
//! reason, in tests/compat/suite-differences.txt. Needs KVM (see common/kvm.rs).

mod common;

use std::process::Command;
use std::sync::OnceLock;

use common::kvm::{repo_root, run_tests_with, trial, Limits};

static IMAGE_TAR: OnceLock<String> = OnceLock::new();

/// On this host, before the nested VM: the image needs the network (debootstrap).
fn prepare() {
    let out = Command::new(repo_root().join("scripts/compat-suites"))
        .arg("--prepare")
        .output()
        .expect("running scripts/compat-suites --prepare");
    assert!(
        out.status.success(),
        "scripts/compat-suites --prepare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Handed to the nested VM through the environment (the same file, seen over 9p there).
    std::env::set_var(
        "BRIG_SUITES_IMAGE_TAR",
        String::from_utf8_lossy(&out.stdout).trim(),
    );
    // The image lives twice on the nested VM's tmpfs (brig's store, runc's rootfs) next to a
    // 1 GiB guest.
    if std::env::var_os("BRIG_WITH_KVM_MEM").is_none() {
        std::env::set_var("BRIG_WITH_KVM_MEM", "4096");
    }
}

fn image_tar() -> &'static str {
    IMAGE_TAR.get_or_init(|| {
        std::env::var("BRIG_SUITES_IMAGE_TAR").expect("BRIG_SUITES_IMAGE_TAR (set by prepare)")
    })
}

/// Every module of scripts/compat-suites --quick under runc and brig; no unlisted difference.
fn suites_pass_under_brig_as_under_runc() -> Result<(), String> {
    let out = Command::new(repo_root().join("scripts/compat-suites"))
        .args(["--check", "--quick", "--brig"])
        .arg(common::kvm::brig_exe())
        .arg("--image-tar")
        .arg(image_tar())
        .output()
        .map_err(|e| format!("running scripts/compat-suites: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    if !out.status.success() {
        return Err(format!(
            "scripts/compat-suites --check exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // The table must hold real results: every module ran on both sides.
    if text.contains("no results") || !text.contains("| total") {
        return Err("a module gave no results".into());
    }
    Ok(())
}

fn main() {
    run_tests_with(
        Limits::secs(2400, 2700),
        prepare,
        || {},
        vec![trial(
            "suites_pass_under_brig_as_under_runc",
            suites_pass_under_brig_as_under_runc,
        )],
    )
}
