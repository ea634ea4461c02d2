//! The UDP side of the proxy: one thread per published port. Each client address is a flow
//! with its own socket connected to the guest port, so that the guest's replies can be told
//! apart and sent back to the right client from the published socket.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};

use super::{poll, Limits};

/// The largest datagram relayed (UDP's own limit); a longer one is truncated by the kernel.
const DATAGRAM_MAX: usize = 65535;
/// Datagrams taken from one socket per wake-up, so that one busy side cannot starve others.
const BURST: usize = 64;

/// One client's flow.
struct Flow {
    /// Connected to the guest port.
    socket: UdpSocket,
    /// The last datagram either way.
    last: Instant,
}

/// Relays between `socket`'s clients and `guest` until the stop pipe says stop.
pub(super) fn forward(socket: &UdpSocket, guest: SocketAddr, stop: &OwnedFd, limits: Limits) {
    if let Err(e) = crate::vmm::seccomp::confine(crate::vmm::seccomp::Thread::Proxy) {
        tracing::error!("port proxy: {e}; not forwarding");
        return;
    }
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let now = Instant::now();
        flows.retain(|_, f| now.duration_since(f.last) < limits.udp_idle);
        let timeout = flows
            .values()
            .map(|f| (f.last + limits.udp_idle).saturating_duration_since(now))
            .min();
        let clients: Vec<SocketAddr> = flows.keys().copied().collect();
        let mut fds = vec![
            PollFd::new(stop, PollFlags::IN),
            PollFd::new(socket, PollFlags::IN),
        ];
        fds.extend(
            clients
                .iter()
                .map(|c| PollFd::new(&flows[c].socket, PollFlags::IN)),
        );
        if let Err(e) = poll(&mut fds, timeout) {
            tracing::warn!("port proxy: polling UDP {guest}: {e}");
            return;
        }
        if !fds[0].revents().is_empty() {
            return;
        }
        let from_clients = !fds[1].revents().is_empty();
        let replying: Vec<SocketAddr> = clients
            .iter()
            .zip(&fds[2..])
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(c, _)| *c)
            .collect();
        drop(fds);
        if from_clients {
            to_guest(socket, guest, &mut flows, &mut buf, limits.max_udp);
        }
        for client in replying {
            to_client(socket, client, &mut flows, &mut buf);
        }
    }
}

/// Relays the datagrams waiting on the published socket, each on its client's flow.
fn to_guest(
    socket: &UdpSocket,
    guest: SocketAddr,
    flows: &mut HashMap<SocketAddr, Flow>,
    buf: &mut [u8],
    max_flows: usize,
) {
    for _ in 0..BURST {
        let (n, client) = match socket.recv_from(buf) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if !flows.contains_key(&client) {
            if flows.len() >= max_flows {
                tracing::debug!("port proxy: {max_flows} UDP flows to {guest}, dropping");
                continue;
            }
            match open_flow(guest) {
                Ok(flow) => flows.insert(client, flow),
                Err(e) => {
                    tracing::debug!("port proxy: a UDP flow to {guest}: {e}");
                    continue;
                }
            };
        }
        let flow = flows.get_mut(&client).expect("the flow was just made");
        flow.last = Instant::now();
        // A datagram the guest side cannot take now is dropped, as the network would.
        let _ = flow.socket.send(&buf[..n]);
    }
}

/// Relays the guest's datagrams on `client`'s flow back to it. An error other than "none
/// left" (an ICMP port unreachable from the guest) ends the flow.
fn to_client(
    socket: &UdpSocket,
    client: SocketAddr,
    flows: &mut HashMap<SocketAddr, Flow>,
    buf: &mut [u8],
) {
    let Some(flow) = flows.get_mut(&client) else {
        return;
    };
    for _ in 0..BURST {
        match flow.socket.recv(buf) {
            Ok(n) => {
                flow.last = Instant::now();
                let _ = socket.send_to(&buf[..n], client);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                flows.remove(&client);
                return;
            }
        }
    }
}

/// A nonblocking socket on an ephemeral port, connected to `guest`.
fn open_flow(guest: SocketAddr) -> io::Result<Flow> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(guest)?;
    socket.set_nonblocking(true)?;
    Ok(Flow {
        socket,
        last: Instant::now(),
    })
}
