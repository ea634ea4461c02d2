//! The guest console: an 8250 UART on COM1 (vm-superio's `Serial`), its interrupt delivered
//! through an irqfd.
//!
//! What the guest prints goes to a [`ConsoleLog`]: the last bytes are kept in memory (to
//! report a kernel panic line when a VM dies) and are optionally echoed to the host's stderr
//! or a log file. Console input is not wired: workloads talk to the host over vsock.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// Base port of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Ports one UART decodes.
pub const UART_PORTS: u64 = 8;
/// How much of the console's most recent output is kept for error reports.
const TAIL_BYTES: usize = 64 * 1024;

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
    inner: Arc<Mutex<ConsoleInner>>,
}

#[derive(Default)]
struct ConsoleInner {
    tail: VecDeque<u8>,
    echo: Option<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for ConsoleLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleLog")
    }
}

impl ConsoleLog {
    /// A console log that also copies everything to `echo` (stderr, a file).
    pub fn with_echo(echo: Box<dyn Write + Send>) -> Self {
        let log = Self::default();
        log.lock().echo = Some(echo);
        log
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConsoleInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recent console output (up to 64 KiB), lossily decoded.
    pub fn tail(&self) -> String {
        let inner = self.lock();
        let (a, b) = inner.tail.as_slices();
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

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = self.lock();
        inner.tail.extend(buf);
        let excess = inner.tail.len().saturating_sub(TAIL_BYTES);
        inner.tail.drain(..excess);
        if let Some(echo) = inner.echo.as_mut() {
            // A closed stderr must not stop the guest.
            let _ = echo.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(echo) = self.lock().echo.as_mut() {
            let _ = echo.flush();
        }
        Ok(())
    }
}

/// COM1 on the port bus.
pub struct SerialConsole {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleLog>,
}

impl SerialConsole {
    pub fn new(irq: EventFd, log: ConsoleLog) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), log),
        }
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
