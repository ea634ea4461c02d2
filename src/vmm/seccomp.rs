//! Seccomp filters for the threads that run guest code.
//!
//! A vCPU thread spends its life in `KVM_RUN` and in the handlers of the exits it gets: port
//! and MMIO accesses to brig's devices, which touch memory, write eventfds, queue console
//! output, take locks, and (a device reset or activation written by the guest) drop connections and
//! clone eventfds. That is all it may do once the guest runs: each vCPU thread installs
//! [`vcpu_filter`] just before its first `KVM_RUN`, so that a guest that found a bug in an
//! exit handler still cannot open files, create sockets, or execute programs from it (as
//! Firecracker filters its vCPU threads).
//!
//! A system call outside the list is not executed: the kernel sends SIGSYS, whose handler
//! writes one line naming the call and ends brig with status 125. `BRIG_SECCOMP=off` leaves
//! the filter out (for debugging only).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// A filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the vCPU seccomp filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    #[error("installing the vCPU seccomp filter: {0}")]
    Install(#[source] seccompiler::Error),
    #[error("installing the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
}

/// What a vCPU thread may call after the guest starts running.
const VCPU_SYSCALLS: &[libc::c_long] = &[
    // KVM_RUN and the other vCPU/VM ioctls (interrupt lines, eventfd registration).
    libc::SYS_ioctl,
    // Eventfds and tracing to stderr. (The console echo is written by a thread of its own:
    // a vCPU only queues the bytes, with futex below.)
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    // Locks and condition variables.
    libc::SYS_futex,
    libc::SYS_sched_yield,
    // Queue eventfds are cloned (F_DUPFD_CLOEXEC) when a device is activated; fds are closed.
    libc::SYS_fcntl,
    libc::SYS_close,
    // A device reset written by the guest (status 0) runs here too: the vsock muxer drops its
    // connections (epoll_ctl DEL, close, shutdown) and rearms its timeout timer.
    libc::SYS_epoll_ctl,
    libc::SYS_timerfd_settime,
    libc::SYS_shutdown,
    // The allocator.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    // Time and sleeping.
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    // The kick signal that takes a vCPU out of KVM_RUN, and aborting.
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    // std's hash maps seed themselves per thread.
    libc::SYS_getrandom,
    // Ending the thread (or, from the SIGSYS handler, brig).
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The vCPU filter, compiled once per process.
fn vcpu_program() -> Result<&'static BpfProgram, SeccompError> {
    static PROGRAM: OnceLock<BpfProgram> = OnceLock::new();
    if let Some(p) = PROGRAM.get() {
        return Ok(p);
    }
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        VCPU_SYSCALLS.iter().map(|&nr| (nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    let program = BpfProgram::try_from(filter).map_err(SeccompError::Build)?;
    Ok(PROGRAM.get_or_init(|| program))
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
    let _ = INSTALLED.set(());
    Ok(())
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
    let parts: [&[u8]; 3] = [
        b"brig: a vCPU thread made a system call its seccomp filter forbids (number ",
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

/// Confines the calling thread to [`VCPU_SYSCALLS`].
pub fn apply_vcpu_filter() -> Result<(), SeccompError> {
    let program = vcpu_program()?;
    seccompiler::apply_filter(program).map_err(SeccompError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_formats_syscall_numbers() {
        let mut b = [0u8; 10];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(257, &mut b), b"257");
        assert_eq!(decimal(u32::MAX, &mut b), b"4294967295");
    }

    #[test]
    fn the_filter_compiles_and_lists_only_what_vcpus_need() {
        assert!(!vcpu_program().unwrap().is_empty());
        for forbidden in [
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_clone,
        ] {
            assert!(!VCPU_SYSCALLS.contains(&forbidden));
        }
    }

    /// A filtered thread keeps working within the list.
    #[test]
    fn a_filtered_thread_still_does_its_work() {
        let t = std::thread::spawn(|| {
            apply_vcpu_filter().unwrap();
            let v: Vec<u64> = (0..100_000).collect();
            let m = std::sync::Mutex::new(v.iter().sum::<u64>());
            let sum = *m.lock().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
            sum
        });
        assert_eq!(t.join().unwrap(), 4_999_950_000);
    }

    /// The child half of the test below: in a process of its own (this test binary run again),
    /// a filtered thread opens a file.
    #[test]
    fn refused_call_child() {
        if std::env::var_os("BRIG_SECCOMP_CHILD").is_none() {
            return;
        }
        install_sigsys_handler().unwrap();
        std::thread::spawn(|| {
            apply_vcpu_filter().unwrap();
            let _ = std::fs::File::open("/etc/hostname");
        })
        .join()
        .unwrap();
        unreachable!("the filter let openat through");
    }

    #[test]
    fn a_refused_call_ends_brig_with_one_line_and_125() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "vmm::seccomp::tests::refused_call_child",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env("BRIG_SECCOMP_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        let line = format!("seccomp filter forbids (number {})", libc::SYS_openat);
        assert!(stderr.contains(&line), "{stderr}");
    }
}
