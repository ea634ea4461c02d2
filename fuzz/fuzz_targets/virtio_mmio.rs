//! A hostile driver's register reads and writes, at any offset and width, on a virtio-mmio transport in front of a device.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    brig::fuzzing::virtio_mmio(data);
});
