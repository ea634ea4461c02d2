//! virtio-net under a hostile driver and a hostile wire: random TX and RX chains, frames of
//! any length from the backend, and a backend that blocks or fails at random.

use event_manager::EventSet;

use super::Guest;
use crate::devices::virtio::net::mock::mock_backend;
use crate::devices::virtio::net::{Net, NetConfig, MAX_BUFFER_LEN};
use crate::devices::virtio::test_utils::{activate, guest_memory};
use crate::devices::virtio::VirtioDevice;

/// Drives a virtio-net device on an in-memory wire with the guest and the frames `data`
/// describes. Checks: no panic, no frame handed to the backend above the device's maximum,
/// no used RX length above what one buffer holds.
pub fn virtio_net(data: &[u8]) {
    let mem = guest_memory();
    let mut g = Guest::new(data, &mem, 2);
    let (backend, wire) = mock_backend();
    let config = NetConfig {
        mac: Some([0x02, 0xb1, 0x09, 0, 0, 1]),
        mtu: None,
    };
    let mut dev = Net::new(config, Box::new(backend)).expect("a net device");
    activate(&mut dev, &[&g.queues[0], &g.queues[1]]);
    g.drive(6, |g, action| match action {
        0 => dev.process_tx(),
        1 => dev.process_rx(),
        2 => {
            let set = g.pick(&[EventSet::IN, EventSet::OUT, EventSet::IN | EventSet::OUT]);
            dev.process_backend(set);
        }
        // A frame from the wire: any length, up to past the device's buffer.
        3 => {
            let len = match g.below(4) {
                0 => MAX_BUFFER_LEN + usize::from(g.byte()),
                _ => usize::from(g.u16() % 2048),
            };
            let mut frame = g.u.bytes(len.min(256)).unwrap_or(&[]).to_vec();
            frame.resize(len, 0x5a);
            wire.push_rx(frame);
        }
        4 => {
            let bits = g.byte();
            wire.with(|s| {
                s.tx_would_block = bits & 1 != 0;
                s.tx_fails = bits & 2 != 0;
                s.rx_fails = bits & 4 != 0;
            });
        }
        _ => {
            dev.reset();
            activate(&mut dev, &[&g.queues[0], &g.queues[1]]);
        }
    });
    for frame in wire.take_tx() {
        assert!(
            frame.len() <= MAX_BUFFER_LEN,
            "a {}-byte frame reached the backend",
            frame.len()
        );
    }
}
