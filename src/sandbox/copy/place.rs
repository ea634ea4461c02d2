//! Where a copy lands, by docker's rules, and the host's side of the tar streams: what
//! comes out of a sandbox is unpacked in a staging directory next to its destination and
//! renamed into place; what goes in is archived here.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use brig_protocol::FileKind;

use super::{io_err, limits, CopyError, SandboxPath};
use crate::image::unpack::{Limits, Policy, UnpackError, Unpacker};

/// Where a copy out of the sandbox lands on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landing {
    /// The copied item becomes (or replaces, or merges into) this path.
    At(PathBuf),
    /// The copied directory's contents merge into this existing directory.
    Into(PathBuf),
}

pub(super) fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// docker's rules for a copy to the host: where `src` (a `kind`, named `name`) lands given
/// what `dest` is now. Returns the landing and the directory to stage it in (on the same
/// file system, so that the final step is a rename).
pub fn plan_out(
    src: &SandboxPath,
    kind: FileKind,
    dest: &Path,
    dest_slash: bool,
) -> Result<(Landing, PathBuf), CopyError> {
    let is_dir = kind == FileKind::Directory;
    if src.dir && !is_dir {
        return Err(CopyError(format!(
            "{}: not a directory in the sandbox",
            src.path
        )));
    }
    let name = src.name().ok_or_else(|| {
        CopyError::new("copying the whole root of a sandbox is not supported; name a directory")
    })?;
    match fs::metadata(dest) {
        Ok(m) if m.is_dir() => Ok(if src.contents {
            (Landing::Into(dest.to_path_buf()), dest.to_path_buf())
        } else {
            (Landing::At(dest.join(name)), dest.to_path_buf())
        }),
        Ok(_) if is_dir => Err(CopyError(format!(
            "cannot copy a directory to a file: {}",
            dest.display()
        ))),
        Ok(_) if dest_slash => Err(CopyError(format!("{}: not a directory", dest.display()))),
        Ok(_) => Ok((Landing::At(dest.to_path_buf()), parent_of(dest))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if dest_slash && !is_dir {
                return Err(CopyError(format!(
                    "the destination directory {} does not exist",
                    dest.display()
                )));
            }
            let parent = parent_of(dest);
            if !parent.is_dir() {
                return Err(CopyError(format!(
                    "{}: no such directory",
                    parent.display()
                )));
            }
            Ok((Landing::At(dest.to_path_buf()), parent))
        }
        Err(e) => Err(io_err(dest)(e)),
    }
}

/// A private directory to unpack into, removed with what is left in it.
struct Stage(PathBuf);

impl Stage {
    fn create(parent: &Path) -> Result<Self, CopyError> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for i in 0..100u32 {
            let path = parent.join(format!(
                ".brig-cp-{}-{:x}",
                std::process::id(),
                nanos.wrapping_add(i)
            ));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self(path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(parent)(e)),
            }
        }
        Err(CopyError(format!(
            "{}: cannot create a staging directory",
            parent.display()
        )))
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // remove_dir_all never follows symlinks. Unpacked directories may lack write
        // permission for a user who is not root: give it back first.
        let _ = fs::remove_dir_all(&self.0).or_else(|_| {
            make_writable(&self.0);
            fs::remove_dir_all(&self.0)
        });
    }
}

fn make_writable(dir: &Path) {
    let Ok(m) = fs::symlink_metadata(dir) else {
        return;
    };
    if !m.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            make_writable(&e.path());
        }
    }
}

fn unpack_err(e: UnpackError) -> CopyError {
    match e {
        UnpackError::Unsafe { path, why, .. } => CopyError(format!(
            "the sandbox sent an unsafe archive: entry {path:?} {why}"
        )),
        UnpackError::TooLarge(_, n) => {
            CopyError(format!("the copy exceeds {n} bytes (BRIG_MAX_COPY_BYTES)"))
        }
        UnpackError::TooManyEntries(_, n) => CopyError(format!(
            "the copy exceeds {n} files (BRIG_MAX_COPY_ENTRIES)"
        )),
        UnpackError::Tar(_, e) => CopyError(format!("the sandbox sent a broken archive: {e}")),
        UnpackError::Write { path, err, .. } => CopyError(format!("writing {path}: {err}")),
    }
}

/// Unpacks the tar stream `tar`, whose top entry is `name`, in a staging directory under
/// `stage_in`, then moves it to its landing.
pub fn receive(
    tar: &mut dyn Read,
    name: &str,
    stage_in: &Path,
    landing: &Landing,
) -> Result<(), CopyError> {
    receive_with(tar, name, stage_in, landing, limits())
}

/// [`receive`] within `limits`.
pub fn receive_with(
    tar: &mut dyn Read,
    name: &str,
    stage_in: &Path,
    landing: &Landing,
    limits: Limits,
) -> Result<(), CopyError> {
    let stage = Stage::create(stage_in)?;
    let mut unpacker =
        Unpacker::with_policy(&stage.0, limits, Policy::Copy).map_err(io_err(&stage.0))?;
    unpacker.apply(tar, name).map_err(unpack_err)?;
    unpacker.finish().map_err(unpack_err)?;
    let item = stage.0.join(name);
    let meta = fs::symlink_metadata(&item)
        .map_err(|_| CopyError(format!("the sandbox's archive has no {name:?}")))?;
    match landing {
        Landing::Into(dir) => {
            if !meta.is_dir() {
                return Err(CopyError(format!("{name}: not a directory in the sandbox")));
            }
            merge_into(&item, dir)?;
            // The stage may sit in `dir` itself: removing it touches `dir`'s mtime, so `dir`
            // takes the archive's mode and times again once the stage is gone.
            drop(stage);
            take_meta(dir, &meta)
        }
        Landing::At(target) => place(&item, meta.is_dir(), target),
    }
}

/// Moves `item` to `target`: a rename, or a merge when both are directories.
fn place(item: &Path, is_dir: bool, target: &Path) -> Result<(), CopyError> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::rename(item, target).map_err(io_err(target))
        }
        Err(e) => Err(io_err(target)(e)),
        Ok(m) if m.is_dir() && is_dir => merge_into(item, target),
        Ok(m) if m.is_dir() => Err(CopyError(format!(
            "cannot overwrite directory {} with a non-directory",
            target.display()
        ))),
        Ok(_) if is_dir => Err(CopyError(format!(
            "cannot overwrite non-directory {} with a directory",
            target.display()
        ))),
        // A file or symlink is replaced, never written through.
        Ok(_) => fs::rename(item, target).map_err(io_err(target)),
    }
}

/// Moves the entries of directory `src` into the existing directory `dst` (recursively where
/// both have a directory of the same name), then gives `dst` the mode and mtime of `src`.
fn merge_into(src: &Path, dst: &Path) -> Result<(), CopyError> {
    let meta = fs::symlink_metadata(src).map_err(io_err(src))?;
    // Entries are moved out of `src`, which may be read-only as unpacked.
    fs::set_permissions(src, fs::Permissions::from_mode(0o700)).map_err(io_err(src))?;
    let mut names: Vec<OsString> = fs::read_dir(src)
        .map_err(io_err(src))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(src))?;
    names.sort();
    for n in names {
        let from = src.join(&n);
        let is_dir = fs::symlink_metadata(&from).map_err(io_err(&from))?.is_dir();
        place(&from, is_dir, &dst.join(&n))?;
    }
    take_meta(dst, &meta)
}

/// Gives `dst` the mode and mtime in `meta`.
fn take_meta(dst: &Path, meta: &fs::Metadata) -> Result<(), CopyError> {
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err(dst))?;
    set_mtime(dst, meta.mtime(), meta.mtime_nsec())
}

fn set_mtime(path: &Path, secs: i64, nsecs: i64) -> Result<(), CopyError> {
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: nsecs as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: nsecs as _,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &t, rustix::fs::AtFlags::empty())
        .map_err(|e| io_err(path)(e.into()))
}

/// What a copy into the sandbox sends, and where the agent unpacks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanIn {
    /// The directory of the sandbox the tar is unpacked in.
    pub dir: String,
    /// The name of the top entry; `None`: the source directory's entries, each by its name.
    pub name: Option<OsString>,
}

/// docker's rules for a copy into the sandbox, given what `dest` is there (`dest_kind`) and,
/// when it is missing, what its parent is.
pub fn plan_in(
    src: &Path,
    src_is_dir: bool,
    src_contents: bool,
    dest: &SandboxPath,
    dest_kind: FileKind,
    parent_kind: impl FnOnce(&str) -> Result<FileKind, CopyError>,
) -> Result<PlanIn, CopyError> {
    let src_name = src
        .file_name()
        .map(OsStr::to_os_string)
        .or_else(|| {
            // `.`, `..`, `/`: name it after the directory it is.
            fs::canonicalize(src)
                .ok()
                .and_then(|p| p.file_name().map(OsStr::to_os_string))
        })
        .unwrap_or_else(|| OsString::from("root"));
    let own_name = |d: &SandboxPath| d.name().map(OsString::from);
    match dest_kind {
        FileKind::Directory => Ok(PlanIn {
            dir: dest.path.clone(),
            name: if src_contents { None } else { Some(src_name) },
        }),
        FileKind::Missing => {
            if dest.dir && !src_is_dir {
                return Err(CopyError(format!(
                    "the destination directory {} does not exist in the sandbox",
                    dest.path
                )));
            }
            let parent = dest.parent();
            if parent_kind(&parent)? != FileKind::Directory {
                return Err(CopyError(format!(
                    "{parent}: no such directory in the sandbox"
                )));
            }
            Ok(PlanIn {
                dir: parent,
                name: own_name(dest),
            })
        }
        _ if src_is_dir => Err(CopyError(format!(
            "cannot copy a directory to a file: {}",
            dest.path
        ))),
        _ if dest.dir => Err(CopyError(format!(
            "{}: not a directory in the sandbox",
            dest.path
        ))),
        _ => Ok(PlanIn {
            dir: dest.parent(),
            name: own_name(dest),
        }),
    }
}

/// Writes `src` as a tar stream: the top entry named `name`, or (`None`) each entry of the
/// directory `src` by its own name. Symlinks are sent as symlinks; modes and times are kept.
pub fn send_tree(out: &mut dyn Write, src: &Path, name: Option<&OsStr>) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    let append = |tar: &mut tar::Builder<&mut dyn Write>, path: &Path, name: &OsStr| {
        if fs::symlink_metadata(path)?.is_dir() {
            tar.append_dir_all(name, path)
        } else {
            tar.append_path_with_name(path, name)
        }
    };
    match name {
        Some(n) => append(&mut tar, src, n)?,
        None => {
            let mut names: Vec<OsString> = fs::read_dir(src)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()?;
            names.sort();
            for n in names {
                append(&mut tar, &src.join(&n), &n)?;
            }
        }
    }
    tar.finish()
}

/// A host path as the user wrote it: whether it ends in `/` or `/.`.
pub fn host_path_flags(raw: &str) -> (bool, bool) {
    let contents = raw.ends_with("/.") || raw == ".";
    (contents || raw.ends_with('/'), contents)
}
