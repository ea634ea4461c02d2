//! `brig boot`'s VM with its VMM jailed ([`super::jail`]): this process keeps the host side
//! (the runtime directory, the terminal) and forks the VMM, which boots (or restores) the
//! VM, jails itself before its threads start, runs the command with brig's stdio, prints
//! what it has to say, and exits with the command's status; signals other processes send
//! brig are forwarded to it. With `--initrd` the VMM boots the user's initramfs instead,
//! with no agent, and the run ends when the guest does ([`BootSpec::Bare`]).

use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::agent::SessionEnd;
use super::jail;
use super::launch::{launch, ms, CgroupJoin, Launch, LaunchError, LaunchIo};
use super::outcome::{judge, Failure, TimeoutPolicy, EXIT_BRIG_ERROR};
use super::runtime::RuntimeDir;
use super::signals;
use super::tty::SavedTerminal;
use crate::vmm::{seccomp, ExitReason, VmConfig};

/// What `brig boot` boots.
pub enum BootSpec {
    /// brig's init, whose agent runs a command.
    Agent(Box<Launch>),
    /// An initramfs of the user's (in `vm`), with no agent and no vsock device, as
    /// Firecracker and QEMU boot one: the run ends when the guest resets or shuts down.
    Bare {
        vm: Box<VmConfig>,
        timeout: Option<Duration>,
    },
}

impl BootSpec {
    fn vm(&self) -> &VmConfig {
        match self {
            Self::Agent(launch) => &launch.vm,
            Self::Bare { vm, .. } => vm,
        }
    }
}

/// Runs `spec` in `runtime` with its VMM jailed; `timings` (brig's start) has the phases
/// printed. The exit status brig ends with: the command's, or 125 after one line on stderr.
pub fn run(spec: BootSpec, runtime: &RuntimeDir, timings: Option<Instant>) -> io::Result<i32> {
    let id = runtime
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let jail = jail::prepare(runtime.path(), &id, None, None)?;
    let mut cgroup = jail::cgroup::create(&id, (spec.vm().mem_mib + jail::OVERHEAD_MIB) << 20)?;
    let (alive_r, alive_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // Before the fork: the VMM may put the terminal in raw mode and die before it restores it.
    let terminal = SavedTerminal::save(rustix::stdio::stdin());
    let report = |r: io::Result<libc::pid_t>| {
        if let Err(e) = r {
            eprintln!("brig: jailing the VMM: {e}");
        }
    };
    // SAFETY: the child goes on as `vmm`, which ends by `exit`; this process has no other
    // thread that holds a lock the child takes.
    let pid = unsafe { jail::fork_vmm(&jail, cgroup.as_mut(), &report) }?;
    if pid == 0 {
        drop(alive_r);
        vmm(spec, runtime, jail, cgroup.as_ref(), alive_w, timings);
    }
    drop(alive_w);
    let forwarder = signals::Forwarder::install(pid, &signals::FROM_KEEPER)?;
    let reaped = jail::reap(pid);
    drop(forwarder);
    drop(alive_r);
    drop(terminal);
    if let Some(c) = cgroup {
        c.remove();
    }
    Ok(match reaped {
        jail::Reaped::Exited(code) => code,
        other => {
            eprintln!("brig: the VMM process died ({other})");
            EXIT_BRIG_ERROR
        }
    })
}

/// Runs `spec` in `runtime` with this process as the VMM (jailed or not), the command's
/// stdio brig's own; `timings` (brig's start) has the phases printed. The command's exit
/// status, or why there is none; `Err` when the VM did not start.
pub fn boot_here(
    spec: BootSpec,
    runtime: &RuntimeDir,
    timings: Option<Instant>,
) -> Result<Result<i32, Failure>, LaunchError> {
    boot_joined(spec, runtime, timings, None)
}

/// [`boot_here`] in a VMM that joined its cgroup as `joined` says (for `--timings`).
fn boot_joined(
    spec: BootSpec,
    runtime: &RuntimeDir,
    timings: Option<Instant>,
    joined: Option<CgroupJoin>,
) -> Result<Result<i32, Failure>, LaunchError> {
    let spec = match spec {
        BootSpec::Agent(launch) => *launch,
        BootSpec::Bare { vm, timeout } => return boot_bare(*vm, timeout, timings, joined),
    };
    let timeout = spec.timeout;
    let (mut out, mut err) = (io::stdout(), io::stderr());
    let io = LaunchIo {
        stdout: &mut out,
        stderr: &mut err,
        relay_signals: true,
        on_vm_started: &mut |_| {},
        on_workload_started: &mut || {},
        before_run: &mut || Ok(()),
    };
    let mut outcome = launch(spec, runtime, io)?;
    outcome.cgroup_joined = joined;
    if let Some(t0) = timings {
        outcome.print_timings(t0);
    }
    Ok(judge(
        &outcome.end,
        &outcome.console,
        &outcome.reason,
        timeout.map(TimeoutPolicy::GiveUp),
    ))
}

/// Boots `vm` (an initramfs of the user's, no agent) and waits for its guest to end: 0 when
/// it reset or shut itself down, else why not (a kernel panic, a failed vCPU, `timeout`).
fn boot_bare(
    vm: VmConfig,
    timeout: Option<Duration>,
    timings: Option<Instant>,
    joined: Option<CgroupJoin>,
) -> Result<Result<i32, Failure>, LaunchError> {
    let console = vm.console.clone();
    let vm = crate::vmm::start(vm).map_err(|e| LaunchError::Vm(e.into()))?;
    seccomp::confine(seccomp::Thread::Main)?;
    let ended = vm.wait(timeout);
    let (ready, entry) = (vm.ready_at(), vm.kernel_entry());
    let reason = vm.shutdown();
    if let Some(t0) = timings {
        eprintln!("brig timings (host clock since brig started):");
        if let Some(j) = joined {
            j.print_timing(t0);
        }
        eprintln!("  vmm ready      {}", ms(ready - t0));
        if let Some(entry) = entry {
            eprintln!("  kernel entry   {}", ms(entry - t0));
        }
        eprintln!("  vm gone        {}", ms(t0.elapsed()));
    }
    let end = match ended {
        Some(ExitReason::Reset | ExitReason::Shutdown) if console.panic_line().is_none() => {
            return Ok(Ok(0))
        }
        Some(_) => SessionEnd::VmEnded,
        None => SessionEnd::TimedOut,
    };
    Ok(judge(
        &end,
        &console,
        &reason,
        timeout.map(TimeoutPolicy::GiveUp),
    ))
}

/// The VMM process: never returns. `alive` is the write end of a pipe only the keeper reads
/// (the jail checks that the keeper still lives).
fn vmm(
    spec: BootSpec,
    runtime: &RuntimeDir,
    jail: jail::Jail,
    cgroup: Option<&jail::cgroup::Cgroup>,
    alive: std::os::fd::OwnedFd,
    timings: Option<Instant>,
) -> ! {
    use std::os::fd::AsRawFd;
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let result = (|| {
        jail::close_inherited(&[alive.as_raw_fd()])?;
        let joined = match cgroup {
            Some(c) => CgroupJoin::join(c, timings)?,
            None => None,
        };
        let events = alive.as_raw_fd();
        crate::vmm::confine_next_vm(Box::new(move || jail::enter(&jail, events)));
        boot_joined(spec, runtime, timings, joined).map_err(io::Error::other)
    })();
    let code = match result {
        Ok(Ok(code)) => code,
        Ok(Err(f)) => {
            eprintln!("brig: {}", f.message);
            f.code
        }
        Err(e) => {
            eprintln!("brig: {e}");
            EXIT_BRIG_ERROR
        }
    };
    let _ = io::stdout().flush();
    drop(alive);
    std::process::exit(code)
}
