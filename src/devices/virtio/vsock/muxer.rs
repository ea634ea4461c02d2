//! The host side of virtio-vsock: a Unix-socket backend that multiplexes every guest
//! connection over one listening socket and per-port forwarding sockets (virtio 1.2 §5.10.6,
//! Firecracker's hybrid-vsock convention).
//!
//! All fds (listener, connection streams, a timer) sit in one private epoll set whose fd the
//! device registers with the event manager; [`Muxer::process_events`] drains it. Everything is
//! nonblocking, and everything a guest can make the muxer hold is bounded: at most
//! [`MAX_CONNECTIONS`] connections (host-initiated ones still sending their `CONNECT` line
//! included), at most [`MAX_PENDING_RST`] queued RSTs for packets to unknown connections (more
//! are dropped), and per-connection buffers bounded by the credit brig advertises.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::EventSet;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent};

use super::csm::{Connection, State};
use super::packet::{op, Header, HOST_CID, TYPE_STREAM};
use super::unix::{connect_nonblocking, Timer};

/// Most connections (including host connections still sending `CONNECT`) per VM.
pub const MAX_CONNECTIONS: usize = 256;
/// Most RSTs queued for packets that match no connection.
pub const MAX_PENDING_RST: usize = 256;
/// How long a host connection may take to send `CONNECT <port>\n`, and the guest to accept it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// First host port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const FIRST_TOKEN: u64 = 2;

/// Setting up the backend failed.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The VM's vsock socket could not be created.
    #[error("cannot listen on vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The epoll set or timer could not be set up.
    #[error("cannot set up the vsock event loop: {0}")]
    Setup(#[source] std::io::Error),
}

/// A connection is known by (host port, guest port).
type Key = (u32, u32);

#[derive(Debug)]
enum Target {
    /// A host connection that has not finished its `CONNECT` line.
    Pending,
    Conn(Key),
}

#[derive(Debug)]
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

#[derive(Debug)]
struct Entry {
    conn: Connection,
    token: u64,
    registered: EventSet,
    in_rxq: bool,
}

/// The backend of one VM's vsock device.
#[derive(Debug)]
pub struct Muxer {
    epoll: Epoll,
    listener: UnixListener,
    uds_path: PathBuf,
    guest_cid: u64,
    timer: Timer,
    targets: HashMap<u64, Target>,
    next_token: u64,
    pending: HashMap<u64, PendingHost>,
    conns: HashMap<Key, Entry>,
    /// Connections with something for the guest, each at most once.
    rxq: VecDeque<Key>,
    /// RSTs for packets that matched no connection.
    rst_queue: VecDeque<Header>,
    next_local_port: u32,
}

impl Muxer {
    /// Listens on `uds_path` (which must not exist) for host-initiated connections.
    pub fn new(uds_path: &Path, guest_cid: u64) -> Result<Self, MuxerError> {
        let bind_err = |source: std::io::Error| MuxerError::Bind {
            path: uds_path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let epoll = Epoll::new().map_err(MuxerError::Setup)?;
        let timer = Timer::new().map_err(MuxerError::Setup)?;
        let muxer = Self {
            epoll,
            listener,
            uds_path: uds_path.to_owned(),
            guest_cid,
            timer,
            targets: HashMap::new(),
            next_token: FIRST_TOKEN,
            pending: HashMap::new(),
            conns: HashMap::new(),
            rxq: VecDeque::new(),
            rst_queue: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
        };
        muxer
            .ctl(
                ControlOperation::Add,
                muxer.listener.as_raw_fd(),
                TOKEN_LISTENER,
                EventSet::IN,
            )
            .map_err(MuxerError::Setup)?;
        muxer
            .ctl(
                ControlOperation::Add,
                muxer.timer.as_raw_fd(),
                TOKEN_TIMER,
                EventSet::IN,
            )
            .map_err(MuxerError::Setup)?;
        Ok(muxer)
    }

    fn ctl(
        &self,
        op: ControlOperation,
        fd: RawFd,
        token: u64,
        set: EventSet,
    ) -> std::io::Result<()> {
        self.epoll.ctl(op, fd, EpollEvent::new(set, token))
    }

    /// Number of live connections (tests, diagnostics).
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.pending.len()
    }

    /// Whether a packet waits for the guest.
    pub fn has_pending_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rxq.is_empty()
    }

    /// Handles whatever the backend's epoll set reports; call when its fd is readable.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        // Bounded, so one busy VM cannot starve the rest of the event loop.
        for _ in 0..16 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("vsock: epoll_wait failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                self.handle_event(ev.data(), ev.event_set());
            }
            if n < events.len() {
                break;
            }
        }
    }

    fn handle_event(&mut self, token: u64, set: EventSet) {
        match token {
            TOKEN_LISTENER => self.accept_all(),
            TOKEN_TIMER => self.sweep_timeouts(),
            _ => match self.targets.get(&token) {
                Some(Target::Pending) => self.read_connect_line(token),
                Some(Target::Conn(key)) => {
                    let key = *key;
                    if let Some(e) = self.conns.get_mut(&key) {
                        e.conn.on_host_event(set);
                    }
                    self.after_update(key);
                }
                None => {}
            },
        }
    }

    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("vsock: accept failed: {e}");
                    return;
                }
            };
            if self.connection_count() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                tracing::warn!("vsock: too many connections; refusing a host connection");
                continue;
            }
            let token = self.new_token();
            if self
                .ctl(
                    ControlOperation::Add,
                    stream.as_raw_fd(),
                    token,
                    EventSet::IN,
                )
                .is_err()
            {
                continue;
            }
            self.targets.insert(token, Target::Pending);
            let deadline = Instant::now() + CONNECT_TIMEOUT;
            let line = Vec::with_capacity(MAX_CONNECT_LINE);
            self.pending.insert(
                token,
                PendingHost {
                    stream,
                    line,
                    deadline,
                },
            );
            self.rearm_timer();
        }
    }

    fn drop_pending(&mut self, token: u64) -> Option<PendingHost> {
        let p = self.pending.remove(&token)?;
        let _ = self.ctl(
            ControlOperation::Delete,
            p.stream.as_raw_fd(),
            token,
            EventSet::empty(),
        );
        self.targets.remove(&token);
        Some(p)
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time, so that nothing after it (the
    /// host's first data) is consumed.
    fn read_connect_line(&mut self, token: u64) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match (&p.stream).read(&mut byte) {
                Ok(0) => break None,
                Ok(_) if byte[0] == b'\n' => break parse_connect(&p.line),
                Ok(_) if p.line.len() < MAX_CONNECT_LINE => p.line.push(byte[0]),
                Ok(_) => break None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break None,
            }
        };
        let Some(p) = self.drop_pending(token) else {
            return;
        };
        let Some(port) = port else {
            tracing::debug!("vsock: bad CONNECT line from host; closing");
            return;
        };
        let local_port = self.allocate_local_port(port);
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let conn = Connection::host_init(p.stream, self.guest_cid, local_port, port, deadline);
        self.insert(conn);
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    fn insert(&mut self, conn: Connection) {
        let key = (conn.local_port, conn.peer_port);
        let token = self.new_token();
        self.targets.insert(token, Target::Conn(key));
        let entry = Entry {
            conn,
            token,
            registered: EventSet::empty(),
            in_rxq: false,
        };
        self.conns.insert(key, entry);
        self.after_update(key);
        self.rearm_timer();
    }

    fn remove(&mut self, key: Key) {
        let Some(e) = self.conns.remove(&key) else {
            return;
        };
        if !e.registered.is_empty() {
            let fd = e.conn.stream().as_raw_fd();
            let _ = self.ctl(ControlOperation::Delete, fd, e.token, EventSet::empty());
        }
        self.targets.remove(&e.token);
    }

    /// Brings epoll interest and the RX queue in line with a connection's new state.
    fn after_update(&mut self, key: Key) {
        let Some(e) = self.conns.get_mut(&key) else {
            return;
        };
        if e.conn.state() == State::Closed {
            self.remove(key);
            return;
        }
        let want = e.conn.interest();
        if want != e.registered {
            let fd = e.conn.stream().as_raw_fd();
            let op = match (e.registered.is_empty(), want.is_empty()) {
                (true, _) => ControlOperation::Add,
                (false, true) => ControlOperation::Delete,
                (false, false) => ControlOperation::Modify,
            };
            let event = EpollEvent::new(want, e.token);
            match self.epoll.ctl(op, fd, event) {
                Ok(()) => e.registered = want,
                Err(err) => {
                    tracing::warn!("vsock: epoll_ctl failed: {err}; resetting connection");
                    e.conn.kill();
                }
            }
        }
        if e.conn.has_pending_rx() && !e.in_rxq {
            e.in_rxq = true;
            self.rxq.push_back(key);
        }
    }

    fn sweep_timeouts(&mut self) {
        // rearm_timer below resets the timer in any case.
        self.timer.drain();
        let now = Instant::now();
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            tracing::debug!("vsock: host connection sent no CONNECT line in time");
            self.drop_pending(token);
        }
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, e)| e.conn.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            tracing::debug!(
                "vsock: guest did not accept host connection to port {}",
                key.1
            );
            if let Some(e) = self.conns.get_mut(&key) {
                e.conn.timed_out();
            }
            self.after_update(key);
        }
        self.rearm_timer();
    }

    fn rearm_timer(&mut self) {
        let next = self
            .pending
            .values()
            .map(|p| p.deadline)
            .chain(self.conns.values().filter_map(|e| e.conn.deadline))
            .min();
        let result = match next {
            Some(d) => {
                let wait = d.saturating_duration_since(Instant::now());
                self.timer.arm(wait.max(Duration::from_millis(1)))
            }
            None => self.timer.disarm(),
        };
        if let Err(e) = result {
            tracing::error!("vsock: cannot arm the connection timer: {e}");
        }
    }

    /// Queues an RST answering `hdr` (a packet matching no connection, or a bad one).
    pub fn reject(&mut self, hdr: &Header) {
        if hdr.op == op::RST || self.rst_queue.len() >= MAX_PENDING_RST {
            return;
        }
        self.rst_queue.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        });
    }

    /// Handles a packet from the guest (addressing, length, type and op already checked).
    pub fn send_pkt(&mut self, hdr: &Header, payload: &[u8]) {
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(e) = self.conns.get_mut(&key) {
            e.conn.on_guest_packet(hdr, payload);
            self.after_update(key);
        } else if hdr.op == op::REQUEST {
            self.guest_connect(hdr);
        } else {
            self.reject(hdr);
        }
    }

    /// The guest connects to host port P: forward to the Unix socket `<uds_path>_P`.
    fn guest_connect(&mut self, hdr: &Header) {
        if self.connection_count() >= MAX_CONNECTIONS {
            tracing::warn!("vsock: too many connections; refusing guest connection");
            self.reject(hdr);
            return;
        }
        let mut path = self.uds_path.as_os_str().to_owned();
        path.push(format!("_{}", hdr.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => self.insert(Connection::guest_init(stream, self.guest_cid, hdr)),
            Err(e) => {
                tracing::debug!(
                    "vsock: guest connection to port {} refused: {e}",
                    hdr.dst_port
                );
                self.reject(hdr);
            }
        }
    }

    /// The next packet for the guest, payload read into `buf` (sized to the guest's RX buffer).
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(h) = self.rst_queue.pop_front() {
            return Some((h, 0));
        }
        // Each connection gets one turn: one that has something pending but cannot produce
        // it now (say, data but an RX buffer with no room past the header) must not spin.
        for _ in 0..self.rxq.len() {
            let Some(key) = self.rxq.pop_front() else {
                break;
            };
            let Some(e) = self.conns.get_mut(&key) else {
                continue;
            };
            e.in_rxq = false;
            let pkt = e.conn.next_packet(buf);
            self.after_update(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    /// Device reset: every connection closed at once, no packet owed to the guest.
    pub fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        let tokens: Vec<u64> = self.pending.keys().copied().collect();
        for token in tokens {
            self.drop_pending(token);
        }
        self.rxq.clear();
        self.rst_queue.clear();
        self.rearm_timer();
    }
}

impl AsRawFd for Muxer {
    /// The epoll fd to watch for readability.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // The socket file is ours; connections close with their streams.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// Parses `CONNECT <port>` (case-insensitive keyword, as Firecracker accepts).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    let keyword = words.next()?;
    let port = words.next()?.parse().ok()?;
    (keyword.eq_ignore_ascii_case("connect") && words.next().is_none()).then_some(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"connect  1024 "), Some(1024));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 5 6"), None);
        assert_eq!(parse_connect(b"HELLO 5"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(&[0xff, b' ', b'1']), None);
    }
}
