//! A hostile guest's packets and rings, and host peers, against virtio-vsock and its Unix-socket muxer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    brig::fuzzing::virtio_vsock(data);
});
