//! virtio-vsock packets (virtio 1.2 §5.10.6): the 44-byte little-endian header
//! (`struct virtio_vsock_hdr` in Linux's include/uapi/linux/virtio_vsock.h), its validation
//! against what a guest may legitimately send, and reading/writing packets from/to descriptor
//! chains.
//!
//! A TX chain from the guest must hold the header and `len` payload bytes in device-readable
//! buffers, all inside guest memory; `len` is at most [`MAX_PAYLOAD`]; the source must be the
//! guest's own CID and the destination the host (CID 2). Anything else is dropped (bad
//! addressing, bad length, broken chain) or answered with RST (a well-addressed packet of an
//! unsupported type or op). The header is parsed field by field: no unsafe casts of guest bytes.
//!
//! Not rust-vmm's `virtio-vsock` crate (0.12, on the same virtio-queue/vm-memory 0.18): its
//! `VsockPacket::from_tx_virtq_chain` wants the whole header in the head descriptor and the
//! payload in at most one more, each in one contiguous memory region, whereas virtio 1.2
//! §2.6.4 lets a driver lay a message out over descriptors as it likes; brig reads chains
//! through virtio-queue's `Reader`/`Writer`, which accept any layout
//! (`reads_header_and_payload_across_descriptors`, which the crate would fail). The CID
//! checks below would stay in brig either way.

use std::io::{Read, Write};

use virtio_queue::{Reader, Writer};

/// Size of the packet header.
pub const HDR_SIZE: usize = 44;
/// Largest payload brig accepts from or sends to the guest in one packet (64 KiB, Linux's
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The host's CID (VMADDR_CID_HOST).
pub const HOST_CID: u64 = 2;

/// The only socket type brig supports: VIRTIO_VSOCK_TYPE_STREAM.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (VIRTIO_VSOCK_OP_*).
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flags: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet from the guest that cannot be accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The descriptor chain is broken (a buffer outside guest memory, or too long).
    #[error("bad descriptor chain")]
    BadChain,
    /// The chain's readable part is shorter than a header.
    #[error("descriptor chain holds {0} bytes, less than a header")]
    ShortHeader(usize),
    /// The header announces more payload than brig accepts.
    #[error("payload of {0} bytes exceeds the 64 KiB limit")]
    TooLong(u32),
    /// The header announces more payload than the chain holds.
    #[error("payload of {len} bytes but only {available} in the chain")]
    ShortPayload { len: u32, available: usize },
    /// The source CID is not the guest's.
    #[error("source CID {0} is not the guest's")]
    BadSrcCid(u64),
    /// The destination is not the host.
    #[error("destination CID {0} is not the host")]
    BadDstCid(u64),
    /// Not a stream packet.
    #[error("unsupported socket type {0}")]
    BadType(u16),
    /// Not an operation of the virtio-vsock spec.
    #[error("unknown operation {0}")]
    BadOp(u16),
}

/// A packet header, in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Checks the type and op of a well-addressed packet.
    pub fn check_type_op(&self) -> Result<(), PacketError> {
        if self.type_ != TYPE_STREAM {
            return Err(PacketError::BadType(self.type_));
        }
        if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&self.op) {
            return Err(PacketError::BadOp(self.op));
        }
        Ok(())
    }
}

/// Reads one TX packet from the readable part of a chain: returns its header (addressing and
/// length checked; type and op not yet) and puts the payload in `payload`.
pub fn read_tx_packet(
    reader: &mut Reader<'_>,
    guest_cid: u64,
    payload: &mut Vec<u8>,
) -> Result<Header, PacketError> {
    let available = reader.available_bytes();
    if available < HDR_SIZE {
        return Err(PacketError::ShortHeader(available));
    }
    let mut raw = [0u8; HDR_SIZE];
    reader
        .read_exact(&mut raw)
        .map_err(|_| PacketError::BadChain)?;
    let hdr = Header::from_bytes(&raw);
    if hdr.src_cid != guest_cid {
        return Err(PacketError::BadSrcCid(hdr.src_cid));
    }
    if hdr.dst_cid != HOST_CID {
        return Err(PacketError::BadDstCid(hdr.dst_cid));
    }
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD {
        return Err(PacketError::TooLong(hdr.len));
    }
    let available = reader.available_bytes();
    if len > available {
        return Err(PacketError::ShortPayload {
            len: hdr.len,
            available,
        });
    }
    payload.clear();
    payload.resize(len, 0);
    reader
        .read_exact(payload)
        .map_err(|_| PacketError::BadChain)?;
    Ok(hdr)
}

/// Room for payload in an RX chain's writable part, or None when not even a header fits.
pub fn rx_payload_room(writer: &Writer<'_>) -> Option<usize> {
    writer
        .available_bytes()
        .checked_sub(HDR_SIZE)
        .map(|room| room.min(MAX_PAYLOAD))
}

/// Writes an RX packet (header with `len` set from `payload`) into a chain; returns the bytes
/// written, the used-ring length. A payload whose length does not fit the header's u32 is
/// refused (InvalidInput) before anything is written.
pub fn write_rx_packet(
    writer: &mut Writer<'_>,
    hdr: &Header,
    payload: &[u8],
) -> std::io::Result<u32> {
    let too_long = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let mut hdr = *hdr;
    hdr.len = u32::try_from(payload.len()).map_err(too_long)?;
    let used = u32::try_from(HDR_SIZE + payload.len()).map_err(too_long)?;
    writer.write_all(&hdr.to_bytes())?;
    writer.write_all(payload)?;
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, GuestQueue, F_NEXT};
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const CID: u64 = 3;

    fn hdr(len: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    /// Publishes `bufs` on a fresh queue and reads the chain back as a TX packet.
    fn parse(
        mem: &GuestMemoryMmap,
        gq: &mut GuestQueue,
        bufs: &[(u64, u32, bool)],
    ) -> Result<(Header, Vec<u8>), PacketError> {
        gq.add_chain(bufs);
        parse_published(mem, gq)
    }

    fn parse_published(
        mem: &GuestMemoryMmap,
        gq: &GuestQueue,
    ) -> Result<(Header, Vec<u8>), PacketError> {
        let mut q = gq.queue();
        let chain = q.pop_descriptor_chain(mem).unwrap();
        let mut reader = chain.reader(mem).map_err(|_| PacketError::BadChain)?;
        let mut payload = Vec::new();
        read_tx_packet(&mut reader, CID, &mut payload).map(|h| (h, payload))
    }

    #[test]
    fn header_round_trips() {
        let h = hdr(5);
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        assert_eq!(h.to_bytes()[24], 5);
        assert_eq!(h.to_bytes()[16..20], 1000u32.to_le_bytes());
    }

    #[test]
    fn reads_header_and_payload_across_descriptors() {
        let mem = guest_memory();
        let mut gq = GuestQueue::new(&mem, 0x1000, 16);
        let mut raw = hdr(6).to_bytes().to_vec();
        raw.extend_from_slice(b"hel");
        mem.write_slice(&raw, GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(b"lo!", GuestAddress(0x20_0000)).unwrap();
        let (h, p) = parse(
            &mem,
            &mut gq,
            &[(0x10_0000, 47, false), (0x20_0000, 3, false)],
        )
        .unwrap();
        assert_eq!(h, hdr(6));
        assert_eq!(p, b"hello!");
    }

    #[test]
    fn rejects_bad_lengths_and_addresses() {
        let mem = guest_memory();
        let cases: Vec<(Header, u32, PacketError)> = vec![
            (hdr(0), 40, PacketError::ShortHeader(40)),
            (
                hdr(65 * 1024),
                44 + 65 * 1024,
                PacketError::TooLong(65 * 1024),
            ),
            (
                hdr(10),
                50,
                PacketError::ShortPayload {
                    len: 10,
                    available: 6,
                },
            ),
            (
                Header {
                    src_cid: 9,
                    ..hdr(0)
                },
                44,
                PacketError::BadSrcCid(9),
            ),
            (
                Header {
                    dst_cid: 1,
                    ..hdr(0)
                },
                44,
                PacketError::BadDstCid(1),
            ),
        ];
        for (h, buf_len, want) in cases {
            let mut gq = GuestQueue::new(&mem, 0x1000, 16);
            mem.write_slice(&h.to_bytes(), GuestAddress(0x10_0000))
                .unwrap();
            let got = parse(&mem, &mut gq, &[(0x10_0000, buf_len, false)]);
            assert_eq!(got.unwrap_err(), want);
        }
    }

    #[test]
    fn type_and_op_are_checked() {
        let bad_type = Header { type_: 2, ..hdr(0) }.check_type_op().unwrap_err();
        assert_eq!(bad_type, PacketError::BadType(2));
        for bad in [0, 8, 0xffff] {
            let e = Header { op: bad, ..hdr(0) }.check_type_op().unwrap_err();
            assert_eq!(e, PacketError::BadOp(bad));
        }
        assert!(hdr(0).check_type_op().is_ok());
    }

    #[test]
    fn chains_outside_memory_or_writable_only_are_rejected() {
        let mem = guest_memory();
        let mut gq = GuestQueue::new(&mem, 0x1000, 16);
        let got = parse(
            &mem,
            &mut gq,
            &[(0x10_0000, 44, false), (0xffff_0000, 16, false)],
        );
        assert_eq!(got.unwrap_err(), PacketError::BadChain);
        let mut gq = GuestQueue::new(&mem, 0x1000, 16);
        // Straddles the end of guest memory.
        let got = parse(&mem, &mut gq, &[(0xff_fff0, 44, false)]);
        assert_eq!(got.unwrap_err(), PacketError::BadChain);
        // A writable-only chain has no readable header.
        let mut gq = GuestQueue::new(&mem, 0x1000, 16);
        let got = parse(&mem, &mut gq, &[(0x10_0000, 64, true)]);
        assert_eq!(got.unwrap_err(), PacketError::ShortHeader(0));
    }

    #[test]
    fn looping_chain_is_cut_off() {
        let mem = guest_memory();
        let mut gq = GuestQueue::new(&mem, 0x1000, 4);
        // 0 -> 1 -> 0 -> ...: virtio-queue stops after queue-size descriptors.
        gq.write_desc(0, 0x10_0000, 8, F_NEXT, 1);
        gq.write_desc(1, 0x10_0008, 8, F_NEXT, 0);
        gq.publish(0);
        let got = parse_published(&mem, &gq);
        assert_eq!(got.unwrap_err(), PacketError::ShortHeader(32));
    }

    #[test]
    fn writes_rx_packet_and_reports_room() {
        let mem = guest_memory();
        let mut gq = GuestQueue::new(&mem, 0x1000, 16);
        gq.add_chain(&[(0x10_0000, 44, true), (0x20_0000, 100, true)]);
        let mut q = gq.queue();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let mut w = chain.writer(&mem).unwrap();
        assert_eq!(rx_payload_room(&w), Some(100));
        let n = write_rx_packet(&mut w, &hdr(0), b"abc").unwrap();
        assert_eq!(n, 47);
        let mut raw = [0u8; HDR_SIZE];
        mem.read_slice(&mut raw, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(Header::from_bytes(&raw), hdr(3));
        let mut p = [0u8; 3];
        mem.read_slice(&mut p, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&p, b"abc");
    }
}
