//! A hostile guest's rings and frames, and a hostile wire, against virtio-net on an in-memory backend.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    brig::fuzzing::virtio_net(data);
});
