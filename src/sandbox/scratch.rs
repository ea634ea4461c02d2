//! The per-VM scratch disk: a sparse ext4 image that holds the overlay's upper layer (the
//! workload's writes), deleted with the VM unless kept.
//!
//! Formatting costs a `mkfs.ext4` run, so it is done once per size into a template under
//! `$BRIG_HOME/cache/`, which each VM gets a sparse copy of (a reflink where the file system
//! offers one, else only the template's data extents are copied: a few hundred KiB).
//! The file system is made without a journal (the layer dies with the VM), without the
//! resize inode (a scratch disk never grows; its reserved group descriptor blocks were 4 MiB
//! of zeros that every run copied: 1024 blocks for a 10 GiB disk, 97% of the template's data)
//! and with lazy inode table initialisation (the guest mounts it with `noinit_itable`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Default size of a scratch disk: as docker's former default base size, sparse.
pub const DEFAULT_SIZE: u64 = 10 << 30;

/// The scratch disk could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// mkfs.ext4 is missing or failed.
    #[error("formatting the scratch disk template with mkfs.ext4 (Debian package e2fsprogs): {0}")]
    Mkfs(String),
    /// Copying or creating the file failed.
    #[error("scratch disk {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> ScratchError + '_ {
    move |source| ScratchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Bumped when [`mkfs_with`]'s options change: a template of an older format is replaced.
const TEMPLATE_FORMAT: u32 = 2;

/// The template for `size` bytes, made if missing (atomically: temp name, then rename); the
/// template an older brig made for that size is removed.
pub fn template(cache_dir: &Path, size: u64) -> Result<PathBuf, ScratchError> {
    let mib = size >> 20;
    let path = cache_dir.join(format!("scratch-{mib}m.v{TEMPLATE_FORMAT}.ext4"));
    if path.exists() {
        return Ok(path);
    }
    fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    let _ = fs::remove_file(cache_dir.join(format!("scratch-{mib}m.ext4")));
    let tmp = cache_dir.join(format!(".scratch-{mib}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    if let Err(e) = mkfs(&tmp, size) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(path)
}

/// Copies `src` to a new file `dst`, keeping holes: a reflink (FICLONE: all extents shared,
/// on btrfs and xfs) where the file system offers one, else the data extents one by one.
pub fn sparse_copy(src: &Path, dst: &Path) -> Result<(), ScratchError> {
    use rustix::fs::{copy_file_range, ioctl_ficlone, seek, SeekFrom};
    let input = File::open(src).map_err(io_err(src))?;
    let len = input.metadata().map_err(io_err(src))?.len();
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(io_err(dst))?;
    if ioctl_ficlone(&output, &input).is_ok() {
        return Ok(());
    }
    output.set_len(len).map_err(io_err(dst))?;
    let mut pos = 0u64;
    while pos < len {
        let Ok(data) = seek(&input, SeekFrom::Data(pos)) else {
            break; // ENXIO: no data past pos
        };
        let end = seek(&input, SeekFrom::Hole(data)).unwrap_or(len);
        let (mut off_in, mut off_out) = (data, data);
        while off_in < end {
            let want = (end - off_in) as usize;
            let n = copy_file_range(&input, Some(&mut off_in), &output, Some(&mut off_out), want)
                .map_err(|e| io_err(dst)(e.into()))?;
            if n == 0 {
                break;
            }
        }
        pos = end;
    }
    Ok(())
}

/// Runs mkfs.ext4 on a new sparse file `path` of `size` bytes.
fn mkfs(path: &Path, size: u64) -> Result<(), ScratchError> {
    mkfs_with(path, size, None)
}

/// Runs mkfs.ext4 on a new sparse file `path` of `size` bytes, with the contents of `seed`
/// (`mkfs.ext4 -d`) when given.
fn mkfs_with(path: &Path, size: u64, seed: Option<&Path>) -> Result<(), ScratchError> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(size).map_err(io_err(path))?;
    drop(f);
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "brig-scratch",
            "-m",
            "0",
            "-O",
            "^has_journal,^resize_inode",
        ])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .args(
            seed.map(|tree| [Path::new("-d"), tree])
                .into_iter()
                .flatten(),
        )
        .arg(path)
        .output()
        .map_err(|e| ScratchError::Mkfs(e.to_string()))?;
    if !out.status.success() {
        return Err(ScratchError::Mkfs(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// A new scratch disk at `dst` (replacing any) of `size` bytes whose file system already
/// holds `tree` (`mkfs.ext4 -d`): its `upper/` becomes files of the workload's root, as if
/// written by an earlier run. `brig compare` brings its probe in this way.
pub fn create_seeded(dst: &Path, size: u64, tree: &Path) -> Result<(), ScratchError> {
    let _ = fs::remove_file(dst);
    mkfs_with(dst, size, Some(tree))
}

/// True when the file system reports `path`'s holes (SEEK_DATA finds less data than the
/// file's length), so that a sparse copy copies only what is allocated.
fn reports_holes(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return false;
    };
    use rustix::fs::{seek, SeekFrom};
    let Ok(data) = seek(&f, SeekFrom::Data(0)) else {
        return false;
    };
    seek(&f, SeekFrom::Hole(data)).is_ok_and(|hole| hole < len)
}

/// A fresh scratch disk at `dst` of `size` bytes: a copy of the template where holes can be
/// kept, a new mkfs.ext4 run where they cannot (e.g. on 9p).
pub fn create(cache_dir: &Path, dst: &Path, size: u64) -> Result<(), ScratchError> {
    let template = template(cache_dir, size)?;
    if reports_holes(&template) {
        sparse_copy(&template, dst)
    } else {
        mkfs(dst, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(b"first").unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        drop(f);
        let dst = dir.path().join("dst");
        sparse_copy(&src, &dst).unwrap();
        let meta = fs::metadata(&dst).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 < 4 << 20, "the copy stays sparse");
        let mut a = Vec::new();
        let mut b = Vec::new();
        File::open(&src).unwrap().read_to_end(&mut a).unwrap();
        File::open(&dst).unwrap().read_to_end(&mut b).unwrap();
        assert!(a == b, "same bytes");
        assert!(sparse_copy(&src, &dst).is_err(), "never overwrites");
    }

    #[test]
    fn template_is_an_ext4_image_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = template(dir.path(), 64 << 20).unwrap();
        let mut magic = [0u8; 2];
        let mut f = File::open(&t).unwrap();
        f.seek(SeekFrom::Start(1024 + 0x38)).unwrap();
        f.read_exact(&mut magic).unwrap();
        assert_eq!(u16::from_le_bytes(magic), 0xef53, "ext4 superblock magic");
        let mtime = fs::metadata(&t).unwrap().modified().unwrap();
        assert_eq!(template(dir.path(), 64 << 20).unwrap(), t);
        assert_eq!(fs::metadata(&t).unwrap().modified().unwrap(), mtime);
        create(dir.path(), &dir.path().join("vm.ext4"), 64 << 20).unwrap();
    }

    /// The data a new scratch disk copies: a 10 GiB template held 4.3 MiB, 4 MiB of it the
    /// resize inode's reserved blocks.
    #[test]
    fn a_ten_gib_template_holds_little_data_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("scratch-10240m.ext4");
        fs::write(&old, b"an older brig's template").unwrap();
        let t = template(dir.path(), DEFAULT_SIZE).unwrap();
        assert!(!old.exists(), "the old format's template is removed");
        let used = fs::metadata(&t).unwrap().blocks() * 512;
        if reports_holes(&t) {
            assert!(used < 1 << 20, "{used} bytes of data in the template");
        }
        let out = Command::new("dumpe2fs").arg("-h").arg(&t).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Filesystem features"), "{text}");
        assert!(!text.contains("resize_inode"), "{text}");
        assert!(!text.contains("has_journal"), "{text}");
    }
}
