//! Builds the guest init (`guest/`, a static x86_64 binary) and hands it to brig, which embeds
//! it: one `brig` binary carries everything a microVM needs besides the kernel.
//!
//! The guest is built by a nested cargo in its own target directory (`target/guest`), with
//! `-C target-feature=+crt-static` and an explicit `--target`, so that the flag applies to the
//! guest alone and not to build scripts or proc macros. `BRIG_GUEST_INIT=/path/to/brig-init`
//! skips the build and embeds that file instead. The same build makes `brig-probe`, the static
//! probe `brig compare` runs on both sides (`BRIG_GUEST_PROBE=/path` embeds a prebuilt one;
//! with `BRIG_GUEST_INIT` and without it, an empty file, which `brig compare` refuses).
//! Beside the guest init goes its SHA-256 (`brig-init.sha256`), the agent build's identity
//! in a template's key.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let out = out_dir.join("brig-init");
    let probe_out = out_dir.join("brig-probe");
    println!("cargo:rerun-if-changed=guest/src");
    println!("cargo:rerun-if-changed=guest/Cargo.toml");
    println!("cargo:rerun-if-changed=protocol/src");
    println!("cargo:rerun-if-changed=protocol/Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-env-changed=BRIG_GUEST_INIT");
    println!("cargo:rerun-if-env-changed=BRIG_GUEST_PROBE");

    if let Ok(prebuilt) = env::var("BRIG_GUEST_INIT") {
        std::fs::copy(&prebuilt, &out)
            .unwrap_or_else(|e| panic!("BRIG_GUEST_INIT={prebuilt}: {e}"));
        write_digest(&out);
        match env::var("BRIG_GUEST_PROBE") {
            Ok(p) => std::fs::copy(&p, &probe_out)
                .map(|_| ())
                .unwrap_or_else(|e| panic!("BRIG_GUEST_PROBE={p}: {e}")),
            Err(_) => std::fs::write(&probe_out, b"").expect("writing an empty probe"),
        }
        return;
    }

    let target_dir = root.join("target").join("guest");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "brig-guest",
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // Only our own flags reach the guest build; nothing of the outer build's.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG")
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");
    let status = cmd.status().expect("running cargo for the guest init");
    assert!(status.success(), "building the guest init (guest/) failed");

    let built = target_dir.join(TARGET).join("release").join("brig-init");
    std::fs::copy(&built, &out).unwrap_or_else(|e| panic!("{}: {e}", built.display()));
    write_digest(&out);
    let probe = target_dir.join(TARGET).join("release").join("brig-probe");
    std::fs::copy(&probe, &probe_out).unwrap_or_else(|e| panic!("{}: {e}", probe.display()));
}

/// Writes `FILE.sha256` beside `file`: its SHA-256 in hex, which brig embeds as the guest
/// init's identity (a template's key) instead of hashing it on every run.
fn write_digest(file: &std::path::Path) {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut name = file.as_os_str().to_owned();
    name.push(".sha256");
    std::fs::write(&name, format!("{:x}", Sha256::digest(&bytes)))
        .unwrap_or_else(|e| panic!("writing the guest init's digest: {e}"));
}
