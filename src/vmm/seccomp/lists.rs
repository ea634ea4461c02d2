//! What each thread of the VMM process may call once the guest can reach it: one list per
//! thread, with the argument rules that narrow a call (an `ioctl` by request, `mmap` and
//! `mprotect` without `PROT_EXEC`, `socket` by family, `fcntl` by command, `clone` only for
//! threads). The lists were found by tracing every path a sandbox takes (`brig run` in the
//! foreground with and without a terminal, detached with `exec`, `cp`, `logs`, `stats` and
//! `stop`, bridge networking with published ports); a call missing here ends brig with one
//! line naming it (see the module above), so a new need shows up in the tests, not silently.

use libc::c_long;

/// How a listed call's arguments are checked.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// Any arguments.
    Any,
    /// Argument `.0` (its low 32 bits) is one of `.1`.
    ArgIn(u8, &'static [u64]),
    /// Argument `.0` has none of the bits `.1` set.
    BitsClear(u8, u64),
    /// Argument `.0` has every bit of `.1` set.
    BitsSet(u8, u64),
}

/// One allowed system call.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    pub nr: c_long,
    pub check: Check,
}

const fn any(nr: c_long) -> Allowed {
    Allowed {
        nr,
        check: Check::Any,
    }
}

const fn arg_in(nr: c_long, arg: u8, values: &'static [u64]) -> Allowed {
    Allowed {
        nr,
        check: Check::ArgIn(arg, values),
    }
}

/// `mmap`/`mprotect` that never make memory executable.
const fn no_exec(nr: c_long) -> Allowed {
    Allowed {
        nr,
        check: Check::BitsClear(2, libc::PROT_EXEC as u64),
    }
}

const fn ioctls(requests: &'static [u64]) -> Allowed {
    arg_in(libc::SYS_ioctl, 1, requests)
}

/// `_IOR(type, nr, size)`.
const fn ior(ty: u64, nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (ty << 8) | nr
}

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = 0xAE80;
/// `KVM_GET_REGS`, for the registers shown when a vCPU fails.
pub const KVM_GET_REGS: u64 = ior(0xAE, 0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
/// `_IOWR(type, nr, size)`.
const fn iowr(ty: u64, nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (ty << 8) | nr
}

/// What saving the VM asks of KVM (`brig checkpoint create`: the main thread of a running
/// VMM stops the vCPUs, completing their last exit with `KVM_RUN`, and reads their, the
/// VM's and the host's state). Only reads: nothing here changes the VM.
const SNAPSHOT: [u64; 18] = {
    use kvm_bindings as k;
    use std::mem::size_of;
    [
        KVM_RUN,
        KVM_GET_REGS,
        ior(0xAE, 0x83, size_of::<k::kvm_sregs>()),
        iowr(0xAE, 0x88, size_of::<k::kvm_msrs>()),
        ior(0xAE, 0x8e, size_of::<k::kvm_lapic_state>()),
        iowr(0xAE, 0x91, size_of::<k::kvm_cpuid2>()),
        ior(0xAE, 0x98, size_of::<k::kvm_mp_state>()),
        ior(0xAE, 0x9f, size_of::<k::kvm_vcpu_events>()),
        ior(0xAE, 0xa1, size_of::<k::kvm_debugregs>()),
        0xAEA3, // KVM_GET_TSC_KHZ
        ior(0xAE, 0xa4, size_of::<k::kvm_xsave>()),
        ior(0xAE, 0xa6, size_of::<k::kvm_xcrs>()),
        ior(0xAE, 0x9f, size_of::<k::kvm_pit_state2>()),
        iowr(0xAE, 0x62, size_of::<k::kvm_irqchip>()),
        ior(0xAE, 0x7c, size_of::<k::kvm_clock_data>()),
        iowr(0xAE, 0x05, size_of::<k::kvm_cpuid2>()), // KVM_GET_SUPPORTED_CPUID
        iowr(0xAE, 0x02, size_of::<k::kvm_msr_list>()), // KVM_GET_MSR_INDEX_LIST
        0xAE03,                                       // KVM_CHECK_EXTENSION
    ]
};
/// `_IOW(type, nr, size)`.
const fn iow(ty: u64, nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
/// vhost's ioctl type (`VHOST_VIRTIO`, linux/vhost.h).
const VHOST: u64 = 0xAF;
/// `struct vhost_vring_state` and `struct vhost_vring_file`: two 32-bit fields.
const VRING_STATE: usize = 8;
/// `VHOST_GET_VRING_BASE`: stops a queue and says where it stopped (a reset, a save).
pub const VHOST_GET_VRING_BASE: u64 = iowr(VHOST, 0x12, VRING_STATE);
/// `VHOST_NET_SET_BACKEND`: attaches a queue to the TAP, or detaches it (fd -1).
pub const VHOST_NET_SET_BACKEND: u64 = iow(VHOST, 0x30, VRING_STATE);
/// What the device thread asks of vhost-net when the guest activates or resets the network
/// device (`devices::virtio::net::vhost`): the acked ring features, the memory table, each
/// queue's size, addresses, position, eventfds and backend. Opening it, `SET_OWNER` and
/// `GET_FEATURES` happen before the filters are in place.
pub const VHOST_NET: [u64; 10] = [
    iow(VHOST, 0x00, 8),           // VHOST_SET_FEATURES (u64)
    iow(VHOST, 0x03, 8),           // VHOST_SET_MEM_TABLE (struct vhost_memory, regions follow)
    iow(VHOST, 0x10, VRING_STATE), // VHOST_SET_VRING_NUM
    iow(VHOST, 0x11, 40),          // VHOST_SET_VRING_ADDR (struct vhost_vring_addr)
    iow(VHOST, 0x12, VRING_STATE), // VHOST_SET_VRING_BASE
    VHOST_GET_VRING_BASE,
    iow(VHOST, 0x20, VRING_STATE), // VHOST_SET_VRING_KICK
    iow(VHOST, 0x21, VRING_STATE), // VHOST_SET_VRING_CALL
    iow(VHOST, 0x22, VRING_STATE), // VHOST_SET_VRING_ERR
    VHOST_NET_SET_BACKEND,
];
const TUNSETOFFLOAD: u64 = libc::TUNSETOFFLOAD;
const FIONBIO: u64 = libc::FIONBIO;
/// The host terminal (`-t`): its modes (rustix asks with the termios2 requests first, the
/// old ones where those are refused) and size. Never `TIOCSTI`.
const TERMINAL: [u64; 9] = [
    libc::TCGETS2,
    libc::TCSETS2,
    libc::TCSETSW2,
    libc::TCSETSF2,
    libc::TCGETS,
    libc::TCSETS,
    libc::TCSETSW,
    libc::TCSETSF,
    libc::TIOCGWINSZ,
];

/// `fcntl` commands: duplicating an fd (queue eventfds), reading and setting flags. (Debug
/// builds of std also check with `F_GETFD` that an fd is open before closing it.)
const FCNTL_CMDS: &[u64] = &[
    libc::F_GETFD as u64,
    libc::F_SETFD as u64,
    libc::F_GETFL as u64,
    libc::F_SETFL as u64,
    libc::F_DUPFD_CLOEXEC as u64,
];

/// What every thread needs to live: memory (never executable), locks, time, signals, its end.
const COMMON: &[Allowed] = &[
    any(libc::SYS_read),
    any(libc::SYS_write),
    any(libc::SYS_writev),
    any(libc::SYS_close),
    arg_in(libc::SYS_fcntl, 1, FCNTL_CMDS),
    no_exec(libc::SYS_mmap),
    no_exec(libc::SYS_mprotect),
    any(libc::SYS_munmap),
    any(libc::SYS_mremap),
    any(libc::SYS_madvise),
    any(libc::SYS_brk),
    any(libc::SYS_futex),
    any(libc::SYS_sched_yield),
    any(libc::SYS_clock_gettime),
    any(libc::SYS_gettimeofday),
    any(libc::SYS_nanosleep),
    any(libc::SYS_clock_nanosleep),
    any(libc::SYS_rt_sigreturn),
    any(libc::SYS_rt_sigprocmask),
    any(libc::SYS_sigaltstack),
    any(libc::SYS_getpid),
    any(libc::SYS_gettid),
    // Only to this process's own threads (the vCPU kick; abort).
    any(libc::SYS_tgkill),
    // std's hash maps seed themselves per thread.
    any(libc::SYS_getrandom),
    any(libc::SYS_exit),
    any(libc::SYS_exit_group),
    // A panic's message (caught: the VM ends with an error) shortens paths with the cwd.
    any(libc::SYS_getcwd),
];

/// Starting a thread (only threads: `clone` must carry `CLONE_THREAD`; `clone3`, whose flags
/// a filter cannot see, is answered ENOSYS so that the C library falls back to `clone`), and
/// what the new thread does before its own code runs.
const THREADS: &[Allowed] = &[
    Allowed {
        nr: libc::SYS_clone,
        check: Check::BitsSet(0, libc::CLONE_THREAD as u64),
    },
    any(libc::SYS_clone3),
    any(libc::SYS_set_robust_list),
    any(libc::SYS_rseq),
    any(libc::SYS_sched_getaffinity),
    arg_in(libc::SYS_prctl, 0, &[libc::PR_SET_NAME as u64]),
];

/// A vCPU thread: `KVM_RUN` and the exits' handlers (port and MMIO accesses to brig's devices:
/// eventfd writes, console bytes queued for the console thread; a device the guest activates
/// clones its queue eventfds and, for the network device, sets the TAP's offloads; a device
/// reset drops the vsock connections and rearms a timer).
pub const VCPU: &[Allowed] = &[
    ioctls(&[KVM_RUN, KVM_GET_REGS, TUNSETOFFLOAD]),
    any(libc::SYS_epoll_ctl),
    any(libc::SYS_timerfd_settime),
    any(libc::SYS_shutdown),
];

/// The device thread: the event loop that runs every device's handlers (virtqueues, disk
/// files, the TAP or passt socket, vsock connections to unix sockets in the runtime
/// directory, which it may accept, connect and remove when the device goes; the queues it
/// hands to vhost-net and takes back).
pub const DEVICES: &[Allowed] = &[
    ioctls(&[FIONBIO]),
    ioctls(&VHOST_NET),
    any(libc::SYS_epoll_wait),
    any(libc::SYS_epoll_pwait),
    any(libc::SYS_epoll_ctl),
    any(libc::SYS_readv),
    any(libc::SYS_pread64),
    any(libc::SYS_preadv),
    any(libc::SYS_pwrite64),
    any(libc::SYS_pwritev),
    any(libc::SYS_fsync),
    any(libc::SYS_fdatasync),
    any(libc::SYS_fallocate),
    any(libc::SYS_lseek),
    any(libc::SYS_timerfd_settime),
    arg_in(libc::SYS_socket, 0, &[libc::AF_UNIX as u64]),
    any(libc::SYS_connect),
    any(libc::SYS_accept4),
    any(libc::SYS_recvfrom),
    any(libc::SYS_recvmsg),
    any(libc::SYS_sendto),
    any(libc::SYS_sendmsg),
    any(libc::SYS_shutdown),
    any(libc::SYS_unlink),
];

/// The console thread: copies the guest's console output to the terminal or the log file.
pub const CONSOLE: &[Allowed] = &[];

/// The port proxy's threads (`-p`): accept on the published ports, connect to the guest
/// (a UDP flow binds a socket of its own to an ephemeral port first), copy both ways.
pub const PROXY: &[Allowed] = &[
    any(libc::SYS_poll),
    any(libc::SYS_ppoll),
    any(libc::SYS_accept4),
    arg_in(
        libc::SYS_socket,
        0,
        &[libc::AF_INET as u64, libc::AF_INET6 as u64],
    ),
    any(libc::SYS_bind),
    any(libc::SYS_connect),
    any(libc::SYS_getsockopt),
    any(libc::SYS_setsockopt),
    any(libc::SYS_getsockname),
    any(libc::SYS_getpeername),
    any(libc::SYS_recvfrom),
    any(libc::SYS_recvmsg),
    any(libc::SYS_sendto),
    any(libc::SYS_sendmsg),
    any(libc::SYS_shutdown),
    ioctls(&[FIONBIO]),
];

/// The main thread once the VM runs (and the threads it starts): the agent session over unix
/// sockets, the host terminal, the sandbox's state, log and lock files, waiting, relaying
/// signals, and the teardown (helper processes ended, the runtime directory removed).
pub const MAIN: &[Allowed] = &[
    ioctls(&[FIONBIO]),
    ioctls(&TERMINAL),
    ioctls(&SNAPSHOT),
    // A checkpoint takes the network device's queues back from vhost-net before saving them.
    ioctls(&[VHOST_GET_VRING_BASE, VHOST_NET_SET_BACKEND]),
    any(libc::SYS_poll),
    any(libc::SYS_ppoll),
    any(libc::SYS_epoll_create1),
    any(libc::SYS_epoll_ctl),
    any(libc::SYS_epoll_wait),
    any(libc::SYS_epoll_pwait),
    any(libc::SYS_eventfd2),
    any(libc::SYS_pipe2),
    any(libc::SYS_readv),
    any(libc::SYS_pread64),
    any(libc::SYS_pwrite64),
    any(libc::SYS_lseek),
    any(libc::SYS_openat),
    any(libc::SYS_newfstatat),
    any(libc::SYS_statx),
    any(libc::SYS_fstat),
    any(libc::SYS_getdents64),
    any(libc::SYS_fsync),
    any(libc::SYS_fdatasync),
    any(libc::SYS_ftruncate),
    any(libc::SYS_flock),
    any(libc::SYS_rename),
    any(libc::SYS_renameat),
    any(libc::SYS_renameat2),
    any(libc::SYS_mkdir),
    any(libc::SYS_mkdirat),
    any(libc::SYS_unlink),
    any(libc::SYS_unlinkat),
    any(libc::SYS_rmdir),
    any(libc::SYS_readlink),
    arg_in(libc::SYS_socket, 0, &[libc::AF_UNIX as u64]),
    any(libc::SYS_connect),
    any(libc::SYS_accept4),
    any(libc::SYS_recvfrom),
    any(libc::SYS_recvmsg),
    any(libc::SYS_sendto),
    any(libc::SYS_sendmsg),
    any(libc::SYS_shutdown),
    any(libc::SYS_rt_sigaction),
    any(libc::SYS_rt_sigtimedwait),
    any(libc::SYS_restart_syscall),
    // Ending the helper processes it started (passt, a volume's file server), and reaping them.
    any(libc::SYS_kill),
    any(libc::SYS_wait4),
    any(libc::SYS_waitid),
    any(libc::SYS_getuid),
    any(libc::SYS_geteuid),
    any(libc::SYS_getppid),
    any(libc::SYS_uname),
    any(libc::SYS_prlimit64),
    any(libc::SYS_sysinfo),
    // A jailed VMM's peak memory, told to its keeper at the end (the jail has no /proc).
    any(libc::SYS_getrusage),
];

/// A thread's whole list: its own calls, the common ones and, for threads that start
/// threads, [`THREADS`].
pub fn full(own: &'static [Allowed], starts_threads: bool) -> Vec<Allowed> {
    let mut all: Vec<Allowed> = COMMON.iter().chain(own).copied().collect();
    if starts_threads {
        all.extend_from_slice(THREADS);
    }
    all
}
