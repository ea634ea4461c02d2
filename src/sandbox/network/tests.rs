use super::*;

fn flags() -> NetworkFlags {
    NetworkFlags::default()
}

fn err(f: NetworkFlags) -> String {
    NetworkOptions::parse(&f).unwrap_err().to_string()
}

#[test]
fn bridge_is_the_default_and_none_means_none() {
    assert_eq!(
        NetworkOptions::parse(&flags()).unwrap().mode,
        NetworkMode::Bridge
    );
    let none = NetworkOptions::parse(&NetworkFlags {
        network: Some("none".into()),
        ..flags()
    })
    .unwrap();
    assert_eq!(none.mode, NetworkMode::None);
    assert_eq!(
        err(NetworkFlags {
            network: Some("host".into()),
            ..flags()
        }),
        "--network host is not supported: a microVM has its own kernel and network stack (use -p to publish ports)"
    );
    assert!(err(NetworkFlags {
        network: Some("mynet".into()),
        ..flags()
    })
    .starts_with("network mynet not found"));
}

#[test]
fn flags_that_need_a_network_are_refused_with_none() {
    let e = err(NetworkFlags {
        network: Some("none".into()),
        publish: vec!["8080:80".into()],
        ..flags()
    });
    assert_eq!(
        e,
        "-p needs a network: it cannot be used with --network none"
    );
    let e = err(NetworkFlags {
        network: Some("none".into()),
        egress_allow: vec!["192.0.2.1".into()],
        ..flags()
    });
    assert!(e.starts_with("--egress-allow needs a network"), "{e}");
}

#[test]
fn dns_add_host_and_egress_are_checked() {
    assert!(err(NetworkFlags {
        dns: vec!["not-an-ip".into()],
        ..flags()
    })
    .contains("not-an-ip is not an IPv4 address"));
    assert!(err(NetworkFlags {
        add_hosts: vec!["nocolon".into()],
        ..flags()
    })
    .contains("bad format for add-host"));
    assert!(err(NetworkFlags {
        add_hosts: vec!["db:300.1.1.1".into()],
        ..flags()
    })
    .contains("invalid IP address in add-host"));
    assert!(err(NetworkFlags {
        egress_allow: vec!["300.0.0.0/8".into()],
        ..flags()
    })
    .contains("300.0.0.0/8"));
    let ok = NetworkOptions::parse(&NetworkFlags {
        add_hosts: vec!["db:192.0.2.9".into(), "cache=192.0.2.10".into()],
        egress_allow: vec!["198.51.100.1/32:8000".into()],
        dns: vec!["198.51.100.1".into()],
        ..flags()
    })
    .unwrap();
    assert_eq!(
        ok.add_hosts[1],
        ("cache".to_string(), "192.0.2.10".to_string())
    );
    let rule = parse_rule("198.51.100.1/32:8000-8010").unwrap();
    assert_eq!(rule.to_string(), "198.51.100.1/32:8000-8010");
    assert_eq!(rule.ports, Some((8000, 8010)));
}

#[test]
fn etc_files_follow_docker() {
    let hosts = hosts_file(
        Ipv4Addr::new(10, 89, 0, 2),
        "abc123",
        &[("db".into(), "192.0.2.9".into())],
    );
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
    assert!(hosts.contains("192.0.2.9\tdb\n"));
    assert!(hosts.ends_with("10.89.0.2\tabc123\n"));
    let host =
        "nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch corp.example\noptions ndots:2\n";
    let opts = NetworkOptions::default();
    assert_eq!(
        resolv_conf(&opts, host),
        "nameserver 192.0.2.53\nsearch corp.example\noptions ndots:2\n"
    );
    let opts = NetworkOptions {
        dns: vec![Ipv4Addr::new(198, 51, 100, 1)],
        dns_search: vec!["a.example".into(), "b.example".into()],
        ..Default::default()
    };
    assert_eq!(
        resolv_conf(&opts, host),
        "nameserver 198.51.100.1\nsearch a.example b.example\noptions ndots:2\n"
    );
}

#[test]
fn mac_is_local_unicast_from_the_id() {
    let mac = mac_of("0123456789abcdef");
    assert_eq!(mac, [0x02, 0x01, 0x23, 0x45, 0x67, 0x89]);
    assert_eq!(mac[0] & 1, 0);
}
