//! brig as a library: everything the `brig` binary does lives here, in layers.
//!
//! From the top: [`cli`] (argument parsing, output) → `sandbox` (a sandbox's lifecycle, its
//! state on disk, the guest agent protocol) → {`vmm` (KVM, memory, vCPUs, the device
//! wiring), `image` (the image store)} → {`devices` (emulated devices), `arch` (x86_64 boot
//! structures)}. A module imports only from layers below it; `scripts/check-layers` enforces
//! that in `scripts/test.sh`. `brig_protocol` (the host–guest contract) is shared with the
//! guest agent.

mod arch;
pub mod cli;
mod devices;
mod image;
mod sandbox;
mod vmm;
