//! `brig-probe`: what a workload can see of its host, measured from inside (`brig compare`).
//!
//! The same static binary runs on the host (the baseline), in a runc container and in a brig
//! sandbox; each run prints one `key<TAB>value` line per fact on stdout, and `brig compare`
//! judges the workload's facts against the host's. The checks follow amicontained, CDK and
//! deepce. Nothing here changes anything: files are opened, never written; system calls are
//! tried with arguments that make them fail (a null pointer, a bad descriptor or flag), each
//! in a child of its own.

use std::fs;
use std::time::Instant;

mod reach;
mod syscalls;

fn emit(key: &str, value: impl std::fmt::Display) {
    let v = value.to_string().replace(['\n', '\t'], " ");
    println!("{key}\t{}", v.trim());
}

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// `open(path, flags)` succeeds (closed at once; nothing is read or written).
fn opens(path: &str, flags: libc::c_int) -> bool {
    let Ok(c) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated path; the descriptor is closed right away.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOCTTY) };
    if fd < 0 {
        return false;
    }
    // SAFETY: fd was just opened by this function.
    unsafe { libc::close(fd) };
    true
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "-".into())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn entries(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn kernel() {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } == 0 {
        // SAFETY: the kernel NUL-terminates release.
        let r = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
        emit("kernel.release", r.to_string_lossy());
    }
    emit(
        "kernel.boot_id",
        read("/proc/sys/kernel/random/boot_id").unwrap_or_else(|| "-".into()),
    );
}

fn identity() {
    let status = read("/proc/self/status").unwrap_or_default();
    emit("caps.eff", status_field(&status, "CapEff"));
    emit("caps.bnd", status_field(&status, "CapBnd"));
    emit("seccomp.mode", status_field(&status, "Seccomp"));
    emit("nnp", status_field(&status, "NoNewPrivs"));
    let (refused, tried) = syscalls::refused();
    emit("seccomp.refused", format!("{refused}/{tried}"));
    let map = read("/proc/self/uid_map").unwrap_or_default();
    let map: Vec<String> = map
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    emit("userns.uid_map", map.join(","));
}

fn devices() {
    emit("dev.count", entries("/dev").len());
    emit("dev.kvm", yes(fs::metadata("/dev/kvm").is_ok()));
    emit("dev.mem", yes(fs::metadata("/dev/mem").is_ok()));
    let disks: Vec<String> = entries("/sys/block")
        .into_iter()
        .filter(|d| !d.starts_with("loop") && !d.starts_with("ram"))
        .map(|d| {
            let size = read(&format!("/sys/block/{d}/size")).unwrap_or_default();
            format!("{d}:{}", size.trim())
        })
        .collect();
    emit("dev.disks", disks.join(","));
}

/// The file's first bytes are an ELF header (runc masks /proc/kcore with /dev/null, which
/// opens but reads nothing).
fn elf(path: &str) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    fs::File::open(path).is_ok_and(|mut f| f.read_exact(&mut head).is_ok() && head == *b"\x7fELF")
}

fn proc_files() {
    emit("proc.kcore", yes(elf("/proc/kcore")));
    emit(
        "proc.sysrq",
        yes(opens("/proc/sysrq-trigger", libc::O_WRONLY)),
    );
    emit(
        "proc.sys",
        yes(opens("/proc/sys/kernel/hostname", libc::O_WRONLY)),
    );
    emit(
        "proc.core_pattern",
        yes(opens("/proc/sys/kernel/core_pattern", libc::O_WRONLY)),
    );
    // cgroup v1's release_agent (the classic escape); cgroup v2 has none.
    let mut agent = "absent";
    for line in read("/proc/self/mountinfo").unwrap_or_default().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 4 && line.contains(" - cgroup ") {
            let path = format!("{}/release_agent", f[4]);
            if fs::metadata(&path).is_ok() {
                agent = if opens(&path, libc::O_WRONLY) {
                    "writable"
                } else {
                    "read-only"
                };
                break;
            }
        }
    }
    emit("cgroup.release_agent", agent);
}

fn mounts() {
    // major:minor, root, fstype, source of every mount: compared with the host's.
    let mut v = Vec::new();
    for line in read("/proc/self/mountinfo").unwrap_or_default().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() > dash + 2 && f.len() > 4 {
            v.push(format!("{} {} {} {}", f[2], f[3], f[dash + 1], f[dash + 2]));
        }
    }
    emit("mounts", v.join("|"));
}

const SOCKETS: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/run/podman/podman.sock",
    "/var/run/podman/podman.sock",
    "/run/runc",
    "/run/brig",
    "/run/user",
];

fn sockets() {
    let found: Vec<&str> = SOCKETS
        .iter()
        .copied()
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect();
    emit("sockets", found.join(","));
}

fn processes() {
    let mut pids = Vec::new();
    let mut user = Vec::new();
    for e in entries("/proc") {
        let Ok(pid) = e.parse::<u32>() else { continue };
        pids.push(pid);
        // User processes only (a kernel thread has no command line): pid and command line.
        if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
            if !cmd.is_empty() && pid != std::process::id() {
                let cmd: String = String::from_utf8_lossy(&cmd).replace('\0', " ");
                user.push(format!("{pid}={}", cmd.trim().replace([',', '|'], "_")));
            }
        }
    }
    emit("pids.count", pids.len());
    emit("pids.user", user.join("|"));
}

fn network() {
    let ifs: Vec<String> = entries("/sys/class/net")
        .into_iter()
        .map(|i| {
            let mac = read(&format!("/sys/class/net/{i}/address")).unwrap_or_default();
            format!("{i}={}", mac.trim())
        })
        .collect();
    emit("net.ifaces", ifs.join(","));
}

fn platform() {
    let l1 = std::arch::x86_64::__cpuid(1);
    let hv = l1.ecx >> 31 & 1 == 1;
    emit("cpu.hypervisor", yes(hv));
    let vendor = if hv {
        // Leaf 0x40000000 is the hypervisor's when the bit is set.
        let l = std::arch::x86_64::__cpuid(0x4000_0000);
        let bytes: Vec<u8> = [l.ebx, l.ecx, l.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .filter(|b| b.is_ascii_graphic())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        String::new()
    };
    emit(
        "cpu.hv_vendor",
        if vendor.is_empty() { "-" } else { &vendor },
    );
    emit(
        "dmi.product",
        read("/sys/class/dmi/id/product_name").unwrap_or_else(|| "-".into()),
    );
}

/// The guest-kernel hardening brig's agent applies (and the host's own settings under a
/// container): unprivileged BPF, the user-namespace limit, and whether a new user namespace
/// can be made (tried in a child, which exits at once).
fn hardening() {
    let sysctl = |p: &str| read(p).map_or_else(|| "-".into(), |v| v.trim().to_string());
    emit(
        "sysctl.unprivileged_bpf_disabled",
        sysctl("/proc/sys/kernel/unprivileged_bpf_disabled"),
    );
    emit(
        "sysctl.max_user_namespaces",
        sysctl("/proc/sys/user/max_user_namespaces"),
    );
    // SAFETY: fork in a single-threaded program; the child makes one system call and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: unshare has no pointer arguments; _exit never returns.
        unsafe {
            let rc = libc::unshare(libc::CLONE_NEWUSER);
            let errno = *libc::__errno_location();
            libc::_exit(if rc == 0 { 0 } else { errno.clamp(1, 255) });
        }
    }
    let result = if pid < 0 {
        "-".to_string()
    } else {
        let mut status = 0;
        // SAFETY: pid is this process's child; status is a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
            (true, 0) => "yes".into(),
            (true, libc::EPERM) => "EPERM".into(),
            (true, libc::ENOSPC) => "ENOSPC".into(),
            (true, libc::EINVAL) => "EINVAL".into(),
            (true, e) => format!("errno {e}"),
            (false, _) => "killed".into(),
        }
    };
    emit("userns.create", result);
}

fn main() {
    let t0 = Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    emit("probe.started_us", now);
    kernel();
    identity();
    devices();
    proc_files();
    mounts();
    sockets();
    processes();
    network();
    platform();
    hardening();
    // `--connect NAME=ADDR:PORT`, as many as given.
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.windows(2) {
        if pair[0] == "--connect" {
            reach::probe(&pair[1], &|k, v| emit(k, v));
        }
    }
    emit("probe.elapsed_us", t0.elapsed().as_micros());
}
