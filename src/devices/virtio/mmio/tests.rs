//! Tests of the virtio-mmio transport: register semantics, the Status state machine, and what
//! a hostile driver can write.

use super::*;
use crate::devices::virtio::test_utils::{guest_memory, GuestQueue};
use crate::devices::virtio::{ActivateError, DeviceCommon};
use event_manager::{EventOps, Events, MutEventSubscriber};

/// A device that records what the transport asks of it (it overrides every default method).
struct Recorder {
    common: DeviceCommon,
    acked: Option<u64>,
    activations: usize,
    resets: usize,
    fail_activate: bool,
    queue_sizes: Vec<u16>,
    evts: Vec<EventFd>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            common: DeviceCommon::new(2).unwrap(),
            acked: None,
            activations: 0,
            resets: 0,
            fail_activate: false,
            queue_sizes: Vec::new(),
            evts: Vec::new(),
        }
    }
}

impl MutEventSubscriber for Recorder {
    fn process(&mut self, _: Events, _: &mut EventOps) {}
    fn init(&mut self, _: &mut EventOps) {}
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 0b101
    }
    fn ack_features(&mut self, features: u64) {
        self.acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_bytes(&[0xa, 0xb, 0xc, 0xd], offset, data);
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(
        &mut self,
        _: GuestMemoryMmap,
        queues: Vec<Queue>,
        evts: Vec<EventFd>,
        _: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::AlreadyActive);
        }
        self.activations += 1;
        self.queue_sizes = queues.iter().map(|q| q.size()).collect();
        self.evts = evts;
        Ok(())
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
}

fn setup() -> (MmioTransport, Arc<Mutex<Recorder>>) {
    let dev = Arc::new(Mutex::new(Recorder::new()));
    let t = MmioTransport::new(guest_memory(), dev.clone()).unwrap();
    (t, dev)
}

fn rd(t: &mut MmioTransport, off: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

/// The Status register, as the driver reads it.
fn status(t: &mut MmioTransport) -> u32 {
    rd(t, reg::VIRTIO_MMIO_STATUS)
}

fn wr(t: &mut MmioTransport, off: u32, v: u32) {
    t.write(u64::from(off), &v.to_le_bytes());
}

/// Negotiates features and lands in FEATURES_OK.
fn to_features_ok(t: &mut MmioTransport) {
    wr(t, reg::VIRTIO_MMIO_STATUS, S_ACKNOWLEDGED);
    wr(t, reg::VIRTIO_MMIO_STATUS, S_DRIVER);
    wr(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, 0b100);
    wr(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr(t, reg::VIRTIO_MMIO_STATUS, S_FEATURES_OK);
    assert_eq!(status(t), S_FEATURES_OK);
}

/// Programs queue `sel` with the rings of `g`.
fn setup_queue(t: &mut MmioTransport, sel: u32, g: &GuestQueue) {
    wr(t, reg::VIRTIO_MMIO_QUEUE_SEL, sel);
    wr(t, reg::VIRTIO_MMIO_QUEUE_NUM, u32::from(g.size));
    wr(
        t,
        reg::VIRTIO_MMIO_QUEUE_DESC_LOW,
        u32::try_from(g.desc).unwrap(),
    );
    wr(t, reg::VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
    wr(
        t,
        reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
        u32::try_from(g.avail).unwrap(),
    );
    wr(t, reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
    wr(
        t,
        reg::VIRTIO_MMIO_QUEUE_USED_LOW,
        u32::try_from(g.used).unwrap(),
    );
    wr(t, reg::VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
    wr(t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
}

fn setup_queues(t: &mut MmioTransport) {
    let mem = guest_memory();
    setup_queue(t, 0, &GuestQueue::new(&mem, 0x1000, 16));
    setup_queue(t, 1, &GuestQueue::new(&mem, 0x2000, 8));
}

#[test]
fn identification_registers() {
    let (mut t, _) = setup();
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_VERSION), 2);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_DEVICE_ID), 42);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_VENDOR_ID), 0);
    wr(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES), 0b101);
    wr(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES), 1);
    wr(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES), 0);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
}

#[test]
fn wrong_width_accesses_are_ignored() {
    let (mut t, _) = setup();
    let mut b = [0xffu8; 2];
    t.read(0, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xffu8; 4];
    t.read(2, &mut b);
    assert_eq!(b, [0; 4]);
    t.write(u64::from(reg::VIRTIO_MMIO_STATUS), &[1]);
    assert_eq!(status(&mut t), 0);
    // Config space takes 1-byte reads.
    let mut b = [0u8; 1];
    t.read(0x101, &mut b);
    assert_eq!(b, [0xb]);
    let mut b = [0u8; 4];
    t.read(0x102, &mut b);
    assert_eq!(b, [0xc, 0xd, 0, 0]);
}

#[test]
fn full_initialization_activates_once() {
    let (mut t, dev) = setup();
    to_features_ok(&mut t);
    assert_eq!(dev.lock().unwrap().acked, Some(VIRTIO_F_VERSION_1 | 0b100));
    setup_queues(&mut t);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_DRIVER_OK);
    assert_eq!(status(&mut t), S_DRIVER_OK);
    {
        let d = dev.lock().unwrap();
        assert_eq!(d.activations, 1);
        assert_eq!(d.queue_sizes, vec![16, 8]);
    }
    // Writing DRIVER_OK again (or anything else) does not activate twice.
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_DRIVER_OK);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_FEATURES_OK);
    assert_eq!(dev.lock().unwrap().activations, 1);
    assert_eq!(status(&mut t), S_DRIVER_OK);
    // Queue registers are frozen after DRIVER_OK.
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 1);
}

#[test]
fn queue_notify_writes_the_queue_eventfd() {
    let (mut t, dev) = setup();
    // Before DRIVER_OK, notifications go nowhere.
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert!(t.queue_evts()[1].read().is_err());
    to_features_ok(&mut t);
    setup_queues(&mut t);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_DRIVER_OK);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 99);
    // The device's clones see the same counter.
    assert_eq!(dev.lock().unwrap().evts[1].read().unwrap(), 1);
    assert!(t.queue_evts()[0].read().is_err());
}

#[test]
fn reset_clears_everything() {
    let (mut t, dev) = setup();
    to_features_ok(&mut t);
    setup_queues(&mut t);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_DRIVER_OK);
    t.interrupt.signal_used_queue();
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    wr(&mut t, reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    t.interrupt.signal_used_queue();
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(status(&mut t), 0);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(dev.lock().unwrap().resets, 1);
    // And the device can be brought up again.
    to_features_ok(&mut t);
    setup_queues(&mut t);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_DRIVER_OK);
    assert_eq!(dev.lock().unwrap().activations, 2);
}

#[test]
fn status_out_of_order_is_ignored() {
    let (mut t, dev) = setup();
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_DRIVER_OK);
    assert_eq!(status(&mut t), 0);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_ACKNOWLEDGED);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_FEATURES_OK);
    assert_eq!(status(&mut t), S_ACKNOWLEDGED);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_DRIVER);
    // Queue setup before FEATURES_OK is ignored.
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 0);
    // FAILED sticks until reset.
    wr(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        S_DRIVER | VIRTIO_CONFIG_S_FAILED,
    );
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_FEATURES_OK);
    assert_eq!(status(&mut t), S_DRIVER | VIRTIO_CONFIG_S_FAILED);
    assert_eq!(dev.lock().unwrap().acked, None);
}

#[test]
fn features_not_offered_or_without_version_1_are_refused() {
    let (mut t, dev) = setup();
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_ACKNOWLEDGED);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_DRIVER);
    wr(&mut t, reg::VIRTIO_MMIO_DRIVER_FEATURES, 0b10); // not offered
    wr(&mut t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(&mut t, reg::VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_FEATURES_OK);
    assert_eq!(status(&mut t), S_DRIVER);
    // Legacy driver: no VERSION_1.
    wr(&mut t, reg::VIRTIO_MMIO_DRIVER_FEATURES, 0);
    wr(&mut t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr(&mut t, reg::VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_FEATURES_OK);
    assert_eq!(status(&mut t), S_DRIVER);
    assert_eq!(dev.lock().unwrap().acked, None);
}

#[test]
fn bad_queue_sizes_are_rejected() {
    let (mut t, _) = setup();
    to_features_ok(&mut t);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
    for bad in [0, 3, 16, 0x1_0008] {
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, bad);
        assert_eq!(t.queues[1].size(), 8, "size {bad}");
    }
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 4);
    assert_eq!(t.queues[1].size(), 4);
    // Misaligned rings keep the old address.
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1008);
    assert_ne!(t.queues[1].desc_table(), 0x1008);
    // Out-of-range selector: writes go nowhere.
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 5);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 2);
}

#[test]
fn rings_outside_memory_need_reset() {
    let (mut t, dev) = setup();
    to_features_ok(&mut t);
    setup_queues(&mut t);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_USED_HIGH, 0x10);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_DRIVER_OK);
    assert_eq!(
        status(&mut t) & VIRTIO_CONFIG_S_NEEDS_RESET,
        VIRTIO_CONFIG_S_NEEDS_RESET
    );
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_CONFIG_GENERATION), 1);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    assert_eq!(dev.lock().unwrap().activations, 0);
    // Nothing but a reset gets out of it.
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_DRIVER_OK);
    assert_eq!(dev.lock().unwrap().activations, 0);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(status(&mut t), 0);
}

#[test]
fn queue_not_ready_or_device_failure_need_reset() {
    let (mut t, dev) = setup();
    to_features_ok(&mut t);
    let mem = guest_memory();
    setup_queue(&mut t, 0, &GuestQueue::new(&mem, 0x1000, 16));
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_DRIVER_OK);
    assert_ne!(status(&mut t) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);

    wr(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
    dev.lock().unwrap().fail_activate = true;
    to_features_ok(&mut t);
    setup_queues(&mut t);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, S_DRIVER_OK);
    assert_ne!(status(&mut t) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}
