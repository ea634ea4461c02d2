//! The host side of the guest agent's protocol (see the `brig-protocol` crate): accept the
//! agent's connection, send the RunSpec, relay stdin, stdout, stderr, signals and terminal
//! size, and collect how the workload ended.
//!
//! One poll loop, no threads: the agent's connection, the host's stdin (when forwarded), the
//! relayed signals, and the VM's exit event. The VM ending, a deadline passing, or a
//! malformed frame end the session with a reason the caller can report.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use brig_protocol::{
    encode, Decoder, ExecErrorKind, ExitStatus, Message, RunSpec, MAX_DATA, PROTOCOL_VERSION,
};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::Signal;

use super::signals::SignalPipe;

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The workload ran and ended.
    Exited(ExitStatus),
    /// The workload could not be started.
    ExecFailed {
        kind: ExecErrorKind,
        message: String,
    },
    /// The VM ended before the workload's status arrived.
    VmEnded,
    /// The deadline passed.
    TimedOut,
    /// The agent broke the protocol or the connection failed.
    Broken(String),
    /// The agent parked the session for a checkpoint (see [`super::checkpoint`]); once the
    /// VM is saved, the run ends here.
    Parked,
}

/// Host-clock instants of the session's milestones.
#[derive(Debug, Clone, Default)]
pub struct SessionTimes {
    /// The agent said hello (its init started).
    pub hello: Option<Instant>,
    /// Guest uptime when the agent started, in ns.
    pub hello_uptime_ns: u64,
    /// The workload was spawned.
    pub started: Option<Instant>,
    /// Guest uptime when the workload was spawned, in ns.
    pub started_uptime_ns: u64,
    /// The agent's steps between the Run and the spawn (name, guest uptime in ns), as the
    /// guest reported them: for display only, bounded and sanitized on receipt.
    pub guest_phases: Vec<(String, u64)>,
    /// The workload's exit status arrived.
    pub exited: Option<Instant>,
    /// Guest uptime when the agent reaped the workload, in ns.
    pub exited_uptime_ns: u64,
}

/// What the session relays besides the agent's connection.
pub struct Relay<'a> {
    /// Forward this fd's bytes as stdin (EOF closes the workload's stdin).
    pub stdin: Option<BorrowedFd<'a>>,
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
    /// Relayed signals (SIGWINCH becomes a resize from `winsize`).
    pub signals: Option<&'a SignalPipe>,
    /// Current terminal size, when the workload has a TTY.
    pub winsize: Option<&'a dyn Fn() -> Option<(u16, u16)>>,
    /// Called when the workload has started.
    pub on_started: Option<&'a mut dyn FnMut()>,
}

/// Waits until one of `fds` is readable, or `deadline` passes; EINTR is a wake-up.
fn poll(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> io::Result<()> {
    let timeout = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        })
    });
    match rustix::event::poll(fds, timeout.as_ref()) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn readable(fd: &impl AsFd) -> PollFd<'_> {
    PollFd::new(fd, PollFlags::IN)
}

/// Waits for the agent to connect to `listener`; `Err(end)` if the VM ends or time runs out.
pub fn accept(
    listener: &UnixListener,
    vm_exit: BorrowedFd<'_>,
    deadline: Option<Instant>,
) -> Result<UnixStream, SessionEnd> {
    listener
        .set_nonblocking(true)
        .map_err(|e| SessionEnd::Broken(e.to_string()))?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(|e| SessionEnd::Broken(e.to_string()))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(SessionEnd::Broken(format!("accepting the agent: {e}"))),
        }
        let mut fds = [readable(listener), readable(&vm_exit)];
        poll(&mut fds, deadline).map_err(|e| SessionEnd::Broken(e.to_string()))?;
        if !fds[1].revents().is_empty() {
            return Err(SessionEnd::VmEnded);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(SessionEnd::TimedOut);
        }
    }
}

/// Runs one workload over `conn`: waits for Hello, sends `spec`, relays until the end.
/// `vm_exit` becomes readable when the VM ends (none for `brig exec`, where the connection
/// closing is how a stopped sandbox shows).
pub fn run_session(
    conn: UnixStream,
    spec: RunSpec,
    relay: Relay<'_>,
    vm_exit: Option<BorrowedFd<'_>>,
    deadline: Option<Instant>,
    times: &mut SessionTimes,
) -> SessionEnd {
    resume_session(conn, None, Some(spec), relay, vm_exit, deadline, times)
}

/// As [`run_session`], where `hello` (when given) is the agent's Hello, already read from
/// `conn` (a VM restored from a template: see [`super::templates::reconnect`]). Without
/// `spec`, the session resumes a checkpoint: the workload runs already.
pub fn resume_session(
    mut conn: UnixStream,
    hello: Option<Message>,
    spec: Option<RunSpec>,
    relay: Relay<'_>,
    vm_exit: Option<BorrowedFd<'_>>,
    deadline: Option<Instant>,
    times: &mut SessionTimes,
) -> SessionEnd {
    let Relay {
        mut stdin,
        stdout,
        stderr,
        signals,
        winsize,
        mut on_started,
    } = relay;
    let mut decoder = Decoder::new();
    if let Some(hello) = hello {
        decoder.feed(&encode(&hello));
    }
    let mut buf = vec![0u8; MAX_DATA + 64];
    let mut sent_spec = false;
    // Signals relayed before the run request went out (the VM was still booting): sent
    // right after it, so that a `kill` just after a start is not lost.
    let mut early_signals: Vec<Message> = Vec::new();
    let mut spec = spec;
    let send = |conn: &mut UnixStream, msg: &Message| conn.write_all(&encode(msg));

    loop {
        // Handle every complete frame already received.
        loop {
            let msg = match decoder.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    return SessionEnd::Broken(format!("malformed frame from the guest agent: {e}"))
                }
            };
            match msg {
                Message::Hello { version, uptime_ns } if !sent_spec => {
                    if version != PROTOCOL_VERSION {
                        return SessionEnd::Broken(format!(
                            "the guest agent speaks protocol {version}, this brig speaks {PROTOCOL_VERSION}"
                        ));
                    }
                    times.hello = Some(Instant::now());
                    times.hello_uptime_ns = uptime_ns;
                    match spec.take() {
                        Some(spec) => {
                            if let Err(e) = send(&mut conn, &Message::Run(Box::new(spec))) {
                                return SessionEnd::Broken(format!("sending the run request: {e}"));
                            }
                        }
                        // A resumed checkpoint: the workload runs already.
                        None => {
                            times.started = Some(Instant::now());
                            times.started_uptime_ns = uptime_ns;
                            if let Some(f) = on_started.as_mut() {
                                f();
                            }
                        }
                    }
                    sent_spec = true;
                    for msg in early_signals.drain(..) {
                        let _ = send(&mut conn, &msg);
                    }
                }
                Message::Started {
                    uptime_ns, phases, ..
                } => {
                    times.started = Some(Instant::now());
                    times.started_uptime_ns = uptime_ns;
                    times.guest_phases = sanitize_phases(phases);
                    if let Some(f) = on_started.as_mut() {
                        f();
                    }
                }
                Message::Stdout(data) => {
                    let _ = stdout.write_all(&data).and_then(|_| stdout.flush());
                }
                Message::Stderr(data) => {
                    let _ = stderr.write_all(&data).and_then(|_| stderr.flush());
                }
                Message::Exit(status) => {
                    times.exited = Some(Instant::now());
                    times.exited_uptime_ns = status.uptime_ns;
                    return SessionEnd::Exited(status);
                }
                Message::ExecFailed { kind, message } => {
                    return SessionEnd::ExecFailed { kind, message }
                }
                Message::Parked => return SessionEnd::Parked,
                other => {
                    return SessionEnd::Broken(format!(
                        "unexpected frame from the guest agent: {other:?}"
                    ))
                }
            }
        }

        let (conn_ready, vm_ended, signalled, stdin_ready) = {
            let mut fds = vec![readable(&conn)];
            let vm_idx = vm_exit.as_ref().map(|fd| {
                fds.push(readable(fd));
                fds.len() - 1
            });
            let sig_idx = signals.map(|s| {
                fds.push(readable(s));
                fds.len() - 1
            });
            let stdin_idx = stdin.as_ref().filter(|_| sent_spec).map(|fd| {
                fds.push(readable(fd));
                fds.len() - 1
            });
            if let Err(e) = poll(&mut fds, deadline) {
                return SessionEnd::Broken(e.to_string());
            }
            let ready = |i: Option<usize>| i.is_some_and(|i| !fds[i].revents().is_empty());
            (
                ready(Some(0)),
                ready(vm_idx),
                ready(sig_idx),
                ready(stdin_idx),
            )
        };
        if conn_ready {
            match conn.read(&mut buf) {
                Ok(0) => {
                    return SessionEnd::Broken(
                        "the guest agent closed the connection before the workload's exit status"
                            .into(),
                    )
                }
                Ok(n) => decoder.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return SessionEnd::Broken(format!("reading from the guest agent: {e}")),
            }
        }
        // The VM's end counts once everything it sent has been read.
        if vm_ended && !conn_ready {
            return SessionEnd::VmEnded;
        }
        if let Some(pipe) = signals.filter(|_| signalled) {
            for sig in pipe.drain() {
                let msg = if sig == Signal::WINCH.as_raw() {
                    match winsize.and_then(|w| w()) {
                        Some((rows, cols)) => Message::Resize { rows, cols },
                        None => continue,
                    }
                } else {
                    Message::Signal(sig)
                };
                if sent_spec {
                    let _ = send(&mut conn, &msg);
                } else if early_signals.len() < 64 {
                    early_signals.push(msg);
                }
            }
        }
        if let Some(fd) = stdin.filter(|_| stdin_ready) {
            match rustix::io::read(fd, &mut buf[..MAX_DATA]) {
                Ok(n) if n > 0 => {
                    let _ = send(&mut conn, &Message::Stdin(buf[..n].to_vec()));
                }
                Err(rustix::io::Errno::INTR) => {}
                // End of input (or an unreadable stdin) closes the workload's stdin.
                _ => {
                    let _ = send(&mut conn, &Message::Stdin(Vec::new()));
                    stdin = None;
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return SessionEnd::TimedOut;
        }
    }
}

/// The most agent phases kept for `--timings`, and the longest name: the guest is hostile.
const MAX_PHASES: usize = 16;
const MAX_PHASE_NAME: usize = 32;

/// A guest's phase list made safe to print: at most [`MAX_PHASES`] entries, names cut to
/// [`MAX_PHASE_NAME`] characters of printable ASCII.
fn sanitize_phases(phases: Vec<(String, u64)>) -> Vec<(String, u64)> {
    phases
        .into_iter()
        .take(MAX_PHASES)
        .map(|(name, t)| {
            let name = name
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .take(MAX_PHASE_NAME)
                .collect();
            (name, t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_phase_list_is_bounded_and_printable() {
        let mut phases = vec![("root\x1b[2Jmounted\n".to_string(), 5)];
        phases.extend((0..100).map(|i| ("x".repeat(1000), i)));
        let kept = sanitize_phases(phases);
        assert_eq!(kept.len(), MAX_PHASES);
        assert_eq!(kept[0], ("root[2Jmounted".to_string(), 5));
        assert_eq!(kept[1].0.len(), MAX_PHASE_NAME);
    }
}
