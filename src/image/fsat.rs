//! Directory-descriptor helpers for the unpacker: stat, list and remove entries relative
//! to an open directory, never following symlinks; owners and timestamps.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner {
    pub(crate) uid: u64,
    pub(crate) gid: u64,
}

impl Owner {
    pub(crate) fn uid(&self) -> Option<rustix::fs::Uid> {
        u32::try_from(self.uid)
            .ok()
            .filter(|u| *u != u32::MAX)
            .map(rustix::fs::Uid::from_raw)
    }

    pub(crate) fn gid(&self) -> Option<rustix::fs::Gid> {
        u32::try_from(self.gid)
            .ok()
            .filter(|g| *g != u32::MAX)
            .map(rustix::fs::Gid::from_raw)
    }
}

pub(crate) fn times((sec, nsec): (i64, u32)) -> Timestamps {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

pub(crate) fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// Parses a PAX time (`1700000000.123456789`).
pub(crate) fn parse_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut digits: String = frac.chars().take(9).filter(char::is_ascii_digit).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    Some((sec, digits.parse().ok()?))
}

pub(crate) fn stat_at(dir: &OwnedFd, name: &OsStr) -> Option<FileType> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|s| FileType::from_raw_mode(s.st_mode))
}

/// The entries of a directory (without `.` and `..`) and their types.
pub(crate) fn list_dir(dir: &OwnedFd) -> io::Result<Vec<(OsString, FileType)>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        let name = OsStr::from_bytes(n).to_os_string();
        let ft = match e.file_type() {
            FileType::Unknown => stat_at(dir, &name).unwrap_or(FileType::Unknown),
            ft => ft,
        };
        out.push((name, ft));
    }
    Ok(out)
}

/// Removes `name` in `dir` and, for a directory, everything below; never follows symlinks.
pub(crate) fn remove_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700));
    for (n, _) in list_dir(&sub)? {
        remove_at(&sub, &n)?;
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
