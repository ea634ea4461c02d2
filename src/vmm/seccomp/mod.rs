//! Seccomp filters for every thread of the VMM process.
//!
//! Each thread confines itself to its own list ([`lists`]) before it touches anything the
//! guest controls: a vCPU thread just before its first `KVM_RUN`, the device thread before its
//! event loop, the console thread before it copies the guest's output, the port proxy's
//! threads before they accept, and the main thread once the VM is built (the kernel loaded, the
//! devices and vCPUs created: from then on it only talks to the guest agent, keeps the
//! sandbox's state and tears it down). A guest that found a bug in a device or an exit handler
//! still cannot open files from the device thread, create sockets, execute programs, make
//! memory executable or push keystrokes into the user's terminal (`TIOCSTI`) from any of them
//! (as Firecracker filters its threads, each with argument rules).
//!
//! A system call outside the list is not executed: the kernel sends SIGSYS, whose handler
//! writes one line naming the thread and the call and ends brig with status 125.
//! `BRIG_SECCOMP=off` leaves the filters out (for debugging only).

pub mod lists;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use lists::{Allowed, Check};

/// A filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {0} thread's seccomp filter: {1}")]
    Build(&'static str, #[source] seccompiler::BackendError),
    #[error("installing the {0} thread's seccomp filter: {1}")]
    Install(&'static str, #[source] seccompiler::Error),
    #[error("dropping the {0} thread's capabilities: {1}")]
    Capabilities(&'static str, #[source] std::io::Error),
    #[error("installing the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
}

/// The VMM's threads, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thread {
    Vcpu = 0,
    Devices = 1,
    Console = 2,
    Proxy = 3,
    Main = 4,
}

impl Thread {
    pub const ALL: [Thread; 5] = [
        Thread::Vcpu,
        Thread::Devices,
        Thread::Console,
        Thread::Proxy,
        Thread::Main,
    ];

    /// The thread's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Thread::Vcpu => "vCPU",
            Thread::Devices => "device",
            Thread::Console => "console",
            Thread::Proxy => "port proxy",
            Thread::Main => "main",
        }
    }

    /// Whether the thread starts threads of its own.
    fn starts_threads(self) -> bool {
        matches!(self, Thread::Proxy | Thread::Main)
    }

    /// Every call the thread may make, with its argument checks.
    pub fn allowed(self) -> Vec<Allowed> {
        let own = match self {
            Thread::Vcpu => lists::VCPU,
            Thread::Devices => lists::DEVICES,
            Thread::Console => lists::CONSOLE,
            Thread::Proxy => lists::PROXY,
            Thread::Main => lists::MAIN,
        };
        lists::full(own, self.starts_threads())
    }

    /// The distinct system calls the thread may make.
    #[cfg(test)]
    pub fn syscall_count(self) -> usize {
        let mut nrs: Vec<i64> = self.allowed().iter().map(|a| a.nr).collect();
        nrs.sort_unstable();
        nrs.dedup();
        nrs.len()
    }
}

fn condition(
    thread: Thread,
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .map_err(|e| SeccompError::Build(thread.name(), e))
}

/// The seccompiler rules of one allowed call (`None`: any arguments).
fn rules(thread: Thread, a: &Allowed) -> Result<Option<Vec<SeccompRule>>, SeccompError> {
    let rule = |conds| SeccompRule::new(conds).map_err(|e| SeccompError::Build(thread.name(), e));
    Ok(match a.check {
        Check::Any => None,
        Check::ArgIn(arg, values) => Some(
            values
                .iter()
                .map(|&v| rule(vec![condition(thread, arg, SeccompCmpOp::Eq, v)?]))
                .collect::<Result<_, _>>()?,
        ),
        Check::BitsClear(arg, bits) => Some(vec![rule(vec![condition(
            thread,
            arg,
            SeccompCmpOp::MaskedEq(bits),
            0,
        )?])?]),
        Check::BitsSet(arg, bits) => Some(vec![rule(vec![condition(
            thread,
            arg,
            SeccompCmpOp::MaskedEq(bits),
            bits,
        )?])?]),
    })
}

fn build(thread: Thread) -> Result<BpfProgram, SeccompError> {
    // Several entries for one call add up; one without a check allows it whatever the arguments.
    let mut merged: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for a in thread.allowed() {
        let new = rules(thread, &a)?;
        match (merged.get_mut(&a.nr), new) {
            (None, new) => {
                merged.insert(a.nr, new);
            }
            (Some(slot), None) => *slot = None,
            (Some(Some(old)), Some(mut more)) => old.append(&mut more),
            (Some(None), Some(_)) => {}
        }
    }
    let rules = merged
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(thread.name(), e))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Build(thread.name(), e))
}

/// `clone3` answered ENOSYS (everything else allowed): the C library then starts threads
/// with `clone`, whose flags the thread's own filter checks.
fn no_clone3() -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        seccompiler::TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build("clone3", e))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Build("clone3", e))
}

/// The thread's filter, compiled once per process.
fn program(thread: Thread) -> Result<&'static BpfProgram, SeccompError> {
    static PROGRAMS: [OnceLock<BpfProgram>; 5] = [const { OnceLock::new() }; 5];
    let slot = &PROGRAMS[thread as usize];
    if let Some(p) = slot.get() {
        return Ok(p);
    }
    let p = build(thread)?;
    Ok(slot.get_or_init(|| p))
}

thread_local! {
    /// Which filter this thread installed, for the SIGSYS handler's message (a const
    /// initializer without destructor: safe to read in a signal handler).
    static CONFINED: Cell<u8> = const { Cell::new(u8::MAX) };
}

/// Whether filters are wanted (`BRIG_SECCOMP=off` turns them off).
pub fn enabled() -> bool {
    std::env::var("BRIG_SECCOMP").map_or(true, |v| v != "off")
}

/// Installs the SIGSYS handler (once per process): a refused system call ends brig with one
/// line and status 125 instead of a silent core dump.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    // The handler only calls async-signal-safe functions (write, _exit) and touches no locks
    // or allocations.
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e.errno())))?;
    fix_malloc_arena_limit();
    // A panic in a confined thread (caught: the VM ends with an error) prints its message
    // without a backtrace, whose symbols are read from files the thread may not open.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if CONFINED.with(|c| c.get()) == u8::MAX {
            default_hook(info);
        } else {
            let name = std::thread::current().name().unwrap_or("?").to_string();
            eprintln!("thread '{name}' {info}");
        }
    }));
    let _ = INSTALLED.set(());
    Ok(())
}

/// Empties the calling thread's effective, permitted, inheritable and ambient capability sets.
fn drop_capabilities() -> std::io::Result<()> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    rustix::thread::clear_ambient_capability_set()?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

/// [`confine`] for the console echo thread, in the form `ConsoleLog::with_confined_echo` takes.
pub fn confine_console() -> Result<(), String> {
    confine(Thread::Console).map_err(|e| e.to_string())
}

/// Confines the calling thread: it gives up every capability (capabilities are per thread;
/// nothing the VMM does once the VM is built needs one: its files are its own, the TAP and
/// the disks are open, the nft process it ends is its own), then installs its list (nothing
/// of either when `BRIG_SECCOMP=off`). Both stay for the thread's life and pass to the
/// threads it starts.
pub fn confine(thread: Thread) -> Result<(), SeccompError> {
    if !enabled() {
        return Ok(());
    }
    install_sigsys_handler()?;
    drop_capabilities().map_err(|e| SeccompError::Capabilities(thread.name(), e))?;
    let own = program(thread)?;
    if thread.starts_threads() {
        let clone3 = no_clone3()?;
        seccompiler::apply_filter(&clone3).map_err(|e| SeccompError::Install(thread.name(), e))?;
    }
    seccompiler::apply_filter(own).map_err(|e| SeccompError::Install(thread.name(), e))?;
    CONFINED.with(|c| c.set(thread as u8));
    Ok(())
}

/// glibc's malloc sizes its arena limit the first time a thread needs a new arena (once there
/// are more than 8), by reading /sys/devices/system/cpu/online: in a confined thread that
/// open is refused. Setting the limit here, before any thread is confined, spares that read
/// (with glibc's own default, 8 arenas per CPU).
fn fix_malloc_arena_limit() {
    #[cfg(target_env = "gnu")]
    {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = i32::try_from(cpus.saturating_mul(8)).unwrap_or(i32::MAX);
        // SAFETY: mallopt takes two integers and changes only a malloc tunable.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Formats `n` in decimal into `buf`, returning the digits (no allocation: signal context).
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            return &buf[i..];
        }
    }
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: for SIGSYS the kernel fills in si_syscall (at offset 24 of siginfo_t on x86_64:
    // si_signo, si_errno, si_code, padding, si_call_addr, then si_syscall); `info` points to
    // that siginfo for the duration of the handler.
    let nr = unsafe { *(info as *const u8).add(24).cast::<libc::c_int>() } as u32;
    let mut digits = [0u8; 10];
    let thread = CONFINED.with(|c| c.get());
    let name = Thread::ALL
        .iter()
        .find(|t| **t as u8 == thread)
        .map_or("VMM", |t| t.name());
    let parts: [&[u8]; 5] = [
        b"brig: the ",
        name.as_bytes(),
        b" thread made a system call its seccomp filter forbids (number ",
        decimal(nr, &mut digits),
        b"); the VM was stopped\n",
    ];
    for p in parts {
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffers are live.
        unsafe {
            libc::write(libc::STDERR_FILENO, p.as_ptr().cast(), p.len());
        }
    }
    // SAFETY: as above.
    unsafe { libc::_exit(125) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    #[test]
    fn decimal_formats_syscall_numbers() {
        let mut b = [0u8; 10];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(257, &mut b), b"257");
        assert_eq!(decimal(u32::MAX, &mut b), b"4294967295");
    }

    #[test]
    fn every_filter_compiles() {
        for t in Thread::ALL {
            assert!(!program(t).unwrap().is_empty(), "{t:?}");
        }
    }

    /// The guest-facing threads open no files and issue only the ioctls they need; the counts
    /// (distinct system calls per thread) are printed for comparison with Firecracker's.
    #[test]
    fn guest_facing_threads_have_the_narrowest_lists() {
        for t in Thread::ALL {
            eprintln!(
                "{:>10} thread: {} system calls",
                t.name(),
                t.syscall_count()
            );
        }
        for t in [Thread::Vcpu, Thread::Devices, Thread::Console] {
            assert!(t.syscall_count() < Thread::Main.syscall_count(), "{t:?}");
            assert!(
                t.allowed().iter().all(|a| a.nr != libc::SYS_openat),
                "{t:?}"
            );
        }
        let ioctls: Vec<u64> = Thread::Vcpu
            .allowed()
            .iter()
            .filter(|a| a.nr == libc::SYS_ioctl)
            .flat_map(|a| match a.check {
                Check::ArgIn(1, v) => v.to_vec(),
                other => panic!("vCPU ioctl without a request check: {other:?}"),
            })
            .collect();
        assert_eq!(
            ioctls,
            [lists::KVM_RUN, lists::KVM_GET_REGS, libc::TUNSETOFFLOAD]
        );
        assert_eq!(lists::KVM_GET_REGS, 0x8090_ae81);
    }

    /// What no thread may call, whatever its arguments.
    #[test]
    fn no_list_has_execve_ptrace_or_mount() {
        for t in Thread::ALL {
            for a in t.allowed() {
                assert!(
                    ![
                        libc::SYS_execve,
                        libc::SYS_execveat,
                        libc::SYS_ptrace,
                        libc::SYS_mount,
                        libc::SYS_fork,
                        libc::SYS_vfork,
                    ]
                    .contains(&a.nr),
                    "{t:?} allows {}",
                    a.nr
                );
            }
        }
    }

    /// A filtered thread keeps working within its list: memory, locks, sleeping, and (for
    /// the threads that start threads) a thread of its own.
    #[test]
    fn a_filtered_thread_still_does_its_work() {
        for t in Thread::ALL {
            let worker = std::thread::spawn(move || {
                confine(t).unwrap();
                let v: Vec<u64> = (0..100_000).collect();
                let m = std::sync::Mutex::new(v.iter().sum::<u64>());
                let mut sum = *m.lock().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(1));
                if t.starts_threads() {
                    sum += std::thread::spawn(|| 1u64).join().unwrap();
                }
                sum
            });
            let want = 4_999_950_000 + u64::from(t.starts_threads());
            assert_eq!(worker.join().unwrap(), want, "{t:?}");
        }
    }

    /// A confined thread runs without capabilities.
    #[test]
    fn confined_threads_drop_their_capabilities() {
        let cap_eff = |tid: i32| {
            let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        for t in Thread::ALL {
            let (tx, rx) = std::sync::mpsc::channel();
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let worker = std::thread::spawn(move || {
                confine(t).unwrap();
                tx.send(rustix::thread::gettid().as_raw_nonzero().get())
                    .unwrap();
                let _ = done_rx.recv();
            });
            let tid = rx.recv().unwrap();
            let caps = cap_eff(tid);
            done_tx.send(()).unwrap();
            worker.join().unwrap();
            assert_eq!(caps, 0, "{t:?}");
        }
    }

    /// The forbidden calls the child below makes, by name: (name, system call number).
    const FORBIDDEN: &[(&str, libc::c_long)] = &[
        ("tiocsti", libc::SYS_ioctl),
        ("kvm_create_vm", libc::SYS_ioctl),
        ("mprotect_exec", libc::SYS_mprotect),
        ("mmap_exec", libc::SYS_mmap),
        ("open", libc::SYS_openat),
        ("execve", libc::SYS_execve),
        ("socket", libc::SYS_socket),
        ("fork", libc::SYS_clone),
    ];

    /// Makes the forbidden call `what`.
    fn forbidden_call(what: &str) {
        // SAFETY: each call is made on purpose with arguments that are valid or harmless: the
        // filter must stop it before it runs; should it run, the test fails on what follows.
        unsafe {
            match what {
                "tiocsti" => {
                    let c = b'x';
                    libc::ioctl(0, libc::TIOCSTI, &c);
                }
                "kvm_create_vm" => {
                    libc::ioctl(0, 0xAE01, 0);
                }
                "mprotect_exec" => {
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    assert_ne!(p, libc::MAP_FAILED);
                    libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC);
                }
                "mmap_exec" => {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_EXEC,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                }
                "open" => {
                    libc::openat(libc::AT_FDCWD, c"/etc/hostname".as_ptr(), libc::O_RDONLY);
                }
                "execve" => {
                    let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                    libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), std::ptr::null());
                }
                "socket" => {
                    libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0);
                }
                "fork" => {
                    if libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) == 0 {
                        libc::_exit(0);
                    }
                }
                other => panic!("unknown call {other}"),
            }
        }
    }

    /// The child half of the test below: in a process of its own (this test binary run
    /// again), a thread confined as `BRIG_SECCOMP_THREAD` makes the call `BRIG_SECCOMP_CALL`.
    #[test]
    fn refused_call_child() {
        let (Ok(thread), Ok(call)) = (
            std::env::var("BRIG_SECCOMP_THREAD"),
            std::env::var("BRIG_SECCOMP_CALL"),
        ) else {
            return;
        };
        let t = Thread::ALL
            .into_iter()
            .find(|t| format!("{t:?}") == thread)
            .unwrap();
        let made = call.clone();
        std::thread::spawn(move || {
            confine(t).unwrap();
            forbidden_call(&made);
        })
        .join()
        .unwrap();
        unreachable!("the filter let {call} through");
    }

    /// Each forbidden call, made by a thread under each filter (the main thread's may open
    /// files: it keeps the sandbox's state), ends the process with one line and 125.
    #[test]
    fn each_forbidden_call_ends_brig_with_one_line_and_125() {
        for t in Thread::ALL {
            for &(call, nr) in FORBIDDEN {
                if t == Thread::Main && call == "open" {
                    continue;
                }
                let out = std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "vmm::seccomp::tests::refused_call_child",
                        "--nocapture",
                        "--test-threads",
                        "1",
                    ])
                    .env("BRIG_SECCOMP_THREAD", format!("{t:?}"))
                    .env("BRIG_SECCOMP_CALL", call)
                    .env_remove("BRIG_SECCOMP")
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(125), "{t:?} {call}: {stderr}");
                let line = format!(
                    "brig: the {} thread made a system call its seccomp filter forbids \
                     (number {nr}); the VM was stopped",
                    t.name()
                );
                assert!(stderr.contains(&line), "{t:?} {call}: {stderr}");
            }
        }
    }

    /// The main thread may put the host terminal in raw mode and back, and read its size (as
    /// `brig run -it` does once the VM runs).
    #[test]
    fn the_main_thread_may_drive_the_terminal() {
        use rustix::termios;
        // SAFETY: posix_openpt, grantpt, unlockpt and ptsname_r on a fresh descriptor this
        // test owns; ptsname_r writes at most `name.len()` bytes.
        let (master, name) = unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(m >= 0);
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            let mut name = [0 as libc::c_char; 64];
            assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
            let name = std::ffi::CStr::from_ptr(name.as_ptr()).to_owned();
            (std::os::fd::OwnedFd::from_raw_fd(m), name)
        };
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        std::thread::spawn(move || {
            confine(Thread::Main).unwrap();
            let saved = termios::tcgetattr(&tty).unwrap();
            let mut raw = saved.clone();
            raw.make_raw();
            termios::tcsetattr(&tty, termios::OptionalActions::Now, &raw).unwrap();
            termios::tcsetattr(&tty, termios::OptionalActions::Now, &saved).unwrap();
            termios::tcgetwinsize(&tty).unwrap();
            drop(master);
        })
        .join()
        .unwrap();
    }

    /// The main thread's filter lets it open files (state, logs) but answers `clone3` with
    /// ENOSYS instead of ending brig.
    #[test]
    fn clone3_is_refused_softly() {
        std::thread::spawn(|| {
            confine(Thread::Main).unwrap();
            // SAFETY: clone3 with a null argument fails before it could do anything.
            let rc = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
            assert_eq!(rc, -1);
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::ENOSYS)
            );
        })
        .join()
        .unwrap();
    }
}
