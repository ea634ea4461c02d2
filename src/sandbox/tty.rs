//! The host terminal for `-t`: raw mode while the workload owns it, restored on every exit
//! path, and its size for the guest's pseudo-terminal.
//!
//! The descriptors are borrowed (`AsFd`, `BorrowedFd`), so that "it is open" is the type
//! system's promise rather than a comment's. The older `RawFd` forms accept only the standard
//! streams (0, 1, 2), the one kind of bare number known to stay open for the whole process.

use std::os::fd::{AsFd, BorrowedFd, RawFd};

use rustix::termios::{self, OptionalActions, Termios};

/// The standard stream numbered `fd` (stdin, stdout or stderr); `None` for any other number,
/// which a bare `RawFd` cannot show to be open.
fn std_stream(fd: RawFd) -> Option<BorrowedFd<'static>> {
    match fd {
        0 => Some(rustix::stdio::stdin()),
        1 => Some(rustix::stdio::stdout()),
        2 => Some(rustix::stdio::stderr()),
        _ => None,
    }
}

/// Puts a terminal in raw mode until dropped.
pub struct RawMode {
    fd: BorrowedFd<'static>,
    saved: Termios,
}

impl RawMode {
    /// Raw mode on the terminal `fd` (e.g. `rustix::stdio::stdin()`), or `None` when it is not
    /// a terminal.
    pub fn new(fd: BorrowedFd<'static>) -> Option<Self> {
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(fd, OptionalActions::Now, &raw).ok()?;
        Some(Self { fd, saved })
    }

    /// Raw mode on the standard stream `fd` (0, 1 or 2), or `None` when it is not a terminal
    /// (or not a standard stream).
    pub fn enter(fd: RawFd) -> Option<Self> {
        Self::new(std_stream(fd)?)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Restoring the attributes read from the same terminal; nothing to do if it is gone.
        let _ = termios::tcsetattr(self.fd, OptionalActions::Now, &self.saved);
    }
}

/// The terminal size of `fd` as (rows, cols), when it is a terminal.
pub fn winsize(fd: impl AsFd) -> Option<(u16, u16)> {
    let ws = termios::tcgetwinsize(fd).ok()?;
    (ws.ws_row != 0).then_some((ws.ws_row, ws.ws_col))
}

/// The terminal size of the standard stream `fd` (0, 1 or 2) as (rows, cols), when it is a
/// terminal.
pub fn size(fd: RawFd) -> Option<(u16, u16)> {
    winsize(std_stream(fd)?)
}

/// Whether the standard stream `fd` (0, 1 or 2) is a terminal. (For any descriptor, use
/// `std::io::IsTerminal` or `rustix::termios::isatty`.)
pub fn is_tty(fd: RawFd) -> bool {
    std_stream(fd).is_some_and(termios::isatty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_terminals_and_other_numbers_are_refused() {
        let (read, _write) = rustix::pipe::pipe().unwrap();
        assert!(winsize(&read).is_none());
        let fd = read.as_fd();
        assert!(!termios::isatty(fd));
        // A number other than 0, 1, 2 is never taken on trust, open or not.
        use std::os::fd::AsRawFd;
        assert!(!is_tty(read.as_raw_fd()));
        assert!(size(read.as_raw_fd()).is_none());
        assert!(RawMode::enter(read.as_raw_fd()).is_none());
        assert!(!is_tty(-1));
    }
}
