//! virtio-blk (virtio 1.2 §5.2) backed by a host file: the image's read-only rootfs and the
//! per-VM scratch disk.
//!
//! Offered features: VERSION_1, FLUSH (flush = fdatasync of the file), SEG_MAX, and RO for
//! read-only disks, which are also opened O_RDONLY so that no guest write can reach the file
//! even through a bug here; their writes fail with IOERR. Every request is bounds-checked
//! (whole sectors, inside the capacity, header readable, status writable) before any I/O;
//! unsupported request types get UNSUPP.

pub mod device;
pub mod request;
#[cfg(test)]
mod tests;

pub use device::{Block, BlockError};
