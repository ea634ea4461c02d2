//! Hostile-driver harnesses for the virtio devices and their transport, one function per
//! target: each turns a byte string into what a malicious guest driver would do (descriptor
//! tables and available rings written by hand, indices that jump, buffers outside guest
//! memory or over the rings themselves, notifications, resets) and checks that the device
//! survives it. The `fuzz/` cargo-fuzz targets call them with fuzzer-made bytes (through
//! `brig::fuzzing`, feature `fuzzing`); the tests below call them with a deterministic stream
//! of random bytes, so that `cargo test` on stable checks the same properties.
//!
//! The property every harness checks: no panic (a panic on the VMM's event thread takes
//! every device of the VM down, and with `panic = "abort"` the VMM), no hang (the fuzzer's
//! timeout), and afterwards device-specific invariants (a read-only disk is unchanged, a disk
//! never grows, the net backend never gets an oversized frame, ...).

mod blk;
mod mmio;
mod net;
mod rng;
mod vsock;

use arbitrary::Unstructured;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::test_utils::{GuestQueue, F_NEXT, F_WRITE, MEM_SIZE};

pub use blk::virtio_blk;
pub use mmio::virtio_mmio;
pub use net::virtio_net;
pub use rng::virtio_rng;
pub use vsock::virtio_vsock;

/// How many actions one input may take: enough for a deep run, bounded so that one input
/// stays fast.
const MAX_ACTIONS: usize = 256;
/// The harnesses' queue size: small, so that hostile indices and heads hit often.
const QUEUE_SIZE: u16 = 16;
/// Where the harnesses put their rings (one 64 KiB slot per queue from here).
const RINGS: u64 = 0x1_0000;
/// Where buffers usually point (below: the rings; the guest memory ends at 16 MiB).
const DATA: u64 = 0x10_0000;
/// Where harnesses write well-formed device headers (64 slots of 16 bytes), for buffers to
/// point at.
const HEADERS: u64 = DATA;
/// The size of the usual buffer area.
const DATA_LEN: u64 = 0x80_0000;

/// A hostile guest: the fuzzer's bytes, guest memory, and the rings of the device's queues.
struct Guest<'a> {
    u: Unstructured<'a>,
    mem: GuestMemoryMmap,
    queues: Vec<GuestQueue>,
    /// Whether the guest pointed buffers at its own rings or wrote over them: then not even
    /// the used rings can be checked.
    harmed: bool,
}

impl<'a> Guest<'a> {
    fn new(data: &'a [u8], mem: &GuestMemoryMmap, queue_count: usize) -> Self {
        let queues = (0..queue_count as u64)
            .map(|i| GuestQueue::new(mem, RINGS + i * 0x1_0000, QUEUE_SIZE))
            .collect();
        Self {
            u: Unstructured::new(data),
            mem: mem.clone(),
            queues,
            harmed: false,
        }
    }

    /// Whether the input has more to say.
    fn more(&self, done: usize) -> bool {
        !self.u.is_empty() && done < MAX_ACTIONS
    }

    /// A harness's main loop: while the input has more to say (and at most [`MAX_ACTIONS`]
    /// times), one action, either a generic one on queue memory ([`Guest::ring_action`]) or
    /// one of the device's own `device_actions`, given to `act` as `0..device_actions`.
    fn drive(&mut self, device_actions: u64, mut act: impl FnMut(&mut Self, u64)) {
        let mut done = 0;
        while self.more(done) {
            done += 1;
            let action = self.below(RING_ACTIONS + device_actions);
            if !self.ring_action(action) {
                act(self, action - RING_ACTIONS);
            }
        }
    }

    fn byte(&mut self) -> u8 {
        self.u.arbitrary().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        self.u.arbitrary().unwrap_or(0)
    }

    fn u32(&mut self) -> u32 {
        self.u.arbitrary().unwrap_or(0)
    }

    fn u64(&mut self) -> u64 {
        self.u.arbitrary().unwrap_or(0)
    }

    /// A number below `n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.u.int_in_range(0..=n - 1).unwrap_or(0)
    }

    /// One of `items` (the first when the input is spent).
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        *self.u.choose(items).unwrap_or(&items[0])
    }

    /// An index below `n` (`n` > 0).
    fn index(&mut self, n: usize) -> usize {
        self.u.choose_index(n).unwrap_or(0)
    }

    /// A queue index, sometimes one past the device's queues.
    fn queue_index(&mut self) -> usize {
        usize::from(self.byte()) % (self.queues.len() + 1)
    }

    /// A buffer address as a hostile driver picks one: mostly in the buffer area, else at
    /// the end of guest memory, past it, anywhere, or over the rings themselves.
    fn addr(&mut self) -> u64 {
        let mem_end = MEM_SIZE as u64;
        let rings_end = RINGS + 0x1_0000 * self.queues.len() as u64;
        match self.below(8) {
            0 => {
                let addr = self.u64();
                // A buffer from there may cover the rings.
                self.harmed |= addr < rings_end;
                addr
            }
            1 => mem_end - self.below(64),
            2 => mem_end + self.below(0x1000),
            3 => {
                self.harmed = true;
                RINGS + self.below(rings_end - RINGS)
            }
            // Where the harnesses write device headers.
            4 | 5 => HEADERS + 16 * self.below(64),
            _ => DATA + self.below(DATA_LEN),
        }
    }

    /// A buffer length: mostly small, sometimes at a boundary or huge.
    fn len(&mut self) -> u32 {
        match self.below(8) {
            0 => self.u32(),
            1 => self.pick(&[0, 1, 11, 12, 16, 17, 44, 45, 512, 4096, 65_562, 1 << 20]),
            _ => u32::try_from(self.below(5000)).unwrap_or(0),
        }
    }

    /// One generic guest action on queue memory, or `false` when `action` is not one.
    fn ring_action(&mut self, action: u64) -> bool {
        let q = self.queue_index();
        match action {
            // A well-formed chain of 1-4 buffers, each readable or writable.
            0 => {
                let n = 1 + self.below(4);
                let bufs: Vec<(u64, u32, bool)> = (0..n)
                    .map(|_| {
                        let (a, l) = (self.addr(), self.len());
                        (a, l, self.byte() & 1 == 1)
                    })
                    .collect();
                if let Some(gq) = self.queues.get_mut(q) {
                    gq.add_chain(&bufs);
                }
            }
            // Any one descriptor: flags include INDIRECT and garbage, next may leave the table.
            1 => {
                let i = self.u16() % QUEUE_SIZE;
                let (addr, len) = (self.addr(), self.len());
                let flags = match self.below(4) {
                    0 => self.u16(),
                    _ => self.u16() & (F_NEXT | F_WRITE | 4),
                };
                let next = match self.below(4) {
                    0 => self.u16(),
                    _ => self.u16() % (QUEUE_SIZE + 2),
                };
                if let Some(gq) = self.queues.get(q) {
                    gq.write_desc(i, addr, len, flags, next);
                }
            }
            // Publish any head, even one past the table.
            2 => {
                let head = self.u16() % (QUEUE_SIZE + 2);
                if let Some(gq) = self.queues.get_mut(q) {
                    gq.publish(head);
                }
            }
            // An available index that jumps anywhere.
            3 => {
                let idx = self.u16();
                if let Some(gq) = self.queues.get(q) {
                    let _ = self.mem.write_obj(idx, GuestAddress(gq.avail + 2));
                }
            }
            // Garbage in the buffer area: headers, payloads, indirect tables.
            4 => {
                let at = DATA + self.below(DATA_LEN);
                let n = usize::from(self.byte());
                let bytes = self.u.bytes(n).unwrap_or(&[]).to_vec();
                let _ = self.mem.write_slice(&bytes, GuestAddress(at));
            }
            // Garbage over the rings themselves, used ring included.
            5 => {
                self.harmed = true;
                let at = RINGS + self.below(0x1_0000 * self.queues.len() as u64);
                let n = usize::from(self.byte() % 32);
                let bytes = self.u.bytes(n).unwrap_or(&[]).to_vec();
                let _ = self.mem.write_slice(&bytes, GuestAddress(at));
            }
            _ => return false,
        }
        true
    }
}

/// Actions a harness's guest takes from [`Guest::ring_action`] (0..RING_ACTIONS); device
/// actions come after.
const RING_ACTIONS: u64 = 6;

#[cfg(test)]
mod tests {
    use crate::prop::run;

    #[test]
    fn virtio_rng_survives_random_guests() {
        run("virtio_rng", super::virtio_rng, 0x5eed_0001, 900, 2048);
    }

    #[test]
    fn virtio_blk_survives_random_guests() {
        run("virtio_blk", super::virtio_blk, 0x5eed_0002, 600, 2048);
    }

    #[test]
    fn virtio_net_survives_random_guests() {
        run("virtio_net", super::virtio_net, 0x5eed_0003, 600, 2048);
    }

    #[test]
    fn virtio_vsock_survives_random_guests() {
        run("virtio_vsock", super::virtio_vsock, 0x5eed_0004, 300, 2048);
    }

    #[test]
    fn virtio_mmio_survives_random_drivers() {
        run("virtio_mmio", super::virtio_mmio, 0x5eed_0005, 900, 2048);
    }
}
