//! Hostile manifests and indexes (with any Content-Type) into the manifest parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    brig::fuzzing::manifest(data);
});
