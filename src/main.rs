//! The `brig` binary: parse the command line, dispatch into the library, and turn an error
//! into one line on stderr and docker's exit codes (the workload's own code; 125 for brig's
//! errors).

use std::process::ExitCode;

fn main() -> ExitCode {
    brig::cli::init_logging();
    // `brig-runc` (a link to brig) and `brig oci`: the OCI runtime's own command line.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if brig::cli::is_oci(&args) {
        return ExitCode::from(u8::try_from(brig::cli::run_oci(args)).unwrap_or(1));
    }
    let code = match brig::cli::run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("brig: {}", brig::cli::one_line(&err));
            brig::cli::exit_code(&err)
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(brig::cli::EXIT_BRIG_ERROR as u8))
}
