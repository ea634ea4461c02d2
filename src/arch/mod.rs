//! Architecture-specific VM setup. brig runs x86_64 guests only.

// Firecracker's cast lints: a value that does not fit its new type must be handled, never
// silently truncated or wrapped (guest-controlled lengths and addresses pass through here).
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod x86_64;
