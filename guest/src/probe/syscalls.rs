//! System calls docker's seccomp profile refuses, tried with arguments that make them fail
//! harmlessly when allowed (a null pointer, a bad descriptor or flag): a call counts as
//! refused when it fails with EPERM or kills its child (amicontained's method; a missing
//! capability also gives EPERM, which the comparison counts the same on both sides).

/// (name, number, arguments): every one fails without effect when allowed.
const TRIES: &[(&str, libc::c_long, [libc::c_long; 6])] = &[
    ("keyctl", libc::SYS_keyctl, [-1, 0, 0, 0, 0, 0]),
    ("add_key", libc::SYS_add_key, [0, 0, 0, 0, 0, 0]),
    ("request_key", libc::SYS_request_key, [0, 0, 0, 0, 0, 0]),
    ("bpf", libc::SYS_bpf, [-1, 0, 0, 0, 0, 0]),
    (
        "perf_event_open",
        libc::SYS_perf_event_open,
        [0, 0, -1, -1, 0, 0],
    ),
    ("userfaultfd", libc::SYS_userfaultfd, [-1, 0, 0, 0, 0, 0]),
    ("unshare", libc::SYS_unshare, [-1, 0, 0, 0, 0, 0]),
    ("setns", libc::SYS_setns, [-1, 0, 0, 0, 0, 0]),
    ("mount", libc::SYS_mount, [0, 0, 0, 0, 0, 0]),
    ("umount2", libc::SYS_umount2, [0, 0, 0, 0, 0, 0]),
    ("pivot_root", libc::SYS_pivot_root, [0, 0, 0, 0, 0, 0]),
    ("swapon", libc::SYS_swapon, [0, 0, 0, 0, 0, 0]),
    ("swapoff", libc::SYS_swapoff, [0, 0, 0, 0, 0, 0]),
    ("reboot", libc::SYS_reboot, [0, 0, 0, 0, 0, 0]),
    ("init_module", libc::SYS_init_module, [0, 0, 0, 0, 0, 0]),
    ("finit_module", libc::SYS_finit_module, [-1, 0, 0, 0, 0, 0]),
    ("delete_module", libc::SYS_delete_module, [0, 0, 0, 0, 0, 0]),
    ("kexec_load", libc::SYS_kexec_load, [0, 0, 0, -1, 0, 0]),
    (
        "open_by_handle_at",
        libc::SYS_open_by_handle_at,
        [-1, 0, 0, 0, 0, 0],
    ),
    (
        "name_to_handle_at",
        libc::SYS_name_to_handle_at,
        [-1, 0, 0, 0, 0, 0],
    ),
    (
        "clock_settime",
        libc::SYS_clock_settime,
        [-1, 0, 0, 0, 0, 0],
    ),
    (
        "clock_adjtime",
        libc::SYS_clock_adjtime,
        [-1, 0, 0, 0, 0, 0],
    ),
    ("adjtimex", libc::SYS_adjtimex, [0, 0, 0, 0, 0, 0]),
    ("syslog", libc::SYS_syslog, [-1, 0, 0, 0, 0, 0]),
    ("iopl", libc::SYS_iopl, [4, 0, 0, 0, 0, 0]),
    ("fsopen", libc::SYS_fsopen, [0, 0, 0, 0, 0, 0]),
    ("fsmount", libc::SYS_fsmount, [-1, 0, 0, 0, 0, 0]),
    ("open_tree", libc::SYS_open_tree, [-1, 0, 0, 0, 0, 0]),
    ("move_mount", libc::SYS_move_mount, [-1, 0, -1, 0, 0, 0]),
    ("uselib", libc::SYS_uselib, [0, 0, 0, 0, 0, 0]),
    ("nfsservctl", libc::SYS_nfsservctl, [0, 0, 0, 0, 0, 0]),
    (
        "lookup_dcookie",
        libc::SYS_lookup_dcookie,
        [0, 0, 0, 0, 0, 0],
    ),
];

/// Tries one call in a child; true when it was refused (EPERM, or the child was killed).
fn refused_one(nr: libc::c_long, a: [libc::c_long; 6]) -> bool {
    // SAFETY: the child only makes the system call and _exits; no allocation, no locks.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: a raw system call with harmless (failing) arguments, then _exit.
        let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
        // SAFETY: __errno_location is this thread's errno.
        let e = unsafe { *libc::__errno_location() };
        let code = if r == -1 && e == libc::EPERM { 1 } else { 0 };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    if pid < 0 {
        return false;
    }
    let mut status = 0;
    // SAFETY: pid is our child; status is a valid int.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    libc::WIFSIGNALED(status) || (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 1)
}

/// (refused, tried).
pub fn refused() -> (usize, usize) {
    let n = TRIES
        .iter()
        .filter(|(_, nr, a)| refused_one(*nr, *a))
        .count();
    (n, TRIES.len())
}
