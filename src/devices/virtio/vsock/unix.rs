//! Host-socket helpers for the vsock backend that std does not offer, through rustix: a
//! nonblocking `connect(2)` (so a listener with a full backlog cannot stall the event thread)
//! and a nonblocking one-shot timer for the connection deadlines.

use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};

/// Connects to a Unix stream socket without blocking: a listener whose backlog is full
/// refuses (EAGAIN) instead of stalling the event thread.
pub fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    // A path that does not fit in sun_path (with its NUL) is the caller's mistake, not the OS's.
    let addr =
        SocketAddrUnix::new(path).map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&fd, &addr)?;
    Ok(UnixStream::from(fd))
}

/// A nonblocking, one-shot CLOCK_MONOTONIC timerfd: readable once it has fired.
#[derive(Debug)]
pub struct Timer(OwnedFd);

impl Timer {
    pub fn new() -> std::io::Result<Self> {
        let flags = TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC;
        Ok(Self(rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            flags,
        )?))
    }

    /// Fires once, `after` from now (replacing any earlier setting). `after` must not be zero:
    /// a zero value disarms a timerfd.
    pub fn arm(&self, after: Duration) -> std::io::Result<()> {
        let value = Timespec::try_from(after).map_err(|_| ErrorKind::InvalidInput)?;
        self.set(value)
    }

    /// Stops the timer.
    pub fn disarm(&self) -> std::io::Result<()> {
        self.set(Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        })
    }

    fn set(&self, it_value: Timespec) -> std::io::Result<()> {
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value,
        };
        rustix::time::timerfd_settime(&self.0, TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }

    /// Clears a pending expiry so the fd stops being readable (nothing happens if none is).
    pub fn drain(&self) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut count);
    }
}

impl AsFd for Timer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    #[test]
    fn connect_nonblocking_reaches_listeners_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        assert!(connect_nonblocking(&path).is_err());
        let l = UnixListener::bind(&path).unwrap();
        let s = connect_nonblocking(&path).unwrap();
        let (peer, _) = l.accept().unwrap();
        drop(peer);
        let mut b = [0u8; 1];
        let mut s = s;
        s.set_nonblocking(false).unwrap();
        assert_eq!(s.read(&mut b).unwrap(), 0);
        let long = dir.path().join("x".repeat(120));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn timer_fires_once_and_drains() {
        let timer = Timer::new().unwrap();
        let readable = |t: &Timer| {
            let mut fds = [rustix::event::PollFd::new(t, rustix::event::PollFlags::IN)];
            rustix::event::poll(&mut fds, None).unwrap() == 1
        };
        timer.arm(Duration::from_millis(1)).unwrap();
        assert!(readable(&timer));
        timer.drain();
        timer.arm(Duration::from_secs(3600)).unwrap();
        timer.disarm().unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &timer,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        assert_eq!(rustix::event::poll(&mut fds, Some(&zero)).unwrap(), 0);
    }
}
