//! A sandbox that joins a network namespace someone else made and configured (an OCI
//! runtime's caller: a Kubernetes pod's, podman's, docker's through its prestart hook): the
//! guest takes over that namespace's interface, as Kata's "tcfilter" model does. In the
//! namespace, a TAP for the VM, and a tc `mirred` redirect both ways between the
//! interface's ingress and the TAP's: every frame that reaches the interface goes to the
//! guest and every frame of the guest leaves through the interface. The guest gets the
//! interface's address, prefix, default route, MTU and MAC, so the caller's plumbing
//! (bridge, veth, routes, firewall) sees the workload where it put the container.
//!
//! brig adds no policy here: the namespace's owner decides what it may reach. The TAP goes
//! with its last fd (the VMM's); the two ingress qdiscs are removed when the network is
//! dropped (the TAP's goes with it anyway).

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;

use brig_protocol::NetworkSpec;
use serde::Deserialize;

use super::{hosts_file, resolv_conf, NetworkError, NetworkOptions, NetworkState, SandboxNetwork};
use crate::vmm::{NetDeviceConfig, Tap};

/// The namespace's interface the guest takes over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u16,
    pub mac: [u8; 6],
}

/// The redirects, removed on drop (in the namespace, which `ns` keeps open).
#[derive(Debug)]
pub struct Joined {
    ns: OwnedFd,
    interface: String,
}

impl Drop for Joined {
    fn drop(&mut self) {
        let interface = self.interface.clone();
        let _ = in_namespace(&self.ns, move || {
            let _ = tc(&["qdisc", "del", "dev", &interface, "ingress"]);
            Ok(())
        });
    }
}

fn failed(what: impl Into<String>) -> NetworkError {
    NetworkError::Joined(what.into())
}

/// Runs `f` on a thread of its own that has entered the network namespace `ns` (setns
/// changes only the calling thread; processes it starts are in the namespace too).
fn in_namespace<T: Send + 'static>(
    ns: &OwnedFd,
    f: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    let ns = ns.try_clone().map_err(|e| failed(e.to_string()))?;
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            rustix::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| failed(format!("setns: {e}")))?;
        f()
    })
    .join()
    .map_err(|_| failed("its thread panicked"))?
}

/// Runs a command of iproute2's; its stdout.
fn run(program: &str, args: &[&str]) -> Result<String, NetworkError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| failed(format!("{program} (install iproute2): {e}")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tc(args: &[&str]) -> Result<String, NetworkError> {
    run("tc", args)
}

#[derive(Debug, Deserialize)]
struct RouteJson {
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    dev: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LinkJson {
    ifname: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    address: String,
    #[serde(default)]
    addr_info: Vec<AddrJson>,
}

#[derive(Debug, Deserialize)]
struct AddrJson {
    #[serde(default)]
    family: String,
    #[serde(default)]
    local: String,
    #[serde(default)]
    prefixlen: u8,
}

/// The interface to take over from `ip -j` output: the default route's, else the only one
/// with an IPv4 address but `lo`; `None` when the namespace has none (only `lo`).
pub fn pick(addrs_json: &str, routes_json: &str) -> Result<Option<Link>, NetworkError> {
    let parse = |what: &str, e: serde_json::Error| failed(format!("reading ip's {what}: {e}"));
    let routes: Vec<RouteJson> =
        serde_json::from_str(routes_json).map_err(|e| parse("routes", e))?;
    let links: Vec<LinkJson> = serde_json::from_str(addrs_json).map_err(|e| parse("links", e))?;
    let default = routes.iter().find(|r| r.dev.is_some());
    let candidates: Vec<&LinkJson> = links
        .iter()
        .filter(|l| l.ifname != "lo" && l.addr_info.iter().any(|a| a.family == "inet"))
        .collect();
    let chosen = match default.and_then(|r| r.dev.as_deref()) {
        Some(dev) => candidates.iter().find(|l| l.ifname == dev).copied(),
        None if candidates.len() == 1 => Some(candidates[0]),
        None if candidates.is_empty() => None,
        None => {
            return Err(failed(format!(
                "{} interfaces and no default route: which one is the container's?",
                candidates.len()
            )))
        }
    };
    let Some(l) = chosen else {
        return Ok(None);
    };
    let inet = l
        .addr_info
        .iter()
        .find(|a| a.family == "inet")
        .expect("a candidate has an IPv4 address");
    let address = inet
        .local
        .parse()
        .map_err(|_| failed(format!("{}: address {:?}", l.ifname, inet.local)))?;
    let gateway = default
        .and_then(|r| r.gateway.as_deref())
        .map(|g| g.parse().map_err(|_| failed(format!("gateway {g:?}"))))
        .transpose()?;
    let mut mac = [0u8; 6];
    let octets: Vec<u8> = l
        .address
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    if octets.len() != 6 {
        return Err(failed(format!("{}: MAC {:?}", l.ifname, l.address)));
    }
    mac.copy_from_slice(&octets);
    Ok(Some(Link {
        name: l.ifname.clone(),
        address,
        prefix_len: inet.prefix_len_checked()?,
        gateway,
        mtu: u16::try_from(l.mtu).unwrap_or(super::MTU).max(68),
        mac,
    }))
}

impl AddrJson {
    fn prefix_len_checked(&self) -> Result<u8, NetworkError> {
        if self.prefixlen > 32 {
            return Err(failed(format!("prefix length {}", self.prefixlen)));
        }
        Ok(self.prefixlen)
    }
}

/// The TAP of sandbox `id` in the namespace (an interface name has at most 15 bytes).
fn tap_name(id: &str) -> String {
    format!("brig{}", id.get(..11).unwrap_or(id))
}

/// Joins the network namespace at `path`: the guest takes over its interface. `None` when
/// the namespace has only `lo` (the guest then has only `lo` too).
pub(super) fn setup(
    id: &str,
    hostname: &str,
    opts: &NetworkOptions,
    path: &Path,
) -> Result<Option<SandboxNetwork>, NetworkError> {
    let ns: OwnedFd = std::fs::File::open(path)
        .map_err(|e| failed(format!("{}: {e}", path.display())))?
        .into();
    // Never the host's own network (a joined namespace's interface is taken over whole).
    let same =
        |a: &rustix::fs::Stat, b: &rustix::fs::Stat| a.st_dev == b.st_dev && a.st_ino == b.st_ino;
    if let (Ok(this), Ok(host)) = (rustix::fs::fstat(&ns), rustix::fs::stat("/proc/1/ns/net")) {
        if same(&this, &host) {
            return Err(failed(format!(
                "{} is the host's network namespace, which a sandbox never takes over",
                path.display()
            )));
        }
    }
    let tap_name = tap_name(id);
    let made = in_namespace(&ns, move || {
        let addrs = run("ip", &["-j", "addr", "show"])?;
        let routes = run("ip", &["-j", "-4", "route", "show", "default"])?;
        let Some(link) = pick(&addrs, &routes)? else {
            return Ok(None);
        };
        let tap = Tap::open(&tap_name)?;
        let mtu = link.mtu.to_string();
        run("ip", &["link", "set", "dev", &tap_name, "mtu", &mtu, "up"])?;
        redirect(&link.name, &tap_name)?;
        Ok(Some((link, tap)))
    })?;
    let Some((link, tap)) = made else {
        return Ok(None);
    };
    let joined = Joined {
        ns,
        interface: link.name.clone(),
    };
    let resolv = opts.resolv_conf.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        resolv_conf(opts, &host)
    });
    let hosts = opts
        .hosts
        .clone()
        .unwrap_or_else(|| hosts_file(link.address, hostname, &opts.add_hosts));
    let gateway = link.gateway.map(|g| g.to_string()).unwrap_or_default();
    let spec = NetworkSpec {
        address: link.address.to_string(),
        prefix_len: link.prefix_len,
        gateway: gateway.clone(),
        mtu: link.mtu,
        mac: String::new(),
        resolv_conf: resolv,
        hosts,
    };
    let state = NetworkState {
        backend: "netns".into(),
        interface: link.name.clone(),
        address: link.address.to_string(),
        gateway,
        prefix_len: link.prefix_len,
        mac: link
            .mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
        ports: Vec::new(),
        egress: format!("the network namespace's own ({})", path.display()),
        vhost_net: super::vhost_net(),
    };
    let device = NetDeviceConfig {
        backend: Box::new(tap),
        mac: link.mac,
        mtu: link.mtu,
        egress: None,
        vhost: state.vhost_net,
    };
    Ok(Some(SandboxNetwork {
        spec,
        state,
        device: Some(device),
        proxy: None,
        table: None,
        passt: None,
        _joined: Some(joined),
        _lease: None,
    }))
}

/// Every frame arriving on `a` leaves through `b`, and the other way round.
fn redirect(a: &str, b: &str) -> Result<(), NetworkError> {
    for (from, to) in [(a, b), (b, a)] {
        tc(&["qdisc", "add", "dev", from, "ingress"]).map_err(|e| {
            failed(format!(
                "{e} ({from} already has an ingress qdisc, or the kernel lacks sch_ingress)"
            ))
        })?;
        tc(&[
            "filter", "add", "dev", from, "ingress", "matchall", "action", "mirred", "egress",
            "redirect", "dev", to,
        ])?;
    }
    Ok(())
}

/// The network namespace of the process that sets the network up (the VMM's keeper), by
/// its path: an OCI container's own new namespace, which that process made.
pub const OWN_NAMESPACE: &str = "/proc/self/ns/net";

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRS: &str = r#"[{"ifindex":1,"ifname":"lo","mtu":65536,"address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
        {"ifindex":3,"ifname":"eth0","mtu":1450,"address":"0a:58:0a:58:00:05","addr_info":[{"family":"inet","local":"10.88.0.5","prefixlen":16}]}]"#;

    #[test]
    fn the_default_routes_interface_is_taken_over() {
        let routes = r#"[{"dst":"default","gateway":"10.88.0.1","dev":"eth0","flags":[]}]"#;
        let l = pick(ADDRS, routes).unwrap().unwrap();
        assert_eq!(l.name, "eth0");
        assert_eq!(l.address, Ipv4Addr::new(10, 88, 0, 5));
        assert_eq!(l.prefix_len, 16);
        assert_eq!(l.gateway, Some(Ipv4Addr::new(10, 88, 0, 1)));
        assert_eq!(l.mtu, 1450);
        assert_eq!(l.mac, [0x0a, 0x58, 0x0a, 0x58, 0, 5]);
        // Without a default route, the one interface; only lo: nothing.
        let l = pick(ADDRS, "[]").unwrap().unwrap();
        assert_eq!(l.gateway, None);
        let lo_only = r#"[{"ifname":"lo","mtu":65536,"address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]}]"#;
        assert_eq!(pick(lo_only, "[]").unwrap(), None);
        assert!(pick("not json", "[]").is_err());
    }

    #[test]
    fn tap_names_fit_an_interface_name() {
        assert_eq!(tap_name("0123456789abcdef0123").len(), 15);
    }
}
