//! A device wired the way the VMM wires it (module docs of `virtio`): the transport on an MMIO
//! bus, the device in an event manager, the guest driving registers, and notifications and
//! interrupts going through the eventfds. Without KVM, QueueNotify writes reach the transport
//! (as when no ioeventfd is registered) and the test reads the irqfd's eventfd itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_mmio as reg;
use vm_memory::{Bytes, GuestAddress};

use super::mmio::MmioTransport;
use super::test_utils::{guest_memory, GuestQueue};
use super::vsock::packet::{op, Header, HDR_SIZE, HOST_CID, TYPE_STREAM};
use super::vsock::Vsock;
use super::{MmioSlot, SharedVirtioDevice, VirtioDevice, MMIO_SLOT_SIZE};
use crate::devices::bus::{Bus, SharedDevice};

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

fn wr(bus: &Bus, base: u64, off: u32, v: u32) {
    assert!(bus.write(base + u64::from(off), &v.to_le_bytes()));
}

fn rd(bus: &Bus, base: u64, off: u32) -> u32 {
    let mut b = [0u8; 4];
    assert!(bus.read(base + u64::from(off), &mut b));
    u32::from_le_bytes(b)
}

#[test]
fn vsock_through_bus_transport_and_event_manager() {
    let dir = tempfile::tempdir().unwrap();
    let mem = guest_memory();
    let slot = MmioSlot {
        base: 0xd000_0000,
        gsi: 5,
    };

    // What the VMM does.
    let dev = Arc::new(Mutex::new(
        Vsock::new(3, &dir.path().join("v.sock")).unwrap(),
    ));
    let as_virtio: SharedVirtioDevice = dev.clone();
    let transport = MmioTransport::new(mem.clone(), as_virtio).unwrap();
    let irq = transport.interrupt_evt().try_clone().unwrap();
    assert_eq!(transport.queue_evts().len(), 3);
    let mut bus = Bus::new();
    let shared: SharedDevice = Arc::new(Mutex::new(transport));
    bus.insert(shared, slot.base, MMIO_SLOT_SIZE).unwrap();
    let mut em: EventManager<Subscriber> = EventManager::new().unwrap();
    let sub: Subscriber = dev.clone();
    em.add_subscriber(sub);

    // What the guest's virtio_mmio driver does.
    let b = slot.base;
    assert_eq!(rd(&bus, b, reg::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&bus, b, reg::VIRTIO_MMIO_DEVICE_ID), 19);
    wr(&bus, b, reg::VIRTIO_MMIO_STATUS, 1);
    wr(&bus, b, reg::VIRTIO_MMIO_STATUS, 3);
    wr(&bus, b, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(&bus, b, reg::VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr(&bus, b, reg::VIRTIO_MMIO_STATUS, 0xb);
    assert_eq!(rd(&bus, b, reg::VIRTIO_MMIO_STATUS), 0xb);
    let mut queues: Vec<GuestQueue> = (0..3u64)
        .map(|i| GuestQueue::new(&mem, 0x1_0000 * (i + 1), 64))
        .collect();
    for (i, q) in queues.iter().enumerate() {
        wr(
            &bus,
            b,
            reg::VIRTIO_MMIO_QUEUE_SEL,
            u32::try_from(i).unwrap(),
        );
        assert_eq!(rd(&bus, b, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        wr(&bus, b, reg::VIRTIO_MMIO_QUEUE_NUM, 64);
        wr(
            &bus,
            b,
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW,
            u32::try_from(q.desc).unwrap(),
        );
        wr(
            &bus,
            b,
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
            u32::try_from(q.avail).unwrap(),
        );
        wr(
            &bus,
            b,
            reg::VIRTIO_MMIO_QUEUE_USED_LOW,
            u32::try_from(q.used).unwrap(),
        );
        wr(&bus, b, reg::VIRTIO_MMIO_QUEUE_READY, 1);
    }
    wr(&bus, b, reg::VIRTIO_MMIO_STATUS, 0xf);
    assert_eq!(rd(&bus, b, reg::VIRTIO_MMIO_STATUS), 0xf);
    // The guest CID, read as two 32-bit halves like Linux does.
    assert_eq!(rd(&bus, b, reg::VIRTIO_MMIO_CONFIG), 3);
    assert_eq!(rd(&bus, b, reg::VIRTIO_MMIO_CONFIG + 4), 0);
    em.run_with_timeout(100).unwrap(); // the device registers its queue eventfds

    // A REQUEST to a host port nobody listens on, and an RX buffer for the answer.
    let req = Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 1,
        dst_port: 2,
        type_: TYPE_STREAM,
        op: op::REQUEST,
        ..Header::default()
    };
    mem.write_slice(&req.to_bytes(), GuestAddress(0x10_0000))
        .unwrap();
    queues[0].add_chain(&[(0x20_0000, 4096, true)]);
    wr(&bus, b, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    queues[1].add_chain(&[(0x10_0000, u32::try_from(HDR_SIZE).unwrap(), false)]);
    wr(&bus, b, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    let until = Instant::now() + Duration::from_secs(5);
    let used = loop {
        em.run_with_timeout(100).unwrap();
        let used = queues[0].take_used();
        if !used.is_empty() {
            break used;
        }
        assert!(Instant::now() < until, "no answer from the device");
    };
    assert_eq!(used[0].1, u32::try_from(HDR_SIZE).unwrap());
    let mut raw = [0u8; HDR_SIZE];
    mem.read_slice(&mut raw, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(Header::from_bytes(&raw).op, op::RST);
    assert_eq!(queues[1].take_used().len(), 1);
    // The guest was interrupted through the irqfd, and acknowledges it.
    assert!(irq.read().unwrap() > 0);
    assert_eq!(rd(&bus, b, reg::VIRTIO_MMIO_INTERRUPT_STATUS) & 1, 1);
    wr(&bus, b, reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(rd(&bus, b, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);

    // A reset stops the device; the eventfds stay registered for the next activation.
    wr(&bus, b, reg::VIRTIO_MMIO_STATUS, 0);
    assert!(dev.lock().unwrap().common_mut().active.is_none());
}
