//! Hostile bytes into the frame decoder: no panic, the incremental and blocking decoders
//! agree, memory stays bounded, and what decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    brig_protocol::fuzzing::check_decoder(data);
});
