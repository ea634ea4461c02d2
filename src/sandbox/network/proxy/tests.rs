//! Tests of the proxy with real local sockets: servers on 127.0.0.1 play the guest.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, Shutdown, TcpStream};
use std::sync::Barrier;
use std::time::Instant;

use super::*;
use crate::sandbox::network::ports::tests::map as mapping;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(10);

/// A TCP "guest" on 127.0.0.1: each connection is read to EOF, then what came is sent back
/// and the connection closed. Replying only after EOF shows the client's half-close got
/// through.
fn tcp_guest() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut got = Vec::new();
                if conn.read_to_end(&mut got).is_ok() {
                    let _ = conn.write_all(&got);
                }
            });
        }
    });
    port
}

/// A UDP "guest" on 127.0.0.1 answering each datagram with `<sender>|<datagram>`.
fn udp_guest() -> u16 {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = socket.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let reply = format!("{peer}|{}", String::from_utf8_lossy(&buf[..n]));
            let _ = socket.send_to(reply.as_bytes(), peer);
        }
    });
    port
}

/// A proxy from an ephemeral port on 127.0.0.1 to the guest port, and that host port.
fn proxy_to(guest_port: u16, proto: Proto, limits: Limits) -> (RunningProxy, u16) {
    let mut proxy = PortProxy::bind(&[mapping(LOCAL, 0, guest_port, proto)]).unwrap();
    proxy.limits = limits;
    let port = proxy.bound()[0].host_port;
    (proxy.start(Ipv4Addr::LOCALHOST).unwrap(), port)
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Sends `data`, half-closes, and returns all that comes back.
fn round_trip(port: u16, data: &[u8]) -> Vec<u8> {
    let mut s = connect(port);
    let mut writer = s.try_clone().unwrap();
    let data = data.to_vec();
    let sending = std::thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    sending.join().unwrap();
    got
}

/// Like [`round_trip`] for a small `data`, with errors returned.
fn try_round_trip(port: u16, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(WAIT))?;
    s.write_all(data)?;
    s.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    Ok(got)
}

/// Whether the peer closed `s` (EOF or reset) within [`WAIT`].
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) => matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        Ok(_) => false,
    }
}

#[test]
fn tcp_round_trip_passes_half_close_both_ways() {
    let (proxy, port) = proxy_to(tcp_guest(), Proto::Tcp, Limits::default());
    assert_ne!(port, 0);
    assert_eq!(proxy.bound()[0].host_port, port);
    // The guest answers only after our EOF reached it; its EOF then ends our read.
    assert_eq!(round_trip(port, b"ping"), b"ping");
    assert_eq!(round_trip(port, b""), b"");
}

#[test]
fn tcp_large_transfer_arrives_intact() {
    let (_proxy, port) = proxy_to(tcp_guest(), Proto::Tcp, Limits::default());
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let got = round_trip(port, &data);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the 4 MiB came back altered");
}

#[test]
fn tcp_many_concurrent_connections_stay_apart() {
    let (_proxy, port) = proxy_to(tcp_guest(), Proto::Tcp, Limits::default());
    let clients = 64;
    let barrier = Arc::new(Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let payload = format!("client {i} ").repeat(1000 + i);
                barrier.wait();
                assert_eq!(round_trip(port, payload.as_bytes()), payload.as_bytes());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn tcp_connections_above_the_cap_are_closed() {
    let limits = Limits {
        max_tcp: 2,
        ..Limits::default()
    };
    let (_proxy, port) = proxy_to(tcp_guest(), Proto::Tcp, limits);
    let first = connect(port);
    let mut second = connect(port);
    let mut third = connect(port);
    assert!(closed_by_peer(&mut third), "a third connection was served");
    // Both served ones still work.
    second.write_all(b"two").unwrap();
    second.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    second.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"two");
    drop(first);
    // Their slots come back once they are done.
    let deadline = Instant::now() + WAIT;
    while try_round_trip(port, b"again").ok().as_deref() != Some(&b"again"[..]) {
        assert!(Instant::now() < deadline, "no slot came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tcp_guest_refusing_closes_that_connection_only() {
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let nobody = closed.local_addr().unwrap().port();
    drop(closed);
    let mut proxy = PortProxy::bind(&[
        mapping(LOCAL, 0, nobody, Proto::Tcp),
        mapping(LOCAL, 0, tcp_guest(), Proto::Tcp),
    ])
    .unwrap();
    let ports: Vec<u16> = proxy.bound().iter().map(|b| b.host_port).collect();
    proxy.limits.connect_timeout = Duration::from_secs(2);
    let _running = proxy.start(Ipv4Addr::LOCALHOST).unwrap();
    assert!(closed_by_peer(&mut connect(ports[0])));
    assert_eq!(round_trip(ports[1], b"still here"), b"still here");
}

#[test]
fn a_port_in_use_is_refused_with_dockers_message() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = PortProxy::bind(&[mapping(LOCAL, port, 80, Proto::Tcp)]).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("Bind for 127.0.0.1:{port} failed: port is already allocated")
    );
    let taken = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = PortProxy::bind(&[
        mapping(LOCAL, 0, 80, Proto::Tcp),
        mapping(LOCAL, port, 53, Proto::Udp),
    ])
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("Bind for 127.0.0.1:{port} failed: port is already allocated")
    );
    // The same port by number, other transport: both bind.
    let proxy = PortProxy::bind(&[mapping(LOCAL, port, 53, Proto::Tcp)]).unwrap();
    assert_eq!(proxy.bound()[0].host_port, port);
}

#[test]
fn a_host_port_range_takes_its_first_free_port() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let first = taken.local_addr().unwrap().port();
    let Some(last) = first.checked_add(20) else {
        return;
    };
    let proxy = PortProxy::bind(&[PortMapping {
        host_port_end: Some(last),
        ..mapping(LOCAL, first, 80, Proto::Tcp)
    }])
    .unwrap();
    let got = proxy.bound()[0].host_port;
    assert!(
        got > first && got <= last,
        "{got} not in {first}+1..={last}"
    );
    let e = PortProxy::bind(&[PortMapping {
        host_port_end: Some(first),
        ..mapping(LOCAL, first, 80, Proto::Tcp)
    }])
    .unwrap_err();
    assert!(matches!(e, ProxyError::InUse { .. }), "{e}");
}

#[test]
fn an_address_not_on_this_host_is_refused() {
    // 192.0.2.0/24 is TEST-NET-1: never a local address.
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    let e = PortProxy::bind(&[mapping(ip, 8080, 80, Proto::Tcp)]).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("Error starting userland proxy: listen tcp4 192.0.2.1:8080: bind: "),
        "{text}"
    );
    assert!(!text.contains('\n'));
}

#[test]
fn ipv6_host_addresses_forward_to_the_ipv4_guest() {
    if TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_err() {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    }
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let proxy = PortProxy::bind(&[mapping(v6, 0, tcp_guest(), Proto::Tcp)]).unwrap();
    let bound = proxy.bound()[0];
    assert_eq!(bound.host_ip, v6);
    let _running = proxy.start(Ipv4Addr::LOCALHOST).unwrap();
    let mut s = TcpStream::connect(bound.host_addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"six").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"six");
}

fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Sends `msg` to the proxy; returns the guest's view of the sender, checking the reply
/// came from the published port and echoes `msg`.
fn udp_ask(client: &UdpSocket, port: u16, msg: &str) -> String {
    client
        .send_to(msg.as_bytes(), (Ipv4Addr::LOCALHOST, port))
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = client.recv_from(&mut buf).unwrap();
    assert_eq!(
        from.port(),
        port,
        "the reply did not come from the published port"
    );
    let reply = String::from_utf8(buf[..n].to_vec()).unwrap();
    let (sender, echoed) = reply.split_once('|').unwrap();
    assert_eq!(echoed, msg);
    sender.to_owned()
}

#[test]
fn udp_clients_get_their_own_flows_and_replies() {
    let (_proxy, port) = proxy_to(udp_guest(), Proto::Udp, Limits::default());
    let (a, b) = (udp_client(), udp_client());
    let a_seen = udp_ask(&a, port, "from a");
    let b_seen = udp_ask(&b, port, "from b");
    assert_ne!(a_seen, b_seen, "two clients shared one flow");
    // A flow stays the same while in use.
    assert_eq!(udp_ask(&a, port, "a again"), a_seen);
    assert_eq!(udp_ask(&b, port, "b again"), b_seen);
}

#[test]
fn udp_idle_flows_expire() {
    let limits = Limits {
        udp_idle: Duration::from_millis(200),
        ..Limits::default()
    };
    let (_proxy, port) = proxy_to(udp_guest(), Proto::Udp, limits);
    let client = udp_client();
    let first = udp_ask(&client, port, "one");
    std::thread::sleep(Duration::from_millis(600));
    // A new flow, so a new source port as the guest sees it.
    assert_ne!(udp_ask(&client, port, "two"), first);
}

#[test]
fn udp_flows_above_the_cap_are_dropped() {
    let limits = Limits {
        max_udp: 1,
        ..Limits::default()
    };
    let (_proxy, port) = proxy_to(udp_guest(), Proto::Udp, limits);
    let (a, b) = (udp_client(), udp_client());
    udp_ask(&a, port, "a");
    b.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    b.send_to(b"b", (Ipv4Addr::LOCALHOST, port)).unwrap();
    let mut buf = [0u8; 64];
    assert!(b.recv_from(&mut buf).is_err(), "a second flow was served");
    udp_ask(&a, port, "a still");
}

#[test]
fn dropping_the_proxy_stops_listening_and_ends_connections() {
    let (proxy, port) = proxy_to(tcp_guest(), Proto::Tcp, Limits::default());
    let (udp, udp_port) = proxy_to(udp_guest(), Proto::Udp, Limits::default());
    let mut open = connect(port);
    // The connection is through to the guest once this round trip works.
    assert_eq!(round_trip(port, b"up"), b"up");
    let started = Instant::now();
    drop(proxy);
    drop(udp);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        started.elapsed()
    );
    let refused = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    assert!(
        closed_by_peer(&mut open),
        "an open connection outlived the proxy"
    );
    // The UDP port is free again.
    UdpSocket::bind((Ipv4Addr::LOCALHOST, udp_port)).unwrap();
}
