//! Emulated devices: the buses they sit on, legacy PC devices and virtio devices.

pub mod bus;
pub mod i8042;
pub mod serial;
// Not all of the virtio API is used until the VMM wires the devices in.
#[allow(dead_code)]
pub mod virtio;
