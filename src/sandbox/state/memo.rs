//! The last sandbox config this process read or wrote, kept with the identity of the file
//! it is in, so that reading the same unchanged `config.json` again costs a `stat`, not a
//! parse: a `brig run` reads its sandbox's config where the sandbox is created, where its
//! host side is set up and where `--rm` removes it, and each parse of the ~18 KB file (the
//! compiled seccomp filter is most of it) took ~9 ms under nested emulation (`perf record`
//! in `scripts/with-kvm`).
//!
//! Every writer of a config (this process or another) replaces the file by a rename, which
//! gives it a new inode; the identity also holds its size and modification time, so a
//! changed file is never mistaken for the remembered one.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::SandboxConfig;

/// A file's device, inode, size and modification time (seconds, nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId([u64; 3], i64, i64);

impl FileId {
    fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self(
            [m.dev(), m.ino(), m.size()],
            m.mtime(),
            m.mtime_nsec(),
        ))
    }
}

static LAST: Mutex<Option<(PathBuf, FileId, SandboxConfig)>> = Mutex::new(None);

/// The config remembered for `path`, when the file there is still the one it came from.
pub(super) fn get(path: &Path) -> Option<SandboxConfig> {
    let id = FileId::of(path)?;
    let last = LAST.lock().ok()?;
    match &*last {
        Some((p, i, config)) if p == path && *i == id => Some(config.clone()),
        _ => None,
    }
}

/// Remembers `config` as what the file at `path` holds now.
pub(super) fn put(path: &Path, config: &SandboxConfig) {
    let Some(id) = FileId::of(path) else {
        return;
    };
    if let Ok(mut last) = LAST.lock() {
        *last = Some((path.to_path_buf(), id, config.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::config, Sandbox};

    #[test]
    fn a_config_changed_on_disk_is_read_again() {
        let home = tempfile::tempdir().unwrap();
        let s = Sandbox::create(home.path(), &config(&"e".repeat(64), "one")).unwrap();
        assert_eq!(s.config().unwrap().name, "one");
        // Replaced by another process (a new inode), as every brig writer does.
        let mut c = config(&"e".repeat(64), "two");
        let path = s.dir.join("config.json");
        let tmp = s.dir.join("config.json.new");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(s.config().unwrap().name, "two");
        // Rewritten in place, one byte longer.
        c.name = "three".into();
        std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
        assert_eq!(s.config().unwrap().name, "three");
        // Written through the sandbox: read back as written.
        c.name = "four".into();
        s.write_config(&c).unwrap();
        assert_eq!(s.config().unwrap().name, "four");
        // Gone: an error, not the remembered config.
        std::fs::remove_file(&path).unwrap();
        assert!(s.config().is_err());
    }
}
