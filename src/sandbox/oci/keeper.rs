//! The container's process, the pid callers wait on: how `create` starts it (a VMM keeper,
//! `brig oci __supervise`, or a pod sandbox's placeholder, see [`super::pod`]), in which
//! network namespace, and what `create` does once it runs (its cgroup, the state, the
//! create hooks, the pid file). Nothing is left when a step fails.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use super::bundle::Bundle;
use super::console::Console;
use super::container::{process_start_time, write_atomic, Container, OciState};
use super::verbs::CreateRequest;
use super::{hooks, OciError};
use crate::sandbox::state;

/// The network namespace the process starts in.
#[derive(Debug)]
pub enum Netns {
    /// The caller's.
    Keep,
    /// A new one (the container's own, which docker's prestart hook configures).
    New,
    /// This one (a pod's, which its placeholder holds for the pod's app containers).
    Enter(OwnedFd),
}

/// Makes the FIFO `start` writes its byte to.
pub fn make_fifo(container: &Container) -> Result<PathBuf, OciError> {
    let fifo = container.start_fifo();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .map_err(|e| OciError::io(fifo.display().to_string())(e.into()))?;
    Ok(fifo)
}

/// Kills the container's process `pid` (create failed after it started) and waits until it
/// is gone, so the sandbox's files can go.
pub fn kill_now(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
    }
}

/// Starts `brig oci ARGS --start-fifo FIFO --ready-fd N` with this process's stdio (or
/// `console`'s slave), in a session of its own and the network namespace `netns`, and waits
/// until it says it is ready; returns its pid.
pub fn spawn(
    args: &[&str],
    fifo: &Path,
    console: Option<&Console>,
    netns: Netns,
) -> Result<i32, OciError> {
    let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| OciError::io("pipe")(e.into()))?;
    let ready_fd = write_end.as_raw_fd();
    let exe = std::env::current_exe().map_err(OciError::io("locating the brig binary"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg0("brig").arg("oci").args(args);
    cmd.arg("--start-fifo").arg(fifo);
    cmd.args(["--ready-fd", &ready_fd.to_string()]);
    let enter = match &netns {
        Netns::Enter(fd) => Some(fd.as_raw_fd()),
        _ => None,
    };
    let new_netns = matches!(netns, Netns::New);
    // SAFETY: in the child between fork and exec: only system calls (a session of its own,
    // so the caller's terminal signals do not reach it; its network namespace; the ready
    // pipe kept across exec).
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::setsid()?;
            // Failing either is failing create: without it, the network set up for the
            // container's namespace would be the host's.
            if new_netns {
                rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET)?;
            }
            if let Some(fd) = enter {
                // SAFETY: `netns` keeps the descriptor open until spawn returns.
                let fd = rustix::fd::BorrowedFd::borrow_raw(fd);
                rustix::thread::move_into_link_name_space(
                    fd,
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
            }
            // SAFETY: the descriptor is open in this child, inherited from the parent, which
            // keeps it open until spawn returns.
            let fd = rustix::fd::BorrowedFd::borrow_raw(ready_fd);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
    if let Some(c) = console {
        c.attach(&mut cmd)?;
    }
    let child = cmd
        .spawn()
        .map_err(OciError::io("starting the container's process"))?;
    // The child's copies of the slave and of the namespace are its own now.
    drop(cmd);
    drop(netns);
    drop(write_end);
    let mut answer = String::new();
    let _ = std::fs::File::from(read_end)
        .take(4096)
        .read_to_string(&mut answer);
    let pid = child.id() as i32;
    match answer.trim_end() {
        "ok" => Ok(pid),
        other => {
            kill_now(pid);
            Err(OciError::Sandbox(
                other
                    .strip_prefix("err ")
                    .unwrap_or("the container's process ended before it was ready")
                    .to_string(),
            ))
        }
    }
}

/// What `create` does once the container's process `pid` runs: puts it in the cgroup the
/// caller chose, saves the state, runs the create hooks, writes the pid file.
pub fn finish(
    req: &CreateRequest,
    container: &Container,
    bundle: &Bundle,
    pid: i32,
    sandbox_id: String,
) -> Result<OciState, OciError> {
    let cgroup = match super::cgroup::place(bundle.cgroups_path(), pid) {
        Ok(c) => c,
        Err(e) => {
            kill_now(pid);
            return Err(OciError::io(format!("cgroup {}", bundle.cgroups_path()))(e));
        }
    };
    let state = OciState {
        id: req.id.clone(),
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        pid,
        start_time: process_start_time(pid).unwrap_or(0),
        created: state::now_rfc3339(),
        sandbox_id,
        annotations: bundle.config.annotations.clone(),
        started: false,
        cgroup,
        hooks: bundle.config.hooks.clone().unwrap_or_default(),
    };
    // Saved before the hooks run: one that fails leaves a state `delete` can clean up.
    container.save(&state)?;
    if let Err(e) = hooks::run(state.hooks.at_create(), &state.hook_json("creating")) {
        kill_now(pid);
        if let Some(dir) = &state.cgroup {
            super::cgroup::remove(dir);
        }
        return Err(e);
    }
    if let Some(p) = &req.pid_file {
        write_atomic(p, pid.to_string().as_bytes())?;
    }
    Ok(state)
}
