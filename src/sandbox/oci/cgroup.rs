//! `linux.cgroupsPath`: the container's VMM process goes into that cgroup, as runc puts the
//! container's init there, so that what callers read from it (containerd's `ctr task
//! metrics`, `podman stats`) and the host's memory accounting and OOM handling cover the
//! whole VM. cgroup v2 with a cgroupfs path ("/default/ID", what containerd's runc shim and
//! podman with `--cgroup-manager cgroupfs` pass); a systemd path ("slice:prefix:name") and
//! cgroup v1 are left alone (the VMM stays where its caller put it).

use std::io;
use std::path::{Component, Path, PathBuf};

const MOUNT: &str = "/sys/fs/cgroup";
/// The controllers whose statistics and limits callers read.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// The cgroup directory `cgroups_path` names, when brig handles that form.
fn resolve(cgroups_path: &str) -> Option<PathBuf> {
    if cgroups_path.is_empty() || cgroups_path.contains(':') {
        return None;
    }
    let rel = Path::new(cgroups_path.trim_start_matches('/'));
    // Only plain names below the mount: no "..", no way out of the hierarchy.
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(Path::new(MOUNT).join(rel))
}

/// Makes `cgroups_path` (and its parents, with the controllers enabled down to it) and
/// moves `pid` into it; returns the cgroup's directory, or `None` where brig leaves the
/// cgroup alone (see the module's comment) or cannot write the hierarchy (read-only,
/// rootless).
pub fn place(cgroups_path: &str, pid: i32) -> io::Result<Option<PathBuf>> {
    let Some(dir) = resolve(cgroups_path) else {
        return Ok(None);
    };
    let mount = Path::new(MOUNT);
    let Ok(available) = std::fs::read_to_string(mount.join("cgroup.controllers")) else {
        return Ok(None); // not cgroup v2
    };
    let mut parent = mount.to_path_buf();
    let rel = dir.strip_prefix(mount).unwrap_or(&dir).to_path_buf();
    for part in rel.components() {
        for c in CONTROLLERS {
            if available.split_whitespace().any(|a| a == c) {
                // Best effort, as runc: a controller a parent cannot delegate is not offered.
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), format!("+{c}"));
            }
        }
        parent.push(part);
        match std::fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e)
                if e.kind() == io::ErrorKind::PermissionDenied
                    || e.raw_os_error() == Some(libc::EROFS) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
    }
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
    Ok(Some(dir))
}

/// Removes the container's cgroup (empty once its VMM process is gone; parents stay, as
/// runc leaves them).
pub fn remove(dir: &Path) {
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            // EBUSY while the last process is still being reaped.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths_resolve_below_the_mount_and_nothing_else_does() {
        assert_eq!(
            resolve("/default/c1"),
            Some(PathBuf::from("/sys/fs/cgroup/default/c1"))
        );
        assert_eq!(
            resolve("libpod_parent/libpod-x"),
            Some(PathBuf::from("/sys/fs/cgroup/libpod_parent/libpod-x"))
        );
        for bad in ["", "/", "system.slice:docker:c1", "/a/../../etc", "../x"] {
            assert_eq!(resolve(bad), None, "{bad}");
        }
    }
}
