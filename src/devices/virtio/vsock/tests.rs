//! End-to-end tests of the vsock device: a hand-driven "guest" on real virtqueues in mock guest
//! memory, and real Unix sockets on the host side.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::csm::CONN_BUF_SIZE;
use super::packet::{op, Header, HDR_SIZE, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::Vsock;
use crate::devices::virtio::test_utils::{guest_memory, GuestQueue};
use crate::devices::virtio::{Interrupt, VirtioDevice};

const CID: u64 = 3;
/// An RX buffer: a header and 4 KiB of payload, as Linux posts them.
const RX_BUF: u32 = 44 + 4096;
const _: () = assert!(RX_BUF as usize == HDR_SIZE + 4096);
const TX_AREA: u64 = 0x80_0000;

struct Guest {
    _dir: tempfile::TempDir,
    path: PathBuf,
    mem: GuestMemoryMmap,
    rxq: GuestQueue,
    txq: GuestQueue,
    dev: Vsock,
    irq: Arc<Interrupt>,
    rx_bufs: HashMap<u16, u64>,
    next_rx_addr: u64,
    next_tx_addr: u64,
    /// Whether `recv` posts a new RX buffer for each one used.
    repost: bool,
}

impl Guest {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let mem = guest_memory();
        let rxq = GuestQueue::new(&mem, 0x1_0000, 256);
        let txq = GuestQueue::new(&mem, 0x2_0000, 256);
        let evq = GuestQueue::new(&mem, 0x3_0000, 256);
        let mut dev = Vsock::new(CID, &path).unwrap();
        let irq = crate::devices::virtio::test_utils::activate(&mut dev, &[&rxq, &txq, &evq]);
        let mut g = Self {
            _dir: dir,
            path,
            mem,
            rxq,
            txq,
            dev,
            irq,
            rx_bufs: HashMap::new(),
            next_rx_addr: 0x10_0000,
            next_tx_addr: TX_AREA,
            repost: true,
        };
        g.post_rx(64);
        g
    }

    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = self.next_rx_addr;
            self.next_rx_addr += 0x2000;
            if self.next_rx_addr >= TX_AREA {
                self.next_rx_addr = 0x10_0000;
            }
            let head = self.rxq.add_chain(&[(addr, RX_BUF, true)]);
            self.rx_bufs.insert(head, addr);
        }
        self.dev.process_rx();
    }

    fn hdr(&self, op: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 64 * 1024,
            ..Header::default()
        }
    }

    /// Puts a raw packet on the TX queue and lets the device process it.
    fn send_raw(&mut self, hdr: &Header, payload: &[u8]) {
        let len = HDR_SIZE + payload.len();
        if self.next_tx_addr + len as u64 >= (16 << 20) {
            self.next_tx_addr = TX_AREA;
        }
        let addr = self.next_tx_addr;
        self.next_tx_addr += (len as u64 + 0xfff) & !0xfff;
        let mut raw = hdr.to_bytes().to_vec();
        raw.extend_from_slice(payload);
        self.mem.write_slice(&raw, GuestAddress(addr)).unwrap();
        self.txq
            .add_chain(&[(addr, u32::try_from(len).unwrap(), false)]);
        self.dev.process_tx();
        self.dev.process_rx();
        assert!(self.txq.take_used().iter().all(|&(_, l)| l == 0));
    }

    fn send(&mut self, mut hdr: Header, payload: &[u8]) {
        hdr.len = u32::try_from(payload.len()).unwrap();
        self.send_raw(&hdr, payload);
    }

    /// Packets the device has put in RX buffers so far (buffers re-posted).
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for (head, len) in self.rxq.take_used() {
            let addr = self.rx_bufs.remove(&head).unwrap();
            let mut raw = [0u8; HDR_SIZE];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let h = Header::from_bytes(&raw);
            assert_eq!(len as usize, HDR_SIZE + h.len as usize);
            let mut p = vec![0u8; h.len as usize];
            self.mem
                .read_slice(&mut p, GuestAddress(addr + HDR_SIZE as u64))
                .unwrap();
            out.push((h, p));
        }
        if self.repost && !out.is_empty() {
            self.post_rx(out.len());
        }
        out
    }

    /// Runs the backend until `f` finds what it wants among received packets.
    fn wait_for<T>(&mut self, mut f: impl FnMut(&Header, &[u8]) -> Option<T>) -> T {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            self.dev.process_backend();
            for (h, p) in self.recv() {
                if let Some(t) = f(&h, &p) {
                    return t;
                }
            }
            assert!(Instant::now() < until, "timed out waiting for a packet");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Pumps the backend for a while and returns everything received.
    fn drain(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut all = Vec::new();
        for _ in 0..20 {
            self.dev.process_backend();
            all.extend(self.recv());
            std::thread::sleep(Duration::from_millis(2));
        }
        all
    }

    /// Opens a host-initiated connection to guest port `port`; returns (host stream, host port).
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut host = UnixStream::connect(&self.path).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        let local = self.wait_for(|h, _| (h.op == op::REQUEST).then_some(h.src_port));
        let mut resp = self.hdr(op::RESPONSE, port, local);
        resp.buf_alloc = 1 << 20;
        self.send(resp, &[]);
        let mut line = vec![0u8; format!("OK {local}\n").len()];
        host.read_exact(&mut line).unwrap();
        assert_eq!(String::from_utf8(line).unwrap(), format!("OK {local}\n"));
        (host, local)
    }
}

#[test]
fn config_space_holds_the_guest_cid() {
    let g = Guest::new();
    let mut b = [0u8; 8];
    g.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), CID);
    let mut b = [0u8; 4];
    g.dev.read_config(4, &mut b);
    assert_eq!(b, [0; 4]);
    assert_eq!(g.dev.device_type(), 19);
    assert_eq!(g.dev.queue_max_sizes().len(), 3);
}

#[test]
fn invalid_cids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for cid in [0, 1, 2, u64::from(u32::MAX)] {
        assert!(Vsock::new(cid, &dir.path().join("s")).is_err());
    }
}

#[test]
fn host_initiated_connection_carries_data_both_ways() {
    let mut g = Guest::new();
    let (mut host, local) = g.host_connect(52);
    assert!(local >= 1 << 30);
    // Bytes written right behind the CONNECT line are not lost either.
    host.write_all(b"ping").unwrap();
    let data = g.wait_for(|h, p| (h.op == op::RW).then(|| p.to_vec()));
    assert_eq!(data, b"ping");
    g.send(g.hdr(op::RW, 52, local), b"pong");
    let mut b = [0u8; 4];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong");
    assert!(g.irq.status() & 1 != 0, "the guest was interrupted");
    // The guest closes: the host sees EOF and the guest gets the final RST.
    let mut s = g.hdr(op::SHUTDOWN, 52, local);
    s.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(s, &[]);
    assert_eq!(host.read(&mut b).unwrap(), 0);
    g.wait_for(|h, _| (h.op == op::RST).then_some(()));
    assert_eq!(g.dev.muxer().connection_count(), 0);
}

#[test]
fn host_connection_refused_by_guest_is_closed() {
    let mut g = Guest::new();
    let mut host = UnixStream::connect(&g.path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 7\n").unwrap();
    let local = g.wait_for(|h, _| (h.op == op::REQUEST).then_some(h.src_port));
    g.send(g.hdr(op::RST, 7, local), &[]);
    let mut b = [0u8; 8];
    assert_eq!(host.read(&mut b).unwrap(), 0);
}

#[test]
fn bad_connect_lines_are_closed() {
    let mut g = Guest::new();
    let mut host = UnixStream::connect(&g.path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"HELLO 7\n").unwrap();
    g.drain();
    let mut b = [0u8; 8];
    assert_eq!(host.read(&mut b).unwrap(), 0);
    let mut host = UnixStream::connect(&g.path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(&[b'x'; 100]).unwrap();
    g.drain();
    // Closed with unread bytes in it: the host sees a reset rather than EOF.
    match host.read(&mut b) {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    assert_eq!(g.dev.muxer().connection_count(), 0);
}

#[test]
fn guest_initiated_connection_reaches_port_socket() {
    let mut g = Guest::new();
    let mut path = g.path.clone().into_os_string();
    path.push("_1234");
    let listener = UnixListener::bind(&path).unwrap();
    g.send(g.hdr(op::REQUEST, 5000, 1234), &[]);
    let resp = g.wait_for(|h, _| Some(*h));
    assert_eq!(
        (
            resp.op,
            resp.src_port,
            resp.dst_port,
            resp.src_cid,
            resp.dst_cid
        ),
        (op::RESPONSE, 1234, 5000, HOST_CID, CID)
    );
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    g.send(g.hdr(op::RW, 5000, 1234), b"hello host");
    let mut b = [0u8; 10];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello host");
    host.write_all(b"hello guest").unwrap();
    let data = g.wait_for(|h, p| (h.op == op::RW).then(|| p.to_vec()));
    assert_eq!(data, b"hello guest");
    // The host closes: SHUTDOWN(SEND) to the guest, then the guest's close gets an RST.
    drop(host);
    let flags = g.wait_for(|h, _| (h.op == op::SHUTDOWN).then_some(h.flags));
    assert_eq!(flags, SHUTDOWN_SEND);
    let mut s = g.hdr(op::SHUTDOWN, 5000, 1234);
    s.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(s, &[]);
    g.wait_for(|h, _| (h.op == op::RST).then_some(()));
}

#[test]
fn guest_connection_to_missing_port_is_reset() {
    let mut g = Guest::new();
    g.send(g.hdr(op::REQUEST, 5000, 999), &[]);
    let rst = g.wait_for(|h, _| Some(*h));
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, 999, 5000));
    assert_eq!(g.dev.muxer().connection_count(), 0);
}

#[test]
fn bad_packets_are_dropped_or_reset() {
    let mut g = Guest::new();
    // Wrong source CID, wrong destination, oversized: dropped silently.
    let mut h = g.hdr(op::REQUEST, 1, 2);
    h.src_cid = 7;
    g.send(h, &[]);
    let mut h = g.hdr(op::REQUEST, 1, 2);
    h.dst_cid = 1;
    g.send(h, &[]);
    let mut h = g.hdr(op::RW, 1, 2);
    h.len = 1 << 20;
    g.send_raw(&h, &[0; 16]);
    // A chain shorter than a header, and one outside guest memory.
    g.txq.add_chain(&[(TX_AREA, 10, false)]);
    g.txq.add_chain(&[(0xffff_0000, 44, false)]);
    g.dev.process_tx();
    assert!(g.drain().is_empty());
    assert_eq!(g.txq.take_used().len(), 2, "bad chains are still returned");
    // Well addressed but unsupported type, or unknown op, or data on no connection: RST.
    let mut h = g.hdr(op::REQUEST, 1, 2);
    h.type_ = 2;
    g.send(h, &[]);
    g.send(g.hdr(99, 3, 4), &[]);
    g.send(g.hdr(op::RW, 5, 6), b"x");
    // An RST for nothing gets no answer.
    g.send(g.hdr(op::RST, 7, 8), &[]);
    let got: Vec<_> = g.drain().iter().map(|(h, _)| (h.op, h.dst_port)).collect();
    assert_eq!(got, vec![(op::RST, 1), (op::RST, 3), (op::RST, 5)]);
}

#[test]
fn guest_facing_side_never_exceeds_guest_credit() {
    let mut g = Guest::new();
    let (mut host, local) = g.host_connect(52);
    // The guest now advertises only 1000 bytes of buffer.
    let mut cu = g.hdr(op::CREDIT_UPDATE, 52, local);
    cu.buf_alloc = 1000;
    cu.fwd_cnt = 0;
    g.send(cu, &[]);
    host.write_all(&[5u8; 10_000]).unwrap();
    let pkts = g.drain();
    let data: usize = pkts
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .map(|(_, p)| p.len())
        .sum();
    assert_eq!(data, 1000);
    assert!(pkts.iter().any(|(h, _)| h.op == op::CREDIT_REQUEST));
    // It consumed everything: 1000 more may come, no more.
    cu.fwd_cnt = 1000;
    g.send(cu, &[]);
    let data: usize = g
        .drain()
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .map(|(_, p)| p.len())
        .sum();
    assert_eq!(data, 1000);
}

#[test]
fn guest_exceeding_our_credit_is_reset() {
    let mut g = Guest::new();
    let mut path = g.path.clone().into_os_string();
    path.push("_80");
    let listener = UnixListener::bind(&path).unwrap();
    g.send(g.hdr(op::REQUEST, 6000, 80), &[]);
    let resp = g.wait_for(|h, _| Some(*h));
    assert_eq!(resp.buf_alloc, CONN_BUF_SIZE);
    // The host accepts but never reads.
    let (_host, _) = listener.accept().unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut sent = 0usize;
    let rst = loop {
        g.send(g.hdr(op::RW, 6000, 80), &chunk);
        sent += chunk.len();
        let got = g.recv();
        if let Some((h, _)) = got.iter().find(|(h, _)| h.op == op::RST) {
            break *h;
        }
        assert!(sent < 64 << 20, "never reset");
    };
    assert_eq!((rst.src_port, rst.dst_port), (80, 6000));
    assert_eq!(g.dev.muxer().connection_count(), 0);
}

#[test]
fn reset_closes_every_connection() {
    let mut g = Guest::new();
    let (mut host, _) = g.host_connect(52);
    let mut pending = UnixStream::connect(&g.path).unwrap();
    pending
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    g.drain();
    assert_eq!(g.dev.muxer().connection_count(), 2);
    let blocker = g.dev.snapshot_blocker().unwrap();
    assert!(blocker.contains("2 open vsock connection(s)"), "{blocker}");
    g.dev.reset();
    assert_eq!(g.dev.snapshot_blocker(), None, "nothing left to lose");
    assert!(g.dev.common_mut().active.is_none());
    assert_eq!(g.dev.muxer().connection_count(), 0);
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0);
    assert_eq!(pending.read(&mut b).unwrap(), 0);
    // The listener survives a reset.
    assert!(UnixStream::connect(&g.path).is_ok());
    let path = g.path.clone();
    drop(g);
    assert!(!path.exists(), "the socket file goes with the device");
}

#[test]
fn host_connection_times_out_without_guest() {
    let mut g = Guest::new();
    let mut host = UnixStream::connect(&g.path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    // The guest never answers the REQUEST.
    let start = Instant::now();
    let mut rst = false;
    while start.elapsed() < Duration::from_secs(4) && !rst {
        rst = g.drain().iter().any(|(h, _)| h.op == op::RST);
    }
    assert!(rst, "the guest is told the request is withdrawn");
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0);
}

#[test]
fn rx_buffers_without_room_for_data_do_not_hang() {
    let mut g = Guest::new();
    let (mut host, local) = g.host_connect(52);
    // Use up every RX buffer the harness posted, without re-posting.
    g.repost = false;
    let mut cr = g.hdr(op::CREDIT_REQUEST, 52, local);
    cr.len = 0;
    while !g.rx_bufs.is_empty() {
        g.send(cr, &[]);
        g.recv();
    }
    // Only a header-sized buffer: the data cannot go; the useless buffer comes back empty
    // instead of blocking the queue (or spinning the event thread).
    host.write_all(b"more").unwrap();
    let head = g
        .rxq
        .add_chain(&[(0x10_0000, u32::try_from(HDR_SIZE).unwrap(), true)]);
    let until = Instant::now() + Duration::from_secs(5);
    let used = loop {
        g.dev.process_backend();
        let used = g.rxq.take_used();
        if !used.is_empty() {
            break used;
        }
        assert!(Instant::now() < until);
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(used, vec![(head, 0)]);
    // A real buffer gets it.
    g.repost = true;
    g.post_rx(1);
    let data = g.wait_for(|h, p| (h.op == op::RW).then(|| p.to_vec()));
    assert_eq!(data, b"more");
}
