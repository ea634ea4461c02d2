//! brig-init: pid 1 of every brig microVM.
//!
//! It mounts the kernel file systems, connects to the host over vsock, receives what to run
//! (a [`RunSpec`]), runs it, relays its stdio, reaps every process (init's duty), reports how
//! the workload ended, and resets the VM, which ends it. Any failure is reported to the host
//! when there is a connection, and on the console otherwise; the VM always ends.

mod exec;
mod mount;
mod rootfs;
mod sys;
mod user;
mod vsock;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_protocol::{
    read_message, ExitStatus, Message, RunSpec, AGENT_PORT, HOST_CID, PROTOCOL_VERSION,
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

/// Puts the workload in its own cgroup with the requested limits; returns its cgroup.procs.
fn workload_cgroup(spec: &RunSpec) -> Result<Option<File>, String> {
    if spec.memory_limit == 0 && spec.pids_limit == 0 {
        return Ok(None);
    }
    let root = "/sys/fs/cgroup";
    let dir = format!("{root}/workload");
    let err = |what: &str, e: std::io::Error| format!("cgroup {what}: {e}");
    fs::write(
        format!("{root}/cgroup.subtree_control"),
        "+memory +pids +cpu",
    )
    .map_err(|e| err("controllers", e))?;
    fs::create_dir_all(&dir).map_err(|e| err("create", e))?;
    if spec.memory_limit > 0 {
        fs::write(format!("{dir}/memory.max"), spec.memory_limit.to_string())
            .map_err(|e| err("memory.max", e))?;
        let _ = fs::write(format!("{dir}/memory.swap.max"), "0");
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

fn prepare(spec: &RunSpec) -> Result<(user::Identity, Option<File>), SpawnError> {
    if let Some(rootfs) = &spec.rootfs {
        rootfs::enter(rootfs, &spec.hostname).map_err(SpawnError::setup)?;
    }
    if !spec.hostname.is_empty() {
        sys::sethostname(&spec.hostname)
            .map_err(|e| SpawnError::setup(format!("hostname: {e}")))?;
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
    Ok((id, cgroup))
}

/// Runs the session on an established connection; returns when the Exit frame is sent.
fn session(conn: File, boot_uptime: u64) -> Result<(), String> {
    let writer: HostWriter = Arc::new(Mutex::new(conn.try_clone().map_err(|e| e.to_string())?));
    send(
        &writer,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            uptime_ns: boot_uptime,
        },
    )
    .map_err(|e| format!("sending hello: {e}"))?;
    let mut reader = conn;
    let mut spec = match read_message(&mut reader) {
        Ok(Some(Message::Run(spec))) => *spec,
        Ok(other) => return Err(format!("expected a run request, got {other:?}")),
        Err(e) => return Err(format!("reading the run request: {e}")),
    };
    if spec.cwd.is_empty() {
        spec.cwd = "/".into();
    }
    let fail = |e: SpawnError| {
        let _ = send(
            &writer,
            &Message::ExecFailed {
                kind: e.kind,
                message: e.message.clone(),
            },
        );
        e.message
    };
    let (id, cgroup) = prepare(&spec).map_err(fail)?;
    let env = build_env(&spec, &id);
    let workload = exec::spawn(&spec, &id, env, reader, writer.clone(), cgroup).map_err(fail)?;
    let _ = send(
        &writer,
        &Message::Started {
            pid: workload.pid as u32,
            uptime_ns: sys::uptime_ns(),
        },
    );

    // Reap everything; the workload's own status is what we report.
    let mut status = None;
    while let Some((pid, st)) = sys::wait_any() {
        if pid == workload.pid {
            status = Some(st);
            // As docker does when the main process ends: nothing else in the sandbox lives on.
            let _ = sys::kill(-1, libc::SIGKILL);
        }
    }
    let uptime_ns = sys::uptime_ns();
    workload.finish_output();
    let st = status.ok_or("the workload vanished without an exit status")?;
    let exit = if libc::WIFSIGNALED(st) {
        ExitStatus {
            code: None,
            signal: Some(libc::WTERMSIG(st)),
            uptime_ns,
        }
    } else {
        ExitStatus {
            code: Some(libc::WEXITSTATUS(st)),
            signal: None,
            uptime_ns,
        }
    };
    send(&writer, &Message::Exit(exit)).map_err(|e| format!("sending the exit status: {e}"))
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
    match connect_host() {
        Ok(conn) => {
            if let Err(e) = session(conn, boot_uptime) {
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
