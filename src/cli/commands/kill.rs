//! `brig kill`: a signal (default SIGKILL) to a running sandbox's main workload.

use clap::Args;

use crate::sandbox::control;
use crate::sandbox::runtime::vsock_socket_of;

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send (name or number).
    #[arg(short = 's', long = "signal", default_value = "KILL")]
    signal: String,
    /// Sandboxes (names or ids).
    #[arg(required = true)]
    sandboxes: Vec<String>,
}

pub fn run(args: KillArgs) -> anyhow::Result<i32> {
    let sig = control::parse_signal(&args.signal)
        .ok_or_else(|| anyhow::anyhow!("invalid signal {:?}", args.signal))?;
    let home = super::home()?;
    for name in &args.sandboxes {
        let sb = super::resolve(&home, name)?;
        if !sb.is_running() {
            anyhow::bail!("sandbox {name} is not running");
        }
        // The signal goes through the guest agent: a paused sandbox is resumed to receive it,
        // as docker does.
        crate::sandbox::pause::resume_if_paused(&sb, name)?;
        control::kill(&vsock_socket_of(&sb.id), sig).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        println!("{name}");
    }
    Ok(0)
}
