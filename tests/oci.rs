//! brig as an OCI runtime (`brig-runc`, runc's dialect): the contract callers rely on, driven
//! directly (state JSON and transitions, the pid file, the pid's exit status, stdio, error
//! strings), and real callers: containerd 1.6 through `ctr run --runc-binary`, and podman 4.3
//! through `--runtime` (with conmon).
//! Needs KVM: runs under scripts/with-kvm where this host has none usable (see
//! common/kvm.rs), and as root there. Everything lives on L1's /run (a tmpfs).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::fixture::{check, eventually, process_gone, stderr, stdout};
use common::images;
use common::kvm::{run_tests_with, trial, Limits};
use common::procs;

/// The test's scratch directory on L1's tmpfs: brig's home and runtime directory, the
/// runtime root, bundles, containerd's state.
fn base() -> &'static PathBuf {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        let b = PathBuf::from(format!("/run/brig-oci-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        for d in ["home", "run", "root", "bin", "tmp"] {
            std::fs::create_dir_all(b.join(d)).unwrap();
        }
        // The runtime under its own name: brig dispatches on argv[0].
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_brig"), b.join("bin/brig-runc")).unwrap();
        b
    })
}

fn runc_path() -> PathBuf {
    base().join("bin/brig-runc")
}

/// A command with brig's home and runtime directory pointed into [`base`].
fn with_env(cmd: &mut Command) -> &mut Command {
    cmd.env("BRIG_HOME", base().join("home"))
        .env("BRIG_RUNTIME_DIR", base().join("run"))
        .env("TMPDIR", base().join("tmp"))
        .stdin(Stdio::null());
    procs::mark(cmd)
}

/// `brig-runc --root ROOT --log LOG --log-format json ARGS`.
fn runc(args: &[&str]) -> Command {
    let mut c = Command::new(runc_path());
    c.arg("--root")
        .arg(base().join("root"))
        .arg("--log")
        .arg(base().join("runc.log"))
        .args(["--log-format", "json"])
        .args(args);
    with_env(&mut c);
    c
}

fn runc_out(args: &[&str]) -> Output {
    procs::output(&mut runc(args))
}

/// A bundle `name` whose rootfs is busybox-static with a few applets, running `args`.
fn bundle(name: &str, args: &[&str]) -> PathBuf {
    let dir = base().join("bundles").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let bin = dir.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for a in ["sh", "echo", "sleep", "cat", "true"] {
        std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
    }
    std::fs::write(bin.join("data"), "not a program\n").unwrap();
    let out = procs::output(with_env(Command::new(runc_path()).args([
        "spec",
        "--bundle",
        dir.to_str().unwrap(),
    ])));
    assert!(out.status.success(), "spec: {}", stderr(&out));
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["args"] = serde_json::json!(args);
    config["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    config["root"]["readonly"] = serde_json::json!(false);
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

/// `create`, its stdout and stderr in files under the bundle (what its VMM process keeps
/// as the container's stdio: a pipe would stay open until the container ends); returns
/// whether it succeeded and what it wrote on stderr.
fn create(id: &str, bundle: &Path, pid_file: Option<&Path>) -> (bool, String) {
    let mut args = vec!["create", "--bundle", bundle.to_str().unwrap()];
    if let Some(p) = pid_file {
        args.extend(["--pid-file", p.to_str().unwrap()]);
    }
    args.push(id);
    let err_path = bundle.join("stderr");
    let status = runc(&args)
        .stdout(std::fs::File::create(bundle.join("stdout")).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .unwrap();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    (status.success(), err)
}

fn state(id: &str) -> Result<serde_json::Value, String> {
    let out = runc_out(&["state", id]);
    check(out.status.success(), "state", &out)?;
    serde_json::from_slice(&out.stdout).map_err(|e| format!("state JSON: {e}: {}", stdout(&out)))
}

/// Waits for our child (or adopted orphan) `pid` and returns its exit code; signal deaths
/// read as 128+N.
fn reap(pid: i32) -> Result<i32, String> {
    use rustix::process::{waitpid, Pid, WaitOptions};
    let p = Pid::from_raw(pid).ok_or("pid 0")?;
    let (_, status) = waitpid(Some(p), WaitOptions::empty())
        .map_err(|e| format!("waitpid {pid}: {e}"))?
        .ok_or("waitpid: no status")?;
    Ok(match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        _ => -1,
    })
}

/// Nothing of brig's left: no sandbox state, no runtime directory, no container state.
fn leftovers() -> Vec<String> {
    let mut left = Vec::new();
    for dir in [
        base().join("home/sandboxes"),
        base().join("run"),
        base().join("root"),
    ] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            left.extend(entries.flatten().map(|e| e.path().display().to_string()));
        }
    }
    left.retain(|p| !p.ends_with("/leases"));
    left
}

/// Runs `f`; when it fails, force-deletes `ids` so that the next trials start clean.
fn cleaning(ids: &[&str], f: fn() -> Result<(), String>) -> Result<(), String> {
    let r = f();
    if r.is_err() {
        for id in ids {
            let _ = runc_out(&["delete", "--force", id]);
        }
    }
    r
}

fn contract_states_pid_file_and_errors() -> Result<(), String> {
    cleaning(&["c1"], contract)
}

fn contract() -> Result<(), String> {
    let b = bundle("c1", &["sleep", "60"]);
    let pid_file = b.join("init.pid");
    let (ok, err) = create("c1", &b, Some(&pid_file));
    if !ok {
        return Err(format!("create: {err}"));
    }
    // Written whole: no temporary file beside it.
    let names: Vec<_> = std::fs::read_dir(&b)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.iter().any(|n| n.starts_with(".init")) {
        return Err(format!(
            "a temporary file is left beside the pid file: {names:?}"
        ));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .map_err(|e| e.to_string())?
        .trim()
        .parse()
        .map_err(|e| format!("pid file: {e}"))?;
    let s = state("c1")?;
    for key in [
        "ociVersion",
        "id",
        "pid",
        "status",
        "bundle",
        "rootfs",
        "created",
        "owner",
    ] {
        if s.get(key).is_none() {
            return Err(format!("state has no {key}: {s}"));
        }
    }
    if s["status"] != "created" || s["pid"] != pid || s["id"] != "c1" {
        return Err(format!("after create: {s}"));
    }
    if s["bundle"] != b.to_str().unwrap() || s["rootfs"] != b.join("rootfs").to_str().unwrap() {
        return Err(format!("bundle and rootfs: {s}"));
    }
    let created = s["created"].as_str().unwrap_or("");
    created
        .parse::<jiff::Timestamp>()
        .map_err(|e| format!("created {created:?} is not RFC 3339: {e}"))?;
    let b2 = bundle("c1-again", &["true"]);
    let (ok, err) = create("c1", &b2, None);
    if ok || !err.contains("container with id exists: c1") {
        return Err(format!("create of a taken id: {ok} {err:?}"));
    }
    // start's stdout must reach EOF at once (go-runc reads it to the end).
    let start = runc_out(&["start", "c1"]);
    check(start.status.success(), "start", &start)?;
    if state("c1")?["status"] != "running" {
        return Err("not running after start".into());
    }
    let ps = runc_out(&["ps", "--format", "json", "c1"]);
    check(
        stdout(&ps).trim() == format!("[{pid}]"),
        "ps --format json lists the VMM process",
        &ps,
    )?;
    let twice = runc_out(&["start", "c1"]);
    let said = std::fs::read_to_string(b.join("stderr")).unwrap_or_default();
    check(
        stderr(&twice).contains("cannot start an already running container"),
        &format!("second start (the container's stderr: {said:?})"),
        &twice,
    )?;
    let busy = runc_out(&["delete", "c1"]);
    check(
        stderr(&busy).contains("cannot delete container c1 that is not stopped: running"),
        "delete of a running container",
        &busy,
    )?;
    let kill = runc_out(&["kill", "c1", "TERM"]);
    check(kill.status.success(), "kill TERM", &kill)?;
    // The pid exits with the workload's status: 128+15, relayed to `sleep`.
    let code = reap(pid)?;
    if code != 143 {
        return Err(format!("the VMM process exited {code}, not 143"));
    }
    let s = state("c1")?;
    if s["status"] != "stopped" || s["pid"] != 0 {
        return Err(format!("after the end: {s}"));
    }
    let not_running = runc_out(&["kill", "c1", "KILL"]);
    check(
        !not_running.status.success() && stderr(&not_running).contains("container not running"),
        "kill of a stopped container",
        &not_running,
    )?;
    let all = runc_out(&["kill", "--all", "c1", "9"]);
    check(
        all.status.success(),
        "kill --all of a stopped container",
        &all,
    )?;
    let del = runc_out(&["delete", "c1"]);
    check(del.status.success(), "delete", &del)?;
    let gone = runc_out(&["state", "c1"]);
    check(
        !gone.status.success() && stderr(&gone).contains("does not exist"),
        "state of a deleted container",
        &gone,
    )?;
    let force = runc_out(&["delete", "--force", "c1"]);
    check(
        force.status.success(),
        "delete --force of a missing one",
        &force,
    )?;
    // Each error is also a JSON line in --log, where containerd's shim reads it.
    let log = std::fs::read_to_string(base().join("runc.log")).unwrap_or_default();
    let logged = log.lines().any(|l| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
            v["level"] == "error" && v["msg"] == "container not running" && v["time"].is_string()
        })
    });
    if !logged {
        return Err(format!("no JSON error line for kill in the log: {log}"));
    }
    let left = leftovers();
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}"));
    }
    Ok(())
}

fn stdio_exit_code_and_create_errors() -> Result<(), String> {
    cleaning(&["c2", "c3", "c4"], stdio_and_errors)
}

fn stdio_and_errors() -> Result<(), String> {
    let b = bundle("c2", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    let (out_path, err_path) = (b.join("stdout"), b.join("stderr"));
    let (ok, err) = create("c2", &b, None);
    if !ok {
        return Err(format!("create: {err}"));
    }
    let pid = state("c2")?["pid"].as_i64().unwrap_or(0) as i32;
    let start = runc_out(&["start", "c2"]);
    check(start.status.success(), "start", &start)?;
    let code = reap(pid)?;
    let (o, e) = (
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    );
    if code != 3 || o != "out\n" || !e.contains("err\n") {
        return Err(format!("exit {code}, stdout {o:?}, stderr {e:?}"));
    }
    let del = runc_out(&["delete", "c2"]);
    check(del.status.success(), "delete", &del)?;
    // run: create, start, wait, delete, with the workload's exit status.
    let b = bundle("c4", &["sh", "-c", "echo ran; exit 5"]);
    let out = runc_out(&["run", "--bundle", b.to_str().unwrap(), "c4"]);
    check(
        out.status.code() == Some(5) && stdout(&out) == "ran\n",
        "run: output and exit 5",
        &out,
    )?;
    // runc's create-time LookPath, in runc's words.
    for (args, words) in [
        (&["nosuchcmd"][..], "executable file not found in $PATH"),
        (&["/bin/data"][..], "permission denied"),
    ] {
        let b = bundle("c3", args);
        let (ok, err) = create("c3", &b, None);
        if ok || !err.contains(words) {
            return Err(format!("create of {args:?}: {ok} {err:?}, not {words:?}"));
        }
    }
    let left = leftovers();
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}"));
    }
    Ok(())
}

/// The busybox test image as an OCI archive (what `ctr images import` and podman take).
fn archive() -> &'static Path {
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
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = with_env(&mut cmd).spawn().expect("containerd");
        *CONTAINERD.lock().unwrap() = Some(child);
        let sock = dir.join("c.sock");
        eventually(60, "containerd's socket", || sock.exists()).unwrap();
        let tar = archive();
        let out = ctr(&[
            "images",
            "import",
            "--snapshotter",
            "native",
            "--base-name",
            "localhost/bb",
        ])
        .arg(tar)
        .output()
        .unwrap();
        assert!(out.status.success(), "import: {}", stderr(&out));
        dir
    })
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

fn brig_vmms() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c).contains("__supervise") && !process_gone(*pid)
            })
        })
        .collect()
}

fn ctr_run_kill_and_nothing_left() -> Result<(), String> {
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
    let left = leftovers();
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
    let mut c = Command::new("podman");
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

fn podman_run(args: &[&str]) -> Output {
    let mut all = vec!["run", "--pull", "never", "--network", "none"];
    all.extend([
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ]);
    all.extend_from_slice(args);
    procs::output(&mut podman(&all))
}

fn podman_exit_codes_stop_and_nothing_left() -> Result<(), String> {
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
    eventually(30, "no VMM process left", || brig_vmms().is_empty())?;
    let left = leftovers();
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}"));
    }
    Ok(())
}

fn prepare() {
    images::fresh_busybox_layouts();
}

fn setup() {
    // The VMM processes `create` starts outlive it: this process adopts them, so that the
    // trials can wait for their exit status as containerd's shim does.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    base();
}

fn main() {
    run_tests_with(
        Limits::secs(300, 600),
        prepare,
        setup,
        vec![
            trial(
                "contract_states_pid_file_and_errors",
                contract_states_pid_file_and_errors,
            ),
            trial(
                "stdio_exit_code_and_create_errors",
                stdio_exit_code_and_create_errors,
            ),
            trial(
                "ctr_run_kill_and_nothing_left",
                ctr_run_kill_and_nothing_left,
            ),
            trial(
                "podman_exit_codes_stop_and_nothing_left",
                podman_exit_codes_stop_and_nothing_left,
            ),
        ],
    )
}
