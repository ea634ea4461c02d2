//! Tests of `-p` parsing (docker's forms and messages) and of the ps/port renderings.

use std::net::Ipv6Addr;

use super::*;

const ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A mapping as `-p` makes it (also used by the proxy's tests).
pub(in crate::sandbox::network) fn map(
    host_ip: IpAddr,
    host_port: u16,
    guest_port: u16,
    proto: Proto,
) -> PortMapping {
    PortMapping {
        host_ip,
        host_port,
        host_port_end: None,
        guest_port,
        proto,
    }
}

fn bound(host_ip: IpAddr, host_port: u16, guest_port: u16, proto: Proto) -> BoundPort {
    BoundPort {
        host_ip,
        host_port,
        guest_port,
        proto,
    }
}

fn refused(spec: &str) -> String {
    parse_publish(spec).unwrap_err().to_string()
}

#[test]
fn the_short_forms_name_address_ports_and_proto() {
    use Proto::{Tcp, Udp};
    assert_eq!(parse_publish("8080:80").unwrap(), [map(ANY, 8080, 80, Tcp)]);
    assert_eq!(parse_publish("80").unwrap(), [map(ANY, 0, 80, Tcp)]);
    assert_eq!(
        parse_publish("127.0.0.1:5353:53/udp").unwrap(),
        [map(LOCAL, 5353, 53, Udp)]
    );
    assert_eq!(
        parse_publish("127.0.0.1::80").unwrap(),
        [map(LOCAL, 0, 80, Tcp)]
    );
    assert_eq!(parse_publish("53/UDP").unwrap(), [map(ANY, 0, 53, Udp)]);
    assert_eq!(parse_publish("80/").unwrap(), [map(ANY, 0, 80, Tcp)]);
    // Host port 0 is an ephemeral one, as docker takes it.
    assert_eq!(parse_publish("0:80").unwrap(), [map(ANY, 0, 80, Tcp)]);
}

#[test]
fn ipv6_addresses_with_or_without_brackets() {
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let want = [map(v6, 8080, 80, Proto::Tcp)];
    assert_eq!(parse_publish("[::1]:8080:80").unwrap(), want);
    assert_eq!(parse_publish("::1:8080:80").unwrap(), want);
    let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    assert_eq!(
        parse_publish("[::]::53/udp").unwrap(),
        [map(any6, 0, 53, Proto::Udp)]
    );
}

#[test]
fn ranges_map_port_by_port() {
    use Proto::Tcp;
    assert_eq!(
        parse_publish("8000-8001:80-81").unwrap(),
        [map(ANY, 8000, 80, Tcp), map(ANY, 8001, 81, Tcp)]
    );
    // A container range alone: each port on an ephemeral host port.
    assert_eq!(
        parse_publish("80-82").unwrap(),
        [
            map(ANY, 0, 80, Tcp),
            map(ANY, 0, 81, Tcp),
            map(ANY, 0, 82, Tcp)
        ]
    );
    // A host range for one container port: pick the first free one.
    assert_eq!(
        parse_publish("127.0.0.1:8000-8010:80").unwrap(),
        [PortMapping {
            host_port_end: Some(8010),
            ..map(LOCAL, 8000, 80, Tcp)
        }]
    );
    assert_eq!(parse_publish("65535").unwrap(), [map(ANY, 0, 65535, Tcp)]);
}

#[test]
fn the_long_form_is_the_short_one() {
    assert_eq!(
        parse_publish("published=8080,target=80,protocol=udp,mode=host").unwrap(),
        [map(ANY, 8080, 80, Proto::Udp)]
    );
    assert_eq!(
        parse_publish("target=80").unwrap(),
        [map(ANY, 0, 80, Proto::Tcp)]
    );
    assert_eq!(
        refused("target=80,oops"),
        "invalid -p \"target=80,oops\": invalid publish opts format (should be name=value but got 'oops')"
    );
}

#[test]
fn refusals_carry_dockers_messages() {
    assert_eq!(refused("x:80"), "invalid -p \"x:80\": invalid hostPort: x");
    assert_eq!(
        refused("8080:x"),
        "invalid -p \"8080:x\": invalid containerPort: x"
    );
    assert_eq!(
        refused("70000"),
        "invalid -p \"70000\": invalid containerPort: 70000"
    );
    assert_eq!(refused("0"), "invalid -p \"0\": invalid containerPort: 0");
    assert_eq!(
        refused("+80"),
        "invalid -p \"+80\": invalid containerPort: +80"
    );
    assert_eq!(
        refused("81-80"),
        "invalid -p \"81-80\": invalid containerPort: 81-80"
    );
    assert_eq!(
        refused("8001-8000:80"),
        "invalid -p \"8001-8000:80\": invalid hostPort: 8001-8000"
    );
    assert_eq!(
        refused("1.2.3:80:80"),
        "invalid -p \"1.2.3:80:80\": invalid IP address: 1.2.3"
    );
    assert_eq!(
        refused("[::1:80:80"),
        "invalid -p \"[::1:80:80\": invalid IP address: [::1"
    );
    assert_eq!(
        refused("80/icmp"),
        "invalid -p \"80/icmp\": invalid proto: icmp"
    );
    assert_eq!(
        refused("80/sctp"),
        "invalid -p \"80/sctp\": sctp is not supported: brig publishes tcp and udp ports only"
    );
    assert_eq!(refused(""), "invalid -p \"\": no port specified: <empty>");
    assert_eq!(
        refused("8080:"),
        "invalid -p \"8080:\": no port specified: 8080:<empty>"
    );
    assert_eq!(
        refused("8000-8002:80-81"),
        "invalid -p \"8000-8002:80-81\": invalid ranges specified for container and host Ports: 80-81 and 8000-8002"
    );
    assert_eq!(
        refused("8000:80-81"),
        "invalid -p \"8000:80-81\": invalid ranges specified for container and host Ports: 80-81 and 8000"
    );
}

#[test]
fn mappings_round_trip_through_json() {
    let m = PortMapping {
        host_port_end: Some(8010),
        ..map(IpAddr::V6(Ipv6Addr::LOCALHOST), 8000, 80, Proto::Udp)
    };
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(
        json,
        r#"{"host_ip":"::1","host_port":8000,"host_port_end":8010,"guest_port":80,"proto":"udp"}"#
    );
    assert_eq!(serde_json::from_str::<PortMapping>(&json).unwrap(), m);
    let b = bound(LOCAL, 8080, 80, Proto::Tcp);
    let json = serde_json::to_string(&b).unwrap();
    assert_eq!(
        json,
        r#"{"host_ip":"127.0.0.1","host_port":8080,"guest_port":80,"proto":"tcp"}"#
    );
    assert_eq!(serde_json::from_str::<BoundPort>(&json).unwrap(), b);
}

#[test]
fn ps_column_sorts_and_groups_as_docker() {
    use Proto::{Tcp, Udp};
    assert_eq!(format_ports(&[]), "");
    assert_eq!(
        format_ports(&[bound(LOCAL, 5353, 53, Udp), bound(ANY, 8080, 80, Tcp)]),
        "127.0.0.1:5353->53/udp, 0.0.0.0:8080->80/tcp"
    );
    // Same numbers group into ranges and come before the others.
    assert_eq!(
        format_ports(&[
            bound(ANY, 9000, 90, Tcp),
            bound(ANY, 8001, 8001, Tcp),
            bound(ANY, 8000, 8000, Tcp),
            bound(ANY, 8003, 8003, Tcp),
            bound(ANY, 8000, 8000, Udp),
        ]),
        "0.0.0.0:8000-8001->8000-8001/tcp, 0.0.0.0:8003->8003/tcp, \
         0.0.0.0:8000->8000/udp, 0.0.0.0:9000->90/tcp"
    );
    let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    assert_eq!(
        format_ports(&[bound(any6, 8080, 80, Tcp), bound(ANY, 8080, 80, Tcp)]),
        "0.0.0.0:8080->80/tcp, [::]:8080->80/tcp"
    );
    assert_eq!(format_ports(&[bound(any6, 80, 80, Tcp)]), "[::]:80->80/tcp");
}

#[test]
fn port_lines_in_natural_order() {
    use Proto::{Tcp, Udp};
    let ports = [
        bound(ANY, 10080, 1000, Tcp),
        bound(LOCAL, 5353, 53, Udp),
        bound(ANY, 8080, 80, Tcp),
        bound(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 8080, 80, Tcp),
    ];
    assert_eq!(
        port_lines(&ports),
        [
            "53/udp -> 127.0.0.1:5353",
            "80/tcp -> 0.0.0.0:8080",
            "80/tcp -> [::]:8080",
            "1000/tcp -> 0.0.0.0:10080",
        ]
    );
    assert_eq!(
        lookup_port(&ports, "80", "web").unwrap(),
        ["0.0.0.0:8080", "[::]:8080"]
    );
    assert_eq!(
        lookup_port(&ports, "53/udp", "web").unwrap(),
        ["127.0.0.1:5353"]
    );
    assert_eq!(
        lookup_port(&ports, "53", "web").unwrap_err().to_string(),
        "No public port '53' published for web"
    );
    assert_eq!(
        lookup_port(&ports, "x/tcp", "web").unwrap_err().to_string(),
        "invalid port (x)"
    );
}

#[test]
fn natural_order_compares_numbers_as_numbers() {
    let mut v = vec!["a10", "a9", "a09", "b", "a", "9", "10"];
    v.sort_by(|a, b| natural_cmp(a, b));
    assert_eq!(v, ["9", "10", "a", "a9", "a09", "a10", "b"]);
}
