//! A hostile guest's descriptor tables and rings against virtio-rng.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    brig::fuzzing::virtio_rng(data);
});
