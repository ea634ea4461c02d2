//! A hostile guest's descriptor tables, rings and request headers against virtio-blk on a small disk file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    brig::fuzzing::virtio_blk(data);
});
