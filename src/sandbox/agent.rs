//! The host side of the guest agent's protocol (see the `brig-protocol` crate): accept the
//! agent's connection, send the RunSpec, relay stdin, stdout, stderr, signals and terminal
//! size, and collect how the workload ended.
//!
//! One poll loop, no threads: the agent's connection, the host's stdin (when forwarded), the
//! relayed signals, and the VM's exit event. The VM ending, a deadline passing, or a
//! malformed frame end the session with a reason the caller can report.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use brig_protocol::{
    encode, Decoder, ExecErrorKind, ExitStatus, Message, RunSpec, MAX_DATA, PROTOCOL_VERSION,
};

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
    /// The workload's exit status arrived.
    pub exited: Option<Instant>,
}

/// What the session relays besides the agent's connection.
pub struct Relay<'a> {
    /// Forward this fd's bytes as stdin (EOF closes the workload's stdin).
    pub stdin: Option<RawFd>,
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
    /// Relayed signals (SIGWINCH becomes a resize from `winsize`).
    pub signals: Option<&'a SignalPipe>,
    /// Current terminal size, when the workload has a TTY.
    pub winsize: Option<&'a dyn Fn() -> Option<(u16, u16)>>,
    /// Called when the workload has started.
    pub on_started: Option<&'a mut dyn FnMut()>,
}

fn poll(fds: &mut [libc::pollfd], deadline: Option<Instant>) -> io::Result<()> {
    let ms = deadline.map_or(-1, |d| {
        d.saturating_duration_since(Instant::now())
            .as_millis()
            .min(i32::MAX as u128) as i32
    });
    // SAFETY: fds is a valid slice of pollfd.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

fn pfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Waits for the agent to connect to `listener`; `Err(end)` if the VM ends or time runs out.
pub fn accept(
    listener: &UnixListener,
    vm_exit: RawFd,
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
        let mut fds = [pfd(listener.as_raw_fd()), pfd(vm_exit)];
        poll(&mut fds, deadline).map_err(|e| SessionEnd::Broken(e.to_string()))?;
        if fds[1].revents != 0 {
            return Err(SessionEnd::VmEnded);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(SessionEnd::TimedOut);
        }
    }
}

/// Runs one workload over `conn`: waits for Hello, sends `spec`, relays until the end.
pub fn run_session(
    mut conn: UnixStream,
    spec: RunSpec,
    relay: Relay<'_>,
    vm_exit: RawFd,
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
    let mut buf = vec![0u8; MAX_DATA + 64];
    let mut sent_spec = false;
    let mut spec = Some(spec);
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
                    let spec = spec.take().unwrap_or_default();
                    if let Err(e) = send(&mut conn, &Message::Run(Box::new(spec))) {
                        return SessionEnd::Broken(format!("sending the run request: {e}"));
                    }
                    sent_spec = true;
                }
                Message::Started { uptime_ns, .. } => {
                    times.started = Some(Instant::now());
                    times.started_uptime_ns = uptime_ns;
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
                    return SessionEnd::Exited(status);
                }
                Message::ExecFailed { kind, message } => {
                    return SessionEnd::ExecFailed { kind, message }
                }
                other => {
                    return SessionEnd::Broken(format!(
                        "unexpected frame from the guest agent: {other:?}"
                    ))
                }
            }
        }

        let mut fds = vec![pfd(conn.as_raw_fd()), pfd(vm_exit)];
        let sig_idx = signals.map(|s| {
            fds.push(pfd(s.fd()));
            fds.len() - 1
        });
        let stdin_idx = stdin.filter(|_| sent_spec).map(|fd| {
            fds.push(pfd(fd));
            fds.len() - 1
        });
        if let Err(e) = poll(&mut fds, deadline) {
            return SessionEnd::Broken(e.to_string());
        }
        let conn_ready = fds[0].revents != 0;
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
        if fds[1].revents != 0 && !conn_ready {
            return SessionEnd::VmEnded;
        }
        if let (Some(i), Some(pipe)) = (sig_idx, signals) {
            if fds[i].revents != 0 {
                for sig in pipe.drain() {
                    let msg = if sig == libc::SIGWINCH {
                        match winsize.and_then(|w| w()) {
                            Some((rows, cols)) => Message::Resize { rows, cols },
                            None => continue,
                        }
                    } else {
                        Message::Signal(sig)
                    };
                    if sent_spec {
                        let _ = send(&mut conn, &msg);
                    }
                }
            }
        }
        if let (Some(i), Some(fd)) = (stdin_idx, stdin) {
            if fds[i].revents != 0 {
                // SAFETY: buf is valid for MAX_DATA bytes; fd is the caller's open stdin.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), MAX_DATA) };
                if n > 0 {
                    let _ = send(&mut conn, &Message::Stdin(buf[..n as usize].to_vec()));
                } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted
                {
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

/// How long to wait for the VM to go away after the workload's status arrived.
pub const VM_EXIT_GRACE: Duration = Duration::from_secs(10);
