//! `brig pause` / `brig unpause`: a running sandbox's VMM frozen and thawed (docker's names;
//! see `sandbox::pause`).

use clap::Args;

use crate::sandbox::pause;

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Sandboxes (names or ids).
    #[arg(required = true)]
    sandboxes: Vec<String>,
}

/// `brig pause` (`pause`) or `brig unpause`.
pub fn run(args: PauseArgs, pause: bool) -> anyhow::Result<i32> {
    let home = super::home()?;
    let mut failed = false;
    for name in &args.sandboxes {
        let result = super::resolve(&home, name).and_then(|sb| {
            if pause {
                pause::pause(&sb, name)?;
            } else {
                pause::unpause(&sb, name)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("brig: {}", crate::cli::one_line(&e));
                failed = true;
            }
        }
    }
    // Each failure was reported above; docker exits 1 when any did.
    Ok(i32::from(failed))
}
