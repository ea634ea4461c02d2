//! Compiled seccomp filters kept under `$BRIG_HOME/cache/seccomp`, so that a run does not
//! parse and compile docker's ~30 KB profile each time: measured with `perf record` in
//! `scripts/with-kvm`, that compile was ~28 ms of a restored `brig run IMG true` (nested
//! emulation; well under 1 ms natively, where it is still CPU every run pays for nothing).
//!
//! An entry's name is the SHA-256 of what the filter is a function of: the profile's text,
//! the bounding capabilities it is resolved for, and the brig executable that compiles it
//! (its device, inode, size and modification time: a rebuilt or upgraded brig, whose
//! compiler may differ, never reads an older one's filters). An entry holds a magic, the
//! filter's packed instructions and the SHA-256 of both: a truncated or damaged one is
//! compiled again and rewritten. The directory is as trusted as the templates beside it
//! (whose memory every sandbox runs): only brig's user can write it. It holds at most
//! [`MAX_ENTRIES`] filters; the oldest go first.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{compile_profile, SecurityError};

const MAGIC: &[u8; 8] = b"BRIGBPF1";
/// Enough for every profile a host uses: default, `--cap-add` variants, a few files.
pub const MAX_ENTRIES: usize = 64;

/// The compiled-filter cache of one brig home.
#[derive(Debug, Clone)]
pub struct FilterCache {
    dir: PathBuf,
    /// What identifies the running brig's compiler (see the module's doc); `None` when it
    /// cannot be known (no /proc): then nothing is cached.
    compiler: Option<Vec<u8>>,
}

impl FilterCache {
    /// The cache under `home` (brig's home: `$BRIG_HOME`).
    pub fn at(home: &Path) -> Self {
        Self::with_compiler(home.join("cache/seccomp"), executable_identity())
    }

    fn with_compiler(dir: PathBuf, compiler: Option<Vec<u8>>) -> Self {
        Self { dir, compiler }
    }

    /// `json` compiled for `bounding` (as [`compile_profile`]), from the cache when it holds
    /// it; compiled and stored otherwise. A cache that cannot be read or written only costs
    /// the compile.
    pub fn compile(&self, json: &str, bounding: u64) -> Result<Vec<u64>, SecurityError> {
        let Some(compiler) = &self.compiler else {
            return compile_profile(json, bounding);
        };
        let mut key = Sha256::new();
        key.update(b"brig seccomp filter\0");
        key.update((compiler.len() as u64).to_le_bytes());
        key.update(compiler);
        key.update(bounding.to_le_bytes());
        key.update(json.as_bytes());
        let path = self.dir.join(format!("{:x}", key.finalize()));
        if let Some(filter) = std::fs::read(&path).ok().and_then(|b| decode(&b)) {
            return Ok(filter);
        }
        let filter = compile_profile(json, bounding)?;
        self.store(&path, &filter);
        Ok(filter)
    }

    fn store(&self, path: &Path, filter: &[u64]) {
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| crate::atomic::write(path, &encode(filter), 0o600));
        if let Err(e) = written {
            tracing::debug!("seccomp filter cache {}: {e}", self.dir.display());
            return;
        }
        self.trim();
    }

    /// Removes the oldest entries past [`MAX_ENTRIES`].
    fn trim(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<_> = entries
            .flatten()
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if files.len() <= MAX_ENTRIES {
            return;
        }
        files.sort();
        for (_, old) in &files[..files.len() - MAX_ENTRIES] {
            let _ = std::fs::remove_file(old);
        }
    }
}

/// The running executable's device, inode, size and modification time.
fn executable_identity() -> Option<Vec<u8>> {
    let m = std::fs::metadata("/proc/self/exe").ok()?;
    let mut id = Vec::with_capacity(40);
    for v in [m.dev(), m.ino(), m.size()] {
        id.extend_from_slice(&v.to_le_bytes());
    }
    id.extend_from_slice(&m.mtime().to_le_bytes());
    id.extend_from_slice(&m.mtime_nsec().to_le_bytes());
    Some(id)
}

/// An entry's bytes: magic, instructions (u64 LE each), SHA-256 of both.
fn encode(filter: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + filter.len() * 8 + 32);
    out.extend_from_slice(MAGIC);
    for insn in filter {
        out.extend_from_slice(&insn.to_le_bytes());
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// The filter in an entry's bytes, or `None` when they are not a whole, intact entry.
fn decode(bytes: &[u8]) -> Option<Vec<u64>> {
    let body_len = bytes.len().checked_sub(32)?;
    let (body, sum) = bytes.split_at(body_len);
    let insns = body.strip_prefix(MAGIC)?;
    if insns.is_empty() || insns.len() % 8 != 0 || Sha256::digest(body).as_slice() != sum {
        return None;
    }
    Some(
        insns
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::security::{caps, profile::DEFAULT_PROFILE};

    /// docker's default bounding set.
    const DEFAULT_CAPS: u64 = 0xa80425fb;

    fn cache(dir: &Path, compiler: &[u8]) -> FilterCache {
        FilterCache::with_compiler(dir.to_path_buf(), Some(compiler.to_vec()))
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_cached_filter_is_the_compiled_one_and_is_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), b"brig 1");
        let compiled = compile_profile(DEFAULT_PROFILE, DEFAULT_CAPS).unwrap();
        assert_eq!(c.compile(DEFAULT_PROFILE, DEFAULT_CAPS).unwrap(), compiled);
        let files = entries(tmp.path());
        assert_eq!(files.len(), 1);
        // Read back: an entry whose body is replaced by another valid filter is what is
        // returned, so the second call did read the file rather than compile.
        let other = vec![7u64, 8, 9];
        std::fs::write(&files[0], encode(&other)).unwrap();
        assert_eq!(c.compile(DEFAULT_PROFILE, DEFAULT_CAPS).unwrap(), other);
    }

    #[test]
    fn the_key_covers_profile_capabilities_and_compiler() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), b"brig 1");
        c.compile(DEFAULT_PROFILE, DEFAULT_CAPS).unwrap();
        c.compile(DEFAULT_PROFILE, caps::ALL).unwrap();
        cache(tmp.path(), b"brig 2")
            .compile(DEFAULT_PROFILE, DEFAULT_CAPS)
            .unwrap();
        let custom = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[]}"#;
        c.compile(custom, DEFAULT_CAPS).unwrap();
        assert_eq!(entries(tmp.path()).len(), 4);
    }

    #[test]
    fn a_damaged_entry_is_compiled_again_and_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), b"brig 1");
        let good = c.compile(DEFAULT_PROFILE, DEFAULT_CAPS).unwrap();
        let path = entries(tmp.path()).remove(0);
        let intact = std::fs::read(&path).unwrap();
        let mut flipped = intact.clone();
        flipped[100] ^= 1;
        for damaged in [
            Vec::new(),
            intact[..intact.len() - 1].to_vec(),
            intact[..40].to_vec(),
            flipped,
        ] {
            std::fs::write(&path, damaged).unwrap();
            assert_eq!(c.compile(DEFAULT_PROFILE, DEFAULT_CAPS).unwrap(), good);
            assert_eq!(std::fs::read(&path).unwrap(), intact);
        }
    }

    #[test]
    fn an_unwritable_cache_or_unknown_compiler_still_compiles() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let good = compile_profile(DEFAULT_PROFILE, DEFAULT_CAPS).unwrap();
        let blocked = FilterCache::with_compiler(file.join("seccomp"), Some(b"x".to_vec()));
        assert_eq!(
            blocked.compile(DEFAULT_PROFILE, DEFAULT_CAPS).unwrap(),
            good
        );
        let unknown = FilterCache::with_compiler(tmp.path().join("c"), None);
        assert_eq!(
            unknown.compile(DEFAULT_PROFILE, DEFAULT_CAPS).unwrap(),
            good
        );
        assert!(!tmp.path().join("c").exists());
        // A profile that does not compile is an error, cached or not.
        assert!(cache(tmp.path(), b"b").compile("{", DEFAULT_CAPS).is_err());
    }

    #[test]
    fn the_oldest_entries_go_past_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), b"brig 1");
        let old = tmp.path().join("0-old");
        std::fs::create_dir_all(tmp.path()).unwrap();
        std::fs::write(&old, b"x").unwrap();
        let long_ago = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        for i in 0..MAX_ENTRIES as u64 {
            c.compile(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[]}"#, i)
                .unwrap();
        }
        assert_eq!(entries(tmp.path()).len(), MAX_ENTRIES);
        assert!(!old.exists());
    }
}
