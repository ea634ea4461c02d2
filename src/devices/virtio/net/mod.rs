//! virtio-net (virtio 1.2 §5.1), brig's own device model after Firecracker's
//! (`src/vmm/src/devices/virtio/net/`): one RX and one TX queue, a config space with the MAC
//! address (and the MTU when one is set), and a host [`Backend`] that moves whole Ethernet
//! frames: the TAP device ([`tap::Tap`]) for a VMM running as root, passt's stream
//! ([`passt::Passt`]) for one that is not. An egress policy ([`filter`]) may check every
//! frame the guest sends.
//!
//! # Frames
//! Every frame on either queue starts with the 12-byte `struct virtio_net_hdr_v1` (§5.1.6),
//! whatever features are negotiated (VERSION_1 fixes its size). A TAP opened with
//! IFF_VNET_HDR and TUNSETVNETHDRSZ 12 speaks exactly that format, so frames go between the
//! queues and the TAP as they are: checksum and segmentation offloads (CSUM, HOST_TSO4/6,
//! HOST_UFO guest → host; GUEST_CSUM, GUEST_TSO4/6, GUEST_UFO host → guest, enabled on the TAP
//! with TUNSETOFFLOAD at activation) pass through untouched, and the host kernel validates
//! the headers the guest writes. MRG_RXBUF is not offered: each RX frame goes into one
//! chain, so a guest that acks a GUEST_ offload posts 64 KiB chains (Linux does). passt
//! takes the same offloaded frames without their header (see [`passt`]).
//!
//! # A hostile guest
//! Every chain is checked before use ([`frame`]): TX chains only device-readable, between
//! a header plus an Ethernet header and [`MAX_BUFFER_LEN`] bytes long; RX chains only
//! device-writable, with room for the header; neither cut short (a loop, a bad `next`
//! index). A bad chain costs the guest that one frame, returned with length 0; the device
//! goes on with the next one.
//!
//! # Back-pressure
//! The device reads the backend only while it holds an RX chain to put the frame in: a
//! guest that posts no RX buffers leaves frames in the backend (the TAP queues then drops
//! them, as a full NIC ring would), and its next RX kick resumes reading. A TX frame the
//! backend cannot take now (would block) stays on the TX queue until the backend's fd is
//! writable, and so does the rest of a frame passt took only part of, in the backend.
//!
//! # Layout
//! [`backend`] is the host side's interface, [`tap`] the TAP backend, [`passt`] the passt
//! backend, [`frame`] the checks and copies of one frame, [`filter`] the egress policy, and
//! [`device`] the virtio device (queues, features, config space, events). `vmm::virtio`
//! attaches it; `sandbox::network` makes the TAP (or starts passt), its addresses and NAT,
//! and tells the guest agent how to configure `eth0`.

pub mod backend;
pub mod device;
#[cfg(test)]
mod event_tests;
pub mod filter;
#[cfg(test)]
mod filter_tests;
pub mod frame;
#[cfg(test)]
mod fuzz_tests;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod mock;
pub mod null;
pub mod passt;
#[cfg(test)]
mod passt_tests;
pub mod tap;
#[cfg(test)]
mod tests;
pub mod vhost;

pub use backend::Backend;
pub use device::{Net, NetConfig, NetError};
pub use null::NullBackend;
pub use vhost::VhostNet;

/// Size of `struct virtio_net_hdr_v1`, the header before every frame on both queues.
pub const VNET_HDR_LEN: usize = 12;
const _: () = assert!(VNET_HDR_LEN == size_of::<virtio_bindings::virtio_net::virtio_net_hdr_v1>());
/// Size of an Ethernet header (destination, source, ethertype): the shortest frame.
pub const ETH_HLEN: usize = 14;
/// The longest frame, header excluded: 64 KiB (a GSO packet) plus the Ethernet header.
pub const MAX_FRAME_LEN: usize = 64 * 1024 + ETH_HLEN;
/// The longest header plus frame either way (Firecracker's `MAX_BUFFER_SIZE`, 65562).
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
