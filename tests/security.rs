//! The workload's confinement in the guest, as docker's: default capabilities, seccomp
//! profile, masked /proc paths, and the flags that change them (`--cap-add`, `--cap-drop`,
//! `--privileged`, `--security-opt`), in `brig run` and `brig exec`. And the VMM's own
//! confinement on the host: every thread of a sandbox's VMM under its seccomp filter and
//! without capabilities, and a hostile guest that cannot disturb a neighbour.
//! Needs KVM: runs under scripts/with-kvm where this host has none usable (see common/kvm.rs).

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use common::fixture::{check, stderr, stdout, Fixture};
use common::images;
use common::kvm::{brig_cmd, run_tests_with, trial, Limits};
use common::procs::Running;

/// docker's default capabilities, as /proc/self/status shows them.
const DOCKER_CAPS: &str = "00000000a80425fb";
/// Every capability of the guest's 6.12 kernel.
const ALL_CAPS: &str = "000001ffffffffff";

fn layouts_dir() -> PathBuf {
    images::cache_dir().join("layouts-security")
}

fn prepare() {
    let _ = std::fs::remove_dir_all(layouts_dir());
    images::busybox_layouts(&layouts_dir());
}

fn fixture() -> &'static Fixture {
    Fixture::shared("security", &[("bb", layouts_dir().join("bb"))])
}

impl Fixture {
    /// `brig run --rm --timeout 600 ARGS`.
    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["run", "--rm", "--timeout", "600"];
        all.extend_from_slice(args);
        self.brig(&all)
    }

    /// The workload's /proc/self/status under `flags`, as `Field: value` pairs.
    fn status(&self, flags: &[&str]) -> Result<Vec<(String, String)>, String> {
        let mut args = flags.to_vec();
        args.extend(["bb", "cat", "/proc/self/status"]);
        let out = self.run(&args);
        check(out.status.success(), "cat /proc/self/status", &out)?;
        Ok(parse_status(&stdout(&out)))
    }
}

fn parse_status(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn field<'a>(status: &'a [(String, String)], name: &str) -> &'a str {
    status
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// Checks the fields of `status` against `want` (`Field`, value).
fn expect(status: &[(String, String)], want: &[(&str, &str)], what: &str) -> Result<(), String> {
    for (name, value) in want {
        let got = field(status, name);
        if got != *value {
            return Err(format!("{what}: {name} is {got:?}, want {value:?}"));
        }
    }
    Ok(())
}

fn default_confinement_is_dockers() -> Result<(), String> {
    let f = fixture();
    let s = f.status(&[])?;
    expect(
        &s,
        &[
            ("CapInh", "0000000000000000"),
            ("CapPrm", DOCKER_CAPS),
            ("CapEff", DOCKER_CAPS),
            ("CapBnd", DOCKER_CAPS),
            ("CapAmb", "0000000000000000"),
            ("NoNewPrivs", "0"),
            ("Seccomp", "2"),
        ],
        "root, no flags",
    )?;
    // A non-root user: no effective or permitted capabilities, the same bounding set.
    let s = f.status(&["-u", "1000"])?;
    expect(
        &s,
        &[
            ("CapPrm", "0000000000000000"),
            ("CapEff", "0000000000000000"),
            ("CapBnd", DOCKER_CAPS),
            ("Seccomp", "2"),
        ],
        "-u 1000",
    )?;
    // The agent's kernel hardening: no unprivileged BPF, no user namespaces.
    let out = f.run(&[
        "bb",
        "cat",
        "/proc/sys/kernel/unprivileged_bpf_disabled",
        "/proc/sys/user/max_user_namespaces",
    ]);
    check(
        stdout(&out) == "1\n0\n",
        "unprivileged_bpf_disabled 1, max_user_namespaces 0",
        &out,
    )
}

fn privileged_lifts_the_confinement() -> Result<(), String> {
    let f = fixture();
    let s = f.status(&["--privileged"])?;
    expect(
        &s,
        &[("CapEff", ALL_CAPS), ("CapBnd", ALL_CAPS), ("Seccomp", "0")],
        "--privileged",
    )?;
    let out = f.run(&[
        "--privileged",
        "bb",
        "sh",
        "-c",
        "head -c 18 /proc/timer_list; echo; cat /proc/sys/kernel/unprivileged_bpf_disabled /proc/sys/user/max_user_namespaces",
    ]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    check(
        lines.first() == Some(&"Timer List Version"),
        "/proc/timer_list is not masked under --privileged",
        &out,
    )?;
    check(
        lines.get(1) == Some(&"1") && lines.get(2).is_some_and(|n| *n != "0"),
        "--privileged: still no unprivileged BPF, but user namespaces",
        &out,
    )
}

fn cap_add_and_drop_follow_docker() -> Result<(), String> {
    let f = fixture();
    for (flags, caps) in [
        (&["--cap-add", "SYS_ADMIN"][..], "00000000a82425fb"),
        (&["--cap-add", "cap_sys_admin"][..], "00000000a82425fb"),
        (&["--cap-drop", "ALL"][..], "0000000000000000"),
        (
            &["--cap-drop", "all", "--cap-add", "NET_RAW"][..],
            "0000000000002000",
        ),
        (&["--cap-drop", "CHOWN"][..], "00000000a80425fa"),
    ] {
        let s = f.status(flags)?;
        expect(
            &s,
            &[("CapEff", caps), ("CapBnd", caps)],
            &format!("{flags:?}"),
        )?;
    }
    Ok(())
}

fn security_opts_set_no_new_privs_and_seccomp() -> Result<(), String> {
    let f = fixture();
    for opt in [
        "no-new-privileges",
        "no-new-privileges=true",
        "no-new-privileges:true",
    ] {
        let s = f.status(&["--security-opt", opt])?;
        expect(&s, &[("NoNewPrivs", "1"), ("Seccomp", "2")], opt)?;
    }
    let s = f.status(&["--security-opt", "seccomp=unconfined"])?;
    expect(
        &s,
        &[
            ("Seccomp", "0"),
            ("CapEff", DOCKER_CAPS),
            ("NoNewPrivs", "0"),
        ],
        "seccomp=unconfined",
    )
}

/// unshare(CLONE_NEWUSER) needs no capability, but docker's profile allows unshare only
/// with CAP_SYS_ADMIN: EPERM, as under docker; unconfined it works.
fn default_profile_blocks_with_eperm() -> Result<(), String> {
    let f = fixture();
    let out = f.run(&["bb", "/bin/busybox", "unshare", "-U", "true"]);
    check(
        out.status.code() == Some(1) && stderr(&out).contains("Operation not permitted"),
        "unshare fails with EPERM under the default profile",
        &out,
    )?;
    let out = f.run(&[
        "--security-opt",
        "seccomp=unconfined",
        "bb",
        "/bin/busybox",
        "unshare",
        "-U",
        "true",
    ]);
    check(out.status.success(), "unshare works unconfined", &out)
}

/// `--security-opt seccomp=FILE`: docker's JSON format, errnoRet honoured.
fn custom_profile_applies() -> Result<(), String> {
    let f = fixture();
    let path = f.base.join("no-mkdir.json");
    std::fs::write(
        &path,
        r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]}],
            "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    )
    .map_err(|e| e.to_string())?;
    let opt = format!("seccomp={}", path.display());
    let out = f.run(&["--security-opt", &opt, "bb", "mkdir", "/x"]);
    check(
        !out.status.success() && stderr(&out).contains("Permission denied"),
        "mkdir fails with the profile's errno (EACCES)",
        &out,
    )
}

fn proc_paths_are_masked_and_read_only() -> Result<(), String> {
    let f = fixture();
    let out = f.run(&[
        "bb",
        "sh",
        "-c",
        "wc -c < /proc/timer_list; ls /sys/firmware | wc -l; \
         echo 1 > /proc/sys/vm/drop_caches && echo writable",
    ]);
    check(
        stdout(&out) == "0\n0\n" && stderr(&out).contains("Read-only file system"),
        "masked paths read empty, /proc/sys is read-only",
        &out,
    )
}

fn unknown_capability_is_one_line_125() -> Result<(), String> {
    let f = fixture();
    let out = f.run(&["--cap-add", "BOGUS", "bb", "true"]);
    check(
        out.status.code() == Some(125)
            && stderr(&out).lines().count() == 1
            && stderr(&out).contains("unknown capability: \"CAP_BOGUS\""),
        "an unknown capability is one line, status 125",
        &out,
    )
}

/// `brig exec` gets the sandbox's confinement; `exec --privileged` every capability and no
/// filter; `brig inspect` shows the flags as docker's HostConfig does.
fn exec_shares_the_confinement() -> Result<(), String> {
    let f = fixture();
    let out = f.brig(&[
        "run",
        "-d",
        "--name",
        "confined",
        "--cap-drop",
        "chown",
        "--security-opt",
        "no-new-privileges",
        "bb",
        "sleep",
        "1000",
    ]);
    check(out.status.success(), "run -d", &out)?;
    let result = (|| {
        let out = f.brig(&["exec", "confined", "cat", "/proc/self/status"]);
        check(out.status.success(), "exec", &out)?;
        let s = parse_status(&stdout(&out));
        expect(
            &s,
            &[
                ("CapEff", "00000000a80425fa"),
                ("Seccomp", "2"),
                ("NoNewPrivs", "1"),
            ],
            "exec",
        )?;
        let out = f.brig(&[
            "exec",
            "--privileged",
            "confined",
            "cat",
            "/proc/self/status",
        ]);
        let s = parse_status(&stdout(&out));
        expect(
            &s,
            &[("CapEff", ALL_CAPS), ("Seccomp", "0")],
            "exec --privileged",
        )?;
        let out = f.brig(&["inspect", "confined"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("inspect: {e}"))?;
        let hc = &v[0]["HostConfig"];
        check(
            hc["CapDrop"] == serde_json::json!(["chown"])
                && hc["CapAdd"] == serde_json::json!([])
                && hc["Privileged"] == serde_json::json!(false)
                && hc["SecurityOpt"] == serde_json::json!(["no-new-privileges"]),
            "inspect shows CapAdd, CapDrop, Privileged, SecurityOpt",
            &out,
        )
    })();
    let _ = f.brig(&["rm", "-f", "confined"]);
    result
}

/// Each thread of process `pid`: its name and /proc status fields.
fn vmm_threads(pid: &str) -> Vec<(String, Vec<(String, String)>)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            Some((comm.trim().to_string(), parse_status(&status)))
        })
        .collect()
}

/// Whether every thread of the VMM is as it must be once the workload runs: each under its
/// seccomp filter, with `NoNewPrivs` and no capabilities.
fn vmm_confinement(threads: &[(String, Vec<(String, String)>)]) -> Result<(), String> {
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["vcpu0", "devices", "console"] {
        if !names.contains(&want) {
            return Err(format!("no {want} thread among {names:?}"));
        }
    }
    // KVM's own worker (kvm-nx-lpage-recovery) shows among the tasks on some kernels: it never
    // runs user code, so neither filters nor capabilities concern it.
    for (name, s) in threads.iter().filter(|(n, _)| !n.starts_with("kvm-")) {
        expect(
            s,
            &[
                ("Seccomp", "2"),
                ("NoNewPrivs", "1"),
                ("CapEff", "0000000000000000"),
                ("CapPrm", "0000000000000000"),
            ],
            name,
        )?;
    }
    Ok(())
}

/// What /proc shows of a descriptor of process `pid`: (fd, target).
fn fds_of(pid: &str) -> Vec<(String, String)> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                target.to_string_lossy().into_owned(),
            ))
        })
        .collect()
}

/// Whether the detached sandbox `name`'s VMM `pid` is jailed: not root, in PID, mount, IPC,
/// UTS and network namespaces of its own (pid 1 in its own), its root an empty read-only tmpfs holding only the
/// runtime directory, without a descriptor to anything but its VM's files, and (where cgroup
/// v2 has the memory controller) in a cgroup of its own with a memory limit; and that
/// `brig inspect` says so.
fn vmm_jail(f: &Fixture, name: &str, pid: &str) -> Result<(), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let status = parse_status(&status);
    for id in ["Uid", "Gid"] {
        let ids: Vec<&str> = field(&status, id).split_whitespace().collect();
        if ids.len() != 4 || ids.contains(&"0") {
            return Err(format!("the VMM's {id} is {ids:?}: root somewhere"));
        }
    }
    expect(
        &status,
        &[("CapEff", "0000000000000000"), ("NoNewPrivs", "1")],
        "the VMM",
    )?;
    for ns in ["pid", "mnt", "ipc", "uts", "net"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).ok();
        if theirs.is_none() || theirs == ours {
            return Err(format!("the VMM shares the {ns} namespace ({theirs:?})"));
        }
    }
    // The first process of its PID namespace: its pid there is 1.
    let nspid: Vec<&str> = field(&status, "NSpid").split_whitespace().collect();
    if nspid.len() != 2 || nspid[1] != "1" {
        return Err(format!("the VMM's NSpid is {nspid:?}, not [{pid}, 1]"));
    }
    let out = f.brig(&["inspect", name]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("inspect: {e}"))?;
    let runtime = v[0]["RuntimeDir"].as_str().unwrap_or_default().to_string();
    let short = runtime.rsplit('/').next().unwrap_or_default().to_string();
    let jail = &v[0]["VmmConfinement"]["Jail"];
    let uid = field(&status, "Uid")
        .split_whitespace()
        .next()
        .unwrap_or("");
    check(
        jail["Uid"] == uid.parse::<u64>().unwrap_or(0)
            && jail["Root"] == format!("{runtime}/root")
            && ["pid", "mnt", "ipc", "uts", "net"].iter().all(|ns| {
                jail["Namespaces"]
                    .as_array()
                    .is_some_and(|a| a.contains(&(*ns).into()))
            })
            && v[0]["VmmConfinement"]["HostRoot"] == false,
        "inspect shows the jail",
        &out,
    )?;
    // Its root: the tmpfs, with nothing in it but the path to the runtime directory.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let top: Vec<String> = std::fs::read_dir(&root)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let inside = root.join(runtime.trim_start_matches('/'));
    if top != ["run"] || !inside.join("vsock.sock").exists() {
        return Err(format!(
            "the jail's root holds {top:?}; runtime dir inside: {}",
            inside.join("vsock.sock").exists()
        ));
    }
    match std::fs::write(root.join("planted"), "x") {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
        other => {
            return Err(format!(
                "writing into the jail's root: {other:?}, not EROFS"
            ))
        }
    }
    // Its descriptors: KVM, its VM's files (disks, console, log pipe, the files a checkpoint
    // is saved into, its own page map, which a save reads), sockets, eventfds.
    let fds = fds_of(pid);
    let own_pagemap = format!("/proc/{pid}/pagemap");
    let allowed = |t: &str| {
        t == own_pagemap
            || [
                "anon_inode:",
                "socket:",
                "pipe:",
                "/memfd:",
                "/dev/kvm",
                "/dev/net/tun",
                "/dev/null",
            ]
            .iter()
            .any(|p| t.starts_with(p))
            || t.starts_with(f.home.to_str().unwrap_or("-"))
    };
    let stray: Vec<&(String, String)> = fds
        .iter()
        .filter(|(fd, t)| !(allowed(t) || fd == "2" && t.ends_with("supervisor.log")))
        .collect();
    if fds.is_empty() || !stray.is_empty() || fds.iter().any(|(_, t)| t.contains("/lock")) {
        return Err(format!(
            "the VMM's descriptors: {fds:?}; not its VM's: {stray:?}"
        ));
    }
    eprintln!(
        "jailed VMM {pid}: uid {uid}, {} descriptors, jail {jail}",
        fds.len()
    );
    // Its cgroup, where cgroup v2 has the memory controller.
    let controllers =
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "memory") {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let want = format!("0::/brig/{short}");
        let max = std::fs::read_to_string(format!("/sys/fs/cgroup/brig/{short}/memory.max"))
            .unwrap_or_default();
        // 1024 MiB of guest RAM (the default) and 256 MiB for the VMM.
        if cgroup.trim() != want || max.trim() != (1280u64 << 20).to_string() {
            return Err(format!(
                "the VMM's cgroup is {cgroup:?} (memory.max {max:?}), want {want}"
            ));
        }
        check(
            jail["Cgroup"] == format!("/brig/{short}"),
            "inspect shows the cgroup",
            &out,
        )?;
    } else {
        eprintln!("no cgroup v2 memory controller here: the VMM's cgroup is not checked");
    }
    Ok(())
}

/// After `brig stop` and `brig rm`, nothing of sandbox `short`'s jail is left: its runtime
/// directory (the jail's root in it), mounts, cgroup, and processes.
fn jail_is_gone(runtime: &str, short: &str, pids: &[&str]) -> Result<(), String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let left: Vec<String> = [
        std::path::Path::new(runtime)
            .exists()
            .then(|| runtime.to_string()),
        std::path::Path::new(&format!("/sys/fs/cgroup/brig/{short}"))
            .exists()
            .then(|| format!("cgroup brig/{short}")),
        mounts.contains(short).then(|| "a mount".to_string()),
    ]
    .into_iter()
    .flatten()
    .chain(
        pids.iter()
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .map(|p| format!("process {p}")),
    )
    .collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("left after rm: {left:?}"))
    }
}

/// A foreground `brig run`'s VMM is jailed too: a child of brig (which stays on the host side,
/// as the sandbox's keeper), confined thread by thread; a signal sent to brig still reaches
/// the workload, whose exit code brig exits with; nothing is left.
fn foreground_vmm_is_jailed_and_signals_reach_the_workload() -> Result<(), String> {
    let f = fixture();
    let mut brig = f.spawn(&[
        "run",
        "--rm",
        "--name",
        "fg-jailed",
        "bb",
        "sh",
        "-c",
        "trap 'echo got-term; exit 7' TERM; echo workload-started; while :; do sleep 1; done",
    ])?;
    brig.wait_for_stdout("workload-started\n", 300)?;
    let out = f.brig(&["inspect", "fg-jailed"]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("inspect: {e}"))?;
    let pid = v[0]["State"]["Pid"].to_string();
    let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_default()
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().nth(1).map(str::to_string));
    let checked = check(
        parent == Some(brig.pid().to_string()),
        &format!("the VMM ({pid}) is a child of brig ({})", brig.pid()),
        &out,
    )
    .and_then(|()| vmm_confinement(&vmm_threads(&pid)))
    .and_then(|()| vmm_jail(f, "fg-jailed", &pid));
    if let Err(e) = checked {
        brig.kill();
        return Err(e);
    }
    // SAFETY: kill on the pid of the brig this trial started.
    unsafe { libc::kill(brig.pid() as i32, libc::SIGTERM) };
    let out = brig.output_within(120)?;
    check(
        out.status.code() == Some(7) && stdout(&out).contains("got-term\n"),
        "SIGTERM to brig reached the workload, whose exit code brig exits with",
        &out,
    )?;
    jail_is_gone(
        v[0]["RuntimeDir"].as_str().unwrap_or_default(),
        v[0]["Id"]
            .as_str()
            .unwrap_or_default()
            .get(..12)
            .unwrap_or_default(),
        &[&pid],
    )
}

/// A detached sandbox's VMM is confined, thread by thread; then a hostile guest (`brig boot`
/// with a command that floods its vsock stream, resets every virtio-mmio device over and
/// over on both vCPUs, and writes garbage into every register of every device through
/// /dev/mem, the vsock device's last) ends with at most one line from brig, while the neighbour keeps working.
fn vmm_is_confined_and_a_hostile_guest_cannot_disturb_a_neighbour() -> Result<(), String> {
    let f = fixture();
    let out = f.brig(&[
        "run",
        "-d",
        "--name",
        "neighbour",
        "bb",
        "sh",
        "-c",
        "echo logged from the jail; exec sleep 1000",
    ]);
    if !out.status.success() {
        // What the VMM process said on its way out.
        for e in std::fs::read_dir(f.home.join("sandboxes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let log = std::fs::read_to_string(e.path().join("supervisor.log")).unwrap_or_default();
            eprintln!("{}: {log}", e.path().display());
        }
    }
    check(out.status.success(), "run -d", &out)?;
    let result = (|| {
        let out = f.brig(&["inspect", "neighbour"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("inspect: {e}"))?;
        let pid = v[0]["State"]["Pid"].to_string();
        // The workload runs (so every VMM thread is past its start) once exec answers.
        let out = f.brig(&["exec", "neighbour", "true"]);
        check(out.status.success(), "exec before", &out)?;
        vmm_confinement(&vmm_threads(&pid))?;
        vmm_jail(f, "neighbour", &pid)?;
        let out = f.brig(&["logs", "neighbour"]);
        check(
            stdout(&out) == "logged from the jail\n",
            "logs of the jailed VMM's workload",
            &out,
        )?;
        // brig inspect shows the same, read from /proc.
        let out = f.brig(&["inspect", "neighbour"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("inspect: {e}"))?;
        let c = &v[0]["VmmConfinement"];
        check(
            c["Threads"].as_u64() >= Some(3)
                && c["SeccompThreads"] == c["Threads"]
                && c["NoNewPrivsThreads"] == c["Threads"]
                && c["CapEff"] == "0000000000000000",
            "inspect shows every VMM thread filtered, without capabilities",
            &out,
        )?;

        let hostile = r#"
            yes 'hostile guest output' | head -c 4000000
            [ -e /dev/mem ] || mknod /dev/mem c 1 1
            devices=$(sed -n 's/^ *\([0-9a-f]*\)-[0-9a-f]* : virtio-mmio.*/\1/p' /proc/iomem)
            # Each device's magic value first ("virt"): the guest does reach the registers.
            for base in $devices; do echo "magic $(devmem 0x$base 32)"; done
            # Garbage into every register of every virtio-mmio device, drivers bound: queue
            # sizes, descriptor addresses, status, notifications, config space. The vsock
            # device (id 19), which carries this output, last.
            garbage() {
                seed=$2
                off=0
                while [ $off -lt 512 ]; do
                    seed=$(( (seed * 1103515245 + 12345) % 4294967296 ))
                    devmem $(printf 0x%x $(( 0x$1 + off ))) 32 $seed
                    off=$(( off + 4 ))
                done
            }
            vsock=
            for base in $devices; do
                if [ $(( $(devmem $(printf 0x%x $(( 0x$base + 8 ))) 32) )) = 19 ]; then
                    vsock=$base
                else
                    for round in 1 2 3; do garbage $base $round; done
                fi
            done
            echo garbage written
            sleep 2
            [ -n "$vsock" ] && garbage $vsock 9
            cd /sys/bus/platform/drivers/virtio-mmio || exit 3
            for round in 1 2 3 4 5; do
                for d in virtio-mmio.*; do
                    echo "$d" > unbind; echo "$d" > bind
                done &
                for d in virtio-mmio.*; do
                    echo "$d" > unbind; echo "$d" > bind
                done
                wait
            done
            echo survived
        "#;
        let started = Instant::now();
        let boot = Running::spawn(
            brig_cmd(&["boot", "--cpus", "2", "--add", "/bin/busybox:/bin/sh"])
                .args(["--add", "/bin/busybox:/bin/yes"])
                .args(["--add", "/bin/busybox:/bin/head"])
                .args(["--add", "/bin/busybox:/bin/sed"])
                .args(["--add", "/bin/busybox:/bin/printf"])
                .args(["--add", "/bin/busybox:/bin/mknod"])
                .args(["--add", "/bin/busybox:/bin/devmem"])
                .args(["--timeout", "300", "--", "/bin/sh", "-c", hostile]),
        )?;
        let out = boot.output_within(400)?;
        let err = stderr(&out);
        let brig_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("brig")).collect();
        let text = stdout(&out);
        let magic = text.matches("magic 0x74726976\n").count();
        if magic < 3 || !text.contains("garbage written\n") {
            return Err(format!(
                "the hostile guest did not write garbage into the devices' registers \
                 ({magic} magic values); \
                 end of its output: {:?}; stderr: {err:?}",
                &text[text.len().saturating_sub(300)..]
            ));
        }
        check(
            !err.contains("panicked")
                && brig_lines.len() <= 1
                && out.status.code().is_some()
                && started.elapsed() < Duration::from_secs(400),
            "the hostile guest ends with at most one line from brig, no panic, no crash",
            &Output {
                stdout: text.as_bytes()[text.len().saturating_sub(300)..].to_vec(),
                ..out.clone()
            },
        )?;
        eprintln!(
            "hostile guest: status {:?}, {} bytes of output, {magic} devices' registers reached, \
             brig said {brig_lines:?}",
            out.status.code(),
            out.stdout.len()
        );

        let out = f.brig(&["exec", "neighbour", "echo", "still here"]);
        check(
            out.status.success() && stdout(&out).trim() == "still here",
            "exec in the neighbour after the hostile guest",
            &out,
        )?;
        vmm_confinement(&vmm_threads(&pid))?;
        // The jailed VMM still answers the CLI: stop, then rm; then nothing of it is left.
        let runtime = v[0]["RuntimeDir"].as_str().unwrap_or_default().to_string();
        let short = runtime.rsplit('/').next().unwrap_or_default().to_string();
        let keeper = std::fs::read_to_string(format!("{runtime}/pid")).unwrap_or_default();
        let out = f.brig(&["stop", "-t", "5", "neighbour"]);
        check(out.status.success(), "stop", &out)?;
        let out = f.brig(&["rm", "neighbour"]);
        check(out.status.success(), "rm", &out)?;
        jail_is_gone(&runtime, &short, &[&pid, keeper.trim()])
    })();
    let _ = f.brig(&["rm", "-f", "neighbour"]);
    result
}

fn main() {
    run_tests_with(
        Limits::secs(300, 1800),
        prepare,
        || {
            fixture();
        },
        vec![
            trial(
                "default_confinement_is_dockers",
                default_confinement_is_dockers,
            ),
            trial(
                "privileged_lifts_the_confinement",
                privileged_lifts_the_confinement,
            ),
            trial(
                "cap_add_and_drop_follow_docker",
                cap_add_and_drop_follow_docker,
            ),
            trial(
                "security_opts_set_no_new_privs_and_seccomp",
                security_opts_set_no_new_privs_and_seccomp,
            ),
            trial(
                "default_profile_blocks_with_eperm",
                default_profile_blocks_with_eperm,
            ),
            trial("custom_profile_applies", custom_profile_applies),
            trial(
                "foreground_vmm_is_jailed_and_signals_reach_the_workload",
                foreground_vmm_is_jailed_and_signals_reach_the_workload,
            ),
            trial(
                "proc_paths_are_masked_and_read_only",
                proc_paths_are_masked_and_read_only,
            ),
            trial(
                "unknown_capability_is_one_line_125",
                unknown_capability_is_one_line_125,
            ),
            trial("exec_shares_the_confinement", exec_shares_the_confinement),
            trial(
                "vmm_is_confined_and_a_hostile_guest_cannot_disturb_a_neighbour",
                vmm_is_confined_and_a_hostile_guest_cannot_disturb_a_neighbour,
            ),
        ],
    )
}
