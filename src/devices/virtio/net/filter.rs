//! The egress policy: which frames the guest may send, checked in the VMM on every TX frame
//! before the backend sees it. With a TAP it doubles the host's nftables rules (defence in
//! depth); with passt, which reaches whatever its user can, it is the only enforcement.
//!
//! # What passes
//! [`EgressPolicy::check`] looks at the Ethernet frame as the guest wrote it (no vnet
//! header) and, in this order:
//! - ARP passes only with the guest's own address as sender: it may ask for the gateway's
//!   MAC and answer for itself, and claim nothing else.
//! - IPv6 is dropped, and so is every other ethertype (VLAN tags, LLC): sandboxes are
//!   IPv4-only, and the host's fe80:: address would otherwise be a way round the rules.
//! - An IPv4 header that is short, not version 4, or whose lengths do not fit the frame is
//!   dropped; so is a first fragment too short to hold the TCP (20 bytes) or UDP (8 bytes)
//!   header, which could hide ports or flags. IP options are not looked at: source routing
//!   needs a first hop that honours it, which Linux does not by default and passt never.
//! - A source address other than [`EgressPolicy::guest`] is dropped (anti-spoofing).
//! - The gateway (the host's end of the link) is reached only through a rule that names it
//!   exactly (`GW/32`, with or without ports: DNS on the gateway, say), or by a reply from
//!   a published port; the deny list is not consulted for it, so listing the host's own
//!   addresses there (the gateway among them) costs the published ports nothing.
//! - A destination in [`EgressPolicy::deny`] is dropped, whatever else allows it.
//! - A reply from a published port passes to any other address (below).
//! - Without an allow list ([`EgressPolicy::allow`] `None`) the rest passes; with one, a
//!   rule must match: TCP and UDP to its net and port range, or any protocol (ICMP too) to
//!   its net when it has no ports.
//! - A non-first fragment carries no ports, so only a rule without ports can let it through
//!   (or no allow list). That also defeats overlapping fragments that would rewrite a first
//!   fragment's ports or flags: every later fragment needs a destination allowed whatever
//!   the ports. Linux guests fragment large UDP datagrams themselves, so UDP over the MTU
//!   to a ported rule does not get through.
//!
//! # Published ports
//! When the host connects to a port the guest publishes, the guest answers from that port to
//! whoever connected: the host proxy (at the gateway) or a client anywhere. The VMM keeps no
//! connection state, so [`EgressPolicy::published`] lists those (port, protocol) pairs, and
//! TCP or UDP from one of them passes to any destination not denied. A TCP segment with SYN
//! and no ACK is never such a reply (it opens a connection), so it gets no exception: a
//! guest cannot use a published port to start a connection of its own. UDP has no such
//! mark: publishing a UDP port lets the guest send UDP from that port to any address not
//! denied.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::ETH_HLEN;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// An Ethernet-over-IPv4 ARP packet: htype, ptype, hlen, plen, oper, then two MAC + IPv4
/// pairs (RFC 826).
const ARP_LEN: usize = 28;
/// The shortest IPv4 header.
const IPV4_MIN_HLEN: usize = 20;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// The shortest TCP header: the one a first fragment must hold whole.
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// An IPv4 network: an address and a prefix length, without host bits. Unlike docker's
/// `--subnet`, `10.0.0.5/8` is refused rather than masked: in a security policy it is as
/// likely to mean the host as the network, and the error names both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

/// Destinations no sandbox needs and none may reach: "this network" (0/8), loopback (127/8,
/// which a backend could map to the host's own), link-local (169.254/16, cloud metadata
/// services) and everything from 224/3 on (multicast, reserved, the limited broadcast).
pub const ALWAYS_DENIED: [Cidr; 4] = [
    Cidr::raw(Ipv4Addr::new(0, 0, 0, 0), 8),
    Cidr::raw(Ipv4Addr::new(127, 0, 0, 0), 8),
    Cidr::raw(Ipv4Addr::new(169, 254, 0, 0), 16),
    Cidr::raw(Ipv4Addr::new(224, 0, 0, 0), 3),
];

/// Why a CIDR does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not a dotted-quad IPv4 address.
    #[error("{0:?} is not an IPv4 address")]
    Address(String),
    /// An IPv6 address or network.
    #[error("IPv6 is not supported: sandboxes are IPv4-only")]
    Ipv6,
    /// The prefix length is not a number from 0 to 32.
    #[error("prefix length {0:?} is not a number from 0 to 32")]
    Prefix(String),
    /// The address has bits set past the prefix (`10.0.0.5/8`): most likely a typo for
    /// either the host or the network, so neither is guessed.
    #[error("host bits set past the prefix: the network is {0}, one host is {1}/32")]
    HostBits(Cidr, Ipv4Addr),
}

/// Why an `--egress-allow` rule does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid --egress-allow {input:?}: {reason}")]
pub struct EgressRuleError {
    /// The rule as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: RuleReason,
}

/// What is wrong with an `--egress-allow` rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleReason {
    /// The network part.
    #[error("{0}")]
    Cidr(#[from] CidrError),
    /// A port that is not a number from 1 to 65535.
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
    /// A range whose first port is past its last.
    #[error("port range {0}-{1} is empty")]
    EmptyRange(u16, u16),
}

impl Cidr {
    /// Without checks, for the constants.
    const fn raw(addr: Ipv4Addr, prefix: u8) -> Self {
        Self { addr, prefix }
    }

    /// The network `addr/prefix`; refuses a prefix past 32 and host bits set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 32 {
            return Err(CidrError::Prefix(prefix.to_string()));
        }
        let net = Self::raw(Ipv4Addr::from(u32::from(addr) & mask(prefix)), prefix);
        if net.addr != addr {
            return Err(CidrError::HostBits(net, addr));
        }
        Ok(net)
    }

    /// The single address `addr` (`/32`).
    pub const fn host(addr: Ipv4Addr) -> Self {
        Self::raw(addr, 32)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length, 0 to 32.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let m = mask(self.prefix);
        u32::from(ip) & m == u32::from(self.addr) & m
    }
}

/// The netmask of a prefix length (0 to 32).
fn mask(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

/// Digits only (no sign, no space), as a number.
fn number<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `A.B.C.D/N`, or a bare address for a single host.
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let Ok(ip) = addr.parse::<Ipv4Addr>() else {
            if addr.parse::<Ipv6Addr>().is_ok() {
                return Err(CidrError::Ipv6);
            }
            return Err(CidrError::Address(addr.to_owned()));
        };
        let prefix = number::<u8>(prefix)
            .filter(|&p| p <= 32)
            .ok_or_else(|| CidrError::Prefix(prefix.to_owned()))?;
        Self::new(ip, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One allow rule: a network and, optionally, an inclusive range of TCP/UDP destination
/// ports (a range whose first port is past its last matches nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressRule {
    /// The destinations.
    pub net: Cidr,
    /// First and last TCP/UDP destination port; `None`: any protocol, any port.
    pub ports: Option<(u16, u16)>,
}

impl FromStr for EgressRule {
    type Err = EgressRuleError;

    /// `CIDR[:PORT[-PORT]]`, e.g. `198.51.100.0/24`, `198.51.100.7:443`,
    /// `198.51.100.7/32:8000-8080`.
    fn from_str(s: &str) -> Result<Self, EgressRuleError> {
        let fail = |reason: RuleReason| EgressRuleError {
            input: s.to_owned(),
            reason,
        };
        // More than one colon, or brackets: an IPv6 address, not CIDR:PORT.
        if s.matches(':').count() > 1 || s.starts_with('[') {
            return Err(fail(CidrError::Ipv6.into()));
        }
        let (net, ports) = match s.split_once(':') {
            Some((net, ports)) => (net, Some(ports)),
            None => (s, None),
        };
        let net = net.parse::<Cidr>().map_err(|err| fail(err.into()))?;
        let ports = match ports {
            None => None,
            Some(spec) => {
                let (lo, hi) = spec.split_once('-').unwrap_or((spec, spec));
                let port = |p: &str| {
                    number::<u16>(p)
                        .filter(|&p| p != 0)
                        .ok_or_else(|| fail(RuleReason::Port(p.to_owned())))
                };
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(fail(RuleReason::EmptyRange(lo, hi)));
                }
                Some((lo, hi))
            }
        };
        Ok(Self { net, ports })
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.net)?;
        match self.ports {
            None => Ok(()),
            Some((lo, hi)) if lo == hi => write!(f, ":{lo}"),
            Some((lo, hi)) => write!(f, ":{lo}-{hi}"),
        }
    }
}

/// A transport protocol with ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// What the guest may send; see the module documentation for the order of the checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPolicy {
    /// The only source address the guest may use.
    pub guest: Ipv4Addr,
    /// The host's end of the link: reached only through a rule naming it (`GW/32`) or by a
    /// published port's reply.
    pub gateway: Ipv4Addr,
    /// `None`: everything not denied passes. `Some`: only what a rule matches.
    pub allow: Option<Vec<EgressRule>>,
    /// Always dropped, before any rule: [`ALWAYS_DENIED`], the host's own addresses, other
    /// sandboxes' networks.
    pub deny: Vec<Cidr>,
    /// Guest ports the host connects to: TCP/UDP from them passes to anything not denied.
    pub published: Vec<(u16, Proto)>,
}

/// What to do with a frame.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop(DropReason),
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A header is cut short or inconsistent.
    Malformed,
    /// IPv6: sandboxes are IPv4-only.
    Ipv6,
    /// Neither IPv4 nor ARP (nor IPv6).
    Ethertype(u16),
    /// ARP with a sender address other than the guest's.
    ArpSpoofed,
    /// IPv4 from an address other than the guest's.
    Spoofed(Ipv4Addr),
    /// To the gateway, without a rule naming it.
    Gateway,
    /// To a denied address.
    Denied(Ipv4Addr),
    /// No allow rule matches.
    NotAllowed(Ipv4Addr),
}

/// What follows an IPv4 header, as far as the rules care.
#[derive(Clone, Copy, Debug)]
enum L4 {
    /// TCP or UDP with its header: `syn_only` for a TCP SYN without ACK.
    Ports {
        proto: Proto,
        src: u16,
        dst: u16,
        syn_only: bool,
    },
    /// Another protocol, in a first (or only) fragment.
    Other,
    /// A non-first fragment: no L4 header to look at.
    Fragment,
}

impl EgressPolicy {
    /// A policy for `guest` behind `gateway` that denies [`ALWAYS_DENIED`], has no allow
    /// list and publishes nothing.
    pub fn new(guest: Ipv4Addr, gateway: Ipv4Addr) -> Self {
        Self {
            guest,
            gateway,
            allow: None,
            deny: ALWAYS_DENIED.to_vec(),
            published: Vec::new(),
        }
    }

    /// The verdict on `frame`, an Ethernet frame as the guest sent it (no vnet header).
    pub fn check(&self, frame: &[u8]) -> Verdict {
        let Some((eth, payload)) = frame.split_first_chunk::<ETH_HLEN>() else {
            return Verdict::Drop(DropReason::Malformed);
        };
        match u16::from_be_bytes([eth[12], eth[13]]) {
            ETHERTYPE_ARP => self.check_arp(payload),
            ETHERTYPE_IPV4 => self.check_ipv4(payload),
            ETHERTYPE_IPV6 => Verdict::Drop(DropReason::Ipv6),
            other => Verdict::Drop(DropReason::Ethertype(other)),
        }
    }

    fn check_arp(&self, arp: &[u8]) -> Verdict {
        let Some(arp) = arp.first_chunk::<ARP_LEN>() else {
            return Verdict::Drop(DropReason::Malformed);
        };
        // Ethernet (1), IPv4, 6-byte MACs, 4-byte addresses, request (1) or reply (2).
        if arp[..6] != [0, 1, 8, 0, 6, 4] || arp[6] != 0 || !matches!(arp[7], 1 | 2) {
            return Verdict::Drop(DropReason::Malformed);
        }
        let sender = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
        if sender == self.guest {
            Verdict::Pass
        } else {
            Verdict::Drop(DropReason::ArpSpoofed)
        }
    }

    fn check_ipv4(&self, ip: &[u8]) -> Verdict {
        let Some((src, dst, l4)) = parse_ipv4(ip) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if src != self.guest {
            return Verdict::Drop(DropReason::Spoofed(src));
        }
        let reply = match l4 {
            L4::Ports {
                proto,
                src,
                syn_only,
                ..
            } => !syn_only && self.published.contains(&(src, proto)),
            L4::Other | L4::Fragment => false,
        };
        if dst == self.gateway {
            let named = |rule: &&EgressRule| rule.net == Cidr::host(self.gateway);
            let allowed = self
                .allow
                .iter()
                .flatten()
                .filter(named)
                .any(|rule| rule.matches(dst, l4));
            return if reply || allowed {
                Verdict::Pass
            } else {
                Verdict::Drop(DropReason::Gateway)
            };
        }
        if self.deny.iter().any(|net| net.contains(dst)) {
            return Verdict::Drop(DropReason::Denied(dst));
        }
        let allowed = match &self.allow {
            None => true,
            Some(rules) => reply || rules.iter().any(|rule| rule.matches(dst, l4)),
        };
        if allowed {
            Verdict::Pass
        } else {
            Verdict::Drop(DropReason::NotAllowed(dst))
        }
    }
}

impl EgressRule {
    fn matches(&self, dst: Ipv4Addr, l4: L4) -> bool {
        if !self.net.contains(dst) {
            return false;
        }
        match (self.ports, l4) {
            (None, _) => true,
            (Some((lo, hi)), L4::Ports { dst, .. }) => (lo..=hi).contains(&dst),
            (Some(_), L4::Other | L4::Fragment) => false,
        }
    }
}

/// Source, destination and transport of an IPv4 packet, if its headers hold together: the
/// version is 4, the header and total lengths fit each other and the frame (which may be
/// longer: Ethernet padding), and a first fragment holds the whole TCP or UDP header.
fn parse_ipv4(ip: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, L4)> {
    let hdr = ip.first_chunk::<IPV4_MIN_HLEN>()?;
    if hdr[0] >> 4 != 4 {
        return None;
    }
    let hlen = usize::from(hdr[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
    if hlen < IPV4_MIN_HLEN || total < hlen || total > ip.len() {
        return None;
    }
    let src = Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15]);
    let dst = Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]);
    let frag_offset = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    if frag_offset != 0 {
        return Some((src, dst, L4::Fragment));
    }
    let l4 = &ip[hlen..total];
    let ports = |need: usize| {
        let h = l4.get(..need)?;
        Some((
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[2], h[3]]),
        ))
    };
    let l4 = match hdr[9] {
        IPPROTO_TCP => {
            let (s, d) = ports(TCP_MIN_HLEN)?;
            let flags = l4[13];
            L4::Ports {
                proto: Proto::Tcp,
                src: s,
                dst: d,
                syn_only: flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
            }
        }
        IPPROTO_UDP => {
            let (s, d) = ports(UDP_HLEN)?;
            L4::Ports {
                proto: Proto::Udp,
                src: s,
                dst: d,
                syn_only: false,
            }
        }
        _ => L4::Other,
    };
    Some((src, dst, l4))
}
