//! `brig compare`: the same probe under runc and under brig, side by side, as a table, JSON
//! and HTML, of a busybox and a Debian image; its one-line errors; Ctrl-C leaving nothing.
//! Needs KVM and runc: runs under scripts/with-kvm where this host has no usable KVM (see
//! common/kvm.rs), as root there.
//!
//! The "outside" is a network namespace, `ext`, that setup creates inside the with-kvm VM
//! (L1): a veth `up0` (198.51.100.254/24, L1's default route) to ext's `eth0`
//! (198.51.100.1/24, and 169.254.169.254/32 playing the cloud metadata service), each with
//! an HTTP server. Nothing is ever sent outside L1.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::fixture::{check, eventually, sh, stderr, stdout, Fixture};
use common::images;
use common::kvm::{run_tests_with, trial, Limits};
use common::outside::{ext_namespace_script, EXT, METADATA};

/// The probes' labels, as the table shows them (src/sandbox/compare/facts.rs).
const LABELS: &[&str] = &[
    "network (each side's own)",
    "kernel (uname -r, boot_id)",
    "capabilities (CapEff/CapBnd)",
    "seccomp (mode, refused calls)",
    "NoNewPrivs",
    "user namespace (uid_map)",
    "/dev entries, kvm, mem",
    "host disks in /sys/block",
    "/proc/kcore readable",
    "/proc/sysrq-trigger writable",
    "/proc/sys writable",
    "core_pattern writable",
    "cgroup release_agent",
    "host file systems in mountinfo",
    "runtime sockets",
    "host processes visible",
    "host network interfaces",
    "reach the host (gateway TCP)",
    "reach 169.254.169.254:80",
    "reach the outside (--probe-target)",
    "unprivileged BPF",
    "user namespaces (new one)",
    "CPUID hypervisor bit",
    "DMI product name",
    "start time (runtime to probe)",
    "host kernel functions run (HAP)",
    "memory (peak, host)",
];

/// The probes' keys in the JSON output.
const KEYS: &[&str] = &[
    "kernel",
    "caps",
    "seccomp",
    "nnp",
    "userns",
    "devices",
    "disks",
    "kcore",
    "sysrq",
    "procsys",
    "core_pattern",
    "release_agent",
    "mounts",
    "sockets",
    "pids",
    "net",
    "reach_host",
    "reach_metadata",
    "reach_outside",
    "bpf",
    "userns_create",
    "cpuid",
    "dmi",
];

/// The probe's facts every side must have (one per probe, the reachability ones included).
const FACTS: &[&str] = &[
    "kernel.release",
    "caps.eff",
    "seccomp.mode",
    "userns.uid_map",
    "dev.count",
    "proc.kcore",
    "mounts",
    "pids.count",
    "net.ifaces",
    "reach.host",
    "reach.metadata",
    "reach.outside",
    "sysctl.unprivileged_bpf_disabled",
    "sysctl.max_user_namespaces",
    "userns.create",
    "cpu.hypervisor",
];

/// The outside target the comparisons name.
const TARGET: &str = "198.51.100.1:8000";
const TRACEFS: &str = "/sys/kernel/tracing";

fn layouts_dir() -> PathBuf {
    images::cache_dir().join("layouts-compare")
}

fn prepare() {
    let dir = layouts_dir();
    let _ = std::fs::remove_dir_all(dir.join("bb"));
    let _ = std::fs::remove_dir_all(dir.join("bb-entry"));
    images::busybox_layouts(&dir);
    // The Debian image tests/run.rs uses (debootstrap's tarball, cached).
    let deb = dir.join("debian");
    if !deb.join("index.json").exists() {
        let tmp = dir.join(format!("debian.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        images::debian_layout(&tmp);
        std::fs::rename(&tmp, &deb).unwrap();
    }
}

fn fixture() -> &'static Fixture {
    let images = ["bb", "debian"].map(|name| (name, layouts_dir().join(name)));
    Fixture::shared("compare", &images)
}

/// The outside world (ext) and tracefs (a distribution mounts it at boot; L1's init does
/// not), once per test binary.
fn setup() {
    sh(&format!(
        "set -e
        mountpoint -q {TRACEFS} || mount -t tracefs nodev {TRACEFS}
        {ext}
        mkdir -p /run/brig-cmp-www
        echo ext-hello > /run/brig-cmp-www/index.html
        ip netns exec ext busybox httpd -p {EXT}:8000 -h /run/brig-cmp-www
        ip netns exec ext busybox httpd -p {METADATA}:80 -h /run/brig-cmp-www
        ",
        ext = ext_namespace_script(&[]),
    ));
    // The servers answer (so that a blocked connection later is the policy, not a dead
    // server).
    for url in [format!("http://{TARGET}/"), format!("http://{METADATA}/")] {
        let cmd = format!("busybox wget -q -O - {url}");
        eventually(20, &cmd, || {
            Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap();
    }
    fixture();
}

/// The row of the table starting with `label`.
fn row<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(label)).unwrap_or("")
}

fn table_answers_every_probe_on_both_sides() -> Result<(), String> {
    let out = fixture().brig(&["compare", "--hap", "--probe-target", TARGET, "bb"]);
    check(out.status.success(), "brig compare bb", &out)?;
    let text = stdout(&out);
    // For the record (the README's table comes from here).
    eprintln!("{text}");
    let head = text.lines().next().unwrap_or("");
    check(
        head.contains("RUNC SAW") && head.contains("BRIG VERDICT"),
        "a header with both sides",
        &out,
    )?;
    for label in LABELS {
        let line = text.lines().find(|l| l.starts_with(label));
        let cells = line.map_or(0, |l| {
            l[label.len()..]
                .split("  ")
                .filter(|c| !c.trim().is_empty())
                .count()
        });
        check(
            cells == 4,
            &format!("{label}: saw and verdict on both sides"),
            &out,
        )?;
    }
    let kernel = text.lines().find(|l| l.starts_with("kernel")).unwrap_or("");
    check(
        kernel.contains("! host's kernel") && kernel.ends_with("own guest kernel"),
        "runc shares the host's kernel, brig runs its own",
        &out,
    )?;
    // Measured reachability: runc's container (docker's bridge: NAT, no policy) reaches the
    // host and the metadata service; brig's egress policy blocks both; both reach ext.
    for label in ["reach the host", "reach 169.254.169.254"] {
        let r = row(&text, label);
        check(
            r.contains("! reached") && r.ends_with("blocked (timeout)"),
            &format!("{label}: runc reached it, brig blocked it"),
            &out,
        )?;
    }
    let r = row(&text, "reach the outside");
    check(
        r.matches("reached (connected)").count() == 2 && !r.contains('!'),
        "both sides reach the outside target",
        &out,
    )?;
    let r = row(&text, "unprivileged BPF");
    check(
        r.ends_with("guest's setting: disabled (for good)"),
        "brig's agent disabled unprivileged BPF in the guest",
        &out,
    )?;
    let r = row(&text, "user namespaces");
    check(
        r.contains("max=0") && r.ends_with("guest's limit 0"),
        "brig's agent set the guest's user-namespace limit to 0",
        &out,
    )?;
    hap_row(&text, &out)
}

/// Whether L1's kernel has an ftrace method brig compare uses (the function profiler, or
/// the function tracer).
fn ftrace_available() -> bool {
    let dir = std::path::Path::new(TRACEFS);
    dir.join("function_profile_enabled").exists()
        || std::fs::read_to_string(dir.join("available_tracers"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|t| t == "function")
}

/// The HAP row: a count on both sides where L1's kernel has ftrace's function profiler or
/// tracer, and "unavailable: <reason>" where it has neither (never a number it did not
/// measure).
fn hap_row(text: &str, out: &std::process::Output) -> Result<(), String> {
    let r = row(text, "host kernel functions run (HAP)");
    if ftrace_available() {
        let counted = r.matches("function tracer").count() + r.matches("function profiler").count();
        check(
            counted == 2,
            "a measured count of host kernel functions on both sides",
            out,
        )
    } else {
        check(
            r.matches("unavailable: ").count() == 2,
            "no ftrace in L1's kernel: the row says why",
            out,
        )
    }
}

fn json_of_debian_has_every_probe_for_both_sides() -> Result<(), String> {
    let out = fixture().brig(&[
        "compare",
        "--format",
        "json",
        "--probe-target",
        TARGET,
        "debian",
    ]);
    check(out.status.success(), "brig compare --format json", &out)?;
    let (v, sides) = sides_with_every_probe(&out, ["runc", "brig"])?;
    for s in &sides {
        for k in FACTS {
            check(
                s["facts"][k].as_str().is_some_and(|v| !v.is_empty()),
                &format!("{}: fact {k} answered", s["runtime"]),
                &out,
            )?;
        }
        check(
            s["start_ms"].as_f64().is_some_and(|t| t > 0.0),
            "start_ms",
            &out,
        )?;
        check(
            s["network"].is_string() && s["hap"]["note"].is_string(),
            "network and hap",
            &out,
        )?;
        check(
            s["hap"]["note"] == "not measured (--hap measures it)",
            "no HAP without --hap",
            &out,
        )?;
    }
    check(
        sides[0]["probes"]["reach_metadata"]["host_exposed"] == true
            && sides[1]["probes"]["reach_metadata"]["host_exposed"] == false,
        "the metadata service: reached under runc, blocked under brig",
        &out,
    )?;
    check(
        sides[1]["probes"]["kernel"]["verdict"] == "own guest kernel"
            && sides[0]["probes"]["kernel"]["verdict"] == "host's kernel"
            && v["host"]["kernel.release"].is_string(),
        "the kernel verdicts, measured against the host's",
        &out,
    )?;
    check(
        sides[1]["facts"]["seccomp.mode"] == "2" && sides[0]["facts"]["seccomp.mode"] == "2",
        "docker's seccomp filter on both sides",
        &out,
    )
}

/// The JSON report of `out` and its sides, checked to be `names` in that order, each with
/// every probe answered (saw, verdict, host_exposed).
fn sides_with_every_probe(
    out: &std::process::Output,
    names: [&str; 2],
) -> Result<(serde_json::Value, Vec<serde_json::Value>), String> {
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("JSON: {e}: {}", stdout(out)))?;
    let sides = v["sides"].as_array().cloned().unwrap_or_default();
    let got: Vec<&str> = sides.iter().filter_map(|s| s["runtime"].as_str()).collect();
    check(got == names, &format!("sides {names:?}"), out)?;
    for s in &sides {
        for k in KEYS {
            let p = &s["probes"][k];
            check(
                p["saw"].is_string() && p["verdict"].is_string() && p["host_exposed"].is_boolean(),
                &format!("{}: probe {k}", s["runtime"]),
                out,
            )?;
        }
    }
    Ok((v, sides))
}

fn html_writes_the_table_and_a_chart() -> Result<(), String> {
    let f = fixture();
    let file = f.base.join("compare.html");
    // Under crun (scripts/setup.sh installs it), as the other trials are under runc.
    let out = f.brig(&[
        "compare",
        "--runtime",
        "crun",
        "--probe-target",
        TARGET,
        "--format",
        "html",
        "--output",
        file.to_str().unwrap(),
        "bb",
    ]);
    check(
        out.status.success(),
        "brig compare --runtime crun --format html --output",
        &out,
    )?;
    let html = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    check(
        html.starts_with("<!DOCTYPE html>")
            && html.contains("<table")
            && html.contains("own guest kernel")
            && html.contains("<th>crun saw</th>")
            && html.contains("host kernel functions run (HAP)")
            && html.contains("<svg")
            && html.contains("<rect")
            && html.trim_end().ends_with("</html>"),
        "a page with the table and an SVG chart",
        &out,
    )?;
    check(stdout(&out).is_empty(), "nothing on stdout", &out)?;
    screenshot(&file)
}

/// Renders the page with headless chromium (scripts/setup.sh installs it; without it the
/// trial fails rather than skip the check) and checks the PNG is an image of some
/// substance, not a blank page.
fn screenshot(html: &std::path::Path) -> Result<(), String> {
    if std::process::Command::new("chromium")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("chromium is not installed (scripts/setup.sh installs it)".into());
    }
    let base = &fixture().base;
    let png = base.join("compare.png");
    let out = std::process::Command::new("timeout")
        .arg("240")
        .args(["chromium", "--headless", "--no-sandbox", "--disable-gpu"])
        .args(["--hide-scrollbars", "--window-size=1400,1000"])
        .arg(format!(
            "--user-data-dir={}",
            base.join("chromium").display()
        ))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        // Its singleton socket goes to TMPDIR: a tmpfs (sockets cannot live on 9p).
        .env("HOME", base)
        .env("TMPDIR", base)
        .output()
        .map_err(|e| format!("chromium: {e}"))?;
    let bytes = std::fs::read(&png).unwrap_or_default();
    check(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
        &format!("a PNG screenshot of the page ({} bytes)", bytes.len()),
        &out,
    )
}

/// podman's storage for the podman trial: vfs on L1's tmpfs (overlayfs is not loaded in L1,
/// and the 9p root takes no sockets).
const PODMAN_STORAGE: &str = "/run/brig-cmp-podman";

/// `--runtime podman`: podman 4.3 (scripts/setup.sh installs it) runs the probe with its own
/// defaults (CNI bridge 10.88/16 with masquerade, its capability set and seccomp profile),
/// every probe is answered on both sides, and podman keeps no container afterwards.
fn podman_side_answers_every_probe() -> Result<(), String> {
    let f = fixture();
    let conf = format!("{PODMAN_STORAGE}/storage.conf");
    std::fs::create_dir_all(PODMAN_STORAGE).map_err(|e| format!("{PODMAN_STORAGE}: {e}"))?;
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = \"{PODMAN_STORAGE}/run\"\n\
             graphroot = \"{PODMAN_STORAGE}/root\"\n"
        ),
    )
    .map_err(|e| format!("{conf}: {e}"))?;
    let out = f
        .cmd(&[
            "compare",
            "--runtime",
            "podman",
            "--format",
            "json",
            "--probe-target",
            TARGET,
            "bb",
        ])
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .output()
        .map_err(|e| format!("brig compare: {e}"))?;
    check(out.status.success(), "brig compare --runtime podman", &out)?;
    let (_, sides) = sides_with_every_probe(&out, ["podman", "brig"])?;
    let podman = &sides[0];
    check(
        podman["probes"]["kernel"]["verdict"] == "host's kernel"
            && sides[1]["probes"]["kernel"]["verdict"] == "own guest kernel",
        "podman shares the host's kernel, brig runs its own",
        &out,
    )?;
    check(
        podman["facts"]["net.ifaces"]
            .as_str()
            .is_some_and(|i| i.contains("eth0"))
            && podman["probes"]["reach_outside"]["verdict"] == "reached (connected)"
            && podman["probes"]["reach_host"]["verdict"] == "reached (connected)",
        "podman's own network (its CNI bridge, no egress policy) reaches the outside and the host",
        &out,
    )?;
    check(
        podman["facts"]["seccomp.mode"] == "2" && podman["facts"]["caps.eff"] != "000001ffffffffff",
        "podman's seccomp filter and reduced capability set",
        &out,
    )?;
    let ps = Command::new("podman")
        .args(["ps", "-a", "-q"])
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .output()
        .map_err(|e| format!("podman ps: {e}"))?;
    check(
        ps.status.success() && stdout(&ps).trim().is_empty(),
        "podman keeps no container",
        &ps,
    )?;
    let left = f.leftovers();
    check(left.is_empty(), &format!("nothing left: {left:?}"), &out)
}

fn errors_are_one_line_125() -> Result<(), String> {
    let f = fixture();
    let out = f.brig(&["compare", "no-such-image"]);
    check(
        out.status.code() == Some(125)
            && stderr(&out).trim().lines().count() == 1
            && stderr(&out).contains("not present locally"),
        "a missing image: one line, 125",
        &out,
    )?;
    let out = f.brig(&["compare", "--runtime", "nosuch", "bb"]);
    check(
        out.status.code() == Some(125),
        "an unknown runtime: 125",
        &out,
    )?;
    // A runtime that is not installed (scripts/setup.sh installs podman: only where it did not).
    if std::process::Command::new("podman")
        .arg("--version")
        .output()
        .is_err()
    {
        let out = f.brig(&["compare", "--runtime", "podman", "bb"]);
        check(
            out.status.code() == Some(125)
                && stderr(&out).trim().lines().count() == 1
                && stderr(&out).contains("podman is not installed"),
            "a missing baseline runtime: one line, 125",
            &out,
        )?;
    }
    Ok(())
}

/// Ctrl-C while the brig side runs: brig compare ends with a one-line error, and leaves no
/// sandbox, runtime file, bundle or network namespace behind.
fn ctrl_c_leaves_nothing_behind() -> Result<(), String> {
    let f = fixture();
    let child = f
        .cmd(&["compare", "bb"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("brig compare: {e}"))?;
    let sandboxes = f.home.join("sandboxes");
    let started = eventually(240, "the brig side's sandbox", || {
        std::fs::read_dir(&sandboxes).is_ok_and(|mut d| d.next().is_some())
    });
    // SAFETY: kill(2) on the child this test spawned and has not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child
        .wait_with_output()
        .map_err(|e| format!("brig compare: {e}"))?;
    started?;
    check(
        out.status.code() == Some(125)
            && stderr(&out).trim().lines().count() == 1
            && stderr(&out).contains("interrupted by signal 2"),
        "Ctrl-C: one line, 125",
        &out,
    )?;
    let left = f.leftovers();
    check(left.is_empty(), &format!("nothing left: {left:?}"), &out)?;
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map_err(|e| format!("ip netns list: {e}"))?;
    check(
        !stdout(&ns).contains("brigcmp"),
        "the baseline's network namespace is gone",
        &ns,
    )
}

fn main() {
    run_tests_with(
        Limits::secs(300, 1500),
        prepare,
        setup,
        vec![
            trial(
                "table_answers_every_probe_on_both_sides",
                table_answers_every_probe_on_both_sides,
            ),
            trial(
                "json_of_debian_has_every_probe_for_both_sides",
                json_of_debian_has_every_probe_for_both_sides,
            ),
            trial(
                "html_writes_the_table_and_a_chart",
                html_writes_the_table_and_a_chart,
            ),
            trial(
                "podman_side_answers_every_probe",
                podman_side_answers_every_probe,
            ),
            trial("errors_are_one_line_125", errors_are_one_line_125),
            trial("ctrl_c_leaves_nothing_behind", ctrl_c_leaves_nothing_behind),
        ],
    )
}
