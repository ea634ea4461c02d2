//! The workload's volumes and tmpfs mounts (`-v`, `--mount`, `--tmpfs`), mounted into the new
//! root before the workload starts.
//!
//! A share (virtio-fs, by its tag) is first mounted at a staging point in the initramfs; a new
//! named volume then receives the image's content at the target (docker's copy-up), and the
//! share is moved onto the target, or, for a single-file share, its one file is bound onto
//! the target and the staging mount dropped. Every share is `nosuid,nodev` in the guest too
//! (the host's file server enforces the same and `ro` on its side).

use std::fs;
use std::io;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::Path;

use brig_protocol::MountSpec;

use crate::sys::{check, cstr, mount};

const STAGING: &str = "/run/brig/shares";

/// A share's read-ahead window, in KiB: FUSE's largest request (1 MiB: virtiofsd's and the
/// kernel's `max_pages`). With the kernel's default of 128 KiB, a large file is read in
/// 128 KiB requests, each a round trip through the VMM's relay and the file server.
const SHARE_READ_AHEAD_KB: u32 = 1024;

fn err(what: &str, e: io::Error) -> String {
    format!("{what}: {e}")
}

/// Mounts `mounts` (in order) under `root`.
pub fn mount_all(root: &str, mounts: &[MountSpec]) -> Result<(), String> {
    for (i, m) in mounts.iter().enumerate() {
        let target = format!("{root}{}", m.target);
        let what = format!("volume at {}", m.target);
        match m.fstype.as_str() {
            "tmpfs" => {
                fs::create_dir_all(&target).map_err(|e| err(&what, e))?;
                let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
                if m.read_only {
                    flags |= libc::MS_RDONLY;
                }
                mount("tmpfs", &target, "tmpfs", flags, &m.options).map_err(|e| err(&what, e))?;
            }
            "virtiofs" => share(i, m, &target).map_err(|e| err(&what, e))?,
            other => return Err(format!("{what}: unknown file system type {other:?}")),
        }
    }
    Ok(())
}

fn share(index: usize, m: &MountSpec, target: &str) -> io::Result<()> {
    let staging = format!("{STAGING}/{index}");
    fs::create_dir_all(&staging)?;
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if m.read_only {
        flags |= libc::MS_RDONLY;
    }
    mount(&m.source, &staging, "virtiofs", flags, "")?;
    widen_read_ahead(&staging);
    if m.file.is_empty() {
        fs::create_dir_all(target)?;
        if m.copy_up && !m.read_only && is_empty_dir(&staging)? {
            copy_tree(Path::new(target), Path::new(&staging))?;
        }
        mount(&staging, target, "", libc::MS_MOVE, "")?;
    } else {
        if let Some(parent) = Path::new(target).parent() {
            fs::create_dir_all(parent)?;
        }
        if fs::symlink_metadata(target).is_err() {
            fs::File::create(target)?;
        }
        let file = format!("{staging}/{}", m.file);
        mount(&file, target, "", libc::MS_BIND, "")?;
        if m.read_only {
            // A bind mount takes the read-only flag only on a remount.
            mount(
                "",
                target,
                "",
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                "",
            )?;
        }
        umount_detach(&staging)?;
    }
    Ok(())
}

/// Sets [`SHARE_READ_AHEAD_KB`] on the share mounted at `mountpoint`: its backing device info
/// is named by the mount's (anonymous) device number, and files opened later take its window.
/// Only speed depends on it: a failure is ignored.
fn widen_read_ahead(mountpoint: &str) {
    let Ok(meta) = fs::metadata(mountpoint) else {
        return;
    };
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    let _ = fs::write(knob, SHARE_READ_AHEAD_KB.to_string());
}

fn umount_detach(path: &str) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is a valid NUL-terminated string.
    check(unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) }).map(|_| ())
}

fn is_empty_dir(path: &str) -> io::Result<bool> {
    Ok(fs::read_dir(path)?.next().is_none())
}

/// Copies the tree under `from` into the directory `to`: directories, regular files and
/// symbolic links with their modes, owners and modification times (what docker copies into a
/// new volume); other file types are skipped.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let Ok(entries) = fs::read_dir(from) else {
        // Nothing at the target in the image: nothing to copy.
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else if ft.is_file() {
            fs::copy(&src, &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else {
            continue;
        }
        // Owner first: chown clears setuid bits, which the mode then restores.
        lchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
        if !ft.is_symlink() {
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
        set_mtime(&dst, meta.mtime(), meta.mtime_nsec())?;
    }
    let meta = fs::metadata(from)?;
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    Ok(())
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) -> io::Result<()> {
    let p = cstr(&path.to_string_lossy())?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: p is a valid NUL-terminated path and times points to two timespecs.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(|_| ())
}
