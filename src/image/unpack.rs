//! Applies layer tarballs, in order, to a staging directory with OCI semantics, safely.
//!
//! Layers come from the network and may be hostile. Every path is walked one component at a
//! time from a directory descriptor of the staging root (`openat` with `O_NOFOLLOW |
//! O_DIRECTORY`), so no write ever goes through a symlink and nothing lands outside the
//! staging tree: absolute paths, `..` components and paths whose parent is a symlink
//! (`a -> /etc`, then `a/passwd`) make the layer fail as malicious. Final components are
//! never followed either: an existing symlink is replaced, not written through. Each layer
//! is bounded in uncompressed bytes and in entries ([`Limits`]), so a tar bomb fails
//! cleanly.
//!
//! Semantics follow the OCI image spec's "changesets": `.wh.NAME` removes NAME from lower
//! layers, `.wh..wh..opq` hides everything a directory had in lower layers; hard links,
//! symlinks, modes (setuid/setgid/sticky included), owners, mtimes and xattrs are applied;
//! device nodes and FIFOs are created with mknod. Without root, owners are left as the
//! invoking user, device nodes are skipped and xattrs outside `user.*` are dropped (each
//! with a debug log); the rootfs is then built with every file owned by root.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::fsat::{list_dir, parse_time, parse_u64, remove_at, stat_at, times, Owner};
use super::layer::Limited;
pub use super::layer::{open_layer, Limits};

/// Errors from unpacking a layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer tries to write outside the staging tree or through a symlink.
    #[error("malicious layer {layer}: entry {path:?} {why}")]
    Unsafe {
        layer: String,
        path: String,
        why: &'static str,
    },
    /// The layer is larger than the configured limit once uncompressed.
    #[error("layer {0} exceeds the limit of {1} uncompressed bytes (BRIG_MAX_LAYER_BYTES)")]
    TooLarge(String, u64),
    /// The layer has more entries than the configured limit.
    #[error("layer {0} exceeds the limit of {1} entries (BRIG_MAX_LAYER_ENTRIES)")]
    TooManyEntries(String, u64),
    /// The layer is not a valid (compressed) tar stream.
    #[error("layer {0} is not a valid tar archive: {1}")]
    Tar(String, io::Error),
    /// An entry could not be written to the staging tree.
    #[error("layer {layer}: writing {path:?}: {err}")]
    Write {
        layer: String,
        path: String,
        err: io::Error,
    },
}

type Comps = Vec<OsString>;

/// Metadata applied to directories once every layer is in (so that later entries can
/// still be written into them, and their mtimes are not disturbed).
#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: (i64, u32),
}

/// How far an archive's metadata is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Image layers: OCI whiteouts apply; as root, owners, device nodes, setuid bits and
    /// every xattr are kept (the rootfs is for the guest, never used on the host).
    Layer,
    /// Files copied out of a sandbox onto the host (`brig cp`): a plain tar, where `.wh.`
    /// names are ordinary files; files belong to whoever runs brig; device nodes, xattrs
    /// (file capabilities, security labels) and setuid/setgid bits are dropped, so nothing a
    /// guest sends can grant privileges on the host.
    Copy,
}

/// Unpacks layers into one staging directory.
#[derive(Debug)]
pub struct Unpacker {
    root: OwnedFd,
    limits: Limits,
    privileged: bool,
    policy: Policy,
    dirs: HashMap<Comps, DirMeta>,
    /// Paths written by the layer being applied (whiteouts spare them).
    added: HashSet<Comps>,
    cache: Option<(Comps, OwnedFd)>,
    layer: String,
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from(e)
}

impl Unpacker {
    /// Unpacks layers into `stage`, an existing, empty directory.
    pub fn new(stage: &Path, limits: Limits) -> io::Result<Self> {
        Self::with_policy(stage, limits, Policy::Layer)
    }

    /// Unpacks into `stage`, an existing, empty directory, trusting what `policy` says.
    pub fn with_policy(stage: &Path, limits: Limits, policy: Policy) -> io::Result<Self> {
        let root = rustix::fs::open(
            stage,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            root,
            limits,
            privileged: rustix::process::geteuid().is_root(),
            policy,
            dirs: HashMap::new(),
            added: HashSet::new(),
            cache: None,
            layer: String::new(),
        })
    }

    /// Applies one (uncompressed) layer tar stream; `name` is used in messages.
    pub fn apply(&mut self, reader: impl Read, name: &str) -> Result<(), UnpackError> {
        self.layer = name.to_string();
        self.added.clear();
        self.cache = None;
        let exceeded = Rc::new(Cell::new(false));
        let limited = Limited {
            inner: reader,
            left: self.limits.max_bytes,
            exceeded: exceeded.clone(),
        };
        let mut archive = tar::Archive::new(limited);
        let max_bytes = self.limits.max_bytes;
        let tar_err = |e: io::Error, exceeded: &Rc<Cell<bool>>| {
            if exceeded.get() {
                UnpackError::TooLarge(name.to_string(), max_bytes)
            } else {
                UnpackError::Tar(name.to_string(), e)
            }
        };
        let entries = archive.entries().map_err(|e| tar_err(e, &exceeded))?;
        let mut count = 0u64;
        // Bytes the entries yield: more than the stream holds for GNU sparse files, whose
        // holes tar expands itself (a few hundred bytes can declare a terabyte of zeros).
        let mut yielded = 0u64;
        for entry in entries {
            let mut entry = entry.map_err(|e| tar_err(e, &exceeded))?;
            count += 1;
            if count > self.limits.max_entries {
                return Err(UnpackError::TooManyEntries(
                    name.to_string(),
                    self.limits.max_entries,
                ));
            }
            yielded = yielded.saturating_add(entry.size());
            if yielded > max_bytes {
                return Err(UnpackError::TooLarge(name.to_string(), max_bytes));
            }
            if let Err(e) = self.entry(&mut entry) {
                if exceeded.get() {
                    return Err(UnpackError::TooLarge(name.to_string(), max_bytes));
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn unsafe_path(&self, path: &Path, why: &'static str) -> UnpackError {
        UnpackError::Unsafe {
            layer: self.layer.clone(),
            path: path.display().to_string(),
            why,
        }
    }

    fn write_err(&self, path: &Path, err: io::Error) -> UnpackError {
        UnpackError::Write {
            layer: self.layer.clone(),
            path: path.display().to_string(),
            err,
        }
    }

    /// Splits an entry path into checked components.
    fn components(&self, path: &Path) -> Result<Comps, UnpackError> {
        let mut out = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(s) => out.push(s.to_os_string()),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.unsafe_path(path, "is an absolute path"))
                }
                Component::ParentDir => return Err(self.unsafe_path(path, "contains `..`")),
            }
        }
        Ok(out)
    }

    /// Opens the directory `comps` (relative to the root) without following symlinks,
    /// creating missing directories when `create`.
    fn open_dir(
        &mut self,
        comps: &[OsString],
        path: &Path,
        create: bool,
    ) -> Result<Option<OwnedFd>, UnpackError> {
        if let Some((c, fd)) = &self.cache {
            if c.as_slice() == comps {
                return fd
                    .try_clone()
                    .map(Some)
                    .map_err(|e| self.write_err(path, e));
            }
        }
        let mut dir = self.root.try_clone().map_err(|e| self.write_err(path, e))?;
        for (i, c) in comps.iter().enumerate() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rustix::fs::openat(&dir, c.as_os_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&dir, c.as_os_str(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.write_err(path, errno_io(e))),
                    }
                    self.added.insert(comps[..=i].to_vec());
                    rustix::fs::openat(&dir, c.as_os_str(), flags, Mode::empty())
                        .map_err(|e| self.write_err(path, errno_io(e)))?
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                    let st = rustix::fs::statat(&dir, c.as_os_str(), AtFlags::SYMLINK_NOFOLLOW);
                    let is_link =
                        st.is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink);
                    return Err(if is_link {
                        self.unsafe_path(path, "would be written through a symlink")
                    } else {
                        self.unsafe_path(path, "has a parent that is not a directory")
                    });
                }
                Err(e) => return Err(self.write_err(path, errno_io(e))),
            };
            dir = next;
        }
        if create {
            if let Ok(fd) = dir.try_clone() {
                self.cache = Some((comps.to_vec(), fd));
            }
        }
        Ok(Some(dir))
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry
            .path()
            .map_err(|e| UnpackError::Tar(self.layer.clone(), e))?
            .into_owned();
        let comps = self.components(&raw_path)?;
        let Some((name, parent)) = comps.split_last() else {
            return Ok(()); // "./": the root itself
        };
        let name = name.clone();
        let parent = parent.to_vec();
        let name_bytes = name.as_bytes();

        // Whiteouts.
        let whiteout = match self.policy {
            Policy::Layer => name_bytes.strip_prefix(b".wh."),
            Policy::Copy => None,
        };
        if let Some(target) = whiteout {
            let Some(dir) = self.open_dir(&parent, &raw_path, false)? else {
                return Ok(()); // nothing below to hide
            };
            if target == b".wh..opq" {
                let mut prefix = parent.clone();
                self.clear_lower(&dir, &mut prefix, &raw_path)?;
            } else if target.starts_with(b".wh.") {
                // Other AUFS metadata (.wh..wh.plnk, ...): nothing to apply.
            } else if target.is_empty()
                || target == b"."
                || target == b".."
                || target.contains(&b'/')
            {
                return Err(self.unsafe_path(&raw_path, "is a malformed whiteout"));
            } else {
                let mut full = parent.clone();
                full.push(OsStr::from_bytes(target).to_os_string());
                if !self.added.contains(&full) {
                    self.remove_at(&dir, OsStr::from_bytes(target), &raw_path)?;
                }
            }
            return Ok(());
        }

        let dir = self
            .open_dir(&parent, &raw_path, true)?
            .ok_or_else(|| self.unsafe_path(&raw_path, "has a missing parent"))?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header
            .mode()
            .map_err(|e| UnpackError::Tar(self.layer.clone(), e))?
            & match self.policy {
                Policy::Layer => 0o7777,
                Policy::Copy => 0o1777,
            };
        let (mut uid, mut gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        let mut mtime = (header.mtime().unwrap_or(0) as i64, 0u32);
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                match key {
                    b"uid" => uid = parse_u64(value).unwrap_or(uid),
                    b"gid" => gid = parse_u64(value).unwrap_or(gid),
                    b"mtime" => mtime = parse_time(value).unwrap_or(mtime),
                    k => {
                        if let Some(x) = k.strip_prefix(b"SCHILY.xattr.") {
                            xattrs.push((x.to_vec(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let mut full = parent.clone();
        full.push(name.clone());
        let owner = Owner { uid, gid };

        match kind {
            tar::EntryType::Directory => {
                let existing = stat_at(&dir, &name);
                match existing {
                    Some(FileType::Directory) => {}
                    Some(_) => self.remove_at(&dir, &name, &raw_path)?,
                    None => {}
                }
                if existing != Some(FileType::Directory) {
                    rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o755))
                        .map_err(|e| self.write_err(&raw_path, errno_io(e)))?;
                }
                let fd = rustix::fs::openat(
                    &dir,
                    name.as_os_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.write_err(&raw_path, errno_io(e)))?;
                self.chown_fd(&fd, owner, &raw_path)?;
                self.set_xattrs(&fd, &xattrs, &raw_path);
                self.dirs.insert(full.clone(), DirMeta { mode, mtime });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.replace(&dir, &name, &raw_path)?;
                let fd = rustix::fs::openat(
                    &dir,
                    name.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.write_err(&raw_path, errno_io(e)))?;
                let mut file = File::from(fd);
                io::copy(entry, &mut file).map_err(|e| self.write_err(&raw_path, e))?;
                self.chown_fd(&file, owner, &raw_path)?;
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
                    .map_err(|e| self.write_err(&raw_path, errno_io(e)))?;
                self.set_xattrs(&file, &xattrs, &raw_path);
                rustix::fs::futimens(&file, &times(mtime))
                    .map_err(|e| self.write_err(&raw_path, errno_io(e)))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_path(&raw_path, "is a symlink without target"))?
                    .into_owned();
                self.replace(&dir, &name, &raw_path)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, name.as_os_str())
                    .map_err(|e| self.write_err(&raw_path, errno_io(e)))?;
                self.chown_at(&dir, &name, owner, &raw_path)?;
                let _ = rustix::fs::utimensat(
                    &dir,
                    name.as_os_str(),
                    &times(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Tar(self.layer.clone(), e))?
                    .ok_or_else(|| self.unsafe_path(&raw_path, "is a hard link without target"))?
                    .into_owned();
                let tcomps = self.components(&target)?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(self.unsafe_path(&raw_path, "is a hard link to the root"));
                };
                let tdir = self.open_dir(tparent, &target, false)?.ok_or_else(|| {
                    self.unsafe_path(&raw_path, "is a hard link to a missing file")
                })?;
                match stat_at(&tdir, tname) {
                    None => {
                        return Err(self.unsafe_path(&raw_path, "is a hard link to a missing file"))
                    }
                    Some(FileType::Directory) => {
                        return Err(self.unsafe_path(&raw_path, "is a hard link to a directory"))
                    }
                    Some(_) => {}
                }
                if tcomps == full {
                    return Ok(());
                }
                self.replace(&dir, &name, &raw_path)?;
                rustix::fs::linkat(
                    &tdir,
                    tname.as_os_str(),
                    &dir,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| self.write_err(&raw_path, errno_io(e)))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if ft != FileType::Fifo && (!self.privileged || self.policy == Policy::Copy) {
                    tracing::debug!("skipping device node {}", raw_path.display());
                    return Ok(());
                }
                let dev = rustix::fs::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                self.replace(&dir, &name, &raw_path)?;
                match rustix::fs::mknodat(
                    &dir,
                    name.as_os_str(),
                    ft,
                    Mode::from_raw_mode(mode),
                    dev,
                ) {
                    Ok(()) => {}
                    Err(e @ (Errno::PERM | Errno::NXIO | Errno::OPNOTSUPP)) => {
                        tracing::warn!("skipping special file {}: {e}", raw_path.display());
                        return Ok(());
                    }
                    Err(e) => return Err(self.write_err(&raw_path, errno_io(e))),
                }
                self.chown_at(&dir, &name, owner, &raw_path)?;
                let _ = rustix::fs::chmodat(
                    &dir,
                    name.as_os_str(),
                    Mode::from_raw_mode(mode),
                    AtFlags::empty(),
                );
                let _ = rustix::fs::utimensat(
                    &dir,
                    name.as_os_str(),
                    &times(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => {
                tracing::debug!(
                    "skipping tar entry {} of type {other:?}",
                    raw_path.display()
                );
                return Ok(());
            }
        }
        self.added.insert(full);
        Ok(())
    }

    /// Makes room for a non-directory entry: removes what is at `name` (a tree if needed).
    fn replace(&mut self, dir: &OwnedFd, name: &OsStr, path: &Path) -> Result<(), UnpackError> {
        if stat_at(dir, name).is_some() {
            self.remove_at(dir, name, path)?;
        }
        Ok(())
    }

    /// Removes `name` in `dir`, recursively, never following symlinks.
    fn remove_at(&mut self, dir: &OwnedFd, name: &OsStr, path: &Path) -> Result<(), UnpackError> {
        self.cache = None;
        remove_at(dir, name).map_err(|e| self.write_err(path, e))
    }

    /// Removes everything under `dir` that lower layers put there (opaque directory).
    fn clear_lower(
        &mut self,
        dir: &OwnedFd,
        prefix: &mut Comps,
        path: &Path,
    ) -> Result<(), UnpackError> {
        let names = list_dir(dir).map_err(|e| self.write_err(path, e))?;
        for (n, ft) in names {
            prefix.push(n.clone());
            if self.added.contains(prefix.as_slice()) {
                if ft == FileType::Directory {
                    let sub = rustix::fs::openat(
                        dir,
                        n.as_os_str(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| self.write_err(path, errno_io(e)))?;
                    self.clear_lower(&sub, prefix, path)?;
                }
            } else {
                self.remove_at(dir, &n, path)?;
            }
            prefix.pop();
        }
        Ok(())
    }

    fn chown_fd(&self, fd: impl AsFd, o: Owner, path: &Path) -> Result<(), UnpackError> {
        if !self.privileged || self.policy == Policy::Copy {
            return Ok(());
        }
        let (Some(u), Some(g)) = (o.uid(), o.gid()) else {
            return Ok(());
        };
        rustix::fs::fchown(fd, Some(u), Some(g)).map_err(|e| self.write_err(path, errno_io(e)))
    }

    fn chown_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        o: Owner,
        path: &Path,
    ) -> Result<(), UnpackError> {
        if !self.privileged || self.policy == Policy::Copy {
            return Ok(());
        }
        let (Some(u), Some(g)) = (o.uid(), o.gid()) else {
            return Ok(());
        };
        rustix::fs::chownat(dir, name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.write_err(path, errno_io(e)))
    }

    fn set_xattrs(&self, fd: impl AsFd, xattrs: &[(Vec<u8>, Vec<u8>)], path: &Path) {
        if self.policy == Policy::Copy {
            return;
        }
        for (k, v) in xattrs {
            let name = OsStr::from_bytes(k);
            if let Err(e) = rustix::fs::fsetxattr(&fd, name, v, rustix::fs::XattrFlags::empty()) {
                tracing::debug!("xattr {:?} on {}: {e}", name, path.display());
            }
        }
    }

    /// Sets directory modes and mtimes, deepest first. Call once after the last layer.
    pub fn finish(mut self) -> Result<(), UnpackError> {
        let mut dirs: Vec<(Comps, DirMeta)> = self.dirs.drain().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
        self.cache = None;
        for (comps, meta) in dirs {
            let path: std::path::PathBuf = comps.iter().collect();
            let Some(fd) = (match self.open_dir(&comps, &path, false) {
                Ok(fd) => fd,
                Err(UnpackError::Unsafe { .. }) => None, // replaced by a later layer
                Err(e) => return Err(e),
            }) else {
                continue;
            };
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| self.write_err(&path, errno_io(e)))?;
            rustix::fs::futimens(&fd, &times(meta.mtime))
                .map_err(|e| self.write_err(&path, errno_io(e)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
