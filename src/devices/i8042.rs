//! A minimal i8042 keyboard controller: just enough for the guest's `reboot=k` to end the VM.
//!
//! Linux reboots by pulsing the CPU reset line: command 0xFE written to port 0x64
//! (`native_machine_emergency_restart`, BOOT_KBD). brig treats that as "the VM is done".
//! Status reads return 0 (no data, input buffer empty) so `kb_wait()` never spins.

use super::bus::BusDevice;

/// First port: 0x60 (data); 0x64 (command/status) is at offset 4.
pub const I8042_PORT: u64 = 0x60;
/// Ports decoded: 0x60..=0x64.
pub const I8042_PORTS: u64 = 5;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 with a callback for the reset line.
pub struct I8042 {
    on_reset: Box<dyn FnMut() + Send>,
}

impl I8042 {
    pub fn new(on_reset: Box<dyn FnMut() + Send>) -> Self {
        Self { on_reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data == [CMD_RESET_CPU] {
            (self.on_reset)();
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
        let mut dev = I8042::new(Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status, [0]);
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xad]);
        dev.write(4, &[0xfe, 0]);
        assert_eq!(count.load(Ordering::SeqCst), 0);
        dev.write(4, &[0xfe]);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
