//! virtio-vsock (virtio 1.2 §5.10) implemented in brig, with the host side on Unix sockets,
//! following Firecracker's "hybrid vsock" convention (no vhost-vsock module needed).
//!
//! # How AF_VSOCK maps to AF_UNIX
//! The guest sees an ordinary vsock device: it is CID `guest_cid` (default 3), the host is
//! CID 2. The host sees one Unix socket per VM, at the path given to [`Vsock::new`]:
//!
//! - **Host → guest.** A host process connects to that socket and writes `CONNECT <port>\n`.
//!   brig picks a host-side port (from 2^30 up), sends the guest a REQUEST for guest port
//!   `<port>`, and once the guest's listener accepts (RESPONSE) writes `OK <host_port>\n` back;
//!   from then on the Unix stream carries the connection's bytes both ways. If the guest
//!   refuses (RST) or does not answer within 2 s, the Unix connection is closed.
//! - **Guest → host.** A guest `connect(2)` to CID 2, port P becomes a Unix connection to
//!   `<path>_P`: brig accepts the guest's REQUEST if something listens there, and answers RST
//!   (connection refused) otherwise.
//!
//! Shutdowns map to `shutdown(2)`/EOF on the Unix stream, resets to closing it.
//!
//! # Flow control
//! Credit-based, both ways (§5.10.6.3): brig never sends the guest more than the buffer space
//! it advertised, and never buffers more guest data than it advertised itself; see
//! [`csm`] for the details. A guest that stops reading stalls the host socket instead of
//! growing brig's memory.
//!
//! # Layout
//! [`packet`] parses and validates headers, [`csm`] is one connection's state machine,
//! [`muxer`] owns the Unix sockets and the connection table, and [`device`] is the virtio
//! device itself (queues, config space, events).

pub mod csm;
pub mod device;
pub mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;
mod unix;

pub use device::{Vsock, VsockError, DEFAULT_GUEST_CID};
