//! Hostile image layers into a staging directory: nothing may land outside it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    brig::fuzzing::layer_unpack(data);
});
