//! Host-initiated connections to a running sandbox's guest agent, through its VMM's vsock
//! socket (Firecracker's convention: `CONNECT <port>\n`, answered `OK <host port>\n`), and
//! the one-shot requests made over them: signal the main workload, sample resource usage.
//! `exec` and `cp` use the same connections for longer exchanges.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use brig_protocol::{
    read_message, write_message, Message, ResourceUpdate, Stats, EXEC_PORT, PROTOCOL_VERSION,
};

/// A request to a running sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The VMM's socket does not answer.
    #[error("cannot reach the sandbox's VMM: {0}")]
    Connect(io::Error),
    /// The guest agent does not accept connections (yet, or any more).
    #[error("the guest agent did not accept the connection: {0}")]
    Refused(String),
    /// The agent answered something unexpected.
    #[error("the guest agent: {0}")]
    Protocol(String),
    /// The agent reported a failure.
    #[error("{0}")]
    Failed(String),
}

/// Reads the VMM's one-line answer to CONNECT, byte by byte (nothing of the stream after it).
fn read_line(stream: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        match stream.read(&mut b)? {
            0 => break,
            _ if b[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            _ => line.push(b[0]),
        }
    }
    Err(io::ErrorKind::UnexpectedEof.into())
}

/// Opens a connection to the agent's `port`, retrying while the agent is not listening yet
/// (it starts listening once the main workload runs), until `wait` has passed.
pub fn connect(socket: &Path, port: u32, wait: Duration) -> Result<UnixStream, ControlError> {
    connect_while(socket, port, wait, &|| true)
}

/// As [`connect`], but gives up as soon as `alive` says the VM behind `socket` is gone
/// (a restored guest that crashed does not keep its caller waiting for `wait`).
pub fn connect_while(
    socket: &Path,
    port: u32,
    wait: Duration,
    alive: &dyn Fn() -> bool,
) -> Result<UnixStream, ControlError> {
    let deadline = Instant::now() + wait;
    loop {
        let mut stream = UnixStream::connect(socket).map_err(ControlError::Connect)?;
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .map_err(ControlError::Connect)?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let answer = read_line(&mut stream);
        stream.set_read_timeout(None).ok();
        match answer {
            Ok(line) if line.starts_with("OK ") => return Ok(stream),
            Ok(line) => return Err(ControlError::Refused(line)),
            Err(e) if Instant::now() >= deadline || !alive() => {
                return Err(ControlError::Refused(e.to_string()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Waits for the agent's Hello on a fresh connection.
pub fn expect_hello(stream: &mut UnixStream) -> Result<(), ControlError> {
    match read_message(stream) {
        Ok(Some(Message::Hello { version, .. })) if version == PROTOCOL_VERSION => Ok(()),
        Ok(Some(Message::Hello { version, .. })) => Err(ControlError::Protocol(format!(
            "speaks protocol {version}, this brig speaks {PROTOCOL_VERSION}"
        ))),
        Ok(other) => Err(ControlError::Protocol(format!(
            "expected hello, got {other:?}"
        ))),
        Err(e) => Err(ControlError::Protocol(e.to_string())),
    }
}

/// Sends one request and returns the agent's answer.
fn request(socket: &Path, msg: &Message) -> Result<Message, ControlError> {
    let mut stream = connect(socket, EXEC_PORT, Duration::from_secs(10))?;
    expect_hello(&mut stream)?;
    write_message(&mut stream, msg).map_err(|e| ControlError::Protocol(e.to_string()))?;
    match read_message(&mut stream) {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(ControlError::Protocol(
            "closed the connection without answering".into(),
        )),
        Err(e) => Err(ControlError::Protocol(e.to_string())),
    }
}

/// Sends `signal` to the sandbox's main workload.
pub fn kill(socket: &Path, signal: i32) -> Result<(), ControlError> {
    match request(socket, &Message::Kill { signal })? {
        Message::Done { error: None } => Ok(()),
        Message::Done { error: Some(e) } => Err(ControlError::Failed(e)),
        other => Err(ControlError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// Changes the limits of the sandbox's workloads.
pub fn update(socket: &Path, update: &ResourceUpdate) -> Result<(), ControlError> {
    match request(socket, &Message::Update(update.clone()))? {
        Message::Done { error: None } => Ok(()),
        Message::Done { error: Some(e) } => Err(ControlError::Failed(e)),
        other => Err(ControlError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// Has the agent park the sandbox's main session for a checkpoint (see
/// [`super::checkpoint`]); its VMM then saves the VM and stops.
pub fn checkpoint(socket: &Path) -> Result<(), ControlError> {
    match request(socket, &Message::Checkpoint)? {
        Message::Done { error: None } => Ok(()),
        Message::Done { error: Some(e) } => Err(ControlError::Failed(e)),
        other => Err(ControlError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// Samples the sandbox's resource usage.
pub fn stats(socket: &Path) -> Result<Stats, ControlError> {
    match request(socket, &Message::StatsRequest)? {
        Message::Stats(s) => Ok(s),
        other => Err(ControlError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// Signal numbers by docker's names (`SIGTERM`, `TERM`, `15`).
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(
        match name {
            "HUP" => Signal::HUP,
            "INT" => Signal::INT,
            "QUIT" => Signal::QUIT,
            "ILL" => Signal::ILL,
            "TRAP" => Signal::TRAP,
            "ABRT" | "IOT" => Signal::ABORT,
            "BUS" => Signal::BUS,
            "FPE" => Signal::FPE,
            "KILL" => Signal::KILL,
            "USR1" => Signal::USR1,
            "SEGV" => Signal::SEGV,
            "USR2" => Signal::USR2,
            "PIPE" => Signal::PIPE,
            "ALRM" => Signal::ALARM,
            "TERM" => Signal::TERM,
            "CHLD" => Signal::CHILD,
            "CONT" => Signal::CONT,
            "STOP" => Signal::STOP,
            "TSTP" => Signal::TSTP,
            "TTIN" => Signal::TTIN,
            "TTOU" => Signal::TTOU,
            "URG" => Signal::URG,
            "XCPU" => Signal::XCPU,
            "XFSZ" => Signal::XFSZ,
            "VTALRM" => Signal::VTALARM,
            "PROF" => Signal::PROF,
            "WINCH" => Signal::WINCH,
            "IO" | "POLL" => Signal::IO,
            "PWR" => Signal::POWER,
            "SYS" => Signal::SYS,
            _ => return None,
        }
        .as_raw(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("term"), Some(15));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("KILL"), Some(9));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("SIGNOPE"), None);
        // Linux numbers, which the guest shares (the names come from rustix now, not libc).
        let linux = [
            ("HUP", 1),
            ("ABRT", 6),
            ("IOT", 6),
            ("USR1", 10),
            ("ALRM", 14),
        ];
        let linux = linux
            .into_iter()
            .chain([("CHLD", 17), ("STOP", 19), ("VTALRM", 26)]);
        let linux = linux.chain([("WINCH", 28), ("POLL", 29), ("PWR", 30), ("SYS", 31)]);
        for (name, n) in linux {
            assert_eq!(parse_signal(name), Some(n), "{name}");
        }
    }

    #[test]
    fn a_missing_socket_is_a_clear_error() {
        let err = connect(
            Path::new("/nonexistent/vsock.sock"),
            EXEC_PORT,
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(matches!(err, ControlError::Connect(_)));
    }
}
