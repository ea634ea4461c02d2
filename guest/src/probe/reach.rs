//! Reachability: a TCP connection to each target named on the command line
//! (`--connect NAME=ADDR:PORT`; `gw` for ADDR is the default gateway, the host's side of the
//! workload's link). A connection that completes, or that the peer refuses (it answered), has
//! reached it; a timeout or an unreachable network has not. Nothing is sent.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

/// How long a connection may take before the target counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The default gateway from `/proc/net/route` (little-endian hex), when there is one.
pub fn gateway() -> Option<Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 2 && f[1] == "00000000" {
            let gw = u32::from_str_radix(f[2], 16).ok()?;
            (gw != 0).then(|| Ipv4Addr::from(u32::from_be(gw)))
        } else {
            None
        }
    })
}

/// The outcome of one connection attempt.
fn connect(addr: SocketAddr) -> String {
    match TcpStream::connect_timeout(&addr, TIMEOUT) {
        Ok(_) => "connected".into(),
        Err(e) => match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => "refused".into(),
            Some(libc::ETIMEDOUT) | Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => {
                "timeout".into()
            }
            Some(libc::ENETUNREACH) => "no route".into(),
            Some(libc::EHOSTUNREACH) => "host unreachable".into(),
            Some(libc::EPERM) | Some(libc::EACCES) => "denied".into(),
            _ if e.kind() == std::io::ErrorKind::TimedOut => "timeout".into(),
            _ => format!("error {e}"),
        },
    }
}

/// One `NAME=ADDR:PORT`: the facts `reach.NAME` (the outcome) and `reach.NAME.addr`.
pub fn probe(spec: &str, emit: &dyn Fn(&str, &str)) {
    let Some((name, target)) = spec.split_once('=') else {
        return;
    };
    let Some((host, port)) = target.rsplit_once(':') else {
        return;
    };
    let Ok(port) = port.parse::<u16>() else {
        return;
    };
    let key = format!("reach.{name}");
    let ip = if host == "gw" {
        gateway()
    } else {
        host.parse().ok()
    };
    match ip {
        Some(ip) => {
            let addr = SocketAddrV4::new(ip, port);
            emit(&format!("{key}.addr"), &addr.to_string());
            emit(&key, &connect(addr.into()));
        }
        None => {
            emit(&format!("{key}.addr"), target);
            emit(&key, "no route");
        }
    }
}
