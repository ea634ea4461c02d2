//! The i8042 keyboard controller, just enough for the guest's `reboot=k` to end the VM:
//! vm-superio's [`I8042Device`] on the port-I/O bus, with the CPU reset line wired to a
//! callback.
//!
//! Linux reboots by pulsing the CPU reset line: command 0xFE written to port 0x64
//! (`native_machine_emergency_restart`, BOOT_KBD). brig treats that as "the VM is done".
//! Status reads return 0 (no data, input buffer empty) so `kb_wait()` never spins.

use std::convert::Infallible;

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;

/// First port: 0x60 (data); 0x64 (command/status) is at offset 4.
pub const I8042_PORT: u64 = 0x60;
/// Ports decoded: 0x60..=0x64.
pub const I8042_PORTS: u64 = 5;

/// The CPU reset line: runs its callback when the guest pulses it.
pub struct ResetLine(Box<dyn Fn() + Send>);

impl ResetLine {
    pub fn new(on_reset: impl Fn() + Send + 'static) -> Self {
        Self(Box::new(on_reset))
    }
}

impl Trigger for ResetLine {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        (self.0)();
        Ok(())
    }
}

/// The i8042 with its reset line.
pub type I8042 = I8042Device<ResetLine>;

/// The i8042's registers are one byte wide: other widths read as zero and are not commands.
impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), &mut *data) {
            (Ok(offset), [byte]) => *byte = I8042Device::read(self, offset),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [value]) = (u8::try_from(offset), data) {
            // The reset line cannot fail (Infallible).
            let Ok(()) = I8042Device::write(self, offset, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn only_the_reset_command_resets() {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let mut dev = I8042::new(ResetLine::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        let mut status = [0xffu8];
        BusDevice::read(&mut dev, 4, &mut status);
        assert_eq!(status, [0]);
        let mut wide = [0xffu8; 2];
        BusDevice::read(&mut dev, 4, &mut wide);
        assert_eq!(wide, [0, 0]);
        BusDevice::write(&mut dev, 0, &[0xfe]);
        BusDevice::write(&mut dev, 4, &[0xad]);
        BusDevice::write(&mut dev, 4, &[0xfe, 0]);
        BusDevice::write(&mut dev, 0x104, &[0xfe]);
        assert_eq!(count.load(Ordering::SeqCst), 0);
        BusDevice::write(&mut dev, 4, &[0xfe]);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
