//! One virtio-blk request (virtio 1.2 §5.2.6): parse the header from the chain's readable
//! part, check it against the disk, do the I/O, and write the status byte into the last byte
//! of the chain's writable part.
//!
//! Layout a driver must use: a 16-byte header `{ le32 type; le32 reserved; le64 sector; }` in
//! device-readable buffers, then the data (readable for OUT, writable for IN and GET_ID), then
//! one writable status byte. Data moves between guest memory and the file through
//! virtio-queue's `Reader`/`Writer` (vm-memory volatile slices) and a bounded bounce buffer.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{Reader, Writer};

use crate::devices::rate_limiter::Direction;

/// Sector size of the virtio-blk protocol, whatever the disk's real block size.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header.
const HEADER_SIZE: usize = 16;
/// Size of the bounce buffer data is copied through, in one chunk at a time.
pub const BOUNCE_SIZE: usize = 128 * 1024;

/// Status byte values (§5.2.6), which the bindings declare as u32.
pub(super) const S_OK: u8 = status_byte(VIRTIO_BLK_S_OK);
pub(super) const S_IOERR: u8 = status_byte(VIRTIO_BLK_S_IOERR);
pub(super) const S_UNSUPP: u8 = status_byte(VIRTIO_BLK_S_UNSUPP);

const fn status_byte(status: u32) -> u8 {
    assert!(status <= u8::MAX as u32);
    #[allow(clippy::cast_possible_truncation)] // In range: asserted above, at compile time.
    let byte = status as u8;
    byte
}

/// Why a request failed; the guest sees IOERR or UNSUPP.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Fewer readable bytes than a request header.
    #[error("request header missing or short")]
    ShortHeader,
    /// The request type is not one brig implements.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// Data length not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(usize),
    /// The request reaches past the end of the disk.
    #[error("request at sector {sector} of {len} bytes is past the end of the disk")]
    OutOfRange { sector: u64, len: usize },
    /// Data plus status byte would not fit the used ring's 32-bit length.
    #[error("data length {0} does not fit a used-ring length")]
    TooLong(usize),
    /// Reading or writing the backing file (or guest memory) failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) => S_UNSUPP,
            _ => S_IOERR,
        }
    }
}

/// The disk a request runs against.
#[derive(Debug)]
pub struct Disk {
    pub file: File,
    pub read_only: bool,
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// GET_ID answer: the serial, NUL-padded to 20 bytes.
    pub serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

impl Disk {
    /// Checks that `len` bytes at `sector` are whole sectors inside the disk; returns the byte
    /// offset.
    fn check_range(&self, sector: u64, len: usize) -> Result<u64, RequestError> {
        if len as u64 % SECTOR_SIZE != 0 {
            return Err(RequestError::Unaligned(len));
        }
        sector
            .checked_add(len as u64 / SECTOR_SIZE)
            .filter(|&end| end <= self.capacity)
            .ok_or(RequestError::OutOfRange { sector, len })?;
        // Cannot overflow: sector <= capacity, and capacity * 512 is the file's size.
        Ok(sector * SECTOR_SIZE)
    }
}

/// What a request will cost the rate limiter: its direction and data length, read from a
/// copy of the chain's readers so that [`execute`] still sees the whole request. `None` for
/// requests that are not limited (FLUSH, GET_ID) or that will fail their checks anyway.
pub fn peek_io(reader: &Reader<'_>, writer: &Writer<'_>) -> Option<(Direction, u64)> {
    let mut reader = reader.clone();
    if reader.available_bytes() < HEADER_SIZE {
        return None;
    }
    let mut header = [0u8; HEADER_SIZE];
    reader.read_exact(&mut header).ok()?;
    match u32::from_le_bytes([header[0], header[1], header[2], header[3]]) {
        // Everything writable but the status byte is data.
        VIRTIO_BLK_T_IN => Some((
            Direction::Read,
            u64::try_from(writer.available_bytes().saturating_sub(1)).ok()?,
        )),
        VIRTIO_BLK_T_OUT => Some((
            Direction::Write,
            u64::try_from(reader.available_bytes()).ok()?,
        )),
        _ => None,
    }
}

/// Runs one request; returns the number of bytes written into the chain's writable part
/// (data plus the status byte), the used-ring length. `writer` must hold at least the status
/// byte (the caller checks).
pub fn execute(
    disk: &Disk,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_>,
    bounce: &mut [u8],
) -> u32 {
    // The status byte is the last writable byte; everything before it is data.
    let status_at = writer.available_bytes() - 1;
    let mut status_writer = match writer.split_at(status_at) {
        Ok(w) => w,
        Err(_) => return 0,
    };
    let mut data_written = 0usize;
    let result = run(disk, reader, writer, bounce, &mut data_written);
    let status = match &result {
        Ok(()) => S_OK,
        Err(err) => {
            tracing::debug!("virtio-blk: request failed: {err}");
            err.status()
        }
    };
    let written = if status_writer.write_all(&[status]).is_ok() {
        data_written + 1
    } else {
        data_written
    };
    // `run` refuses data that would not fit with the status byte, so this never falls back;
    // if it did, the guest would see nothing written rather than a wrapped length.
    u32::try_from(written).unwrap_or(0)
}

fn run(
    disk: &Disk,
    reader: &mut Reader<'_>,
    data: &mut Writer<'_>,
    bounce: &mut [u8],
    data_written: &mut usize,
) -> Result<(), RequestError> {
    if reader.available_bytes() < HEADER_SIZE {
        return Err(RequestError::ShortHeader);
    }
    let mut header = [0u8; HEADER_SIZE];
    reader.read_exact(&mut header)?;
    let type_ = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);

    match type_ {
        VIRTIO_BLK_T_IN => {
            let len = data.available_bytes();
            // The used length, data plus status byte, must fit a u32. virtio-queue already
            // cuts a chain off before 2^32 bytes (virtio 1.2 §2.7.5.2 forbids longer ones),
            // so this holds today; checked here, before any I/O, so that it does not rest on
            // that.
            if len
                .checked_add(1)
                .and_then(|n| u32::try_from(n).ok())
                .is_none()
            {
                return Err(RequestError::TooLong(len));
            }
            let mut offset = disk.check_range(sector, len)?;
            let mut left = len;
            while left > 0 {
                let chunk = &mut bounce[..left.min(BOUNCE_SIZE)];
                disk.file.read_exact_at(chunk, offset)?;
                data.write_all(chunk)?;
                *data_written += chunk.len();
                offset += chunk.len() as u64;
                left -= chunk.len();
            }
            Ok(())
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            let len = reader.available_bytes();
            let mut offset = disk.check_range(sector, len)?;
            let mut left = len;
            while left > 0 {
                let chunk = &mut bounce[..left.min(BOUNCE_SIZE)];
                reader.read_exact(chunk)?;
                disk.file.write_all_at(chunk, offset)?;
                offset += chunk.len() as u64;
                left -= chunk.len();
            }
            Ok(())
        }
        VIRTIO_BLK_T_FLUSH => {
            if !disk.read_only {
                disk.file.sync_data()?;
            }
            Ok(())
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = data.available_bytes().min(disk.serial.len());
            data.write_all(&disk.serial[..n])?;
            *data_written += n;
            Ok(())
        }
        other => Err(RequestError::Unsupported(other)),
    }
}
