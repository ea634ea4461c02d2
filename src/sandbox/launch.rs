//! Running one workload in a fresh VM, from start to teardown: the runtime directory and its
//! vsock listener, the VM, the host terminal, relayed signals, the agent session, and the
//! VM's end. `brig boot` and `brig run` differ only in what they put in the VM.

use std::io::Write;
use std::time::{Duration, Instant};

use std::os::unix::net::UnixStream;

use brig_protocol::{Message, RunSpec};
use rustix::stdio;

use super::agent::{self, Relay, SessionEnd, SessionTimes};
use super::runtime::RuntimeDir;
use super::templates;
use super::tty::{terminal_size, HostTerminal};
use super::vm::{self, VmError};
use crate::vmm::{seccomp, ConsoleLog, ExitReason, RunningVm, SnapshotFiles, VmConfig};

/// What to launch.
pub struct Launch {
    /// The VM, without its vsock device (added here).
    pub vm: VmConfig,
    /// The workload.
    pub run: RunSpec,
    /// Forward the host's stdin (`-i`).
    pub stdin: bool,
    /// Stop everything after this long.
    pub timeout: Option<Duration>,
    /// Restore the VM saved in this directory instead of booting it.
    pub restore_from: Option<std::path::PathBuf>,
    /// Restore this template (see [`super::templates`]) instead of booting. A restore that
    /// fails ends the launch with [`LaunchError::RestoreFailed`]: a cold boot needs the host
    /// side anew (a file server serves one VM; a jailed VMM cannot rebind its sockets), so
    /// the caller that owns it starts over without the template.
    pub template: Option<std::path::PathBuf>,
    /// Resume this checkpoint of the sandbox instead of booting (see [`super::checkpoint`]):
    /// its workload runs already, so the agent gets a Restore and no run request.
    pub resume: Option<std::path::PathBuf>,
    /// Where a checkpoint of this run is saved when the agent parks its session.
    pub checkpoint: Option<SnapshotFiles>,
    /// The process exits once the launch returns (a jailed VMM's does): when the workload's
    /// status is in, the VM's threads and memory are left to that exit, not torn down first.
    pub then_exit: bool,
}

/// How the VM came to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPath {
    /// Booted.
    Cold,
    /// Booted, because templates do not apply or are off, or restoring one failed (why).
    ColdNoTemplate(String),
    /// Restored from a snapshot (`brig boot --restore-from`).
    Restored,
    /// Restored from a template; the agent answered at `reconnected`.
    Template { reconnected: Instant },
    /// Resumed from a checkpoint of the sandbox (`brig start --checkpoint`).
    Checkpoint,
}

impl StartPath {
    /// [`StartPath::word`] of a run restored from a template.
    pub const TEMPLATE: &'static str = "template";

    /// How the VM came to run, in one word (`brig inspect`'s `State.StartPath`).
    pub fn word(&self) -> &'static str {
        match self {
            StartPath::Cold | StartPath::ColdNoTemplate(_) => "boot",
            StartPath::Restored => "snapshot",
            StartPath::Template { .. } => Self::TEMPLATE,
            StartPath::Checkpoint => "checkpoint",
        }
    }
}

/// Where the workload's output goes and what happens on the way.
pub struct LaunchIo<'a> {
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
    /// Relay the host's signals to the workload (foreground runs).
    pub relay_signals: bool,
    /// Called once the VM runs, with how it came to.
    pub on_vm_started: &'a mut dyn FnMut(&StartPath),
    /// Called once the workload runs.
    pub on_workload_started: &'a mut dyn FnMut(),
    /// Called once the agent is reached, before the workload is asked for: the host side
    /// must be whole by then (see [`super::network::SandboxNetwork::confirm`]); `Err` ends
    /// the run with that reason instead.
    pub before_run: &'a mut dyn FnMut() -> Result<(), String>,
}

/// How it went.
pub struct Outcome {
    pub end: SessionEnd,
    /// Why the VM ended.
    pub reason: ExitReason,
    /// The guest console, for error reports.
    pub console: ConsoleLog,
    pub times: SessionTimes,
    pub vmm_ready: Instant,
    /// What the restore mapped into the guest ahead of its vCPUs.
    pub prefaulted: crate::vmm::Prefaulted,
    pub kernel_entry: Option<Instant>,
    /// The VM was restored from a snapshot (its first entry resumed the guest).
    pub restored: bool,
    pub path: StartPath,
    /// When the template was found or made (template runs).
    pub template_ready: Option<Instant>,
    /// When the jailed VMM had joined its cgroup, how long that took, and whether the host's
    /// cgroup2 is mounted with `favordynmods` (set by the jailed caller).
    pub cgroup_joined: Option<CgroupJoin>,
    pub vm_gone: Instant,
}

/// A jailed VMM's move into its cgroup, for `--timings`.
#[derive(Debug, Clone, Copy)]
pub struct CgroupJoin {
    pub done: Instant,
    pub took: Duration,
    /// The cgroup2 mount has `favordynmods` (migrations then skip an RCU grace period).
    pub favordynmods: bool,
    /// The VMM was started in the cgroup (`CLONE_INTO_CGROUP`): nothing moved.
    pub started_in: bool,
}

impl CgroupJoin {
    /// Its `--timings` line, relative to `t0` (brig's start).
    pub fn print_timing(&self, t0: Instant) {
        let why = if self.started_in {
            ", started in it: clone3 CLONE_INTO_CGROUP"
        } else if self.favordynmods {
            ""
        } else {
            ", an RCU grace period: cgroup2 is mounted without favordynmods"
        };
        eprintln!(
            "  cgroup joined  {}  (took {:.1} ms{why})",
            ms(self.done - t0),
            self.took.as_secs_f64() * 1000.0
        );
    }

    /// Joins `cgroup`, timed when `timings` asks for the phases.
    pub fn join(
        cgroup: &super::jail::cgroup::Cgroup,
        timings: Option<Instant>,
    ) -> std::io::Result<Option<Self>> {
        let t = Instant::now();
        cgroup.join()?;
        let done = Instant::now();
        Ok(timings.map(|_| Self {
            done,
            took: done - t,
            favordynmods: super::jail::cgroup::favors_dynmods(),
            started_in: cgroup.started_in(),
        }))
    }
}

/// A launch that failed before the workload could run.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The VM did not start.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// Restoring the template failed (why); the VM is gone and nothing ran.
    #[error("restoring the template failed ({0})")]
    RestoreFailed(String),
    /// The checkpoint could not be resumed.
    #[error("resuming the checkpoint: {0}")]
    Resume(String),
}

/// Boots the VM, runs the workload, tears everything down.
pub fn launch(
    mut spec: Launch,
    runtime: &RuntimeDir,
    io: LaunchIo<'_>,
) -> Result<Outcome, LaunchError> {
    let console = spec.vm.console.clone();
    let restored = spec.restore_from.is_some();
    let tty = spec.run.tty;
    if tty {
        if let Some((rows, cols)) = terminal_size() {
            spec.run.rows = rows;
            spec.run.cols = cols;
        }
    }
    let (agent_vm, restored_conn, path) = match (spec.template.take(), spec.resume.as_deref()) {
        (Some(dir), _) => start_template(spec.vm, runtime, &dir)?,
        (None, Some(dir)) => {
            let network = spec.run.network.clone();
            let (agent_vm, conn) = restore_and_reconnect(spec.vm, runtime, dir, network)
                .map_err(LaunchError::Resume)?;
            (agent_vm, Some(conn), StartPath::Checkpoint)
        }
        (None, None) => {
            let path = if restored {
                StartPath::Restored
            } else {
                StartPath::Cold
            };
            let vm = vm::start_from(spec.vm, runtime, spec.restore_from.as_deref())?;
            (vm, None, path)
        }
    };
    let restored = restored || matches!(path, StartPath::Template { .. } | StartPath::Checkpoint);
    let run = spec.resume.is_none().then_some(spec.run);
    // The VM is built: from here on this thread only talks to the agent, keeps the sandbox's
    // files and tears down.
    seccomp::confine(seccomp::Thread::Main).map_err(LaunchError::Seccomp)?;
    let vm = &agent_vm.vm;
    let vmm_ready = vm.ready_at();
    let prefaulted = vm.prefaulted();
    (io.on_vm_started)(&path);
    let deadline = spec.timeout.map(|t| vmm_ready + t);

    let terminal =
        HostTerminal::attach(tty, spec.stdin, io.relay_signals).map_err(LaunchError::Signals)?;
    let mut times = SessionTimes::default();
    let accepted = match restored_conn {
        Some((conn, hello)) => Ok((conn, Some(hello))),
        None => agent_vm.accept(deadline).map(|c| (c, None)),
    };
    let accepted = accepted.and_then(|c| (io.before_run)().map(|()| c).map_err(SessionEnd::Broken));
    let end = match accepted {
        Ok((conn, hello)) => {
            let relay = Relay {
                stdin: spec.stdin.then(stdio::stdin),
                stdout: io.stdout,
                stderr: io.stderr,
                signals: Some(&terminal.signals),
                winsize: tty.then_some(&terminal_size as &dyn Fn() -> Option<(u16, u16)>),
                on_started: Some(io.on_workload_started),
            };
            agent::resume_session(
                conn,
                hello,
                run,
                relay,
                Some(vm.exit_fd()),
                deadline,
                &mut times,
            )
        }
        Err(end) => end,
    };
    drop(terminal);
    // The agent flushed the guest's disks before it sent the status (guest/src/main.rs):
    // nothing the guest does after it matters, so the VM stops now instead of after the
    // guest's own reset.
    let kernel_entry = vm.kernel_entry();
    let then_exit = spec.then_exit;
    let (end, reason) = match (end, spec.checkpoint) {
        (SessionEnd::Parked, Some(files)) => {
            (save_checkpoint(agent_vm.vm, &files), ExitReason::Stopped)
        }
        (SessionEnd::Parked, None) => (
            SessionEnd::Broken("the agent parked a session that cannot be checkpointed".into()),
            agent_vm.vm.shutdown(),
        ),
        // The status is in and nothing of the VM is needed any more.
        (end @ (SessionEnd::Exited(_) | SessionEnd::ExecFailed { .. }), _) if then_exit => {
            (end, agent_vm.vm.abandon())
        }
        (end, _) => (end, agent_vm.vm.shutdown()),
    };
    Ok(Outcome {
        end,
        reason,
        console,
        times,
        vmm_ready,
        prefaulted,
        cgroup_joined: None,
        kernel_entry,
        restored,
        path,
        template_ready: None,
        vm_gone: Instant::now(),
    })
}

/// How long a parked VM may take to let go of its last connection before it is saved.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Saves `vm`, whose agent parked its session, into `files` (it does not go on): `Parked`
/// when saved, else why not.
fn save_checkpoint(vm: RunningVm, files: &SnapshotFiles) -> SessionEnd {
    // Both sides close the parked connection and the one that asked; then nothing is open.
    if let Err(why) = vm.wait_until_saveable(Instant::now() + IDLE_TIMEOUT) {
        let _ = vm.shutdown();
        return SessionEnd::Broken(format!("checkpoint: {why}"));
    }
    match vm.snapshot_into(files) {
        Ok(()) => SessionEnd::Parked,
        Err(e) => SessionEnd::Broken(format!("checkpoint: {e}")),
    }
}

/// The VM saved in `dir` (a template, or a checkpoint of this sandbox), restored with
/// `config`'s devices, its agent reached with a Restore for `config`'s disks and `network`
/// (a checkpoint's guest configures its interface anew): the VM, and the agent's connection
/// and Hello. On failure the VM is stopped and the reason given.
fn restore_and_reconnect(
    config: VmConfig,
    runtime: &RuntimeDir,
    dir: &std::path::Path,
    network: Option<brig_protocol::NetworkSpec>,
) -> Result<(vm::AgentVm, (UnixStream, Message)), String> {
    // Before the VM starts: a jailed VMM no longer sees its disks by path once it runs.
    let sizes = templates::disk_sizes(&config.disks).map_err(|e| e.to_string())?;
    let agent_vm = vm::start_from(config, runtime, Some(dir)).map_err(|e| e.to_string())?;
    let alive = || agent_vm.vm.exit_reason().is_none();
    match templates::reconnect(&runtime.vsock_socket(), sizes, network, &alive) {
        Ok(conn) => Ok((agent_vm, conn)),
        Err(e) => {
            let _ = agent_vm.vm.shutdown();
            Err(e.to_string())
        }
    }
}

/// A started VM, the agent's connection and Hello when already reached, and how it started.
type Started = (vm::AgentVm, Option<(UnixStream, Message)>, StartPath);

/// A VM of `config` restored from the template in `dir`, its agent reached and made unique.
fn start_template(
    config: VmConfig,
    runtime: &RuntimeDir,
    dir: &std::path::Path,
) -> Result<Started, LaunchError> {
    let (agent_vm, conn) =
        restore_and_reconnect(config, runtime, dir, None).map_err(LaunchError::RestoreFailed)?;
    let reconnected = Instant::now();
    Ok((agent_vm, Some(conn), StartPath::Template { reconnected }))
}

/// A phase's time for `--timings`, right-aligned in one column.
pub(super) fn ms(d: Duration) -> String {
    format!("{:>9.1} ms", d.as_secs_f64() * 1000.0)
}

impl Outcome {
    /// The phases on stderr, relative to `t0` (when brig started).
    pub fn print_timings(&self, t0: Instant) {
        eprintln!("brig timings (host clock since brig started):");
        let path = match &self.path {
            StartPath::Cold => "cold boot".to_string(),
            StartPath::ColdNoTemplate(why) => format!("cold boot ({why})"),
            StartPath::Restored => "restored from a snapshot".to_string(),
            StartPath::Template { .. } => "restored from a template".to_string(),
            StartPath::Checkpoint => "resumed from a checkpoint".to_string(),
        };
        eprintln!("  path           {path}");
        if let Some(t) = self.template_ready {
            eprintln!("  template ready {}", ms(t - t0));
        }
        if let Some(j) = self.cgroup_joined {
            j.print_timing(t0);
        }
        if self.restored {
            let ahead = match self.prefaulted {
                p if p.mapped > 0 => {
                    format!("  ({} pages of its working set mapped ahead)", p.mapped)
                }
                p if p.populated > 0 => {
                    format!("  ({} pages of its working set faulted in)", p.populated)
                }
                _ => String::new(),
            };
            eprintln!("  vmm restored   {}{ahead}", ms(self.vmm_ready - t0));
        } else {
            eprintln!("  vmm ready      {}", ms(self.vmm_ready - t0));
        }
        if let Some(e) = self.kernel_entry {
            let what = if self.restored {
                "guest resumed  "
            } else {
                "kernel entry   "
            };
            eprintln!("  {what}{}", ms(e - t0));
        }
        if let StartPath::Template { reconnected } = self.path {
            eprintln!(
                "  agent reached  {}  (reseeded, clock set, disks attached)",
                ms(reconnected - t0)
            );
        }
        if let Some(h) = self.times.hello {
            eprintln!(
                "  init started   {}  (guest uptime {:.1} ms)",
                ms(h - t0),
                self.times.hello_uptime_ns as f64 / 1e6
            );
        }
        let mut last = self.times.hello_uptime_ns;
        for (name, t) in &self.times.guest_phases {
            let step = t.saturating_sub(last) as f64 / 1e6;
            eprintln!("    agent: {name:<20} +{step:.1} ms");
            last = (*t).max(last);
        }
        if !self.times.guest_phases.is_empty() {
            let step = self.times.started_uptime_ns.saturating_sub(last) as f64 / 1e6;
            eprintln!("    agent: {:<20} +{step:.1} ms", "spawned");
        }
        if let Some(s) = self.times.started {
            eprintln!(
                "  command started{}  (guest uptime {:.1} ms)",
                ms(s - t0),
                self.times.started_uptime_ns as f64 / 1e6
            );
        }
        if let Some(x) = self.times.exited {
            // The guest's clock when its agent reaped the workload: how much of the step from
            // the start was the workload's own and the guest's, and how much the way out.
            let reaped = match self.times.exited_uptime_ns {
                u if u > 0 => format!("  (reaped at guest uptime {:.1} ms)", u as f64 / 1e6),
                _ => String::new(),
            };
            eprintln!("  command exited {}{reaped}", ms(x - t0));
        }
        eprintln!("  vm gone        {}", ms(self.vm_gone - t0));
    }
}
