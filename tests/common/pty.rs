//! Driving a command through a pseudo-terminal, as a user at a terminal would.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A command whose stdin, stdout and stderr are a terminal of `rows` x `cols`.
pub struct Pty {
    pub master: std::fs::File,
    pub child: Child,
    /// Everything the terminal showed so far.
    pub seen: String,
}

impl Pty {
    /// Spawns `cmd` as the session leader of a new terminal.
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> Result<Self, String> {
        let (mut master, mut slave) = (0, 0);
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: out-pointers are valid; name and termios may be null; ws is valid.
        if unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        } != 0
        {
            return Err("openpty failed".into());
        }
        // SAFETY: openpty returned fresh descriptors we own.
        let (master, slave) = unsafe {
            (
                std::fs::File::from_raw_fd(master),
                OwnedFd::from_raw_fd(slave),
            )
        };
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| e.to_string());
        cmd.stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and TIOCSCTTY in the child before exec: no allocation.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| e.to_string())?;
        Ok(Self {
            master,
            child,
            seen: String::new(),
        })
    }

    /// Types `text`.
    pub fn write(&mut self, text: &[u8]) -> Result<(), String> {
        (&self.master).write_all(text).map_err(|e| e.to_string())
    }

    /// Reads until `needle` shows up, or fails after `secs` with what was seen.
    pub fn read_until(&mut self, needle: &str, secs: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{needle:?} did not appear on the terminal; saw {:?}",
                    self.seen
                ));
            }
            if !self.read_some(left.min(Duration::from_secs(1))) {
                return Err(format!(
                    "terminal closed before {needle:?}; saw {:?}",
                    self.seen
                ));
            }
        }
        Ok(())
    }

    /// Reads what is there within `wait`; false once the terminal is closed.
    fn read_some(&mut self, wait: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is a valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) };
        if pfd.revents == 0 {
            return true;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::read(self.master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return false;
        }
        self.seen
            .push_str(&String::from_utf8_lossy(&buf[..n as usize]));
        true
    }

    /// Waits for the command to end (draining the terminal meanwhile); kills it after `secs`.
    pub fn wait(&mut self, secs: u64) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "still running after {secs} s; terminal: {:?}",
                    self.seen
                ));
            }
            self.read_some(Duration::from_millis(50));
        }
    }
}
