//! Tests of virtio-blk: requests through a real virtqueue in mock guest memory against a
//! temporary file.

use std::io::Write;
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{S_IOERR as IOERR, S_OK as OK, S_UNSUPP as UNSUPP};
use super::Block;
use crate::devices::rate_limiter::IoLimits;
use crate::devices::virtio::test_utils::{activate, guest_memory, GuestQueue};
use crate::devices::virtio::VirtioDevice;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const SECTORS: u64 = 8;

struct Env {
    file: tempfile::NamedTempFile,
    mem: GuestMemoryMmap,
    q: GuestQueue,
    dev: Block,
}

/// A disk of 8 sectors, sector i filled with byte i, plus half a sector of tail.
fn env(read_only: bool) -> Env {
    env_limited(read_only, IoLimits::default())
}

fn env_limited(read_only: bool, limits: IoLimits) -> Env {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    for i in 0..SECTORS {
        file.write_all(&[u8::try_from(i).unwrap(); 512]).unwrap();
    }
    file.write_all(&[0xee; 256]).unwrap();
    let mem = guest_memory();
    let q = GuestQueue::new(&mem, 0x1000, 16);
    let mut dev = Block::new(file.path(), read_only, "brig-disk-0", limits).unwrap();
    activate(&mut dev, &[&q]);
    Env { file, mem, q, dev }
}

impl Env {
    /// Runs one request; `data` is (len, device-writable). Returns (status, used length).
    fn request(&mut self, type_: u32, sector: u64, data: Option<(u32, bool)>) -> (u8, u32) {
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&type_.to_le_bytes());
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mut bufs = vec![(HDR, 16, false)];
        if let Some((len, write)) = data {
            bufs.push((DATA, len, write));
        }
        bufs.push((STATUS, 1, true));
        self.submit(&bufs)
    }

    fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> (u8, u32) {
        let head = self.q.add_chain(bufs);
        self.dev.process_queue();
        let used = self.q.take_used();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].0, head);
        let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        (status, used[0].1)
    }

    fn file_sector(&self, i: u64) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        self.file.as_file().read_exact_at(&mut b, i * 512).unwrap();
        b
    }
}

#[test]
fn capacity_config_and_features() {
    let e = env(false);
    let mut b = [0u8; 8];
    e.dev.read_config(0, &mut b);
    assert_eq!(
        u64::from_le_bytes(b),
        SECTORS,
        "the half-sector tail is not exposed"
    );
    let mut b = [0u8; 4];
    e.dev.read_config(12, &mut b);
    assert_eq!(u32::from_le_bytes(b), 254);
    assert_ne!(e.dev.features() & 1 << VIRTIO_BLK_F_FLUSH, 0);
    assert_eq!(e.dev.features() & 1 << VIRTIO_BLK_F_RO, 0);
    assert_eq!(e.dev.device_type(), 2);
}

#[test]
fn reads_sectors() {
    let mut e = env(false);
    assert_eq!(
        e.request(VIRTIO_BLK_T_IN, 1, Some((1024, true))),
        (OK, 1025)
    );
    let mut b = vec![0u8; 1024];
    e.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert!(b[..512].iter().all(|&x| x == 1));
    assert!(b[512..].iter().all(|&x| x == 2));
    // The last sector, split over two descriptors.
    let head_bufs = [
        (HDR, 16, false),
        (DATA, 100, true),
        (DATA + 0x1000, 412, true),
        (STATUS, 1, true),
    ];
    let mut hdr = [0u8; 16];
    hdr[8..].copy_from_slice(&7u64.to_le_bytes());
    e.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    assert_eq!(e.submit(&head_bufs), (OK, 513));
    let x: u8 = e.mem.read_obj(GuestAddress(DATA + 0x1000 + 411)).unwrap();
    assert_eq!(x, 7);
}

#[test]
fn writes_and_flushes() {
    let mut e = env(false);
    e.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(e.request(VIRTIO_BLK_T_OUT, 3, Some((512, false))), (OK, 1));
    assert_eq!(e.file_sector(3), vec![0xab; 512]);
    assert_eq!(e.file_sector(2), vec![2; 512]);
    assert_eq!(e.request(VIRTIO_BLK_T_FLUSH, 0, None), (OK, 1));
}

#[test]
fn out_of_range_and_unaligned_requests_fail() {
    let mut e = env(false);
    assert_eq!(e.request(VIRTIO_BLK_T_IN, 7, Some((1024, true))).0, IOERR);
    assert_eq!(e.request(VIRTIO_BLK_T_IN, 8, Some((512, true))).0, IOERR);
    assert_eq!(
        e.request(VIRTIO_BLK_T_IN, u64::MAX, Some((512, true))).0,
        IOERR
    );
    assert_eq!(e.request(VIRTIO_BLK_T_IN, 0, Some((100, true))).0, IOERR);
    e.mem
        .write_slice(&[0xcd; 1024], GuestAddress(DATA))
        .unwrap();
    assert_eq!(e.request(VIRTIO_BLK_T_OUT, 7, Some((1024, false))).0, IOERR);
    assert_eq!(
        e.request(VIRTIO_BLK_T_OUT, u64::MAX - 1, Some((1024, false)))
            .0,
        IOERR
    );
    assert_eq!(e.file_sector(7), vec![7; 512], "nothing was written");
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut e = env(true);
    assert_ne!(e.dev.features() & 1 << VIRTIO_BLK_F_RO, 0);
    e.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        e.request(VIRTIO_BLK_T_OUT, 0, Some((512, false))),
        (IOERR, 1)
    );
    assert_eq!(e.file_sector(0), vec![0; 512]);
    assert_eq!(e.request(VIRTIO_BLK_T_IN, 0, Some((512, true))), (OK, 513));
    assert_eq!(e.request(VIRTIO_BLK_T_FLUSH, 0, None), (OK, 1));
}

#[test]
fn get_id_and_unsupported_types() {
    let mut e = env(false);
    assert_eq!(
        e.request(VIRTIO_BLK_T_GET_ID, 0, Some((20, true))),
        (OK, 21)
    );
    let mut id = [0u8; 20];
    e.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..11], b"brig-disk-0");
    assert_eq!(id[11..], [0; 9]);
    // Discard, write-zeroes and garbage are not implemented.
    for t in [11, 13, 0xdead] {
        assert_eq!(e.request(t, 0, None), (UNSUPP, 1));
    }
}

#[test]
fn malformed_chains_are_survived() {
    let mut e = env(false);
    // Header too short.
    assert_eq!(e.submit(&[(HDR, 8, false), (STATUS, 1, true)]), (IOERR, 1));
    // No writable status byte: nothing can be reported, the chain is just returned.
    e.mem.write_obj(0x55u8, GuestAddress(STATUS)).unwrap();
    let (status, len) = e.submit(&[(HDR, 16, false), (STATUS, 1, false)]);
    assert_eq!((status, len), (0x55, 0));
    // A buffer outside guest memory.
    let (_, len) = e.submit(&[
        (HDR, 16, false),
        (0xffff_0000, 512, true),
        (STATUS, 1, true),
    ]);
    assert_eq!(len, 0);
    // And the device still works.
    assert_eq!(e.request(VIRTIO_BLK_T_IN, 0, Some((512, true))), (OK, 513));
}

#[test]
fn missing_file_is_an_error() {
    let err = Block::new(
        std::path::Path::new("/nonexistent/disk.img"),
        true,
        "x",
        IoLimits::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/disk.img"));
}

#[test]
fn chain_longer_than_4_gib_fails_cleanly() {
    // Nine overlapping 512 MiB buffers claim a 4.5 GiB read, whose used length would not fit
    // the used ring's u32. virtio-queue ends the chain before the descriptor that crosses
    // 2^32 bytes, so the device sees 7 buffers (3.5 GiB) and no separate status buffer: the
    // request fails (not whole sectors) with IOERR in the last byte it has, before any I/O,
    // and the used length is 1, not a wrapped value. The sparse disk is large enough for
    // the range check to pass.
    const BUF: u32 = 512 << 20;
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(5 << 30).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 * BUF as usize)]).unwrap();
    let mut q = GuestQueue::new(&mem, 0x1000, 16);
    let mut dev = Block::new(file.path(), false, "big", IoLimits::default()).unwrap();
    activate(&mut dev, &[&q]);
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    let mut bufs = vec![(HDR, 16, false)];
    bufs.extend([(u64::from(BUF), BUF, true); 9]);
    bufs.push((STATUS, 1, true));
    let head = q.add_chain(&bufs);
    dev.process_queue();
    assert_eq!(q.take_used(), vec![(head, 1)]);
    let last = GuestAddress(u64::from(2 * BUF - 1));
    assert_eq!(mem.read_obj::<u8>(last).unwrap(), IOERR);
}

/// A request header for `type_` at `sector` at guest address `at`.
fn header(mem: &GuestMemoryMmap, at: u64, type_: u32, sector: u64) {
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&type_.to_le_bytes());
    hdr[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(at)).unwrap();
}

#[test]
fn over_budget_requests_wait_on_the_ring_for_the_timer() {
    // Two writes a second: the third of three waits for the limiter's timer.
    let mut e = env_limited(
        false,
        IoLimits {
            write_iops: 2,
            ..Default::default()
        },
    );
    for i in 0..3u64 {
        header(&e.mem, HDR + i * 0x100, VIRTIO_BLK_T_OUT, i);
        e.q.add_chain(&[
            (HDR + i * 0x100, 16, false),
            (DATA, 512, false),
            (STATUS + i, 1, true),
        ]);
    }
    e.dev.process_queue();
    assert_eq!(e.q.take_used().len(), 2, "two within the budget");
    assert!(e.dev.rate_limited());
    e.dev.process_queue();
    assert!(e.q.take_used().is_empty(), "nothing until the timer fires");
    // The third op fits after half a second; the timer fd says so.
    let t0 = std::time::Instant::now();
    e.dev.wait_for_limiter_timer();
    assert!(t0.elapsed() >= std::time::Duration::from_millis(400));
    e.dev.on_limiter_timer();
    let used = e.q.take_used();
    assert_eq!(used.len(), 1, "the third, once refilled");
    let status: u8 = e.mem.read_obj(GuestAddress(STATUS + 2)).unwrap();
    assert_eq!(status, OK);
    // Reads are not limited by a write limit; flushes are never limited.
    assert_eq!(e.request(VIRTIO_BLK_T_IN, 0, Some((512, true))), (OK, 513));
}

#[test]
fn a_request_larger_than_the_bucket_is_served_when_it_is_full() {
    // 512 bytes a second, a 1024-byte read: served at once (the bucket is full), and the
    // debt holds the next read back.
    let mut e = env_limited(
        true,
        IoLimits {
            read_bps: 512,
            ..Default::default()
        },
    );
    assert_eq!(
        e.request(VIRTIO_BLK_T_IN, 0, Some((1024, true))),
        (OK, 1025)
    );
    header(&e.mem, HDR, VIRTIO_BLK_T_IN, 0);
    e.q.add_chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    e.dev.process_queue();
    assert!(e.q.take_used().is_empty());
    assert!(e.dev.rate_limited());
}
