//! Harness for tests that need KVM (`harness = false` test targets).
//!
//! A test binary that needs KVM calls [`run_tests`]. Where this host's `/dev/kvm` can run
//! guests (hardware KVM), the tests run here. Where it cannot (missing, or PVM, as on the
//! development machines), the binary re-runs itself under `scripts/with-kvm`, which provides
//! a real `/dev/kvm` inside a nested VM. `BRIG_TEST_KVM=host|nested|auto` forces a choice.
//! Nothing is skipped: if KVM cannot be had either way, the tests fail and say why.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use libtest_mimic::{Arguments, Failed, Trial};

/// The repository root (where scripts/ lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True when this host's /dev/kvm is hardware KVM we can open.
fn host_kvm_usable() -> bool {
    !Path::new("/sys/module/kvm_pvm").exists()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// Runs `tests`, under scripts/with-kvm when this host needs it.
pub fn run_tests(tests: Vec<Trial>) -> ! {
    run_tests_with(|| {}, tests)
}

/// As [`run_tests`], with `prepare` run on this host first (not inside the nested VM): for
/// fixtures that are slow or need the network, such as debootstrap.
pub fn run_tests_with(prepare: fn(), tests: Vec<Trial>) -> ! {
    let args = Arguments::from_args();
    let mode = std::env::var("BRIG_TEST_KVM").unwrap_or_else(|_| "auto".into());
    let inside = std::env::var_os("BRIG_KVM_MODE").is_some();
    let reexec = !inside
        && !args.list
        && match mode.as_str() {
            "host" => false,
            "nested" => true,
            _ => !host_kvm_usable(),
        };
    if !inside && !args.list {
        prepare();
    }
    if reexec {
        let exe = std::env::current_exe().expect("current_exe");
        let status = Command::new(repo_root().join("scripts/with-kvm"))
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .status()
            .unwrap_or_else(|e| panic!("running scripts/with-kvm: {e}"));
        std::process::exit(status.code().unwrap_or(125));
    }
    let mut args = args;
    // microVMs under nested TCG are slow: one at a time unless asked otherwise.
    if inside && args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    libtest_mimic::run(&args, tests).exit()
}

/// A test case as a plain function returning an error message on failure.
pub fn trial(name: &str, f: fn() -> Result<(), String>) -> Trial {
    Trial::test(name, move || f().map_err(Failed::from))
}

/// Runs brig with `args` and returns its output.
pub fn brig(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_brig"))
        .args(args)
        .output()
        .expect("running brig")
}

/// Fails with a readable report unless `cond` holds.
pub fn check(cond: bool, what: &str, out: &Output) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(format!(
            "{what}\n  status: {:?}\n  stdout: {:?}\n  stderr: {:?}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
