//! Tests of the egress policy on frames built by hand, byte by byte, as a guest would send
//! them: ARP, IPv4 with TCP, UDP and ICMP, fragments, IPv6, and the broken headers a hostile
//! guest can write; then the policy in the device.

use std::net::Ipv4Addr;

use super::filter::{
    Cidr, CidrError, DropReason, EgressPolicy, EgressRule, Proto, RuleReason, Verdict,
    ALWAYS_DENIED,
};
use super::tests::{Guest, DATA};
use super::VNET_HDR_LEN;

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 2);
const GW: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
const EXT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const OTHER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// Offset of the IPv4 header in a frame.
const IP: usize = 14;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0xb1, 0x09, 0, 0, 2];
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

/// An IPv4 frame, no options: `frag` is the flags-and-offset field.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + l4.len()).unwrap();
    let mut ip = vec![0x45, 0];
    ip.extend(total.to_be_bytes());
    ip.extend([0x12, 0x34]);
    ip.extend(frag.to_be_bytes());
    ip.extend([64, proto, 0, 0]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    ip.extend(l4);
    eth(0x0800, &ip)
}

fn tcp_hdr(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(sport.to_be_bytes());
    h.extend(dport.to_be_bytes());
    h.extend([0; 8]);
    h.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend(b"payload");
    h
}

fn tcp(dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv4(GUEST, dst, 6, 0, &tcp_hdr(sport, dport, flags))
}

fn udp(dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(sport.to_be_bytes());
    h.extend(dport.to_be_bytes());
    h.extend([0, 12, 0, 0]);
    h.extend(b"data");
    ipv4(GUEST, dst, 17, 0, &h)
}

fn icmp(dst: Ipv4Addr) -> Vec<u8> {
    ipv4(GUEST, dst, 1, 0, &[8, 0, 0, 0, 0, 1, 0, 1])
}

fn arp(op: u8, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, op];
    a.extend([0x02, 0xb1, 0x09, 0, 0, 2]);
    a.extend(sender.octets());
    a.extend([0; 6]);
    a.extend(target.octets());
    eth(0x0806, &a)
}

fn rule(s: &str) -> EgressRule {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

/// The default policy with an allow list of `rules`.
fn allowing(rules: &[&str]) -> EgressPolicy {
    let mut p = EgressPolicy::new(GUEST, GW);
    p.allow = Some(rules.iter().map(|r| rule(r)).collect());
    p
}

fn dropped(reason: DropReason) -> Verdict {
    Verdict::Drop(reason)
}

#[test]
fn cidrs_parse_print_and_contain() {
    let net = cidr("198.51.100.0/24");
    assert_eq!(
        (net.addr(), net.prefix()),
        (Ipv4Addr::new(198, 51, 100, 0), 24)
    );
    assert!(net.contains(EXT));
    assert!(net.contains(Ipv4Addr::new(198, 51, 100, 255)));
    assert!(!net.contains(Ipv4Addr::new(198, 51, 101, 0)));
    assert_eq!(net.to_string(), "198.51.100.0/24");
    assert_eq!(cidr("198.51.100.7"), Cidr::host(EXT));
    assert!(!Cidr::host(EXT).contains(Ipv4Addr::new(198, 51, 100, 6)));
    assert!(cidr("0.0.0.0/0").contains(Ipv4Addr::BROADCAST));
    assert!(cidr("10.0.0.0/8").contains(Ipv4Addr::new(10, 255, 1, 1)));
    assert_eq!(
        Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 33),
        Err(CidrError::Prefix("33".into()))
    );
}

#[test]
fn bad_cidrs_are_refused_with_the_reason() {
    let cases = [
        ("198.51.100.1/24", "host bits set past the prefix: the network is 198.51.100.0/24, one host is 198.51.100.1/32"),
        ("1.2.3.4/33", "prefix length \"33\" is not a number from 0 to 32"),
        ("1.2.3.4/", "prefix length \"\" is not a number from 0 to 32"),
        ("1.2.3.4/+8", "prefix length \"+8\" is not a number from 0 to 32"),
        ("1.2.3", "\"1.2.3\" is not an IPv4 address"),
        ("010.0.0.1", "\"010.0.0.1\" is not an IPv4 address"),
        ("::1", "IPv6 is not supported: sandboxes are IPv4-only"),
        ("", "\"\" is not an IPv4 address"),
    ];
    for (input, msg) in cases {
        let err = input.parse::<Cidr>().unwrap_err();
        assert_eq!(err.to_string(), msg, "{input:?}");
    }
}

#[test]
fn rules_parse_and_print() {
    let r = rule("198.51.100.7:443");
    assert_eq!((r.net, r.ports), (Cidr::host(EXT), Some((443, 443))));
    assert_eq!(r.to_string(), "198.51.100.7/32:443");
    let r = rule("198.51.100.0/24:8000-8080");
    assert_eq!(
        (r.net, r.ports),
        (cidr("198.51.100.0/24"), Some((8000, 8080)))
    );
    assert_eq!(r.to_string(), "198.51.100.0/24:8000-8080");
    let r = rule("10.0.0.0/8");
    assert_eq!((r.net, r.ports), (cidr("10.0.0.0/8"), None));
    assert_eq!(rule("1.2.3.4:1-65535").ports, Some((1, 65535)));
}

#[test]
fn bad_rules_are_refused_with_one_line_errors() {
    let err = "198.51.100.7:0".parse::<EgressRule>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid --egress-allow \"198.51.100.7:0\": port \"0\" is not a number from 1 to 65535"
    );
    let err = "1.2.3.4:90-80".parse::<EgressRule>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid --egress-allow \"1.2.3.4:90-80\": port range 90-80 is empty"
    );
    let cases: [(&str, RuleReason); 8] = [
        ("1.2.3.4:", RuleReason::Port(String::new())),
        ("1.2.3.4:70000", RuleReason::Port("70000".into())),
        ("1.2.3.4:80-", RuleReason::Port(String::new())),
        ("1.2.3.4:http", RuleReason::Port("http".into())),
        ("fe80::1", CidrError::Ipv6.into()),
        ("[::1]:80", CidrError::Ipv6.into()),
        (
            "example.com:443",
            CidrError::Address("example.com".into()).into(),
        ),
        (
            "1.2.3.4/24:80",
            CidrError::HostBits(cidr("1.2.3.0/24"), Ipv4Addr::new(1, 2, 3, 4)).into(),
        ),
    ];
    for (input, reason) in cases {
        let err = input.parse::<EgressRule>().unwrap_err();
        assert_eq!((err.input.as_str(), err.reason), (input, reason));
    }
}

#[test]
fn arp_passes_only_with_the_guests_own_address() {
    let p = allowing(&[]);
    assert_eq!(
        p.check(&arp(1, GUEST, GW)),
        Verdict::Pass,
        "who-has gateway"
    );
    assert_eq!(p.check(&arp(2, GUEST, GW)), Verdict::Pass, "reply");
    assert_eq!(p.check(&arp(1, GUEST, GUEST)), Verdict::Pass, "gratuitous");
    assert_eq!(p.check(&arp(2, GW, GUEST)), dropped(DropReason::ArpSpoofed));
    assert_eq!(
        p.check(&arp(1, Ipv4Addr::UNSPECIFIED, GUEST)),
        dropped(DropReason::ArpSpoofed),
        "a probe claims no address the guest has"
    );
    let mut bad_op = arp(1, GUEST, GW);
    bad_op[IP + 7] = 3;
    let mut bad_plen = arp(1, GUEST, GW);
    bad_plen[IP + 5] = 16;
    let whole = arp(1, GUEST, GW);
    let short = &whole[..IP + 27];
    for f in [&bad_op[..], &bad_plen, short] {
        assert_eq!(p.check(f), dropped(DropReason::Malformed));
    }
}

#[test]
fn ipv6_and_other_ethertypes_are_dropped() {
    let p = EgressPolicy::new(GUEST, GW);
    assert_eq!(
        p.check(&eth(0x86dd, &[0x60; 60])),
        dropped(DropReason::Ipv6)
    );
    // An 802.1Q tag around IPv4, and an 802.3 length field (LLC).
    let ip = tcp(EXT, 40000, 80, SYN);
    assert_eq!(
        p.check(&eth(0x8100, &[&[0, 1][..], &ip[12..]].concat())),
        dropped(DropReason::Ethertype(0x8100))
    );
    assert_eq!(
        p.check(&eth(0x0030, &[0; 48])),
        dropped(DropReason::Ethertype(0x30))
    );
    for len in [0, 1, 13] {
        assert_eq!(
            p.check(&tcp(EXT, 1, 2, SYN)[..len]),
            dropped(DropReason::Malformed)
        );
    }
}

#[test]
fn a_spoofed_source_is_dropped_even_with_everything_allowed() {
    let p = allowing(&["0.0.0.0/0"]);
    let spoofed = ipv4(OTHER, EXT, 1, 0, &[8, 0, 0, 0, 0, 1, 0, 1]);
    assert_eq!(p.check(&spoofed), dropped(DropReason::Spoofed(OTHER)));
    let mut p = EgressPolicy::new(GUEST, GW);
    p.published = vec![(80, Proto::Tcp)];
    let spoofed = ipv4(GW, EXT, 6, 0, &tcp_hdr(80, 4000, ACK));
    assert_eq!(p.check(&spoofed), dropped(DropReason::Spoofed(GW)));
}

#[test]
fn without_an_allow_list_all_but_the_denied_and_the_gateway_passes() {
    let p = EgressPolicy::new(GUEST, GW);
    assert_eq!(p.deny, ALWAYS_DENIED.to_vec());
    assert_eq!(p.check(&tcp(EXT, 40000, 443, SYN)), Verdict::Pass);
    assert_eq!(p.check(&udp(OTHER, 40000, 53)), Verdict::Pass);
    assert_eq!(p.check(&icmp(EXT)), Verdict::Pass);
    for dst in [
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::new(224, 0, 0, 251),
        Ipv4Addr::BROADCAST,
        Ipv4Addr::UNSPECIFIED,
    ] {
        assert_eq!(
            p.check(&tcp(dst, 40000, 80, SYN)),
            dropped(DropReason::Denied(dst))
        );
    }
    assert_eq!(
        p.check(&tcp(GW, 40000, 22, SYN)),
        dropped(DropReason::Gateway)
    );
    assert_eq!(p.check(&icmp(GW)), dropped(DropReason::Gateway));
}

#[test]
fn an_allow_list_passes_only_its_nets_and_ports() {
    let p = allowing(&["198.51.100.0/24:8000-8080", "203.0.113.9"]);
    assert_eq!(p.check(&tcp(EXT, 40000, 8000, SYN)), Verdict::Pass);
    assert_eq!(p.check(&tcp(EXT, 40000, 8080, SYN)), Verdict::Pass);
    assert_eq!(p.check(&udp(EXT, 40000, 8042)), Verdict::Pass);
    let not = dropped(DropReason::NotAllowed(EXT));
    assert_eq!(p.check(&tcp(EXT, 40000, 7999, SYN)), not);
    assert_eq!(p.check(&tcp(EXT, 40000, 8081, SYN)), not);
    assert_eq!(
        p.check(&udp(EXT, 8000, 53)),
        not,
        "the destination port counts"
    );
    assert_eq!(
        p.check(&icmp(EXT)),
        not,
        "a ported rule is TCP and UDP only"
    );
    // A rule without ports takes any protocol.
    assert_eq!(p.check(&icmp(OTHER)), Verdict::Pass);
    assert_eq!(p.check(&tcp(OTHER, 40000, 1, SYN)), Verdict::Pass);
    assert_eq!(
        p.check(&ipv4(GUEST, OTHER, 47, 0, &[0; 8])),
        Verdict::Pass,
        "GRE"
    );
    let elsewhere = Ipv4Addr::new(192, 0, 2, 1);
    assert_eq!(
        p.check(&tcp(elsewhere, 40000, 8000, SYN)),
        dropped(DropReason::NotAllowed(elsewhere))
    );
    // An empty list allows nothing.
    let none = allowing(&[]);
    assert_eq!(none.check(&icmp(EXT)), not);
}

#[test]
fn deny_beats_allow() {
    let mut p = allowing(&["0.0.0.0/0", "169.254.169.254:80"]);
    p.deny.push(cidr("198.51.100.0/24"));
    assert_eq!(
        p.check(&tcp(EXT, 40000, 80, SYN)),
        dropped(DropReason::Denied(EXT))
    );
    let metadata = Ipv4Addr::new(169, 254, 169, 254);
    assert_eq!(
        p.check(&tcp(metadata, 40000, 80, SYN)),
        dropped(DropReason::Denied(metadata))
    );
    assert_eq!(p.check(&tcp(OTHER, 40000, 80, SYN)), Verdict::Pass);
}

#[test]
fn the_gateway_needs_a_rule_naming_it() {
    // Neither an allow-all nor the link's own network reaches it.
    let p = allowing(&["0.0.0.0/0", "10.89.0.0/30"]);
    assert_eq!(p.check(&udp(GW, 40000, 53)), dropped(DropReason::Gateway));
    let mut p = allowing(&["10.89.0.1:53"]);
    // The host's addresses (the gateway among them) in deny change nothing for it.
    p.deny.push(Cidr::host(GW));
    assert_eq!(p.check(&udp(GW, 40000, 53)), Verdict::Pass);
    assert_eq!(p.check(&tcp(GW, 40000, 53, SYN)), Verdict::Pass);
    assert_eq!(
        p.check(&tcp(GW, 40000, 22, SYN)),
        dropped(DropReason::Gateway)
    );
    assert_eq!(p.check(&icmp(GW)), dropped(DropReason::Gateway));
    let p = allowing(&["10.89.0.1/32"]);
    assert_eq!(p.check(&icmp(GW)), Verdict::Pass);
}

#[test]
fn replies_from_published_ports_pass_but_never_open_connections() {
    let mut p = allowing(&[]);
    p.published = vec![(80, Proto::Tcp), (53, Proto::Udp)];
    p.deny.push(Cidr::host(GW));
    // To the host proxy at the gateway, and to a client anywhere.
    assert_eq!(
        p.check(&tcp(GW, 80, 51234, ACK | SYN)),
        Verdict::Pass,
        "SYN-ACK"
    );
    assert_eq!(p.check(&tcp(GW, 80, 51234, PSH_ACK)), Verdict::Pass);
    assert_eq!(p.check(&tcp(OTHER, 80, 51234, ACK)), Verdict::Pass);
    assert_eq!(p.check(&tcp(OTHER, 80, 51234, 0x04)), Verdict::Pass, "RST");
    assert_eq!(p.check(&udp(OTHER, 53, 40000)), Verdict::Pass);
    // A SYN from a published port starts a connection: not a reply.
    assert_eq!(
        p.check(&tcp(OTHER, 80, 443, SYN)),
        dropped(DropReason::NotAllowed(OTHER))
    );
    assert_eq!(p.check(&tcp(GW, 80, 22, SYN)), dropped(DropReason::Gateway));
    // The protocol counts, and the deny list still wins.
    assert_eq!(
        p.check(&udp(OTHER, 80, 40000)),
        dropped(DropReason::NotAllowed(OTHER))
    );
    assert_eq!(
        p.check(&tcp(OTHER, 53, 40000, ACK)),
        dropped(DropReason::NotAllowed(OTHER))
    );
    let metadata = Ipv4Addr::new(169, 254, 169, 254);
    assert_eq!(
        p.check(&udp(metadata, 53, 40000)),
        dropped(DropReason::Denied(metadata))
    );
    // A packet to a published port is no reply either.
    assert_eq!(
        p.check(&tcp(OTHER, 40000, 80, ACK)),
        dropped(DropReason::NotAllowed(OTHER))
    );
}

#[test]
fn non_first_fragments_need_a_rule_without_ports() {
    let later = |dst| ipv4(GUEST, dst, 17, 0x00b9, &[0xaa; 40]);
    let p = allowing(&["198.51.100.0/24:53", "203.0.113.0/24"]);
    assert_eq!(p.check(&later(EXT)), dropped(DropReason::NotAllowed(EXT)));
    assert_eq!(p.check(&later(OTHER)), Verdict::Pass);
    // The first fragment (MF set, offset 0) is checked by its ports.
    let mut first = udp(EXT, 40000, 53);
    first[IP + 6] = 0x20;
    assert_eq!(p.check(&first), Verdict::Pass);
    let mut p = EgressPolicy::new(GUEST, GW);
    p.published = vec![(53, Proto::Udp)];
    assert_eq!(p.check(&later(EXT)), Verdict::Pass);
    assert_eq!(p.check(&later(GW)), dropped(DropReason::Gateway));
    let metadata = Ipv4Addr::new(169, 254, 169, 254);
    assert_eq!(
        p.check(&later(metadata)),
        dropped(DropReason::Denied(metadata))
    );
}

#[test]
fn broken_ipv4_headers_are_dropped() {
    let p = EgressPolicy::new(GUEST, GW);
    let good = tcp(EXT, 40000, 443, SYN);
    assert_eq!(p.check(&good), Verdict::Pass);
    let edit = |at: usize, byte: u8| {
        let mut f = good.clone();
        f[IP + at] = byte;
        f
    };
    let cases = [
        ("short header", good[..IP + 19].to_vec()),
        ("version 6", edit(0, 0x65)),
        ("IHL 4", edit(0, 0x44)),
        ("IHL past the packet", edit(0, 0x4f)),
        ("total past the frame", edit(2, 0x10)),
        ("total below the header", {
            let mut f = edit(2, 0);
            f[IP + 3] = 19;
            f
        }),
        (
            "TCP header cut",
            ipv4(GUEST, EXT, 6, 0, &tcp_hdr(1, 2, SYN)[..19]),
        ),
        (
            "tiny first fragment",
            ipv4(GUEST, EXT, 6, 0x2000, &tcp_hdr(1, 2, SYN)[..8]),
        ),
        (
            "UDP header cut",
            ipv4(GUEST, EXT, 17, 0, &[0, 53, 0, 53, 0]),
        ),
    ];
    for (what, f) in cases {
        assert_eq!(p.check(&f), dropped(DropReason::Malformed), "{what}");
    }
}

#[test]
fn padding_and_options_are_read_right() {
    let p = allowing(&["198.51.100.7:443"]);
    // Ethernet padding past the IP total length is ignored.
    let mut padded = tcp(EXT, 40000, 443, SYN);
    padded.extend([0xee; 20]);
    assert_eq!(p.check(&padded), Verdict::Pass);
    // A 4-byte option (router alert): the ports come after it.
    let l4 = tcp_hdr(40000, 443, SYN);
    let mut f = ipv4(GUEST, EXT, 6, 0, &[&[0x94, 4, 0, 0][..], &l4].concat());
    f[IP] = 0x46;
    assert_eq!(p.check(&f), Verdict::Pass);
    f[IP] = 0x45;
    assert_eq!(
        p.check(&f),
        dropped(DropReason::NotAllowed(EXT)),
        "read as ports 0x9404"
    );
}

#[test]
fn in_the_device_dropped_frames_are_returned_as_sent_and_counted() {
    let mut g = Guest::new();
    g.dev.set_egress(Some(allowing(&["198.51.100.7:443"])));
    let hdr = [0u8; VNET_HDR_LEN];
    let ok = [&hdr[..], &tcp(EXT, 40000, 443, SYN)].concat();
    let blocked = [&hdr[..], &tcp(EXT, 40000, 80, SYN)].concat();
    let v6 = [&hdr[..], &eth(0x86dd, &[0x60; 60])].concat();
    let heads = [
        g.send_split(&blocked, &[], DATA),
        g.send_split(&ok, &[VNET_HDR_LEN], DATA + 0x1000),
        g.send_split(&v6, &[], DATA + 0x2000),
    ];
    assert_eq!(g.wire.take_tx(), vec![ok.clone()]);
    // The guest sees every frame sent: a firewall drop, not an error.
    assert_eq!(g.txq.take_used(), heads.map(|h| (h, 0)).to_vec());
    let stats = g.stats();
    assert_eq!(
        (stats.tx_frames, stats.tx_filtered, stats.tx_dropped),
        (1, 2, 0)
    );
    assert_eq!(stats.tx_bytes, (ok.len() - VNET_HDR_LEN) as u64);
    // Without a policy, everything goes.
    g.dev.set_egress(None);
    g.send_split(&blocked, &[], DATA);
    assert_eq!(g.wire.take_tx(), vec![blocked]);
}
