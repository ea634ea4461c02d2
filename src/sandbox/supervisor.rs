//! Running a created sandbox to its end: the VMM side of `brig run`, in the foreground (brig
//! itself is the VMM process) or detached (a `brig __supervise` process of its own). It
//! keeps the sandbox's state file, workload log and console log up to date.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::launch::{launch, Launch, LaunchError, LaunchIo, Outcome, StartPath};
use super::logs::{LogWriter, Stream, DEFAULT_MAX_BYTES};
use super::network;
use super::outcome::{judge, Failure, TimeoutPolicy, EXIT_BRIG_ERROR};
use super::runtime;
use super::runtime::RuntimeDir;
use super::state::{now_rfc3339, Sandbox, SandboxConfig, SandboxState, StateError, Status};
use super::vm;
use super::volumes;
use super::{checkpoint, templates};
use brig_protocol::RunSpec;

use crate::vmm::{seccomp, ConsoleLog, VmConfig};

/// Most of the guest console kept on disk per sandbox.
const CONSOLE_MAX_BYTES: u64 = 1 << 20;

/// The sandbox could not be run.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A log file could not be opened.
    #[error("sandbox log {0}")]
    Log(io::Error),
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error(transparent)]
    Volume(#[from] volumes::VolumeError),
    /// The VMM's jail could not be prepared.
    #[error("jailing the VMM: {0}")]
    Jail(io::Error),
}

/// How the sandbox's stdio is connected.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// brig's own terminal/pipes: output also goes there; `stdin` forwards brig's stdin.
    Foreground { stdin: bool, console: bool },
    /// Output only to the log.
    Detached,
}

/// How a sandbox ended: the exit code brig reports (or why it is not the workload's own),
/// and the run's details.
pub struct Ended {
    pub verdict: Result<i32, Failure>,
    pub outcome: Outcome,
}

/// A file that stops growing at `max` bytes (the guest console's copy on disk).
pub(super) struct CappedFile {
    file: File,
    left: u64,
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        if n > 0 {
            self.file.write_all(&buf[..n])?;
            self.left -= n as u64;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl std::os::fd::AsRawFd for CappedFile {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// Writes to two places (the terminal and the log).
pub(super) struct Tee<A: Write, B: Write>(pub A, pub B);

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The log must not stop the terminal, nor a closed terminal the log.
        let a = self.0.write_all(buf).and_then(|_| self.0.flush());
        let b = self.1.write_all(buf);
        a.or(b).map(|_| buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        self.1.flush()
    }
}

/// Records a sandbox that could not be started (its network, say) as exited with brig's
/// error, and tells `ready`.
pub(super) fn not_started(
    sandbox: &Sandbox,
    e: SuperviseError,
    ready: &mut dyn FnMut(Result<(), Failure>),
) -> SuperviseError {
    ready(Err(Failure::brig(e.to_string())));
    let mut state = SandboxState::created();
    state.status = Status::Exited;
    state.finished_at = Some(now_rfc3339());
    state.exit_code = Some(EXIT_BRIG_ERROR);
    state.error = Some(e.to_string());
    let _ = sandbox.write_state(&state);
    e
}

/// The host side of a run, set up before its VM: the sandbox's log and console files, its
/// network and its file servers, and the VM to start (its console not yet made).
pub(super) struct HostSide {
    pub log: LogWriter,
    pub console_file: CappedFile,
    pub net: Option<network::SandboxNetwork>,
    pub served: volumes::Served,
    pub vm: VmConfig,
    pub run: RunSpec,
    pub config: SandboxConfig,
}

/// How a keeper's VM comes to run, and what a checkpoint of it is saved into.
pub(super) struct StartPlan {
    /// The checkpoint `brig start --checkpoint` asked this start to resume.
    pub resume: Option<std::path::PathBuf>,
    /// Else the template it restores (see [`templates::choose`]).
    pub template: Option<templates::Choice>,
    /// The memory and state files of a checkpoint ([`checkpoint::pending_files`]).
    pub checkpoint: Option<(std::fs::File, std::fs::File)>,
}

/// The [`StartPlan`] of `sandbox`'s run (`config`, its VM `vm`). The template is found (or
/// made) here, as root with the host in view; a jailed VMM opens its files before it enters
/// the jail.
/// `cold`: the run boots, after a restore that failed ([`after_failed_restore`]).
pub(super) fn plan_start(
    sandbox: &Sandbox,
    config: &SandboxConfig,
    vm: &VmConfig,
    cold: Option<templates::Choice>,
) -> StartPlan {
    // The sandbox's directory is `<home>/sandboxes/<id>`.
    let home = sandbox.dir.parent().and_then(std::path::Path::parent);
    let resume = checkpoint::take_resume(sandbox);
    let template = match cold {
        Some(choice) => Some(choice),
        None => home
            .filter(|_| resume.is_none())
            .map(|h| templates::choose(h, vm)),
    };
    StartPlan {
        resume,
        template,
        checkpoint: checkpoint::pending_files(sandbox, config),
    }
}

/// How one start of a sandbox went: it ran (to its end), or restoring its template failed
/// before anything ran, and it starts over booting cold, its host side made anew (see
/// [`super::launch::Launch::template`]).
pub(super) enum Attempt<T> {
    Ran(T),
    RestoreFailed {
        template: Option<PathBuf>,
        why: String,
    },
}

/// What a failed template restore leaves to the cold boot that follows it: a one-line
/// warning, the template discarded (a later run makes it anew), the runtime directory
/// cleared of the failed VM's sockets. The [`templates::Choice`] the cold boot goes with.
pub(super) fn after_failed_restore(
    runtime: &RuntimeDir,
    template: Option<&Path>,
    why: &str,
) -> templates::Choice {
    eprintln!("brig: warning: restoring the template failed ({why}); booting cold");
    if let Some(dir) = template {
        let _ = templates::discard(dir);
    }
    let _ = std::fs::remove_file(runtime.vsock_listener(brig_protocol::AGENT_PORT));
    let _ = std::fs::remove_file(runtime.vsock_socket());
    templates::Choice {
        dir: None,
        why_not: Some(format!("restoring the template failed: {why}")),
        at: std::time::Instant::now(),
    }
}

/// Sets up the host side of `sandbox`'s run in `runtime` (recording the sandbox as exited,
/// and telling `ready`, when that fails).
pub(super) fn host_side(
    sandbox: &Sandbox,
    runtime: &RuntimeDir,
    ready: &mut dyn FnMut(Result<(), Failure>),
) -> Result<HostSide, SuperviseError> {
    let config = sandbox.config()?;
    let log =
        LogWriter::open(&sandbox.log_path(), DEFAULT_MAX_BYTES).map_err(SuperviseError::Log)?;
    let console_file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(sandbox.console_path())
        .map_err(SuperviseError::Log)?;
    let console_file = CappedFile {
        file: console_file,
        left: CONSOLE_MAX_BYTES,
    };
    let mut net = match network::setup(
        &config.id,
        &config.run.hostname,
        &config.network,
        &runtime::leases_dir(),
        &runtime::is_live,
    ) {
        Ok(net) => net,
        Err(e) => return Err(not_started(sandbox, e.into(), ready)),
    };
    let (served, fs) = match volumes::serve(&config.volumes, runtime.path(), &sandbox.dir) {
        Ok(s) => s,
        Err(e) => return Err(not_started(sandbox, e.into(), ready)),
    };
    let mut vm = vm::config_of(&config, ConsoleLog::default())?;
    vm.fs = fs;
    let mut run = config.run.clone();
    if let Some(n) = net.as_mut() {
        vm.net = n.take_device();
        let mut spec = n.spec.clone();
        // The device's address is what a template's guest does not have (it probed the
        // template's device): the agent sets it.
        if let Some(d) = &vm.net {
            spec.mac = brig_protocol::format_mac(d.mac);
        }
        run.network = Some(spec);
    }
    Ok(HostSide {
        log,
        console_file,
        net,
        served,
        vm,
        run,
        config,
    })
}

/// Records `sandbox` as ended with `verdict`.
pub(super) fn record_end(sandbox: &Sandbox, verdict: &Result<i32, Failure>) {
    let mut state = sandbox.state().unwrap_or_else(|_| SandboxState::created());
    state.status = Status::Exited;
    state.network = None;
    state.paused = false;
    state.finished_at = Some(now_rfc3339());
    state.exit_code = Some(verdict.as_ref().map_or_else(|f| f.code, |c| *c));
    state.error = verdict.as_ref().err().map(|f| f.message.clone());
    let _ = sandbox.write_state(&state);
}

/// Records `sandbox` as running in VMM process `pid`.
pub(super) fn record_running(
    sandbox: &Sandbox,
    pid: u32,
    path: &str,
    net: Option<&network::SandboxNetwork>,
) {
    let mut state = SandboxState::created();
    state.status = Status::Running;
    state.pid = pid;
    state.start_path = Some(path.to_string());
    state.started_at = Some(now_rfc3339());
    if let Some(n) = net {
        state.network = Some(n.state.clone());
    }
    let _ = sandbox.write_state(&state);
}

/// Where the workload's stdout and stderr go: the log, and in the foreground brig's own too.
pub(super) fn outputs(foreground: bool, log: &LogWriter) -> (Box<dyn Write>, Box<dyn Write>) {
    if foreground {
        (
            Box::new(Tee(io::stdout(), log.stream(Stream::Stdout))),
            Box::new(Tee(io::stderr(), log.stream(Stream::Stderr))),
        )
    } else {
        (
            Box::new(log.stream(Stream::Stdout)),
            Box::new(log.stream(Stream::Stderr)),
        )
    }
}

/// Adds to `outcome` when the template was ready, and why a cold boot did not restore one.
pub(super) fn note_template(outcome: &mut Outcome, t: templates::Choice) {
    outcome.template_ready = Some(t.at);
    if let (StartPath::Cold, Some(why)) = (&outcome.path, t.why_not) {
        outcome.path = StartPath::ColdNoTemplate(why);
    }
}

/// Runs `sandbox` in `runtime` until it ends; `ready` hears once whether the workload
/// started (`Ok`) or could not (`Err` with the code and message).
pub fn supervise(
    sandbox: &Sandbox,
    runtime: &RuntimeDir,
    mode: Mode,
    timeout: Option<TimeoutPolicy>,
    ready: &mut dyn FnMut(Result<(), Failure>),
) -> Result<Ended, SuperviseError> {
    with_cold_retry(sandbox, runtime, ready, &mut |ready, cold| {
        supervise_once(sandbox, runtime, mode, timeout, ready, cold)
    })
}

/// One start of a sandbox: given the callback that hears whether its workload started, and
/// `Some` choice when it must boot cold.
pub(super) type AttemptFn<'a, T> = dyn FnMut(
        &mut dyn FnMut(Result<(), Failure>),
        Option<templates::Choice>,
    ) -> Result<Attempt<T>, SuperviseError>
    + 'a;

/// Starts `sandbox` with `attempt`, and once more, booting cold from a host side made anew,
/// when restoring its template failed ([`after_failed_restore`]).
pub(super) fn with_cold_retry<T>(
    sandbox: &Sandbox,
    runtime: &RuntimeDir,
    ready: &mut dyn FnMut(Result<(), Failure>),
    attempt: &mut AttemptFn<'_, T>,
) -> Result<T, SuperviseError> {
    let mut cold = None;
    loop {
        let retry = cold.is_some();
        match attempt(ready, cold)? {
            Attempt::Ran(t) => return Ok(t),
            // A cold boot restores nothing; this only guards the loop.
            Attempt::RestoreFailed { why, .. } if retry => {
                let e = SuperviseError::Launch(LaunchError::RestoreFailed(why));
                return Err(not_started(sandbox, e, ready));
            }
            Attempt::RestoreFailed { template, why } => {
                cold = Some(after_failed_restore(runtime, template.as_deref(), &why));
            }
        }
    }
}

/// One start of [`supervise`]'s, booting cold when `cold` says why.
fn supervise_once(
    sandbox: &Sandbox,
    runtime: &RuntimeDir,
    mode: Mode,
    timeout: Option<TimeoutPolicy>,
    ready: &mut dyn FnMut(Result<(), Failure>),
    cold: Option<templates::Choice>,
) -> Result<Attempt<Ended>, SuperviseError> {
    let HostSide {
        log,
        console_file,
        net,
        served,
        vm: mut vm_config,
        run,
        config,
    } = host_side(sandbox, runtime, ready)?;
    let (stdin, console) = match mode {
        Mode::Foreground {
            stdin,
            console: true,
        } => (
            stdin,
            ConsoleLog::with_confined_echo(
                Box::new(Tee(io::stderr(), console_file)),
                seccomp::confine_console,
            ),
        ),
        Mode::Foreground {
            stdin,
            console: false,
        } => (
            stdin,
            ConsoleLog::with_confined_echo(Box::new(console_file), seccomp::confine_console),
        ),
        Mode::Detached => (
            false,
            ConsoleLog::with_confined_echo(Box::new(console_file), seccomp::confine_console),
        ),
    };
    vm_config.console = console;
    let foreground = matches!(mode, Mode::Foreground { .. });
    let StartPlan {
        resume,
        template,
        checkpoint,
    } = plan_start(sandbox, &config, &vm_config, cold);
    let spec = Launch {
        vm: vm_config,
        run,
        stdin,
        timeout: timeout.map(TimeoutPolicy::after),
        resume,
        restore_from: None,
        template: template.as_ref().and_then(|t| t.dir.clone()),
        checkpoint: checkpoint.map(|(memory, state)| crate::vmm::SnapshotFiles::new(memory, state)),
        // brig itself is the VMM here, and goes on after the VM.
        then_exit: false,
    };

    let restored_template = std::cell::Cell::new(false);
    let mut on_vm_started = |path: &StartPath| {
        restored_template.set(matches!(path, StartPath::Template { .. }));
        record_running(sandbox, std::process::id(), path.word(), net.as_ref());
    };
    let mut started = false;
    let template_dir = template.as_ref().and_then(|t| t.dir.clone());
    let mut on_workload_started = || {
        started = true;
        ready(Ok(()));
        // This process is the VMM: the template's working set is in its own page map.
        if let Some(dir) = template_dir.as_deref().filter(|_| restored_template.get()) {
            templates::record_working_set(dir, std::process::id());
        }
    };
    let (mut out, mut err) = outputs(foreground, &log);
    let io = LaunchIo {
        stdout: &mut out,
        stderr: &mut err,
        relay_signals: foreground,
        on_vm_started: &mut on_vm_started,
        on_workload_started: &mut on_workload_started,
        before_run: &mut || {
            net.as_ref()
                .map_or(Ok(()), |n| n.confirm().map_err(|e| e.to_string()))
        },
    };
    let result = launch(spec, runtime, io);
    // The host side goes with the VM: proxy, nft table, address, file servers.
    drop(net);
    drop(served);
    match result {
        Ok(mut outcome) => {
            if let Some(t) = template {
                note_template(&mut outcome, t);
            }
            let verdict = judge(&outcome.end, &outcome.console, &outcome.reason, timeout);
            if !started {
                ready(Err(verdict.clone().err().unwrap_or_else(|| {
                    Failure::brig("the workload did not start")
                })));
            }
            record_end(sandbox, &verdict);
            Ok(Attempt::Ran(Ended { verdict, outcome }))
        }
        Err(LaunchError::RestoreFailed(why)) => Ok(Attempt::RestoreFailed {
            template: template.and_then(|t| t.dir),
            why,
        }),
        Err(e) => {
            ready(Err(Failure::brig(e.to_string())));
            record_end(sandbox, &Err(Failure::brig(e.to_string())));
            Err(e.into())
        }
    }
}
