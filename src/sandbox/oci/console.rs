//! A container's terminal (`process.terminal: true`), as runc hands it over: a host
//! pseudo-terminal whose master goes to the caller's `--console-socket` (one `sendmsg`, the
//! master's name as data and the descriptor as SCM_RIGHTS, no reply), and whose slave, in raw
//! mode (the guest's own terminal does echo, ONLCR and signals), becomes the stdio and
//! controlling terminal of the process that relays it: the VMM process for the container, the
//! proxy for an exec. The caller's TIOCSWINSZ on the master then raises SIGWINCH there, which
//! brig relays to the guest as a resize, as `brig run -t` does for its own terminal.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::{self, OptionalActions, Winsize};

use super::OciError;

/// What runc sends as the message's data (the master's file name, `/dev/ptmx`).
const MASTER_NAME: &[u8] = b"/dev/ptmx";

/// A pseudo-terminal pair on the host.
pub struct Console {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

fn pty_err(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> OciError {
    move |e| OciError::io(what)(e.into())
}

impl Console {
    /// A new pair with the slave raw, sized `size` (rows, cols) when given.
    pub fn open(size: Option<(u16, u16)>) -> Result<Self, OciError> {
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = rustix::pty::openpt(flags).map_err(pty_err("opening /dev/ptmx"))?;
        rustix::pty::grantpt(&master).map_err(pty_err("grantpt"))?;
        rustix::pty::unlockpt(&master).map_err(pty_err("unlockpt"))?;
        let slave =
            rustix::pty::ioctl_tiocgptpeer(&master, flags).map_err(pty_err("opening the pty"))?;
        let mut attrs = termios::tcgetattr(&slave).map_err(pty_err("tcgetattr"))?;
        attrs.make_raw();
        termios::tcsetattr(&slave, OptionalActions::Now, &attrs).map_err(pty_err("tcsetattr"))?;
        if let Some((rows, cols)) = size.filter(|(r, c)| *r > 0 && *c > 0) {
            let ws = Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            termios::tcsetwinsize(&master, ws).map_err(pty_err("setting the console size"))?;
        }
        Ok(Self { master, slave })
    }

    /// Makes the slave `cmd`'s stdin, stdout, stderr and controlling terminal. `cmd` must
    /// already make itself a session leader (`setsid` in an earlier `pre_exec`).
    pub fn attach(&self, cmd: &mut Command) -> Result<(), OciError> {
        let dup = || self.slave.try_clone().map_err(OciError::io("dup"));
        cmd.stdin(Stdio::from(dup()?))
            .stdout(Stdio::from(dup()?))
            .stderr(Stdio::from(dup()?));
        // SAFETY: in the child between fork and exec: one system call, no allocation, no
        // locks. Its fd 0 is the slave by then (stdio is set up before pre_exec runs).
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
                Ok(())
            });
        }
        Ok(())
    }

    /// Sends the master to the caller's console socket, as runc does.
    pub fn send_master(&self, socket: &Path) -> Result<(), OciError> {
        send_fd(socket, self.master.as_fd())
            .map_err(OciError::io(format!("console socket {}", socket.display())))
    }
}

fn send_fd(socket: &Path, fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    let stream = UnixStream::connect(socket)?;
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("control message too large"));
    }
    let sent = rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(MASTER_NAME)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != MASTER_NAME.len() {
        return Err(std::io::Error::other("short write"));
    }
    Ok(())
}

/// runc's rules for a console socket: it goes with a terminal, and `create` (which returns
/// before the container ends) needs one for a terminal.
pub fn check(terminal: bool, socket: Option<&Path>, detaching: bool) -> Result<(), OciError> {
    match (terminal, socket.is_some()) {
        (false, true) => Err(OciError::Status(
            "cannot use console socket if runc will not detach or allocate tty".into(),
        )),
        (true, false) if detaching => Err(OciError::Status(
            "cannot allocate tty if runc will detach without setting console socket".into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::io::IoSliceMut;
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_master_reaches_the_socket_and_the_slave_is_raw_and_sized() {
        let c = Console::open(Some((40, 100))).unwrap();
        let attrs = termios::tcgetattr(&c.slave).unwrap();
        assert!(!attrs.local_modes.contains(termios::LocalModes::ECHO));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        c.send_master(&path).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &conn,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::empty(),
        )
        .unwrap();
        assert_eq!(&buf[..got.bytes], MASTER_NAME);
        let mut master = None;
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = m {
                master = fds.next();
            }
        }
        let master = master.expect("a descriptor");
        let ws = termios::tcgetwinsize(&master).unwrap();
        assert_eq!((ws.ws_row, ws.ws_col), (40, 100));
        rustix::io::write(&master, b"x").unwrap();
        let mut one = [0u8; 1];
        rustix::io::read(&c.slave, &mut one).unwrap();
        assert_eq!(&one, b"x");
    }

    #[test]
    fn runc_rules_for_the_console_socket() {
        let s = Path::new("/x");
        assert!(check(false, Some(s), true).is_err());
        assert!(check(true, None, true).is_err());
        assert!(check(true, None, false).is_ok());
        assert!(check(true, Some(s), true).is_ok());
        assert!(check(false, None, true).is_ok());
    }
}
