//! Signals brig relays to the workload (as docker's sig-proxy does), delivered to a poll
//! loop through a self-pipe.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// Write end of the self-pipe, for the handler.
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

/// Signals forwarded to the workload; SIGWINCH becomes a resize.
pub const FORWARDED: [i32; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

extern "C" fn on_signal(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; b is a valid one-byte buffer.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// Receives the relayed signals; readable when one arrived.
#[derive(Debug)]
pub struct SignalPipe {
    read: OwnedFd,
    _write: OwnedFd,
    signals: Vec<i32>,
}

impl SignalPipe {
    /// Installs handlers for `signals`, routing them into a pipe.
    pub fn install(signals: &[i32]) -> io::Result<Self> {
        use rustix::pipe::{pipe_with, PipeFlags};
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        PIPE_WRITE.store(write.as_raw_fd(), Ordering::Relaxed);
        for &sig in signals {
            vmm_sys_util::signal::register_signal_handler(sig, on_signal)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        }
        Ok(Self {
            read,
            _write: write,
            signals: signals.to_vec(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Signals received since the last call.
    pub fn drain(&self) -> Vec<i32> {
        let mut buf = [0u8; 64];
        let mut out = Vec::new();
        loop {
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend(buf[..n as usize].iter().map(|b| i32::from(*b)));
        }
        out
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for &sig in &self.signals {
            // SAFETY: restoring the default disposition of a valid signal number.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
        PIPE_WRITE.store(-1, Ordering::Relaxed);
    }
}
