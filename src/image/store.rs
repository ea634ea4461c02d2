//! The content-addressed image store under `$BRIG_HOME`.
//!
//! ```text
//! $BRIG_HOME/
//!   blobs/sha256/<hex>          manifests, indexes, configs and layers, named by digest
//!   images/index.json           name:tag → manifest digest (see `names.rs`)
//!   rootfs/<manifest-hex>.erofs the flattened read-only root filesystem of one image
//!   locks/                      flock(2) files (regular files: fine on 9p, unlike sockets)
//!   tmp/                        partial downloads, staging trees, files being written
//! ```
//!
//! Every file reaches its final name by `rename` after an `fsync`, so a crash or Ctrl-C
//! leaves at most a stray file in `tmp/` (or a hidden `.tmp` name), never a short blob or rootfs
//! under its final name. Locks: every command that reads or adds content holds
//! `locks/store.lock` shared; `rmi` and `image prune`, which delete, hold it exclusive.
//! A blob download holds `locks/blob-<hex>.lock`, a rootfs build `locks/rootfs-<hex>.lock`,
//! so two processes pulling the same image wait for each other instead of racing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::FlockOperation;

use super::digest::{Digest, HashingWriter};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory of the store could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
    /// Content did not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    /// Content was shorter or longer than its descriptor says.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    /// A blob the image needs is not in the store.
    #[error("blob {0} is missing from the store")]
    MissingBlob(Digest),
    /// A metadata file is not what brig wrote.
    #[error("{0}: corrupt store file: {1}")]
    Corrupt(PathBuf, String),
    /// No home directory could be determined.
    #[error("cannot determine the brig home: set BRIG_HOME")]
    NoHome,
}

/// Adds the path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Io(path.to_path_buf(), e))
    }
}

/// The store's root directory: `$BRIG_HOME`, else `/var/lib/brig` for root, else
/// `$XDG_DATA_HOME/brig` (default `~/.local/share/brig`).
pub fn default_home() -> Result<PathBuf, StoreError> {
    if let Some(h) = std::env::var_os("BRIG_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/brig"));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(x).join("brig"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(StoreError::NoHome)?;
    Ok(PathBuf::from(home).join(".local/share/brig"))
}

/// An flock(2) held until dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary file name component for this process.
pub fn tmp_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The store.
#[derive(Debug)]
pub struct Store {
    home: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `home`.
    pub fn open(home: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let home = home.into();
        for sub in ["blobs/sha256", "images", "rootfs", "locks", "tmp/partial"] {
            let p = home.join(sub);
            fs::create_dir_all(&p).at(&p)?;
        }
        // Staging trees hold the layers' setuid binaries and device nodes with their
        // image owners: only the store's owner may reach them.
        let tmp = home.join("tmp");
        if fs::metadata(&tmp).at(&tmp)?.permissions().mode() & 0o777 != 0o700 {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700)).at(&tmp)?;
        }
        Ok(Self { home })
    }

    /// Opens the store at [`default_home`].
    pub fn open_default() -> Result<Self, StoreError> {
        Self::open(default_home()?)
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.home.join("blobs/sha256").join(d.hex())
    }

    pub fn rootfs_path(&self, manifest: &Digest) -> PathBuf {
        self.home
            .join("rootfs")
            .join(format!("{}.erofs", manifest.hex()))
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.home.join("tmp")
    }

    /// Where a download of `d` accumulates until verified (kept for resuming).
    pub fn partial_path(&self, d: &Digest) -> PathBuf {
        self.home.join("tmp/partial").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Reads a whole blob, refusing one above `limit` bytes, and checks its digest.
    pub fn read_blob(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(d);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob(d.clone()))
            }
            Err(e) => return Err(StoreError::Io(path, e)),
        };
        let mut buf = Vec::new();
        f.take(limit + 1).read_to_end(&mut buf).at(&path)?;
        if buf.len() as u64 > limit {
            return Err(StoreError::Corrupt(
                path,
                format!("larger than {limit} bytes"),
            ));
        }
        let actual = Digest::of(&buf);
        if &actual != d {
            return Err(StoreError::DigestMismatch {
                what: path.display().to_string(),
                expected: d.clone(),
                actual,
            });
        }
        Ok(buf)
    }

    /// Stores `bytes` as a blob (atomically); returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(bytes);
        if self.has_blob(&d) {
            return Ok(d);
        }
        let mut w = self.blob_writer()?;
        w.write_all(bytes).at(&w.path)?;
        w.commit(&self.blob_path(&d), Some(&d), None, "blob")?;
        Ok(d)
    }

    /// Copies a blob from a reader, verifying digest and size, unless already present.
    pub fn put_blob_from(
        &self,
        reader: &mut dyn Read,
        expected: &Digest,
        size: Option<u64>,
        what: &str,
    ) -> Result<(), StoreError> {
        if self.has_blob(expected) {
            return Ok(());
        }
        let mut w = self.blob_writer()?;
        let path = w.path.clone();
        io::copy(reader, &mut w).at(&path)?;
        w.commit(&self.blob_path(expected), Some(expected), size, what)
    }

    /// A new temporary file in `tmp/` for streaming a blob into.
    pub fn blob_writer(&self) -> Result<AtomicFile, StoreError> {
        AtomicFile::create(self.tmp_dir().join(format!("blob-{}", tmp_suffix())))
    }

    fn lock_file(&self, name: &str, op: FlockOperation) -> Result<Lock, StoreError> {
        let path = self.home.join("locks").join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .at(&path)?;
        rustix::fs::flock(&file, op)
            .map_err(io::Error::from)
            .at(&path)?;
        Ok(Lock { _file: file })
    }

    /// Held by every command that reads or adds content.
    pub fn lock_shared(&self) -> Result<Lock, StoreError> {
        self.lock_file("store.lock", FlockOperation::LockShared)
    }

    /// Held by commands that delete content.
    pub fn lock_exclusive(&self) -> Result<Lock, StoreError> {
        self.lock_file("store.lock", FlockOperation::LockExclusive)
    }

    /// Serializes downloads of one blob.
    pub fn lock_blob(&self, d: &Digest) -> Result<Lock, StoreError> {
        self.lock_file(
            &format!("blob-{}.lock", d.hex()),
            FlockOperation::LockExclusive,
        )
    }

    /// Serializes builds of one rootfs.
    pub fn lock_rootfs(&self, manifest: &Digest) -> Result<Lock, StoreError> {
        self.lock_file(
            &format!("rootfs-{}.lock", manifest.hex()),
            FlockOperation::LockExclusive,
        )
    }

    /// Serializes read-modify-write of the name index.
    pub fn lock_names(&self) -> Result<Lock, StoreError> {
        self.lock_file("names.lock", FlockOperation::LockExclusive)
    }

    /// All blob digests in the store.
    pub fn list_blobs(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.home.join("blobs/sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            if let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// All rootfs images: (manifest digest, path).
    pub fn list_rootfs(&self) -> Result<Vec<(Option<Digest>, PathBuf)>, StoreError> {
        let dir = self.home.join("rootfs");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let d = name
                .strip_suffix(".erofs")
                .and_then(|h| Digest::from_hex(h).ok());
            out.push((d, e.path()));
        }
        Ok(out)
    }
}

/// A file written under a temporary name, renamed to its final name once complete.
/// Dropped without [`AtomicFile::commit`], it removes itself.
pub struct AtomicFile {
    writer: Option<HashingWriter<io::BufWriter<File>>>,
    pub path: PathBuf,
    committed: bool,
}

impl AtomicFile {
    pub fn create(path: PathBuf) -> Result<Self, StoreError> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .at(&path)?;
        Ok(Self {
            writer: Some(HashingWriter::new(io::BufWriter::with_capacity(1 << 20, f))),
            path,
            committed: false,
        })
    }

    /// The digest of what was written so far.
    pub fn digest_so_far(&self) -> Digest {
        self.writer
            .as_ref()
            .map(|w| w.digest())
            .unwrap_or_else(|| Digest::of(b""))
    }

    /// Checks digest and size, then throws the file away (the content is already stored).
    pub fn verify_and_discard(
        mut self,
        expected: &Digest,
        size: Option<u64>,
        what: &str,
    ) -> Result<(), StoreError> {
        let Some(w) = self.writer.take() else {
            return Ok(());
        };
        let (_, actual, count) = w.finish();
        let _ = fs::remove_file(&self.path);
        check(expected, &actual, size, count, what)
    }

    /// Checks digest and size if given, syncs, and renames to `dest`.
    pub fn commit(
        mut self,
        dest: &Path,
        expected: Option<&Digest>,
        size: Option<u64>,
        what: &str,
    ) -> Result<(), StoreError> {
        let Some(w) = self.writer.take() else {
            return Ok(());
        };
        let (buf, actual, count) = w.finish();
        let file = buf
            .into_inner()
            .map_err(|e| e.into_error())
            .at(&self.path)?;
        match expected {
            Some(e) => check(e, &actual, size, count, what)?,
            None => check(&actual, &actual, size, count, what)?,
        }
        file.sync_all().at(&self.path)?;
        drop(file);
        fs::rename(&self.path, dest).at(dest)?;
        self.committed = true;
        sync_parent(dest);
        Ok(())
    }
}

impl std::fmt::Debug for AtomicFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AtomicFile({})", self.path.display())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.writer {
            Some(w) => w.write(buf),
            None => Err(io::Error::other("file already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.writer {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn check(
    expected: &Digest,
    actual: &Digest,
    size: Option<u64>,
    count: u64,
    what: &str,
) -> Result<(), StoreError> {
    if let Some(s) = size {
        if s != count {
            return Err(StoreError::SizeMismatch {
                what: what.to_string(),
                expected: s,
                actual: count,
            });
        }
    }
    if expected != actual {
        return Err(StoreError::DigestMismatch {
            what: what.to_string(),
            expected: expected.clone(),
            actual: actual.clone(),
        });
    }
    Ok(())
}

/// Makes a rename durable (best effort: some file systems refuse fsync on directories).
pub fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Writes a small file atomically ([`crate::atomic`]), its directory synced after the rename
/// as every file of the store is.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    crate::atomic::write(path, bytes, 0o644).at(path)?;
    sync_parent(path);
    Ok(())
}

/// Removes a directory tree even where it holds directories without write or search
/// permission (as layers may make them).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(path);
            match fs::remove_dir_all(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        }
    }
}

fn make_writable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    if let Ok(rd) = fs::read_dir(path) {
        for e in rd.flatten() {
            make_writable(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mode = fs::metadata(store.tmp_dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "staging is private");
        let d = store.put_blob(b"hello").unwrap();
        assert_eq!(store.read_blob(&d, 100).unwrap(), b"hello");
        let wrong = Digest::of(b"other");
        let err = store
            .put_blob_from(&mut &b"hello"[..], &wrong, Some(5), "test")
            .unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }));
        assert!(!store.has_blob(&wrong));
        let err = store
            .put_blob_from(&mut &b"hell"[..], &Digest::of(b"hello!"), Some(6), "t")
            .unwrap_err();
        assert!(matches!(err, StoreError::SizeMismatch { .. }));
        // Nothing is left behind in tmp/.
        let left: Vec<_> = fs::read_dir(store.tmp_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "partial")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
