//! `brig rm`: removes sandboxes' state (`-f` stops running ones first).

use std::time::Duration;

use clap::Args;

use crate::cli::CliError;

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Stop running sandboxes first (SIGKILL).
    #[arg(short, long)]
    force: bool,
    /// Sandboxes (names or ids).
    #[arg(required = true)]
    sandboxes: Vec<String>,
}

pub fn run(args: RmArgs) -> Result<i32, CliError> {
    let home = super::home()?;
    let mut failed = None;
    for name in &args.sandboxes {
        let result = super::resolve(&home, name).and_then(|sb| {
            if sb.is_live() {
                if !args.force {
                    return Err(CliError::new(format!(
                        "cannot remove running sandbox {name}: stop it first or use brig rm -f"
                    )));
                }
                super::stop::stop(&sb, Duration::ZERO)?;
            }
            sb.remove().map_err(|e| CliError::new(e.to_string()))
        });
        match result {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("brig: {e}");
                failed = Some(e);
            }
        }
    }
    crate::sandbox::runtime::sweep_stale();
    // Each failure was reported above; docker exits 1 when any did.
    Ok(if failed.is_some() { 1 } else { 0 })
}
