//! passt (passt(1), <https://passt.top>) as a [`Backend`], for a VMM without CAP_NET_ADMIN:
//! passt runs as the same user, owns the other end of a connected Unix stream socket
//! (`passt --fd`), and ends the guest's TCP and UDP flows in ordinary host sockets (a
//! user-mode NAT). The socket speaks QEMU's `-netdev stream` format, as libkrun's
//! `unixstream.rs` does: every Ethernet frame goes as a 4-byte big-endian length followed
//! by the frame, with no virtio-net header.
//!
//! # Reading
//! Reads fill a reassembly buffer, never block and never wait for the rest of a frame:
//! [`Passt::read_frame`] hands out one whole frame at a time behind a zeroed
//! `virtio_net_hdr_v1` (flags 0, GSO_NONE: passt sends full checksums and never a GSO
//! frame), and says `WouldBlock` only once the socket does, so the device's edge-triggered
//! wait stays correct. A length below an Ethernet header (0 included) or past
//! [`MAX_FRAME_LEN`] means the stream is out of step or passt is broken: reading fails with
//! `InvalidData` from then on, as it does when passt closes the stream in the middle of a
//! frame (`UnexpectedEof`); the device takes both as fatal and stops reading. A clean end
//! of the stream (passt exited) reads as `Ok(0)`, nothing to read.
//!
//! # Reading ahead
//! passt's sends to a full socket fail, and the socket's size is the user's to choose only
//! up to `net.core.wmem_max` (208 KiB by default): a guest slower than passt's burst then
//! loses frames, which Debian 12's passt sends again only after its ACK timeout, seconds
//! later (measured in the nested VM: 14-28 Mb/s towards the guest; 244 Mb/s with
//! `wmem_max` raised to 16 MiB). So when the guest has no buffer, the device has the
//! backend take what passt sent off the socket anyway ([`Backend::prefetch`]), into the
//! reassembly buffer, which grows for it up to [`RX_QUEUE_MAX`] (the guest's receive window
//! bounds what passt has in flight towards it).
//!
//! # Writing
//! [`Passt::write_frame`] strips the header and sends the length and the frame in one
//! `sendmsg` (MSG_NOSIGNAL: a dead passt is EPIPE, not SIGPIPE). A frame is never cut,
//! which would put the stream out of step: once any of it is sent, the rest is kept and goes
//! before anything else ([`Passt::flush`], or the next write), and the device waits for the
//! socket to become writable. A frame passt would not take (shorter than an Ethernet header
//! or longer than [`PASST_MAX_FRAME_LEN`]; passt resets the connection over one) is refused
//! instead. The send buffer is raised to 16 MiB as libkrun does, best effort (the kernel caps
//! it at `net.core.wmem_max`).
//!
//! # Offloads
//! The guest's TSO and UFO frames and its partial checksums (VIRTIO_NET_HDR_F_NEEDS_CSUM)
//! go to passt as they are, minus the header that describes them: passt reads the IP total
//! length and the L4 payload, writes the payload into a host socket and never checks a
//! guest's L4 checksum, so neither a super-sized segment nor a checksum left partial
//! matters. libkrun offers the same offloads with passt (CSUM, GUEST_CSUM, GUEST_TSO4,
//! GUEST_UFO, HOST_TSO4, HOST_UFO). Nothing to switch on: [`Passt::set_offload`] only
//! accepts. Frames towards the guest are at most passt's MTU (65520 by default): a guest
//! that posts 1526-byte RX buffers (no GUEST_ offload acked) needs passt started with
//! `--mtu` to match its own, or larger frames are dropped at the RX chain.

use std::fmt;
use std::io::{self, IoSlice, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use rustix::net::{sockopt, SendAncillaryBuffer, SendFlags, SocketType};

use super::{Backend, ETH_HLEN, MAX_FRAME_LEN, VNET_HDR_LEN};

/// Size of the big-endian length before every frame on the wire.
const LEN_PREFIX: usize = 4;
/// The longest frame passt takes from the guest (`L2_MAX_LEN_PASST`, passt's tap.h).
pub const PASST_MAX_FRAME_LEN: usize = 65535;
/// The send buffer asked for (libkrun's value).
const SNDBUF: usize = 16 << 20;
/// The most one frame takes on the wire.
const SLOT: usize = LEN_PREFIX + MAX_FRAME_LEN;
/// The reassembly buffer to begin with: two slots, so that the partial frame at its start
/// is moved back at most once per slot read.
const RX_BUF_LEN: usize = 2 * SLOT;
/// The most [`Backend::prefetch`] takes off the socket ahead of the guest: the largest
/// receive window a Linux guest advertises by default (`tcp_rmem`'s 6 MiB) and some.
pub const RX_QUEUE_MAX: usize = 8 << 20;

/// Taking the passt socket failed.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    /// The fd is not a stream socket (or not a socket at all).
    #[error("the passt fd is not a stream socket: {0}")]
    NotStream(String),
    /// The socket could not be made nonblocking.
    #[error("cannot make the passt socket nonblocking: {0}")]
    Nonblocking(#[source] io::Error),
}

/// Why reading stopped for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Broken {
    /// passt sent this length, which no frame has.
    Length(u32),
    /// passt closed the stream with this many bytes of a frame sent.
    Truncated(usize),
}

impl Broken {
    fn error(self) -> io::Error {
        match self {
            Self::Length(len) => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("passt sent a frame length of {len}, not {ETH_HLEN} to {MAX_FRAME_LEN}"),
            ),
            Self::Truncated(have) => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("passt closed the stream {have} bytes into a frame"),
            ),
        }
    }
}

/// The guest's link through passt: one end of a connected Unix stream socket.
pub struct Passt {
    sock: UnixStream,
    /// Bytes read and not handed out yet: `rx[rx_start..rx_end]`, whole frames and at most
    /// one partial one. [`RX_BUF_LEN`] long, and longer once reading ahead needed more.
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    /// Set once reading can no longer go on.
    broken: Option<Broken>,
    /// The unsent rest of the last frame taken: `tx[tx_pos..]`.
    tx: Vec<u8>,
    tx_pos: usize,
}

impl Passt {
    /// Takes `sock`, connected to passt (which has the other end, as from `socketpair` and
    /// `passt --fd`), makes it nonblocking and asks for a 16 MiB send buffer.
    pub fn new(sock: UnixStream) -> Result<Self, PasstError> {
        Self::with_send_buffer(sock, SNDBUF)
    }

    /// [`Passt::new`] asking for a send buffer of `sndbuf` bytes (tests: a small one makes
    /// writes partial).
    pub(super) fn with_send_buffer(sock: UnixStream, sndbuf: usize) -> Result<Self, PasstError> {
        match sockopt::socket_type(&sock) {
            Ok(SocketType::STREAM) => {}
            Ok(other) => return Err(PasstError::NotStream(format!("{other:?}"))),
            Err(err) => return Err(PasstError::NotStream(err.to_string())),
        }
        sock.set_nonblocking(true)
            .map_err(PasstError::Nonblocking)?;
        if let Err(err) = sockopt::set_socket_send_buffer_size(&sock, sndbuf) {
            tracing::debug!("passt: cannot set SO_SNDBUF to {sndbuf}: {err}");
        }
        Ok(Self::over(sock))
    }

    /// A backend on `sock` (made ready by [`Passt::with_send_buffer`]) with nothing buffered.
    fn over(sock: UnixStream) -> Self {
        Self {
            sock,
            rx: vec![0; RX_BUF_LEN],
            rx_start: 0,
            rx_end: 0,
            broken: None,
            tx: Vec::new(),
            tx_pos: 0,
        }
    }

    /// Copies the first buffered frame, if it is whole, into `buf` behind a zeroed header
    /// and returns the length of both.
    fn next_frame(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let have = &self.rx[self.rx_start..self.rx_end];
        let Some(prefix) = have.first_chunk::<LEN_PREFIX>() else {
            return Ok(None);
        };
        let wire_len = u32::from_be_bytes(*prefix);
        let len = usize::try_from(wire_len).unwrap_or(usize::MAX);
        if !(ETH_HLEN..=MAX_FRAME_LEN).contains(&len) {
            let broken = Broken::Length(wire_len);
            self.broken = Some(broken);
            return Err(broken.error());
        }
        let Some(frame) = have.get(LEN_PREFIX..LEN_PREFIX + len) else {
            return Ok(None);
        };
        let room = buf.len();
        let out = buf.get_mut(..VNET_HDR_LEN + len).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("read buffer of {room} bytes is too small"),
            )
        })?;
        out[..VNET_HDR_LEN].fill(0);
        out[VNET_HDR_LEN..].copy_from_slice(frame);
        self.rx_start += LEN_PREFIX + len;
        Ok(Some(VNET_HDR_LEN + len))
    }

    /// Makes room after the buffered bytes for at least the rest of the partial frame they
    /// hold (less than one [`SLOT`], or `next_frame` would have handed out a frame): empties
    /// the buffer, or moves the partial frame to its start when it sits too far on.
    fn make_room(&mut self) {
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        } else if self.rx.len() - self.rx_start < SLOT {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
    }

    /// Makes room at the end of the buffer for reading ahead, as long as less than
    /// [`RX_QUEUE_MAX`] is buffered: moves the buffered bytes to its start when that frees
    /// half of it, else grows it. False when there is to be no more reading ahead.
    fn room_ahead(&mut self) -> bool {
        let buffered = self.rx_end - self.rx_start;
        if buffered >= RX_QUEUE_MAX {
            return false;
        }
        if self.rx_end < self.rx.len() {
            return true;
        }
        if self.rx_start >= self.rx.len() / 2 {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end = buffered;
            self.rx_start = 0;
        } else {
            let len = (self.rx.len() * 2).min(RX_QUEUE_MAX + SLOT);
            self.rx.resize(len, 0);
        }
        self.rx_end < self.rx.len()
    }

    /// One `sendmsg` of `iov`, retried on EINTR. `Ok(0)` never comes back: a send that
    /// takes nothing is `WouldBlock`.
    fn send(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        loop {
            let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
            match rustix::net::sendmsg(&self.sock, iov, &mut SendAncillaryBuffer::default(), flags)
            {
                Ok(0) => return Err(io::ErrorKind::WouldBlock.into()),
                Ok(n) => return Ok(n),
                Err(rustix::io::Errno::INTR) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Bytes read off the socket and not handed out yet.
    #[cfg(test)]
    pub fn rx_buffered(&self) -> usize {
        self.rx_end - self.rx_start
    }

    /// Bytes of a frame taken but not yet sent.
    pub fn tx_pending(&self) -> usize {
        self.tx.len() - self.tx_pos
    }
}

impl fmt::Debug for Passt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passt")
            .field("fd", &self.sock.as_raw_fd())
            .field("rx_buffered", &(self.rx_end - self.rx_start))
            .field("broken", &self.broken)
            .field("tx_pending", &self.tx_pending())
            .finish()
    }
}

impl AsRawFd for Passt {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Backend for Passt {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(broken) = self.broken {
                return Err(broken.error());
            }
            if let Some(n) = self.next_frame(buf)? {
                return Ok(n);
            }
            self.make_room();
            match self.sock.read(&mut self.rx[self.rx_end..]) {
                Ok(0) if self.rx_end > self.rx_start => {
                    self.broken = Some(Broken::Truncated(self.rx_end - self.rx_start));
                }
                Ok(0) => return Ok(0),
                Ok(n) => self.rx_end += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    fn prefetch(&mut self) -> io::Result<()> {
        while self.broken.is_none() && self.room_ahead() {
            match self.sock.read(&mut self.rx[self.rx_end..]) {
                // The end of the stream: `read_frame` says so once the guest gets there.
                Ok(0) => return Ok(()),
                Ok(n) => self.rx_end += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let eth = frame
            .get(VNET_HDR_LEN..)
            .filter(|eth| (ETH_HLEN..=PASST_MAX_FRAME_LEN).contains(&eth.len()))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "frame of {} bytes: passt takes {ETH_HLEN} to {PASST_MAX_FRAME_LEN} \
                         after the {VNET_HDR_LEN}-byte header",
                        frame.len()
                    ),
                )
            })?;
        // The rest of the last frame goes first; while it cannot, nothing of this one goes.
        self.flush()?;
        let prefix = u32::try_from(eth.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?
            .to_be_bytes();
        let sent = self.send(&[IoSlice::new(&prefix), IoSlice::new(eth)])?;
        if sent < LEN_PREFIX + eth.len() {
            // Taken: keep the rest, for `flush`.
            self.tx.clear();
            self.tx_pos = 0;
            if let Some(rest) = prefix.get(sent..) {
                self.tx.extend_from_slice(rest);
            }
            self.tx
                .extend_from_slice(&eth[sent.saturating_sub(LEN_PREFIX)..]);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.tx_pos < self.tx.len() {
            // An error other than WouldBlock keeps the rest too: dropping it would put the
            // stream out of step, and a peer that is gone fails every later send anyway.
            self.tx_pos += self.send(&[IoSlice::new(&self.tx[self.tx_pos..])])?;
        }
        self.tx.clear();
        self.tx_pos = 0;
        Ok(())
    }

    fn set_offload(&mut self, _tun_flags: u32) -> io::Result<()> {
        // passt never sends GSO frames or partial checksums, whatever the guest takes.
        Ok(())
    }
}
