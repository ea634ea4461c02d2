//! The bounce queues between a guest's virtio-fs queues and its file server.
//!
//! The server (virtiofsd) never sees guest memory. It gets a small memfd of brig's instead:
//! per guest queue, a split ring of its own ([`RING`] descriptors) and [`SLOTS`] buffers of
//! [`SLOT_LEN`] bytes. For each request the guest posts, the event thread copies the chain's
//! readable part into a free slot, reserves room for its writable part there, and posts that
//! to the server as one readable and one writable descriptor (FUSE does not care where a
//! chain is split); when the server has used it, the written bytes are copied back into the
//! guest's writable descriptors and the guest's chain is used with that length. This is the
//! "shadow virtqueue" QEMU uses for vDPA, for another reason:
//!
//! - guest memory stays private to the VMM. A restored sandbox with shares maps its template
//!   copy-on-write like any other (it was a copy of the template's data into a memfd of its
//!   own before, tens of MiB per sandbox and per start), and a booted one can be anonymous.
//! - the file server, which parses the guest's FUSE requests, reaches only these buffers,
//!   not the rest of the guest's memory.
//!
//! The price is one copy of each request and reply (FUSE's largest, 1 MiB of read or write
//! data, in one slot) and the event thread's turn per request.
//!
//! Hostile input: the guest's chains are walked by `virtio-queue` (bounded, loop-checked) and
//! must fit a slot, readable before writable, inside guest memory; a chain that does not is
//! used with length 0. The server's used entries must name a request in flight and a length
//! within its room (clamped otherwise); a server that reports more than its ring holds is
//! ignored from then on.

use std::fs::File;
use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::common::Active;

/// Requests in flight per queue (virtiofsd serves a queue's requests one by one).
pub const SLOTS: u16 = 4;
/// Descriptors of each bounce ring: two per request.
pub const RING: u16 = 2 * SLOTS;
/// Room of one request: FUSE's largest (1 MiB of data, as virtiofsd's `max_pages` and Linux's
/// default `max_pages_limit` allow) and its headers.
pub const SLOT_LEN: u32 = (1 << 20) + (64 << 10);
/// Bytes of each queue's ring area: descriptor table, available ring, used ring.
const RING_AREA_BYTES: usize = 4096;
const RING_AREA: u64 = RING_AREA_BYTES as u64;
const AVAIL_OFF: u64 = 256;
const USED_OFF: u64 = 512;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// A guest request the server has.
#[derive(Debug)]
struct InFlight {
    /// The guest's chain.
    head: u16,
    /// Where the server's reply goes back to: the guest's writable descriptors.
    writable: Vec<(GuestAddress, u32)>,
    /// Their total length (at most a slot).
    room: u32,
    /// Where the reply is in the slot.
    reply_at: u64,
}

/// One guest queue's bounce ring.
#[derive(Debug)]
struct Bounce {
    /// Offset of the ring area in the bounce memory.
    ring: u64,
    /// Offset of the first slot.
    slots_at: u64,
    avail_idx: u16,
    used_seen: u16,
    slots: Vec<Option<InFlight>>,
    /// Written by brig when it posts; the server waits on it.
    kick: EventFd,
    /// Written by the server when it has used requests.
    call: EventFd,
    /// The server broke the ring's rules: its entries are no longer read.
    broken: bool,
}

/// The bounce memory and rings of a virtio-fs device's queues.
#[derive(Debug)]
pub struct Relay {
    mem: GuestMemoryMmap,
    queues: Vec<Bounce>,
}

impl Relay {
    /// Bounce memory for `queues` queues: a memfd (pages allocated as they are first used).
    pub fn new(queues: usize) -> std::io::Result<Self> {
        let slots_at = RING_AREA * queues as u64;
        let len = slots_at + queues as u64 * u64::from(SLOTS) * u64::from(SLOT_LEN);
        let fd = rustix::fs::memfd_create("brig-fs-bounce", rustix::fs::MemfdFlags::CLOEXEC)?;
        let file = File::from(fd);
        file.set_len(len)?;
        let size = usize::try_from(len).map_err(std::io::Error::other)?;
        let mem = GuestMemoryMmap::from_ranges_with_files(&[(
            GuestAddress(0),
            size,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        let queues = (0..queues as u64)
            .map(|q| {
                Ok(Bounce {
                    ring: q * RING_AREA,
                    slots_at: slots_at + q * u64::from(SLOTS) * u64::from(SLOT_LEN),
                    avail_idx: 0,
                    used_seen: 0,
                    slots: (0..SLOTS).map(|_| None).collect(),
                    kick: EventFd::new(EFD_NONBLOCK)?,
                    call: EventFd::new(EFD_NONBLOCK)?,
                    broken: false,
                })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self { mem, queues })
    }

    /// The memory the server maps.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Queue `q`'s ring as the server's addresses: (descriptors, available, used).
    pub fn ring(&self, q: usize) -> (u64, u64, u64) {
        let r = self.queues[q].ring;
        (r, r + AVAIL_OFF, r + USED_OFF)
    }

    /// The eventfds of queue `q`: (kick, call).
    pub fn eventfds(&self, q: usize) -> (&EventFd, &EventFd) {
        (&self.queues[q].kick, &self.queues[q].call)
    }

    /// Empty rings and slots, as before the server was given them (after it gave them back).
    pub fn reset(&mut self) {
        for b in &mut self.queues {
            let zero = [0u8; RING_AREA_BYTES];
            let _ = self.mem.write_slice(&zero, GuestAddress(b.ring));
            b.avail_idx = 0;
            b.used_seen = 0;
            b.slots.iter_mut().for_each(|s| *s = None);
            b.broken = false;
            let _ = b.call.read();
        }
    }

    /// Moves the guest's requests on queue `q` to the server while slots are free; returns
    /// whether the guest wants an interrupt (for chains it gave back unserved).
    pub fn post(&mut self, q: usize, active: &mut Active) -> bool {
        let mut notify = false;
        let mut posted = false;
        while let Some(slot) = self.queues[q].slots.iter().position(Option::is_none) {
            let Some(chain) = active.queues[q].pop_descriptor_chain(&active.mem) else {
                if active.enable_notification(q) {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            match self.place(q, slot, chain, &active.mem) {
                Ok(()) => posted = true,
                Err(why) => {
                    tracing::warn!("virtio-fs: request dropped: {why}");
                    notify |= active.add_used(q, head, 0);
                }
            }
        }
        if posted {
            if let Err(e) = self.queues[q].kick.write(1) {
                tracing::error!("virtio-fs: cannot kick the file server: {e}");
            }
        }
        notify
    }

    /// Copies `chain`'s request into `slot` of queue `q` and posts it to the server.
    fn place(
        &mut self,
        q: usize,
        slot: usize,
        chain: DescriptorChain<&GuestMemoryMmap>,
        guest: &GuestMemoryMmap,
    ) -> Result<(), &'static str> {
        let head = chain.head_index();
        let at = self.queues[q].slots_at + slot as u64 * u64::from(SLOT_LEN);
        let mut read = 0u32;
        let mut writable = Vec::new();
        let mut room = 0u32;
        for d in chain {
            let used = read.checked_add(room).and_then(|n| n.checked_add(d.len()));
            if used.is_none_or(|n| n > SLOT_LEN) {
                return Err("larger than a FUSE request");
            }
            let access = if d.is_write_only() {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if !guest.check_range(d.addr(), d.len() as usize, access) {
                return Err("a buffer outside guest memory");
            }
            if d.is_write_only() {
                writable.push((d.addr(), d.len()));
                room += d.len();
            } else {
                if !writable.is_empty() {
                    return Err("a readable buffer after a writable one");
                }
                let to = GuestAddress(at + u64::from(read));
                copy_between(guest, d.addr(), &self.mem, to, d.len())
                    .map_err(|()| "an unreadable buffer")?;
                read += d.len();
            }
        }
        if read == 0 && room == 0 {
            return Err("an empty chain");
        }
        let b = &mut self.queues[q];
        let first = 2 * u16::try_from(slot).map_err(|_| "slot")?;
        let desc = |i: u16| GuestAddress(b.ring + 16 * u64::from(i));
        let write_desc = |i: u16, addr: u64, len: u32, flags: u16, next: u16| {
            self.mem
                .write_obj(Descriptor::new(addr, len, flags, next), desc(i))
        };
        let reply_at = at + u64::from(read);
        let written = match (read, room) {
            (0, _) => write_desc(first, reply_at, room, F_WRITE, 0),
            (_, 0) => write_desc(first, at, read, 0, 0),
            _ => write_desc(first, at, read, F_NEXT, first + 1)
                .and_then(|()| write_desc(first + 1, reply_at, room, F_WRITE, 0)),
        };
        written.map_err(|_| "the bounce ring")?;
        let avail = b.ring + AVAIL_OFF;
        let entry = avail + 4 + 2 * u64::from(b.avail_idx % RING);
        self.mem
            .write_obj(first, GuestAddress(entry))
            .map_err(|_| "the bounce ring")?;
        b.avail_idx = b.avail_idx.wrapping_add(1);
        // Release: the server sees the descriptors and the entry before the index.
        self.mem
            .store(b.avail_idx, GuestAddress(avail + 2), Ordering::Release)
            .map_err(|_| "the bounce ring")?;
        b.slots[slot] = Some(InFlight {
            head,
            writable,
            room,
            reply_at,
        });
        Ok(())
    }

    /// Takes the requests the server used on queue `q` back to the guest; returns whether
    /// the guest wants an interrupt.
    pub fn complete(&mut self, q: usize, active: &mut Active) -> bool {
        let _ = self.queues[q].call.read();
        let used = self.queues[q].ring + USED_OFF;
        let Ok(idx) = self
            .mem
            .load::<u16>(GuestAddress(used + 2), Ordering::Acquire)
        else {
            return false;
        };
        if self.queues[q].broken {
            return false;
        }
        if idx.wrapping_sub(self.queues[q].used_seen) > RING {
            tracing::error!("virtio-fs: the file server's used ring is corrupt; queue {q} stops");
            self.queues[q].broken = true;
            return false;
        }
        let mut notify = false;
        while self.queues[q].used_seen != idx {
            let b = &mut self.queues[q];
            let entry = used + 4 + 8 * u64::from(b.used_seen % RING);
            b.used_seen = b.used_seen.wrapping_add(1);
            let (Ok(id), Ok(len)) = (
                self.mem.read_obj::<u32>(GuestAddress(entry)),
                self.mem.read_obj::<u32>(GuestAddress(entry + 4)),
            ) else {
                continue;
            };
            let slot = usize::try_from(id / 2).unwrap_or(usize::MAX);
            let taken = (id % 2 == 0)
                .then(|| b.slots.get_mut(slot).and_then(Option::take))
                .flatten();
            let Some(req) = taken else {
                tracing::warn!("virtio-fs: the file server used request {id}, not in flight");
                continue;
            };
            let len = self.reply(&req, len, &active.mem);
            notify |= active.add_used(q, req.head, len);
        }
        notify
    }

    /// Copies `len` bytes of `req`'s reply (at most its room) into the guest's writable
    /// descriptors; returns how many arrived.
    fn reply(&mut self, req: &InFlight, len: u32, guest: &GuestMemoryMmap) -> u32 {
        if len > req.room {
            tracing::warn!(
                "virtio-fs: the file server wrote {len} bytes into {} of room",
                req.room
            );
        }
        let len = len.min(req.room);
        let mut done = 0u32;
        for &(addr, dlen) in &req.writable {
            let n = dlen.min(len - done);
            if n == 0 {
                break;
            }
            let from = GuestAddress(req.reply_at + u64::from(done));
            if copy_between(&self.mem, from, guest, addr, n).is_err() {
                break;
            }
            done += n;
        }
        done
    }
}

/// Copies `len` bytes at `src` in `from` to `dst` in `to`, one mapped piece at a time and
/// without staging (either range may span regions); `Err` when either is not wholly mapped,
/// with what was copied before the gap left in place.
fn copy_between(
    from: &GuestMemoryMmap,
    src: GuestAddress,
    to: &GuestMemoryMmap,
    dst: GuestAddress,
    len: u32,
) -> Result<(), ()> {
    let mut done = 0u64;
    for piece in from
        .get_slices(src, len as usize, Permissions::Read)
        .map_err(|_| ())?
    {
        let piece = piece.map_err(|_| ())?;
        let at = dst.checked_add(done).ok_or(())?;
        let mut off = 0;
        for target in to
            .get_slices(at, piece.len(), Permissions::Write)
            .map_err(|_| ())?
        {
            let target = target.map_err(|_| ())?;
            let part = piece.subslice(off, target.len()).map_err(|_| ())?;
            part.copy_to_volatile_slice(target);
            off += target.len();
        }
        if off != piece.len() {
            return Err(());
        }
        done += piece.len() as u64;
    }
    if done == u64::from(len) {
        Ok(())
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, GuestQueue};
    use crate::devices::virtio::Interrupt;
    use std::sync::Arc;

    /// A relay of one queue and the guest's side of it.
    fn setup() -> (Relay, Active, GuestQueue) {
        let mem = guest_memory();
        let gq = GuestQueue::new(&mem, 0x1000, 16);
        let active = Active {
            mem,
            queues: vec![gq.queue()],
            interrupt: Arc::new(Interrupt::new().unwrap()),
        };
        (Relay::new(1).unwrap(), active, gq)
    }

    /// The server's view: the avail index and descriptor `i` (addr, len, flags, next).
    fn avail_idx(r: &Relay) -> u16 {
        r.mem.read_obj(GuestAddress(AVAIL_OFF + 2)).unwrap()
    }
    fn desc(r: &Relay, i: u16) -> (u64, u32, u16, u16) {
        let at = 16 * u64::from(i);
        (
            r.mem.read_obj(GuestAddress(at)).unwrap(),
            r.mem.read_obj(GuestAddress(at + 8)).unwrap(),
            r.mem.read_obj(GuestAddress(at + 12)).unwrap(),
            r.mem.read_obj(GuestAddress(at + 14)).unwrap(),
        )
    }
    /// The server uses descriptor `id` with `len` bytes, as the `n`th used entry.
    fn server_uses(r: &Relay, n: u16, id: u32, len: u32) {
        let entry = USED_OFF + 4 + 8 * u64::from(n % RING);
        r.mem.write_obj(id, GuestAddress(entry)).unwrap();
        r.mem.write_obj(len, GuestAddress(entry + 4)).unwrap();
        r.mem
            .write_obj(n.wrapping_add(1), GuestAddress(USED_OFF + 2))
            .unwrap();
    }

    #[test]
    fn copies_cross_region_edges_and_stop_at_holes() {
        let two = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x3000), 0x1000),
        ])
        .unwrap();
        let flat = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let data: Vec<u8> = (0..0x40u8).collect();
        // Across the edge of two adjacent regions, both ways.
        two.write_slice(&data, GuestAddress(0xfe0)).unwrap();
        copy_between(&two, GuestAddress(0xfe0), &flat, GuestAddress(0x100), 0x40).unwrap();
        let mut back = vec![0u8; 0x40];
        flat.read_slice(&mut back, GuestAddress(0x100)).unwrap();
        assert_eq!(back, data);
        copy_between(&flat, GuestAddress(0x100), &two, GuestAddress(0x1fe0), 0x20).unwrap();
        two.read_slice(&mut back[..0x20], GuestAddress(0x1fe0))
            .unwrap();
        assert_eq!(back[..0x20], data[..0x20]);
        // Into or out of the hole at 0x2000: refused.
        assert!(copy_between(&flat, GuestAddress(0), &two, GuestAddress(0x1ff0), 0x20).is_err());
        assert!(copy_between(&two, GuestAddress(0x1ff0), &flat, GuestAddress(0), 0x20).is_err());
        assert!(copy_between(&two, GuestAddress(0x3ff0), &flat, GuestAddress(0), 0x20).is_err());
        // Nothing to copy is fine.
        assert!(copy_between(&two, GuestAddress(0), &flat, GuestAddress(0), 0).is_ok());
    }

    #[test]
    fn a_request_and_its_reply_cross_through_one_slot() {
        let (mut r, mut active, mut gq) = setup();
        active
            .mem
            .write_slice(&[1u8; 100], GuestAddress(0x10000))
            .unwrap();
        active
            .mem
            .write_slice(&[2u8; 50], GuestAddress(0x10100))
            .unwrap();
        let head = gq.add_chain(&[
            (0x10000, 100, false),
            (0x10100, 50, false),
            (0x20000, 64, true),
            (0x30000, 64, true),
        ]);
        assert!(!r.post(0, &mut active));
        assert_eq!(avail_idx(&r), 1);
        assert_eq!(r.queues[0].kick.read().unwrap(), 1, "the server was kicked");
        let (at, len, flags, next) = desc(&r, 0);
        assert_eq!(
            (len, flags, next),
            (150, F_NEXT, 1),
            "one readable descriptor"
        );
        let mut req = [0u8; 150];
        r.mem.read_slice(&mut req, GuestAddress(at)).unwrap();
        assert_eq!(&req[..100], &[1u8; 100]);
        assert_eq!(&req[100..], &[2u8; 50]);
        let (reply_at, room, flags, _) = desc(&r, 1);
        assert_eq!((room, flags), (128, F_WRITE), "one writable descriptor");
        let reply: Vec<u8> = (0..100).collect();
        r.mem.write_slice(&reply, GuestAddress(reply_at)).unwrap();
        server_uses(&r, 0, 0, 100);
        assert!(r.complete(0, &mut active), "the guest wants an interrupt");
        assert_eq!(gq.take_used(), vec![(head, 100)]);
        let mut a = [0u8; 64];
        let mut b = [0u8; 36];
        active
            .mem
            .read_slice(&mut a, GuestAddress(0x20000))
            .unwrap();
        active
            .mem
            .read_slice(&mut b, GuestAddress(0x30000))
            .unwrap();
        assert_eq!(a.as_slice(), &reply[..64]);
        assert_eq!(b.as_slice(), &reply[64..]);
        assert!(
            r.queues[0].slots.iter().all(Option::is_none),
            "the slot is free again"
        );
    }

    #[test]
    fn hostile_chains_are_given_back_unserved() {
        let (mut r, mut active, mut gq) = setup();
        let too_big = gq.add_chain(&[(0x10000, 64, false), (0x100000, SLOT_LEN, true)]);
        let read_after_write = gq.add_chain(&[(0x20000, 64, true), (0x10000, 64, false)]);
        let outside = gq.add_chain(&[(0xfff_f000, 0x2000, false)]);
        let empty = gq.add_chain(&[(0x10000, 0, false)]);
        let fine = gq.add_chain(&[(0x10000, 40, false), (0x20000, 16, true)]);
        assert!(
            r.post(0, &mut active),
            "the unserved chains are used at once"
        );
        assert_eq!(
            gq.take_used(),
            vec![
                (too_big, 0),
                (read_after_write, 0),
                (outside, 0),
                (empty, 0)
            ]
        );
        assert_eq!(
            avail_idx(&r),
            1,
            "only the well-formed request reached the server"
        );
        server_uses(&r, 0, 0, 16);
        r.complete(0, &mut active);
        assert_eq!(gq.take_used(), vec![(fine, 16)]);
    }

    #[test]
    fn requests_wait_for_a_free_slot() {
        let (mut r, mut active, mut gq) = setup();
        let heads: Vec<u16> = (0..SLOTS + 2)
            .map(|i| gq.add_chain(&[(0x10000 + 0x100 * u64::from(i), 40, false)]))
            .collect();
        r.post(0, &mut active);
        assert_eq!(avail_idx(&r), SLOTS, "one request per slot");
        // The server answers the second request first.
        server_uses(&r, 0, 2, 0);
        r.complete(0, &mut active);
        r.post(0, &mut active);
        assert_eq!(gq.take_used(), vec![(heads[1], 0)]);
        assert_eq!(
            avail_idx(&r),
            SLOTS + 1,
            "the freed slot took the next request"
        );
        assert_eq!(desc(&r, 2).1, 40);
    }

    #[test]
    fn a_misbehaving_server_cannot_reach_past_its_requests() {
        let (mut r, mut active, mut gq) = setup();
        let head = gq.add_chain(&[(0x10000, 40, false), (0x20000, 16, true)]);
        active
            .mem
            .write_slice(&[7u8; 32], GuestAddress(0x20010))
            .unwrap();
        r.post(0, &mut active);
        // Not in flight, odd (the second descriptor of a request), out of range.
        server_uses(&r, 0, 2, 8);
        server_uses(&r, 1, 1, 8);
        server_uses(&r, 2, 1000, 8);
        r.complete(0, &mut active);
        assert!(gq.take_used().is_empty());
        // More than the room: clamped, nothing written past the guest's buffer.
        server_uses(&r, 3, 0, 4096);
        r.complete(0, &mut active);
        assert_eq!(gq.take_used(), vec![(head, 16)]);
        let mut after = [0u8; 32];
        active
            .mem
            .read_slice(&mut after, GuestAddress(0x20010))
            .unwrap();
        assert_eq!(after, [7u8; 32]);
        // A used index beyond what the ring holds: the queue is ignored from then on.
        gq.add_chain(&[(0x10000, 40, false)]);
        r.post(0, &mut active);
        r.mem
            .write_obj(4 + RING + 1, GuestAddress(USED_OFF + 2))
            .unwrap();
        r.complete(0, &mut active);
        assert!(r.queues[0].broken);
        assert!(gq.take_used().is_empty());
        r.reset();
        assert!(!r.queues[0].broken, "a reset starts the rings over");
        assert_eq!(avail_idx(&r), 0);
    }
}
