//! The workload's root file system: the image's read-only erofs (/dev/vda), under an overlay
//! whose upper layer is on the scratch disk (ext4 on /dev/vdb) or a tmpfs, moved onto `/`.
//! With `--read-only` the overlay's upper layer is a tmpfs that only receives mount points
//! and missing /etc files, and the root is remounted read-only before the workload starts.
//!
//! The initramfs is the kernel's rootfs, which `pivot_root` refuses, so the new root is moved
//! over it and entered with chroot, as `switch_root` does.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;

use brig_protocol::RootfsSpec;

use crate::sys::{check, cstr, mount};

const LOWER: &str = "/run/brig/lower";
const SCRATCH: &str = "/run/brig/scratch";
const NEWROOT: &str = "/run/brig/root";

fn err(what: &str, e: io::Error) -> String {
    format!("{what}: {e}")
}

/// The image disk's read-ahead window, in 512-byte sectors (1 MiB). With the kernel's
/// default (128 KiB), the workload's first page faults in its programs and libraries each
/// read 128 KiB around the fault: one virtio-blk request, and so one exit to the VMM, each.
/// The image is read-only and stored uncompressed, so a wider window reads what a start
/// touches in fewer, larger requests (one request holds up to 1280 KiB: the queue's
/// `max_sectors_kb`).
const IMAGE_READ_AHEAD_SECTORS: libc::c_ulong = 2048;

/// `BLKRASET` (`_IO(0x12, 98)`, include/uapi/linux/fs.h).
const BLKRASET: libc::c_ulong = 0x1262;

/// Sets [`IMAGE_READ_AHEAD_SECTORS`] on `device` (`/dev/vda`) before its file system is
/// mounted. The ioctl, not `/sys/block/*/queue/read_ahead_kb`: a write there freezes the
/// queue, which waits for an RCU grace period (~10 ms a run in the nested test VM). Only
/// speed depends on it: a failure is ignored.
fn widen_read_ahead(device: &str) {
    let Ok(disk) = fs::File::open(device) else {
        return;
    };
    // SAFETY: BLKRASET takes its argument by value; the descriptor is open for the call.
    unsafe { libc::ioctl(disk.as_raw_fd(), BLKRASET, IMAGE_READ_AHEAD_SECTORS) };
}

/// Mounts the image and the overlay at [`NEWROOT`] and switches into it.
/// `mark` is called with the name of each step as it ends (for `brig run --timings`).
pub fn enter(spec: &RootfsSpec, hostname: &str, mark: &mut dyn FnMut(&str)) -> Result<(), String> {
    for dir in [LOWER, SCRATCH, NEWROOT] {
        fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    }
    let fstype = if spec.fstype.is_empty() {
        "erofs"
    } else {
        spec.fstype.as_str()
    };
    widen_read_ahead(&spec.device);
    mount(&spec.device, LOWER, fstype, libc::MS_RDONLY, "").map_err(|e| {
        err(
            &format!("mounting the image ({} as {fstype})", spec.device),
            e,
        )
    })?;
    mark("image mounted");

    // The upper layer: the scratch disk, or a tmpfs (with --read-only it only holds mount
    // points and the /etc files written below, and the root is remounted read-only at the end).
    if spec.scratch.is_empty() || spec.read_only {
        mount("scratch", SCRATCH, "tmpfs", 0, "mode=0755").map_err(|e| err("scratch tmpfs", e))?;
    } else {
        // noinit_itable: the host formats the disk lazily; do not zero inode tables now.
        mount(
            &spec.scratch,
            SCRATCH,
            "ext4",
            libc::MS_NOATIME,
            "noinit_itable",
        )
        .map_err(|e| err(&format!("mounting the scratch disk {}", spec.scratch), e))?;
    }
    mark("scratch mounted");
    let (upper, work) = (format!("{SCRATCH}/upper"), format!("{SCRATCH}/work"));
    for d in [&upper, &work] {
        fs::create_dir_all(d).map_err(|e| err(d, e))?;
    }
    // xino=on: the image (erofs) and the scratch disk (ext4) are two file systems, so without
    // it a file's st_ino (from the layer it lives in) differs from the d_ino readdir reports,
    // and inode numbers of the two layers can collide; os.scandir, find and du rely on them.
    // ext4's 32-bit inode numbers leave overlayfs the high bits to tell the layers apart, so
    // every file has one inode number and st_dev (as on docker's overlay2, whose layers share
    // one file system).
    let opts = format!("lowerdir={LOWER},upperdir={upper},workdir={work},xino=on");
    mount("overlay", NEWROOT, "overlay", 0, &opts).map_err(|e| err("mounting the overlay", e))?;
    mark("overlay mounted");
    write_missing_etc(NEWROOT, hostname);
    // Mount points the image may lack.
    for d in ["proc", "sys", "dev", "tmp"] {
        let path = format!("{NEWROOT}/{d}");
        if fs::symlink_metadata(&path).is_err() {
            fs::create_dir(&path).map_err(|e| err(&path, e))?;
            if d == "tmp" {
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o1777));
            }
        }
    }
    crate::mount::kernel_filesystems(NEWROOT).map_err(|e| e.to_string())?;
    mark("kernel fs mounted");
    if !spec.mounts.is_empty() {
        crate::volumes::mount_all(NEWROOT, &spec.mounts)?;
        mark("volumes mounted");
    }
    write_files(NEWROOT, &spec.files)?;
    if spec.read_only {
        // A read-only root still gets a writable /tmp, as most programs need one.
        mount(
            "tmpfs",
            &format!("{NEWROOT}/tmp"),
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        )
        .map_err(|e| err("tmpfs on /tmp", e))?;
        mount("", NEWROOT, "", libc::MS_REMOUNT | libc::MS_RDONLY, "")
            .map_err(|e| err("making the root read-only", e))?;
    }
    switch_root(NEWROOT)
}

/// Writes the caller's small files into the root (before a read-only root is remounted
/// read-only). A path must be absolute and plain (no `..`); what is at it that is not a
/// regular file (an image's symlink to elsewhere) is replaced, not followed.
fn write_files(root: &str, files: &[brig_protocol::FileSpec]) -> Result<(), String> {
    for f in files {
        let plain = f.path.starts_with('/')
            && f.path.split('/').all(|p| p != ".." && p != ".")
            && !f.path.contains('\0');
        if !plain {
            return Err(format!("file {:?}: not an absolute plain path", f.path));
        }
        write_replacing(&format!("{root}{}", f.path), &f.content)
            .map_err(|e| format!("writing {}: {e}", f.path))?;
    }
    Ok(())
}

/// Writes `content` to the file at `path`, making its directory; what is there that is not
/// a regular file (an image's symlink to elsewhere) is replaced, not followed.
pub fn write_replacing(path: &str, content: &str) -> io::Result<()> {
    if let Some(parent) = std::path::Path::new(path).parent() {
        fs::create_dir_all(parent)?;
    }
    if fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
        let _ = fs::remove_file(path);
    }
    fs::write(path, content)
}

/// Moves `new_root` onto `/` and makes it the root of this process (and its children).
fn switch_root(new_root: &str) -> Result<(), String> {
    std::env::set_current_dir(new_root).map_err(|e| err("chdir to the new root", e))?;
    mount(".", "/", "", libc::MS_MOVE, "").map_err(|e| err("moving the new root onto /", e))?;
    let dot = cstr(".").map_err(|e| e.to_string())?;
    // SAFETY: dot is a valid NUL-terminated string.
    check(unsafe { libc::chroot(dot.as_ptr()) }).map_err(|e| err("chroot", e))?;
    std::env::set_current_dir("/").map_err(|e| err("chdir /", e))?;
    Ok(())
}

/// Writes /etc/hostname, /etc/hosts and /etc/resolv.conf when the image has none.
fn write_missing_etc(root: &str, hostname: &str) {
    let etc = format!("{root}/etc");
    let _ = fs::create_dir_all(&etc);
    let name = if hostname.is_empty() {
        "localhost"
    } else {
        hostname
    };
    let files = [
        ("hostname", format!("{name}\n")),
        (
            "hosts",
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{name}\n"
            ),
        ),
        // No network yet: a resolver config that fails fast rather than a missing file.
        ("resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n".to_string()),
    ];
    for (file, content) in files {
        let path = format!("{etc}/{file}");
        if fs::symlink_metadata(&path).is_err() {
            let _ = fs::write(&path, content);
        }
    }
}
