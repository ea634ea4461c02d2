//! `brig rm`: removes sandboxes' state (`-f` stops running ones first).

use std::time::Duration;

use clap::Args;

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Stop running sandboxes first (SIGKILL).
    #[arg(short, long)]
    force: bool,
    /// Sandboxes (names or ids).
    #[arg(required = true)]
    sandboxes: Vec<String>,
}

pub fn run(args: RmArgs) -> anyhow::Result<i32> {
    let home = super::home()?;
    let mut failed = None;
    for name in &args.sandboxes {
        let result = super::resolve(&home, name).and_then(|sb| {
            sb.settle(Duration::from_secs(5));
            if sb.is_live() {
                if !args.force {
                    anyhow::bail!(if sb.is_running() {
                        format!(
                            "cannot remove running sandbox {name}: stop it first or use brig rm -f"
                        )
                    } else {
                        format!("sandbox {name} is in use (brig cp); wait, or use brig rm -f")
                    });
                }
                super::stop::stop(&sb, Duration::ZERO)?;
                if !sb.is_running() && sb.is_live() && !super::stop::kill_vmm(&sb) {
                    anyhow::bail!("sandbox {name} did not stop");
                }
            }
            sb.remove().map_err(anyhow::Error::from)
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
