//! brig: run OCI container images in KVM microVMs.
//!
//! This file is thin: parse the command line, dispatch, turn errors into one line on stderr
//! and docker's exit codes (the workload's own code; 125 for brig's errors).

mod arch;
mod cli;
mod devices;
mod image;
mod initramfs;
mod sandbox;
mod vmm;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::init_logging();
    let code = match cli::run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("brig: {err}");
            err.exit_code()
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(cli::EXIT_BRIG_ERROR as u8))
}

/// Where `kernels/build.sh` leaves the guest kernel brig boots by default.
pub fn kernel_cache_path() -> std::path::PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| "/root/.cache".into());
    cache.join("brig/kernels/current/vmlinux")
}
