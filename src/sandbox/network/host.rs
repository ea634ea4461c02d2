//! The host's side of a sandbox's link: the TAP's address (`.1` of the sandbox's /30), no
//! IPv6 on it (so no `fe80::` address a guest could reach host services through), the
//! link up, and IPv4 forwarding on (global, as docker sets it).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

/// Configuring the host side failed.
#[derive(Debug, thiserror::Error)]
#[error("configuring {what} of {interface}: {source}")]
pub struct HostError {
    interface: String,
    what: &'static str,
    #[source]
    source: io::Error,
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: both are 16 bytes of plain data; for AF_INET the kernel reads a sockaddr_in
    // through the sockaddr it is given.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(sock: &OwnedFd, request: libc::c_ulong, req: &libc::ifreq) -> io::Result<()> {
    // SAFETY: req is a valid ifreq naming an interface, with the union member this request
    // reads set; it outlives the call and the kernel only reads it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives `interface` the address `addr/prefix`, no IPv6, and brings it up.
pub fn configure(interface: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), HostError> {
    let err = |what, source| HostError {
        interface: interface.to_string(),
        what,
        source,
    };
    // Before the link is up, or the kernel gives it an fe80:: address. Missing when the host
    // has no IPv6 at all, which is as good.
    let v6 = format!("/proc/sys/net/ipv6/conf/{interface}/disable_ipv6");
    if std::path::Path::new(&v6).exists() {
        std::fs::write(&v6, "1").map_err(|e| err("disable_ipv6", e))?;
    }
    let sock = rustix::net::socket_with(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| err("socket", e.into()))?;
    let mask = Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0),
    );
    let mut req = ifreq(interface).map_err(|e| err("name", e))?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(&sock, libc::SIOCSIFADDR, &req).map_err(|e| err("address", e))?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    ioctl(&sock, libc::SIOCSIFNETMASK, &req).map_err(|e| err("netmask", e))?;
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(&sock, libc::SIOCSIFFLAGS, &req).map_err(|e| err("link up", e))?;
    Ok(())
}

/// Turns IPv4 forwarding on (needed for NAT; docker does the same and leaves it on).
pub fn enable_forwarding() -> Result<(), HostError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(PATH, "1").map_err(|source| HostError {
        interface: "the host".into(),
        what: "net.ipv4.ip_forward",
        source,
    })
}

/// Every IPv4 address of the host's interfaces (a sandbox reaches none of them).
pub fn own_addresses() -> Vec<Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head to `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names; for AF_INET that
            // is a sockaddr_in.
            unsafe {
                if i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    found.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once; nothing refers to it after.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// The host's name servers for a sandbox's resolv.conf: those of the host's
/// /etc/resolv.conf that a sandbox can reach (not loopback: a sandbox has its own), or
/// docker's fallback, Google's public resolvers.
pub fn nameservers(resolv_conf: &str) -> Vec<String> {
    let found: Vec<String> = resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|s| s.trim().to_string())
        .filter(|s| {
            s.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_ipv4() && !ip.is_loopback())
        })
        .collect();
    if found.is_empty() {
        vec!["8.8.8.8".into(), "8.8.4.4".into()]
    } else {
        found
    }
}

/// `search` and `options` lines of the host's resolv.conf, kept as docker keeps them.
pub fn search_and_options(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("search ") || l.starts_with("options "))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_skip_loopback_and_fall_back_like_docker() {
        let conf = "# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\nsearch example.org\noptions edns0\n";
        assert_eq!(nameservers(conf), ["192.0.2.53"]);
        assert_eq!(
            nameservers("nameserver 127.0.0.53\n"),
            ["8.8.8.8", "8.8.4.4"]
        );
        assert_eq!(
            search_and_options(conf),
            ["search example.org", "options edns0"]
        );
    }

    #[test]
    fn own_addresses_include_loopback() {
        // Every network namespace has lo; its address shows once lo is up, which it is in
        // any namespace that runs tests with sockets (and harmless to not require here).
        let addrs = own_addresses();
        assert!(addrs.iter().all(|a| !a.is_unspecified()), "{addrs:?}");
    }

    #[test]
    fn bad_interface_names_are_refused() {
        assert!(ifreq("").is_err());
        assert!(ifreq("a-name-that-is-too-long").is_err());
        assert!(ifreq("brig-01234567").is_ok());
    }
}
