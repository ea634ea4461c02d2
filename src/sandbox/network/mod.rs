//! A sandbox's network: docker's `-p/--publish` ([`ports`]) and the userland proxy in the
//! VMM process that forwards the published host ports to the guest ([`proxy`]).

// Not wired into run/ps/port yet: only their tests use these. Drop the allows when wiring.
#[allow(dead_code)]
pub mod ports;
#[allow(dead_code)]
pub mod proxy;
