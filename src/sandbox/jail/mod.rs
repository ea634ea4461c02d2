//! The jail a sandbox's VMM runs in (detached or in the foreground), as Firecracker's jailer builds one, entered by
//! the VMM process itself once its VM is built and before any of its threads starts (Linux
//! applies namespaces and ids per thread):
//!
//! - a new PID namespace, of which it is the first process (forked into it by its keeper,
//!   [`fork_vmm`]);
//! - new mount, IPC, UTS and network namespaces (the VMM needs no network of its own: the
//!   TAP is an open descriptor, its sockets are Unix sockets reached by path);
//! - its root an empty tmpfs (`nodev,nosuid,noexec`, then read-only) at `<runtime dir>/root`,
//!   mounted only in its own mount namespace, holding nothing but the runtime directory
//!   bind-mounted read-only at its own path (where the guest's vsock connections arrive);
//! - an unprivileged uid and gid (`--jail-uid`/`--jail-gid`; by default one of a range of
//!   ids kept for brig's jails, picked from the sandbox id), no supplementary groups, so no
//!   capabilities, and `no_new_privs`;
//! - a cgroup of its own with a memory limit (guest RAM and [`OVERHEAD_MIB`]) where cgroup
//!   v2 is writable.
//!
//! Every descriptor it keeps was opened before (KVM, memory, disks, TAP, sockets, the console
//! and log pipes); seccomp comes after, thread by thread.
//! Without root, the same jail is built from a user namespace ([`Jail::user_ns`]): the VMM
//! stays the calling user, mapped to itself, in new user, PID, mount, IPC, UTS and network
//! namespaces, with the same root; no cgroup of its own (unless delegated).
//! `BRIG_JAIL=off` turns the jail off (debugging only).

pub mod cgroup;
mod enter;
mod spawn;

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use enter::enter;
pub use spawn::{fork_vmm, reap, Reaped};

/// The first of the ids kept for brig's jails: far above the ranges of login users and of
/// rootless containers' subordinate ids.
pub const ID_BASE: u32 = 0x6272_0000;
/// How many ids the range holds.
pub const ID_COUNT: u32 = 1 << 16;
/// What the VMM may use besides guest RAM before its cgroup reclaims and then kills it.
pub const OVERHEAD_MIB: u64 = 256;

/// Whether sandboxes' VMMs are jailed: unless `BRIG_JAIL=off`, as root, and without root
/// where this kernel lets users make user namespaces.
pub fn enabled() -> bool {
    std::env::var("BRIG_JAIL").map_or(true, |v| v != "off")
        && (rustix::process::geteuid().is_root() || user_namespaces_allowed())
}

/// Whether an unprivileged process may make a user namespace here: Debian's
/// `kernel.unprivileged_userns_clone`, `user.max_user_namespaces`, and Ubuntu's AppArmor
/// restriction.
pub fn user_namespaces_allowed() -> bool {
    let sysctl = |name: &str| -> Option<u64> {
        std::fs::read_to_string(Path::new("/proc/sys").join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    sysctl("kernel/unprivileged_userns_clone") != Some(0)
        && sysctl("user/max_user_namespaces").is_some_and(|n| n > 0)
        && sysctl("kernel/apparmor_restrict_unprivileged_userns") != Some(1)
}

/// The uid (and gid) a sandbox's VMM runs as by default: one of the range, from the id, so
/// that two sandboxes rarely share one.
pub fn default_id(sandbox_id: &str) -> u32 {
    let n = sandbox_id
        .get(..4)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    ID_BASE + n % ID_COUNT
}

/// The jail one VMM enters.
#[derive(Debug)]
pub struct Jail {
    pub uid: u32,
    pub gid: u32,
    /// The empty directory its root is mounted on.
    pub root: PathBuf,
    /// The sandbox's runtime directory, seen at the same path inside.
    pub runtime: PathBuf,
    /// Built from a user namespace (brig without root): `uid` and `gid` are the caller's
    /// own, mapped to themselves.
    pub user_ns: bool,
}

/// What the jail of a VMM is, as [`describe`] reads it from /proc (for `brig inspect`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JailView {
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// The namespaces it does not share with the reader (`mnt`, `ipc`, ...).
    pub namespaces: Vec<String>,
    /// Its cgroup (v2 path), when it is in one of brig's.
    pub cgroup: Option<String>,
    /// That cgroup's `memory.max`.
    pub memory_max: Option<String>,
}

/// Closes every descriptor of this process but `keep` (and stdio): what a VMM process
/// inherited from its keeper (port proxy listeners, the runtime lock, file servers' pipes).
/// Called in the forked VMM process only.
pub fn close_inherited(keep: &[RawFd]) -> io::Result<()> {
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: these descriptors belong to objects of the keeper that fork copied
            // into this process, which it never uses nor drops (forgotten), or to the
            // directory listing above, already closed: EBADF, ignored (libc's close, as
            // rustix's asserts success).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// The root a sandbox's jail is mounted on, inside its runtime directory (so it goes with it).
pub fn root_of(runtime: &Path) -> PathBuf {
    runtime.join("root")
}

/// Prepares the jail of the VMM of sandbox `sandbox_id`, whose runtime directory is
/// `runtime`, on the host side before the VMM starts: whose the VMM is (as root `uid`:`gid`
/// as asked, else [`default_id`] of the sandbox; without root the caller's own, in a user
/// namespace, where asking for ids is refused), its root directory, and a runtime directory
/// the jailed VMM may enter (its group, search only) but not change.
pub fn prepare(
    runtime: &Path,
    sandbox_id: &str,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<Jail> {
    use rustix::fs::{chmod, chown, Gid, Mode};
    let user_ns = !rustix::process::geteuid().is_root();
    let (uid, gid) = if user_ns {
        if uid.is_some() || gid.is_some() {
            return Err(io::Error::other(
                "--jail-uid and --jail-gid need brig to run as root (without root, the VMM is \
                 jailed in a user namespace as the calling user)",
            ));
        }
        (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        )
    } else {
        let uid = uid.unwrap_or_else(|| default_id(sandbox_id));
        (uid, gid.unwrap_or(uid))
    };
    let root = root_of(runtime);
    match std::fs::create_dir(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    chown(runtime, None, Some(Gid::from_raw(gid)))?;
    chmod(runtime, Mode::from_raw_mode(0o710))?;
    Ok(Jail {
        uid,
        gid,
        root,
        runtime: runtime.to_path_buf(),
        user_ns,
    })
}

fn ns_id(pid: &str, ns: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()
}

/// The jail process `pid` is in, if it is in one (its root is not the reader's); `runtime`
/// is its sandbox's runtime directory.
pub fn describe(pid: u32, runtime: &Path) -> Option<JailView> {
    use std::os::unix::fs::MetadataExt;
    let p = pid.to_string();
    let root = std::fs::metadata(format!("/proc/{p}/root")).ok()?;
    let ours = std::fs::metadata("/").ok()?;
    if root.dev() == ours.dev() && root.ino() == ours.ino() {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
    let first = |name: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let namespaces = ["mnt", "ipc", "uts", "net", "pid", "user", "cgroup"]
        .into_iter()
        .filter(|ns| ns_id(&p, ns).is_some_and(|id| Some(id) != ns_id("self", ns)))
        .map(str::to_string)
        .collect();
    let cgroup = cgroup::of_process(pid).filter(|c| cgroup::is_brigs(c));
    let memory_max = cgroup.as_deref().and_then(cgroup::memory_max);
    Some(JailView {
        root: root_of(runtime),
        uid: first("Uid")?,
        gid: first("Gid")?,
        namespaces,
        cgroup,
        memory_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_are_in_the_range_and_follow_the_id() {
        let a = default_id("0a1b2c3d");
        assert_eq!(a, ID_BASE + 0x0a1b);
        assert!((ID_BASE..ID_BASE + ID_COUNT).contains(&default_id("ffffffff")));
        assert_eq!(default_id("zz"), ID_BASE);
    }

    #[test]
    fn this_process_is_in_no_jail() {
        assert!(describe(std::process::id(), Path::new("/nowhere")).is_none());
    }
}
