//! Test helpers: guest memory and a split virtqueue driven from the guest's side (virtio 1.2
//! §2.7), built by hand so tests can also build the broken rings a hostile guest would.
//!
//! Not `virtio_queue::mock::MockSplitQueue` (feature `test-utils`): it indexes the available
//! ring with the free-running index instead of modulo the queue size, so a queue takes at
//! most `size` chains in its life (the vsock tests post far more), it borrows the guest
//! memory (the fixtures that own memory, queues and device would become self-referential),
//! and it has no used-ring reader or descriptor allocator, which tests would rebuild on top.
// Also built for the fuzzing harnesses (feature `fuzzing`), which use only part of it.
#![cfg_attr(not(test), allow(dead_code))]

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Interrupt, VirtioDevice};

/// Size of the test guest memory: 16 MiB at guest-physical 0.
pub const MEM_SIZE: usize = 16 << 20;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// One split virtqueue laid out at `base`: descriptor table, available ring, used ring.
#[derive(Debug)]
pub struct GuestQueue {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl GuestQueue {
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        Self {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// A device-side `Queue` for these rings, ready to use.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        let [desc_lo, desc_hi] = halves(self.desc);
        let [avail_lo, avail_hi] = halves(self.avail);
        let [used_lo, used_hi] = halves(self.used);
        q.set_desc_table_address(Some(desc_lo), Some(desc_hi));
        q.set_avail_ring_address(Some(avail_lo), Some(avail_hi));
        q.set_used_ring_address(Some(used_lo), Some(used_hi));
        q.set_ready(true);
        q
    }

    /// Writes raw descriptor `i`.
    pub fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc + 16 * u64::from(i));
        self.mem.write_obj(addr, at).unwrap();
        self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        self.mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }

    /// Makes descriptor `head` available.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Adds a chain of `(addr, len, device_writable)` buffers and publishes it; returns its head.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let i = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let last = k + 1 == bufs.len();
            let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(i, addr, len, flags, self.next_desc);
        }
        self.publish(head);
        head
    }

    /// Used-ring entries the device added since the last call: `(head, len)`.
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let at = GuestAddress(self.used + 4 + 8 * slot);
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            out.push((u16::try_from(id).unwrap(), len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// The low and high 32 bits of a guest address, as the queue registers take it.
fn halves(addr: u64) -> [u32; 2] {
    [addr & 0xffff_ffff, addr >> 32].map(|half| u32::try_from(half).unwrap())
}

/// Activates `dev` directly (no transport) on queues built from `gqs`.
pub fn activate(dev: &mut dyn VirtioDevice, gqs: &[&GuestQueue]) -> Arc<Interrupt> {
    let irq = Arc::new(Interrupt::new().unwrap());
    let queues = gqs.iter().map(|g| g.queue()).collect();
    let evts = gqs
        .iter()
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    dev.ack_features(dev.features());
    dev.activate(gqs[0].mem.clone(), queues, evts, irq.clone())
        .unwrap();
    irq
}
