//! brig-init: pid 1 of every brig microVM.
//!
//! It mounts the kernel file systems, connects to the host over vsock, receives what to run
//! (a [`RunSpec`]), runs it, relays its stdio, reaps every process (init's duty), reports how
//! the workload ended, and resets the VM, which ends it. Any failure is reported to the host
//! when there is a connection, and on the console otherwise; the VM always ends.

mod checkpoint;
mod confine;
mod copy;
mod exec;
mod inflight;
mod mount;
mod net;
mod reaper;
mod restore;
mod rootfs;
mod stats;
mod sys;
mod user;
mod volumes;
mod vsock;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_protocol::{
    read_message, Message, RunSpec, AGENT_PORT, EXEC_PORT, HOST_CID, PROTOCOL_VERSION,
};

use exec::{send, HostWriter, SpawnError};

/// Prints a diagnostic on the console (the kernel's, captured by the VMM).
macro_rules! console {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), "brig-init: {}", format!($($arg)*));
    }};
}

fn connect_host() -> std::io::Result<File> {
    // The virtio-vsock driver is probed before init runs; retry briefly in case it is not.
    let mut last = None;
    for _ in 0..50 {
        match vsock::connect(HOST_CID as u32, AGENT_PORT) {
            Ok(f) => return Ok(f),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("vsock connect failed")))
}

fn build_env(spec: &RunSpec, id: &user::Identity) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |k: &str, v: &str, env: &mut Vec<(String, String)>| match env
        .iter_mut()
        .find(|(key, _)| key == k)
    {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    for kv in &spec.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k, v, &mut env);
    }
    let has = |env: &Vec<(String, String)>, k: &str| env.iter().any(|(key, _)| key == k);
    if !has(&env, "PATH") {
        set("PATH", exec::DEFAULT_PATH, &mut env);
    }
    if !has(&env, "HOME") {
        set("HOME", &id.home, &mut env);
    }
    if !has(&env, "HOSTNAME") {
        if let Ok(h) = fs::read_to_string("/proc/sys/kernel/hostname") {
            set("HOSTNAME", h.trim(), &mut env);
        }
    }
    if spec.tty && !has(&env, "TERM") {
        set("TERM", "xterm", &mut env);
    }
    env
}

/// Puts the workloads in a cgroup of their own (for `brig stats`, and the limits asked for);
/// returns its cgroup.procs for the main workload to join.
fn workload_cgroup(spec: &RunSpec) -> Result<Option<File>, String> {
    let root = "/sys/fs/cgroup";
    let dir = WORKLOAD_CGROUP;
    let err = |what: &str, e: std::io::Error| format!("cgroup {what}: {e}");
    fs::write(
        format!("{root}/cgroup.subtree_control"),
        "+memory +pids +cpu",
    )
    .map_err(|e| err("controllers", e))?;
    // cpuset where the kernel has it: runtimes (the JVM, Go, .NET) size their thread pools
    // from cpuset.cpus.effective, as in a docker container, and runc/systemd inside use it.
    let _ = fs::write(format!("{root}/cgroup.subtree_control"), "+cpuset");
    // hugetlb likewise (hugetlb.<size>.max, as in a docker container on a host that has it).
    let _ = fs::write(format!("{root}/cgroup.subtree_control"), "+hugetlb");
    fs::create_dir_all(dir).map_err(|e| err("create", e))?;
    if spec.memory_limit > 0 {
        fs::write(format!("{dir}/memory.max"), spec.memory_limit.to_string())
            .map_err(|e| err("memory.max", e))?;
    }
    // docker's -m/--memory-swap rules (RunSpec::swap_max). Without CONFIG_SWAP the file is
    // missing: an error only when --memory-swap asked for something.
    if let Some(swap) = spec.swap_max() {
        let written = fs::write(format!("{dir}/memory.swap.max"), swap);
        if spec.memory_swap != 0 {
            written.map_err(|e| err("memory.swap.max", e))?;
        }
    }
    // --cpuset-cpus/--cpuset-mems: the host pins the VM to the CPUs asked for, and the
    // workload gets every vCPU, as a container gets the CPUs of its set.
    if !spec.cpuset_cpus.is_empty() {
        fs::write(format!("{dir}/cpuset.cpus"), &spec.cpuset_cpus)
            .map_err(|e| err("cpuset.cpus", e))?;
    }
    if !spec.cpuset_mems.is_empty() {
        fs::write(format!("{dir}/cpuset.mems"), &spec.cpuset_mems)
            .map_err(|e| err("cpuset.mems", e))?;
    }
    if spec.pids_limit > 0 {
        fs::write(format!("{dir}/pids.max"), spec.pids_limit.to_string())
            .map_err(|e| err("pids.max", e))?;
    }
    OpenOptions::new()
        .write(true)
        .open(format!("{dir}/cgroup.procs"))
        .map(Some)
        .map_err(|e| err("cgroup.procs", e))
}

/// Changes the workload cgroup's limits (each a number or `max`, checked: the host's word
/// is written to a cgroup file).
fn update_limits(u: &brig_protocol::ResourceUpdate) -> Result<(), String> {
    let dir = WORKLOAD_CGROUP;
    for (file, value) in [
        ("memory.max", &u.memory_max),
        ("memory.swap.max", &u.memory_swap_max),
        ("pids.max", &u.pids_max),
    ] {
        let Some(v) = value else { continue };
        if v != "max" && (v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!("cgroup {file}: bad value {v:?}"));
        }
        match fs::write(format!("{dir}/{file}"), v) {
            // A kernel without swap has no swap to limit (callers such as containerd's shim
            // always send it).
            Err(e) if file == "memory.swap.max" && e.kind() == std::io::ErrorKind::NotFound => {}
            r => r.map_err(|e| format!("cgroup {file}: {e}"))?,
        }
    }
    Ok(())
}

fn prepare(
    spec: &RunSpec,
    phases: &mut Phases,
) -> Result<(user::Identity, Option<File>), SpawnError> {
    if let Some(rootfs) = &spec.rootfs {
        rootfs::enter(rootfs, &spec.hostname, &mut |step| phases.mark(step))
            .map_err(SpawnError::setup)?;
        phases.mark("root mounted");
    }
    if !spec.hostname.is_empty() {
        sys::sethostname(&spec.hostname)
            .map_err(|e| SpawnError::setup(format!("hostname: {e}")))?;
    }
    if let Some(network) = &spec.network {
        net::apply(network).map_err(|e| SpawnError::setup(format!("network: {e}")))?;
        phases.mark("network set");
    }
    let id = user::resolve(&spec.user, &spec.groups).map_err(SpawnError::setup)?;
    let cwd = if spec.cwd.is_empty() {
        "/"
    } else {
        spec.cwd.as_str()
    };
    fs::create_dir_all(cwd)
        .map_err(|e| SpawnError::setup(format!("working directory {cwd}: {e}")))?;
    let cgroup = workload_cgroup(spec).map_err(SpawnError::setup)?;
    phases.mark("user, cwd, cgroup");
    Ok((id, cgroup))
}

/// The agent's steps between a Run and the workload's start, with the guest uptime at the
/// end of each, reported in Started for `brig run --timings`.
#[derive(Default)]
struct Phases(Vec<(String, u64)>);

impl Phases {
    fn mark(&mut self, name: &str) {
        self.0.push((name.to_string(), sys::uptime_ns()));
    }
}

/// The cgroup workloads run in when `-m` or `--pids-limit` asked for one.
pub const WORKLOAD_CGROUP: &str = "/sys/fs/cgroup/workload";

/// The main workload's pid, for Kill requests (0 until it runs).
static MAIN_PID: AtomicI32 = AtomicI32::new(0);

/// The main workload's pid (0 until it runs).
pub fn main_pid() -> i32 {
    MAIN_PID.load(Ordering::SeqCst)
}

fn hello(writer: &HostWriter, uptime_ns: u64) -> Result<(), String> {
    send(
        writer,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            uptime_ns,
        },
    )
    .map_err(|e| format!("sending hello: {e}"))
}

fn fail(writer: &HostWriter, e: SpawnError) -> String {
    // The host stops the VM once it has the verdict (see the Exit below).
    sys::sync();
    let _ = send(
        writer,
        &Message::ExecFailed {
            kind: e.kind,
            message: e.message.clone(),
        },
    );
    e.message
}

/// The main connection: Hello, then a Run. A Run with a command runs the main workload and
/// ends the VM when it ends; one without only mounts the root and then serves requests on
/// this connection (how `brig cp` reads a stopped sandbox) until the host closes it.
/// A Freeze instead of the Run makes this VM a template: the session goes on over the
/// connection of the first restored copy (see [`restore`]).
fn serve_main(mut conn: File, mut uptime: u64) -> Result<(), String> {
    let (writer, mut reader, mut spec) = loop {
        let writer: HostWriter = Arc::new(Mutex::new(conn.try_clone().map_err(|e| e.to_string())?));
        hello(&writer, uptime)?;
        let mut reader = conn;
        match read_message(&mut reader) {
            Ok(Some(Message::Run(spec))) => break (writer, reader, *spec),
            Ok(Some(Message::Freeze)) => {
                conn = restore::freeze(writer, reader)?;
                uptime = sys::uptime_ns();
            }
            Ok(other) => return Err(format!("expected a run request, got {other:?}")),
            Err(e) => return Err(format!("reading the run request: {e}")),
        }
    };
    let mut phases = Phases::default();
    phases.mark("run received");
    if spec.cwd.is_empty() {
        spec.cwd = "/".into();
    }
    let (id, cgroup) = prepare(&spec, &mut phases).map_err(|e| fail(&writer, e))?;
    if let Some(security) = spec.security.as_ref().filter(|_| !spec.argv.is_empty()) {
        // Before /proc/sys turns read-only.
        confine::harden_kernel(security)
            .map_err(|e| fail(&writer, SpawnError::setup(format!("kernel hardening: {e}"))))?;
        confine::protect_paths(security)
            .map_err(|e| fail(&writer, SpawnError::setup(format!("masking paths: {e}"))))?;
        phases.mark("kernel hardened");
    }
    if spec.argv.is_empty() {
        let _ = send(
            &writer,
            &Message::Started {
                pid: 0,
                uptime_ns: sys::uptime_ns(),
                phases: phases.0,
            },
        );
        while let Ok(Some(request)) = read_message(&mut reader) {
            serve_request(request, &mut reader, &writer)?;
        }
        return Ok(());
    }
    let env = build_env(&spec, &id);
    let workload = {
        let _guard = reaper::spawn_guard();
        let mut mark = |name: &str| phases.mark(name);
        exec::spawn(&spec, &id, env, reader, writer.clone(), cgroup, &mut mark)
            .map_err(|e| fail(&writer, e))?
    };
    MAIN_PID.store(workload.pid, Ordering::SeqCst);
    checkpoint::register(writer.clone(), spec.stdin, spec.tty);
    let _ = send(
        &writer,
        &Message::Started {
            pid: workload.pid as u32,
            uptime_ns: sys::uptime_ns(),
            phases: phases.0,
        },
    );
    std::thread::spawn(exec_listener);

    let status = reaper::reap_until(workload.pid);
    // As docker does when the main process ends: nothing else in the sandbox lives on.
    let _ = sys::kill(-1, libc::SIGKILL);
    reaper::reap_all();
    let uptime_ns = sys::uptime_ns();
    workload.finish_output();
    // Execs that ended (or were just killed) report their status before the VM resets.
    if !inflight::wait_idle(Duration::from_secs(2)) {
        console!("an exec did not report its exit status in time");
    }
    let status = status.ok_or("the workload vanished without an exit status")?;
    // The sandbox's disks are whole before the host hears the status: it stops the VM as
    // soon as it has it, without waiting for this guest's own reset (the kernel's shutdown
    // path, tens of milliseconds in a nested VM), and a stopped sandbox's scratch disk must
    // hold what its workloads wrote (`brig start`, `brig cp`). Unless the host throws the
    // disks away (`--rm`).
    if !spec.discard_disks {
        sys::sync();
    }
    send(
        &writer,
        &Message::Exit(reaper::exit_status(status, uptime_ns)),
    )
    .map_err(|e| format!("sending the exit status: {e}"))
}

/// A request other than Run (on an exec connection, or a maintenance session).
fn serve_request(request: Message, reader: &mut File, writer: &HostWriter) -> Result<(), String> {
    let done = |r: Result<(), String>| {
        send(writer, &Message::Done { error: r.err() }).map_err(|e| e.to_string())
    };
    match request {
        Message::Kill { signal } => {
            let pid = main_pid();
            done(if pid > 0 {
                sys::kill(pid, signal).map_err(|e| e.to_string())
            } else {
                Err("no workload is running".into())
            })
        }
        Message::StatsRequest => {
            send(writer, &Message::Stats(stats::sample())).map_err(|e| e.to_string())
        }
        Message::Stat { path } => match copy::stat(&path) {
            Ok(info) => send(writer, &Message::PathInfo(info)).map_err(|e| e.to_string()),
            Err(e) => done(Err(e)),
        },
        Message::CopyOut { path } => done(copy::copy_out(&path, writer)),
        Message::CopyIn { path } => done(copy::copy_in(&path, reader)),
        Message::Update(update) => done(update_limits(&update)),
        Message::Checkpoint => done(checkpoint::park()),
        other => Err(format!("unexpected request {other:?}")),
    }
}

/// Accepts the host's further connections (exec, signals, stats, copies), one thread each.
fn exec_listener() {
    let listener = match vsock::listen(EXEC_PORT) {
        Ok(l) => l,
        Err(e) => {
            console!("cannot listen on vsock port {EXEC_PORT}: {e}");
            return;
        }
    };
    while let Ok(conn) = vsock::accept(&listener) {
        std::thread::spawn(move || {
            if let Err(e) = serve_exec(conn) {
                console!("exec connection: {e}");
            }
        });
    }
}

fn serve_exec(conn: File) -> Result<(), String> {
    let writer: HostWriter = Arc::new(Mutex::new(conn.try_clone().map_err(|e| e.to_string())?));
    hello(&writer, sys::uptime_ns())?;
    let mut reader = conn;
    match read_message(&mut reader) {
        Ok(Some(Message::Run(spec))) => {
            let _session = inflight::Session::begin();
            exec_process(*spec, reader, writer)
        }
        Ok(Some(request)) => serve_request(request, &mut reader, &writer),
        Ok(None) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// `brig exec`: one more process in the running sandbox, in the workloads' cgroup.
fn exec_process(mut spec: RunSpec, reader: File, writer: HostWriter) -> Result<(), String> {
    if spec.cwd.is_empty() {
        spec.cwd = "/".into();
    }
    let id =
        user::resolve(&spec.user, &spec.groups).map_err(|e| fail(&writer, SpawnError::setup(e)))?;
    if !std::path::Path::new(&spec.cwd).is_dir() {
        return Err(fail(
            &writer,
            SpawnError::setup(format!("working directory {}: no such directory", spec.cwd)),
        ));
    }
    let cgroup = OpenOptions::new()
        .write(true)
        .open(format!("{WORKLOAD_CGROUP}/cgroup.procs"))
        .ok();
    let env = build_env(&spec, &id);
    let (workload, status) = {
        let _guard = reaper::spawn_guard();
        let workload = exec::spawn(&spec, &id, env, reader, writer.clone(), cgroup, &mut |_| {})
            .map_err(|e| fail(&writer, e))?;
        let status = reaper::register(workload.pid);
        (workload, status)
    };
    let _ = send(
        &writer,
        &Message::Started {
            pid: workload.pid as u32,
            uptime_ns: sys::uptime_ns(),
            phases: Vec::new(),
        },
    );
    let status = status
        .recv()
        .map_err(|_| "the process vanished without an exit status".to_string())?;
    let uptime_ns = sys::uptime_ns();
    workload.finish_output();
    // No flush: the VM goes on, and the main workload's end flushes what an exec wrote.
    send(
        &writer,
        &Message::Exit(reaper::exit_status(status, uptime_ns)),
    )
    .map_err(|e| e.to_string())
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        console!("internal error: {info}");
        sys::reboot();
    }));
    if std::process::id() != 1 {
        console!("must run as pid 1 (the init of a brig microVM)");
        std::process::exit(1);
    }
    let boot_uptime = sys::uptime_ns();
    if let Err(e) = mount::kernel_filesystems("") {
        console!("{e}");
        sys::reboot();
    }
    if let Err(e) = net::loopback_up() {
        console!("cannot bring up the loopback interface: {e}");
    }
    match connect_host() {
        Ok(conn) => {
            if let Err(e) = serve_main(conn, boot_uptime) {
                console!("{e}");
            }
        }
        Err(e) => console!("cannot reach the host over vsock: {e}"),
    }
    sys::reboot();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_gets_docker_defaults() {
        let spec = RunSpec {
            env: vec!["A=1".into(), "B=x=y".into(), "A=2".into()],
            tty: true,
            ..Default::default()
        };
        let id = user::Identity {
            uid: 0,
            gid: 0,
            groups: vec![],
            home: "/root".into(),
        };
        let env = build_env(&spec, &id);
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("A").as_deref(), Some("2"));
        assert_eq!(get("B").as_deref(), Some("x=y"));
        assert_eq!(get("PATH").as_deref(), Some(exec::DEFAULT_PATH));
        assert_eq!(get("HOME").as_deref(), Some("/root"));
        assert_eq!(get("TERM").as_deref(), Some("xterm"));
    }
}
