//! `brig cp` inside the guest: a path of the sandbox sent as a tar stream, or a tar stream
//! unpacked into a directory of the sandbox. The agent runs in the sandbox's root (chroot),
//! so every path resolves inside it; `..` is refused outright so that a path that would
//! climb out is an error, not a silent clamp to `/`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Component, Path};

use brig_protocol::{read_message, ChunkWriter, FileKind, Message, PathInfo};

use crate::exec::{send, HostWriter};

/// Checks that `path` is absolute and has no `..`.
pub fn check_path(path: &str) -> Result<&Path, String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("{path}: not an absolute path"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{path}: '..' would leave the sandbox"));
    }
    Ok(p)
}

/// Describes `path`, following symlinks (a dangling one is reported as a symlink).
pub fn stat(path: &str) -> Result<PathInfo, String> {
    use std::os::unix::fs::MetadataExt;
    let p = check_path(path)?;
    let meta = match std::fs::metadata(p).or_else(|e| match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => Ok(m),
        _ => Err(e),
    }) {
        Ok(m) => m,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            return Ok(PathInfo {
                kind: FileKind::Missing,
                mode: 0,
                size: 0,
                mtime: 0,
            })
        }
        Err(e) => return Err(format!("{path}: {e}")),
    };
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        FileKind::Directory
    } else if ft.is_file() {
        FileKind::File
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    Ok(PathInfo {
        kind,
        mode: meta.mode() & 0o7777,
        size: meta.len(),
        mtime: meta.mtime(),
    })
}

/// Sends `path` (a file, directory or symlink) as a tar stream named by its last component.
pub fn copy_out(path: &str, writer: &HostWriter) -> Result<(), String> {
    let p = check_path(path)?;
    let meta = std::fs::symlink_metadata(p).map_err(|e| format!("{path}: {e}"))?;
    let name = p
        .file_name()
        .map_or(Path::new("."), Path::new)
        .to_path_buf();
    let mut out = ChunkWriter::new(|chunk| send(writer, &Message::Stdout(chunk)));
    {
        let mut tar = tar::Builder::new(&mut out);
        tar.follow_symlinks(false);
        tar.mode(tar::HeaderMode::Complete);
        let res = if meta.is_dir() {
            tar.append_dir_all(&name, p)
        } else {
            tar.append_path_with_name(p, &name)
        };
        res.and_then(|_| tar.finish())
            .map_err(|e| format!("{path}: {e}"))?;
    }
    out.flush().map_err(|e| e.to_string())
}

/// Reads the tar stream arriving as Stdin frames.
struct FrameReader<'a> {
    conn: &'a mut File,
    pending: Vec<u8>,
    done: bool,
}

impl Read for FrameReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() && !self.done {
            match read_message(self.conn) {
                Ok(Some(Message::Stdin(data))) if data.is_empty() => self.done = true,
                Ok(Some(Message::Stdin(data))) => self.pending = data,
                Ok(Some(other)) => {
                    return Err(io::Error::other(format!("unexpected frame {other:?}")))
                }
                Ok(None) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
        let n = out.len().min(self.pending.len());
        out[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

/// Unpacks the tar stream from the host into the directory `path`. Directories get their
/// times from the archive once everything in them is written (tar's own unpack leaves them
/// at "now"). The stream is read to its end either way, so that the connection can carry the
/// next request.
pub fn copy_in(path: &str, conn: &mut File) -> Result<(), String> {
    let mut reader = FrameReader {
        conn,
        pending: Vec::new(),
        done: false,
    };
    let result = unpack(path, &mut reader);
    // Drain what is left so the host's stream ends cleanly.
    let _ = io::copy(&mut reader, &mut io::sink());
    result
}

fn unpack(path: &str, reader: &mut dyn Read) -> Result<(), String> {
    let p = check_path(path)?;
    if !p.is_dir() {
        return Err(format!("{path}: not a directory in the sandbox"));
    }
    let err = |e: io::Error| format!("{path}: {e}");
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let mut dirs = Vec::new();
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let is_dir = entry.header().entry_type().is_dir();
        let mtime = entry.header().mtime().unwrap_or(0) as i64;
        let name = entry.path().map_err(err)?.into_owned();
        // unpack_in refuses entries that would land outside `p` (`..`, absolute, symlinks).
        if entry.unpack_in(p).map_err(err)? && is_dir {
            dirs.push((p.join(name), mtime));
        }
    }
    // Deepest first: setting a directory's time must come after its children are written.
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (dir, mtime) in dirs {
        set_mtime(&dir, mtime).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

fn set_mtime(path: &Path, secs: i64) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: c is NUL-terminated and times points to two timespecs, both live for the call.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_in_the_sandbox() {
        assert!(check_path("/etc/passwd").is_ok());
        assert!(check_path("relative").is_err());
        assert!(check_path("/tmp/../../etc").unwrap_err().contains(".."));
    }

    #[test]
    fn stat_follows_symlinks_and_reports_dangling_ones() {
        let dir = std::env::temp_dir().join(format!("brig-stat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("to-dir")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.join("dangling")).unwrap();
        let s = |p: &str| stat(dir.join(p).to_str().unwrap());
        assert_eq!(s("to-dir").unwrap().kind, FileKind::Directory);
        assert_eq!(s("dangling").unwrap().kind, FileKind::Symlink);
        assert_eq!(s("missing").unwrap().kind, FileKind::Missing);
        assert_eq!(s("dangling/x").unwrap().kind, FileKind::Missing);
        // A tree unpacks with its directories' times.
        let mut tar = tar::Builder::new(Vec::new());
        for (path, kind) in [
            ("t", tar::EntryType::Directory),
            ("t/f", tar::EntryType::Regular),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o750);
            h.set_mtime(1_500_000_000);
            h.set_size(0);
            tar.append_data(&mut h, path, std::io::empty()).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        unpack(dir.to_str().unwrap(), &mut tar.as_slice()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dir.join("t")).unwrap();
        assert_eq!((m.mtime(), m.mode() & 0o777), (1_500_000_000, 0o750));
        assert!(unpack("/nonexistent-dir", &mut tar.as_slice()).is_err());
        assert!(stat("relative").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
