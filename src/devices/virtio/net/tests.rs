//! Tests of the virtio-net device: a hand-driven guest on real virtqueues in test guest
//! memory, and the in-memory backend of [`super::mock`] as the wire.

use std::sync::Arc;

use event_manager::EventSet;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{tun_offload, NetStats};
use super::mock::{mock_backend, MockHandle};
use super::{Net, NetConfig, NetError};
use super::{MAX_BUFFER_LEN, VNET_HDR_LEN};
use crate::devices::virtio::test_utils::{guest_memory, GuestQueue, F_NEXT, F_WRITE};
use crate::devices::virtio::{device_type, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

pub(super) const MAC: [u8; 6] = [0x02, 0xb1, 0x09, 0x00, 0x00, 0x01];
/// Where the tests put frame buffers (the queues sit below).
pub(super) const DATA: u64 = 0x10_0000;

pub(super) struct Guest {
    pub mem: GuestMemoryMmap,
    pub rxq: GuestQueue,
    pub txq: GuestQueue,
    pub dev: Net,
    pub irq: Arc<Interrupt>,
    pub wire: MockHandle,
}

impl Guest {
    pub fn new() -> Self {
        Self::with_queue_size(256)
    }

    pub fn with_queue_size(size: u16) -> Self {
        let mem = guest_memory();
        let rxq = GuestQueue::new(&mem, 0x1_0000, size);
        let txq = GuestQueue::new(&mem, 0x2_0000, size);
        let (backend, wire) = mock_backend();
        let config = NetConfig {
            mac: Some(MAC),
            mtu: None,
        };
        let mut dev = Net::new(config, Box::new(backend)).unwrap();
        let irq = crate::devices::virtio::test_utils::activate(&mut dev, &[&rxq, &txq]);
        Self {
            mem,
            rxq,
            txq,
            dev,
            irq,
            wire,
        }
    }

    /// Writes `bytes` into guest memory at `addr`.
    pub fn put(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    pub fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Writes `frame` across read-only buffers of the sizes `split` (the last takes the
    /// rest) from `addr` on, leaving a gap between them, posts them as one TX chain and kicks.
    pub fn send_split(&mut self, frame: &[u8], split: &[usize], addr: u64) -> u16 {
        let mut bufs = Vec::new();
        let (mut at, mut rest) = (addr, frame);
        for &n in split.iter().chain(std::iter::once(&usize::MAX)) {
            let n = n.min(rest.len());
            self.put(at, &rest[..n]);
            bufs.push((at, u32::try_from(n).unwrap(), false));
            at += n as u64 + 0x100;
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
        }
        let head = self.txq.add_chain(&bufs);
        self.dev.process_tx();
        head
    }

    pub fn stats(&self) -> NetStats {
        self.dev.stats()
    }
}

/// A header plus an Ethernet frame of `len` bytes in all, with recognisable contents.
pub(super) fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| seed.wrapping_add(u8::try_from(i % 251).unwrap()))
        .collect();
    // A header with NEEDS_CSUM and csum_start/offset, as a guest with CSUM sends it.
    f[..VNET_HDR_LEN].copy_from_slice(&[1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0]);
    f
}

/// `frame` as the guest should see it in an RX buffer: num_buffers set to 1.
fn as_received(mut f: Vec<u8>) -> Vec<u8> {
    f[10..12].copy_from_slice(&1u16.to_le_bytes());
    f
}

#[test]
fn tx_frame_split_over_descriptors_arrives_byte_exact() {
    // Both ways a backend takes frames: copied, and gathered from guest memory.
    for gather in [false, true] {
        let mut g = Guest::new();
        g.wire.with(|s| s.gather = gather);
        let f = frame(1514 + VNET_HDR_LEN, 7);
        // The header alone, then a piece that cuts the Ethernet header, then the rest.
        let head = g.send_split(&f, &[VNET_HDR_LEN, 5, 700], DATA);
        assert_eq!(g.wire.take_tx(), vec![f]);
        assert_eq!(g.txq.take_used(), vec![(head, 0)]);
        assert_eq!(g.irq.status() & 1, 1);
        assert_eq!(g.stats().tx_frames, 1);
        assert_eq!(g.stats().tx_bytes, 1514, "the header is not counted");
    }
}

#[test]
fn tx_of_the_longest_frame_passes_and_one_byte_more_is_dropped() {
    // Both ways a backend takes frames: copied, and gathered from guest memory.
    for gather in [false, true] {
        let mut g = Guest::new();
        g.wire.with(|s| s.gather = gather);
        let big = frame(MAX_BUFFER_LEN + 1, 1);
        let max = frame(MAX_BUFFER_LEN, 2);
        let ok = frame(60 + VNET_HDR_LEN, 3);
        g.send_split(&big, &[VNET_HDR_LEN, 40_000], DATA);
        g.send_split(&max, &[VNET_HDR_LEN, 40_000], DATA + 0x4_0000);
        g.send_split(&ok, &[], DATA + 0x8_0000);
        assert_eq!(g.wire.take_tx(), vec![max, ok]);
        let used = g.txq.take_used();
        assert_eq!(used.len(), 3);
        assert!(used.iter().all(|&(_, len)| len == 0));
        assert_eq!(g.stats().tx_dropped, 1);
    }
}

#[test]
fn tx_frames_shorter_than_two_headers_are_dropped() {
    // Both ways a backend takes frames: copied, and gathered from guest memory.
    for gather in [false, true] {
        let mut g = Guest::new();
        g.wire.with(|s| s.gather = gather);
        for len in [0, 1, VNET_HDR_LEN, VNET_HDR_LEN + 13] {
            g.send_split(&frame(64, 0)[..len], &[], DATA);
        }
        let ok = frame(VNET_HDR_LEN + 14, 9);
        g.send_split(&ok, &[], DATA);
        assert_eq!(g.wire.take_tx(), vec![ok]);
        assert_eq!(g.txq.take_used().len(), 5);
        assert_eq!(g.stats().tx_dropped, 4);
    }
}

#[test]
fn tx_chain_with_a_writable_descriptor_is_dropped() {
    // Both ways a backend takes frames: copied, and gathered from guest memory.
    for gather in [false, true] {
        let mut g = Guest::new();
        g.wire.with(|s| s.gather = gather);
        let f = frame(100, 4);
        g.put(DATA, &f);
        let bad = g.txq.add_chain(&[(DATA, 12, false), (DATA + 12, 88, true)]);
        g.dev.process_tx();
        let good = g.send_split(&f, &[50], DATA + 0x1000);
        assert_eq!(g.wire.take_tx(), vec![f]);
        assert_eq!(g.txq.take_used(), vec![(bad, 0), (good, 0)]);
        assert_eq!(g.stats().tx_dropped, 1);
    }
}

#[test]
fn tx_chains_cut_short_or_outside_memory_are_dropped() {
    // Both ways a backend takes frames: copied, and gathered from guest memory.
    for gather in [false, true] {
        let mut g = Guest::with_queue_size(16);
        g.wire.with(|s| s.gather = gather);
        let f = frame(100, 5);
        g.put(DATA, &f);
        // A loop: descriptor 0 points at itself.
        g.txq.write_desc(0, DATA, 50, F_NEXT, 0);
        g.txq.publish(0);
        // A `next` past the queue.
        g.txq.write_desc(1, DATA, 50, F_NEXT, 99);
        g.txq.publish(1);
        // A buffer past the end of guest memory.
        g.txq.write_desc(2, (16 << 20) - 50, 100, 0, 0);
        g.txq.publish(2);
        // A head index past the queue.
        g.txq.publish(40);
        g.dev.process_tx();
        assert!(g.wire.take_tx().is_empty());
        // The used ring has the three valid heads; the bogus one cannot go there.
        let used = g.txq.take_used();
        assert_eq!(used, vec![(0, 0), (1, 0), (2, 0)]);
        assert_eq!(g.stats().tx_dropped, 4);
        // And the device goes on.
        g.txq.write_desc(3, DATA, 100, 0, 0);
        g.txq.publish(3);
        g.dev.process_tx();
        assert_eq!(g.wire.take_tx(), vec![f]);
    }
}

#[test]
fn tx_refused_by_the_backend_is_dropped_and_the_queue_goes_on() {
    // Both ways a backend takes frames: copied, and gathered from guest memory.
    for gather in [false, true] {
        let mut g = Guest::new();
        g.wire.with(|s| s.gather = gather);
        g.wire.with(|s| s.tx_fails = true);
        g.send_split(&frame(60, 1), &[], DATA);
        g.wire.with(|s| s.tx_fails = false);
        let ok = frame(60, 2);
        g.send_split(&ok, &[], DATA + 0x1000);
        assert_eq!(g.wire.take_tx(), vec![ok]);
        assert_eq!(g.txq.take_used().len(), 2);
        assert_eq!(g.stats().tx_dropped, 1);
    }
}

#[test]
fn tx_that_would_block_waits_on_the_ring_until_the_backend_is_writable() {
    // Both ways a backend takes frames: copied, and gathered from guest memory.
    for gather in [false, true] {
        let mut g = Guest::new();
        g.wire.with(|s| s.gather = gather);
        g.wire.with(|s| s.tx_would_block = true);
        let (a, b) = (frame(60, 1), frame(70, 2));
        g.send_split(&a, &[], DATA);
        g.send_split(&b, &[], DATA + 0x1000);
        assert!(g.wire.take_tx().is_empty());
        assert!(g.txq.take_used().is_empty(), "a blocked frame is not used");
        // OUT while still blocked changes nothing; once writable, both go in order.
        g.dev.process_backend(EventSet::OUT);
        assert!(g.wire.take_tx().is_empty());
        g.wire.with(|s| s.tx_would_block = false);
        g.dev.process_backend(EventSet::OUT);
        assert_eq!(g.wire.take_tx(), vec![a, b]);
        assert_eq!(g.txq.take_used().len(), 2);
        assert_eq!(g.stats().tx_dropped, 0);
    }
}

#[test]
fn rx_into_one_buffer() {
    let mut g = Guest::new();
    let head = g.rxq.add_chain(&[(DATA, 1526, true)]);
    let f = frame(1514 + VNET_HDR_LEN, 3);
    g.wire.push_rx(f.clone());
    g.dev.process_backend(EventSet::IN);
    let len = f.len();
    assert_eq!(g.rxq.take_used(), vec![(head, u32::try_from(len).unwrap())]);
    assert_eq!(g.get(DATA, len), as_received(f));
    assert_eq!(g.irq.status() & 1, 1);
    assert_eq!(g.stats().rx_frames, 1);
    assert_eq!(g.stats().rx_bytes, 1514, "the header is not counted");
}

#[test]
fn rx_into_several_chained_buffers() {
    let mut g = Guest::new();
    let bufs = [
        (DATA, 12, true),
        (DATA + 0x1000, 100, true),
        (DATA + 0x2000, 4000, true),
    ];
    let head = g.rxq.add_chain(&bufs);
    let f = frame(1500, 8);
    g.wire.push_rx(f.clone());
    g.dev.process_backend(EventSet::IN);
    assert_eq!(g.rxq.take_used(), vec![(head, 1500)]);
    let mut got = g.get(DATA, 12);
    got.extend(g.get(DATA + 0x1000, 100));
    got.extend(g.get(DATA + 0x2000, 1500 - 112));
    assert_eq!(got, as_received(f));
}

#[test]
fn rx_buffer_without_room_for_the_header_is_returned_and_the_frame_kept() {
    let mut g = Guest::new();
    let small = g.rxq.add_chain(&[(DATA, 8, true)]);
    let readable = g
        .rxq
        .add_chain(&[(DATA, 12, false), (DATA + 12, 2000, true)]);
    let good = g.rxq.add_chain(&[(DATA + 0x1000, 2000, true)]);
    let f = frame(600, 1);
    g.wire.push_rx(f.clone());
    g.dev.process_backend(EventSet::IN);
    assert_eq!(
        g.rxq.take_used(),
        vec![(small, 0), (readable, 0), (good, 600)]
    );
    assert_eq!(g.get(DATA + 0x1000, 600), as_received(f));
    assert_eq!(g.stats().rx_bad_chains, 2);
    assert_eq!(g.stats().rx_dropped, 0);
}

#[test]
fn rx_frame_longer_than_the_buffer_is_dropped_and_the_next_delivered() {
    let mut g = Guest::new();
    let small = g.rxq.add_chain(&[(DATA, 100, true)]);
    let good = g.rxq.add_chain(&[(DATA + 0x1000, 2000, true)]);
    let next = frame(80, 2);
    g.wire.push_rx(frame(1500, 1));
    g.wire.push_rx(next.clone());
    g.dev.process_backend(EventSet::IN);
    assert_eq!(g.rxq.take_used(), vec![(small, 0), (good, 80)]);
    assert_eq!(g.get(DATA + 0x1000, 80), as_received(next));
    assert_eq!(g.stats().rx_dropped, 1);
}

#[test]
fn rx_without_buffers_leaves_frames_in_the_backend_until_a_kick() {
    let mut g = Guest::new();
    let (a, b) = (frame(60, 1), frame(61, 2));
    g.wire.push_rx(a.clone());
    g.wire.push_rx(b.clone());
    g.dev.process_backend(EventSet::IN);
    // No buffer: not even read (nothing is lost, and nothing is held in the VMM).
    assert_eq!(g.wire.with(|s| s.reads), 0);
    assert!(g.dev.rx_ready());
    // The guest posts one buffer and kicks RX: one frame; the other still waits.
    let h1 = g.rxq.add_chain(&[(DATA, 2000, true)]);
    g.dev.process_rx();
    assert_eq!(g.rxq.take_used(), vec![(h1, 60)]);
    assert_eq!(g.get(DATA, 60), as_received(a));
    assert!(g.dev.rx_ready());
    let h2 = g.rxq.add_chain(&[(DATA + 0x1000, 2000, true)]);
    g.dev.process_rx();
    assert_eq!(g.rxq.take_used(), vec![(h2, 61)]);
    assert_eq!(g.get(DATA + 0x1000, 61), as_received(b));
    // With a buffer and nothing left, the read would block: the buffer stays posted and
    // the device waits for the backend's next event.
    let h3 = g.rxq.add_chain(&[(DATA + 0x2000, 2000, true)]);
    g.dev.process_rx();
    assert!(g.rxq.take_used().is_empty());
    assert!(!g.dev.rx_ready());
    let reads = g.wire.with(|s| s.reads);
    g.dev.process_rx();
    assert_eq!(
        g.wire.with(|s| s.reads),
        reads,
        "no read without a readiness event"
    );
    let c = frame(62, 3);
    g.wire.push_rx(c.clone());
    g.dev.process_backend(EventSet::IN);
    assert_eq!(g.rxq.take_used(), vec![(h3, 62)]);
    assert_eq!(g.get(DATA + 0x2000, 62), as_received(c));
}

#[test]
fn a_backend_read_error_stops_reading_for_good() {
    let mut g = Guest::new();
    g.wire.push_rx(frame(60, 1));
    g.wire.with(|s| s.rx_fails = true);
    g.rxq.add_chain(&[(DATA, 2000, true)]);
    g.dev.process_backend(EventSet::IN);
    assert!(g.dev.rx_failed());
    assert!(!g.dev.rx_ready());
    assert!(g.rxq.take_used().is_empty(), "the buffer stays posted");
    // Neither readiness nor kicks read again, even once the backend would answer.
    g.wire.with(|s| s.rx_fails = false);
    g.wire.push_rx(frame(60, 2));
    g.dev.process_backend(EventSet::IN | EventSet::HANG_UP);
    g.dev.process_rx();
    assert_eq!(g.wire.with(|s| s.reads), 1);
    assert!(g.rxq.take_used().is_empty());
    // TX still works.
    let f = frame(60, 3);
    let sent = g.send_split(&f, &[], DATA + 0x1000);
    assert_eq!(g.wire.take_tx(), vec![f]);
    assert_eq!(g.txq.take_used(), vec![(sent, 0)]);
}

#[test]
fn frames_arriving_while_inactive_are_read_after_activation() {
    let mem = guest_memory();
    let rxq = GuestQueue::new(&mem, 0x1_0000, 16);
    let txq = GuestQueue::new(&mem, 0x2_0000, 16);
    let (backend, wire) = mock_backend();
    let mut dev = Net::new(NetConfig::default(), Box::new(backend)).unwrap();
    let f = frame(60, 1);
    wire.push_rx(f.clone());
    dev.process_backend(EventSet::IN);
    assert_eq!(wire.with(|s| s.reads), 0);
    let mut rxq = rxq;
    crate::devices::virtio::test_utils::activate(&mut dev, &[&rxq, &txq]);
    let head = rxq.add_chain(&[(DATA, 2000, true)]);
    dev.process_rx();
    assert_eq!(rxq.take_used(), vec![(head, 60)]);
}

#[test]
fn features_and_config_space() {
    let (backend, _) = mock_backend();
    let config = NetConfig {
        mac: Some(MAC),
        mtu: Some(9000),
    };
    let dev = Net::new(config, Box::new(backend)).unwrap();
    assert_eq!(dev.device_type(), device_type::NET);
    assert_eq!(dev.queue_max_sizes(), &[256, 256]);
    let f = dev.features();
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    assert_ne!(f & 1 << VIRTIO_NET_F_MAC, 0);
    assert_ne!(f & 1 << VIRTIO_NET_F_MTU, 0);
    assert_eq!(f & 1 << VIRTIO_NET_F_MRG_RXBUF, 0);
    let mut mac = [0u8; 6];
    dev.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    // The driver reads the MAC a byte at a time.
    let mut b = [0u8; 1];
    dev.read_config(5, &mut b);
    assert_eq!(b, [MAC[5]]);
    let mut mtu = [0u8; 2];
    dev.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 9000);
    let mut past = [0xffu8; 4];
    dev.read_config(12, &mut past);
    assert_eq!(past, [0; 4]);

    let (backend, _) = mock_backend();
    let plain = Net::new(NetConfig::default(), Box::new(backend)).unwrap();
    assert_eq!(
        plain.features() & (1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_MTU),
        0
    );
}

#[test]
fn bad_mac_or_mtu_is_refused() {
    for (mac, mtu) in [
        (Some([1, 0, 0, 0, 0, 1]), None),
        (Some([0; 6]), None),
        (None, Some(67)),
    ] {
        let (backend, _) = mock_backend();
        let err = Net::new(NetConfig { mac, mtu }, Box::new(backend)).unwrap_err();
        assert!(
            matches!(err, NetError::InvalidMac(_) | NetError::InvalidMtu(_)),
            "{err}"
        );
    }
}

#[test]
fn activation_sets_the_backend_offloads_from_the_acked_guest_features() {
    assert_eq!(tun_offload(0), 0);
    let acked = VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;
    assert_eq!(tun_offload(acked), libc::TUN_F_CSUM | libc::TUN_F_TSO4);

    let mem = guest_memory();
    let (backend, wire) = mock_backend();
    let mut dev = Net::new(NetConfig::default(), Box::new(backend)).unwrap();
    let activate = |dev: &mut Net, acked: u64| {
        let qs = [0x1_0000, 0x2_0000].map(|b| GuestQueue::new(&mem, b, 16).queue());
        let evts = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        dev.ack_features(acked);
        let irq = Arc::new(Interrupt::new().unwrap());
        dev.activate(mem.clone(), qs.into(), evts, irq).unwrap();
    };
    activate(&mut dev, acked);
    assert_eq!(
        wire.with(|s| s.offload),
        Some(libc::TUN_F_CSUM | libc::TUN_F_TSO4)
    );
    // After a reset, a guest acking fewer features gets fewer offloads.
    dev.reset();
    activate(&mut dev, VIRTIO_F_VERSION_1);
    assert_eq!(wire.with(|s| s.offload), Some(0));
    // All of them.
    dev.reset();
    let all_features = dev.features();
    activate(&mut dev, all_features);
    let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO;
    assert_eq!(wire.with(|s| s.offload), Some(all));
}

#[test]
fn rx_writes_a_used_chain_of_writable_descriptors_only() {
    // A chain mixing directions the other way round (writable, then readable) is refused
    // too, although virtio-queue's Writer would skip the readable part.
    let mut g = Guest::with_queue_size(16);
    g.rxq.write_desc(0, DATA, 100, F_WRITE | F_NEXT, 1);
    g.rxq.write_desc(1, DATA + 100, 2000, 0, 0);
    g.rxq.publish(0);
    g.wire.push_rx(frame(60, 1));
    g.dev.process_backend(EventSet::IN);
    assert_eq!(g.rxq.take_used(), vec![(0, 0)]);
    assert_eq!(g.stats().rx_bad_chains, 1);
    assert_eq!(
        g.wire.with(|s| s.rx.len()),
        1,
        "the frame waits for a good buffer"
    );
}

/// `avail_event` of a queue (after the used ring) and `used_event` (after the avail ring).
fn avail_event(q: &GuestQueue) -> u16 {
    q.mem
        .read_obj(GuestAddress(q.used + 4 + 8 * u64::from(q.size)))
        .unwrap()
}

fn set_used_event(q: &GuestQueue, idx: u16) {
    q.mem
        .write_obj(idx, GuestAddress(q.avail + 4 + 2 * u64::from(q.size)))
        .unwrap();
}

#[test]
fn event_idx_asks_for_one_notification_per_pass_and_honours_used_event() {
    let mut g = Guest::new();
    let f = frame(200 + VNET_HDR_LEN, 3);
    // After each pass over the TX ring the device asks to be notified at the next chain.
    g.send_split(&f, &[], DATA);
    assert_eq!(avail_event(&g.txq), 1);
    g.send_split(&f, &[], DATA + 0x1000);
    assert_eq!(avail_event(&g.txq), 2);
    assert_eq!(g.txq.take_used().len(), 2);
    // The guest wants no interrupt before its used index passes 5: chains 3 and 4 raise
    // none, chain 6 (used index 6) does.
    set_used_event(&g.txq, 5);
    g.irq.ack(g.irq.status());
    for i in 0..2 {
        g.send_split(&f, &[], DATA + 0x2000 * (i + 1));
    }
    assert_eq!(g.irq.status() & 1, 0, "used_event holds the interrupt back");
    for i in 2..4 {
        g.send_split(&f, &[], DATA + 0x2000 * (i + 1));
    }
    assert_eq!(g.irq.status() & 1, 1, "crossing used_event interrupts");
    assert_eq!(g.wire.take_tx().len(), 6);
}

#[test]
fn event_idx_rx_without_chains_asks_for_the_next_one() {
    let mut g = Guest::new();
    g.rxq.add_chain(&[(DATA, 4096, true)]);
    g.wire.push_rx(frame(100 + VNET_HDR_LEN, 8));
    g.dev.process_backend(EventSet::IN);
    assert_eq!(g.rxq.take_used().len(), 1);
    // A second frame finds no chain: the device asks to hear of the guest's next one (the
    // ring's second), and reads the frame once it comes.
    g.wire.push_rx(frame(100 + VNET_HDR_LEN, 9));
    g.dev.process_backend(EventSet::IN);
    assert_eq!(avail_event(&g.rxq), 1);
    assert!(g.rxq.take_used().is_empty());
    g.rxq.add_chain(&[(DATA, 4096, true)]);
    g.dev.process_rx();
    assert_eq!(g.rxq.take_used().len(), 1);
    assert_eq!(g.stats().rx_frames, 2);
}

#[test]
fn a_ring_that_claims_chains_it_does_not_hold_cannot_spin_the_device() {
    let mut g = Guest::new();
    // avail idx 1000 ahead of a 256-entry ring: popping fails, and must not be retried
    // forever (the test would hang).
    g.txq
        .mem
        .write_obj(1000u16, GuestAddress(g.txq.avail + 2))
        .unwrap();
    g.dev.process_tx();
    g.rxq
        .mem
        .write_obj(1000u16, GuestAddress(g.rxq.avail + 2))
        .unwrap();
    g.wire.push_rx(frame(100 + VNET_HDR_LEN, 9));
    g.dev.process_backend(EventSet::IN);
    assert_eq!(g.stats().tx_frames, 0);
    assert_eq!(g.stats().rx_frames, 0);
}
