//! Port-I/O and MMIO dispatch: a guest access at an address goes to the device whose range
//! holds it, with the offset into that range.
//!
//! Accesses outside every range are ignored (reads return all ones, as an empty ISA bus
//! does); a guest can probe anything it likes without disturbing the VMM.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the range it was inserted at.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus (vCPU threads) and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Inserting a device failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("bus range at {base:#x} with length {len:#x} is invalid")]
    InvalidRange { base: u64, len: u64 },
    /// The range overlaps one already on the bus.
    #[error("bus range at {base:#x} with length {len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// One address space (PIO or MMIO) with its devices.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.ranges.iter().map(|(b, e)| (*b, b + e.len)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        // The range below (if any) must end at or before base; the one at or above must start
        // at or after end.
        if let Some((b, e)) = self.ranges.range(..=base).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        if let Some((b, _)) = self.ranges.range(base..).next() {
            if *b < end {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let (base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the range.
        (offset.checked_add(size as u64)? <= entry.len).then_some((offset, entry))
    }

    /// Dispatches a read; returns false (and fills `data` with 0xff) when nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device. A poisoned lock is not recovered from: it means the device panicked in
/// the middle of an access and its state may be half updated. Release builds abort on a
/// panic (`panic = "abort"`), so it cannot happen there; in builds that unwind (debug,
/// tests) the vCPU thread that meets it panics in turn, and a vCPU thread that panics ends the
/// VM with an error (see `vmm::vcpu`).
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .expect("a device on the bus panicked during an earlier access")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(dev.lock().unwrap().writes, vec![(7, vec![9])]);
        // Past the end, or straddling it: nothing there.
        assert!(!bus.write(0x400, &[1]));
        let mut w = [0u8; 4];
        assert!(!bus.read(0x3fe, &mut w));
        assert_eq!(w, [0xff; 4]);
        assert!(!bus.read(u64::MAX, &mut b));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let dev: SharedDevice = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x1000, 0x100).unwrap();
        assert!(bus.insert(dev.clone(), 0x10ff, 1).is_err());
        assert!(bus.insert(dev.clone(), 0xf01, 0x100).is_err());
        assert!(bus.insert(dev.clone(), 0x1000, 0).is_err());
        assert!(bus.insert(dev.clone(), u64::MAX, 2).is_err());
        bus.insert(dev.clone(), 0x1100, 0x100).unwrap();
        bus.insert(dev, 0xf00, 0x100).unwrap();
    }
}
