//! Signals brig relays to the workload (as docker's sig-proxy does), delivered to a poll
//! loop through a self-pipe.
//!
//! The handler writes the signal's number into the pipe with a raw `write(2)` (rustix: no
//! errno touched, nothing allocated). `signal-hook` would not keep today's behaviour: its
//! pipe writes one fixed byte per registration (a pipe per signal to tell them apart) and
//! unregistering leaves its own handler installed instead of the default disposition, so a
//! Ctrl-C after the session would be swallowed rather than end brig.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use rustix::process::Signal;

/// Write end of the self-pipe, for the handler; -1 when no `SignalPipe` is installed.
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
/// Handlers between reading `PIPE_WRITE` and finishing their write: `SignalPipe`'s drop
/// waits for none before it closes the descriptor.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Signals forwarded to the workload: [`FROM_KEEPER`]'s, and SIGWINCH, which becomes a
/// resize.
pub const FORWARDED: [i32; 7] = {
    let mut all = [Signal::WINCH.as_raw(); 7];
    let mut i = 0;
    while i < FROM_KEEPER.len() {
        all[i] = FROM_KEEPER[i];
        i += 1;
    }
    all
};

extern "C" fn on_signal(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    let fd = PIPE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: a non-negative PIPE_WRITE is the write end owned by the installed
        // SignalPipe, and it stays open until this handler is done: the pipe's drop clears
        // PIPE_WRITE, then waits for IN_HANDLER (raised above, before the load; SeqCst
        // orders the two) to reach zero, and only then closes the descriptor.
        let pipe = unsafe { BorrowedFd::borrow_raw(fd) };
        // write(2) is async-signal-safe; a full pipe (nonblocking) drops the byte, which is
        // fine: the reader is woken by the ones already there.
        let _ = rustix::io::write(pipe, &[sig as u8]);
    }
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
}

/// Installs `handler` for each of `signals`, noting in `installed` each one it did (for the
/// owner's drop to put the defaults back, also after a failure half-way).
fn register(
    signals: &[i32],
    handler: vmm_sys_util::signal::SignalHandler,
    installed: &mut Vec<i32>,
) -> io::Result<()> {
    for &sig in signals {
        vmm_sys_util::signal::register_signal_handler(sig, handler)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        installed.push(sig);
    }
    Ok(())
}

/// Receives the relayed signals; readable when one arrived.
#[derive(Debug)]
pub struct SignalPipe {
    read: OwnedFd,
    write: Option<OwnedFd>,
    signals: Vec<i32>,
}

impl SignalPipe {
    /// Installs handlers for `signals`, routing them into a pipe.
    pub fn install(signals: &[i32]) -> io::Result<Self> {
        use rustix::pipe::{pipe_with, PipeFlags};
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        PIPE_WRITE.store(write.as_raw_fd(), Ordering::SeqCst);
        // Built before the handlers go in, so that a failure below restores what was set.
        let mut pipe = Self {
            read,
            write: Some(write),
            signals: Vec::with_capacity(signals.len()),
        };
        register(signals, on_signal, &mut pipe.signals)?;
        Ok(pipe)
    }

    /// Signals received since the last call.
    pub fn drain(&self) -> Vec<i32> {
        let mut buf = [0u8; 64];
        let mut out = Vec::new();
        // Until EAGAIN (the pipe is nonblocking) or an error.
        while let Ok(n @ 1..) = rustix::io::read(&self.read, &mut buf) {
            out.extend(buf[..n].iter().map(|b| i32::from(*b)));
        }
        out
    }
}

impl AsFd for SignalPipe {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for &sig in &self.signals {
            // SAFETY: SIG_DFL runs no code of ours, so it is sound for any signal number;
            // `sig` was accepted by sigaction when the handler went in.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
        // Only the installed pipe clears the handler's descriptor (another SignalPipe may
        // have replaced it since).
        let write = self.write.take();
        let mine = write.as_ref().map_or(-1, |w| w.as_raw_fd());
        let _ = PIPE_WRITE.compare_exchange(mine, -1, Ordering::SeqCst, Ordering::SeqCst);
        while IN_HANDLER.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
        drop(write);
    }
}

/// The signals a keeper forwards to its jailed VMM: [`FORWARDED`] but SIGWINCH (a terminal
/// sends that to the whole foreground process group, the VMM included).
pub const FROM_KEEPER: [i32; 6] = [
    Signal::INT.as_raw(),
    Signal::TERM.as_raw(),
    Signal::HUP.as_raw(),
    Signal::QUIT.as_raw(),
    Signal::USR1.as_raw(),
    Signal::USR2.as_raw(),
];

/// The process [`Forwarder`]'s handler sends signals on to; 0 when none is installed.
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands a SA_SIGINFO handler a valid siginfo.
    let code = unsafe { (*info).si_code };
    let pid = FORWARD_TO.load(Ordering::SeqCst);
    // Only signals a process sent (kill, sigqueue, tgkill: si_code <= 0). One the terminal
    // raised (Ctrl-C: SI_KERNEL) reached the whole foreground process group, the child too.
    if pid > 0 && code <= 0 {
        // SAFETY: kill(2) is async-signal-safe; `pid` is the child the Forwarder was made
        // for, which its owner reaps only after dropping the Forwarder.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Sends the signals a process sends this one on to a child (the jailed VMM of a foreground
/// run, which relays them to the workload); those the terminal raises reach the child
/// directly. Dropping it restores the default dispositions.
#[derive(Debug)]
pub struct Forwarder {
    signals: Vec<i32>,
}

impl Forwarder {
    /// Forwards `signals` to `child`.
    pub fn install(child: i32, signals: &[i32]) -> io::Result<Self> {
        FORWARD_TO.store(child, Ordering::SeqCst);
        let mut installed = Self {
            signals: Vec::with_capacity(signals.len()),
        };
        register(signals, forward, &mut installed.signals)?;
        Ok(installed)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for &sig in &self.signals {
            // SAFETY: as in SignalPipe's drop.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
        FORWARD_TO.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_signal_is_read_from_the_pipe_and_the_default_comes_back() {
        let sig = Signal::USR2;
        let pipe = SignalPipe::install(&[sig.as_raw()]).unwrap();
        assert!(pipe.drain().is_empty());
        rustix::process::kill_process(rustix::process::getpid(), sig).unwrap();
        // Any thread of the test process may take it: wait for the handler's byte.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut got = pipe.drain();
        while got.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            got = pipe.drain();
        }
        assert_eq!(got, vec![sig.as_raw()]);
        drop(pipe);
        assert_eq!(PIPE_WRITE.load(Ordering::SeqCst), -1);
    }

    #[test]
    fn a_sent_signal_is_forwarded_to_the_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fwd = Forwarder::install(child.id() as i32, &[Signal::POWER.as_raw()]).unwrap();
        rustix::process::kill_process(rustix::process::getpid(), Signal::POWER).unwrap();
        let status = child.wait().unwrap();
        drop(fwd);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::POWER.as_raw()));
    }
}
