//! The host side of a virtio-net device: something that takes and gives whole Ethernet
//! frames, each behind a 12-byte `virtio_net_hdr_v1`, through a nonblocking fd the device
//! polls.
//!
//! A TAP ([`super::tap::Tap`]) is one; a later rootless backend (passt's length-prefixed stream)
//! will add and strip the header itself and keep partial reads and writes internally, so
//! that the device always sees whole frames.

use std::fmt::Debug;
use std::io;
use std::os::fd::AsRawFd;

/// A source and sink of frames for [`super::Net`].
///
/// The fd it exposes is registered edge-triggered for EPOLLIN (and EPOLLOUT while a write
/// would block): after an IN event the device reads until [`Backend::read_frame`] would
/// block, unless the guest has no RX buffer, in which case it resumes when the guest posts
/// one. So a backend must report readiness through its fd the way a socket or TAP does.
pub trait Backend: AsRawFd + Debug + Send {
    /// Reads one frame, header included, into `buf` (at least
    /// [`super::MAX_BUFFER_LEN`] bytes) and returns its length. Errors with
    /// [`io::ErrorKind::WouldBlock`] when no frame waits; `Ok(0)` means the same (a stream
    /// at its end).
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one frame, header included, whole. [`io::ErrorKind::WouldBlock`] means nothing
    /// was written and the device should retry once the fd is writable; any other error
    /// drops the frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;

    /// The guest accepted frames with these offloads (`TUN_F_*` flags of linux/if_tun.h,
    /// from the acked GUEST_ features): the backend may now hand it such frames, and no
    /// others. Called at every activation.
    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()>;
}
