//! What `brig-probe` saw (its `key<TAB>value` lines) and the verdict on each probe: the
//! workload's view compared with the host's, as the same probe measured it on the host.

use std::collections::{BTreeMap, BTreeSet};

/// One run of the probe: key → value.
pub type Facts = BTreeMap<String, String>;

/// Parses the probe's output.
pub fn parse(text: &str) -> Facts {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The probes shown, in order: (key of the row, label).
pub const PROBES: &[(&str, &str)] = &[
    ("kernel", "kernel (uname -r, boot_id)"),
    ("caps", "capabilities (CapEff/CapBnd)"),
    ("seccomp", "seccomp (mode, refused calls)"),
    ("nnp", "NoNewPrivs"),
    ("userns", "user namespace (uid_map)"),
    ("devices", "/dev entries, kvm, mem"),
    ("disks", "host disks in /sys/block"),
    ("kcore", "/proc/kcore readable"),
    ("sysrq", "/proc/sysrq-trigger writable"),
    ("procsys", "/proc/sys writable"),
    ("core_pattern", "core_pattern writable"),
    ("release_agent", "cgroup release_agent"),
    ("mounts", "host file systems in mountinfo"),
    ("sockets", "runtime sockets"),
    ("pids", "host processes visible"),
    ("net", "host network interfaces"),
    ("reach_host", "reach the host (gateway TCP)"),
    ("reach_metadata", "reach 169.254.169.254:80"),
    ("reach_outside", "reach the outside (--probe-target)"),
    ("bpf", "unprivileged BPF"),
    ("userns_create", "user namespaces (new one)"),
    ("cpuid", "CPUID hypervisor bit"),
    ("dmi", "DMI product name"),
];

/// One side's answer to one probe: what it saw, and the verdict against the host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Answer {
    pub saw: String,
    pub verdict: String,
    /// Whether the host's own resource was reachable (the boundary did not hold).
    pub host_exposed: bool,
}

fn get<'a>(f: &'a Facts, k: &str) -> &'a str {
    f.get(k).map_or("-", String::as_str)
}

fn list<'a>(f: &'a Facts, k: &str, sep: char) -> BTreeSet<&'a str> {
    get(f, k)
        .split(sep)
        .filter(|s| !s.is_empty() && *s != "-")
        .collect()
}

fn answer(saw: impl Into<String>, verdict: impl Into<String>, exposed: bool) -> Answer {
    Answer {
        saw: saw.into(),
        verdict: verdict.into(),
        host_exposed: exposed,
    }
}

fn bits(hex: &str) -> u32 {
    u64::from_str_radix(hex, 16).map_or(0, u64::count_ones)
}

/// A writable kernel knob: the host's when the kernel is the host's.
fn knob(w: &Facts, key: &str, shared: bool, good: &str) -> Answer {
    let v = get(w, key);
    let open = v == "yes" || v == "writable";
    let verdict = match (open, shared) {
        (false, _) => "refused".to_string(),
        (true, true) => "host kernel's: open".to_string(),
        (true, false) => format!("{good} only"),
    };
    answer(v, verdict, open && shared)
}

/// The verdict of every probe for workload facts `w` against host facts `h`.
pub fn judge(w: &Facts, h: &Facts) -> BTreeMap<String, Answer> {
    let mut out = BTreeMap::new();
    let same_boot = get(w, "kernel.boot_id") == get(h, "kernel.boot_id");
    let shared = same_boot && get(w, "kernel.release") == get(h, "kernel.release");
    let kernel_saw = format!(
        "{} {}",
        get(w, "kernel.release"),
        &get(w, "kernel.boot_id")[..8.min(get(w, "kernel.boot_id").len())]
    );
    let kernel = if shared {
        answer(kernel_saw, "host's kernel", true)
    } else {
        answer(kernel_saw, "own guest kernel", false)
    };
    out.insert("kernel".into(), kernel);

    let (eff, heff) = (get(w, "caps.eff"), get(h, "caps.eff"));
    let n = bits(eff);
    let caps_v = if shared {
        format!("{n} of host root's {}", bits(heff))
    } else {
        format!("{n}, in the guest kernel")
    };
    out.insert(
        "caps".into(),
        answer(
            format!("{eff}/{}", get(w, "caps.bnd")),
            caps_v,
            shared && n == bits(heff),
        ),
    );
    let mode = get(w, "seccomp.mode");
    let refused = get(w, "seccomp.refused");
    let sv = match mode {
        "2" => format!("filter, {refused} refused"),
        "0" => format!("no filter, {refused} refused"),
        m => format!("mode {m}, {refused} refused"),
    };
    out.insert(
        "seccomp".into(),
        answer(format!("{mode} {refused}"), sv, mode == "0" && shared),
    );
    let nnp = get(w, "nnp");
    out.insert(
        "nnp".into(),
        answer(nnp, if nnp == "1" { "set" } else { "not set" }, false),
    );
    let map = get(w, "userns.uid_map");
    let identity = map == "0 0 4294967295";
    let uv = match (identity, shared) {
        (true, true) => "root is host root",
        (false, true) => "mapped (own user namespace)",
        (_, false) => "root of the guest kernel only",
    };
    out.insert("userns".into(), answer(map, uv, identity && shared));
    let (kvm, mem) = (get(w, "dev.kvm"), get(w, "dev.mem"));
    out.insert(
        "devices".into(),
        answer(
            format!("{} kvm:{kvm} mem:{mem}", get(w, "dev.count")),
            if kvm == "yes" || mem == "yes" {
                if shared {
                    "host device nodes"
                } else {
                    "guest device nodes"
                }
            } else {
                "no kvm, no mem"
            },
            shared && (kvm == "yes" || mem == "yes"),
        ),
    );
    // A disk is the host's when its name and size match one of the host's.
    let (wd, hd) = (list(w, "dev.disks", ','), list(h, "dev.disks", ','));
    let seen = wd.intersection(&hd).count();
    out.insert(
        "disks".into(),
        answer(
            if wd.is_empty() {
                "none".to_string()
            } else {
                wd.iter().copied().collect::<Vec<_>>().join(" ")
            },
            format!("{seen} of host's {}", hd.len()),
            seen > 0,
        ),
    );
    for (key, fact) in [
        ("kcore", "proc.kcore"),
        ("sysrq", "proc.sysrq"),
        ("procsys", "proc.sys"),
        ("core_pattern", "proc.core_pattern"),
        ("release_agent", "cgroup.release_agent"),
    ] {
        out.insert(key.into(), knob(w, fact, shared, "guest kernel's"));
    }
    out.insert("mounts".into(), mounts(w, h, shared));
    let (ws, hs) = (list(w, "sockets", ','), list(h, "sockets", ','));
    let host_socks: Vec<&str> = if shared {
        ws.intersection(&hs).copied().collect()
    } else {
        Vec::new()
    };
    out.insert(
        "sockets".into(),
        answer(
            if ws.is_empty() {
                "none".to_string()
            } else {
                ws.iter().copied().collect::<Vec<_>>().join(" ")
            },
            format!("{} of host's {}", host_socks.len(), hs.len()),
            !host_socks.is_empty(),
        ),
    );
    out.insert("pids".into(), pids(w, h, shared));
    let macs = |f: &Facts| -> BTreeSet<String> {
        list(f, "net.ifaces", ',')
            .iter()
            .filter_map(|i| i.split_once('='))
            .map(|(_, m)| m.to_string())
            .filter(|m| m != "00:00:00:00:00:00" && !m.is_empty())
            .collect()
    };
    let (wm, hm) = (macs(w), macs(h));
    let seen = wm.intersection(&hm).count();
    let names: Vec<&str> = list(w, "net.ifaces", ',')
        .iter()
        .map(|i| i.split_once('=').map_or(*i, |(n, _)| n))
        .collect();
    out.insert(
        "net".into(),
        answer(
            names.join(" "),
            format!("{seen} of host's {}", hm.len()),
            seen > 0,
        ),
    );
    out.insert("reach_host".into(), reach(w, "host", true));
    out.insert("reach_metadata".into(), reach(w, "metadata", true));
    out.insert("reach_outside".into(), reach(w, "outside", false));
    let bpf = get(w, "sysctl.unprivileged_bpf_disabled");
    let bv = match bpf {
        "0" => "allowed",
        "1" => "disabled (for good)",
        "2" => "disabled (admin may re-enable)",
        _ => "unknown",
    };
    let owner = if shared { "host's" } else { "guest's" };
    out.insert(
        "bpf".into(),
        answer(
            format!("unprivileged_bpf_disabled={bpf}"),
            format!("{owner} setting: {bv}"),
            shared && bpf == "0",
        ),
    );
    let made = get(w, "userns.create");
    let max = get(w, "sysctl.max_user_namespaces");
    let uv = match made {
        "yes" => format!("can make one ({owner} kernel)"),
        e => format!("refused ({e}), {owner} limit {max}"),
    };
    out.insert(
        "userns_create".into(),
        answer(format!("{made}; max={max}"), uv, shared && made == "yes"),
    );
    let cpu = format!("{} {}", get(w, "cpu.hypervisor"), get(w, "cpu.hv_vendor"));
    let hcpu = format!("{} {}", get(h, "cpu.hypervisor"), get(h, "cpu.hv_vendor"));
    out.insert(
        "cpuid".into(),
        answer(
            cpu.clone(),
            if cpu == hcpu {
                "same as host"
            } else {
                "differs from host"
            },
            false,
        ),
    );
    let dmi = get(w, "dmi.product");
    out.insert(
        "dmi".into(),
        answer(
            dmi,
            if dmi == get(h, "dmi.product") {
                "same as host"
            } else {
                "differs from host"
            },
            false,
        ),
    );
    out
}

/// A TCP connection the probe tried (`reach.NAME`): a connection or a refusal is an answer
/// from the target, so it was reached. `host_side`: reaching it is a host resource exposed.
fn reach(w: &Facts, name: &str, host_side: bool) -> Answer {
    let key = format!("reach.{name}");
    let Some(outcome) = w.get(&key) else {
        return answer("-", "not probed", false);
    };
    let addr = get(w, &format!("{key}.addr"));
    let reached = outcome == "connected" || outcome == "refused";
    let verdict = if reached {
        format!("reached ({outcome})")
    } else {
        format!("blocked ({outcome})")
    };
    answer(format!("{addr} {outcome}"), verdict, reached && host_side)
}

/// Mounts of the host's own file systems: under the host's kernel, a mount whose device
/// number is one of the host's mounts' is the same superblock (its root field then names the
/// host directory it shows). Under another kernel, device numbers are that kernel's.
fn mounts(w: &Facts, h: &Facts, shared: bool) -> Answer {
    let dev = |m: &str| m.split(' ').next().unwrap_or("").to_string();
    let host: BTreeSet<String> = list(h, "mounts", '|').iter().map(|m| dev(m)).collect();
    let all = list(w, "mounts", '|');
    let seen: Vec<&str> = if shared {
        all.iter()
            .copied()
            .filter(|m| host.contains(&dev(m)))
            .collect()
    } else {
        Vec::new()
    };
    let paths: Vec<&str> = seen
        .iter()
        .filter_map(|m| m.split(' ').nth(1))
        .filter(|p| *p != "/")
        .take(2)
        .collect();
    let mut verdict = if shared {
        format!("{} of {} are host file systems", seen.len(), all.len())
    } else {
        format!("0 of {}: the guest kernel's", all.len())
    };
    if !paths.is_empty() {
        verdict.push_str(&format!(" ({})", paths.join(" ")));
    }
    answer(format!("{} mounts", all.len()), verdict, !seen.is_empty())
}

/// Host processes: the same pid with the same command line as on the host.
fn pids(w: &Facts, h: &Facts, shared: bool) -> Answer {
    let hp = list(h, "pids.user", '|');
    let seen = if shared {
        list(w, "pids.user", '|').intersection(&hp).count()
    } else {
        0
    };
    answer(
        format!("{} pids", get(w, "pids.count")),
        format!("{seen} of host's {}", hp.len()),
        seen > 0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(pairs: &[(&str, &str)]) -> Facts {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_kernel_verdict_is_measured() {
        let host = facts(&[("kernel.release", "6.1"), ("kernel.boot_id", "aaaa-1")]);
        let same = judge(&host, &host);
        assert_eq!(same["kernel"].verdict, "host's kernel");
        assert!(same["kernel"].host_exposed);
        let guest = facts(&[("kernel.release", "6.12"), ("kernel.boot_id", "bbbb-2")]);
        let own = judge(&guest, &host);
        assert_eq!(own["kernel"].verdict, "own guest kernel");
        assert_eq!(own.len(), PROBES.len(), "every probe answered");
    }

    #[test]
    fn reachability_is_what_the_connection_did() {
        let host = facts(&[("kernel.boot_id", "h")]);
        let w = facts(&[
            ("kernel.boot_id", "h"),
            ("reach.host", "refused"),
            ("reach.host.addr", "10.0.0.1:5"),
            ("reach.metadata", "timeout"),
            ("sysctl.unprivileged_bpf_disabled", "1"),
            ("sysctl.max_user_namespaces", "0"),
            ("userns.create", "EPERM"),
        ]);
        let a = judge(&w, &host);
        assert!(a["reach_host"].host_exposed, "a refusal is an answer");
        assert_eq!(a["reach_host"].verdict, "reached (refused)");
        assert!(!a["reach_metadata"].host_exposed);
        assert_eq!(a["reach_metadata"].verdict, "blocked (timeout)");
        assert_eq!(a["reach_outside"].verdict, "not probed");
        assert_eq!(a["bpf"].verdict, "host's setting: disabled (for good)");
        assert_eq!(
            a["userns_create"].verdict,
            "refused (EPERM), host's limit 0"
        );
    }

    #[test]
    fn parse_and_host_paths() {
        let host = parse("mounts\t8:1 / ext4 /dev/sda1|0:5 / proc proc\nkernel.boot_id\tx\n");
        let w =
            parse("mounts\t8:1 /srv/rootfs ext4 /dev/sda1|0:9 / proc proc\nkernel.boot_id\tx\n");
        let own = parse("mounts\t8:1 / ext4 /dev/vda\nkernel.boot_id\ty\n");
        assert!(
            !judge(&own, &host)["mounts"].host_exposed,
            "another kernel's numbers"
        );
        let a = judge(&w, &host);
        assert!(a["mounts"].host_exposed);
        assert!(
            a["mounts"].verdict.contains("/srv/rootfs"),
            "{:?}",
            a["mounts"]
        );
        assert_eq!(a["kcore"].verdict, "refused");
    }
}
