//! One frame between a descriptor chain and a host buffer, with the checks a hostile guest
//! calls for (virtio 1.2 §5.1.6): a TX chain is read whole into a buffer once it is known to
//! be only device-readable, complete and of a sane length; an RX chain gets a frame once it
//! is known to be only device-writable, complete and large enough for the header.
//!
//! virtio-queue's `Reader` and `Writer` skip descriptors of the other direction and its
//! descriptor iterator ends a chain quietly at a bad `next` index or a loop, so the chain is
//! walked here first, descriptor by descriptor, and such chains refused.

use std::io::{self, Read, Write};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Writer};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use super::{ETH_HLEN, MAX_BUFFER_LEN, VNET_HDR_LEN};

/// A chain as popped from a queue.
pub type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// Offset of `num_buffers` (le16) in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Why a chain or a frame was dropped.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A TX chain holds a buffer the device could write: TX buffers are device-readable.
    #[error("device-writable descriptor in a TX chain")]
    WritableInTx,
    /// An RX chain holds a buffer the device could only read: RX buffers are device-writable.
    #[error("device-readable descriptor in an RX chain")]
    ReadableInRx,
    /// The chain is empty or its last descriptor still points on (a `next` index past the
    /// queue, a loop cut off at the queue size, an unreadable descriptor table).
    #[error("descriptor chain is empty or cut short")]
    Truncated,
    /// A TX chain shorter than a header plus an Ethernet header, or longer than the longest
    /// frame.
    #[error("TX chain of {0} bytes is not between {min} and {MAX_BUFFER_LEN} bytes", min = VNET_HDR_LEN + ETH_HLEN)]
    TxLength(u64),
    /// An RX chain without room for the header.
    #[error("RX chain of {0} bytes has no room for the {VNET_HDR_LEN}-byte header")]
    RxTooSmall(u64),
    /// A frame from the backend longer than the guest's RX chain.
    #[error("frame of {frame} bytes does not fit an RX chain of {room} bytes")]
    RxTooLong { frame: usize, room: usize },
    /// A frame from the backend shorter than the header.
    #[error("backend frame of {0} bytes is shorter than the header")]
    RxShort(usize),
    /// A buffer is not inside guest memory.
    #[error("buffer outside guest memory: {0}")]
    Memory(#[source] virtio_queue::Error),
    /// Copying from or to guest memory failed.
    #[error("cannot copy the frame: {0}")]
    Copy(#[source] io::Error),
}

/// Checks that every descriptor of `chain` is device-writable (`writable`) or
/// device-readable (`!writable`) and that the chain ends properly; returns its byte length.
fn walk(chain: &Chain<'_>, writable: bool) -> Result<u64, FrameError> {
    let mut total = 0u64;
    let mut last: Option<Descriptor> = None;
    for desc in chain.clone() {
        if desc.is_write_only() != writable {
            return Err(if writable {
                FrameError::ReadableInRx
            } else {
                FrameError::WritableInTx
            });
        }
        total += u64::from(desc.len());
        last = Some(desc);
    }
    match last {
        Some(desc) if !desc.has_next() => Ok(total),
        _ => Err(FrameError::Truncated),
    }
}

/// The length of the TX frame in `chain`, once the chain is checked: only device-readable,
/// complete, and between two headers and [`MAX_BUFFER_LEN`] bytes long.
fn tx_len(chain: &Chain<'_>) -> Result<usize, FrameError> {
    let total = walk(chain, false)?;
    usize::try_from(total)
        .ok()
        .filter(|len| (VNET_HDR_LEN + ETH_HLEN..=MAX_BUFFER_LEN).contains(len))
        .ok_or(FrameError::TxLength(total))
}

/// Copies the TX frame in `chain` (header included) into `buf`, which holds at least
/// [`MAX_BUFFER_LEN`] bytes; returns its length.
pub fn read_tx(
    chain: Chain<'_>,
    mem: &GuestMemoryMmap,
    buf: &mut [u8],
) -> Result<usize, FrameError> {
    let len = tx_len(&chain)?;
    let mut reader = chain.reader(mem).map_err(FrameError::Memory)?;
    reader
        .read_exact(&mut buf[..len])
        .map_err(FrameError::Copy)?;
    Ok(len)
}

/// The guest buffers of the TX frame in `chain` (header included), checked as [`read_tx`]
/// checks them, as iovecs for one `writev`; returns the frame's length. The iovecs point
/// into `mem`'s mappings: the caller uses them while it holds `mem`, and then clears `iov`.
pub fn tx_iovecs(
    chain: Chain<'_>,
    mem: &GuestMemoryMmap,
    iov: &mut Vec<libc::iovec>,
) -> Result<usize, FrameError> {
    let len = tx_len(&chain)?;
    iov.clear();
    for desc in chain {
        let count =
            usize::try_from(desc.len()).map_err(|_| FrameError::TxLength(u64::from(desc.len())))?;
        for slice in mem.get_slices(desc.addr(), count) {
            let slice =
                slice.map_err(|e| FrameError::Memory(virtio_queue::Error::GuestMemory(e)))?;
            if slice.is_empty() {
                continue;
            }
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard().as_ptr().cast_mut().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Ok(len)
}

/// A writer over the RX chain `chain`, once it is checked; the frame goes in with
/// [`write_rx`].
pub fn rx_writer<'m>(chain: Chain<'m>, mem: &'m GuestMemoryMmap) -> Result<Writer<'m>, FrameError> {
    let total = walk(&chain, true)?;
    if total < VNET_HDR_LEN as u64 {
        return Err(FrameError::RxTooSmall(total));
    }
    chain.writer(mem).map_err(FrameError::Memory)
}

/// Writes `frame` (header included) into an RX chain, setting the header's `num_buffers` to
/// 1 (§5.1.6.4: one chain per frame without MRG_RXBUF; a TAP leaves those bytes alone);
/// returns the used-ring length.
pub fn write_rx(writer: &mut Writer<'_>, frame: &mut [u8]) -> Result<u32, FrameError> {
    if frame.len() < VNET_HDR_LEN {
        return Err(FrameError::RxShort(frame.len()));
    }
    let room = writer.available_bytes();
    if frame.len() > room {
        return Err(FrameError::RxTooLong {
            frame: frame.len(),
            room,
        });
    }
    let len = u32::try_from(frame.len()).map_err(|_| FrameError::RxTooLong {
        frame: frame.len(),
        room,
    })?;
    frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
    writer.write_all(frame).map_err(FrameError::Copy)?;
    Ok(len)
}
