//! The host terminal for `-t`: raw mode while the workload owns it, restored on every exit
//! path, and its size for the guest's pseudo-terminal.
//!
//! The descriptors are borrowed (`AsFd`, `BorrowedFd`), so that "it is open" is the type
//! system's promise rather than a comment's.

use std::os::fd::{AsFd, BorrowedFd};

use rustix::termios::{self, OptionalActions, Termios};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_terminals_are_refused() {
        let (read, _write) = rustix::pipe::pipe().unwrap();
        assert!(winsize(&read).is_none());
        assert!(!termios::isatty(read.as_fd()));
    }
}
