//! Tests of one connection's state machine and flow control, over a socketpair.

use super::*;
use std::time::Duration;

const CID: u64 = 3;

fn guest_hdr(op: u16, len: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 1234,
        dst_port: 52,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc,
        fwd_cnt,
    }
}

/// A guest-initiated connection, RESPONSE already taken; returns it and the host's end.
fn established(buf_alloc: u32) -> (Connection, UnixStream) {
    let (ours, host) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c = Connection::guest_init(ours, CID, &guest_hdr(op::REQUEST, 0, buf_alloc, 0));
    let mut buf = [0u8; 64];
    let (h, _) = c.next_packet(&mut buf).unwrap();
    assert_eq!(h.op, op::RESPONSE);
    assert_eq!((h.src_port, h.dst_port, h.dst_cid), (52, 1234, CID));
    assert_eq!(h.buf_alloc, CONN_BUF_SIZE);
    (c, host)
}

fn read_exact(host: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    host.read_exact(&mut v).unwrap();
    v
}

#[test]
fn data_flows_both_ways() {
    let (mut c, mut host) = established(4096);
    c.on_guest_packet(&guest_hdr(op::RW, 5, 4096, 0), b"hello");
    assert_eq!(read_exact(&mut host, 5), b"hello");
    host.write_all(b"world").unwrap();
    assert_eq!(c.interest(), EventSet::IN | EventSet::READ_HANG_UP);
    c.on_host_event(EventSet::IN);
    assert!(c.has_pending_rx());
    // While we know data waits, epoll need not tell us again.
    assert_eq!(c.interest(), EventSet::empty());
    let mut buf = [0u8; 100];
    let (h, n) = c.next_packet(&mut buf).unwrap();
    assert_eq!((h.op, h.len, &buf[..n]), (op::RW, 5, &b"world"[..]));
    assert_eq!(h.fwd_cnt, 5, "our header reports the 5 bytes forwarded");
    // Socket drained: back to waiting for epoll.
    assert!(c.next_packet(&mut buf).is_none());
    assert_eq!(c.interest(), EventSet::IN | EventSet::READ_HANG_UP);
}

#[test]
fn never_sends_more_than_guest_credit() {
    let (mut c, mut host) = established(10);
    host.write_all(&[7u8; 100]).unwrap();
    c.on_host_event(EventSet::IN);
    let mut buf = [0u8; 4096];
    let (h, n) = c.next_packet(&mut buf).unwrap();
    assert_eq!((h.op, n), (op::RW, 10));
    // Out of credit: one CREDIT_REQUEST, no data, host socket not polled.
    let (h, _) = c.next_packet(&mut buf).unwrap();
    assert_eq!(h.op, op::CREDIT_REQUEST);
    assert!(c.next_packet(&mut buf).is_none());
    assert!(!c.has_pending_rx());
    assert_eq!(c.interest(), EventSet::empty());
    // The guest consumed 4 of the 10 bytes: 4 more may go.
    c.on_guest_packet(&guest_hdr(op::CREDIT_UPDATE, 0, 10, 4), &[]);
    assert!(c.has_pending_rx());
    let (_, n) = c.next_packet(&mut buf).unwrap();
    assert_eq!(n, 4);
    // A guest lying about its fwd_cnt gets no more than its buffer.
    c.on_guest_packet(&guest_hdr(op::CREDIT_UPDATE, 0, 10, 1000), &[]);
    assert_eq!(c.peer_credit(), 0);
    // The RX buffer also bounds a packet.
    c.on_guest_packet(&guest_hdr(op::CREDIT_UPDATE, 0, 1 << 20, 14), &[]);
    let (_, n) = c.next_packet(&mut buf[..3]).unwrap();
    assert_eq!(n, 3);
}

#[test]
fn guest_exceeding_our_credit_is_reset() {
    let (mut c, _host) = established(4096);
    // The host end never reads: the socket fills, then our buffer, then the guest
    // oversteps the credit we advertised.
    let chunk = vec![1u8; 60 * 1024];
    let mut sent = 0usize;
    while c.state() == State::Established {
        c.on_guest_packet(
            &guest_hdr(op::RW, u32::try_from(chunk.len()).unwrap(), 4096, 0),
            &chunk,
        );
        sent += chunk.len();
        assert!(c.tx_buf.len() <= CONN_BUF_SIZE as usize);
        assert!(sent < 16 << 20, "never reset");
    }
    assert_eq!(c.state(), State::Killed);
    let mut buf = [0u8; 64];
    assert_eq!(c.next_packet(&mut buf).unwrap().0.op, op::RST);
    assert_eq!(c.state(), State::Closed);
    assert!(!c.has_pending_rx());
}

#[test]
fn buffered_data_is_flushed_and_credit_updated() {
    let (mut c, mut host) = established(4096);
    let chunk = vec![2u8; 32 * 1024];
    // Fill until some data waits in our buffer.
    while c.tx_buf.is_empty() {
        c.on_guest_packet(
            &guest_hdr(op::RW, u32::try_from(chunk.len()).unwrap(), 4096, 0),
            &chunk,
        );
    }
    assert!(c.interest().contains(EventSet::OUT));
    let total = c.rx_cnt.0 as usize;
    let reader = std::thread::spawn(move || read_exact(&mut host, total));
    while !c.tx_buf.is_empty() {
        c.on_host_event(EventSet::OUT);
        std::thread::yield_now();
    }
    assert_eq!(reader.join().unwrap().len(), total);
    assert_eq!(c.fwd_cnt, c.rx_cnt);
    // The guest thinks its credit is low, and we freed everything: tell it.
    if c.advertised_credit() < CREDIT_UPDATE_LOW_WATER {
        assert!(c.has_pending_rx());
        let mut buf = [0u8; 64];
        let (h, _) = c.next_packet(&mut buf).unwrap();
        assert_eq!(h.op, op::CREDIT_UPDATE);
        assert_eq!(h.fwd_cnt, u32::try_from(total).unwrap());
    }
    assert_eq!(c.advertised_credit(), CONN_BUF_SIZE);
}

#[test]
fn credit_request_is_answered() {
    let (mut c, _host) = established(4096);
    c.on_guest_packet(&guest_hdr(op::CREDIT_REQUEST, 0, 4096, 0), &[]);
    let mut buf = [0u8; 64];
    let (h, _) = c.next_packet(&mut buf).unwrap();
    assert_eq!(h.op, op::CREDIT_UPDATE);
}

#[test]
fn host_init_waits_for_response_then_says_ok() {
    let (ours, mut host) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut c = Connection::host_init(ours, CID, 1 << 30, 52, deadline);
    let mut buf = [0u8; 64];
    let (h, _) = c.next_packet(&mut buf).unwrap();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::REQUEST, 1 << 30, 52));
    assert_eq!(c.state(), State::LocalInit);
    let mut resp = guest_hdr(op::RESPONSE, 0, 4096, 0);
    resp.src_port = 52;
    resp.dst_port = 1 << 30;
    c.on_guest_packet(&resp, &[]);
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.deadline, None);
    let mut line = [0u8; 14];
    host.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK 1073741824\n");
}

#[test]
fn host_init_refused_or_timed_out() {
    let (ours, mut host) = UnixStream::pair().unwrap();
    let mut c = Connection::host_init(ours, CID, 9, 52, Instant::now());
    let mut buf = [0u8; 64];
    c.next_packet(&mut buf).unwrap();
    c.on_guest_packet(&guest_hdr(op::RST, 0, 0, 0), &[]);
    assert_eq!(c.state(), State::Closed);
    assert_eq!(
        host.read(&mut buf).unwrap(),
        0,
        "host sees the connection closed"
    );

    // Timed out after the guest saw the REQUEST: it gets an RST.
    let (ours, _host) = UnixStream::pair().unwrap();
    let mut c = Connection::host_init(ours, CID, 9, 52, Instant::now());
    c.next_packet(&mut buf).unwrap();
    c.timed_out();
    assert_eq!(c.next_packet(&mut buf).unwrap().0.op, op::RST);
    // Timed out before: nothing to say.
    let (ours, _host) = UnixStream::pair().unwrap();
    let mut c = Connection::host_init(ours, CID, 9, 52, Instant::now());
    c.timed_out();
    assert!(c.next_packet(&mut buf).is_none());
}

#[test]
fn data_before_response_or_unexpected_ops_reset() {
    let (ours, _host) = UnixStream::pair().unwrap();
    let mut c = Connection::host_init(ours, CID, 9, 52, Instant::now());
    let mut buf = [0u8; 64];
    c.next_packet(&mut buf).unwrap();
    c.on_guest_packet(&guest_hdr(op::RW, 1, 4096, 0), b"x");
    assert_eq!(c.state(), State::Killed);

    let (mut c, _host) = established(4096);
    c.on_guest_packet(&guest_hdr(op::REQUEST, 0, 4096, 0), &[]);
    assert_eq!(c.state(), State::Killed);
}

#[test]
fn guest_shutdown_closes_with_rst() {
    let (mut c, mut host) = established(4096);
    let mut h = guest_hdr(op::SHUTDOWN, 0, 4096, 0);
    h.flags = SHUTDOWN_SEND;
    c.on_guest_packet(&h, &[]);
    // Half close: the host sees EOF, and may still send.
    let mut buf = [0u8; 64];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    assert_eq!(c.state(), State::Established);
    host.write_all(b"late").unwrap();
    c.on_host_event(EventSet::IN);
    assert_eq!(c.next_packet(&mut buf).unwrap().1, 4);
    h.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    c.on_guest_packet(&h, &[]);
    assert_eq!(c.next_packet(&mut buf).unwrap().0.op, op::RST);
    // Data after SHUTDOWN(SEND) would have been a violation.
    let (mut c, _host) = established(4096);
    h.flags = SHUTDOWN_SEND;
    c.on_guest_packet(&h, &[]);
    c.on_guest_packet(&guest_hdr(op::RW, 1, 4096, 0), b"x");
    assert_eq!(c.state(), State::Killed);
}

#[test]
fn host_eof_sends_shutdown_then_guest_close_resets() {
    let (mut c, host) = established(4096);
    drop(host);
    c.on_host_event(EventSet::IN | EventSet::HANG_UP);
    let mut buf = [0u8; 64];
    let (h, _) = c.next_packet(&mut buf).unwrap();
    assert_eq!((h.op, h.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    let mut s = guest_hdr(op::SHUTDOWN, 0, 4096, 0);
    s.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    c.on_guest_packet(&s, &[]);
    assert_eq!(c.next_packet(&mut buf).unwrap().0.op, op::RST);
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn guest_writing_to_a_closed_host_is_reset() {
    let (mut c, host) = established(4096);
    drop(host);
    c.on_guest_packet(&guest_hdr(op::RW, 1, 4096, 0), b"x");
    assert_eq!(c.state(), State::Killed);
}
