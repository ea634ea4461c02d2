//! A sandbox's network: docker's `-p/--publish` ([`ports`]).

// Not wired into run/ps/port yet: only its tests use it. Drop the allow when wiring.
#[allow(dead_code)]
pub mod ports;
