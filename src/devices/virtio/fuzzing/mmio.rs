//! The virtio-mmio transport under a hostile driver: register reads and writes at any
//! offset and width, in any order, mixed with the steps of a correct initialization (so
//! that the device does get activated) and with hostile rings behind the queues.

use std::sync::{Arc, Mutex};

use event_manager::EventSet;

use super::Guest;
use crate::devices::bus::BusDevice;
use crate::devices::rate_limiter::IoLimits;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::mock::mock_backend;
use crate::devices::virtio::net::{Net, NetConfig};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::test_utils::guest_memory;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{SharedVirtioDevice, MMIO_NOTIFY_OFFSET};

/// Register offsets (virtio 1.2 §4.2.2) the well-behaved steps use.
const MAGIC: u64 = 0x00;
const VERSION: u64 = 0x04;
const DEVICE_FEATURES: u64 = 0x10;
const DEVICE_FEATURES_SEL: u64 = 0x14;
const DRIVER_FEATURES: u64 = 0x20;
const DRIVER_FEATURES_SEL: u64 = 0x24;
const QUEUE_SEL: u64 = 0x30;
const QUEUE_NUM: u64 = 0x38;
const QUEUE_READY: u64 = 0x44;
const INTERRUPT_STATUS: u64 = 0x60;
const STATUS: u64 = 0x70;
const QUEUE_DESC_LOW: u64 = 0x80;
const QUEUE_AVAIL_LOW: u64 = 0x90;
const QUEUE_USED_LOW: u64 = 0xa0;

/// Drives a virtio-mmio transport, in front of the device the first byte of `data` picks
/// (rng, blk, net or vsock), with the driver the rest describes. Checks: no panic, the
/// identification registers never change, and a reset always brings Status and
/// InterruptStatus back to 0.
pub fn virtio_mmio(data: &[u8]) {
    let which = data.first().copied().unwrap_or(0) % 4;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mem = guest_memory();
    let mut g = Guest::new(data.get(1..).unwrap_or(&[]), &mem, 0);
    // The device, shared with the transport, and how the event loop would serve it.
    let (device, mut kick): (SharedVirtioDevice, Box<dyn FnMut()>) = match which {
        0 => {
            let d = Arc::new(Mutex::new(Rng::new().expect("an rng device")));
            let k = d.clone();
            (
                d,
                Box::new(move || {
                    k.lock().unwrap().process_queue();
                }),
            )
        }
        1 => {
            let disk = dir.path().join("disk");
            std::fs::write(&disk, vec![0u8; 8 * 512]).expect("the disk file is written");
            let d = Block::new(&disk, false, "brig-fuzz-0", IoLimits::default())
                .expect("a block device");
            let d = Arc::new(Mutex::new(d));
            let k = d.clone();
            (d, Box::new(move || k.lock().unwrap().process_queue()))
        }
        2 => {
            let (backend, _wire) = mock_backend();
            let config = NetConfig {
                mac: None,
                mtu: None,
            };
            let d = Net::new(config, Box::new(backend)).expect("a net device");
            let d = Arc::new(Mutex::new(d));
            let k = d.clone();
            let kick = move || {
                let mut d = k.lock().unwrap();
                d.process_tx();
                d.process_backend(EventSet::IN | EventSet::OUT);
            };
            (d, Box::new(kick))
        }
        _ => {
            let d = Vsock::new(3, &dir.path().join("v.sock")).expect("a vsock device");
            let d = Arc::new(Mutex::new(d));
            let k = d.clone();
            let kick = move || {
                let mut d = k.lock().unwrap();
                d.process_tx();
                d.process_backend();
            };
            (d, Box::new(kick))
        }
    };
    let queue_count = device.lock().unwrap().queue_max_sizes().len();
    g = Guest::new_with(g, queue_count);
    let mut t = MmioTransport::new(mem.clone(), device.clone()).expect("a transport");
    let ident = [
        read(&mut t, MAGIC),
        read(&mut t, VERSION),
        read(&mut t, 0x08),
    ];
    g.drive(6, |g, action| match action {
        0 => {
            let (offset, size) = (offset(g), size(g));
            let mut buf = vec![0u8; size];
            t.read(offset, &mut buf);
        }
        1 => {
            let (offset, size) = (offset(g), size(g));
            let mut buf = vec![0u8; size];
            for b in &mut buf {
                *b = g.byte();
            }
            t.write(offset, &buf);
        }
        // What a correct driver does next, whatever state the transport is in.
        2 | 3 => init_step(g, &mut t, queue_count),
        4 => {
            let q = u32::try_from(g.index(queue_count + 2)).unwrap_or(0);
            write(&mut t, MMIO_NOTIFY_OFFSET, q);
            kick();
        }
        _ => {
            write(&mut t, STATUS, 0);
            assert_eq!(read(&mut t, STATUS), 0, "Status after a reset");
            assert_eq!(
                read(&mut t, INTERRUPT_STATUS),
                0,
                "interrupts after a reset"
            );
        }
    });
    kick();
    let now = [
        read(&mut t, MAGIC),
        read(&mut t, VERSION),
        read(&mut t, 0x08),
    ];
    assert_eq!(ident, now, "the identification registers changed");
    assert_eq!(ident[0], 0x7472_6976, "the magic value");
}

impl<'a> Guest<'a> {
    /// `g` with rings for `queue_count` queues.
    fn new_with(g: Guest<'a>, queue_count: usize) -> Guest<'a> {
        let mut fresh = Guest::new(&[], &g.mem, queue_count);
        fresh.u = g.u;
        fresh
    }
}

fn read(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn write(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// An offset in the window: mostly a register, sometimes config space, anywhere, or
/// misaligned.
fn offset(g: &mut Guest) -> u64 {
    match g.below(8) {
        0 => g.u64(),
        1 => g.below(0x1000),
        2 | 3 => 0x100 + g.below(0x40),
        _ => 4 * g.below(0x30),
    }
}

/// An access width: mostly 4, sometimes any other.
fn size(g: &mut Guest) -> usize {
    g.pick(&[4, 4, 4, 1, 2, 8, 3, 0, 16])
}

/// The next step of the initialization sequence (§3.1.1) from the current Status: the
/// fuzzer gets past the state machine without having to guess it.
fn init_step(g: &mut Guest, t: &mut MmioTransport, queue_count: usize) {
    match read(t, STATUS) {
        0 => write(t, STATUS, 1),
        1 => write(t, STATUS, 3),
        3 => {
            for sel in 0..2 {
                write(t, DEVICE_FEATURES_SEL, sel);
                let offered = read(t, DEVICE_FEATURES);
                // Sometimes a feature the device did not offer.
                let extra = if g.below(8) == 0 { 1 << g.below(32) } else { 0 };
                write(t, DRIVER_FEATURES_SEL, sel);
                write(t, DRIVER_FEATURES, offered | extra);
            }
            write(t, STATUS, 11);
        }
        11 => {
            for (i, q) in (0u32..).zip(g.queues.iter().take(queue_count)) {
                write(t, QUEUE_SEL, i);
                write(t, QUEUE_NUM, u32::from(q.size));
                for (reg, addr) in [
                    (QUEUE_DESC_LOW, q.desc),
                    (QUEUE_AVAIL_LOW, q.avail),
                    (QUEUE_USED_LOW, q.used),
                ] {
                    write(t, reg, (addr & 0xffff_ffff) as u32);
                    write(t, reg + 4, (addr >> 32) as u32);
                }
                write(t, QUEUE_READY, 1);
            }
            write(t, STATUS, 15);
        }
        _ => {}
    }
}
