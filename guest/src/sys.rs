//! Thin, checked wrappers over the system calls pid 1 needs.

use std::ffi::CString;
use std::io;

/// Turns a `-1` return into the current `errno`.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in string"))
}

/// `mount(2)`; `EBUSY` (already mounted) is not an error.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (s, t, f, d) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    let data_ptr = if data.is_empty() {
        std::ptr::null()
    } else {
        d.as_ptr()
    };
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call (or null
    // for data, which mount accepts).
    let ret = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, data_ptr.cast()) };
    match check(ret) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Guest uptime (CLOCK_BOOTTIME) in nanoseconds.
pub fn uptime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes every file system's dirty data and metadata to its disk.
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Flushes file systems and resets the VM (the kernel runs with `reboot=k`: the i8042
/// reset line, which the VMM turns into "VM done"). Never returns.
pub fn reboot() -> ! {
    sync();
    // SAFETY: reboot takes no pointers; it only returns on failure.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    // Should the reboot fail, exiting pid 1 panics the kernel, which also ends the VM
    // (panic=-1).
    std::process::exit(1)
}

/// Sends `sig` to `pid` (or to a process group when `pid` is negative).
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain system call on integers.
    check(unsafe { libc::kill(pid, sig) }).map(|_| ())
}

/// Sets the host name.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe the bytes of `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(|_| ())
}
