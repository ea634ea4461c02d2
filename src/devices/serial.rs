//! The guest console: an 8250 UART on COM1 (vm-superio's `Serial`), its interrupt delivered
//! through an irqfd.
//!
//! What the guest prints goes to a [`ConsoleLog`]: the last bytes are kept in memory (to
//! report a kernel panic line when a VM dies) and are optionally echoed to the host's stderr
//! or a log file. Console input is not wired: workloads talk to the host over vsock.
//!
//! The echo never runs on a vCPU thread: a guest byte is appended to a bounded buffer, and a
//! writer thread of the log's own copies the buffer out. When the host side is slower than
//! the guest (`brig run --console 2>&1 | less` with the pager stopped, a pipe nobody reads),
//! the buffer fills and further bytes are dropped and counted, and the writer notes the gap
//! once it can write again: the guest never waits for the host's terminal. The in-memory
//! tail (panic line, last line) keeps every byte.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// Base port of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Ports one UART decodes.
pub const UART_PORTS: u64 = 8;
/// How much of the console's most recent output is kept for error reports.
const TAIL_BYTES: usize = 64 * 1024;
/// How much echo output may wait for a slow writer before bytes are dropped. A kernel boot
/// log is ~10-20 KiB; this is a few screens of a chatty workload behind a stopped pager.
const ECHO_BUFFER_BYTES: usize = 256 * 1024;
/// How long the last [`ConsoleLog`] waits, when dropped, for the writer to catch up.
const DROP_DRAIN: Duration = Duration::from_secs(1);

/// Raises the UART's interrupt by writing the irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest console's bytes go. Cloning shares the same log.
#[derive(Clone, Default)]
pub struct ConsoleLog {
    tail: Arc<Mutex<VecDeque<u8>>>,
    echo: Option<Arc<Echo>>,
}

impl std::fmt::Debug for ConsoleLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleLog")
    }
}

/// The echo's buffer, shared by the log (which fills it) and the writer thread (which empties
/// it).
#[derive(Default)]
struct EchoQueue {
    state: Mutex<EchoState>,
    /// The writer waits here for bytes (or the end).
    more: Condvar,
    /// [`ConsoleLog::drain`] waits here for the writer to be done.
    idle: Condvar,
}

#[derive(Default)]
struct EchoState {
    buf: VecDeque<u8>,
    /// Bytes dropped because `buf` was full, not yet reported.
    dropped: u64,
    /// The writer holds bytes taken from `buf` that it has not finished writing.
    writing: bool,
    /// No more bytes will come; the writer ends once `buf` is empty.
    closed: bool,
}

impl EchoState {
    fn pending(&self) -> bool {
        !self.buf.is_empty() || self.dropped > 0
    }
}

/// The echo of one log: its queue, ended (without waiting on a stalled writer) when the last
/// clone of the log goes.
struct Echo {
    queue: Arc<EchoQueue>,
    /// Starts the writer thread; taken by [`ConsoleLog::start_echo`] (`None` once started).
    start: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.more.notify_one();
        if self.start.get_mut().map_or(true, |s| s.is_some()) {
            return; // no writer was ever started
        }
        // Let the writer finish what it holds, within reason; the thread is not joined, so a
        // writer blocked for good does not keep brig from exiting.
        self.queue.wait_idle(DROP_DRAIN);
    }
}

impl EchoQueue {
    fn lock(&self) -> MutexGuard<'_, EchoState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `buf` (what fits), counting the rest as dropped. Never blocks on the writer.
    fn push(&self, buf: &[u8]) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        // The writer sleeps only when nothing is pending: wake it on that edge only.
        let was_pending = s.pending();
        let room = ECHO_BUFFER_BYTES.saturating_sub(s.buf.len());
        let n = room.min(buf.len());
        s.buf.extend(&buf[..n]);
        s.dropped += (buf.len() - n) as u64;
        if !was_pending && s.pending() {
            drop(s);
            self.more.notify_one();
        }
    }

    /// Waits up to `timeout` until everything queued so far has been written; false if the
    /// writer is still behind then.
    fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.pending() || s.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .idle
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// The writer thread: copies queued bytes to `out` until the log is gone.
    fn write_out(&self, mut out: Box<dyn Write + Send>) {
        loop {
            let (bytes, dropped) = {
                let mut s = self.lock();
                while !s.pending() && !s.closed {
                    s = self.more.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                if !s.pending() {
                    return; // closed and empty
                }
                s.writing = true;
                let bytes: Vec<u8> = s.buf.drain(..).collect();
                (bytes, std::mem::take(&mut s.dropped))
            };
            // A closed or failing output must not stop the guest: errors are ignored (the
            // bytes are in the tail regardless).
            let _ = out.write_all(&bytes);
            if dropped > 0 {
                // The dropped bytes came after everything taken with them, before anything
                // queued since.
                let _ = write!(
                    out,
                    "\n[brig: {dropped} bytes of guest console output dropped: the console's \
                     reader was too slow]\n"
                );
            }
            let _ = out.flush();
            let mut s = self.lock();
            s.writing = false;
            if !s.pending() {
                self.idle.notify_all();
            }
        }
    }
}

impl ConsoleLog {
    /// A console log that also copies everything to `echo` (stderr, a file), from a thread of
    /// its own (see the module's documentation).
    #[cfg(test)]
    pub fn with_echo(echo: Box<dyn Write + Send>) -> Self {
        Self::with_confined_echo(echo, || Ok(()))
    }

    /// A console log that also copies everything to `echo`, the echo thread calling `confine` (a seccomp filter, say) before
    /// it writes anything the guest printed; if that fails, it says so and echoes nothing.
    pub fn with_confined_echo(
        echo: Box<dyn Write + Send>,
        confine: fn() -> Result<(), String>,
    ) -> Self {
        let log = Self::with_deferred_echo(echo, confine);
        log.start_echo();
        log
    }

    /// As [`ConsoleLog::with_confined_echo`], but the echo thread starts only at
    /// [`ConsoleLog::start_echo`] (the VMM calls it when it starts its own threads): a
    /// process that must still be single-threaded when its VM is built (to enter a jail)
    /// can make its console first. Until then, what is written waits in the buffer.
    pub fn with_deferred_echo(
        echo: Box<dyn Write + Send>,
        confine: fn() -> Result<(), String>,
    ) -> Self {
        let queue = Arc::new(EchoQueue::default());
        let writer = queue.clone();
        let start = move || {
            let spawned = std::thread::Builder::new()
                .name("console".into())
                .spawn(move || match confine() {
                    Ok(()) => writer.write_out(echo),
                    Err(e) => {
                        tracing::error!("console echo thread: {e}; not echoing");
                        writer.write_out(Box::new(std::io::sink()));
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot start the console echo thread ({e}); not echoing");
            }
        };
        Self {
            tail: Arc::default(),
            echo: Some(Arc::new(Echo {
                queue,
                start: Mutex::new(Some(Box::new(start))),
            })),
        }
    }

    /// Starts the echo thread of a log made by [`ConsoleLog::with_deferred_echo`] (nothing
    /// when it runs already, or when the log has no echo).
    pub fn start_echo(&self) {
        let start = self
            .echo
            .as_ref()
            .and_then(|e| e.start.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(start) = start {
            start();
        }
    }

    fn lock_tail(&self) -> MutexGuard<'_, VecDeque<u8>> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout` for the echo to have written everything the guest printed so far
    /// (true when it has, or when there is no echo).
    pub fn drain(&self, timeout: Duration) -> bool {
        self.echo
            .as_ref()
            .is_none_or(|e| e.queue.wait_idle(timeout))
    }

    /// The most recent console output (up to 64 KiB), lossily decoded.
    pub fn tail(&self) -> String {
        let tail = self.lock_tail();
        let (a, b) = tail.as_slices();
        let mut bytes = a.to_vec();
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The kernel's panic line, if the console shows one.
    pub fn panic_line(&self) -> Option<String> {
        let tail = self.tail();
        tail.lines()
            .find(|l| l.contains("Kernel panic - not syncing"))
            .map(|l| {
                // Drop the "[    1.234567] " timestamp, if any.
                let l = l.trim();
                match l.strip_prefix('[').and_then(|r| r.split_once("] ")) {
                    Some((_, rest)) => rest.to_string(),
                    None => l.to_string(),
                }
            })
    }

    /// The last non-empty line of console output.
    pub fn last_line(&self) -> Option<String> {
        self.tail()
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    }
}

/// The UART's output: called on a vCPU thread for every byte the guest writes. It takes two
/// short locks and never waits for the echo's writer.
impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        {
            let mut tail = self.lock_tail();
            tail.extend(buf);
            let excess = tail.len().saturating_sub(TAIL_BYTES);
            tail.drain(..excess);
        }
        if let Some(echo) = &self.echo {
            echo.queue.push(buf);
        }
        Ok(buf.len())
    }

    /// Nothing to do: the writer flushes after every batch (the UART calls this per byte).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// COM1 on the port bus.
pub struct SerialConsole {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleLog>,
}

/// The UART's registers and input FIFO (vm-superio's `SerialState`, which has no serde).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl SerialConsole {
    pub fn new(irq: EventFd, log: ConsoleLog) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), log),
        }
    }

    /// The UART's state, for a VM snapshot.
    pub fn save(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// A UART in the saved state (an input FIFO longer than the UART's is refused).
    pub fn from_state(irq: EventFd, log: ConsoleLog, s: &SerialSnapshot) -> io::Result<Self> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        let uart = Serial::from_state(&state, IrqTrigger(irq), vm_superio::serial::NoEvents, log)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))?;
        Ok(Self { uart })
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= UART_PORTS {
            data.fill(0xff);
            return;
        }
        #[allow(clippy::cast_possible_truncation)] // offset < UART_PORTS (8): checked above.
        let offset = offset as u8;
        data[0] = self.uart.read(offset);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= UART_PORTS {
            return;
        }
        #[allow(clippy::cast_possible_truncation)] // offset < UART_PORTS (8): checked above.
        let offset = offset as u8;
        if let Err(e) = self.uart.write(offset, data[0]) {
            tracing::warn!("serial write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_the_restored_uart_behaves_the_same() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialConsole::new(irq.try_clone().unwrap(), ConsoleLog::default());
        dev.write(1, &[0x02]); // IER
        dev.write(3, &[0x03]); // LCR: 8N1
        dev.write(7, &[0x5a]); // scratch
        let saved = dev.save();
        let json = serde_json::to_string(&saved).unwrap();
        let back: SerialSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, saved);
        let log = ConsoleLog::default();
        let mut restored =
            SerialConsole::from_state(irq.try_clone().unwrap(), log.clone(), &back).unwrap();
        assert_eq!(restored.save(), saved);
        let mut b = [0u8; 1];
        restored.read(7, &mut b);
        assert_eq!(b, [0x5a]);
        restored.write(0, b"x");
        assert_eq!(log.tail(), "x");
        let mut overfull = saved;
        overfull.in_buffer = vec![0; 1 << 20];
        assert!(SerialConsole::from_state(irq, ConsoleLog::default(), &overfull).is_err());
    }

    #[test]
    fn guest_bytes_reach_the_log_and_raise_the_irq() {
        let log = ConsoleLog::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialConsole::new(irq.try_clone().unwrap(), log.clone());
        dev.write(1, &[0x02]); // IER: THR empty interrupt
        for b in b"hello\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(log.tail(), "hello\n");
        assert!(irq.read().unwrap() > 0);
        // Wrong widths are ignored.
        dev.write(0, b"xy");
        let mut w = [0u8; 2];
        dev.read(0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        assert_eq!(log.tail(), "hello\n");
    }

    /// An echo target that blocks every write until released (a pipe nobody reads).
    #[derive(Clone, Default)]
    struct Stalled {
        /// (released, writes entered so far)
        gate: Arc<(Mutex<(bool, usize)>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (state, cv) = &*self.gate;
            let mut state = state.lock().unwrap();
            state.1 += 1;
            cv.notify_all();
            while !state.0 {
                state = cv.wait(state).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_echo_does_not_block_the_guest() {
        let stalled = Stalled::default();
        let log = ConsoleLog::with_echo(Box::new(stalled.clone()));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialConsole::new(irq, log.clone());
        // The writer takes the first byte and gets stuck writing it.
        dev.write(0, b"<");
        {
            let (state, cv) = &*stalled.gate;
            let mut state = state.lock().unwrap();
            while state.1 == 0 {
                state = cv.wait(state).unwrap();
            }
        }
        // The guest writes more than the echo can hold, byte by byte as a vCPU does.
        let total = 1 + ECHO_BUFFER_BYTES + 4096;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let guest = std::thread::spawn(move || {
            for letter in (b'a'..=b'z').cycle().take(total - 2) {
                dev.write(0, &[letter]);
            }
            dev.write(0, b"\n");
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the serial write path waited for a stalled echo writer");
        guest.join().unwrap();
        // The tail saw every byte; the panic/last-line helpers work as before.
        assert_eq!(log.tail().len(), TAIL_BYTES);
        let last = log.last_line().unwrap();
        assert!(last.bytes().all(|b| b.is_ascii_lowercase()), "{last}");
        assert!(
            !log.drain(Duration::from_millis(50)),
            "the writer is still stalled"
        );

        // Released, the writer catches up: what it held, what fit, then a note for the rest.
        stalled.gate.0.lock().unwrap().0 = true;
        stalled.gate.1.notify_all();
        assert!(log.drain(Duration::from_secs(10)));
        let echoed = String::from_utf8(stalled.got.lock().unwrap().clone()).unwrap();
        let dropped = total - 1 - ECHO_BUFFER_BYTES;
        let note = format!(
            "\n[brig: {dropped} bytes of guest console output dropped: the console's reader \
             was too slow]\n"
        );
        assert_eq!(echoed.len(), 1 + ECHO_BUFFER_BYTES + note.len());
        assert!(echoed.starts_with("<abc"));
        assert!(echoed.ends_with(&note), "{}", &echoed[echoed.len() - 100..]);
        // Later output flows again.
        log.clone().write_all(b"after\n").unwrap();
        assert!(log.drain(Duration::from_secs(10)));
        assert!(stalled.got.lock().unwrap().ends_with(b"too slow]\nafter\n"));
    }

    #[test]
    fn tail_is_bounded_and_finds_the_panic_line() {
        let mut log = ConsoleLog::default();
        log.write_all(&vec![b'x'; TAIL_BYTES]).unwrap();
        log.write_all(
            b"\n[    0.512345] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
        )
        .unwrap();
        assert_eq!(log.tail().len(), TAIL_BYTES);
        assert_eq!(
            log.panic_line().unwrap(),
            "Kernel panic - not syncing: VFS: Unable to mount root fs"
        );
        assert!(log.last_line().unwrap().contains("Unable to mount"));
    }
}
