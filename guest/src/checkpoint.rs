//! Checkpoints: the agent's part in saving a running sandbox and resuming it later.
//!
//! The host asks on an exec connection ([`Message::Checkpoint`]). The agent parks the main
//! session: it takes the lock of the main connection's writer, so the threads relaying the
//! workload's output wait (the workload itself runs on until the VM stops, then blocks on a
//! full pipe at most), listens on [`RESTORE_PORT`], sends [`Message::Parked`] and closes the
//! connection, and answers Done. The host closes its side of both, waits until the VM holds
//! no connection, and saves it. A restored copy is reached on [`RESTORE_PORT`] with a
//! Restore (new entropy, the clock, its disks and network: see [`crate::restore`]); the
//! agent says Hello there, makes that connection the main one and lets the output go on,
//! so that the workload's output and its exit status reach the resumed sandbox.
//!
//! Only a session with nothing coming from the host can be parked: no open stdin, no
//! terminal (whose input relay holds the terminal, which would hang up on the workload).

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, OnceLock};

use brig_protocol::{read_message, write_message, Message, RESTORE_PORT};

use crate::exec::HostWriter;
use crate::{restore, sys, vsock};

/// The main session, once its workload runs.
struct Main {
    writer: HostWriter,
    /// Why it cannot be parked, if it cannot.
    refusal: Option<&'static str>,
}

static MAIN: OnceLock<Main> = OnceLock::new();
/// A checkpoint is being taken (one at a time).
static PARKING: AtomicBool = AtomicBool::new(false);

/// Records the main session's writer (its workload now runs); `stdin` and `tty` as its
/// RunSpec says.
pub fn register(writer: HostWriter, stdin: bool, tty: bool) {
    let refusal = if tty {
        Some("a sandbox with a terminal (-t)")
    } else if stdin {
        Some("a sandbox with an open stdin (-i)")
    } else {
        None
    };
    let _ = MAIN.set(Main { writer, refusal });
}

/// Parks the main session (see the module's comment) and returns once it is parked, with the
/// thread that waits for the restore running; `Err` says why not, and nothing changed.
pub fn park() -> Result<(), String> {
    let main = MAIN.get().ok_or("no workload runs in the sandbox")?;
    if let Some(why) = main.refusal {
        return Err(format!("cannot checkpoint {why}"));
    }
    if crate::inflight::busy() {
        return Err("cannot checkpoint while an exec runs in the sandbox".into());
    }
    if PARKING.swap(true, Ordering::SeqCst) {
        return Err("a checkpoint is already being taken".into());
    }
    let listener = match vsock::listen(RESTORE_PORT) {
        Ok(l) => l,
        Err(e) => {
            PARKING.store(false, Ordering::SeqCst);
            return Err(format!("listening on {RESTORE_PORT}: {e}"));
        }
    };
    let (parked, told) = mpsc::channel();
    std::thread::spawn(move || hold(main, listener, parked));
    match told.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the parking thread ended".into()),
    }
}

/// Holds the main writer from the Parked frame until a restored copy takes it over.
fn hold(main: &'static Main, listener: File, parked: mpsc::Sender<Result<(), String>>) {
    let mut writer = main.writer.lock().unwrap_or_else(|p| p.into_inner());
    let closed = write_message(&mut *writer, &Message::Parked)
        .map_err(|e| format!("telling the host: {e}"))
        .and_then(|()| {
            // The main connection closes (the input relay's copy ends when the host closes).
            let placeholder = File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
            drop(std::mem::replace(&mut *writer, placeholder));
            Ok(())
        });
    let failed = closed.is_err();
    let _ = parked.send(closed);
    if failed {
        PARKING.store(false, Ordering::SeqCst);
        return;
    }
    // From here the VM is saved and stopped; a copy restored from it goes on below.
    match restore::await_restore(&listener) {
        Ok(conn) => {
            let hello = Message::Hello {
                version: brig_protocol::PROTOCOL_VERSION,
                uptime_ns: sys::uptime_ns(),
            };
            let mut conn = conn;
            if write_message(&mut conn, &hello).is_ok() {
                if let Ok(reader) = conn.try_clone() {
                    std::thread::spawn(move || relay_signals(reader));
                }
                *writer = conn;
            }
        }
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "brig-init: resuming a checkpoint: {e}");
        }
    }
    drop(listener);
    PARKING.store(false, Ordering::SeqCst);
}

/// What the host sends on a resumed main connection: signals for the workload.
fn relay_signals(mut conn: File) {
    while let Ok(Some(msg)) = read_message(&mut conn) {
        if let Message::Signal(sig) = msg {
            let pid = crate::main_pid();
            if pid > 0 {
                let _ = sys::kill(pid, sig);
            }
        }
    }
}
