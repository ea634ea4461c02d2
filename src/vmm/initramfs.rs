//! The initramfs brig writes for every VM: an uncompressed cpio archive in the "newc" format
//! (Documentation/driver-api/early-userspace/buffer-format.rst) holding the guest init as
//! `/init`, the directories it mounts on, `/dev/console`, and any files the user adds.
//!
//! Written in Rust at run time (no external cpio). Uncompressed, because unpacking is then a
//! copy: the guest kernel carries no decompressor.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The guest init, built from `guest/` by build.rs.
pub static GUEST_INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/brig-init"));
/// SHA-256 of [`GUEST_INIT`] (hex), computed by build.rs: the agent build's identity without
/// hashing 3.6 MiB on every run.
pub const GUEST_INIT_SHA256: &str = include_str!(concat!(env!("OUT_DIR"), "/brig-init.sha256"));
/// The layout of [`Initramfs::with_init`] around the guest init; bump it when that changes.
const GUEST_LAYOUT: u32 = 1;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// The initramfs a VM boots with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initrd {
    /// brig's own, [`Initramfs::with_init`]: written only when a VM boots, as a VM restored
    /// from a snapshot needs none (writing and hashing it cost a templated run ~150 ms of
    /// CPU under nested emulation).
    Guest,
    /// An archive the caller wrote (`brig boot` with added files).
    Archive(Vec<u8>),
}

impl Initrd {
    /// The archive's bytes.
    pub fn bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>, InitramfsError> {
        match self {
            Self::Guest => Ok(std::borrow::Cow::Owned(Initramfs::with_init().to_bytes()?)),
            Self::Archive(bytes) => Ok(std::borrow::Cow::Borrowed(bytes)),
        }
    }

    /// What the guest boots with, as a stable string: the same for the same archive.
    pub fn identity(&self) -> String {
        use sha2::{Digest, Sha256};
        match self {
            Self::Guest => format!("guest-init-{GUEST_LAYOUT}:{}", GUEST_INIT_SHA256.trim()),
            Self::Archive(bytes) => format!("{:x}", Sha256::digest(bytes)),
        }
    }
}

/// Building the initramfs failed.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A file to add cannot be read.
    #[error("cannot read {path}: {source}")]
    Source {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A guest path is empty, relative after normalisation, or has `..`.
    #[error("invalid guest path {0:?} (absolute path without '..' expected)")]
    GuestPath(String),
    /// The same guest path was given twice with different contents.
    #[error("guest path {0} is given twice")]
    Duplicate(String),
    /// Writing the archive failed.
    #[error("writing the initramfs: {0}")]
    Write(#[from] io::Error),
}

#[derive(Debug, Clone)]
enum Content {
    Dir,
    Bytes(&'static [u8]),
    File(PathBuf),
    CharDev(u32, u32),
}

#[derive(Debug, Clone)]
struct Entry {
    mode: u32,
    content: Content,
}

/// An initramfs being assembled: guest path (without the leading `/`) → entry.
#[derive(Debug, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

/// Normalises `/a//b/./c` to `a/b/c`; rejects `..` and empty paths.
fn normalize(guest: &str) -> Result<String, InitramfsError> {
    if !guest.starts_with('/') {
        return Err(InitramfsError::GuestPath(guest.into()));
    }
    let mut parts = Vec::new();
    for part in guest.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(InitramfsError::GuestPath(guest.into())),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(InitramfsError::GuestPath(guest.into()));
    }
    Ok(parts.join("/"))
}

impl Initramfs {
    /// The base every brig VM boots with: `/init`, mount points and `/dev/console`.
    pub fn with_init() -> Self {
        let mut fs = Self::default();
        fs.insert("init", 0o755, Content::Bytes(GUEST_INIT));
        for dir in ["dev", "proc", "sys", "tmp", "run", "root", "etc", "bin"] {
            fs.mkdir_all(dir);
        }
        if let Some(e) = fs.entries.get_mut("tmp") {
            e.mode = 0o1777;
        }
        // The kernel opens /dev/console for init's stdio before init runs.
        fs.insert("dev/console", 0o600, Content::CharDev(5, 1));
        fs
    }

    fn insert(&mut self, path: &str, mode: u32, content: Content) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.mkdir_all(parent);
        }
        self.entries
            .insert(path.to_string(), Entry { mode, content });
    }

    fn mkdir_all(&mut self, path: &str) {
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry {
                mode: 0o755,
                content: Content::Dir,
            });
        }
    }

    /// Adds the host file `host` as `guest` (absolute), keeping its permission bits.
    /// Symbolic links on the host are followed: the guest gets the file's content.
    pub fn add_file(&mut self, host: &Path, guest: &str) -> Result<(), InitramfsError> {
        let path = normalize(guest)?;
        let meta = std::fs::metadata(host).map_err(|source| InitramfsError::Source {
            path: host.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(InitramfsError::Source {
                path: host.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        if matches!(self.entries.get(&path), Some(e) if !matches!(e.content, Content::Dir)) {
            return Err(InitramfsError::Duplicate(format!("/{path}")));
        }
        // Readable now, so that a failure shows up as a clear error and not mid-write.
        File::open(host).map_err(|source| InitramfsError::Source {
            path: host.to_path_buf(),
            source,
        })?;
        self.insert(
            &path,
            meta.permissions().mode() & 0o7777,
            Content::File(host.to_path_buf()),
        );
        Ok(())
    }

    /// Writes the archive.
    pub fn write_to<W: Write>(&self, out: &mut W) -> Result<u64, InitramfsError> {
        let mut w = CountingWriter {
            inner: out,
            count: 0,
        };
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let ino = ino as u32 + 1;
            // Each kind of entry as (mode, links, device, data, data length): one write.
            let mut file;
            let mut bytes;
            let mut empty = io::empty();
            let (mode, links, dev, data, len): (u32, u32, (u32, u32), &mut dyn Read, u64) =
                match &entry.content {
                    Content::Dir => (S_IFDIR, 2, (0, 0), &mut empty, 0),
                    Content::Bytes(b) => {
                        bytes = *b;
                        (S_IFREG, 1, (0, 0), &mut bytes, b.len() as u64)
                    }
                    Content::File(host) => {
                        let src = |source| InitramfsError::Source {
                            path: host.clone(),
                            source,
                        };
                        file = File::open(host).map_err(src)?;
                        let len = file.metadata().map_err(src)?.len();
                        (S_IFREG, 1, (0, 0), &mut file, len)
                    }
                    Content::CharDev(major, minor) => (S_IFCHR, 1, (*major, *minor), &mut empty, 0),
                };
            write_entry(&mut w, path, ino, mode | entry.mode, links, dev, data, len)?;
        }
        write_entry(&mut w, "TRAILER!!!", 0, 0, 1, (0, 0), &mut io::empty(), 0)?;
        Ok(w.count)
    }

    /// The whole archive in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>, InitramfsError> {
        let mut buf = Vec::new();
        self.write_to(&mut buf)?;
        release_guest_init_pages();
        Ok(buf)
    }
}

/// Drops the pages of the embedded guest init (1.5 MiB of brig's read-only data) from this
/// process's resident set once it has been copied: a sandbox's VMM lives as long as the
/// sandbox, and every resident MiB counts per VM. The pages are clean and file-backed, so a
/// later read faults them in again from the page cache with the same contents.
fn release_guest_init_pages() {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return,
    };
    let start = (GUEST_INIT.as_ptr() as usize).next_multiple_of(page);
    let end = (GUEST_INIT.as_ptr() as usize + GUEST_INIT.len()) / page * page;
    if end > start {
        // SAFETY: [start, end) lies inside GUEST_INIT, a read-only static mapped from the
        // executable; MADV_DONTNEED on a private file mapping that was never written only
        // unmaps the pages, and any later access sees the file's (unchanged) bytes again.
        // No reference into the range is invalidated: its contents never change.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn pad4<W: Write>(w: &mut CountingWriter<'_, W>) -> io::Result<()> {
    let pad = (4 - (w.count % 4) as usize) % 4;
    w.write_all(&[0u8; 3][..pad])
}

/// One newc header, name and data. `len` must be exactly what `data` yields.
#[allow(clippy::too_many_arguments)]
fn write_entry<W: Write>(
    w: &mut CountingWriter<'_, W>,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    data: &mut dyn Read,
    len: u64,
) -> Result<(), InitramfsError> {
    let filesize = u32::try_from(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is larger than 4 GiB"),
        )
    })?;
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{filesize:08x}\
         {maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        maj = 0,
        min = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        namesize = name.len() + 1,
        check = 0,
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w)?;
    let copied = io::copy(&mut data.take(len), w)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{name} changed while being read"),
        )
        .into());
    }
    pad4(w)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// The digest build.rs embeds is the guest init's, so a new agent build is a new
    /// template key; brig's own initramfs is named by it, another archive by its content.
    #[test]
    fn initrd_identity_names_the_agent_build_or_the_archive() {
        use sha2::{Digest, Sha256};
        assert_eq!(
            GUEST_INIT_SHA256.trim(),
            format!("{:x}", Sha256::digest(GUEST_INIT))
        );
        assert!(Initrd::Guest.identity().contains(GUEST_INIT_SHA256.trim()));
        let bytes = Initramfs::with_init().to_bytes().unwrap();
        assert_eq!(*Initrd::Guest.bytes().unwrap(), bytes[..]);
        let archive = Initrd::Archive(b"abc".to_vec());
        assert_eq!(
            archive.identity(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(archive.identity(), Initrd::Guest.identity());
    }

    fn sample() -> (tempfile::TempDir, Initramfs) {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hello.sh");
        std::fs::write(&script, b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();
        let odd = dir.path().join("odd");
        std::fs::write(&odd, b"12345").unwrap(); // length not a multiple of 4
        let mut fs = Initramfs::with_init();
        fs.add_file(&script, "/usr/local/bin/hello").unwrap();
        fs.add_file(&odd, "//data/./odd").unwrap();
        (dir, fs)
    }

    /// GNU cpio (the reference reader) must list exactly what we wrote.
    #[test]
    fn gnu_cpio_lists_the_archive() {
        let (_dir, fs) = sample();
        let bytes = fs.to_bytes().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cpio (Debian package cpio) is needed for this test");
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        let line = |name: &str| {
            listing
                .lines()
                .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
                .unwrap_or_else(|| panic!("{name} missing from:\n{listing}"))
                .to_string()
        };
        assert!(line("init").starts_with("-rwxr-xr-x"));
        assert!(line("usr/local/bin/hello").starts_with("-rwxr-x---"));
        assert!(line("usr/local").starts_with("drwxr-xr-x"));
        assert!(line("tmp").starts_with("drwxrwxrwt"));
        assert!(line("dev/console").starts_with("crw-------"));
        assert!(line("dev/console").contains("5,"));
        assert!(line("data/odd").contains(" 5 "));
    }

    /// Extracting with GNU cpio gives back the exact file contents.
    #[test]
    fn gnu_cpio_extracts_identical_files() {
        let (_dir, fs) = sample();
        let bytes = fs.to_bytes().unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut child = Command::new("cpio")
            .args([
                "-i",
                "-d",
                "--quiet",
                "--no-absolute-filenames",
                "init",
                "usr/local/bin/hello",
                "data/odd",
            ])
            .current_dir(out.path())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(out.path().join("init")).unwrap(), GUEST_INIT);
        assert_eq!(
            std::fs::read(out.path().join("usr/local/bin/hello")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read(out.path().join("data/odd")).unwrap(),
            b"12345"
        );
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let mut fs = Initramfs::with_init();
        assert!(matches!(
            fs.add_file(Path::new("/no/such/file"), "/x"),
            Err(InitramfsError::Source { .. })
        ));
        assert!(matches!(
            fs.add_file(&file, "relative"),
            Err(InitramfsError::GuestPath(_))
        ));
        assert!(matches!(
            fs.add_file(&file, "/a/../b"),
            Err(InitramfsError::GuestPath(_))
        ));
        assert!(matches!(
            fs.add_file(&file, "/"),
            Err(InitramfsError::GuestPath(_))
        ));
        assert!(matches!(
            fs.add_file(dir.path(), "/x"),
            Err(InitramfsError::Source { .. })
        ));
        assert!(matches!(
            fs.add_file(&file, "/init"),
            Err(InitramfsError::Duplicate(_))
        ));
    }
}
