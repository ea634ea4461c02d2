//! brig as an OCI runtime (`brig-runc`, runc's dialect): the contract callers rely on, driven
//! directly (state JSON and transitions, the pid file, the pid's exit status, stdio, a
//! terminal through the console socket, error strings), and real callers: containerd 1.6
//! through `ctr run --runc-binary`, podman 4.3 through `--runtime` (with conmon), and dockerd
//! 20.10 through `--add-runtime brig=PATH`. And the rest of a bundle (oci/bundle.rs): a pod's
//! network namespace, mounts, hooks, capabilities and limits.
//! Needs KVM: runs under scripts/with-kvm where this host has none usable (see
//! common/kvm.rs), and as root there. Everything lives on L1's /run (a tmpfs).

#[path = "oci/bundle.rs"]
mod bundle_trial;
#[path = "oci/callers.rs"]
mod callers;
mod common;
#[path = "oci/console.rs"]
mod console;
#[path = "oci/cri.rs"]
mod cri;
#[path = "oci/docker.rs"]
mod docker;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::fixture::{check, stderr, stdout};
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
        std::os::unix::fs::symlink(common::kvm::brig_exe(), b.join("bin/brig-runc")).unwrap();
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
    for a in ["sh", "echo", "sleep", "cat", "true", "tty", "stty"] {
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
    config["process"]["terminal"] = serde_json::json!(false);
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
    // What is inside a leftover directory says who left it.
    let inside: Vec<String> = left
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path().display().to_string())
        .collect();
    left.extend(inside);
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
    // The container's process is the keeper; the VM runs in its jailed child (pid 1 of its
    // own PID namespace, not root).
    let jailed = common::fixture::is_jailed_vmm;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if children.split_whitespace().any(jailed) {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "no jailed VMM under the container's process {pid} (children: {children:?})"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
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
    // pause and resume, as runc's: "paused" in state, refused where runc refuses.
    let pause = runc_out(&["pause", "c1"]);
    check(pause.status.success(), "pause", &pause)?;
    if state("c1")?["status"] != "paused" {
        return Err(format!("after pause: {}", state("c1")?));
    }
    let again = runc_out(&["pause", "c1"]);
    check(
        !again.status.success() && stderr(&again).contains("container not running"),
        "pause of a paused container",
        &again,
    )?;
    let busy = runc_out(&["delete", "c1"]);
    check(
        stderr(&busy).contains("cannot delete container c1 that is not stopped: paused"),
        "delete of a paused container",
        &busy,
    )?;
    let resume = runc_out(&["resume", "c1"]);
    check(resume.status.success(), "resume", &resume)?;
    if state("c1")?["status"] != "running" {
        return Err(format!("after resume: {}", state("c1")?));
    }
    let again = runc_out(&["resume", "c1"]);
    check(
        !again.status.success() && stderr(&again).contains("container not paused"),
        "resume of a running container",
        &again,
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

fn stdio_tty_exit_code_and_create_errors() -> Result<(), String> {
    cleaning(&["c2", "c3", "c4", "c5"], stdio_and_errors)
}

fn stdio_and_errors() -> Result<(), String> {
    console::tty_through_the_console_socket()?;
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
                "stdio_tty_exit_code_and_create_errors",
                stdio_tty_exit_code_and_create_errors,
            ),
            trial(
                "bundle_network_mounts_hooks_and_limits",
                bundle_trial::bundle_network_mounts_hooks_and_limits,
            ),
            trial("rootfs_over_virtiofs", bundle_trial::rootfs_over_virtiofs),
            trial(
                "ctr_run_kill_and_nothing_left",
                callers::ctr_run_kill_and_nothing_left,
            ),
            trial(
                "podman_exit_codes_stop_and_nothing_left",
                callers::podman_exit_codes_stop_and_nothing_left,
            ),
            trial(
                "cri_pod_with_a_brig_container",
                cri::cri_pod_with_a_brig_container,
            ),
            trial(
                "docker_run_exec_stop_and_nothing_left",
                docker::docker_run_exec_stop_and_nothing_left,
            ),
        ],
    )
}
