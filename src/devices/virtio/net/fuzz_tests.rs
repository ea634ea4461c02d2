//! The device against random guests: random descriptor tables and rings on both queues,
//! random frames from the backend, random event order. Nothing may panic, every used length
//! must be one the device could have written, and afterwards a well-behaved driver on the
//! same queues must still get frames through both ways. Deterministic (a fixed-seed
//! xorshift), so a failure reproduces.

use event_manager::EventSet;

use super::device::NetStats;
use super::tests::{frame, Guest, DATA};
use super::{MAX_BUFFER_LEN, VNET_HDR_LEN};
use crate::devices::virtio::test_utils::{GuestQueue, MEM_SIZE};

/// xorshift64*: enough randomness for shapes, no crate needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::try_from(self.below(items.len() as u64)).unwrap()]
    }
}

const QUEUE_SIZE: u16 = 16;
/// NEXT, WRITE and INDIRECT.
const FLAG_BITS: u64 = 7;

/// Fills `q`'s descriptor table with random descriptors and publishes random heads, at most
/// `budget` of them. With `self_harm` the guest also breaks its own queue: more chains than
/// the ring holds (virtio-queue then refuses to read it) and buffers over the rings
/// themselves (the device then writes frames into them).
fn scramble(rng: &mut Rng, q: &mut GuestQueue, budget: &mut u16, self_harm: bool) {
    let mem_end = MEM_SIZE as u64;
    for i in 0..QUEUE_SIZE {
        let addr = match rng.below(5) {
            0 => rng.next(),
            1 => mem_end - rng.below(64),
            2 if self_harm => q.desc + 16 * rng.below(u64::from(QUEUE_SIZE)),
            _ => DATA + rng.below(0x80_0000),
        };
        let len = match rng.below(6) {
            0 => u32::try_from(rng.below(1 << 32)).unwrap(),
            1 => rng.pick(&[0, 1, 11, 12, 25, 26]),
            2 => rng.pick(&[65_561, 65_562, 65_563]),
            _ => u32::try_from(rng.below(4000)).unwrap(),
        };
        let flags = u16::try_from(rng.below(FLAG_BITS + 1)).unwrap();
        let next = u16::try_from(rng.below(u64::from(QUEUE_SIZE) + 4)).unwrap();
        q.write_desc(i, addr, len, flags, next);
    }
    let n = u16::try_from(rng.below(10)).unwrap();
    let n = if self_harm { n } else { n.min(*budget) };
    *budget = budget.saturating_sub(n);
    for _ in 0..n {
        let head = u16::try_from(rng.below(u64::from(QUEUE_SIZE) + 2)).unwrap();
        q.publish(head);
    }
}

#[test]
fn random_guests_never_panic_or_stall_the_device() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // What the random guests made the device do, summed: the test must reach every path.
    let mut seen = NetStats::default();
    for round in 0..300 {
        let mut g = Guest::with_queue_size(QUEUE_SIZE);
        // Chains each queue may still take this round, leaving room for the final check's.
        let mut budgets = [QUEUE_SIZE - 1; 2];
        let self_harm = rng.below(8) == 0;
        // Random data under the descriptors, so headers and frames are garbage too.
        let noise: Vec<u8> = (0..0x1_0000).map(|_| rng.next().to_le_bytes()[0]).collect();
        g.put(DATA, &noise);
        for step in 0..8 {
            match rng.below(6) {
                0 => scramble(&mut rng, &mut g.txq, &mut budgets[0], self_harm),
                1 => scramble(&mut rng, &mut g.rxq, &mut budgets[1], self_harm),
                2 => {
                    let len = match rng.below(4) {
                        0 => usize::try_from(rng.below(VNET_HDR_LEN as u64 + 2)).unwrap(),
                        1 => MAX_BUFFER_LEN + 100,
                        _ => usize::try_from(rng.below(2000)).unwrap() + 12,
                    };
                    let mut f = frame(len.max(VNET_HDR_LEN), u8::try_from(step).unwrap());
                    f.truncate(len);
                    g.wire.push_rx(f);
                }
                3 => {
                    let block = rng.below(3) == 0;
                    g.wire.with(|s| s.tx_would_block = block);
                }
                4 => g.dev.process_tx(),
                _ => {
                    let set =
                        rng.pick(&[EventSet::IN, EventSet::OUT, EventSet::IN | EventSet::OUT]);
                    g.dev.process_backend(set);
                    g.dev.process_rx();
                }
            }
        }
        let st = g.stats();
        seen.tx_frames += st.tx_frames;
        seen.tx_dropped += st.tx_dropped;
        seen.rx_frames += st.rx_frames;
        seen.rx_dropped += st.rx_dropped;
        seen.rx_bad_chains += st.rx_bad_chains;
        if self_harm {
            // The used rings may be garbage now: not even they can be checked.
            continue;
        }
        for (_, len) in g.txq.take_used() {
            assert_eq!(len, 0, "round {round}: TX used length");
        }
        for (_, len) in g.rxq.take_used() {
            assert!(
                len as usize <= MAX_BUFFER_LEN,
                "round {round}: RX used length {len}"
            );
        }

        // A well-behaved driver takes over: the device must not be stuck.
        g.wire.with(|s| {
            s.tx_would_block = false;
            s.rx.clear();
        });
        g.dev.process_backend(EventSet::OUT);
        g.dev.process_tx();
        g.wire.take_tx();
        let f = frame(100, 0xaa);
        g.send_split(&f, &[VNET_HDR_LEN], DATA + 0x90_0000);
        assert_eq!(g.wire.take_tx(), vec![f.clone()], "round {round}: TX stuck");
        // Random RX chains the guest left posted come first: each takes a frame (or is
        // returned as bad) until the good buffer's turn, within a queue's worth of frames.
        let head = g.rxq.add_chain(&[(DATA + 0xa0_0000, 2000, true)]);
        let mut delivered = false;
        for _ in 0..=QUEUE_SIZE {
            g.wire.push_rx(f.clone());
            g.dev.process_backend(EventSet::IN);
            let used = g.rxq.take_used();
            assert!(
                used.iter().all(|&(_, len)| len == 0 || len == 100),
                "round {round}"
            );
            if used.contains(&(head, 100)) {
                delivered = true;
                break;
            }
        }
        assert!(delivered, "round {round}: RX stuck");
    }
    assert!(
        [
            seen.tx_frames,
            seen.tx_dropped,
            seen.rx_frames,
            seen.rx_dropped,
            seen.rx_bad_chains
        ]
        .iter()
        .all(|&n| n > 0),
        "{seen:?}"
    );
}
