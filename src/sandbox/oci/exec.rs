//! `exec`: one more process in a running container, through brig's exec path (a vsock
//! connection to the agent, brig's stdio and signals relayed, the process's exit status).
//! With `--detach` a small proxy process of its own (`brig oci __exec`) does that; its pid
//! goes in the pid file, since callers wait on and signal that pid (runsc and kata-shim do
//! the same). With a terminal the proxy's stdio is a pty whose master goes to the caller's
//! `--console-socket`, as for the container.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;

use super::bundle::Process;
use super::console::{self, Console};
use super::container::{write_atomic, Container, Status};
use super::OciError;
use crate::sandbox::exec::{exec, ExecError, ExecOptions};

/// The hidden subcommand (after `oci`) of a detached exec's proxy.
pub const EXEC_PROXY_COMMAND: &str = "__exec";

/// Parses a process JSON (runtime-spec's `process`).
pub fn parse_process(text: &str) -> Result<Process, OciError> {
    let p: Process =
        serde_json::from_str(text).map_err(|e| OciError::Bundle(format!("process: {e}")))?;
    if p.args.is_empty() {
        return Err(OciError::Bundle("process: args must not be empty".into()));
    }
    Ok(p)
}

/// The running container `id`'s sandbox id. A container is running once `start` returned,
/// and callers exec at once (probes); its VM may still be starting then (booting, or making
/// its template): this waits until the VM runs, or its VMM process is gone.
fn running_sandbox(root: &Path, id: &str) -> Result<String, OciError> {
    let state = Container::open(root, id)?.load()?;
    match state.status() {
        Status::Running if state.sandbox_id.is_empty() => Err(OciError::Status(
            "cannot exec in a pod's sandbox container: it has no VM".into(),
        )),
        Status::Running => {
            state.vm_started()?;
            Ok(state.sandbox_id)
        }
        Status::Created => Err(OciError::Status(
            "cannot exec in a container that has not started".into(),
        )),
        Status::Paused => Err(OciError::Status(
            "cannot exec in a paused container (use --ignore-paused to override)".into(),
        )),
        Status::Stopped => Err(OciError::Status(
            "cannot exec in a stopped container".into(),
        )),
    }
}

/// `exec` without `--detach`: runs `process_json` in container `id` with this process's
/// stdio (or a terminal through `console_socket`); returns its exit code.
pub fn exec_wait(
    root: &Path,
    id: &str,
    process_json: &str,
    console_socket: Option<&Path>,
    pid_file: Option<&Path>,
) -> Result<i32, OciError> {
    let sandbox_id = running_sandbox(root, id)?;
    let p = parse_process(process_json)?;
    console::check(p.terminal, console_socket, false)?;
    // The process callers wait on is this one (or, with a terminal, the proxy below).
    if let (Some(path), None) = (pid_file, console_socket) {
        write_atomic(path, std::process::id().to_string().as_bytes())?;
    }
    let Some(socket) = console_socket else {
        return run_proxy(&sandbox_id, process_json);
    };
    let mut child = spawn_proxy(&sandbox_id, process_json, &p, Some(socket))?;
    if let Some(path) = pid_file {
        write_atomic(path, child.id().to_string().as_bytes())?;
    }
    let status = child.wait().map_err(OciError::io("waiting for the exec"))?;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255))
}

/// `exec --detach`: starts the proxy and writes its pid to `pid_file`.
pub fn exec_detached(
    root: &Path,
    id: &str,
    process_json: &str,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
) -> Result<(), OciError> {
    let sandbox_id = running_sandbox(root, id)?;
    let p = parse_process(process_json)?;
    console::check(p.terminal, console_socket, true)?;
    let child = spawn_proxy(&sandbox_id, process_json, &p, console_socket)?;
    if let Some(path) = pid_file {
        write_atomic(path, child.id().to_string().as_bytes())?;
    }
    Ok(())
}

/// Starts the proxy in a session of its own; with a terminal, the console's slave is its
/// stdio and controlling terminal, and the master goes to `console_socket`.
fn spawn_proxy(
    sandbox_id: &str,
    process_json: &str,
    p: &Process,
    console_socket: Option<&Path>,
) -> Result<std::process::Child, OciError> {
    // The master goes out before the proxy starts (conmon must have it before `exec` exits).
    let console = match console_socket {
        Some(socket) if p.terminal => {
            let c = Console::open(p.console_rows_cols())?;
            c.send_master(socket)?;
            Some(c)
        }
        _ => None,
    };
    let exe = std::env::current_exe().map_err(OciError::io("locating the brig binary"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg0("brig").args([
        "oci",
        EXEC_PROXY_COMMAND,
        sandbox_id,
        "--process-json",
        process_json,
    ]);
    // SAFETY: in the child between fork and exec: one system call, no allocation, no locks.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    if let Some(c) = &console {
        c.attach(&mut cmd)?;
    }
    let child = cmd
        .spawn()
        .map_err(OciError::io("starting the exec proxy"))?;
    Ok(child)
}

/// The proxy: runs the process in sandbox `sandbox_id`; returns its exit code.
pub fn run_proxy(sandbox_id: &str, process_json: &str) -> Result<i32, OciError> {
    let p = parse_process(process_json)?;
    let _ = rustix::process::chdir("/");
    let sandbox = super::sandbox_of(sandbox_id)?;
    let opts = ExecOptions {
        command: p.args.clone(),
        env: p.env.clone(),
        workdir: (!p.cwd.is_empty()).then(|| p.cwd.clone()),
        user: Some(format!("{}:{}", p.user.uid, p.user.gid)),
        groups: Some(p.user.additional_gids.iter().map(u32::to_string).collect()),
        tty: p.terminal,
        interactive: p.terminal,
        ..Default::default()
    };
    match exec(&sandbox, sandbox_id, &opts) {
        Ok(code) => Ok(code),
        Err(ExecError::Failed(f)) => {
            eprintln!("brig-runc: {}", f.message);
            Ok(f.code)
        }
        Err(e) => Err(OciError::Sandbox(e.to_string())),
    }
}

/// `ps --format json`: the container's host processes (its VMM; empty once stopped).
pub fn pids(root: &Path, id: &str) -> Result<Vec<i32>, OciError> {
    let state = Container::open(root, id)?.load()?;
    Ok(if state.alive() {
        vec![state.pid]
    } else {
        Vec::new()
    })
}
