//! The host side of a virtio-net device: something that takes and gives whole Ethernet
//! frames, each behind a 12-byte `virtio_net_hdr_v1`, through a nonblocking fd the device
//! polls.
//!
//! A TAP ([`super::tap::Tap`]) is one: the kernel takes and gives one frame per syscall,
//! header included. passt's length-prefixed stream ([`super::passt::Passt`]) is the other:
//! it adds and strips the header itself and keeps partial reads and partial writes
//! internally, so that the device always sees whole frames.

use std::fmt::Debug;
use std::io;
use std::os::fd::AsRawFd;

/// A source and sink of frames for [`super::Net`].
///
/// The fd it exposes is registered edge-triggered for EPOLLIN (and EPOLLOUT while a write
/// would block or [`Backend::flush`] has something left): after an IN event the device
/// reads until [`Backend::read_frame`] would block, unless the guest has no RX buffer, in
/// which case it resumes when the guest posts one. So a backend must report readiness
/// through its fd the way a socket or TAP does: a backend that buffers must not return
/// `WouldBlock` while it still holds a whole frame.
pub trait Backend: AsRawFd + Debug + Send {
    /// Reads one frame, header included, into `buf` (at least
    /// [`super::MAX_BUFFER_LEN`] bytes) and returns its length. Errors with
    /// [`io::ErrorKind::WouldBlock`] when no frame waits; `Ok(0)` means the same (a stream
    /// at its end). Any other error is fatal for reading: the device stops reading this
    /// backend for good (a TAP has no transient read errors besides EINTR, which it
    /// retries; a stream that lost its framing cannot find it again).
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Takes what waits on the fd into the backend's own buffer, without handing anything
    /// out: the device calls it when the guest has no RX buffer, for a backend whose peer
    /// must not find its way full (passt). Frames taken stay for [`Backend::read_frame`],
    /// which hands them out before it reads the fd again; errors are for it to report. A
    /// backend whose peer keeps its own queue (a TAP) has nothing to do: the default.
    fn prefetch(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Takes one frame, header included. `Ok` means the frame is the backend's: written
    /// whole, or (a stream) partly written with the rest kept, to go out before any later
    /// frame, through [`Backend::flush`] or the next `write_frame`.
    /// [`io::ErrorKind::WouldBlock`] means nothing of this frame was taken and the device
    /// should retry once the fd is writable; any other error drops the frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Whether the backend takes frames gathered from guest memory
    /// ([`Backend::write_frame_iov`]), saving the device a copy of each frame.
    fn takes_iovecs(&self) -> bool {
        false
    }

    /// As [`Backend::write_frame`], with the frame gathered from `iov`, which points into
    /// guest memory that stays mapped for the call. Only called when
    /// [`Backend::takes_iovecs`] says so.
    fn write_frame_iov(&mut self, _iov: &[libc::iovec]) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Writes what is left of frames taken earlier. `Ok` when nothing is left;
    /// [`io::ErrorKind::WouldBlock`] when some still waits, and the device then calls again
    /// once the fd is writable; any other error is only logged (a backend may keep what is
    /// left and try again on its next write). The device calls it when it has no more
    /// frames to write. A backend that never keeps part of a frame (a TAP) has nothing to
    /// do: the default.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// The guest accepted frames with these offloads (`TUN_F_*` flags of linux/if_tun.h,
    /// from the acked GUEST_ features): the backend may now hand it such frames, and no
    /// others. Called at every activation.
    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()>;

    /// A second backend on the same wire (the same TAP queue, the same socket): the one the
    /// kernel's vhost-net moves frames through (see [`super::vhost`]).
    fn try_clone(&self) -> io::Result<Box<dyn Backend>> {
        Err(io::ErrorKind::Unsupported.into())
    }
}
