//! The filters' unit tests: each forbidden call kills a child, each thread still works.

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

/// The vhost-net requests the lists name are the kernel's (as the vhost crate computes them).
#[test]
fn vhost_requests_match_the_kernel_headers() {
    use vhost::vhost_kern::vhost_binding as vb;
    let want = [
        vb::VHOST_SET_FEATURES(),
        vb::VHOST_SET_MEM_TABLE(),
        vb::VHOST_SET_VRING_NUM(),
        vb::VHOST_SET_VRING_ADDR(),
        vb::VHOST_SET_VRING_BASE(),
        vb::VHOST_GET_VRING_BASE(),
        vb::VHOST_SET_VRING_KICK(),
        vb::VHOST_SET_VRING_CALL(),
        vb::VHOST_SET_VRING_ERR(),
        vb::VHOST_NET_SET_BACKEND(),
    ];
    assert_eq!(lists::VHOST_NET, want);
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
