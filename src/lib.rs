//! brig as a library: everything the `brig` binary does lives here, in layers.
//!
//! From the top: [`cli`] (argument parsing, output) → `sandbox` (a sandbox's lifecycle, its
//! state on disk, the guest agent protocol) → {`vmm` (KVM, memory, vCPUs, the device
//! wiring), `image` (the image store)} → {`devices` (emulated devices), `arch` (x86_64 boot
//! structures)}, and under all of them `atomic` (files written whole or not at all). A module
//! imports only from layers below it; `scripts/check-layers` enforces
//! that in `scripts/test.sh`. `brig_protocol` (the host–guest contract) is shared with the
//! guest agent.

mod arch;
mod atomic;
pub mod cli;
mod devices;
mod image;
#[cfg(test)]
mod prop;
mod sandbox;
mod vmm;

/// Hostile-input harnesses for the `fuzz/` cargo-fuzz targets: one function per target,
/// taking the fuzzer's bytes and panicking when a property breaks. The crate's own tests run
/// the same functions on stable Rust with deterministic inputs.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use crate::devices::virtio::fuzzing::{
        virtio_blk, virtio_mmio, virtio_net, virtio_rng, virtio_vsock,
    };
    pub use crate::image::fuzzing::{image_config, layer_unpack, manifest};
}
