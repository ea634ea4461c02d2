//! The guest's network interfaces: the loopback interface is up in every sandbox, whatever
//! its network mode (docker's containers have `lo` up; servers on 127.0.0.1 need it); a
//! networked sandbox's `eth0` is configured from the [`NetworkSpec`] the host sends.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use brig_protocol::NetworkSpec;

use crate::sys::check;

/// Brings `lo` up (its 127.0.0.1/8 and ::1 come with it).
pub fn loopback_up() -> io::Result<()> {
    link_up("lo")
}

/// In a VM about to be saved as a template: brings the network interface up, if it has one,
/// with no address (its device carries nothing yet). The driver posts its receive buffers
/// now, once, in the template: a restored guest that brought the link up itself would
/// allocate them (256 chains of 64 KiB without MRG_RXBUF) in memory it shares with the
/// template, one host page fault per page, about half a second under nested emulation.
pub fn template_link_up() -> Result<(), String> {
    match interface_name() {
        Ok(name) => link_up(&name).map_err(|e| format!("{name}: up: {e}")),
        // No network device: nothing to ready.
        Err(_) => Ok(()),
    }
}

/// Sets IFF_UP on interface `name`, keeping its other flags.
fn link_up(name: &str) -> io::Result<()> {
    let sock = ioctl_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: req is a valid ifreq naming the interface that outlives the call; SIOCGIFFLAGS
    // fills in its flags.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: SIOCGIFFLAGS just initialised the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS reads the name and flags.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

/// A datagram socket for interface ioctls.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call on integers; the result is checked before use.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a socket just created and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `ifreq` naming `name` (shorter than IFNAMSIZ), all else zero.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// `addr` as a `struct sockaddr` (AF_INET).
fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data; the kernel reads a
    // sockaddr_in through the sockaddr it is given for AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The kernel's `struct rtentry` (linux/route.h), which glibc's libc bindings lack.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// The guest's network interface: the first one that is not `lo` (virtio-net's `eth0`).
fn interface_name() -> io::Result<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::other("the VM has no network interface"))
}

/// Gives the guest the network `spec` plans: its interface ([`configure`]) and the /etc files
/// ([`write_etc`], in the root the agent is in, with the host name it has).
pub fn apply(spec: &NetworkSpec) -> Result<(), String> {
    configure(spec)?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    write_etc("", spec, hostname.trim())
}

/// Configures the guest's interface as the host planned it: MAC, MTU, address, netmask, up, and
/// a default route through the host's side of the link. Static, like Kata's agent, so no
/// DHCP client and no `ip=` on the kernel command line (which a snapshot would freeze).
pub fn configure(spec: &NetworkSpec) -> Result<(), String> {
    let address: Ipv4Addr = spec
        .address
        .parse()
        .map_err(|_| format!("bad guest address {:?}", spec.address))?;
    // No gateway: a link without a default route (a network namespace that has none).
    let gateway: Option<Ipv4Addr> = match spec.gateway.as_str() {
        "" => None,
        g => Some(g.parse().map_err(|_| format!("bad gateway {g:?}"))?),
    };
    if spec.prefix_len > 32 {
        return Err(format!("bad prefix length {}", spec.prefix_len));
    }
    let mask = Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(spec.prefix_len))
            .unwrap_or(0),
    );
    let name = interface_name().map_err(|e| format!("network interface: {e}"))?;
    let sock = ioctl_socket().map_err(|e| format!("socket: {e}"))?;
    let fail = |what: &str, e: io::Error| format!("{name}: {what}: {e}");
    let set = |request: libc::c_ulong, req: &libc::ifreq, what: &str| {
        // SAFETY: req is a valid ifreq naming the interface, its union member set for this
        // request; it outlives the call, and the kernel only reads it.
        check(unsafe { libc::ioctl(sock.as_raw_fd(), request, req) })
            .map(|_| ())
            .map_err(|e| fail(what, e))
    };
    if spec.mtu > 0 {
        let mut req = ifreq(&name).map_err(|e| fail("name", e))?;
        req.ifr_ifru.ifru_mtu = libc::c_int::from(spec.mtu);
        set(libc::SIOCSIFMTU, &req, "MTU")?;
    }
    let mut req = ifreq(&name).map_err(|e| fail("name", e))?;
    req.ifr_ifru.ifru_addr = sockaddr_in(address);
    set(libc::SIOCSIFADDR, &req, "address")?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    set(libc::SIOCSIFNETMASK, &req, "netmask")?;
    // A gratuitous ARP when the link comes up: the host side learns the guest's MAC before
    // the guest sends anything (passt cannot deliver a published port's connection to a
    // guest it has not heard from yet; a TAP host's neighbour table is filled at once).
    // Best effort: without it the first frame the guest sends does the same.
    let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{name}/arp_notify"), "1");
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    set(libc::SIOCSIFFLAGS, &req, "up")?;
    if !spec.mac.is_empty() {
        // After the address and the link (up already in a VM restored from a template): the
        // change is announced with a gratuitous ARP (arp_notify, NETDEV_CHANGEADDR), which
        // the link coming up no longer sends there. virtio-net without a control queue takes
        // the address locally.
        let mac = brig_protocol::parse_mac(&spec.mac)
            .ok_or_else(|| format!("bad MAC address {:?}", spec.mac))?;
        let mut data = [0 as libc::c_char; 14];
        for (d, b) in data.iter_mut().zip(mac) {
            *d = b as libc::c_char;
        }
        let mut req = ifreq(&name).map_err(|e| fail("name", e))?;
        req.ifr_ifru.ifru_hwaddr = libc::sockaddr {
            sa_family: libc::ARPHRD_ETHER,
            sa_data: data,
        };
        set(libc::SIOCSIFHWADDR, &req, "MAC address")?;
    }
    let Some(gateway) = gateway else {
        return Ok(());
    };
    forget_neighbour(&sock, &name, gateway);
    let mut dev: Vec<libc::c_char> = name.bytes().map(|b| b as libc::c_char).collect();
    dev.push(0);
    let route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gateway),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: route is a valid rtentry whose rt_dev points to a NUL-terminated name that
    // outlives the call; the kernel only reads both.
    match check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &route) }) {
        // Configured again (a checkpoint resumed with the same gateway): the route stands.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(|_| ()).map_err(|e| fail("default route", e)),
    }
}

/// Drops what the guest knows of `gateway`'s link-layer address on `name`: a checkpoint
/// resumed on a new TAP (or passt) would otherwise send to the old one's MAC until the entry
/// went stale. Nothing to drop on a fresh boot (ENXIO), which is fine.
fn forget_neighbour(sock: &OwnedFd, name: &str, gateway: Ipv4Addr) {
    // SAFETY: arpreq is plain old data; all zeroes is a valid value.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    req.arp_pa = sockaddr_in(gateway);
    for (d, b) in req.arp_dev.iter_mut().zip(name.bytes().take(15)) {
        *d = b as libc::c_char;
    }
    // SAFETY: req is a valid arpreq (NUL-terminated device name) that outlives the call; the
    // kernel only reads it.
    let _ = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCDARP, &req) };
}

/// Where the /etc files of a sandbox with a read-only root live (a small tmpfs of their own),
/// bind-mounted over the image's, as docker mounts its own.
const ETC_STASH: &str = "/dev/.brig-etc";

/// Writes the files a networked sandbox always gets (docker bind-mounts its own over the
/// image's): /etc/resolv.conf and /etc/hosts as the host made them, /etc/hostname. On a
/// read-only root (`--read-only`) they are bind-mounted over the image's instead (an image
/// without them keeps none: there is nothing to mount over).
pub fn write_etc(root: &str, spec: &NetworkSpec, hostname: &str) -> Result<(), String> {
    let etc = format!("{root}/etc");
    let files = [
        ("resolv.conf", spec.resolv_conf.clone()),
        ("hosts", spec.hosts.clone()),
        ("hostname", format!("{hostname}\n")),
    ];
    for (file, content) in files {
        let path = format!("{etc}/{file}");
        // A symlink in the image (to /run/systemd/resolve/..., say) is replaced, not followed.
        match crate::rootfs::write_replacing(&path, &content) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
                bind_over(&path, file, &content).map_err(|e| format!("{path}: {e}"))?
            }
            Err(e) => return Err(format!("{path}: {e}")),
        }
    }
    Ok(())
}

/// Puts `content` over the file at `path` of a read-only root, from [`ETC_STASH`].
fn bind_over(path: &str, name: &str, content: &str) -> io::Result<()> {
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    if !std::path::Path::new(ETC_STASH).exists() {
        std::fs::create_dir_all(ETC_STASH)?;
        crate::sys::mount("brig-etc", ETC_STASH, "tmpfs", 0, "size=64k,mode=0755")?;
    }
    let stashed = format!("{ETC_STASH}/{name}");
    std::fs::write(&stashed, content)?;
    crate::sys::mount(&stashed, path, "", libc::MS_BIND, "")
}
