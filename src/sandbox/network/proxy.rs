//! docker's userland proxy, run in the sandbox's (long-lived) VMM process: it listens on the
//! published host ports and forwards to the guest's address, as docker-proxy does.
//!
//! [`PortProxy::bind`] binds every listener up front, so that a port already in use fails the
//! sandbox's start with docker's message and ephemeral ports are known (and recorded) before
//! the guest runs; [`PortProxy::start`] then forwards until the [`RunningProxy`] is dropped.
//!
//! - TCP ([`tcp`]): one thread polls every TCP listener; each accepted connection gets a
//!   thread that connects to the guest (with [`CONNECT_TIMEOUT`]) and copies client → guest
//!   while a second copies guest → client. EOF on one side is passed on as a half-close
//!   (shutdown of the other side's write); an error on either side ends that connection
//!   only. At most [`MAX_TCP_CONNECTIONS`] per published port: further ones are accepted and
//!   closed at once, so that a flood costs threads only up to that cap.
//! - UDP ([`udp`]): one thread per published port. Each client address gets a socket
//!   connected to the guest port; the guest's replies go back to the client from the
//!   published socket. A flow idle for [`UDP_IDLE_TIMEOUT`] is forgotten; at most
//!   [`MAX_UDP_FLOWS`] per port, datagrams from further clients are dropped.
//!
//! Blocking threads were chosen over an event loop: the copy loops stay a few lines each and
//! half-close falls out of them. Stopping is prompt all the same: every polling thread also
//! polls a pipe whose write end the [`RunningProxy`] closes when dropped, and the
//! connections still copying are shut down, which ends their blocking reads.

mod tcp;
mod udp;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::event::{PollFd, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use super::ports::{BoundPort, PortMapping, Proto};

/// How long connecting to the guest may take before the client's connection is closed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a UDP flow lives without a datagram either way (docker-proxy's
/// `UDPConnTrackTimeout`).
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Concurrent TCP connections per published port; more are closed as soon as accepted.
pub const MAX_TCP_CONNECTIONS: usize = 1024;
/// Concurrent UDP flows (client addresses) per published port; datagrams from more clients
/// are dropped.
pub const MAX_UDP_FLOWS: usize = 1024;
/// The listen backlog asked for; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;
/// The stack of a connection's copy threads: a read/write loop with its buffer on the heap.
const COPY_THREAD_STACK: usize = 128 << 10;

/// Publishing a port failed. One line, docker's where docker has one.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The host port (every port of a host port range) is taken.
    #[error("Bind for {addr} failed: port is already allocated")]
    InUse { addr: String },
    /// Listening failed otherwise: an address this host lacks, a privileged port.
    #[error("Error starting userland proxy: listen {net} {addr}: {op}: {source}")]
    Listen {
        /// Go's network name, as docker shows it: `tcp4`, `udp6`.
        net: String,
        addr: SocketAddr,
        /// The step that failed: `socket`, `bind`, `listen`.
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The proxy's threads or its stop pipe could not be made.
    #[error("starting the port proxy: {0}")]
    Start(#[source] io::Error),
}

/// The tunables, constants outside tests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    connect_timeout: Duration,
    udp_idle: Duration,
    max_tcp: usize,
    max_udp: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout: CONNECT_TIMEOUT,
            udp_idle: UDP_IDLE_TIMEOUT,
            max_tcp: MAX_TCP_CONNECTIONS,
            max_udp: MAX_UDP_FLOWS,
        }
    }
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Every published port bound, not yet forwarding.
#[derive(Debug)]
pub struct PortProxy {
    sockets: Vec<(BoundPort, Socket)>,
    limits: Limits,
}

impl PortProxy {
    /// Binds a listener (TCP) or socket (UDP) for each mapping, in order. Nothing stays bound
    /// when one fails.
    pub fn bind(mappings: &[PortMapping]) -> Result<PortProxy, ProxyError> {
        let sockets = mappings
            .iter()
            .map(bind_mapping)
            .collect::<Result<_, _>>()?;
        Ok(PortProxy {
            sockets,
            limits: Limits::default(),
        })
    }

    /// The published ports with the host ports actually bound (ephemeral ones resolved).
    pub fn bound(&self) -> Vec<BoundPort> {
        self.sockets.iter().map(|(b, _)| *b).collect()
    }

    /// Starts forwarding to `guest`, the sandbox's address; the guest ports are the
    /// mappings'.
    pub fn start(self, guest: Ipv4Addr) -> Result<RunningProxy, ProxyError> {
        let bound = self.bound();
        let (stop_read, stop_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| ProxyError::Start(e.into()))?;
        let stop_read = Arc::new(stop_read);
        let mut running = RunningProxy {
            bound,
            stop: Some(stop_write),
            connections: Arc::new(tcp::Connections::default()),
            threads: Vec::new(),
        };
        let mut tcp = Vec::new();
        for (port, socket) in self.sockets {
            let to = SocketAddr::new(IpAddr::V4(guest), port.guest_port);
            match socket {
                Socket::Tcp(listener) => tcp.push((listener, to)),
                Socket::Udp(socket) => {
                    let stop = Arc::clone(&stop_read);
                    let limits = self.limits;
                    let thread = std::thread::Builder::new()
                        .name(format!("proxy-udp-{}", port.host_port))
                        .spawn(move || udp::forward(&socket, to, &stop, limits))
                        .map_err(ProxyError::Start)?;
                    running.threads.push(thread);
                }
            }
        }
        if !tcp.is_empty() {
            let acceptor = tcp::Acceptor {
                listeners: tcp,
                stop: stop_read,
                connections: Arc::clone(&running.connections),
                limits: self.limits,
            };
            let thread = std::thread::Builder::new()
                .name("proxy-accept".into())
                .spawn(move || acceptor.run())
                .map_err(ProxyError::Start)?;
            running.threads.push(thread);
        }
        Ok(running)
    }
}

/// The proxy forwarding; dropping it stops it: the listeners are closed by the time drop
/// returns and every connection still open is shut down.
#[derive(Debug)]
pub struct RunningProxy {
    bound: Vec<BoundPort>,
    /// The stop pipe's write end; closing it wakes every polling thread (POLLHUP).
    stop: Option<OwnedFd>,
    connections: Arc<tcp::Connections>,
    threads: Vec<JoinHandle<()>>,
}

impl RunningProxy {
    /// The published ports, as [`PortProxy::bound`] gave them.
    pub fn bound(&self) -> &[BoundPort] {
        &self.bound
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        drop(self.stop.take());
        self.connections.stop();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Binds `m`'s host port, the first free one of its range if it has one.
fn bind_mapping(m: &PortMapping) -> Result<(BoundPort, Socket), ProxyError> {
    let last = m.host_port_end.unwrap_or(m.host_port).max(m.host_port);
    for port in m.host_port..=last {
        let addr = SocketAddr::new(m.host_ip, port);
        let fd = match listen(addr, m.proto) {
            Ok(fd) => fd,
            Err((_, Errno::ADDRINUSE)) => continue,
            Err((op, e)) => return Err(listen_error(addr, m.proto, op, e.into())),
        };
        let socket = match m.proto {
            Proto::Tcp => Socket::Tcp(TcpListener::from(fd)),
            Proto::Udp => Socket::Udp(UdpSocket::from(fd)),
        };
        let local = match &socket {
            Socket::Tcp(l) => l.local_addr(),
            Socket::Udp(s) => s.local_addr(),
        }
        .map_err(|e| listen_error(addr, m.proto, "getsockname", e))?;
        let bound = BoundPort {
            host_ip: m.host_ip,
            host_port: local.port(),
            guest_port: m.guest_port,
            proto: m.proto,
        };
        return Ok((bound, socket));
    }
    let ports = if last == m.host_port {
        m.host_port.to_string()
    } else {
        format!("{}-{last}", m.host_port)
    };
    let addr = match m.host_ip {
        IpAddr::V4(ip) => format!("{ip}:{ports}"),
        IpAddr::V6(ip) => format!("[{ip}]:{ports}"),
    };
    Err(ProxyError::InUse { addr })
}

fn listen_error(addr: SocketAddr, proto: Proto, op: &'static str, e: io::Error) -> ProxyError {
    let family = if addr.is_ipv4() { 4 } else { 6 };
    ProxyError::Listen {
        net: format!("{proto}{family}"),
        addr,
        op,
        source: e,
    }
}

/// A nonblocking socket bound to `addr`, listening if TCP. TCP sets SO_REUSEADDR (as
/// docker-proxy does, so that a port with connections in TIME_WAIT can be published again);
/// IPv6 sets IPV6_V6ONLY, so that `[::]` and `0.0.0.0` publish the same port side by side.
fn listen(addr: SocketAddr, proto: Proto) -> Result<OwnedFd, (&'static str, Errno)> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let kind = match proto {
        Proto::Tcp => SocketType::STREAM,
        Proto::Udp => SocketType::DGRAM,
    };
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let fd = rustix::net::socket_with(family, kind, flags, None).map_err(|e| ("socket", e))?;
    let setsockopt = |e| ("setsockopt", e);
    if addr.is_ipv6() {
        rustix::net::sockopt::set_ipv6_v6only(&fd, true).map_err(setsockopt)?;
    }
    if proto == Proto::Tcp {
        rustix::net::sockopt::set_socket_reuseaddr(&fd, true).map_err(setsockopt)?;
    }
    rustix::net::bind(&fd, &addr).map_err(|e| ("bind", e))?;
    if proto == Proto::Tcp {
        rustix::net::listen(&fd, BACKLOG).map_err(|e| ("listen", e))?;
    }
    Ok(fd)
}

/// Waits until one of `fds` is ready or `timeout` passes; an interrupted wait is a wake-up
/// like any other.
fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<()> {
    let timeout = timeout.map(|t| {
        Timespec::try_from(t).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        })
    });
    match rustix::event::poll(fds, timeout.as_ref()) {
        Ok(_) | Err(Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
