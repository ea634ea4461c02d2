//! One vsock stream connection between a guest socket and a host Unix stream: its state
//! machine (virtio 1.2 §5.10.6.4-6) and its credit-based flow control (§5.10.6.3).
//!
//! Guest → host: brig advertises [`CONN_BUF_SIZE`] bytes of buffer. Guest data is written to
//! the host socket at once; what the socket cannot take yet (EAGAIN) waits in a per-connection
//! buffer that can never exceed that advertisement, because a guest that sends more than its
//! credit has its connection reset. `fwd_cnt` counts bytes handed to the host socket; brig
//! sends CREDIT_UPDATE when the guest's idea of our free space runs low and we have freed some.
//!
//! Host → guest: brig reads the host socket only when the guest has credit
//! (`buf_alloc - (tx_cnt - fwd_cnt)` from the guest's latest header) and only into an RX
//! buffer the guest has posted, so nothing is buffered on this side at all. A guest that stops
//! reading makes brig stop reading the host socket; the host's writes then block, as they
//! would on any full socket.
//!
//! Writes to a host socket whose peer is gone fail with EPIPE rather than killing brig,
//! because the Rust runtime ignores SIGPIPE in the brig binary (and in test binaries).

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;

use super::packet::{op, Header, HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Bytes of buffer brig advertises to the guest for each connection (its buf_alloc).
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Once the guest believes it has less than this much credit left, brig tells it about
/// space it has freed since.
const CREDIT_UPDATE_LOW_WATER: u32 = 64 * 1024;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent (or about to be), waiting for the guest's RESPONSE.
    LocalInit,
    /// Data flows.
    Established,
    /// Done; an RST is still owed to the guest.
    Killed,
    /// Done; nothing more to send. The muxer drops it.
    Closed,
}

/// One connection. `local_port` is the host-side port, `peer_port` the guest's.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    state: State,
    guest_cid: u64,
    pub local_port: u32,
    pub peer_port: u32,
    /// Host-initiated connections give up on the guest at this time.
    pub deadline: Option<Instant>,
    // Control packets owed to the guest.
    send_request: bool,
    send_response: bool,
    send_shutdown: u32,
    send_credit_update: bool,
    send_credit_request: bool,
    /// A CREDIT_REQUEST went out since the guest last gave us credit.
    credit_requested: bool,
    /// Guest data the host socket has not taken yet.
    tx_buf: std::collections::VecDeque<u8>,
    /// Guest bytes handed to the host socket.
    fwd_cnt: Wrapping<u32>,
    /// Guest bytes received.
    rx_cnt: Wrapping<u32>,
    /// The fwd_cnt the guest last heard from us.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// The guest's advertised buffer and how much of our data it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes of host data sent to the guest.
    tx_cnt: Wrapping<u32>,
    /// The host socket signalled data we have not read yet.
    host_readable: bool,
    /// The host socket reached end of file.
    host_eof: bool,
    /// The write half of the host socket was shut down.
    host_write_shut: bool,
    /// The guest will send no more / receive no more.
    guest_shut_send: bool,
    guest_shut_rcv: bool,
}

impl Connection {
    fn new(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            state: State::LocalInit,
            guest_cid,
            local_port,
            peer_port,
            deadline: None,
            send_request: false,
            send_response: false,
            send_shutdown: 0,
            send_credit_update: false,
            send_credit_request: false,
            credit_requested: false,
            tx_buf: Default::default(),
            fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            host_readable: false,
            host_eof: false,
            host_write_shut: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
        }
    }

    /// A host process connected and asked for guest port `peer_port`: send REQUEST and wait
    /// for the guest until `deadline`.
    pub fn host_init(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        deadline: Instant,
    ) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, peer_port);
        c.send_request = true;
        c.deadline = Some(deadline);
        c
    }

    /// The guest's REQUEST `req` was accepted by the host socket `stream`: send RESPONSE.
    pub fn guest_init(stream: UnixStream, guest_cid: u64, req: &Header) -> Self {
        let mut c = Self::new(stream, guest_cid, req.dst_port, req.src_port);
        c.state = State::Established;
        c.send_response = true;
        c.update_peer_credit(req);
        c
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Ends the connection: the host side is closed now, the guest gets an RST.
    pub fn kill(&mut self) {
        if matches!(self.state, State::Killed | State::Closed) {
            return;
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        self.tx_buf = Default::default();
        self.state = State::Killed;
        self.deadline = None;
    }

    /// Ends the connection without telling the guest (it reset it, or never heard of it).
    fn close(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.tx_buf = Default::default();
        self.state = State::Closed;
        self.deadline = None;
    }

    /// The guest gave up or never answered in time.
    pub fn timed_out(&mut self) {
        if self.send_request {
            // The guest never saw the REQUEST: nothing to reset on its side.
            self.close();
        } else {
            self.kill();
        }
    }

    /// The credit the guest was last told it has: what it last heard minus what it sent
    /// since. Never above what our buffer can take, since fwd_cnt only counts what left it.
    fn advertised_credit(&self) -> u32 {
        CONN_BUF_SIZE.saturating_sub((self.rx_cnt - self.last_fwd_cnt_sent).0)
    }

    /// Bytes we may still send the guest.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        // A guest claiming to have consumed more than we sent gets no extra credit.
        self.peer_buf_alloc
            .saturating_sub(in_flight.min(self.peer_buf_alloc))
    }

    fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Handles one packet the guest sent on this connection (type and op already checked).
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if matches!(self.state, State::Killed | State::Closed) {
            return;
        }
        if hdr.op == op::RST {
            self.close();
            return;
        }
        self.update_peer_credit(hdr);
        match (self.state, hdr.op) {
            (State::LocalInit, op::RESPONSE) if !self.send_request => {
                // Tell the host process which port it got; a fresh socket takes these few
                // bytes at once, anything else means it is gone.
                self.deadline = None;
                let line = format!("OK {}\n", self.local_port);
                match (&self.stream).write(line.as_bytes()) {
                    Ok(n) if n == line.len() => self.state = State::Established,
                    _ => self.kill(),
                }
            }
            (State::Established, op::RW) => self.guest_data(payload),
            (State::Established, op::CREDIT_UPDATE) => {}
            (State::Established, op::CREDIT_REQUEST) => self.send_credit_update = true,
            (State::Established, op::SHUTDOWN) => {
                self.guest_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.guest_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                self.flush_tx();
            }
            // REQUEST on a live connection, RESPONSE when none was asked for, anything before
            // the RESPONSE: the guest is confused or hostile.
            _ => self.kill(),
        }
        self.check_finished();
        self.refresh();
    }

    fn guest_data(&mut self, payload: &[u8]) {
        let within_credit = u32::try_from(payload.len())
            .ok()
            .filter(|&len| len <= self.advertised_credit() && !self.guest_shut_send);
        let Some(len) = within_credit else {
            tracing::warn!(
                "vsock: guest port {} broke flow control; resetting",
                self.peer_port
            );
            self.kill();
            return;
        };
        self.rx_cnt += Wrapping(len);
        self.tx_buf.extend(payload);
        self.flush_tx();
    }

    /// Writes buffered guest data to the host socket until it is empty or would block.
    fn flush_tx(&mut self) {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match (&self.stream).write(front) {
                Ok(0) => {
                    self.kill();
                    return;
                }
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    // n <= tx_buf's length, which the credit check bounds to CONN_BUF_SIZE.
                    let Ok(n) = u32::try_from(n) else {
                        self.kill();
                        return;
                    };
                    self.fwd_cnt += Wrapping(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    // EPIPE / ECONNRESET: the host process is gone.
                    self.kill();
                    return;
                }
            }
        }
        if self.tx_buf.is_empty() && self.guest_shut_send && !self.host_write_shut {
            let _ = self.stream.shutdown(Shutdown::Write);
            self.host_write_shut = true;
        }
        if self.advertised_credit() < CREDIT_UPDATE_LOW_WATER
            && self.fwd_cnt != self.last_fwd_cnt_sent
        {
            self.send_credit_update = true;
        }
    }

    /// Both directions are over: close, owing the guest an RST (§5.10.6.6: the side that
    /// sees both shut down sends RST).
    fn check_finished(&mut self) {
        if self.state != State::Established || !self.tx_buf.is_empty() {
            return;
        }
        if self.guest_shut_send && (self.host_eof || self.guest_shut_rcv) {
            self.kill();
        }
    }

    /// Asks the guest for credit once when host data waits and it has none left.
    fn refresh(&mut self) {
        if self.wants_host_data()
            && self.host_readable
            && self.peer_credit() == 0
            && !self.credit_requested
        {
            self.send_credit_request = true;
            self.credit_requested = true;
        }
    }

    /// The host socket is ready (`events` from epoll).
    pub fn on_host_event(&mut self, events: EventSet) {
        if matches!(self.state, State::Killed | State::Closed) {
            return;
        }
        if events.contains(EventSet::ERROR) {
            self.kill();
            return;
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP) {
            self.host_readable = true;
        }
        // On a hang-up, writing tells whether the host side is gone altogether (EPIPE).
        if events.intersects(EventSet::OUT | EventSet::HANG_UP) {
            self.flush_tx();
            self.check_finished();
        }
        if events.contains(EventSet::HANG_UP) && !self.wants_host_data() {
            self.kill();
        }
        self.refresh();
    }

    fn wants_host_data(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.guest_shut_rcv
    }

    /// The epoll events to wait for on the host socket; empty = not registered.
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.state == State::Established {
            if self.wants_host_data() && !self.host_readable && self.peer_credit() > 0 {
                set |= EventSet::IN | EventSet::READ_HANG_UP;
            }
            if !self.tx_buf.is_empty() {
                set |= EventSet::OUT;
            }
        }
        set
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_pending_rx(&self) -> bool {
        match self.state {
            State::Killed => true,
            State::Closed => false,
            State::LocalInit => self.send_request,
            State::Established => {
                self.send_response
                    || self.send_shutdown != 0
                    || self.send_credit_update
                    || self.send_credit_request
                    || (self.wants_host_data() && self.host_readable && self.peer_credit() > 0)
            }
        }
    }

    fn header(&self, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest, its payload (if any) read into `buf`, which the caller
    /// sizes to the RX buffer the guest posted. None: nothing to send right now.
    pub fn next_packet(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        let pkt = self.next_packet_inner(buf);
        if pkt.is_some() {
            // Every header carries our fwd_cnt.
            self.last_fwd_cnt_sent = self.fwd_cnt;
            self.send_credit_update = false;
        }
        self.refresh();
        pkt
    }

    fn next_packet_inner(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        match self.state {
            State::Closed => return None,
            State::Killed => {
                self.state = State::Closed;
                return Some((self.header(op::RST), 0));
            }
            State::LocalInit => {
                if !self.send_request {
                    return None;
                }
                self.send_request = false;
                return Some((self.header(op::REQUEST), 0));
            }
            State::Established => {}
        }
        if self.send_response {
            self.send_response = false;
            return Some((self.header(op::RESPONSE), 0));
        }
        if self.wants_host_data() && self.host_readable {
            if let Some(pkt) = self.read_host(buf) {
                return Some(pkt);
            }
            if self.state == State::Killed {
                return self.next_packet_inner(buf);
            }
        }
        if self.send_shutdown != 0 {
            let mut h = self.header(op::SHUTDOWN);
            h.flags = self.send_shutdown;
            self.send_shutdown = 0;
            return Some((h, 0));
        }
        if self.send_credit_update {
            return Some((self.header(op::CREDIT_UPDATE), 0));
        }
        if self.send_credit_request {
            self.send_credit_request = false;
            return Some((self.header(op::CREDIT_REQUEST), 0));
        }
        None
    }

    /// Reads host data for one RW packet, within the guest's credit.
    fn read_host(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        let credit = self.peer_credit() as usize;
        let n = buf.len().min(credit).min(MAX_PAYLOAD);
        if n == 0 {
            return None;
        }
        loop {
            match (&self.stream).read(&mut buf[..n]) {
                Ok(0) => {
                    self.host_readable = false;
                    self.host_eof = true;
                    self.send_shutdown |= SHUTDOWN_SEND;
                    self.check_finished();
                    return None;
                }
                Ok(got) => {
                    // got <= the guest's credit, a u32.
                    let Ok(len) = u32::try_from(got) else {
                        self.kill();
                        return None;
                    };
                    self.tx_cnt += Wrapping(len);
                    let mut h = self.header(op::RW);
                    h.len = len;
                    return Some((h, got));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return None;
                }
                Err(_) => {
                    self.kill();
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
