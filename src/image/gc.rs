//! Removing images and garbage: `rmi` drops names, `prune` deletes whatever no name
//! reaches (blobs, rootfs images, leftovers of interrupted pulls in `tmp/`).
//! Both hold the store lock exclusively, so no pull is adding content meanwhile.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use super::digest::Digest;
use super::names::{self, NameEntry};
use super::store::{remove_tree, IoContext, Store};
use super::{display_name, ImageError};

/// Something deleted and the bytes it freed.
#[derive(Debug)]
pub struct Freed {
    pub what: String,
    pub bytes: u64,
}

/// What `rmi` did.
#[derive(Debug, Default)]
pub struct Removed {
    pub untagged: Vec<String>,
    /// Config digests (image IDs) of images that lost their last name.
    pub deleted: Vec<Digest>,
}

/// Removes the names `entries` (from [`Store::lookup`]) and, for images left without
/// names, their rootfs and the blobs nothing else uses.
pub fn remove(store: &Store, entries: &[NameEntry]) -> Result<Removed, ImageError> {
    let _lock = store.lock_exclusive()?;
    let mut out = Removed::default();
    let left = names::update(store, |names| {
        names.retain(|n| !entries.contains(n));
        names.clone()
    })?;
    for e in entries {
        out.untagged.push(display_name(e));
    }
    let manifests: HashSet<&Digest> = entries.iter().map(|e| &e.manifest).collect();
    for m in manifests {
        if left.iter().any(|n| &n.manifest == m) {
            continue;
        }
        if let Some(e) = entries.iter().find(|e| &e.manifest == m) {
            out.deleted.push(e.config.clone());
        }
    }
    collect(store, &left)?;
    Ok(out)
}

/// Deletes everything no name reaches; returns what was freed.
pub fn prune(store: &Store) -> Result<Vec<Freed>, ImageError> {
    let _lock = store.lock_exclusive()?;
    let names = names::load(store)?;
    collect(store, &names)
}

fn reachable(store: &Store, names: &[NameEntry]) -> HashSet<Digest> {
    let mut keep = HashSet::new();
    for n in names {
        keep.insert(n.manifest.clone());
        keep.insert(n.config.clone());
        if let Some(i) = &n.index {
            keep.insert(i.clone());
        }
        if let Ok(m) = store.manifest(&n.manifest) {
            for l in m.layers() {
                if let Ok(d) = super::manifest::descriptor_digest(l) {
                    keep.insert(d);
                }
            }
        }
    }
    keep
}

fn size_of(path: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    walk(path)
}

fn collect(store: &Store, names: &[NameEntry]) -> Result<Vec<Freed>, ImageError> {
    let keep = reachable(store, names);
    let manifests: HashSet<&Digest> = names.iter().map(|n| &n.manifest).collect();
    let mut freed = Vec::new();
    for (d, path) in store.list_rootfs()? {
        if d.as_ref().is_some_and(|d| manifests.contains(d)) {
            continue;
        }
        let bytes = size_of(&path);
        fs::remove_file(&path).at(&path)?;
        freed.push(Freed {
            what: match d {
                Some(d) => format!("rootfs {}", d.short()),
                None => format!("rootfs leftover {}", path.display()),
            },
            bytes,
        });
    }
    for d in store.list_blobs()? {
        if keep.contains(&d) {
            continue;
        }
        let path = store.blob_path(&d);
        let bytes = size_of(&path);
        fs::remove_file(&path).at(&path)?;
        freed.push(Freed {
            what: format!("blob {d}"),
            bytes,
        });
    }
    // Leftovers of interrupted work: nothing is running (we hold the lock exclusively).
    let tmp = store.tmp_dir();
    for e in fs::read_dir(&tmp).at(&tmp)?.flatten() {
        let path = e.path();
        if e.file_name() == "partial" {
            for p in fs::read_dir(&path).at(&path)?.flatten() {
                let bytes = size_of(&p.path());
                fs::remove_file(p.path()).at(&p.path())?;
                freed.push(Freed {
                    what: format!("partial download {}", p.file_name().to_string_lossy()),
                    bytes,
                });
            }
            continue;
        }
        let bytes = size_of(&path);
        remove_tree(&path).at(&path)?;
        let _ = fs::remove_file(&path);
        freed.push(Freed {
            what: format!("leftover {}", e.file_name().to_string_lossy()),
            bytes,
        });
    }
    let locks = store.home().join("locks");
    for e in fs::read_dir(&locks).at(&locks)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("blob-") || n.starts_with("rootfs-") {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(freed)
}
