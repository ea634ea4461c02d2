use std::process::{Command, Stdio};

use super::*;

fn rules(allow: Option<Vec<EgressRule>>) -> Rules {
    Rules {
        table: table_name("0123456789abcdef"),
        tap: "brig-01234567".into(),
        guest: Ipv4Addr::new(10, 89, 0, 2),
        allow,
    }
}

fn allow_list() -> Vec<EgressRule> {
    vec![
        EgressRule {
            net: "198.51.100.1/32".parse().unwrap(),
            ports: Some((8000, 8000)),
        },
        EgressRule {
            net: "192.0.2.0/24".parse().unwrap(),
            ports: Some((1000, 2000)),
        },
        EgressRule {
            net: "203.0.113.0/25".parse().unwrap(),
            ports: None,
        },
    ]
}

#[test]
fn default_rules_deny_the_host_metadata_and_other_sandboxes() {
    let c = rules(None).script();
    assert!(c.starts_with("add table inet brig_0123456789ab { flags owner; }"));
    assert!(c.contains("ip saddr != 10.89.0.2 drop"));
    assert!(c.contains("meta nfproto ipv6 drop"));
    assert!(c.contains("ip daddr 169.254.0.0/16 drop"));
    assert!(c.contains("ip daddr 10.89.0.0/16 drop"));
    assert!(c.contains("add rule inet brig_0123456789ab input iifname \"brig-01234567\" drop"));
    assert!(c.contains("masquerade"));
    // Without an allow-list nothing else is dropped from the TAP in forward.
    assert!(!c.contains("forward iifname \"brig-01234567\" drop"));
}

#[test]
fn an_allow_list_accepts_only_what_it_lists() {
    let c: Vec<String> = rules(Some(allow_list()))
        .rules()
        .into_iter()
        .map(|r| format!("{} {}", r.chain, r.text))
        .collect();
    let pos = |needle: &str| c.iter().position(|l| l.contains(needle)).unwrap();
    assert!(c[pos("198.51.100.1 meta l4proto tcp")].ends_with("th dport 8000 accept"));
    assert!(c[pos("198.51.100.1 meta l4proto udp")].ends_with("th dport 8000 accept"));
    assert!(c[pos("192.0.2.0/24 meta l4proto tcp")].ends_with("th dport 1000-2000 accept"));
    assert!(c[pos("203.0.113.0/25")].ends_with("ip daddr 203.0.113.0/25 accept"));
    let last_drop = pos("forward iifname \"brig-01234567\" drop");
    assert!(
        last_drop > pos("203.0.113.0/25"),
        "the final drop comes after the accepts"
    );
    assert!(
        pos("10.89.0.0/16 drop") < pos("198.51.100.1"),
        "deny beats allow"
    );
}

/// The expressions, as `nft --debug=netlink` (nftables 1.0.6) prints those it makes of
/// [`Rules::script`]'s rules: brig sends what nft would.
#[test]
fn expressions_are_those_nft_makes_of_the_same_rules() {
    let rendered: Vec<String> = rules(Some(allow_list()))
        .rules()
        .iter()
        .map(|r| {
            let mut s = format!("inet brig_0123456789ab {}\n", r.chain);
            for e in &r.exprs {
                s.push_str(&format!("  {}\n", e.render()));
            }
            s
        })
        .collect();
    let golden = include_str!("nft-debug-netlink.txt");
    let expected: Vec<&str> = golden.trim_end().split("\n\n").map(str::trim_end).collect();
    assert_eq!(rendered.len(), expected.len(), "{}", rendered.join("\n"));
    for (ours, nft) in rendered.iter().zip(&expected) {
        assert_eq!(ours.trim_end(), *nft);
    }
}

/// Runs `f` on a thread in a new, empty network namespace (so does every process it starts).
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: this thread shares no namespace-dependent state with others; it only moves
        // itself (and the processes it starts) into a new network namespace.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
            .expect("unshare(CLONE_NEWNET): this test runs as root, as scripts/test.sh does");
        f()
    })
    .join()
    .expect("netns thread")
}

fn nft(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft (nftables) is installed by scripts/setup.sh");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn chains(table: &str) -> String {
    CHAINS
        .iter()
        .map(|c| nft(&["list", "chain", "inet", table, c.name], None))
        .collect()
}

/// The kernel takes brig's batch, and holds the same table as nft makes of the same rules
/// in nft's language; the table goes when its socket closes; a second owner of the name is
/// refused in one line.
#[test]
fn the_kernel_holds_what_nft_would_make_and_drops_it_with_the_socket() {
    let r = rules(Some(allow_list()));
    let table = r.table.clone();
    let (ours, after, second) = in_new_netns({
        let r = r.clone();
        move || {
            let t = Table::start(&r).expect("batch sent");
            t.confirm().expect("the kernel applied the batch");
            t.confirm().expect("a second confirm is a no-op");
            let listed = chains(&r.table);
            let second = Table::start(&r)
                .and_then(|t| t.confirm())
                .map_err(|e| e.to_string());
            drop(t);
            (listed, nft(&["list", "tables"], None), second)
        }
    });
    let nfts = in_new_netns({
        let script = r.script().replace(" { flags owner; }", "");
        let table = table.clone();
        move || {
            nft(&["-f", "-"], Some(&script));
            chains(&table)
        }
    });
    assert!(
        ours.contains("masquerade") && ours.contains("udp dport 1000-2000"),
        "{ours}"
    );
    assert_eq!(ours, nfts);
    assert_eq!(after.trim(), "", "the table outlived its socket");
    let second = second.expect_err("a second table of that name");
    assert!(
        second.starts_with(
            "the kernel refused the sandbox's nftables rules (adding table inet brig_"
        ),
        "{second}"
    );
    assert!(!second.contains('\n'), "{second}");
}
