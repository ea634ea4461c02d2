//! A sandbox run with its VMM in a jail ([`super::jail`]). The `brig __supervise` process
//! of a detached sandbox, or the `brig run` of a foreground one, stays on the host side as
//! the sandbox's keeper: it sets up the network and the
//! file servers, holds the runtime directory's lock, writes the sandbox's state and log, and
//! tears everything down at the end. It forks the VMM, which closes what it inherited and
//! does not need, builds the VM, jails itself, then runs the workload; it reports back on two
//! pipes: one line per event on one (`running`, `ready`, `ended CODE`, `failed CODE
//! MESSAGE`), the workload's log records on the other. The keeper trusts neither: the VMM is
//! where guest input is parsed.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use super::jail::{self, cgroup::Cgroup, Jail};
use super::launch::{launch, CgroupJoin, Launch, LaunchError, LaunchIo, StartPath};
use super::logs::{self, LogWriter};
use super::outcome::{judge, Failure, TimeoutPolicy, EXIT_BRIG_ERROR};
use super::runtime::RuntimeDir;
use super::signals;
use super::state::Sandbox;
use super::supervisor::{
    host_side, not_started, note_template, outputs, plan_start, record_end, record_running,
    with_cold_retry, Attempt, HostSide, Mode, SuperviseError, Tee,
};
use super::templates;
use super::tty::SavedTerminal;
use crate::vmm::{self, seccomp, ConsoleLog};

/// Whether `s` is one short lowercase word (what a start path reads as).
fn is_word(s: &str) -> bool {
    (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase())
}

/// The longest event line the keeper reads.
const MAX_EVENT: usize = 4096;

/// What the VMM tells its keeper.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// The VMM process's peak resident memory in bytes, sent just before it ends.
    Peak(u64),
    /// The VMM's pid, from the process standing in for it (brig without root: see
    /// [`jail::fork_vmm`]).
    Vmm(u32),
    /// The VM runs, started so ([`super::launch::StartPath::word`]).
    Running(String),
    /// The workload runs.
    Ready,
    /// Restoring the template failed (why): nothing ran, the keeper starts over cold.
    RestoreFailed(String),
    /// The run ended so.
    Ended(Result<i32, Failure>),
}

impl Event {
    fn line(&self) -> String {
        match self {
            Event::Vmm(pid) => format!("vmm {pid}\n"),
            Event::Peak(bytes) => format!("peak {bytes}\n"),
            Event::Running(path) => format!("running {path}\n"),
            Event::Ready => "ready\n".into(),
            Event::RestoreFailed(why) => format!("restorefailed {}\n", why.replace('\n', " ")),
            Event::Ended(Ok(code)) => format!("ended {code}\n"),
            Event::Ended(Err(f)) => format!("failed {} {}\n", f.code, f.message.replace('\n', " ")),
        }
    }

    fn parse(line: &str) -> Option<Self> {
        match line.split_once(' ') {
            Some(("running", path)) if is_word(path) => Some(Event::Running(path.to_string())),
            Some(("vmm", pid)) => pid.parse().ok().map(Event::Vmm),
            Some(("peak", bytes)) => bytes.parse().ok().map(Event::Peak),
            None if line == "ready" => Some(Event::Ready),
            Some(("restorefailed", why)) => Some(Event::RestoreFailed(why.to_string())),
            Some(("ended", code)) => code.parse().ok().map(|c| Event::Ended(Ok(c))),
            Some(("failed", rest)) => {
                let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
                Some(Event::Ended(Err(Failure {
                    code: code.parse().ok()?,
                    message: message.to_string(),
                })))
            }
            _ => None,
        }
    }
}

/// How a jailed VMM's run ended.
#[derive(Debug)]
pub struct JailedEnd {
    /// The workload's exit code, or why there is none.
    pub verdict: Result<i32, Failure>,
    /// The VMM process's peak resident memory, as it said (bytes).
    pub peak_rss: Option<u64>,
}

/// How a jailed VMM runs.
#[derive(Debug, Clone, Copy)]
pub struct JailedRun {
    /// Its stdio: brig's own (foreground), or only the log.
    pub mode: Mode,
    pub timeout: Option<TimeoutPolicy>,
    /// Print the run's timings, relative to brig's start.
    pub timings: Option<Instant>,
    /// Give it a cgroup of its own with a memory limit (`false`: it stays in its keeper's,
    /// which an OCI caller chose and reads).
    pub own_cgroup: bool,
}

/// Runs `sandbox` in `runtime` with its VMM jailed, until it ends: the verdict. `ready`
/// hears once whether the workload started. In the foreground, the VMM has brig's stdio
/// (and its terminal), relays the terminal's signals, and prints the run's timings when
/// `timings` (brig's start) is given; the keeper forwards to it the signals other processes
/// send brig, and puts the terminal back as it was.
pub fn supervise_jailed(
    sandbox: &Sandbox,
    runtime: &RuntimeDir,
    how: JailedRun,
    ready: &mut dyn FnMut(Result<(), Failure>),
) -> Result<JailedEnd, SuperviseError> {
    let end = with_cold_retry(sandbox, runtime, ready, &mut |ready, cold| {
        attempt(sandbox, runtime, how, ready, cold)
    })?;
    record_end(sandbox, &end.verdict);
    Ok(end)
}

/// One start of [`supervise_jailed`]'s, booting cold when `cold` says why: a VMM process
/// forked, jailed and followed to its end, the host side set up before and torn down after.
fn attempt(
    sandbox: &Sandbox,
    runtime: &RuntimeDir,
    how: JailedRun,
    ready: &mut dyn FnMut(Result<(), Failure>),
    cold: Option<templates::Choice>,
) -> Result<Attempt<JailedEnd>, SuperviseError> {
    let JailedRun {
        mode,
        timeout,
        timings,
        own_cgroup,
    } = how;
    let host = host_side(sandbox, runtime, ready)?;
    let config = &host.config;
    let short = &config.id[..config.id.len().min(12)];
    let setup = (|| {
        let (uid, gid) = (config.security.jail_uid, config.security.jail_gid);
        let jail = jail::prepare(runtime.path(), &config.id, uid, gid)?;
        let cgroup = if own_cgroup {
            jail::cgroup::create(short, (config.mem_mib + jail::OVERHEAD_MIB) << 20)?
        } else {
            None
        };
        let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
        Ok::<_, io::Error>((jail, cgroup, pipe()?, pipe()?, pipe()?))
    })();
    let (
        jail,
        mut cgroup,
        (events_read, events_write),
        (log_read, log_write),
        (gate_read, gate_write),
    ) = match setup {
        Ok(s) => s,
        Err(e) => return Err(not_started(sandbox, SuperviseError::Jail(e), ready)),
    };
    let plan = plan_start(sandbox, config, &host.vm, cold);
    let template_dir = plan.template.as_ref().and_then(|t| t.dir.clone());
    let foreground = matches!(mode, Mode::Foreground { .. });
    // Before the fork: the VMM may put the terminal in raw mode and die before it restores it.
    let terminal = if foreground {
        SavedTerminal::save(rustix::stdio::stdin())
    } else {
        None
    };
    // SAFETY: the child goes on with Rust code. The keeper may have threads by now (its port
    // proxy's, blocked in poll or accept; they hold no lock the child takes): fork copies
    // only this one, and glibc's fork leaves malloc usable in the child. The child never
    // drops the keeper's objects it got a copy of (see `vmm_process`) and ends with `exit`.
    let report = |r: Result<libc::pid_t, io::Error>| {
        let event = match r {
            Ok(vmm) => Event::Vmm(vmm as u32),
            Err(e) => Event::Ended(Err(Failure::brig(format!("jailing the VMM: {e}")))),
        };
        let _ = rustix::io::write(&events_write, event.line().as_bytes());
    };
    // SAFETY: as for fork (see above); the child side is `vmm_process`, which ends by `exit`.
    let pid = match unsafe { jail::fork_vmm(&jail, cgroup.as_mut(), &report) } {
        Ok(pid) => pid,
        Err(e) => return Err(not_started(sandbox, SuperviseError::Jail(e), ready)),
    };
    if pid == 0 {
        drop((events_read, log_read, gate_write));
        let HostSide {
            log,
            console_file,
            net,
            served,
            vm,
            run,
            ..
        } = host;
        // The keeper's: their descriptors are closed in `vmm_process`, their teardown is the
        // keeper's.
        std::mem::forget((log, net, served));
        let vmm = VmmSide {
            events: events_write,
            rest: VmmRest {
                jail,
                cgroup,
                log: log_write,
                gate: gate_read,
                console_file,
                vm,
                run,
                timeout,
                template: plan.template,
                resume: plan.resume,
                checkpoint: plan.checkpoint,
                mode,
                timings,
            },
        };
        vmm_process(vmm, runtime);
    }
    drop((events_write, log_write, gate_read));
    // The packet filter is applied while the VMM restores the VM; the VMM asks for the
    // workload once it hears that it is in place.
    let gate = match host.net.as_ref().map_or(Ok(()), |n| n.confirm()) {
        Ok(()) => "ok\n".to_string(),
        Err(e) => format!("err {}\n", e.to_string().replace('\n', " ")),
    };
    let _ = rustix::io::write(&gate_write, gate.as_bytes());
    drop(gate_write);
    let forwarder = if foreground {
        signals::Forwarder::install(pid, &signals::FROM_KEEPER)
            .map_err(|e| tracing::warn!("forwarding signals to the VMM: {e}"))
            .ok()
    } else {
        None
    };
    let pid = pid as u32;
    let (end, restore_failed) = keep(
        pid,
        (events_read, log_read),
        template_dir.as_deref(),
        sandbox,
        &host,
        ready,
    );
    drop(forwarder);
    drop(terminal);
    let HostSide { net, served, .. } = host;
    drop(net);
    drop(served);
    if let Some(c) = cgroup {
        c.remove();
    }
    Ok(match restore_failed {
        Some(why) => Attempt::RestoreFailed {
            template: template_dir,
            why,
        },
        None => Attempt::Ran(end),
    })
}

/// What the VMM process gets: its events pipe, and the rest.
struct VmmSide {
    events: OwnedFd,
    rest: VmmRest,
}

/// What the VMM process runs its VM with.
struct VmmRest {
    jail: Jail,
    cgroup: Option<Cgroup>,
    /// The write end of the log records' pipe.
    log: OwnedFd,
    /// The read end of the keeper's word that the host side is whole (`ok` or `err WHY`).
    gate: OwnedFd,
    console_file: super::supervisor::CappedFile,
    vm: vmm::VmConfig,
    run: brig_protocol::RunSpec,
    timeout: Option<TimeoutPolicy>,
    /// Whether it restores a template instead of booting.
    template: Option<templates::Choice>,
    /// The checkpoint it resumes instead of booting (`brig start --checkpoint`).
    resume: Option<std::path::PathBuf>,
    /// The memory and state files a checkpoint of this run is saved into.
    checkpoint: Option<(File, File)>,
    /// Its stdio: brig's own (foreground), or only the log.
    mode: Mode,
    /// Print the run's timings, relative to brig's start.
    timings: Option<Instant>,
}

/// The keeper's side: follows the VMM's events (and its log records, relayed into the
/// sandbox's log) until it ends, and says how the run ended. When the VMM restored the
/// template in `template` and its workload started, records the template's working set if
/// it has none yet. With the end, why restoring the template failed when it did (`ready` is
/// then not told: the keeper starts over).
fn keep(
    pid: u32,
    (events, records): (OwnedFd, OwnedFd),
    template: Option<&std::path::Path>,
    sandbox: &Sandbox,
    host: &HostSide,
    ready: &mut dyn FnMut(Result<(), Failure>),
) -> (JailedEnd, Option<String>) {
    let log = host.log.clone();
    let relay = std::thread::Builder::new()
        .name("log-relay".into())
        .spawn(move || {
            if let Err(e) = logs::relay(File::from(records), &log) {
                tracing::warn!("the VMM's log: {e}");
            }
        });
    let mut events = BufReader::new(File::from(events));
    let mut told = false;
    let mut restored_template = false;
    let mut verdict = None;
    let mut peak_rss = None;
    let mut restore_failed = None;
    // The VMM's pid: the child's, or the one its stand-in announces.
    let mut vmm = pid;
    while let Some(line) = read_line(&mut events) {
        match Event::parse(&line) {
            // Only a child of the process it forked (a stand-in's VMM) is taken for the VMM.
            Some(Event::Vmm(p)) if parent_of(p) == Some(pid) => vmm = p,
            Some(Event::Running(path)) => {
                record_running(sandbox, vmm, &path, host.net.as_ref());
                restored_template = path == StartPath::TEMPLATE;
            }
            Some(Event::Ready) if !told => {
                told = true;
                ready(Ok(()));
                if let Some(dir) = template.filter(|_| restored_template) {
                    templates::record_working_set(dir, vmm);
                }
            }
            Some(Event::RestoreFailed(why)) => restore_failed = Some(why),
            Some(Event::Ended(v)) => verdict = Some(v),
            Some(Event::Peak(bytes)) => peak_rss = Some(bytes),
            _ => {}
        }
    }
    let status = i32::try_from(pid).map_or(jail::Reaped::Unknown, jail::reap);
    if let Ok(relay) = relay {
        let _ = relay.join();
    }
    let verdict = verdict.unwrap_or_else(|| {
        // As a sandbox whose (unjailed) VMM is gone reads: "the VMM process died".
        Err(Failure::brig(format!("the VMM process died ({status})")))
    });
    if !told && restore_failed.is_none() {
        ready(Err(verdict.clone().err().unwrap_or_else(|| {
            Failure::brig("the workload did not start")
        })));
    }
    (JailedEnd { verdict, peak_rss }, restore_failed)
}

/// The parent of process `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// One line of at most [`MAX_EVENT`] bytes (longer ones cut), or `None` at the end. Read
/// through a buffer: a byte at a time, the keeper made a system call per byte of each event.
fn read_line(from: &mut impl BufRead) -> Option<String> {
    let mut line = Vec::new();
    loop {
        let buf = match from.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => &[],
        };
        if buf.is_empty() {
            // The end (or an error): a cut line still counts.
            return (!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned());
        }
        let newline = buf.iter().position(|&b| b == b'\n');
        let take = newline.unwrap_or(buf.len());
        let room = MAX_EVENT.saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        from.consume(take + usize::from(newline.is_some()));
        if newline.is_some() {
            return Some(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

/// The VMM process: never returns.
fn vmm_process(vmm: VmmSide, runtime: &RuntimeDir) -> ! {
    let events = File::from(vmm.events);
    let send = |e: Event| {
        let _ = (&events).write_all(e.line().as_bytes());
    };
    let verdict = run_vmm(vmm.rest, runtime, events.as_raw_fd(), &send);
    let code = verdict.as_ref().map_or_else(|f| f.code, |c| *c);
    // getrusage: the jail has no /proc.
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage it is given, which is zeroed (a valid value) anyway.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0 {
        // SAFETY: zero-initialised, and filled by the successful call.
        let usage = unsafe { usage.assume_init() };
        send(Event::Peak(
            u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
        ));
    }
    send(Event::Ended(verdict));
    std::process::exit(code)
}

/// Readies this process (descriptors, cgroup, console), has its VM jail it before it starts
/// a thread, and runs the workload: the verdict.
fn run_vmm(
    vmm: VmmRest,
    runtime: &RuntimeDir,
    events: RawFd,
    send: &dyn Fn(Event),
) -> Result<i32, Failure> {
    let VmmRest {
        jail,
        cgroup,
        log,
        gate,
        console_file,
        mut vm,
        run,
        timeout,
        template,
        resume,
        checkpoint,
        mode,
        timings,
    } = vmm;
    let brig = |what: &str, e: io::Error| Failure::brig(format!("jailing the VMM: {what}: {e}"));
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| brig("PR_SET_PDEATHSIG", e.into()))?;
    // Stdio (fds 0-2) stays: brig's terminal or pipes in the foreground, /dev/null otherwise.
    let mut keep = vec![
        events,
        log.as_raw_fd(),
        gate.as_raw_fd(),
        console_file.as_raw_fd(),
    ];
    if let Some(net) = &vm.net {
        keep.push(net.backend.as_raw_fd());
    }
    if let Some((memory, state)) = &checkpoint {
        keep.extend([memory.as_raw_fd(), state.as_raw_fd()]);
    }
    jail::close_inherited(&keep).map_err(|e| brig("closing inherited descriptors", e))?;
    // Its own /proc/self/pagemap, opened before the jail (which has no /proc).
    let checkpoint = checkpoint.map(|(memory, state)| vmm::SnapshotFiles::new(memory, state));
    let joined = match &cgroup {
        Some(c) => CgroupJoin::join(c, timings).map_err(|e| brig("joining its cgroup", e))?,
        None => None,
    };
    let console: Box<dyn Write + Send> = match mode {
        Mode::Foreground { console: true, .. } => Box::new(Tee(io::stderr(), console_file)),
        _ => Box::new(console_file),
    };
    vm.console = ConsoleLog::with_deferred_echo(console, seccomp::confine_console);
    vmm::confine_next_vm(Box::new(move || jail::enter(&jail, events)));
    let log = LogWriter::unrotated(File::from(log));
    let (foreground, stdin) = match mode {
        Mode::Foreground { stdin, .. } => (true, stdin),
        Mode::Detached => (false, false),
    };
    let spec = Launch {
        vm,
        run,
        stdin,
        timeout: timeout.map(TimeoutPolicy::after),
        resume,
        restore_from: None,
        template: template.as_ref().and_then(|t| t.dir.clone()),
        checkpoint,
        // `vmm_process` exits as soon as this returns.
        then_exit: true,
    };
    let mut on_vm_started =
        |path: &super::launch::StartPath| send(Event::Running(path.word().to_string()));
    let mut on_workload_started = || send(Event::Ready);
    let mut gate = BufReader::new(File::from(gate));
    let mut before_run = || match read_line(&mut gate) {
        Some(line) if line == "ok" => Ok(()),
        Some(line) => Err(line.strip_prefix("err ").unwrap_or(&line).to_string()),
        None => Err("the sandbox's keeper ended before its network was set up".to_string()),
    };
    let (mut out, mut err) = outputs(foreground, &log);
    let io = LaunchIo {
        stdout: &mut out,
        stderr: &mut err,
        relay_signals: foreground,
        on_vm_started: &mut on_vm_started,
        on_workload_started: &mut on_workload_started,
        before_run: &mut before_run,
    };
    match launch(spec, runtime, io) {
        Ok(mut outcome) => {
            if let Some(t) = template {
                note_template(&mut outcome, t);
            }
            outcome.cgroup_joined = joined;
            if let Some(t0) = timings {
                outcome.print_timings(t0);
            }
            judge(&outcome.end, &outcome.console, &outcome.reason, timeout)
        }
        Err(e) => {
            if let LaunchError::RestoreFailed(why) = &e {
                send(Event::RestoreFailed(why.clone()));
            }
            Err(Failure {
                code: EXIT_BRIG_ERROR,
                message: e.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_garbage_is_ignored() {
        for e in [
            Event::Vmm(42),
            Event::Peak(1 << 30),
            Event::Running("template".into()),
            Event::Ready,
            Event::RestoreFailed("the guest agent did not answer".into()),
            Event::Ended(Ok(3)),
            Event::Ended(Err(Failure {
                code: 137,
                message: "killed\nhard".into(),
            })),
        ] {
            let line = e.line();
            let parsed = Event::parse(line.trim_end_matches('\n')).unwrap();
            match (&e, &parsed) {
                (Event::Ended(Err(a)), Event::Ended(Err(b))) => {
                    assert_eq!(a.code, b.code);
                    assert_eq!(b.message, "killed hard");
                }
                _ => assert_eq!(e, parsed),
            }
        }
        for junk in [
            "",
            "ended",
            "ended x",
            "failed",
            "failed x y",
            "runningx",
            "running",
            "running Boot",
            "running a b",
            "vmm",
            "vmm x",
            "vmm -1",
            "ready now",
        ] {
            assert_eq!(Event::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn long_lines_are_cut_and_the_end_is_none() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut w = File::from(w);
        w.write_all(&vec![b'x'; MAX_EVENT + 10]).unwrap();
        w.write_all(b"\nready\n").unwrap();
        drop(w);
        let mut r = BufReader::new(File::from(r));
        assert_eq!(read_line(&mut r).unwrap().len(), MAX_EVENT);
        assert_eq!(read_line(&mut r).as_deref(), Some("ready"));
        assert_eq!(read_line(&mut r), None);
    }
}
