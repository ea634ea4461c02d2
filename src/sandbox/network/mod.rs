//! A sandbox's network, docker's way: `--network none` (only `lo`) or `bridge` (the
//! default): a virtio-net device over a per-sandbox TAP with NAT to the host's uplink, an
//! address from brig's pool, an egress policy enforced on the host, published ports
//! through a proxy in the VMM process, and the guest's `/etc/resolv.conf`, `/etc/hosts`
//! and `/etc/hostname`.
//!
//! Everything set up on the host belongs to the VMM process and goes with it, however it
//! ends: the TAP (not persistent: it vanishes when its last fd closes), the nftables table
//! (an owner table, see [`nft`]), the address lease ([`pool`], taken back once its sandbox
//! is not live) and the proxy's listeners.
//!
//! [`NetworkOptions`] are the flags, checked when the sandbox is created and kept in its
//! config; [`setup`] builds the network in the VMM process, just before the VM starts.

mod bridge;
pub mod host;
pub mod joined;
mod nfnetlink;
pub mod nft;
pub mod passt;
pub mod pool;
pub mod ports;
pub mod proxy;

use std::net::Ipv4Addr;
use std::path::Path;

use brig_protocol::NetworkSpec;
use serde::{Deserialize, Serialize};

use crate::vmm::{
    Cidr, EgressPolicy, EgressRule, EgressRuleError, FilterProto, NetBackend, NetDeviceConfig,
};
use ports::{BoundPort, PortMapping};

/// The MTU of a sandbox's link.
pub const MTU: u16 = 1500;
/// The MTU of a rootless sandbox's link to passt: passt's own default, and podman's with
/// pasta. passt ends the guest's TCP in host sockets, so the link's MTU is not the path's:
/// a larger one only makes passt's frames towards the guest larger, each filling the 64 KiB
/// receive buffer a guest with TCP segmentation offload posts instead of 1.5 KiB of it (with
/// 1500, a ring of 256 descriptors held 15 frames, 22 KiB, and passt's burst overran its
/// socket).
pub const PASST_MTU: u16 = 65520;

/// `--network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Only `lo`. The default of configs written before networking existed.
    #[default]
    None,
    /// A virtio-net device with NAT (docker's default network's name).
    Bridge,
}

impl std::str::FromStr for NetworkMode {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, NetworkError> {
        match s {
            "none" => Ok(Self::None),
            "bridge" | "default" => Ok(Self::Bridge),
            "host" => Err(NetworkError::Flag(
                "--network host is not supported: a microVM has its own kernel and network stack (use -p to publish ports)".into(),
            )),
            other => Err(NetworkError::Flag(format!(
                "network {other} not found (brig has \"bridge\", the default, and \"none\")"
            ))),
        }
    }
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Bridge => "bridge",
        })
    }
}

/// `brig run`'s network flags, checked, as the sandbox's config keeps them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkOptions {
    pub mode: NetworkMode,
    /// `-p`.
    pub publish: Vec<PortMapping>,
    /// `--dns`: name servers instead of the host's.
    pub dns: Vec<Ipv4Addr>,
    /// `--dns-search`, `--dns-option`.
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    /// `--add-host NAME:IP`, as (name, address).
    pub add_hosts: Vec<(String, String)>,
    /// `--egress-allow CIDR[:PORT[-PORT]]` as given; empty: everything not always denied.
    pub egress_allow: Vec<String>,
    /// Join the network namespace at this path instead of making a network: the guest takes
    /// over its interface ([`joined`]; an OCI runtime's caller made it). Then `mode` is
    /// `None`, and no flag but `add_hosts`, `dns*` and the files below applies.
    pub netns: Option<std::path::PathBuf>,
    /// The guest's `/etc/resolv.conf` and `/etc/hosts` as the caller wrote them (an OCI
    /// bundle's bind mounts), instead of brig's.
    pub resolv_conf: Option<String>,
    pub hosts: Option<String>,
}

/// A network flag is wrong, or the network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A flag is malformed or contradicts another.
    #[error("{0}")]
    Flag(String),
    #[error(transparent)]
    Pool(#[from] pool::PoolError),
    #[error(transparent)]
    Tap(#[from] crate::vmm::TapError),
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    Nft(#[from] nft::NftError),
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
    #[error(transparent)]
    Passt(#[from] passt::PasstError),
    #[error("rootless networking: {0}")]
    PasstBackend(#[from] crate::vmm::PasstBackendError),
    /// A network namespace to join could not be taken over.
    #[error("joining the network namespace: {0}")]
    Joined(String),
}

/// The raw flags of `brig run`.
#[derive(Debug, Default, Clone)]
pub struct NetworkFlags {
    pub network: Option<String>,
    pub publish: Vec<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    pub add_hosts: Vec<String>,
    pub egress_allow: Vec<String>,
}

impl NetworkOptions {
    /// Checks `flags` with docker's rules.
    pub fn parse(flags: &NetworkFlags) -> Result<Self, NetworkError> {
        let mode = match &flags.network {
            Some(n) => n.parse()?,
            None => NetworkMode::Bridge,
        };
        let mut publish = Vec::new();
        for p in &flags.publish {
            publish.extend(ports::parse_publish(p).map_err(|e| NetworkError::Flag(e.to_string()))?);
        }
        let dns = flags
            .dns
            .iter()
            .map(|d| {
                d.parse::<Ipv4Addr>()
                    .map_err(|_| NetworkError::Flag(format!("{d} is not an IPv4 address (--dns)")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut add_hosts = Vec::new();
        for h in &flags.add_hosts {
            let (name, ip) = h
                .split_once(':')
                .or_else(|| h.split_once('='))
                .ok_or_else(|| NetworkError::Flag(format!("bad format for add-host: {h:?}")))?;
            if ip == "host-gateway" {
                return Err(NetworkError::Flag(
                    "--add-host host-gateway is not supported: a sandbox never reaches the host"
                        .into(),
                ));
            }
            if ip.parse::<std::net::IpAddr>().is_err() || name.is_empty() {
                return Err(NetworkError::Flag(format!(
                    "invalid IP address in add-host: {ip:?}"
                )));
            }
            add_hosts.push((name.to_string(), ip.to_string()));
        }
        for rule in &flags.egress_allow {
            parse_rule(rule)?;
        }
        let opts = Self {
            mode,
            publish,
            dns,
            dns_search: flags.dns_search.clone(),
            dns_options: flags.dns_options.clone(),
            add_hosts,
            egress_allow: flags.egress_allow.clone(),
            ..Default::default()
        };
        if mode == NetworkMode::None {
            let extra = [
                (!opts.publish.is_empty(), "-p"),
                (!opts.egress_allow.is_empty(), "--egress-allow"),
                (!opts.dns.is_empty(), "--dns"),
            ];
            if let Some((_, flag)) = extra.iter().find(|(set, _)| *set) {
                return Err(NetworkError::Flag(format!(
                    "{flag} needs a network: it cannot be used with --network none"
                )));
            }
        }
        Ok(opts)
    }
}

/// One `--egress-allow` rule.
fn parse_rule(rule: &str) -> Result<EgressRule, NetworkError> {
    rule.parse()
        .map_err(|e: EgressRuleError| NetworkError::Flag(e.to_string()))
}

/// What `brig ps`, `brig port` and `brig inspect` show of a running sandbox's network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkState {
    /// `tap` (as root) or `passt` (rootless).
    pub backend: String,
    pub interface: String,
    pub address: String,
    pub gateway: String,
    pub prefix_len: u8,
    pub mac: String,
    pub ports: Vec<BoundPort>,
    /// The egress policy in force, in words.
    pub egress: String,
    /// Whether the host kernel's vhost-net moves the TAP's frames (see [`vhost_net`]).
    pub vhost_net: bool,
}

/// A networked sandbox's host side, for as long as the VMM runs. Its parts are dropped in
/// field order (no Drop impl: keep the order): forwarding first, then the nft table (or
/// passt, or a joined namespace's redirects), then the address lease.
pub struct SandboxNetwork {
    /// What the guest agent configures.
    pub spec: NetworkSpec,
    pub state: NetworkState,
    device: Option<NetDeviceConfig>,
    proxy: Option<proxy::RunningProxy>,
    table: Option<nft::Table>,
    passt: Option<passt::Passt>,
    _joined: Option<joined::Joined>,
    /// `None` in a joined namespace, whose owner chose the address.
    _lease: Option<pool::Lease>,
}

impl std::fmt::Debug for SandboxNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxNetwork")
            .field("state", &self.state)
            .finish()
    }
}

/// The guest's MAC address: locally administered, unicast, from the sandbox id.
fn mac_of(id: &str) -> [u8; 6] {
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    for (i, byte) in mac.iter_mut().skip(1).enumerate() {
        *byte = id
            .get(i * 2..i * 2 + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    mac
}

/// The guest's /etc/hosts, docker's lines first.
fn hosts_file(guest: Ipv4Addr, hostname: &str, add_hosts: &[(String, String)]) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for (name, ip) in add_hosts {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    s.push_str(&format!("{guest}\t{hostname}\n"));
    s
}

/// The guest's /etc/resolv.conf: `--dns` or the host's reachable servers, the host's (or
/// `--dns-search`/`--dns-option`) search and options lines.
fn resolv_conf(opts: &NetworkOptions, host_resolv: &str) -> String {
    let mut s = String::new();
    for n in dns_servers(opts, host_resolv) {
        s.push_str(&format!("nameserver {n}\n"));
    }
    let host_lines = host::search_and_options(host_resolv);
    if opts.dns_search.is_empty() {
        s.extend(
            host_lines
                .iter()
                .filter(|l| l.starts_with("search "))
                .map(|l| format!("{l}\n")),
        );
    } else {
        s.push_str(&format!("search {}\n", opts.dns_search.join(" ")));
    }
    if opts.dns_options.is_empty() {
        s.extend(
            host_lines
                .iter()
                .filter(|l| l.starts_with("options "))
                .map(|l| format!("{l}\n")),
        );
    } else {
        s.push_str(&format!("options {}\n", opts.dns_options.join(" ")));
    }
    s
}

/// The name servers a sandbox is told to use (allowed on port 53 under an allow-list).
fn dns_servers(opts: &NetworkOptions, host_resolv: &str) -> Vec<String> {
    if opts.dns.is_empty() {
        host::nameservers(host_resolv)
    } else {
        opts.dns.iter().map(|d| d.to_string()).collect()
    }
}

/// What both backends need to build a sandbox's network.
struct Plan<'a> {
    id: &'a str,
    opts: &'a NetworkOptions,
    lease: pool::Lease,
    mac: [u8; 6],
    /// `--egress-allow` plus the name servers on port 53; `None`: no allow-list.
    allow: Option<Vec<EgressRule>>,
    /// The guest's /etc files.
    resolv_conf: String,
    hosts: String,
}

impl Plan<'_> {
    /// The policy the VMM checks on every guest frame (the only enforcement with passt,
    /// defence in depth behind nft with a TAP).
    fn egress_policy(&self) -> EgressPolicy {
        let link = self.lease.link;
        let mut policy = EgressPolicy::new(link.guest, link.host);
        policy.allow = self.allow.clone();
        policy
            .deny
            .extend(Cidr::new(pool::POOL_BASE, pool::POOL_PREFIX).ok());
        policy.deny.extend(
            host::own_addresses()
                .into_iter()
                .filter(|a| *a != link.host)
                .map(Cidr::host),
        );
        policy.published = self
            .opts
            .publish
            .iter()
            .map(|p| {
                let proto = match p.proto {
                    ports::Proto::Tcp => FilterProto::Tcp,
                    ports::Proto::Udp => FilterProto::Udp,
                };
                (p.guest_port, proto)
            })
            .collect();
        policy
    }

    /// The policy in words, for `brig inspect`.
    fn egress_words(&self) -> String {
        match &self.allow {
            None => "all but the host, link-local (169.254.0.0/16) and other sandboxes".into(),
            Some(list) => format!(
                "only {}",
                list.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn spec(&self, mtu: u16) -> NetworkSpec {
        let link = self.lease.link;
        NetworkSpec {
            address: link.guest.to_string(),
            prefix_len: pool::LINK_PREFIX,
            gateway: link.host.to_string(),
            mtu,
            mac: String::new(),
            resolv_conf: self.resolv_conf.clone(),
            hosts: self.hosts.clone(),
        }
    }

    /// The sandbox's network over `backend` (named `kind`, its host side `interface`, its
    /// link's `mtu`), with the published `ports`; the caller adds what must live as long
    /// (proxy, table, passt).
    fn finish(
        self,
        backend: Box<dyn NetBackend>,
        (kind, interface, mtu): (&str, &str, u16),
        ports: Vec<BoundPort>,
    ) -> SandboxNetwork {
        let vhost = kind == "tap" && vhost_net();
        let device = NetDeviceConfig {
            egress: Some(self.egress_policy()),
            backend,
            mac: self.mac,
            mtu,
            vhost,
        };
        SandboxNetwork {
            spec: self.spec(mtu),
            state: self.state(kind, interface, ports, vhost),
            device: Some(device),
            proxy: None,
            table: None,
            passt: None,
            _joined: None,
            _lease: Some(self.lease),
        }
    }

    fn state(
        &self,
        backend: &str,
        interface: &str,
        ports: Vec<BoundPort>,
        vhost_net: bool,
    ) -> NetworkState {
        let link = self.lease.link;
        NetworkState {
            backend: backend.into(),
            interface: interface.into(),
            address: link.guest.to_string(),
            gateway: link.host.to_string(),
            prefix_len: pool::LINK_PREFIX,
            mac: self
                .mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            ports,
            egress: self.egress_words(),
            vhost_net,
        }
    }
}

/// Where the kernel's vhost-net is found.
const VHOST_NET: &str = "/dev/vhost-net";

/// Whether a TAP's frames go through the host kernel's vhost-net rather than brig's own
/// device: only when asked for with `BRIG_VHOST_NET=on` (or `1`) and `/dev/vhost-net` opens
/// for reading and writing. Not the default: it takes the frames past the VMM's frame filter
/// (leaving the policy to nftables alone) and puts the host kernel's vhost code in front of
/// the guest's rings, as Firecracker declines to, and in the nested test VM it moved no more
/// data than brig's device (`scripts/bench-net`, README).
pub fn vhost_net() -> bool {
    let on = matches!(
        std::env::var("BRIG_VHOST_NET").as_deref(),
        Ok("on" | "1" | "yes" | "true")
    );
    on && rustix::fs::access(
        VHOST_NET,
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_ok()
}

/// Which backend this user gets: a TAP with nft as root, passt otherwise.
fn rootless() -> bool {
    !rustix::process::geteuid().is_root()
}

/// `brig info`'s line on networking.
pub fn backend_words() -> String {
    if rootless() {
        let found = std::process::Command::new(passt::PASST)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        format!(
            "passt (rootless user-mode networking{})",
            if found {
                ""
            } else {
                "; passt is NOT installed"
            }
        )
    } else {
        format!(
            "tap (a TAP per sandbox, nftables NAT and egress policy; frames moved by {})",
            if vhost_net() {
                "the kernel's vhost-net"
            } else {
                "the VMM (BRIG_VHOST_NET=on hands them to the kernel's vhost-net)"
            }
        )
    }
}

/// Builds sandbox `id`'s network, or `None` for `--network none`: as root a TAP, its
/// address, an nft table and the port proxy ([`bridge`]); rootless, passt ([`passt`]); in
/// a network namespace to join, its interface taken over ([`joined`]).
/// `leases` is where address leases live.
pub fn setup(
    id: &str,
    hostname: &str,
    opts: &NetworkOptions,
    leases: &Path,
    is_live: &dyn Fn(&str) -> bool,
) -> Result<Option<SandboxNetwork>, NetworkError> {
    if let Some(path) = &opts.netns {
        return joined::setup(id, hostname, opts, path);
    }
    if opts.mode == NetworkMode::None {
        return Ok(None);
    }
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut allow = None;
    if !opts.egress_allow.is_empty() {
        let mut list = opts
            .egress_allow
            .iter()
            .map(|r| parse_rule(r))
            .collect::<Result<Vec<_>, _>>()?;
        for d in dns_servers(opts, &host_resolv) {
            if let Ok(rule) = format!("{d}:53").parse::<EgressRule>() {
                list.push(rule);
            }
        }
        allow = Some(list);
    }
    let lease = pool::allocate(leases, id, is_live)?;
    let plan = Plan {
        id,
        opts,
        mac: mac_of(id),
        allow,
        resolv_conf: resolv_conf(opts, &host_resolv),
        hosts: hosts_file(lease.link.guest, hostname, &opts.add_hosts),
        lease,
    };
    if rootless() {
        passt::setup(plan).map(Some)
    } else {
        bridge::setup(plan).map(Some)
    }
}

impl SandboxNetwork {
    /// The VM's network device (once).
    pub fn take_device(&mut self) -> Option<NetDeviceConfig> {
        self.device.take()
    }

    /// Waits until the host's side is whole: the packet filter applied (nft works while the
    /// VM starts). The workload must not start before this says Ok: the egress policy holds
    /// from its first packet.
    pub fn confirm(&self) -> Result<(), NetworkError> {
        if let Some(table) = &self.table {
            table.confirm()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
