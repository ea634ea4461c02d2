//! The read-only root filesystem of an image: its layers unpacked in order into a staging
//! tree, then one erofs image, `rootfs/<manifest-hex>.erofs`, built by `mkfs.erofs`
//! (Debian's erofs-utils) and shared by every VM of that image.
//!
//! The image is built under a temporary name and renamed once complete and synced; the
//! staging tree is removed either way. A build holds `locks/rootfs-<hex>.lock`, so
//! concurrent pulls build it once. Run as root, owners are kept; otherwise every file is
//! owned by root in the image (`--all-root`), as rootless tools do.
//! `BRIG_MKFS_EROFS` names another `mkfs.erofs` binary.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::digest::Digest;
use super::store::{remove_tree, sync_parent, tmp_suffix, IoContext, Store, StoreError};
use super::unpack::{open_layer, Limits, UnpackError, Unpacker};

/// Errors building a rootfs.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A layer could not be unpacked.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `mkfs.erofs` is not installed.
    #[error("cannot run {0}: {1} (install erofs-utils)")]
    NoMkfs(String, io::Error),
    /// `mkfs.erofs` failed.
    #[error("mkfs.erofs failed ({0}): {1}")]
    Mkfs(String, String),
}

fn mkfs_binary() -> String {
    std::env::var("BRIG_MKFS_EROFS")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "mkfs.erofs".to_string())
}

/// Removes a path when dropped.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
        let _ = fs::remove_file(&self.0);
    }
}

/// Makes sure the rootfs of `manifest` exists, building it if needed. `layer(i)` returns
/// the path of layer `i` once it is in the store (it may wait for a download).
pub fn ensure<E>(
    store: &Store,
    manifest: &Digest,
    layers: &[Digest],
    limits: Limits,
    mut layer: impl FnMut(usize) -> Result<PathBuf, E>,
) -> Result<PathBuf, E>
where
    E: From<RootfsError>,
{
    let out = store.rootfs_path(manifest);
    if out.is_file() {
        return Ok(out);
    }
    let _lock = store.lock_rootfs(manifest).map_err(RootfsError::from)?;
    if out.is_file() {
        return Ok(out);
    }
    clean_stale(store, manifest);
    let stage = store
        .tmp_dir()
        .join(format!("stage-{}-{}", manifest.hex(), tmp_suffix()));
    fs::create_dir(&stage)
        .at(&stage)
        .map_err(RootfsError::from)?;
    let _stage_guard = Cleanup(stage.clone());
    let mut unpacker = Unpacker::new(&stage, limits)
        .at(&stage)
        .map_err(RootfsError::from)?;
    for (i, d) in layers.iter().enumerate() {
        let path = layer(i)?;
        let reader = open_layer(&path).at(&path).map_err(RootfsError::from)?;
        unpacker
            .apply(reader, d.short())
            .map_err(RootfsError::from)?;
    }
    unpacker.finish().map_err(RootfsError::from)?;
    let tmp = out.with_file_name(format!(".tmp-{}-{}.erofs", manifest.hex(), tmp_suffix()));
    let tmp_guard = Cleanup(tmp.clone());
    mkfs(&stage, &tmp)?;
    let f = fs::File::open(&tmp).at(&tmp).map_err(RootfsError::from)?;
    f.sync_all().at(&tmp).map_err(RootfsError::from)?;
    fs::rename(&tmp, &out).at(&out).map_err(RootfsError::from)?;
    std::mem::forget(tmp_guard);
    sync_parent(&out);
    Ok(out)
}

/// Unpacks an image's layers (in the store) into `dest`, an existing empty directory, as a
/// tree for another runtime (`brig compare`'s runc bundle), with the same safe unpacker.
pub fn unpack_tree(store: &Store, layers: &[Digest], dest: &Path) -> Result<(), RootfsError> {
    let mut unpacker = Unpacker::new(dest, Limits::from_env()).at(dest)?;
    for d in layers {
        let path = store.blob_path(d);
        let reader = open_layer(&path).at(&path)?;
        unpacker.apply(reader, d.short())?;
    }
    unpacker.finish()?;
    Ok(())
}

/// Removes what an interrupted build of `manifest` left (we hold its lock).
fn clean_stale(store: &Store, manifest: &Digest) {
    let stage_prefix = format!("stage-{}-", manifest.hex());
    if let Ok(rd) = fs::read_dir(store.tmp_dir()) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&stage_prefix) {
                let _ = remove_tree(&e.path());
            }
        }
    }
    let tmp_prefix = format!(".tmp-{}-", manifest.hex());
    if let Some(dir) = store.rootfs_path(manifest).parent() {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&tmp_prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Runs `mkfs.erofs` on `stage`, writing `out` (also the OCI runtime's rootfs build).
pub fn mkfs(stage: &Path, out: &Path) -> Result<(), RootfsError> {
    let bin = mkfs_binary();
    let mut cmd = Command::new(&bin);
    cmd.arg("--quiet").arg("--preserve-mtime");
    if !rustix::process::geteuid().is_root() {
        cmd.arg("--all-root");
    }
    cmd.arg(out).arg(stage);
    let output = cmd
        .output()
        .map_err(|e| RootfsError::NoMkfs(bin.clone(), e))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim()
            .to_string();
        return Err(RootfsError::Mkfs(output.status.to_string(), last));
    }
    Ok(())
}
