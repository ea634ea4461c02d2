//! `brig stop`: the image's StopSignal (default SIGTERM) to the main workload, SIGKILL after
//! the grace period, and as a last resort the VMM process itself.

use std::time::Duration;

use clap::Args;
use rustix::process::{pidfd_send_signal, Signal};

use crate::sandbox::control;
use crate::sandbox::runtime::{self, vsock_socket_of};
use crate::sandbox::state::Sandbox;

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait for the workload to stop before killing it.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u64,
    /// Sandboxes (names or ids).
    #[arg(required = true)]
    sandboxes: Vec<String>,
}

/// Ends the process that holds the sandbox's VM (its VMM, or a `brig cp` maintenance VM):
/// SIGKILL through a pidfd for the pid recorded in the runtime directory, opened while that
/// process holds the runtime lock (see `runtime::holder_pidfd`). A pid could be reused between
/// the check and the kill; the pidfd cannot, so the signal reaches the holder or no one.
pub fn kill_vmm(sandbox: &Sandbox) -> bool {
    if let Some(pidfd) = runtime::holder_pidfd(&sandbox.id) {
        // ESRCH: it ended by itself meanwhile, which is what we want.
        let _ = pidfd_send_signal(&pidfd, Signal::KILL);
    }
    sandbox.wait_gone(Duration::from_secs(10))
}

/// Stops one sandbox (nothing to do when it is not running).
pub fn stop(sandbox: &Sandbox, grace: Duration) -> anyhow::Result<()> {
    if !sandbox.is_running() {
        return Ok(());
    }
    // As docker delivers a stop to a paused container: it is resumed to receive it.
    crate::sandbox::pause::resume_if_paused(sandbox, sandbox.short_id())?;
    let config = sandbox.config()?;
    let sig = control::parse_signal(&config.stop_signal).unwrap_or(Signal::TERM.as_raw());
    let socket = vsock_socket_of(&sandbox.id);
    let _ = control::kill(&socket, sig);
    if sandbox.wait_gone(grace) {
        return Ok(());
    }
    let _ = control::kill(&socket, Signal::KILL.as_raw());
    if sandbox.wait_gone(Duration::from_secs(5)) || kill_vmm(sandbox) {
        return Ok(());
    }
    Err(anyhow::anyhow!(
        "sandbox {} did not stop",
        sandbox.short_id()
    ))
}

pub fn run(args: StopArgs) -> anyhow::Result<i32> {
    let home = super::home()?;
    let mut failed = None;
    for name in &args.sandboxes {
        match super::resolve(&home, name).and_then(|s| stop(&s, Duration::from_secs(args.time))) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("brig: {e}");
                failed = Some(e);
            }
        }
    }
    // Each failure was reported above; docker exits 1 when any did.
    Ok(if failed.is_some() { 1 } else { 0 })
}
