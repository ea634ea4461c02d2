//! dockerd 20.10 as a caller of tests/oci.rs: `--add-runtime brig=PATH` and
//! `docker run --runtime brig`, its data and exec roots on L1's /run, vfs storage (no
//! overlayfs in L1), its default bridge without iptables (the containers' network reaches L1
//! over docker0; docker configures each container's namespace from its prestart hook).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::callers::brig_vmms;
use crate::common::fixture::{check, eventually, stdout};
use crate::common::{self, images, procs};
use crate::{base, leftovers, runc_path, with_env};

/// Debian's docker CLI (a newer one may shadow it on PATH).
const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "localhost/bb:latest";

/// The dockerd this test started (stopped at the end of the trial).
static DOCKERD: Mutex<Option<std::process::Child>> = Mutex::new(None);

fn dir() -> PathBuf {
    base().join("docker")
}

fn docker(args: &[&str]) -> Command {
    let mut c = Command::new(DOCKER);
    c.arg("-H")
        .arg(format!("unix://{}", dir().join("d.sock").display()))
        .args(args);
    with_env(&mut c);
    c
}

fn docker_out(args: &[&str]) -> Output {
    procs::output(&mut docker(args))
}

/// dockerd (with the containerd it starts itself), brig-runc added as runtime `brig`, and
/// the busybox test image loaded.
fn dockerd() -> &'static Path {
    static D: OnceLock<()> = OnceLock::new();
    D.get_or_init(|| {
        let d = dir();
        std::fs::create_dir_all(d.join("data")).unwrap();
        std::fs::create_dir_all(d.join("exec")).unwrap();
        let log = std::fs::File::create(d.join("log")).unwrap();
        let mut cmd = Command::new("/usr/sbin/dockerd");
        cmd.arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("d.sock").display()))
            .arg("--pidfile")
            .arg(d.join("d.pid"))
            .args(["--iptables=false", "--ip6tables=false"])
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .args(["--storage-driver", "vfs", "--log-level", "warn"])
            .arg("--add-runtime")
            .arg(format!("brig={}", runc_path().display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = with_env(&mut cmd).spawn().expect("dockerd");
        *DOCKERD.lock().unwrap() = Some(child);
        eventually(180, "dockerd answers", || {
            docker(&["version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}; dockerd's log: {}",
                std::fs::read_to_string(d.join("log")).unwrap_or_default()
            )
        });
        let tar = d.join("bb-docker.tar");
        common::run_tool(
            Command::new("skopeo")
                .arg("copy")
                .arg(format!(
                    "oci:{}",
                    images::layouts_dir().join("bb").display()
                ))
                .arg(format!("docker-archive:{}:{IMAGE}", tar.display())),
        );
        let out = docker_out(&["load", "-i", tar.to_str().unwrap()]);
        assert!(out.status.success(), "docker load: {out:?}");
    });
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(dir)
}

/// `docker run --rm --runtime brig --network none IMAGE ARGS`.
fn run(args: &[&str]) -> Output {
    dockerd();
    let mut all = vec![
        "run",
        "--rm",
        "--runtime",
        "brig",
        "--network",
        "none",
        IMAGE,
    ];
    all.extend_from_slice(args);
    docker_out(&all)
}

/// `docker run -d --runtime brig --network none --name NAME IMAGE ARGS`.
fn run_detached(name: &str, args: &[&str]) -> Output {
    let mut all = vec![
        "run",
        "-d",
        "--runtime",
        "brig",
        "--network",
        "none",
        "--name",
        name,
        IMAGE,
    ];
    all.extend_from_slice(args);
    docker_out(&all)
}

pub fn docker_run_exec_stop_and_nothing_left() -> Result<(), String> {
    let out = run(&["sh", "-c", "echo hello from brig; exit 3"]);
    check(
        out.status.code() == Some(3) && stdout(&out) == "hello from brig\n",
        "docker run: output and exit 3",
        &out,
    )?;
    for (cmd, code, what) in [
        ("nosuchcmd", 127, "a command that is not there"),
        ("/etc/passwd", 126, "a file that is not executable"),
    ] {
        let out = run(&[cmd]);
        check(
            out.status.code() == Some(code),
            &format!("docker run of {what}: {code}"),
            &out,
        )?;
    }
    // The image's env, then flags.
    let out = run(&["sh", "-c", "echo $FOO"]);
    check(
        stdout(&out) == "image\n",
        "docker run: the image's env",
        &out,
    )?;
    let shared = crate::callers::bind_dir("docker-bind")?;
    let mut args: Vec<String> = ["run", "--rm", "--runtime", "brig", "--network", "none"]
        .map(String::from)
        .to_vec();
    args.extend(crate::callers::flags(&shared));
    args.extend([IMAGE, "sh", "-c", crate::callers::FLAGS_SCRIPT].map(String::from));
    let out = docker_out(&args.iter().map(String::as_str).collect::<Vec<_>>());
    crate::callers::check_flags_run("docker", &out, &shared)?;
    // -i: the caller's stdin reaches the workload.
    let mut cmd = docker(&[
        "run",
        "-i",
        "--rm",
        "--runtime",
        "brig",
        "--network",
        "none",
        IMAGE,
        "cat",
    ]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(b"piped through docker\n");
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    check(
        out.status.success() && stdout(&out) == "piped through docker\n",
        "docker run -i: stdin reaches the workload",
        &out,
    )?;
    // Detached, exec, stop (SIGTERM honoured by a trap), rm.
    let out = run_detached(
        "d1",
        &["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
    );
    check(out.status.success(), "docker run -d", &out)?;
    eventually(120, "d1 running", || {
        stdout(&docker_out(&["inspect", "-f", "{{.State.Running}}", "d1"])).trim() == "true"
    })?;
    let out = docker_out(&["exec", "d1", "sh", "-c", "echo in-exec; exit 4"]);
    check(
        out.status.code() == Some(4) && stdout(&out) == "in-exec\n",
        "docker exec: output and exit 4",
        &out,
    )?;
    // docker stats (containerd's metrics of the container's cgroup, the VMM's) and docker
    // top (brig-runc ps: the container's host process).
    let out = docker_out(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "d1"]);
    check(
        out.status.success() && crate::callers::mem_usage_bytes(&stdout(&out)) >= 1 << 20,
        "docker stats: the VM's memory",
        &out,
    )?;
    // docker update: containerd's shim runs `brig-runc update --resources -`; the workload
    // cgroup in the guest has the new limits.
    let out = docker_out(&[
        "update",
        "--memory",
        "96m",
        "--memory-swap",
        "192m",
        "--pids-limit",
        "32",
        "d1",
    ]);
    check(out.status.success(), "docker update", &out)?;
    let out = docker_out(&[
        "exec",
        "d1",
        "cat",
        "/sys/fs/cgroup/workload/memory.max",
        "/sys/fs/cgroup/workload/pids.max",
    ]);
    check(
        stdout(&out) == "100663296\n32\n",
        "docker update: memory.max and pids.max in the guest",
        &out,
    )?;
    let out = docker_out(&["top", "d1"]);
    check(
        out.status.success() && stdout(&out).contains("__supervise"),
        "docker top: the container's VMM process",
        &out,
    )?;
    let out = docker_out(&["stop", "-t", "20", "d1"]);
    check(out.status.success(), "docker stop", &out)?;
    let out = docker_out(&["inspect", "-f", "{{.State.ExitCode}}", "d1"]);
    check(
        stdout(&out).trim() == "0",
        "the workload's TERM trap ended it (exit 0, not 137)",
        &out,
    )?;
    let out = docker_out(&["rm", "d1"]);
    check(out.status.success(), "docker rm", &out)?;
    // A workload that ignores SIGTERM: stop's SIGKILL fallback, 137; rm -f of a running one.
    let out = run_detached(
        "d2",
        &[
            "sh",
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 1; done",
        ],
    );
    check(out.status.success(), "docker run -d (TERM ignored)", &out)?;
    // Once the trap is set (a SIGTERM before it would end the workload, as under runc).
    eventually(120, "d2's trap set", || {
        stdout(&docker_out(&["logs", "d2"])).contains("ready")
    })?;
    let out = docker_out(&["stop", "-t", "2", "d2"]);
    check(out.status.success(), "docker stop (SIGKILL fallback)", &out)?;
    let out = docker_out(&["inspect", "-f", "{{.State.ExitCode}}", "d2"]);
    check(
        stdout(&out).trim() == "137",
        "docker stop: SIGKILL after the timeout (137)",
        &out,
    )?;
    let out = run_detached("d3", &["sleep", "100"]);
    check(out.status.success(), "docker run -d d3", &out)?;
    for name in ["d2", "d3"] {
        let out = docker_out(&["rm", "-f", name]);
        check(out.status.success(), &format!("docker rm -f {name}"), &out)?;
    }
    bridge_network()?;
    eventually(30, "no VMM process left", || brig_vmms().is_empty())?;
    if let Some(mut d) = DOCKERD.lock().unwrap().take() {
        // SAFETY: kill on the pid of the dockerd this test started.
        unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
        let _ = d.wait();
    }
    let left = leftovers();
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let root = dir().display().to_string();
    match mounts.lines().find(|l| l.contains(&root)) {
        Some(m) => Err(format!("a mount is left: {m}")),
        None => Ok(()),
    }
}

/// docker's default network: libnetwork-setkey (the prestart hook) moves a veth into the
/// network namespace of the container's pid, brig's VMM process; the guest takes it over,
/// with docker's address, /etc/hosts and host name, and serves HTTP to L1 over docker0.
fn bridge_network() -> Result<(), String> {
    let run = docker_out(&[
        "run",
        "-d",
        "--runtime",
        "brig",
        "--name",
        "web",
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /www && echo served-by-brig > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    let result = (|| {
        check(run.status.success(), "docker run -d (bridge)", &run)?;
        let id = stdout(&run).trim().to_string();
        let ip = docker_out(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]);
        let ip = stdout(&ip).trim().to_string();
        if ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(format!("docker inspect: no IPv4 address ({ip:?})"));
        }
        let exec = docker_out(&[
            "exec",
            "web",
            "sh",
            "-c",
            "hostname; cat /etc/hosts; ip -4 addr show eth0",
        ]);
        let short = id.get(..12).unwrap_or(&id);
        check(
            stdout(&exec).starts_with(&format!("{short}\n"))
                && stdout(&exec).contains(&format!("{ip}\t{short}"))
                && stdout(&exec).contains(&format!("inet {ip}/")),
            "docker exec: docker's host name, /etc/hosts and address in the guest",
            &exec,
        )?;
        let mut body = String::new();
        eventually(60, "HTTP from the guest over docker0", || {
            body = crate::callers::http_get(&format!("{ip}:8080")).unwrap_or_default();
            body.contains("served-by-brig")
        })
        .map_err(|e| format!("{e}: last answer {body:?}"))
    })();
    let rm = docker_out(&["rm", "-f", "web"]);
    result?;
    check(rm.status.success(), "docker rm -f web", &rm)
}
