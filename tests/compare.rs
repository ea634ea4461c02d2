//! `brig compare`: the same probe under runc and under brig, side by side, as a table, JSON
//! and HTML; its one-line errors. Needs KVM and runc: runs under scripts/with-kvm where this
//! host has no usable KVM (see common/kvm.rs).

mod common;

use std::path::PathBuf;

use common::fixture::{check, stderr, stdout, Fixture};
use common::images;
use common::kvm::{run_tests_with, trial, Limits};

/// The probes' labels, as the table shows them (src/sandbox/compare/facts.rs).
const LABELS: &[&str] = &[
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
    "CPUID hypervisor bit",
    "DMI product name",
    "start time (runtime to probe)",
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
    "cpuid",
    "dmi",
];

fn layouts_dir() -> PathBuf {
    images::cache_dir().join("layouts-compare")
}

fn prepare() {
    let _ = std::fs::remove_dir_all(layouts_dir());
    images::busybox_layouts(&layouts_dir());
}

fn fixture() -> &'static Fixture {
    Fixture::shared("compare", &[("bb", layouts_dir().join("bb"))])
}

fn table_answers_every_probe_on_both_sides() -> Result<(), String> {
    let out = fixture().brig(&["compare", "bb"]);
    check(out.status.success(), "brig compare bb", &out)?;
    let text = stdout(&out);
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
    )
}

fn json_has_every_probe_for_both_sides() -> Result<(), String> {
    let out = fixture().brig(&["compare", "--format", "json", "bb"]);
    check(out.status.success(), "brig compare --format json", &out)?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("JSON: {e}: {}", stdout(&out)))?;
    let sides = v["sides"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = sides.iter().filter_map(|s| s["runtime"].as_str()).collect();
    check(names == ["runc", "brig"], "sides runc and brig", &out)?;
    for s in &sides {
        for k in KEYS {
            let p = &s["probes"][k];
            check(
                p["saw"].is_string() && p["verdict"].is_string() && p["host_exposed"].is_boolean(),
                &format!("{}: probe {k}", s["runtime"]),
                &out,
            )?;
        }
        check(
            s["start_ms"].as_f64().is_some_and(|t| t > 0.0),
            "start_ms",
            &out,
        )?;
    }
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

fn html_writes_the_table_and_a_chart() -> Result<(), String> {
    let f = fixture();
    let file = f.base.join("compare.html");
    let out = f.brig(&[
        "compare",
        "--format",
        "html",
        "--output",
        file.to_str().unwrap(),
        "bb",
    ]);
    check(
        out.status.success(),
        "brig compare --format html --output",
        &out,
    )?;
    let html = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    check(
        html.starts_with("<!DOCTYPE html>")
            && html.contains("<table")
            && html.contains("own guest kernel")
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
    // A runtime that is not installed (podman is not, on the development machine).
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

fn main() {
    run_tests_with(
        Limits::secs(300, 1200),
        prepare,
        || {
            fixture();
        },
        vec![
            trial(
                "table_answers_every_probe_on_both_sides",
                table_answers_every_probe_on_both_sides,
            ),
            trial(
                "json_has_every_probe_for_both_sides",
                json_has_every_probe_for_both_sides,
            ),
            trial(
                "html_writes_the_table_and_a_chart",
                html_writes_the_table_and_a_chart,
            ),
            trial("errors_are_one_line_125", errors_are_one_line_125),
        ],
    )
}
