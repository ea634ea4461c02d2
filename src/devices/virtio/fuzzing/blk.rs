//! virtio-blk under a hostile driver: request headers, sectors and buffers as a malicious
//! guest writes them, on a small disk file.

use std::io::Write;

use vm_memory::{Bytes, GuestAddress};

use super::{Guest, HEADERS};
use crate::devices::rate_limiter::IoLimits;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::test_utils::{activate, guest_memory};
use crate::devices::virtio::VirtioDevice;

/// The disk: 8 sectors and half a sector of tail the guest never sees.
const DISK_LEN: usize = 8 * 512 + 256;

/// Drives a virtio-blk device over an 8-sector disk file with the guest `data` describes.
/// Checks: no panic, the file never grows, and a read-only disk never changes.
pub fn virtio_blk(data: &[u8]) {
    let read_only = data.first().is_some_and(|b| b & 1 == 1);
    let mut file = tempfile::NamedTempFile::new().expect("a temporary disk file");
    let original: Vec<u8> = (0..DISK_LEN / 512 + 1)
        .flat_map(|i| [u8::try_from(i).unwrap_or(0xff); 512])
        .take(DISK_LEN)
        .collect();
    file.write_all(&original).expect("the disk file is written");
    let mem = guest_memory();
    let mut g = Guest::new(data.get(1..).unwrap_or(&[]), &mem, 1);
    let mut dev = Block::new(file.path(), read_only, "brig-fuzz-0", IoLimits::default())
        .expect("a block device");
    activate(&mut dev, &[&g.queues[0]]);
    g.drive(3, |g, action| match action {
        // A request header with a plausible type and a sector near the disk's end.
        0 => {
            let type_ = match g.below(3) {
                0 => g.u32(),
                _ => g.pick(&[0, 1, 4, 8, 11, 13]),
            };
            let sector = match g.below(3) {
                0 => g.u64(),
                _ => g.below(12),
            };
            let mut hdr = [0u8; 16];
            hdr[..4].copy_from_slice(&type_.to_le_bytes());
            hdr[8..].copy_from_slice(&sector.to_le_bytes());
            let at = HEADERS + 16 * g.below(64);
            let _ = mem.write_slice(&hdr, GuestAddress(at));
        }
        1 => dev.process_queue(),
        _ => {
            dev.reset();
            activate(&mut dev, &[&g.queues[0]]);
        }
    });
    dev.process_queue();
    let now = std::fs::read(file.path()).expect("the disk file is readable");
    assert_eq!(now.len(), DISK_LEN, "the guest changed the disk's size");
    if read_only {
        assert!(now == original, "the guest wrote to a read-only disk");
    }
    assert_eq!(
        &now[8 * 512..],
        &original[8 * 512..],
        "the guest wrote past the last whole sector"
    );
}
