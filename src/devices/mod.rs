//! Emulated devices: the buses they sit on, legacy PC devices and virtio devices.

// Firecracker's cast lints: a value that does not fit its new type must be handled, never
// silently truncated or wrapped (guest-controlled lengths and addresses pass through here).
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod bus;
pub mod i8042;
pub mod rate_limiter;
pub mod serial;
pub mod virtio;
