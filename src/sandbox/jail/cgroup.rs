//! A jailed VMM's cgroup (v2): `/sys/fs/cgroup/brig/<short id>`, with `memory.max` set to
//! guest RAM plus the VMM's overhead. Made only where cgroup v2 is mounted, writable and has
//! the memory controller; otherwise the VMM runs in brig's own cgroup.

use std::io;
use std::path::{Path, PathBuf};

/// Where cgroup v2 is mounted.
const MOUNT: &str = "/sys/fs/cgroup";
/// The cgroup under which brig's VMMs' cgroups live.
const PARENT: &str = "brig";

/// A VMM's cgroup; [`Cgroup::remove`] removes it once its process is gone.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    /// This process was started in it ([`super::fork_vmm`]'s `CLONE_INTO_CGROUP`): joining
    /// it is then done.
    started_in: bool,
}

/// Whether `path` (as /proc/PID/cgroup writes it) is one of brig's VMM cgroups.
pub fn is_brigs(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(PARENT))
        .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
}

/// The `memory.max` of the cgroup at `path` (as /proc/PID/cgroup writes it).
pub fn memory_max(path: &str) -> Option<String> {
    std::fs::read_to_string(dir_of(path)?.join("memory.max"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The cgroup v2 path of process `pid` (as /proc/PID/cgroup writes it: `/brig/<id>`).
pub fn of_process(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// The directory of the cgroup at `path` (as /proc/PID/cgroup writes it), on the v2 mount.
pub fn dir_of(path: &str) -> Option<PathBuf> {
    let rel = path.strip_prefix('/')?;
    Some(Path::new(MOUNT).join(rel))
}

/// The cgroup of sandbox `short_id`'s VMM.
pub fn path_of(short_id: &str) -> PathBuf {
    Path::new(MOUNT).join(PARENT).join(short_id)
}

fn enable_memory(dir: &Path) -> io::Result<()> {
    let control = std::fs::read_to_string(dir.join("cgroup.subtree_control"))?;
    if control.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    std::fs::write(dir.join("cgroup.subtree_control"), "+memory")
}

/// Makes the cgroup of sandbox `short_id`'s VMM with a memory limit of `limit_bytes`;
/// `Ok(None)` where cgroup v2 with the memory controller is not there to use.
pub fn create(short_id: &str, limit_bytes: u64) -> io::Result<Option<Cgroup>> {
    let mount = Path::new(MOUNT);
    let controllers = match std::fs::read_to_string(mount.join("cgroup.controllers")) {
        Ok(c) => c,
        Err(_) => return Ok(None),
    };
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Ok(None);
    }
    let parent = mount.join(PARENT);
    if enable_memory(mount).is_err() {
        return Ok(None);
    }
    match std::fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => return Ok(None),
        Err(e) => return Err(e),
    }
    match enable_memory(&parent) {
        // brig without root, where root's brig made the parent.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
        other => other?,
    }
    let path = path_of(short_id);
    match std::fs::create_dir(&path) {
        Ok(()) => {}
        // A cgroup left by a VMM that was killed with its keeper: empty, so reusable.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        // brig without root, where root's brig made the parent.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) => return Err(e),
    }
    let cgroup = Cgroup {
        path,
        started_in: false,
    };
    std::fs::write(cgroup.path.join("memory.max"), limit_bytes.to_string())?;
    // No swap for guest memory either, where swap accounting exists.
    let _ = std::fs::write(cgroup.path.join("memory.swap.max"), "0");
    Ok(Some(cgroup))
}

impl Cgroup {
    /// Moves the calling process into the cgroup, unless it was started there.
    pub fn join(&self) -> io::Result<()> {
        if self.started_in {
            return Ok(());
        }
        std::fs::write(self.path.join("cgroup.procs"), "0")
    }

    /// Whether the calling process was started in the cgroup (no move, no grace period).
    pub fn started_in(&self) -> bool {
        self.started_in
    }

    /// The cgroup's directory, opened for `clone3`'s `CLONE_INTO_CGROUP`.
    pub(super) fn open_dir(&self) -> io::Result<std::os::fd::OwnedFd> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        Ok(rustix::fs::open(&self.path, flags, Mode::empty())?)
    }

    /// Marks the calling process as started in the cgroup (in the child of the clone).
    pub(super) fn mark_started_in(&mut self) {
        self.started_in = true;
    }

    /// Removes the cgroup (its processes gone).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Whether the cgroup2 hierarchy is mounted with `favordynmods`: without it, moving a process
/// between cgroups (a `cgroup.procs` write) waits for an RCU grace period (8-24 ms measured on
/// the development machine; 0.4 ms with it), at the cost of slightly slower forks and exits.
/// A process started in its cgroup (`clone3`'s `CLONE_INTO_CGROUP`) does not move, and does
/// not wait either way.
pub fn favors_dynmods() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| favordynmods_in(&m))
}

/// Whether `mounts` (as /proc/self/mounts lists them) has cgroup2 at [`MOUNT`] with
/// `favordynmods`.
fn favordynmods_in(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3
            && f[1] == MOUNT
            && f[2] == "cgroup2"
            && f[3].split(',').any(|o| o == "favordynmods")
    })
}

/// Removes sandbox `short_id`'s VMM cgroup if it is left (its keeper was killed).
pub fn remove_stale(short_id: &str) {
    let _ = std::fs::remove_dir(path_of(short_id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brigs_cgroups_are_told_apart() {
        assert!(is_brigs("/brig/0123456789ab"));
        assert!(!is_brigs("/brig"));
        assert!(!is_brigs("/brig/"));
        assert!(!is_brigs("/user.slice/brig/x"));
        assert!(!is_brigs("/brigs/x"));
        assert_eq!(path_of("abc"), Path::new("/sys/fs/cgroup/brig/abc"));
    }

    #[test]
    fn favordynmods_is_read_from_the_cgroup2_mount_only() {
        let plain =
            "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,relatime 0 0\n";
        let favoured = "cgroup2 /sys/fs/cgroup cgroup2 rw,relatime,favordynmods 0 0\n";
        let elsewhere = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,favordynmods 0 0\n";
        assert!(!favordynmods_in(plain));
        assert!(favordynmods_in(favoured));
        assert!(!favordynmods_in(elsewhere));
        assert!(!favordynmods_in(""));
    }
}
