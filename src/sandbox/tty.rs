//! The host terminal for `-t`: raw mode while the workload owns it, restored on every exit
//! path, and its size for the guest's pseudo-terminal.
//!
//! The descriptors are borrowed (`AsFd`, `BorrowedFd`), so that "it is open" is the type
//! system's promise rather than a comment's.

use std::os::fd::{AsFd, BorrowedFd};

use rustix::process::Signal;
use rustix::stdio;
use rustix::termios::{self, OptionalActions, Termios};

use super::outcome::Failure;
use super::signals::{SignalPipe, FORWARDED};

/// The host side of a session's terminal while it runs: the relayed signals, and raw mode
/// on brig's terminal when the workload has a TTY and brig's stdin; restored when dropped.
pub struct HostTerminal {
    pub signals: SignalPipe,
    _raw: Option<RawMode>,
}

impl HostTerminal {
    /// `tty`: the workload has a pseudo-terminal (resizes are relayed, and with `stdin` the
    /// host terminal goes raw: Ctrl-C is then a byte for the guest's terminal). `relay`:
    /// forward the host's signals to the workload, as docker's sig-proxy does.
    pub fn attach(tty: bool, stdin: bool, relay: bool) -> std::io::Result<Self> {
        let mut relayed: Vec<i32> = FORWARDED.to_vec();
        if !tty {
            relayed.retain(|s| *s != Signal::WINCH.as_raw());
        }
        if !relay {
            relayed.clear();
        }
        let signals = SignalPipe::install(&relayed)?;
        let raw = (tty && stdin)
            .then(|| RawMode::new(stdio::stdin()))
            .flatten();
        Ok(Self { signals, _raw: raw })
    }
}

/// The host terminal's size (stdout's, else stdin's), when there is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    winsize(stdio::stdout()).or_else(|| winsize(stdio::stdin()))
}

/// `-it` needs brig's stdin to be a terminal, as docker's does.
pub fn check_interactive(tty: bool, interactive: bool) -> Result<(), Failure> {
    if tty && interactive && !termios::isatty(stdio::stdin()) {
        return Err(Failure::brig(
            "the input device is not a TTY (drop -t, or run from a terminal)",
        ));
    }
    Ok(())
}

/// A terminal's attributes as they were, put back when dropped (by a VMM's keeper too, whose
/// child may die with the terminal in raw mode).
pub struct SavedTerminal {
    fd: BorrowedFd<'static>,
    saved: Termios,
}

impl SavedTerminal {
    /// The attributes of the terminal `fd` (e.g. `rustix::stdio::stdin()`), or `None` when it
    /// is not a terminal.
    pub fn save(fd: BorrowedFd<'static>) -> Option<Self> {
        let saved = termios::tcgetattr(fd).ok()?;
        Some(Self { fd, saved })
    }
}

/// Puts a terminal in raw mode until dropped (which puts back what was saved).
pub struct RawMode {
    _saved: SavedTerminal,
}

impl RawMode {
    /// Raw mode on the terminal `fd` (e.g. `rustix::stdio::stdin()`), or `None` when it is not
    /// a terminal.
    pub fn new(fd: BorrowedFd<'static>) -> Option<Self> {
        let saved = SavedTerminal::save(fd)?;
        let mut raw = saved.saved.clone();
        raw.make_raw();
        termios::tcsetattr(fd, OptionalActions::Now, &raw).ok()?;
        Some(Self { _saved: saved })
    }
}

impl Drop for SavedTerminal {
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
