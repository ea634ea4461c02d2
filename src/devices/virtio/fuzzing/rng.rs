//! virtio-rng under a hostile driver: random chains, then notifications.

use super::Guest;
use crate::devices::virtio::rng::{Rng, MAX_REQUEST_BYTES};
use crate::devices::virtio::test_utils::{activate, guest_memory};
use crate::devices::virtio::VirtioDevice;

/// Drives a virtio-rng device with the guest `data` describes. Checks: no panic, and (unless
/// the guest wrote over its own rings) no used length above the per-request cap.
pub fn virtio_rng(data: &[u8]) {
    let mem = guest_memory();
    let mut g = Guest::new(data, &mem, 1);
    let mut dev = Rng::new().expect("an rng device");
    activate(&mut dev, &[&g.queues[0]]);
    g.drive(2, |g, action| match action {
        0 => {
            dev.process_queue();
        }
        _ => {
            dev.reset();
            activate(&mut dev, &[&g.queues[0]]);
        }
    });
    dev.process_queue();
    if g.harmed {
        return;
    }
    for (_, len) in g.queues[0].take_used() {
        assert!(len <= MAX_REQUEST_BYTES, "used length {len} past the cap");
    }
}
