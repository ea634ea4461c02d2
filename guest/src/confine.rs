//! The workload's confinement, as runc applies it (`libcontainer/standard_init_linux.go`):
//! no_new_privs, the capability bounding set, the uid/gid change keeping capabilities,
//! capset, and the seccomp filter last before execve (or first, while the agent still has
//! CAP_SYS_ADMIN, when no_new_privs is off: loading a filter needs one or the other).
//! Plus runc's masked and read-only paths, set up once for the whole guest.
//!
//! The host sends everything decided and compiled ([`SecuritySpec`]); nothing here parses a
//! profile.

use std::io;

use brig_protocol::SecuritySpec;

use crate::sys::{check, mount};

/// `_LINUX_CAPABILITY_VERSION_3` (include/uapi/linux/capability.h).
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// A confinement prepared before fork, so that the child only makes system calls.
pub struct Confinement {
    /// Bounding set, and permitted/effective for uid 0.
    caps: u64,
    no_new_privs: bool,
    filter: Vec<libc::sock_filter>,
    /// The highest capability the kernel knows.
    last_cap: u32,
}

impl Confinement {
    pub fn new(spec: &SecuritySpec) -> Self {
        let filter = spec
            .seccomp
            .iter()
            .map(|&i| libc::sock_filter {
                code: i as u16,
                jt: (i >> 16) as u8,
                jf: (i >> 24) as u8,
                k: (i >> 32) as u32,
            })
            .collect();
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        Self {
            caps: spec.capabilities,
            no_new_privs: spec.no_new_privs,
            filter,
            last_cap,
        }
    }

    fn load_filter(&self) -> io::Result<()> {
        if self.filter.is_empty() {
            return Ok(());
        }
        let prog = libc::sock_fprog {
            len: self.filter.len() as u16,
            filter: self.filter.as_ptr().cast_mut(),
        };
        // SAFETY: prog points at `len` valid instructions that outlive the call; the kernel
        // copies the program.
        check(unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            )
        })
        .map(|_| ())
    }

    /// In the forked child, before the uid/gid change: no_new_privs, the filter when
    /// no_new_privs is off, the bounding set, and keep-caps across setuid.
    pub fn before_ids(&self) -> io::Result<()> {
        if self.no_new_privs {
            // SAFETY: prctl with integer arguments.
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        } else {
            self.load_filter()?;
        }
        for cap in 0..=self.last_cap.min(63) {
            if self.caps & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments.
                check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) })?;
            }
        }
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) }).map(|_| ())
    }

    /// In the forked child, after the uid/gid change: the capability sets (none for a
    /// non-root uid, as docker gives), then the filter when no_new_privs is on.
    pub fn after_ids(&self, uid: libc::uid_t) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) })?;
        let caps = if uid == 0 { self.caps } else { 0 };
        let word = |shift: u32| CapData {
            effective: (caps >> shift) as u32,
            permitted: (caps >> shift) as u32,
            inheritable: 0,
        };
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [word(0), word(32)];
        // SAFETY: header and data are the v3 structures capset reads (two data words).
        check(unsafe {
            libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            ) as i32
        })?;
        if self.no_new_privs {
            self.load_filter()?;
        }
        Ok(())
    }
}

/// `CAP_SYS_ADMIN`'s bit.
const CAP_SYS_ADMIN: u32 = 21;

/// Guest-kernel hardening without a kernel rebuild, before the workload starts: no BPF for
/// unprivileged users (`1`: not even root can turn it back on), and no user namespaces
/// unless asked for: the workload has CAP_SYS_ADMIN (`--privileged`, `--cap-add
/// SYS_ADMIN`; docker's seccomp profile allows `unshare` and namespace `clone`s with it) or
/// no seccomp filter (`--security-opt seccomp=unconfined`, under which docker allows them).
pub fn harden_kernel(spec: &SecuritySpec) -> io::Result<()> {
    write_sysctl("/proc/sys/kernel/unprivileged_bpf_disabled", "1")?;
    if spec.capabilities & (1 << CAP_SYS_ADMIN) == 0 && !spec.seccomp.is_empty() {
        write_sysctl("/proc/sys/user/max_user_namespaces", "0")?;
    }
    Ok(())
}

/// Writes a sysctl unless it already has `value` (once `unprivileged_bpf_disabled` is 1,
/// the kernel refuses any write to it, even of 1).
fn write_sysctl(path: &str, value: &str) -> io::Result<()> {
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == value => return Ok(()),
        // A kernel without the feature (no BPF syscall) has nothing to harden.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        _ => {}
    }
    std::fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// Hides `masked` (an empty read-only tmpfs over a directory, /dev/null over a file) and
/// binds `readonly` read-only over themselves, as runc does; missing paths are skipped.
pub fn protect_paths(spec: &SecuritySpec) -> io::Result<()> {
    for path in &spec.masked_paths {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => mount("tmpfs", path, "tmpfs", libc::MS_RDONLY, "size=0")?,
            Ok(_) => mount("/dev/null", path, "", libc::MS_BIND, "")?,
            Err(_) => {}
        }
    }
    for path in &spec.readonly_paths {
        if std::fs::symlink_metadata(path).is_err() {
            continue;
        }
        mount(path, path, "", libc::MS_BIND | libc::MS_REC, "")?;
        mount(
            path,
            path,
            "",
            libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
            "",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_unpack_as_the_host_packs_them() {
        // code | jt << 16 | jf << 24 | k << 32: `jeq #0xc000003e, 1, 2`.
        let packed = 0x15 | 1 << 16 | 2 << 24 | 0xc000_003e_u64 << 32;
        let c = Confinement::new(&SecuritySpec {
            seccomp: vec![packed, 0x7fff_0000_u64 << 32 | 0x06],
            ..Default::default()
        });
        let i = c.filter[0];
        assert_eq!((i.code, i.jt, i.jf, i.k), (0x15, 1, 2, 0xc000_003e));
        let r = c.filter[1];
        assert_eq!((r.code, r.k), (0x06, 0x7fff_0000));
        assert!(c.last_cap >= 40, "the kernel's last capability");
    }
}
