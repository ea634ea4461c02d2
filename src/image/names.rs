//! The name index: which manifest each `repository:tag` points at
//! (`$BRIG_HOME/images/index.json`, rewritten atomically under `locks/names.lock`).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use super::digest::Digest;
use super::store::{write_atomic, IoContext, Store, StoreError};

/// One name of an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NameEntry {
    /// Fully qualified repository (`docker.io/library/busybox`); empty for an untagged load.
    pub repository: String,
    /// Tag, or none for an image pulled by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The platform-specific manifest (names the rootfs).
    pub manifest: Digest,
    /// The index or manifest list it was chosen from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
    /// The image config (docker's image ID).
    pub config: Digest,
    /// When the name was set (seconds since the epoch).
    #[serde(default)]
    pub added: u64,
}

impl NameEntry {
    pub fn new(
        repository: String,
        tag: Option<String>,
        manifest: Digest,
        index: Option<Digest>,
        config: Digest,
    ) -> Self {
        let added = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            repository,
            tag,
            manifest,
            index,
            config,
            added,
        }
    }

    fn same_name(&self, other: &NameEntry) -> bool {
        self.repository == other.repository
            && self.tag == other.tag
            && (self.tag.is_some() || self.manifest == other.manifest)
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct IndexFile {
    images: Vec<NameEntry>,
}

fn path(store: &Store) -> PathBuf {
    store.home().join("images/index.json")
}

/// All names.
pub fn load(store: &Store) -> Result<Vec<NameEntry>, StoreError> {
    let p = path(store);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice::<IndexFile>(&b)
            .map(|f| f.images)
            .map_err(|e| StoreError::Corrupt(p, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).at(&p),
    }
}

/// Changes the names under the index lock; returns what `f` returns.
pub fn update<T>(store: &Store, f: impl FnOnce(&mut Vec<NameEntry>) -> T) -> Result<T, StoreError> {
    let _lock = store.lock_names()?;
    let mut names = load(store)?;
    let out = f(&mut names);
    let bytes = serde_json::to_vec_pretty(&IndexFile { images: names })
        .map_err(|e| StoreError::Corrupt(path(store), e.to_string()))?;
    write_atomic(&path(store), &bytes)?;
    Ok(out)
}

/// Sets a name, replacing whatever it pointed at; returns the previous manifest, if any.
/// A name that already points at the same image is left alone (no write, no fsync).
pub fn set(store: &Store, entry: NameEntry) -> Result<Option<Digest>, StoreError> {
    let unchanged = |n: &NameEntry| {
        n.same_name(&entry) && n.manifest == entry.manifest && n.index == entry.index
    };
    if load(store)?.iter().any(unchanged) {
        return Ok(Some(entry.manifest));
    }
    update(store, |names| {
        let old = names
            .iter()
            .position(|n| n.same_name(&entry))
            .map(|i| names.remove(i).manifest);
        names.push(entry);
        old
    })
}
