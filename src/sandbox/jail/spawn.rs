//! Starting the VMM process of a jail: the first process (pid 1) of a PID namespace of its
//! own, as Firecracker's jailer starts it.

use std::io;

use rustix::thread::UnshareFlags;

use super::cgroup::Cgroup;
use super::enter::step;
use super::Jail;
use crate::sandbox::signals;

/// Forks the VMM process of `jail`: `Ok(0)` in it, its pid (or, without root, that of the
/// process standing for it) in the caller. As root, the VMM is the caller's child, pid 1 of
/// a new PID namespace. Without root ([`Jail::user_ns`]) making a PID namespace takes a user
/// namespace first, which only a single-threaded process may make: the child makes both
/// (see [`stand_in`]) and forks the VMM as the new namespace's pid 1. There, `report` gets
/// the VMM's pid, or why it could not start it (its exit status is then 125). As root, with
/// `cgroup`, the VMM starts in it where it can (see [`clone_into`]) and is marked so; else it
/// joins it itself ([`Cgroup::join`]).
///
/// # Safety
///
/// As `fork`: the child must not rely on locks other threads held, and must end by `exit`.
pub unsafe fn fork_vmm(
    jail: &Jail,
    cgroup: Option<&mut Cgroup>,
    report: &dyn Fn(io::Result<libc::pid_t>),
) -> io::Result<libc::pid_t> {
    if !jail.user_ns {
        if let Some(cgroup) = cgroup {
            // SAFETY: per this function's contract.
            match unsafe { clone_into(cgroup) } {
                Some(Ok(0)) => {
                    cgroup.mark_started_in();
                    return Ok(0);
                }
                Some(started) => return started,
                None => {}
            }
        }
        // SAFETY: per this function's contract.
        return unsafe { fork_in_new_pid_namespace() };
    }
    // SAFETY: per this function's contract.
    let pid = unsafe { libc::fork() };
    match pid {
        0 => {}
        p if p < 0 => return Err(io::Error::last_os_error()),
        p => return Ok(p),
    }
    match stand_in(jail) {
        Ok(0) => Ok(0),
        Ok(vmm) => {
            report(Ok(vmm));
            let code = reap(vmm).code();
            // SAFETY: ends this forked process without running the caller's destructors (its
            // objects are the caller's copies).
            unsafe { libc::_exit(code) }
        }
        Err(e) => {
            report(Err(e));
            // SAFETY: as above.
            unsafe { libc::_exit(crate::sandbox::outcome::EXIT_BRIG_ERROR) }
        }
    }
}

/// In the forked child of a keeper without root: makes the user namespace (the caller's
/// uid and gid mapped to themselves) and a PID namespace in it, forks the VMM into that as
/// its pid 1 (`Ok(0)` there), and here (`Ok(pid)`) forwards it the signals the keeper sends.
/// It ends with its parent, and the VMM with it.
fn stand_in(jail: &Jail) -> io::Result<libc::pid_t> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(step("PR_SET_PDEATHSIG"))?;
    enter_user_namespace(jail)?;
    // SAFETY: no FILES flag; this process has one thread.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWPID) }
        .map_err(step("unshare(CLONE_NEWPID)"))?;
    // SAFETY: this process has one thread; the child goes on as the VMM.
    let vmm = unsafe { libc::fork() };
    if vmm < 0 {
        return Err(io::Error::last_os_error());
    }
    if vmm > 0 {
        // Kept installed until this process exits.
        std::mem::forget(signals::Forwarder::install(vmm, &signals::FROM_KEEPER));
    }
    Ok(vmm)
}

/// How a process this one waited for ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    Exited(i32),
    Killed(i32),
    /// It could not be waited for.
    Unknown,
}

impl Reaped {
    /// Its status as a shell gives it: the exit code, 128+N for signal N, 125 if unknown.
    pub fn code(self) -> i32 {
        match self {
            Reaped::Exited(code) => code,
            Reaped::Killed(sig) => 128 + sig,
            Reaped::Unknown => crate::sandbox::outcome::EXIT_BRIG_ERROR,
        }
    }
}

impl std::fmt::Display for Reaped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reaped::Exited(code) => write!(f, "exit status {code}"),
            Reaped::Killed(sig) => write!(f, "killed by signal {sig}"),
            Reaped::Unknown => f.write_str("unknown"),
        }
    }
}

/// Waits for this process's child `pid` to end (a VMM, or its stand-in) and reaps it.
pub fn reap(pid: libc::pid_t) -> Reaped {
    use rustix::process::{waitpid, Pid, WaitOptions};
    let Some(pid) = Pid::from_raw(pid) else {
        return Reaped::Unknown;
    };
    loop {
        match waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                return match (status.exit_status(), status.terminating_signal()) {
                    (Some(code), _) => Reaped::Exited(code),
                    (_, Some(sig)) => Reaped::Killed(sig),
                    _ => Reaped::Unknown,
                };
            }
            Err(rustix::io::Errno::INTR) => {}
            Ok(None) | Err(_) => return Reaped::Unknown,
        }
    }
}

/// A user namespace of its own, in which the caller's uid and gid map to themselves (the
/// files it made keep their owner) and supplementary groups cannot be dropped to gain
/// access: the privilege to make the other namespaces and mount its root, and nothing on the
/// host.
fn enter_user_namespace(jail: &Jail) -> io::Result<()> {
    use rustix::thread::UnshareFlags;
    // SAFETY: as in `enter`: no FILES flag, one thread.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER) }
        .map_err(step("unshare(CLONE_NEWUSER)"))?;
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(|e| io::Error::new(e.kind(), format!("writing /proc/self/{file}: {e}")))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{0} {0} 1\n", jail.uid))?;
    write("gid_map", format!("{0} {0} 1\n", jail.gid))
}

/// Forks the VMM process as the first process (pid 1) of a new PID namespace, as
/// Firecracker's jailer does: it sees no other process and can signal none. A process cannot
/// move itself into a new PID namespace, only its children, and a thread whose children would
/// go to another PID namespace than its own cannot start threads: this thread goes back to its
/// own namespace for its later children right after the fork. `Ok(0)` in the child, the
/// child's pid in the parent.
///
/// # Safety
///
/// As `fork`: the child must not rely on locks other threads held, and must end by `exit`.
unsafe fn fork_in_new_pid_namespace() -> io::Result<libc::pid_t> {
    use rustix::thread::{LinkNameSpaceType, UnshareFlags};
    use std::os::fd::AsFd;
    let own = std::fs::File::open("/proc/thread-self/ns/pid")?;
    // SAFETY: no FILES flag (see `enter`); the new namespace only applies to this thread's
    // children.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWPID) }
        .map_err(step("unshare(CLONE_NEWPID)"))?;
    // SAFETY: per this function's contract.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        return Ok(0);
    }
    let forked = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    };
    let back =
        rustix::thread::move_into_link_name_space(own.as_fd(), Some(LinkNameSpaceType::ProcessID))
            .map_err(step("setns back to its own PID namespace"));
    match (forked, back) {
        (Ok(pid), Ok(())) => Ok(pid),
        (Err(e), _) => Err(e),
        (Ok(pid), Err(e)) => {
            // It could start no more threads: end the child, and fail.
            // SAFETY: signals and reaps the child just forked, which nothing else waits for.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            Err(e)
        }
    }
}

/// `CLONE_INTO_CGROUP` (linux/sched.h; Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Starts the VMM as pid 1 of a new PID namespace, in `cgroup` from its first instruction:
/// `clone3(CLONE_NEWPID | CLONE_INTO_CGROUP)`, as systemd starts services. A process that
/// moves itself into a cgroup (a `cgroup.procs` write) waits for an RCU grace period where
/// cgroup2 is mounted without `favordynmods`, the default: 8-24 ms of every start measured on
/// the development machine. `Ok(0)` in the child, its pid in the caller; `None` where it
/// cannot be done here, for [`fork_in_new_pid_namespace`] and a join: the kernel lacks
/// `clone3` or `CLONE_INTO_CGROUP` or refuses it, or another thread runs (see below).
///
/// # Safety
///
/// As `fork`: the child must end by `exit`.
unsafe fn clone_into(cgroup: &Cgroup) -> Option<io::Result<libc::pid_t>> {
    use std::os::fd::AsRawFd;
    // A raw clone3 runs none of glibc's fork handlers, which make malloc usable in the child
    // of a process whose other threads may hold its locks: only one thread may run here.
    if !single_threaded() {
        return None;
    }
    let dir = cgroup.open_dir().ok()?;
    // SAFETY: clone_args is plain integers; all zero is its "nothing asked" value.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = libc::CLONE_NEWPID as u64 | CLONE_INTO_CGROUP;
    args.exit_signal = libc::SIGCHLD as u64;
    args.cgroup = u64::try_from(dir.as_raw_fd()).ok()?;
    // SAFETY: without CLONE_VM and a stack, clone3 is fork: the child goes on from here with
    // a copy of this process, which has one thread (checked above), so no lock is held by a
    // thread the child lacks. Of what glibc's fork would reset in the child, the thread
    // descriptor keeps the parent's tid: glibc signals a thread itself by gettid, and
    // nothing in brig uses a pthread mutex that records its owner's tid.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(args),
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    match ret {
        0 => Some(Ok(0)),
        pid if pid > 0 => Some(libc::pid_t::try_from(pid).map_err(io::Error::other)),
        // ENOSYS, E2BIG (a kernel before 5.7), EINVAL, EBUSY, EPERM...: fork can still start
        // it, and the join says what is wrong, if anything is.
        _ => None,
    }
}

/// Whether this process runs one thread (/proc/self/status).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.strip_prefix("Threads:").is_some_and(|n| n.trim() == "1"))
    })
}
