//! The real callers of tests/oci.rs: containerd 1.6 through `ctr run --runc-binary`, and
//! podman 4.3 (with conmon) through `--runtime`, each with brig-runc, state on L1's /run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::common::fixture::{check, eventually, pids_whose_cmdline, process_gone, stderr, stdout};
use crate::common::{self, images, procs};
use crate::{base, leftovers, runc_path, with_env};

/// The busybox test image as an OCI archive (what `ctr images import` and podman take).
pub fn archive() -> &'static Path {
    static A: OnceLock<PathBuf> = OnceLock::new();
    A.get_or_init(|| {
        let tar = base().join("bb.tar");
        let layout = images::layouts_dir().join("bb");
        common::run_tool(
            Command::new("tar")
                .arg("-C")
                .arg(&layout)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        );
        tar
    })
}

/// The containerd this test started (stopped at the end of the ctr trial).
static CONTAINERD: std::sync::Mutex<Option<std::process::Child>> = std::sync::Mutex::new(None);

/// containerd, its state on L1's /run, started once, with the busybox image imported.
fn containerd() -> &'static Path {
    static C: OnceLock<PathBuf> = OnceLock::new();
    C.get_or_init(|| {
        let dir = base().join("containerd");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/c.sock\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let child = spawn_containerd(&dir, &config).unwrap();
        *CONTAINERD.lock().unwrap() = Some(child);
        let tar = archive();
        let out = ctr(&CTR_IMPORT).arg(tar).output().unwrap();
        assert!(out.status.success(), "import: {}", stderr(&out));
        dir
    })
}

/// `ctr images import` of the busybox archive as `localhost/bb:latest` (the archive follows).
pub const CTR_IMPORT: [&str; 6] = [
    "images",
    "import",
    "--snapshotter",
    "native",
    "--base-name",
    "localhost/bb",
];

/// Starts containerd with `config` (its log in `dir/log`) and waits for `dir/c.sock`.
pub fn spawn_containerd(dir: &Path, config: &Path) -> Result<std::process::Child, String> {
    let log = std::fs::File::create(dir.join("log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("containerd");
    cmd.arg("--config")
        .arg(config)
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    let child = with_env(&mut cmd)
        .spawn()
        .map_err(|e| format!("containerd: {e}"))?;
    let sock = dir.join("c.sock");
    eventually(60, "containerd's socket", || sock.exists())?;
    Ok(child)
}

fn ctr(args: &[&str]) -> Command {
    let mut c = Command::new("ctr");
    c.arg("-a")
        .arg(base().join("containerd/c.sock"))
        .args(["-n", "brigtest"])
        .args(args);
    with_env(&mut c);
    c
}

/// `ctr run --rm` through brig-runc.
fn ctr_run(id: &str, detach: bool, cmd: &[&str]) -> Output {
    containerd();
    let runc = runc_path();
    let mut args = vec![
        "run",
        "--snapshotter",
        "native",
        "--runtime",
        "io.containerd.runc.v2",
    ];
    args.extend(["--runc-binary", runc.to_str().unwrap()]);
    args.push(if detach { "-d" } else { "--rm" });
    args.extend(["localhost/bb:latest", id]);
    args.extend_from_slice(cmd);
    procs::output(&mut ctr(&args))
}

pub fn brig_vmms() -> Vec<u32> {
    let mut pids = pids_whose_cmdline(|c| c.contains("__supervise"));
    pids.retain(|pid| !process_gone(*pid));
    pids
}

pub fn ctr_run_kill_and_nothing_left() -> Result<(), String> {
    let out = ctr_run("t1", false, &["sh", "-c", "echo hello from brig; exit 3"]);
    check(
        out.status.code() == Some(3) && stdout(&out).contains("hello from brig"),
        "ctr run: output and exit 3",
        &out,
    )?;
    let out = ctr_run("t2", false, &["true"]);
    check(out.status.success(), "ctr run true", &out)?;
    let out = ctr_run("t3", false, &["nosuchcmd"]);
    check(
        !out.status.success() && stderr(&out).contains("executable file not found in $PATH"),
        "ctr run nosuchcmd: runc's words (127 for docker)",
        &out,
    )?;
    let out = ctr_run("t4", false, &["/etc/passwd"]);
    check(
        !out.status.success() && stderr(&out).contains("permission denied"),
        "ctr run of a file that is not executable: runc's words (126 for docker)",
        &out,
    )?;
    let out = ctr_run("t5", true, &["sleep", "100"]);
    check(out.status.success(), "ctr run -d", &out)?;
    eventually(120, "t5 running", || {
        ctr(&["task", "ls"]).output().is_ok_and(|o| {
            stdout(&o)
                .lines()
                .any(|l| l.starts_with("t5") && l.contains("RUNNING"))
        })
    })?;
    // exec through a detached proxy whose exit status is the process's; ps lists the VMM.
    let exec = procs::output(&mut ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "t5",
        "sh",
        "-c",
        "echo in-exec; exit 4",
    ]));
    check(
        exec.status.code() == Some(4) && stdout(&exec).contains("in-exec"),
        "ctr task exec: output and exit 4",
        &exec,
    )?;
    let ps = procs::output(&mut ctr(&["task", "ps", "t5"]));
    check(
        ps.status.success() && stdout(&ps).lines().count() >= 2,
        "ctr task ps",
        &ps,
    )?;
    // The VMM process is in the container's cgroup (linux.cgroupsPath), so containerd's
    // metrics are the VM's: the VMM's threads (vCPU, devices, agent session) and its memory.
    // (A VM restored from a template reads most of its RAM from the template's page cache,
    // charged where the template was made: what is charged here is what it wrote.)
    let metrics = procs::output(&mut ctr(&["task", "metrics", "t5"]));
    let metric = |name: &str| {
        stdout(&metrics)
            .lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(name)).then(|| w.next()?.parse::<u64>().ok())?
            })
            .unwrap_or(0)
    };
    let (usage, tasks) = (metric("memory.usage"), metric("pids.current"));
    check(
        metrics.status.success() && usage >= 1 << 20 && tasks >= 3,
        &format!("ctr task metrics: the VMM's cgroup ({usage} bytes, {tasks} tasks)"),
        &metrics,
    )?;
    let kill = procs::output(&mut ctr(&["task", "kill", "t5"]));
    check(kill.status.success(), "ctr task kill (SIGTERM)", &kill)?;
    eventually(120, "t5 stopped", || {
        ctr(&["task", "ls"]).output().is_ok_and(|o| {
            stdout(&o)
                .lines()
                .any(|l| l.starts_with("t5") && l.contains("STOPPED"))
        })
    })?;
    let del = procs::output(&mut ctr(&["task", "delete", "t5"]));
    check(del.status.success(), "ctr task delete", &del)?;
    let del = procs::output(&mut ctr(&["container", "delete", "t5"]));
    check(del.status.success(), "ctr container delete", &del)?;
    eventually(30, "no VMM process left", || brig_vmms().is_empty())?;
    let mut left = leftovers();
    // The containers' cgroups (cgroupsPath "/<namespace>/<id>") went with `delete`.
    left.extend(
        std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten().flatten())
            .map(|e| e.path().display().to_string())
            .filter(|p| {
                ["t1", "t2", "t3", "t4", "t5"]
                    .iter()
                    .any(|t| p.ends_with(&format!("/{t}")))
            }),
    );
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}"));
    }
    if let Some(mut c) = CONTAINERD.lock().unwrap().take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let ctd = base().join("containerd").display().to_string();
    if let Some(m) = mounts.lines().find(|l| l.contains(&ctd)) {
        return Err(format!("a mount is left: {m}"));
    }
    Ok(())
}

/// podman with its storage (vfs: no overlayfs in L1) and run root under [`base`], brig-runc
/// as its runtime.
fn podman(args: &[&str]) -> Command {
    let p = base().join("podman");
    // podman gives conmon a clean environment: TMPDIR, where conmon makes the console socket
    // for -t, must come from containers.conf (L1's /tmp is 9p, which refuses sockets).
    let conf = p.join("containers.conf");
    if !conf.exists() {
        std::fs::create_dir_all(&p).unwrap();
        let text = format!(
            "[engine]\nconmon_env_vars = [\"PATH={}\", \"TMPDIR={}\"]\n",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            base().join("tmp").display()
        );
        std::fs::write(&conf, text).unwrap();
    }
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", &conf);
    c.arg("--root")
        .arg(p.join("root"))
        .arg("--runroot")
        .arg(p.join("runroot"))
        .arg("--tmpdir")
        .arg(p.join("tmp"))
        .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
        .args(["--events-backend", "file", "--runtime"])
        .arg(runc_path())
        .args(args);
    with_env(&mut c);
    c
}

fn podman_run_cmd(args: &[&str]) -> Command {
    let mut all = vec!["run", "--pull", "never", "--network", "none"];
    all.extend([
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ]);
    all.extend_from_slice(args);
    podman(&all)
}

fn podman_run(args: &[&str]) -> Output {
    procs::output(&mut podman_run_cmd(args))
}

/// `cmd` under `script`, which gives it a terminal of its own (for `-t`); exits with its
/// status.
fn in_a_pty(cmd: &Command) -> Command {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect();
    let mut c = Command::new("script");
    c.args(["-qec", &line.join(" "), "/dev/null"]);
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    with_env(&mut c);
    c
}

/// Where brig-runc keeps its sandboxes and runtime directories under podman: its defaults
/// as root. podman runs `start`, `kill` and `delete` itself with an environment of its own
/// (only XDG_RUNTIME_DIR, seen with a logging wrapper), so no BRIG_HOME or BRIG_RUNTIME_DIR
/// reaches them, and conmon's `create` must use the same defaults. The containers' state
/// lives in `/run/brig/oci` (the default `--root`, which podman does not pass): the directory
/// stays, as runc's `/run/runc` does, what is in it must not.
const PODMAN_BRIG_DIRS: [&str; 3] = ["/var/lib/brig/sandboxes", "/run/brig", "/run/brig/oci"];

/// The entries of `dirs` (address leases aside).
fn entries(dirs: &[&str]) -> std::collections::BTreeSet<String> {
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path().display().to_string())
        .filter(|p| !p.ends_with("/leases") && p != "/run/brig/oci")
        .collect()
}

pub fn podman_exit_codes_stop_and_nothing_left() -> Result<(), String> {
    let before = entries(&PODMAN_BRIG_DIRS);
    let pull =
        procs::output(podman(&["pull", "-q"]).arg(format!("oci-archive:{}", archive().display())));
    check(pull.status.success(), "podman pull oci-archive", &pull)?;
    let id = stdout(&pull).trim().to_string();
    let tag = procs::output(&mut podman(&["tag", &id, "localhost/bb"]));
    check(tag.status.success(), "podman tag", &tag)?;
    let out = podman_run(&[
        "--rm",
        "localhost/bb",
        "sh",
        "-c",
        "echo from podman; exit 3",
    ]);
    check(
        out.status.code() == Some(3) && stdout(&out).contains("from podman"),
        "podman run: output and exit 3",
        &out,
    )?;
    // -t: conmon takes the pty master from the console socket and relays it to podman's
    // terminal; the guest's stdio is a terminal.
    let out = procs::output(&mut in_a_pty(&podman_run_cmd(&[
        "--rm",
        "-t",
        "localhost/bb",
        "sh",
        "-c",
        "[ -t 0 ] && [ -t 1 ] && echo on-a-tty; exit 7",
    ])));
    check(
        out.status.code() == Some(7) && stdout(&out).contains("on-a-tty"),
        "podman run -t (under script): a terminal and exit 7",
        &out,
    )?;
    // -i: the caller's stdin reaches the workload.
    let mut child = podman_run_cmd(&["--rm", "-i", "localhost/bb", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(b"piped through podman\n");
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    check(
        out.status.success() && stdout(&out) == "piped through podman\n",
        "podman run -i: stdin reaches the workload",
        &out,
    )?;
    // The image's env, then flags.
    let out = podman_run(&["--rm", "localhost/bb", "sh", "-c", "echo $FOO"]);
    check(
        stdout(&out) == "image\n",
        "podman run: the image's env",
        &out,
    )?;
    let dir = bind_dir("podman-bind")?;
    let mut args: Vec<String> = vec!["--rm".into()];
    args.extend(flags(&dir));
    args.extend(["localhost/bb", "sh", "-c", FLAGS_SCRIPT].map(String::from));
    let out = podman_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    check_flags_run("podman", &out, &dir)?;
    let out = podman_run(&["--rm", "localhost/bb", "nosuchcmd"]);
    check(
        out.status.code() == Some(127),
        "podman run nosuchcmd: 127",
        &out,
    )?;
    let out = podman_run(&["--rm", "localhost/bb", "/etc/passwd"]);
    check(
        out.status.code() == Some(126),
        "podman run of a non-executable: 126",
        &out,
    )?;
    let out = podman_run(&["-d", "--name", "p1", "localhost/bb", "sleep", "100"]);
    check(out.status.success(), "podman run -d", &out)?;
    // podman stats reads the container's cgroup, where the VMM process is: the VM's memory.
    let stats = procs::output(&mut podman(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}}",
        "p1",
    ]));
    check(
        stats.status.success() && mem_usage_bytes(&stdout(&stats)) >= 1 << 20,
        "podman stats: the VM's memory",
        &stats,
    )?;
    // stop: SIGTERM through `brig-runc kill`, relayed to sleep (not PID 1 in the guest).
    let stop = procs::output(&mut podman(&["stop", "-t", "60", "p1"]));
    check(stop.status.success(), "podman stop", &stop)?;
    let code = procs::output(&mut podman(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        "p1",
    ]));
    check(
        stdout(&code).trim() == "143",
        "podman stop: SIGTERM honoured (143)",
        &code,
    )?;
    let rm = procs::output(&mut podman(&["rm", "p1"]));
    check(rm.status.success(), "podman rm", &rm)?;
    // A workload that ignores SIGTERM: stop's SIGKILL fallback, 137; rm -f of a running one.
    let out = podman_run(&[
        "-d",
        "--name",
        "p2",
        "localhost/bb",
        "sh",
        "-c",
        "trap '' TERM; echo ready; while :; do sleep 1; done",
    ]);
    check(out.status.success(), "podman run -d (TERM ignored)", &out)?;
    // Once the trap is set (a SIGTERM before it would end the workload, as under runc).
    eventually(120, "p2's trap set", || {
        stdout(&procs::output(&mut podman(&["logs", "p2"]))).contains("ready")
    })?;
    let stop = procs::output(&mut podman(&["stop", "-t", "2", "p2"]));
    check(
        stop.status.success(),
        "podman stop (SIGKILL fallback)",
        &stop,
    )?;
    let code = procs::output(&mut podman(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        "p2",
    ]));
    check(
        stdout(&code).trim() == "137",
        "podman stop: SIGKILL after the timeout (137)",
        &code,
    )?;
    let out = podman_run(&["-d", "--name", "p3", "localhost/bb", "sleep", "100"]);
    check(out.status.success(), "podman run -d p3", &out)?;
    for name in ["p2", "p3"] {
        let rm = procs::output(&mut podman(&["rm", "-f", name]));
        check(rm.status.success(), &format!("podman rm -f {name}"), &rm)?;
    }
    podman_bridge_network()?;
    eventually(30, "no VMM process left", || brig_vmms().is_empty())?;
    let mut left = leftovers();
    left.extend(entries(&PODMAN_BRIG_DIRS).difference(&before).cloned());
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}"));
    }
    Ok(())
}

/// podman's own network (CNI's bridge plugin, in a network namespace podman makes): the
/// guest takes over the container's interface, has the address podman gave it, and serves
/// HTTP on it to L1, which reaches it over podman's bridge.
fn podman_bridge_network() -> Result<(), String> {
    let run = procs::output(&mut podman(&[
        "run",
        "-d",
        "--pull",
        "never",
        "--name",
        "web",
        "--network",
        "bridge",
        "localhost/bb",
        "sh",
        "-c",
        "mkdir -p /www && echo served-by-brig > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]));
    let result = (|| {
        check(run.status.success(), "podman run -d --network bridge", &run)?;
        let ip = procs::output(&mut podman(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.IPAddress}}",
            "web",
        ]));
        let ip = stdout(&ip).trim().to_string();
        if ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(format!("podman inspect: no IPv4 address ({ip:?})"));
        }
        let exec = procs::output(&mut podman(&[
            "exec", "web", "ip", "-4", "addr", "show", "eth0",
        ]));
        check(
            stdout(&exec).contains(&format!("inet {ip}/")),
            "podman exec: the guest's eth0 has podman's address",
            &exec,
        )?;
        let mut body = String::new();
        eventually(60, "HTTP from the guest over podman's bridge", || {
            body = http_get(&format!("{ip}:8080")).unwrap_or_default();
            body.contains("served-by-brig")
        })
        .map_err(|e| format!("{e}: last answer {body:?}"))
    })();
    let rm = procs::output(&mut podman(&["rm", "-f", "web"]));
    result?;
    check(rm.status.success(), "podman rm -f web", &rm)
}

pub fn http_get(addr: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// The used part of a `MemUsage` column (`12.5MiB / 2.9GiB`), in bytes.
pub fn mem_usage_bytes(column: &str) -> u64 {
    let used = column.split('/').next().unwrap_or("").trim();
    let split = used
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(used.len());
    let (number, unit) = used.split_at(split);
    let scale: f64 = match unit.trim() {
        "B" => 1.0,
        "kB" | "KB" => 1e3,
        "KiB" => 1024.0,
        "MB" => 1e6,
        "MiB" => 1048576.0,
        "GB" => 1e9,
        "GiB" => 1073741824.0,
        _ => 0.0,
    };
    (number.parse::<f64>().unwrap_or(0.0) * scale) as u64
}

/// What `run` flags set, and what an image's config sets, as a workload sees them:
/// `-e`, `-u`, `-w`, `-h`, `--memory`, `--read-only`, `-v` (a bind mount both ways).
pub const FLAGS_SCRIPT: &str =
    "echo $FOO; id -u; pwd; hostname; cat /sys/fs/cgroup/workload/memory.max; \
    touch /rootfile 2>/dev/null && echo rw || echo ro; cat /data/in; echo out > /data/out";

/// The host directory `-v` shares (writable by uid 1000), with a file in it.
pub fn bind_dir(name: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let d = base().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| e.to_string())?;
    std::fs::write(d.join("in"), "host-in\n").map_err(|e| e.to_string())?;
    Ok(d)
}

/// Checks a run of [`FLAGS_SCRIPT`] with `-e FOO=from-flag -u 1000:1000 -w /data -h flaghost
/// --memory 64m --read-only -v DIR:/data`.
pub fn check_flags_run(caller: &str, out: &Output, dir: &Path) -> Result<(), String> {
    let want = "from-flag\n1000\n/data\nflaghost\n67108864\nro\nhost-in\n";
    check(
        out.status.success() && stdout(out) == want,
        &format!("{caller} run with -e -u -w -h --memory --read-only -v"),
        out,
    )?;
    let written = std::fs::read_to_string(dir.join("out")).unwrap_or_default();
    if written != "out\n" {
        return Err(format!(
            "{caller}: the bind mount: the host reads {written:?}"
        ));
    }
    Ok(())
}

/// The flags of [`check_flags_run`], for `DIR`.
pub fn flags(dir: &Path) -> Vec<String> {
    [
        "-e",
        "FOO=from-flag",
        "-u",
        "1000:1000",
        "-w",
        "/data",
        "-h",
        "flaghost",
        "--memory",
        "64m",
        "--read-only",
        "-v",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("{}:/data", dir.display())])
    .collect()
}
