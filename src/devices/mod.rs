//! Emulated devices: the buses they sit on, legacy PC devices and virtio devices.

pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;
