//! Pausing a running sandbox (`brig pause`/`unpause`, `brig-runc pause`/`resume`): its VMM
//! stops being scheduled, vCPUs and device threads together, while guest memory, the
//! guest's processes and its connections stay as they are; unpausing goes on where it
//! stopped. The guest's clock (kvmclock, from the host's TSC) keeps time meanwhile, so the
//! guest sees the pause as time that passed, as a paused container does.
//!
//! Where the VMM has a cgroup of brig's own (a jailed VMM on cgroup v2) that cgroup is
//! frozen, as runc and crun pause a container (`cgroup.freeze`; the kernel reports the
//! freeze done in `cgroup.events`), and a stray SIGCONT cannot undo it. Elsewhere (the VMM
//! in its OCI caller's cgroup, no cgroup v2, brig without root) the VMM process is stopped
//! with SIGSTOP and continued with SIGCONT. Either way only the VMM is paused: its keeper
//! (network proxy, logs, state) goes on, and a paused VMM can still be killed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::jail::cgroup;
use super::state::{Sandbox, StateError, Status};

/// How long a freeze or a stop may take to be reported done.
const SETTLE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error(transparent)]
    State(#[from] StateError),
    /// docker's words.
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} is already paused")]
    AlreadyPaused(String),
    #[error("container {0} is not paused")]
    NotPaused(String),
    /// The freeze or stop was asked for and not done.
    #[error("{what} sandbox {name}'s VMM (pid {pid}): {source}")]
    Failed {
        what: &'static str,
        name: String,
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// How a VMM is paused.
#[derive(Debug, PartialEq, Eq)]
enum Means {
    /// Its cgroup's directory: `cgroup.freeze`.
    Freezer(PathBuf),
    /// SIGSTOP / SIGCONT.
    Signal,
}

fn means_for(pid: u32) -> Means {
    cgroup::of_process(pid)
        .filter(|c| cgroup::is_brigs(c))
        .and_then(|c| cgroup::dir_of(&c))
        .filter(|d| d.join("cgroup.freeze").exists())
        .map_or(Means::Signal, Means::Freezer)
}

/// Whether `sandbox` is paused (as recorded; a sandbox that is not running is not).
pub fn is_paused(sandbox: &Sandbox) -> bool {
    sandbox
        .current_state()
        .is_ok_and(|s| s.status == Status::Running && s.paused)
}

/// Pauses the running sandbox `sandbox` (which the user called `name`).
pub fn pause(sandbox: &Sandbox, name: &str) -> Result<(), PauseError> {
    set_paused(sandbox, name, true)
}

/// Unpauses the paused sandbox `sandbox`.
pub fn unpause(sandbox: &Sandbox, name: &str) -> Result<(), PauseError> {
    set_paused(sandbox, name, false)
}

fn set_paused(sandbox: &Sandbox, name: &str, pause: bool) -> Result<(), PauseError> {
    let mut state = sandbox.current_state()?;
    if state.status != Status::Running || !sandbox.is_running() {
        return Err(PauseError::NotRunning(name.to_string()));
    }
    match (pause, state.paused) {
        (true, true) => return Err(PauseError::AlreadyPaused(name.to_string())),
        (false, false) => return Err(PauseError::NotPaused(name.to_string())),
        _ => {}
    }
    let pid = state.pid;
    set(pid, pause).map_err(|source| PauseError::Failed {
        what: if pause { "pausing" } else { "unpausing" },
        name: name.to_string(),
        pid,
        source,
    })?;
    state.paused = pause;
    sandbox.write_state(&state)?;
    Ok(())
}

/// Unpauses `sandbox` if it is paused (before a stop or a signal, as docker delivers them to
/// a paused container by resuming it).
pub fn resume_if_paused(sandbox: &Sandbox, name: &str) -> Result<(), PauseError> {
    if is_paused(sandbox) {
        unpause(sandbox, name)?;
    }
    Ok(())
}

/// Freezes (`pause`) or thaws process `pid`, and waits until the kernel says it is done.
fn set(pid: u32, pause: bool) -> std::io::Result<()> {
    match means_for(pid) {
        Means::Freezer(dir) => {
            std::fs::write(dir.join("cgroup.freeze"), if pause { "1" } else { "0" })?;
            wait_until(|| frozen(&dir) == Some(pause))
        }
        Means::Signal => {
            let p = rustix::process::Pid::from_raw(pid as i32)
                .ok_or_else(|| std::io::Error::other("no pid recorded"))?;
            let sig = if pause {
                rustix::process::Signal::STOP
            } else {
                rustix::process::Signal::CONT
            };
            rustix::process::kill_process(p, sig)?;
            wait_until(|| all_stopped(pid) == Some(pause))
        }
    }
}

fn wait_until(done: impl Fn() -> bool) -> std::io::Result<()> {
    let deadline = Instant::now() + SETTLE;
    while !done() {
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the kernel did not report it done",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// `cgroup.events`' `frozen` of the cgroup in `dir`.
fn frozen(dir: &std::path::Path) -> Option<bool> {
    let events = std::fs::read_to_string(dir.join("cgroup.events")).ok()?;
    parse_frozen(&events)
}

fn parse_frozen(events: &str) -> Option<bool> {
    events
        .lines()
        .find_map(|l| l.strip_prefix("frozen "))
        .map(|v| v.trim() == "1")
}

/// Whether every thread of `pid` is stopped (`T`), or all run (`None`: gone or mixed).
fn all_stopped(pid: u32) -> Option<bool> {
    let mut states = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|stat| thread_state(&stat) == Some('T'));
    let first = states.next()?;
    states.all(|s| s == first).then_some(first)
}

/// The state letter of a /proc/PID/stat line (after the command name's closing parenthesis).
fn thread_state(stat: &str) -> Option<char> {
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_events_and_stat_lines_are_read() {
        assert_eq!(parse_frozen("populated 1\nfrozen 1\n"), Some(true));
        assert_eq!(parse_frozen("populated 1\nfrozen 0\n"), Some(false));
        assert_eq!(parse_frozen("populated 1\n"), None);
        assert_eq!(thread_state("42 (a b) c) T 1 2"), Some('T'));
        assert_eq!(thread_state("42 (vcpu0) S 1 2"), Some('S'));
    }

    #[test]
    fn a_stopped_child_is_seen_stopped_and_continued() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert_eq!(means_for(pid), Means::Signal, "not in a cgroup of brig's");
        set(pid, true).unwrap();
        assert_eq!(all_stopped(pid), Some(true));
        set(pid, false).unwrap();
        assert_eq!(all_stopped(pid), Some(false));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
