//! Sandbox networking end to end: `--network none`, NAT to an outside host, published
//! ports, the default egress policy, `--egress-allow`, cleanup, concurrent addresses.
//! Needs KVM: runs under scripts/with-kvm where this host has none usable (see
//! common/kvm.rs), and as root there.
//!
//! The "outside" is a network namespace, `ext`, that setup creates inside the with-kvm VM
//! (L1): a veth `up0` (198.51.100.254/24, L1's default route) to ext's `eth0`
//! (198.51.100.1/24 and .3/24, and 169.254.169.254/32 playing the cloud metadata service),
//! with servers started by setup. Nothing is ever sent outside L1.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::fixture::{check, eventually, sh, stderr, stdout, Fixture};
use common::images;
use common::kvm::{run_tests_with, trial, Limits};
use common::outside::{ext_namespace_script, EXT, METADATA, UPLINK};
use common::procs;

const EXT_OTHER: &str = "198.51.100.3";
/// A service of the host itself (L1), on every address.
const HOST_PORT: &str = "7000";

use images::layouts_dir;

fn prepare() {
    images::fresh_busybox_layouts();
}

fn fixture() -> &'static Fixture {
    Fixture::shared("net", &[("bb", layouts_dir().join("bb"))])
}

/// The outside world and a host service, once per test binary (L1 is this binary's own).
fn setup() {
    // ext's "who is asking" service: the peer address it sees, as an HTTP answer.
    std::fs::create_dir_all("/run/brig-net-www").unwrap();
    let peer = "/run/brig-net-www/peer.sh";
    std::fs::write(
        peer,
        "#!/bin/sh\nprintf 'HTTP/1.0 200 OK\\r\\n\\r\\n%s\\n' \"$SOCAT_PEERADDR\"\n",
    )
    .unwrap();
    std::fs::set_permissions(peer, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    sh(&format!(
        "set -e
        {ext}
        mkdir -p /run/brig-net-www
        echo ext-hello > /run/brig-net-www/index.html
        head -c 4194304 /dev/urandom > /run/brig-net-www/big.bin
        for port in 8000 9000; do
            ip netns exec ext busybox httpd -p $port -h /run/brig-net-www
        done
        ip netns exec ext busybox httpd -p {METADATA}:80 -h /run/brig-net-www
        busybox httpd -p {HOST_PORT} -h /run/brig-net-www
        ip netns exec ext socat TCP-LISTEN:8001,fork,reuseaddr EXEC:/run/brig-net-www/peer.sh </dev/null >/dev/null 2>&1 &
        ",
        ext = ext_namespace_script(&[EXT_OTHER]),
    ));
    // The servers answer (so that a blocked connection later is the policy, not a dead
    // server).
    let probe = |ns: &str, url: &str| {
        let cmd = format!("{ns} busybox wget -q -O - {url}");
        eventually(20, &cmd, || {
            Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap();
    };
    probe("", &format!("http://{EXT}:8000/"));
    probe("", &format!("http://{EXT_OTHER}:9000/"));
    probe("", &format!("http://{METADATA}/"));
    probe("", &format!("http://{EXT}:8001/"));
    probe(
        "ip netns exec ext",
        &format!("http://{UPLINK}:{HOST_PORT}/"),
    );
    fixture();
}

impl Fixture {
    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["run", "--rm", "--timeout", "600"];
        all.extend_from_slice(args);
        self.brig(&all)
    }
}

/// A shell script for the guest that fetches `http://HOST:PORT/` from each target and prints
/// `REACHED HOST:PORT` when it came within 3 s, `BLOCKED HOST:PORT` when not. (Debian's
/// static busybox wget crashes with `-T`, hence `timeout`; nc half-closes, which Debian 12's
/// passt does not pass on, so a reachable server would look blocked through passt.)
fn probe_script(targets: &[String]) -> String {
    let mut s = String::new();
    for t in targets {
        s.push_str(&format!(
            "if timeout 3 wget -q -O /dev/null http://{t}/ 2>/dev/null; then echo REACHED {t}; else echo BLOCKED {t}; fi; "
        ));
    }
    s
}

fn reached(out: &Output, target: &str) -> bool {
    stdout(out)
        .lines()
        .any(|l| l == format!("REACHED {target}"))
}

fn blocked(out: &Output, target: &str) -> bool {
    stdout(out)
        .lines()
        .any(|l| l == format!("BLOCKED {target}"))
}

/// What brig set up on the host for sandboxes: nft tables and TAPs.
fn host_leftovers() -> Vec<String> {
    let mut left: Vec<String> = sh("nft list tables")
        .lines()
        .filter(|l| l.contains("brig_"))
        .map(str::to_string)
        .collect();
    left.extend(
        sh("ip -o link show")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter(|n| n.starts_with("brig"))
            .map(str::to_string),
    );
    left
}

fn inspect_field(f: &Fixture, name: &str, field: &str) -> Result<String, String> {
    let out = f.brig(&["inspect", name]);
    check(out.status.success(), "inspect", &out)?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v[0]["NetworkSettings"][field]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn lo_is_up_and_local_servers_work() -> Result<(), String> {
    let out = fixture().run(&[
        "bb",
        "sh",
        "-c",
        "httpd -p 127.0.0.1:8080 -h /etc && wget -q -O - http://127.0.0.1:8080/passwd | head -n 1",
    ]);
    check(
        out.status.success() && stdout(&out).starts_with("root:"),
        "a server on 127.0.0.1 answers",
        &out,
    )
}

fn network_none_has_only_lo() -> Result<(), String> {
    let out = fixture().run(&[
        "--network",
        "none",
        "bb",
        "sh",
        "-c",
        "ls /sys/class/net; nslookup example.com >/dev/null 2>&1 && echo RESOLVED || echo NO-DNS",
    ]);
    check(
        out.status.success() && stdout(&out) == "lo\nNO-DNS\n",
        "only lo, no name resolution",
        &out,
    )?;
    let out = fixture().run(&["--network=none", "bb", "cat", "/proc/net/dev"]);
    check(
        out.status.success() && !stdout(&out).contains("eth0"),
        "--network=none: no eth0",
        &out,
    )
}

fn guest_reaches_the_outside_through_nat() -> Result<(), String> {
    let out = fixture().run(&[
        "--dns",
        EXT,
        "--dns-search",
        "example.test",
        "--add-host",
        "db:192.0.2.9",
        "-h",
        "web1",
        "bb",
        "sh",
        "-c",
        &format!(
            "wget -q -O - http://{EXT}:8001/; cat /etc/resolv.conf /etc/hosts /etc/hostname; ip route"
        ),
    ]);
    check(out.status.success(), "run", &out)?;
    let text = stdout(&out);
    check(
        text.lines().next() == Some(UPLINK),
        "ext sees the host's uplink address (masquerade)",
        &out,
    )?;
    check(
        text.contains(&format!("nameserver {EXT}\n")) && text.contains("search example.test\n"),
        "resolv.conf from --dns and --dns-search",
        &out,
    )?;
    check(
        text.contains("192.0.2.9\tdb\n") && text.contains("\tweb1\n") && text.contains("web1\n"),
        "hosts and hostname",
        &out,
    )?;
    check(
        text.contains("default via 10.89."),
        "a default route through the host",
        &out,
    )
}

fn http_get(addr: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

fn published_ports_are_reachable() -> Result<(), String> {
    let f = fixture();
    let out = f.brig(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        "-p",
        "127.0.0.1:8081:80",
        "bb",
        "sh",
        "-c",
        "mkdir -p /www && echo guest-hello > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    check(out.status.success(), "run -d -p", &out)?;
    let result = (|| {
        eventually(60, "the published port answers on 127.0.0.1", || {
            http_get("127.0.0.1:8080").is_ok_and(|b| b.contains("guest-hello"))
        })?;
        let body = http_get("127.0.0.1:8081")?;
        if !body.contains("guest-hello") {
            return Err(format!("127.0.0.1:8081: {body:?}"));
        }
        let out = Command::new("ip")
            .args(["netns", "exec", "ext", "sh", "-c"])
            .arg(format!(
                "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 10 {UPLINK} 8080"
            ))
            .output()
            .map_err(|e| e.to_string())?;
        check(
            stdout(&out).ends_with("guest-hello\n"),
            "reachable from another host (ext)",
            &out,
        )?;
        let out = f.brig(&["port", "web"]);
        check(
            stdout(&out) == "80/tcp -> 0.0.0.0:8080\n80/tcp -> 127.0.0.1:8081\n",
            "brig port",
            &out,
        )?;
        let out = f.brig(&["port", "web", "80"]);
        check(
            stdout(&out) == "0.0.0.0:8080\n127.0.0.1:8081\n",
            "brig port NAME 80",
            &out,
        )?;
        let out = f.brig(&["ps"]);
        check(
            stdout(&out).contains("0.0.0.0:8080->80/tcp, 127.0.0.1:8081->80/tcp"),
            "ps PORTS",
            &out,
        )?;
        let out = f.brig(&["stats", "--no-stream", "web"]);
        check(
            out.status.success()
                && stdout(&out).contains("NET I/O")
                && !stdout(&out).contains(" 0B / 0B "),
            "stats NET I/O counts the traffic",
            &out,
        )?;
        // A second sandbox cannot take a port in use: one line, 125, nothing left.
        let out = f.brig(&["run", "--rm", "-p", "8080:80", "bb", "true"]);
        check(
            out.status.code() == Some(125)
                && stderr(&out).lines().count() == 1
                && stderr(&out).contains("8080"),
            "a port in use is one line and 125",
            &out,
        )
    })();
    let out = f.brig(&["rm", "-f", "web"]);
    check(out.status.success(), "rm -f", &out)?;
    result?;
    if TcpStream::connect("127.0.0.1:8080").is_ok() {
        return Err("the published port is still open after rm".into());
    }
    Ok(())
}

fn default_policy_keeps_the_host_metadata_and_neighbours_out() -> Result<(), String> {
    let f = fixture();
    let out = f.brig(&[
        "run",
        "-d",
        "--name",
        "neighbour",
        "bb",
        "sh",
        "-c",
        "exec httpd -f -p 80 -h /etc",
    ]);
    check(out.status.success(), "neighbour", &out)?;
    let result = (|| {
        let neighbour = inspect_field(f, "neighbour", "address")?;
        let urls = [
            format!("{EXT}:8000"),
            format!("{UPLINK}:{HOST_PORT}"),
            format!("{METADATA}:80"),
            format!("{neighbour}:80"),
            format!("$gw:{HOST_PORT}"),
        ];
        let script = format!(
            "set -- $(ip route show default); gw=$3; {}",
            probe_script(&urls)
        );
        let out = f.run(&["bb", "sh", "-c", &script]);
        check(out.status.success(), "probe run", &out)?;
        check(reached(&out, &urls[0]), "the outside is reachable", &out)?;
        for u in &urls[1..4] {
            check(blocked(&out, u), &format!("{u} is blocked"), &out)?;
        }
        check(
            stdout(&out)
                .lines()
                .any(|l| l.starts_with("BLOCKED 10.89.") && l.ends_with(&format!(":{HOST_PORT}"))),
            "the sandbox's own gateway (the host) is blocked",
            &out,
        )?;
        // No IPv6 on the host's side of any sandbox link: no fe80:: to reach the host by.
        let tap = inspect_field(f, "neighbour", "interface")?;
        let v6 = sh(&format!("ip -6 addr show dev {tap}"));
        if !v6.trim().is_empty() {
            return Err(format!("{tap} has IPv6 addresses: {v6}"));
        }
        Ok(())
    })();
    let out = f.brig(&["rm", "-f", "neighbour"]);
    check(out.status.success(), "rm -f", &out)?;
    result
}

fn egress_allow_allows_exactly_what_it_lists() -> Result<(), String> {
    let f = fixture();
    let urls = [
        format!("{EXT}:8000"),
        format!("{EXT}:9000"),
        format!("{EXT_OTHER}:8000"),
        format!("{UPLINK}:{HOST_PORT}"),
    ];
    let out = f.run(&[
        "--egress-allow",
        &format!("{EXT}/32:8000"),
        "bb",
        "sh",
        "-c",
        &probe_script(&urls),
    ]);
    check(out.status.success(), "run", &out)?;
    check(reached(&out, &urls[0]), "the listed address and port", &out)?;
    for u in &urls[1..] {
        check(blocked(&out, u), &format!("{u} is blocked"), &out)?;
    }
    let out = f.brig(&["run", "--rm", "--egress-allow", "10.0.0.0/33", "bb", "true"]);
    check(
        out.status.code() == Some(125) && stderr(&out).lines().count() == 1,
        "an invalid CIDR is one line and 125",
        &out,
    )?;
    let out = f.brig(&["run", "--rm", "--network", "none", "-p", "80", "bb", "true"]);
    check(
        out.status.code() == Some(125) && stderr(&out).contains("--network none"),
        "-p with --network none",
        &out,
    )
}

fn nothing_is_left_on_the_host() -> Result<(), String> {
    let f = fixture();
    // --rm, then rm, then a VMM killed with SIGKILL. The first with its own HOME: nothing
    // of brig's (nft's interactive history, say) may land in the user's home.
    let home = tempfile::tempdir().map_err(|e| e.to_string())?;
    // The guest kernel stays where it is (its default place is under HOME).
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or("neither XDG_CACHE_HOME nor HOME is set")?;
    let out = procs::output(
        f.cmd(&["run", "--rm", "--timeout", "600", "bb", "true"])
            .env("HOME", home.path())
            .env("XDG_CACHE_HOME", cache),
    );
    check(out.status.success(), "--rm run", &out)?;
    let in_home: Vec<_> = std::fs::read_dir(home.path())
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    if !in_home.is_empty() {
        return Err(format!("a run left {in_home:?} in the user's HOME"));
    }
    let out = f.brig(&["run", "-d", "--name", "victim", "bb", "sleep", "600"]);
    check(out.status.success(), "run -d", &out)?;
    let left = host_leftovers();
    if left.is_empty() {
        return Err("a running sandbox has no TAP or table: the check would prove nothing".into());
    }
    let pid = f.brig(&["inspect", "victim"]);
    let v: serde_json::Value = serde_json::from_slice(&pid.stdout).map_err(|e| e.to_string())?;
    let pid = v[0]["State"]["Pid"].as_u64().unwrap_or(0);
    if pid == 0 {
        return Err("no VMM pid".into());
    }
    sh(&format!("kill -9 {pid}"));
    eventually(20, "the killed VMM's TAP and table are gone", || {
        host_leftovers().is_empty()
    })?;
    let out = f.brig(&["rm", "victim"]);
    check(out.status.success(), "rm of the killed sandbox", &out)?;
    let out = f.brig(&["run", "-d", "--name", "other", "bb", "sleep", "600"]);
    check(out.status.success(), "run -d", &out)?;
    let out = f.brig(&["rm", "-f", "other"]);
    check(out.status.success(), "rm -f", &out)?;
    eventually(20, "nothing left after rm -f", || {
        host_leftovers().is_empty()
    })?;
    let leases: Vec<_> = std::fs::read_dir(f.runtime.join("leases"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|n| n != "lock")
                .collect()
        })
        .unwrap_or_default();
    if !leases.is_empty() {
        return Err(format!("address leases left: {leases:?}"));
    }
    Ok(())
}

fn concurrent_sandboxes_get_distinct_addresses() -> Result<(), String> {
    let f = fixture();
    let names: Vec<String> = (0..10).map(|i| format!("many{i}")).collect();
    let result = (|| {
        let spawned: Vec<_> = names
            .iter()
            .map(|n| f.spawn(&["run", "-d", "--name", n, "bb", "sleep", "600"]))
            .collect::<Result<_, _>>()?;
        for s in spawned {
            let out = s.output();
            check(out.status.success(), "run -d", &out)?;
        }
        let mut addrs = Vec::new();
        for n in &names {
            addrs.push(inspect_field(f, n, "address")?);
        }
        let mut unique = addrs.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != names.len() || addrs.iter().any(|a| !a.starts_with("10.89.")) {
            return Err(format!("addresses: {addrs:?}"));
        }
        // They were restored from one template (made with its network device unwired), and
        // each guest has its own MAC address all the same: the agent sets the sandbox's.
        let mut macs = Vec::new();
        for n in &names {
            let out = f.brig(&["inspect", n]);
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            check(
                v[0]["State"]["StartPath"] == "template",
                &format!("{n} was restored from a template"),
                &out,
            )?;
            let out = f.brig(&["exec", n, "cat", "/sys/class/net/eth0/address"]);
            check(out.status.success(), "exec: eth0's address", &out)?;
            macs.push(stdout(&out).trim().to_string());
        }
        let mut unique = macs.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != names.len() || macs.iter().any(|m| m == "02:00:00:00:00:01") {
            return Err(format!("MAC addresses: {macs:?}"));
        }
        Ok(())
    })();
    let mut args = vec!["rm", "-f"];
    args.extend(names.iter().map(String::as_str));
    let out = f.brig(&args);
    check(out.status.success(), "rm -f", &out)?;
    result?;
    eventually(30, "nothing left after removing ten", || {
        host_leftovers().is_empty()
    })
}

/// The rootless user's sandbox: brig run by `nobody` (uid 65534) with its own store, runtime
/// directory and a readable copy of the guest kernel; networking through passt.
struct Rootless {
    base: PathBuf,
    kernel: PathBuf,
}

const NOBODY: &str = "65534";

impl Rootless {
    fn get() -> &'static Rootless {
        static R: std::sync::OnceLock<Rootless> = std::sync::OnceLock::new();
        R.get_or_init(|| {
            let base = PathBuf::from("/run/brig-net-rootless");
            let _ = std::fs::remove_dir_all(&base);
            std::fs::create_dir_all(base.join("home")).unwrap();
            std::fs::create_dir_all(base.join("run")).unwrap();
            let info = fixture().brig(&["info"]);
            let kernel = stdout(&info)
                .lines()
                .find_map(|l| l.strip_prefix("kernel:"))
                .map(|k| PathBuf::from(k.trim()))
                .expect("brig info names the kernel");
            sh(&format!(
                "set -e
                cp {kernel} {base}/vmlinux
                cp -r {layout} {base}/bb
                chown -R {NOBODY}:{NOBODY} {base}
                chmod 666 /dev/kvm",
                kernel = kernel.display(),
                base = base.display(),
                layout = layouts_dir().join("bb").display(),
            ));
            let r = Rootless {
                kernel: base.join("vmlinux"),
                base,
            };
            let layout = r.base.join("bb");
            let out = r.brig(&["import", "-q", layout.to_str().unwrap(), "bb"]);
            assert!(out.status.success(), "rootless import: {}", stderr(&out));
            r
        })
    }

    /// `brig ARGS` as `nobody`.
    fn brig(&self, args: &[&str]) -> Output {
        let brig = common::kvm::brig_cmd(&[]);
        let mut c = Command::new("setpriv");
        c.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
            .arg(brig.get_program())
            .args(args)
            .env("HOME", &self.base)
            .env("BRIG_HOME", self.base.join("home"))
            .env("BRIG_RUNTIME_DIR", self.base.join("run"))
            .env("XDG_RUNTIME_DIR", &self.base)
            .env("BRIG_KERNEL", &self.kernel)
            .stdin(std::process::Stdio::null());
        common::procs::output(common::procs::mark(&mut c))
    }
}

fn rootless_bridge_works_through_passt() -> Result<(), String> {
    let r = Rootless::get();
    let out = r.brig(&["info"]);
    check(
        stdout(&out).contains("network:       passt"),
        "brig info names passt for a rootless user",
        &out,
    )?;
    let targets = [
        format!("{EXT}:8000"),
        format!("{UPLINK}:{HOST_PORT}"),
        format!("{METADATA}:80"),
    ];
    // passt maps the gateway to the host's loopback: the VMM's filter must keep the guest
    // off it.
    // Then 4 MiB from ext: passt's frames towards the guest are up to its link MTU (65520)
    // long, each filling one of the guest's receive buffers.
    let script = format!(
        "wget -q -O - http://{EXT}:8001/; {} set -- $(ip route show default); {}
        echo MTU $(cat /sys/class/net/eth0/mtu)
        echo SUM $(wget -q -O - http://{EXT}:8000/big.bin | md5sum)",
        probe_script(&targets),
        probe_script(&[format!("$3:{HOST_PORT}")])
    );
    let out = r.brig(&["run", "--rm", "--timeout", "600", "bb", "sh", "-c", &script]);
    check(out.status.success(), "rootless run", &out)?;
    check(
        stdout(&out).lines().any(|l| l == "MTU 65520"),
        "the rootless link has passt's MTU",
        &out,
    )?;
    let want = Command::new("md5sum")
        .arg("/run/brig-net-www/big.bin")
        .output()
        .map_err(|e| format!("md5sum: {e}"))?;
    let want = String::from_utf8_lossy(&want.stdout);
    let want = want.split_whitespace().next().unwrap_or("?");
    check(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with(&format!("SUM {want} "))),
        "4 MiB from ext arrive whole through passt",
        &out,
    )?;
    check(
        stdout(&out).lines().next() == Some(UPLINK),
        "ext sees the host's address (passt's own sockets)",
        &out,
    )?;
    check(reached(&out, &targets[0]), "the outside is reachable", &out)?;
    for t in &targets[1..] {
        check(
            blocked(&out, t),
            &format!("{t} is blocked (the VMM's filter)"),
            &out,
        )?;
    }
    check(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with("BLOCKED 10.89.") && l.ends_with(&format!(":{HOST_PORT}"))),
        "the gateway (passt's way to the host's loopback) is blocked",
        &out,
    )?;
    let out = r.brig(&[
        "run",
        "--rm",
        "--timeout",
        "600",
        "--egress-allow",
        &format!("{EXT}/32:9000"),
        "bb",
        "sh",
        "-c",
        &probe_script(&[format!("{EXT}:8000"), format!("{EXT}:9000")]),
    ]);
    check(
        out.status.success()
            && blocked(&out, &format!("{EXT}:8000"))
            && reached(&out, &format!("{EXT}:9000")),
        "--egress-allow holds through passt",
        &out,
    )?;
    let out = r.brig(&[
        "run",
        "-d",
        "--name",
        "rl-web",
        "-p",
        "8090:80",
        "bb",
        "sh",
        "-c",
        "mkdir -p /www && echo rootless-hello > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    check(out.status.success(), "rootless run -d -p", &out)?;
    let result = eventually(60, "the rootless published port answers", || {
        http_get("127.0.0.1:8090").is_ok_and(|b| b.contains("rootless-hello"))
    });
    let out = r.brig(&["rm", "-f", "rl-web"]);
    check(out.status.success(), "rm -f", &out)?;
    result
}

/// The comm names of the threads of `pid` and of its children (a jailed VMM is a child of
/// the process `State.Pid` may name).
fn thread_names(pid: u64) -> Vec<String> {
    let mut pids = vec![pid.to_string()];
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    pids.extend(
        children
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string),
    );
    pids.iter()
        .flat_map(|p| {
            std::fs::read_dir(format!("/proc/{p}/task"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}

/// By default brig's own device moves a TAP sandbox's frames; with `BRIG_VHOST_NET=on` (and
/// /dev/vhost-net, loaded in L1) the kernel does: inspect says which, only then does the VMM
/// process have the kernel's vhost worker thread, and either way 4 MiB go each way intact
/// (offloaded, 64 KiB frames), for vhost-net also after a checkpoint's resume.
fn frames_move_through_vhost_net() -> Result<(), String> {
    let f = fixture();
    let want = sh("md5sum /run/brig-net-www/big.bin | cut -d' ' -f1");
    let both_ways = format!(
        "wget -q -O - http://{EXT}:8000/big.bin | md5sum | cut -d' ' -f1; \
         head -c 4194304 /dev/urandom > /tmp/up; md5sum /tmp/up | cut -d' ' -f1; \
         nc {EXT} 8002 < /tmp/up"
    );
    for (vhost, name) in [(false, "userspace"), (true, "vhost")] {
        let upload = format!("/run/brig-net-www/up-{name}.bin");
        sh(&format!(
            "rm -f {upload}; ip netns exec ext socat -u TCP-LISTEN:8002,reuseaddr OPEN:{upload},creat </dev/null >/dev/null 2>&1 &"
        ));
        let mut cmd = f.cmd(&["run", "-d", "--name", name, "bb", "sleep", "600"]);
        if vhost {
            cmd.env("BRIG_VHOST_NET", "on");
        }
        let out = procs::output(&mut cmd);
        check(out.status.success(), "run -d", &out)?;
        let result = (|| {
            let out = f.brig(&["inspect", name]);
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            let said = v[0]["NetworkSettings"]["vhost_net"].as_bool();
            let pid = v[0]["State"]["Pid"].as_u64().unwrap_or(0);
            let workers = thread_names(pid)
                .into_iter()
                .filter(|c| c.starts_with("vhost-"))
                .count();
            if said != Some(vhost) || (workers > 0) != vhost {
                return Err(format!(
                    "{name}: inspect says vhost_net {said:?}, VMM {pid} has {workers} vhost worker thread(s)"
                ));
            }
            let out = f.brig(&["exec", name, "sh", "-c", &both_ways]);
            check(out.status.success(), "4 MiB down and up", &out)?;
            let text = stdout(&out);
            let mut lines = text.lines();
            check(
                lines.next() == Some(want.trim()),
                "the download is intact",
                &out,
            )?;
            let sent = lines.next().unwrap_or_default().to_string();
            eventually(30, "the upload arrives whole", || {
                sh(&format!("md5sum {upload} 2>/dev/null | cut -d' ' -f1")).trim() == sent
            })
            .map_err(|e| format!("{name}: {e} (guest sent {sent})"))?;
            if !vhost {
                return Ok(());
            }
            // A checkpoint takes the queues back from the kernel where it left them: the
            // resumed sandbox's network carries on (a new TAP, the same device state).
            let out = f.brig(&["checkpoint", "create", name, "c1"]);
            check(out.status.success(), "checkpoint create", &out)?;
            let mut start = f.cmd(&["start", "--checkpoint", "c1", name]);
            start.env("BRIG_VHOST_NET", "on");
            let out = procs::output(&mut start);
            check(out.status.success(), "start --checkpoint", &out)?;
            let fetch = format!("wget -q -O - http://{EXT}:8000/big.bin | md5sum | cut -d' ' -f1");
            let out = f.brig(&["exec", name, "sh", "-c", &fetch]);
            check(
                out.status.success() && stdout(&out).trim() == want.trim(),
                "4 MiB intact after the checkpoint's resume",
                &out,
            )
        })();
        let out = f.brig(&["rm", "-f", name]);
        check(out.status.success(), "rm -f", &out)?;
        result?;
    }
    Ok(())
}

fn main() {
    // Under nested TCG: setup and the image import ~1 minute; a trial up to ~3.
    run_tests_with(
        Limits::secs(300, 1500),
        prepare,
        setup,
        vec![
            trial(
                "lo_is_up_and_local_servers_work",
                lo_is_up_and_local_servers_work,
            ),
            trial("network_none_has_only_lo", network_none_has_only_lo),
            trial(
                "guest_reaches_the_outside_through_nat",
                guest_reaches_the_outside_through_nat,
            ),
            trial(
                "published_ports_are_reachable",
                published_ports_are_reachable,
            ),
            trial(
                "default_policy_keeps_the_host_metadata_and_neighbours_out",
                default_policy_keeps_the_host_metadata_and_neighbours_out,
            ),
            trial(
                "egress_allow_allows_exactly_what_it_lists",
                egress_allow_allows_exactly_what_it_lists,
            ),
            trial("nothing_is_left_on_the_host", nothing_is_left_on_the_host),
            trial(
                "frames_move_through_vhost_net",
                frames_move_through_vhost_net,
            ),
            trial(
                "concurrent_sandboxes_get_distinct_addresses",
                concurrent_sandboxes_get_distinct_addresses,
            ),
            trial(
                "rootless_bridge_works_through_passt",
                rootless_bridge_works_through_passt,
            ),
        ],
    )
}
