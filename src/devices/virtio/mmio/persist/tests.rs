//! Save → serde → restore of a transport with a real device (virtio-rng), queue positions
//! included, and the checks that keep a bad state from being restored.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_mmio as reg;

use super::super::{S_ACKNOWLEDGED, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK};
use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::test_utils::{guest_memory, GuestQueue};
use crate::devices::virtio::{SharedVirtioDevice, VIRTIO_F_VERSION_1};

fn wr(t: &mut MmioTransport, off: u32, v: u32) {
    t.write(u64::from(off), &v.to_le_bytes());
}

fn transport(mem: &vm_memory::GuestMemoryMmap) -> (MmioTransport, Arc<Mutex<Rng>>) {
    let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
    let shared: SharedVirtioDevice = rng.clone();
    (MmioTransport::new(mem.clone(), shared).unwrap(), rng)
}

/// Drives the transport to DRIVER_OK with the rings of `g`, as Linux's driver does.
fn bring_up(t: &mut MmioTransport, g: &GuestQueue) {
    bring_up_all(t, &[g]);
}

/// As [`bring_up`], with one ring per queue of the device.
fn bring_up_all(t: &mut MmioTransport, gs: &[&GuestQueue]) {
    wr(t, reg::VIRTIO_MMIO_STATUS, S_ACKNOWLEDGED);
    wr(t, reg::VIRTIO_MMIO_STATUS, S_DRIVER);
    wr(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(
        t,
        reg::VIRTIO_MMIO_DRIVER_FEATURES,
        (VIRTIO_F_VERSION_1 >> 32) as u32,
    );
    wr(t, reg::VIRTIO_MMIO_STATUS, S_FEATURES_OK);
    for (i, g) in (0u32..).zip(gs) {
        wr(t, reg::VIRTIO_MMIO_QUEUE_SEL, i);
        wr(t, reg::VIRTIO_MMIO_QUEUE_NUM, u32::from(g.size));
        let low = |a: u64| u32::try_from(a).unwrap();
        wr(t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, low(g.desc));
        wr(t, reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, low(g.avail));
        wr(t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, low(g.used));
        wr(t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
    }
    wr(t, reg::VIRTIO_MMIO_STATUS, S_DRIVER_OK);
    assert_eq!(t.status, S_DRIVER_OK);
}

/// A template's virtio-fs device (no file server) is saved active, with its queues as the
/// driver handed them over, and restores onto a fresh one: what a VM with volumes restored
/// from a template goes through before its device is wired to a server.
#[test]
fn a_virtio_fs_placeholder_round_trips() {
    let mem = guest_memory();
    let fs = || {
        let dev = Arc::new(Mutex::new(Fs::placeholder("brig-vol0").unwrap()));
        let shared: SharedVirtioDevice = dev;
        MmioTransport::new(mem.clone(), shared).unwrap()
    };
    let mut t = fs();
    let hiprio = GuestQueue::new(&mem, 0x1000, 16);
    let requests = GuestQueue::new(&mem, 0x4000, 16);
    bring_up_all(&mut t, &[&hiprio, &requests]);
    let saved = t.save();
    let live = saved.active_queues.clone().expect("saved with its queues");
    assert_eq!(live.len(), 2);
    assert_eq!(live[1].desc_table, requests.desc);
    let mut t2 = fs();
    t2.restore(&saved).unwrap();
    assert_eq!(t2.save(), saved);
}

#[test]
fn an_active_device_round_trips_with_its_queue_positions() {
    let mem = guest_memory();
    let (mut t, rng) = transport(&mem);
    let mut g = GuestQueue::new(&mem, 0x1000, 16);
    bring_up(&mut t, &g);
    for _ in 0..3 {
        g.add_chain(&[(0x8000, 64, true)]);
    }
    assert_eq!(rng.lock().unwrap().process_queue(), 3);
    assert_eq!(g.take_used().len(), 3);
    let saved = t.save();
    assert_eq!(saved.active_queues.as_ref().unwrap()[0].next_used, 3);
    assert_eq!(saved.active_queues.as_ref().unwrap()[0].next_avail, 3);
    assert_eq!(
        saved.queues[0].next_used, 0,
        "the transport's copy is configuration"
    );
    assert_ne!(saved.interrupt_status, 0);

    let json = serde_json::to_string(&saved).unwrap();
    let back: TransportState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, saved);

    let (mut t2, rng2) = transport(&mem);
    t2.restore(&back).unwrap();
    assert_eq!(t2.save(), saved);
    // The restored device goes on where the first stopped: the next chain's used entry is
    // the fourth.
    g.add_chain(&[(0x8000, 32, true)]);
    assert_eq!(rng2.lock().unwrap().process_queue(), 1);
    let used = g.take_used();
    assert_eq!(used.len(), 1);
    assert_eq!(
        t2.save().active_queues.unwrap()[0].next_used,
        4,
        "continued from the saved position"
    );
}

#[test]
fn bad_states_are_refused() {
    let mem = guest_memory();
    let (mut t, _rng) = transport(&mem);
    let g = GuestQueue::new(&mem, 0x1000, 16);
    bring_up(&mut t, &g);
    let saved = t.save();

    let mut other_type = saved.clone();
    other_type.device_type = 2;
    let (mut fresh, _) = transport(&mem);
    assert!(matches!(
        fresh.restore(&other_type),
        Err(RestoreError::DeviceType { .. })
    ));

    let mut outside = saved.clone();
    outside.active_queues.as_mut().unwrap()[0].used_ring = 1 << 40;
    let (mut fresh, _) = transport(&mem);
    assert!(matches!(
        fresh.restore(&outside),
        Err(RestoreError::Queue { index: 0, .. })
    ));

    let mut too_big = saved.clone();
    too_big.queues[0].size = 1024;
    let (mut fresh, _) = transport(&mem);
    assert!(fresh.restore(&too_big).is_err());

    let mut missing = saved.clone();
    missing.active_queues = None;
    let (mut fresh, _) = transport(&mem);
    assert!(matches!(
        fresh.restore(&missing),
        Err(RestoreError::NoActiveQueues)
    ));

    let mut unoffered = saved;
    unoffered.acked_features |= 1 << 60;
    let (mut fresh, _) = transport(&mem);
    assert!(matches!(
        fresh.restore(&unoffered),
        Err(RestoreError::Acked(_))
    ));
}

#[test]
fn a_config_change_bumps_the_generation_and_interrupts_an_active_device() {
    let mem = guest_memory();
    let (mut t, _rng) = transport(&mem);
    t.config_changed();
    assert_eq!(
        (t.config_generation, t.interrupt.status()),
        (1, 0),
        "not yet active"
    );
    let g = GuestQueue::new(&mem, 0x1000, 16);
    bring_up(&mut t, &g);
    let _ = t.interrupt.eventfd().read();
    t.config_changed();
    assert_eq!(t.config_generation, 2);
    assert_eq!(
        t.interrupt.status(),
        virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(t.interrupt.eventfd().read().unwrap(), 1);
}
