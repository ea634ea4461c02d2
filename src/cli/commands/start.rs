//! `brig start`: runs stopped sandboxes again, as docker's `start` does: the same config,
//! the files their workload wrote still on their overlay, their log appended to.

use clap::Args;

use crate::sandbox::lifecycle;

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Attach to the workload's output and return its exit code (one sandbox).
    #[arg(short, long)]
    attach: bool,
    /// With --attach: forward brig's stdin to the workload.
    #[arg(short, long)]
    interactive: bool,
    /// Resume this checkpoint (`brig checkpoint create`) instead of starting afresh: the
    /// workload goes on where it was (one sandbox).
    #[arg(long, value_name = "CHECKPOINT")]
    checkpoint: Option<String>,
    /// Sandboxes (names or ids).
    #[arg(required = true)]
    sandboxes: Vec<String>,
}

pub fn run(args: StartArgs) -> anyhow::Result<i32> {
    if (args.attach || args.interactive) && args.sandboxes.len() > 1 {
        anyhow::bail!("you cannot start and attach multiple sandboxes at once");
    }
    let home = super::home()?;
    if let Some(checkpoint) = &args.checkpoint {
        return resume(&home, &args, checkpoint);
    }
    let mut failed = false;
    for name in &args.sandboxes {
        let sb = super::resolve(&home, name)?;
        if crate::sandbox::pause::is_paused(&sb) {
            anyhow::bail!("cannot start a paused sandbox, try brig unpause instead");
        }
        let created = match lifecycle::reopen(sb) {
            Ok(Some(c)) => c,
            // Running already: nothing to do (docker prints the name).
            Ok(None) => {
                println!("{name}");
                continue;
            }
            Err(e) => {
                eprintln!("brig: {name}: {e}");
                failed = true;
                continue;
            }
        };
        if args.attach || args.interactive {
            return Ok(created.run(args.interactive, false, None, None)??);
        }
        match created.detach(None) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("brig: {name}: {e}");
                failed = true;
            }
        }
    }
    // Each failure was reported above; docker exits 1 when any did.
    Ok(i32::from(failed))
}

/// `start --checkpoint`: brig's errors are one line and 125, as docker's.
fn resume(home: &std::path::Path, args: &StartArgs, checkpoint: &str) -> anyhow::Result<i32> {
    let [name] = args.sandboxes.as_slice() else {
        anyhow::bail!("--checkpoint starts one sandbox");
    };
    if args.interactive {
        anyhow::bail!("--checkpoint resumes a sandbox without stdin (-i)");
    }
    let sb = super::resolve(home, name)?;
    if sb.is_running() {
        anyhow::bail!("sandbox {name} is running; stop it before starting it from a checkpoint");
    }
    let code = super::checkpoint::resume(sb, name, checkpoint, args.attach)?;
    if !args.attach {
        println!("{name}");
    }
    Ok(code)
}
