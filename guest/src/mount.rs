//! The file systems every workload expects: /proc, /sys, /dev (+ pts, shm), cgroup2, /tmp.

use std::fs;
use std::io;

use crate::sys::mount;

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

fn mount_at(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    fs::create_dir_all(target)?;
    mount(source, target, fstype, flags, data)
        .map_err(|e| io::Error::new(e.kind(), format!("mounting {fstype} on {target}: {e}")))
}

/// Mounts the kernel file systems under `root` ("" for the current root).
pub fn kernel_filesystems(root: &str) -> io::Result<()> {
    let p = |s: &str| format!("{root}{s}");
    mount_at("proc", &p("/proc"), "proc", NOSUID | NODEV | NOEXEC, "")?;
    mount_at("sysfs", &p("/sys"), "sysfs", NOSUID | NODEV | NOEXEC, "")?;
    mount_at("devtmpfs", &p("/dev"), "devtmpfs", NOSUID, "mode=0755")?;
    mount_at(
        "devpts",
        &p("/dev/pts"),
        "devpts",
        NOSUID | NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    mount_at("shm", &p("/dev/shm"), "tmpfs", NOSUID | NODEV, "mode=1777")?;
    // favordynmods: each workload joins its cgroup (a cgroup.procs write in the child, see
    // exec.rs), and without it every such move waits for an RCU grace period (~10 ms each in
    // the nested VM); the option makes forks and exits a little dearer instead.
    mount_at(
        "cgroup2",
        &p("/sys/fs/cgroup"),
        "cgroup2",
        NOSUID | NODEV | NOEXEC,
        "favordynmods",
    )?;
    // /dev/ptmx must reach this devpts instance, and the usual /dev/fd links exist.
    let _ = fs::remove_file(p("/dev/ptmx"));
    let _ = std::os::unix::fs::symlink("pts/ptmx", p("/dev/ptmx"));
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, p(&format!("/dev/{name}")));
    }
    Ok(())
}
