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
/// the disks and the nftables socket are open, the helpers it ends are its own), then installs its list (nothing
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
mod tests;
