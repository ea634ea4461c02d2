//! A sandbox's lifecycle, as every front end drives it: [`create`] a sandbox from an image
//! (its state directory, disks and runtime lock), then run it in the foreground
//! ([`Created::run`]) or hand it to a VMM process of its own ([`Created::detach`], served by
//! [`supervise_detached`]). `brig run` is a thin layer over this.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use brig_protocol::RootfsSpec;

use super::jailed::JailedRun;
use super::network::NetworkOptions;
use super::outcome::{Failure, TimeoutPolicy};
pub use super::resources::Resources;
use super::resources::{disk_limits, DiskLimits, NamedDisk, ResourceError};
use super::runtime::{new_id, RuntimeDir};
use super::scratch::{self, ScratchError};
use super::security::SecurityFlags;
use super::spec::{compose, RunOptions};
use super::state::{self, DiskSpec, Sandbox, SandboxConfig, StateError};
use super::supervisor::{supervise, Mode, SuperviseError};
use crate::image::ImageRecord;

/// The hidden `brig` subcommand that is a detached sandbox's VMM process.
pub const SUPERVISE_COMMAND: &str = "__supervise";

/// The sandbox could not be created or run.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// A resource flag is malformed or asks for what the host lacks.
    #[error(transparent)]
    Resources(#[from] ResourceError),
    /// The image's config and the flags do not make a workload.
    #[error("{0}")]
    Spec(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    /// The runtime directory (and its lock) could not be made or taken over.
    #[error("runtime directory: {0}")]
    Runtime(#[source] std::io::Error),
    /// Starting the detached VMM process, or talking to it.
    #[error("{what}: {source}")]
    Detach {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The workload did not start (its exit code is docker's). Not transparent: the Failure
    /// stays in the error's chain, where the CLI finds the exit code.
    #[error("{0}")]
    Failed(#[from] Failure),
    #[error(transparent)]
    Volume(#[from] super::volumes::VolumeError),
    /// Another brig process has the stopped sandbox's VM (a concurrent start, `brig cp`).
    #[error("sandbox {0} is in use (being started, or by brig cp); try again")]
    Busy(String),
}

/// Everything a sandbox is made of.
pub struct CreateOptions<'a> {
    /// The image as the user named it, and what the store resolved it to.
    pub image: String,
    pub record: &'a ImageRecord,
    /// The workload's flags (`-e`, `-u`, `-w`, the command, ...).
    pub run: RunOptions,
    pub kernel: PathBuf,
    pub resources: Resources,
    /// `--read-only`: the image's root without an overlay (no scratch disk).
    pub read_only: bool,
    pub name: Option<String>,
    /// `--rm`: the sandbox's state goes when it ends.
    pub auto_remove: bool,
    pub detached: bool,
    /// `--network`, `-p`, `--dns`, ..., checked.
    pub network: NetworkOptions,
    /// `--cap-add`, `--privileged`, `--security-opt`, ... as given (`run.security` holds
    /// what they compile to).
    pub security: SecurityFlags,
    /// `-v`, `--mount`, `--tmpfs`, checked.
    pub volumes: Vec<super::volumes::VolumeMount>,
}

/// A created sandbox, not yet running; it holds its runtime lock.
pub struct Created {
    pub sandbox: Sandbox,
    runtime: RuntimeDir,
}

/// Creates a sandbox under `home` (the store's home): its config, its runtime directory and
/// lock, and its scratch disk. Nothing is left behind when it fails.
pub fn create(home: &Path, opts: CreateOptions<'_>) -> Result<Created, LifecycleError> {
    let id = new_id();
    let resources = &opts.resources;
    let mut run_opts = opts.run;
    run_opts.memory_limit = resources.memory_limit;
    run_opts.memory_swap = resources.memory_swap;
    run_opts.cpuset_cpus = resources.guest_cpuset();
    run_opts.cpuset_mems = resources.cpuset_mems.clone();
    let host_env = |k: &str| std::env::var(k).ok();
    let mut run = compose(&opts.record.config, &run_opts, &id[..12], &host_env)
        .map_err(LifecycleError::Spec)?;

    let scratch_path = home.join("sandboxes").join(&id).join("scratch.ext4");
    let mut named = vec![NamedDisk {
        guest: "/dev/vda",
        host: &opts.record.rootfs_path,
    }];
    if !opts.read_only {
        named.push(NamedDisk {
            guest: "/dev/vdb",
            host: &scratch_path,
        });
    }
    let limits = disk_limits(&resources.blkio, &named, std::path::Path::new("/sys"))?;
    let (volumes, mounts) = super::volumes::resolve(home, &opts.volumes)?;

    // The runtime directory (and its lock) first: it is what marks the sandbox alive.
    let runtime = RuntimeDir::create(&id).map_err(LifecycleError::Runtime)?;
    let mut disks = vec![DiskSpec {
        path: opts.record.rootfs_path.clone(),
        read_only: true,
        serial: "brig-rootfs".into(),
        limits: limits[0],
    }];
    run.rootfs = Some(RootfsSpec {
        device: "/dev/vda".into(),
        fstype: "erofs".into(),
        scratch: if opts.read_only {
            String::new()
        } else {
            "/dev/vdb".into()
        },
        read_only: opts.read_only,
        mounts,
        files: Vec::new(),
    });
    // A volume's files are the host's: what the guest still holds for them is flushed.
    run.discard_disks = opts.auto_remove && volumes.is_empty();
    if !opts.read_only {
        disks.push(DiskSpec {
            path: scratch_path.clone(),
            read_only: false,
            serial: "brig-scratch".into(),
            limits: limits.get(1).copied().unwrap_or_else(DiskLimits::default),
        });
    }
    let config = SandboxConfig {
        name: opts.name.unwrap_or_else(|| state::generate_name(&id)),
        id: id.clone(),
        image: opts.image,
        image_id: opts.record.config_digest.to_string(),
        created: state::now_rfc3339(),
        kernel: opts.kernel,
        mem_mib: resources.mem_mib,
        cpus: resources.cpus,
        host_cpus: resources.host_cpus.clone(),
        cpuset_cpus: resources.cpuset_cpus.clone(),
        cpuset_mems: resources.cpuset_mems.clone(),
        blkio: resources.blkio.clone(),
        disks,
        run,
        stop_signal: opts
            .record
            .config
            .stop_signal
            .clone()
            .unwrap_or_else(|| "SIGTERM".into()),
        auto_remove: opts.auto_remove,
        detached: opts.detached,
        network: opts.network,
        security: opts.security,
        volumes,
    };
    let sandbox = match Sandbox::create(home, &config) {
        Ok(s) => s,
        Err(e) => {
            super::volumes::remove_anonymous(home, &config.volumes);
            return Err(e.into());
        }
    };
    if !opts.read_only {
        if let Err(e) = scratch::create(&home.join("cache"), &scratch_path, scratch::DEFAULT_SIZE) {
            let _ = sandbox.remove();
            return Err(e.into());
        }
    }
    Ok(Created { sandbox, runtime })
}

/// A stopped sandbox made ready to run again (`brig start`, as docker's): its runtime
/// directory and lock taken anew, while its config, its disks (the scratch disk keeps what
/// the workload wrote), its volumes and its log stay. `Ok(None)`: it runs already.
pub fn reopen(sandbox: Sandbox) -> Result<Option<Created>, LifecycleError> {
    sandbox.settle(Duration::from_secs(5));
    if sandbox.is_running() {
        return Ok(None);
    }
    let busy = || LifecycleError::Busy(sandbox.short_id().to_string());
    if sandbox.is_live() {
        return Err(busy());
    }
    // What a VMM killed with its keeper left (the directory, its cgroup).
    super::runtime::sweep_stale();
    let runtime = match RuntimeDir::create(&sandbox.id) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(busy()),
        Err(e) => return Err(LifecycleError::Runtime(e)),
    };
    // The lock is ours now: whoever had it a moment ago has gone, and nothing runs.
    Ok(Some(Created { sandbox, runtime }))
}

/// What `brig compare` measures of a [`Created::run_quiet`] run (it reads the workload's
/// output from the log, whatever its exit code).
#[derive(Debug)]
pub struct QuietEnd {
    /// When the workload started.
    pub started: Option<std::time::Instant>,
    /// The jailed VMM process's peak resident memory (`None`: the VMM was this process).
    pub peak_rss: Option<u64>,
}

impl Created {
    /// Runs the sandbox in the foreground, its output on brig's stdout/stderr (and in its
    /// log); `stdin` forwards brig's stdin, `console` copies the guest console to stderr,
    /// `timings` (brig's start) has the run's phases printed on stderr. The VMM is a jailed
    /// child of brig as root (see [`super::jail`]), brig itself otherwise. With `--rm`, the
    /// sandbox's state is gone when this returns. The verdict: the workload's exit code, or
    /// why there is none.
    pub fn run(
        self,
        stdin: bool,
        console: bool,
        timeout: Option<Duration>,
        timings: Option<std::time::Instant>,
    ) -> Result<Result<i32, Failure>, LifecycleError> {
        let mode = Mode::Foreground { stdin, console };
        let timeout = timeout.map(TimeoutPolicy::Kill);
        let verdict = if super::jail::enabled() {
            let how = JailedRun {
                mode,
                timeout,
                timings,
                own_cgroup: true,
            };
            super::jailed::supervise_jailed(&self.sandbox, &self.runtime, how, &mut |_| {})
                .map(|end| end.verdict)
        } else {
            supervise(&self.sandbox, &self.runtime, mode, timeout, &mut |_| {}).map(|ended| {
                if let Some(t0) = timings {
                    ended.outcome.print_timings(t0);
                }
                ended.verdict
            })
        };
        remove_if_auto(&self.sandbox);
        drop(self.runtime);
        Ok(verdict?)
    }

    /// Runs the sandbox, its output only in its log (nothing on brig's stdio): `brig compare`
    /// reads the log afterwards. The sandbox stays for that. The VMM is jailed as for `brig
    /// run`; what `brig compare` measures of it comes back in [`QuietEnd`].
    pub fn run_quiet(self, timeout: Option<Duration>) -> Result<QuietEnd, LifecycleError> {
        let timeout = timeout.map(TimeoutPolicy::Kill);
        let mut started = None;
        let mut ready = |r: Result<(), Failure>| {
            if r.is_ok() {
                started = Some(std::time::Instant::now());
            }
        };
        let end = if super::jail::enabled() {
            let how = JailedRun {
                mode: Mode::Detached,
                timeout,
                timings: None,
                own_cgroup: true,
            };
            super::jailed::supervise_jailed(&self.sandbox, &self.runtime, how, &mut ready)
                .map(|end| end.peak_rss)
        } else {
            supervise(
                &self.sandbox,
                &self.runtime,
                Mode::Detached,
                timeout,
                &mut ready,
            )
            .map(|_| None)
        };
        drop(self.runtime);
        let peak_rss = end?;
        Ok(QuietEnd { started, peak_rss })
    }

    /// Hands the sandbox to a VMM process of its own (`brig __supervise`, with the runtime
    /// lock) and returns once the workload runs; `Err(Failed)` with docker's code when it
    /// could not be started.
    pub fn detach(self, timeout: Option<Duration>) -> Result<(), LifecycleError> {
        let Created { sandbox, runtime } = self;
        let io = |what| move |source| LifecycleError::Detach { what, source };
        let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| io("pipe")(e.into()))?;
        let (lock_fd, ready_fd) = (runtime.lock_fd(), write_end.as_raw_fd());
        let log_path = sandbox.dir.join("supervisor.log");
        let log = std::fs::File::create(&log_path).map_err(io("supervisor log"))?;
        let exe = std::env::current_exe().map_err(io("locating the brig binary"))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args([
            SUPERVISE_COMMAND,
            &sandbox.id,
            "--lock-fd",
            &lock_fd.to_string(),
            "--ready-fd",
            &ready_fd.to_string(),
        ]);
        if let Some(t) = timeout {
            cmd.args(["--timeout", &t.as_secs_f64().to_string()]);
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        // SAFETY: in the child between fork and exec: only system calls (a new session, so no
        // terminal and no signals from ours; the two descriptors kept open across exec), no
        // allocation, no locks.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::setsid()?;
                for fd in [lock_fd, ready_fd] {
                    // SAFETY: both descriptors are open in this child (inherited from the
                    // parent, which keeps them open until spawn returns).
                    let fd = rustix::fd::BorrowedFd::borrow_raw(fd);
                    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                }
                Ok(())
            });
        }
        cmd.spawn()
            .map_err(io("starting the sandbox's VMM process"))?;
        drop(write_end);
        runtime.release();
        // One line: "ok", or "err CODE MESSAGE" (the child keeps its end open while it runs).
        let mut answer = Vec::new();
        let mut pipe = std::fs::File::from(read_end);
        let mut byte = [0u8; 1];
        while answer.len() < 4096 && matches!(pipe.read(&mut byte), Ok(1)) && byte[0] != b'\n' {
            answer.push(byte[0]);
        }
        let answer = String::from_utf8_lossy(&answer);
        if answer == "ok" {
            return Ok(());
        }
        Err(
            match answer.strip_prefix("err ").and_then(|r| r.split_once(' ')) {
                Some((code, msg)) => Failure {
                    code: code.parse().unwrap_or(super::outcome::EXIT_BRIG_ERROR),
                    message: msg.to_string(),
                },
                None => Failure::brig(format!(
                    "the sandbox's VMM process ended before the workload started (see {})",
                    log_path.display()
                )),
            }
            .into(),
        )
    }
}

/// `brig __supervise ID`: the VMM process of a detached sandbox. `lock_fd` is the runtime
/// lock and `ready_fd` the pipe on which [`Created::detach`] waits, both handed down by it.
pub fn supervise_detached(
    id: &str,
    lock_fd: RawFd,
    ready_fd: RawFd,
    timeout: Option<Duration>,
) -> Result<i32, LifecycleError> {
    // SAFETY: the parent handed this descriptor down for this process alone; nothing else
    // here owns it.
    let ready = unsafe { OwnedFd::from_raw_fd(ready_fd) };
    // It came across exec without close-on-exec; the VMM's own children must not hold it.
    let _ = rustix::io::fcntl_setfd(&ready, rustix::io::FdFlags::CLOEXEC);
    let mut ready = std::fs::File::from(ready);
    let home = crate::image::store::default_home()
        .map_err(|e| LifecycleError::Runtime(std::io::Error::other(format!("brig's home: {e}"))))?;
    let sandbox = state::resolve(&home, id)?;
    let runtime = RuntimeDir::adopt(id, lock_fd).map_err(LifecycleError::Runtime)?;
    let mut report = |r: Result<(), Failure>| {
        let line = match r {
            Ok(()) => "ok\n".to_string(),
            Err(f) => format!("err {} {}\n", f.code, f.message.replace('\n', " ")),
        };
        let _ = ready.write_all(line.as_bytes());
    };
    let timeout = timeout.map(TimeoutPolicy::Kill);
    let verdict = if super::jail::enabled() {
        let how = JailedRun {
            mode: Mode::Detached,
            timeout,
            timings: None,
            own_cgroup: true,
        };
        super::jailed::supervise_jailed(&sandbox, &runtime, how, &mut report).map(|end| end.verdict)
    } else {
        supervise(&sandbox, &runtime, Mode::Detached, timeout, &mut report).map(|e| e.verdict)
    };
    remove_if_auto(&sandbox);
    drop(runtime);
    Ok(verdict?.unwrap_or_else(|f| f.code))
}

/// A `--rm` sandbox's end: its state and its anonymous volumes go (as docker's `--rm`).
fn remove_if_auto(sandbox: &Sandbox) {
    let Ok(config) = sandbox.config() else {
        return;
    };
    if config.auto_remove {
        // The sandbox's directory is `<home>/sandboxes/<id>`.
        if let Some(home) = sandbox.dir.parent().and_then(Path::parent) {
            super::volumes::remove_anonymous(home, &config.volumes);
        }
        let _ = sandbox.remove();
    }
}
