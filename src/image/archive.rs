//! `load` and `import`: images from files instead of a registry.
//!
//! - A docker-archive (`docker save`, `podman save`): a tar with `manifest.json`
//!   (`[{Config, RepoTags, Layers}]`), the config JSON and one tar per layer (plain or, in
//!   newer saves, under `blobs/sha256/`, with symlinks from the legacy paths). brig stores
//!   each file by its digest, checks each uncompressed layer against the config's
//!   `rootfs.diff_ids`, and writes a Docker schema 2 manifest for it.
//! - An OCI image layout (`skopeo copy ... oci:DIR:TAG`), as a directory or a tar
//!   (oci-archive): `index.json` names manifests; every blob is verified against its name
//!   while it is copied. Names come from the `org.opencontainers.image.ref.name` (or
//!   `io.containerd.image.name`) annotation, or from the name given on the command line.
//!
//! Archives are read in one pass: every file goes into the store under its digest as it
//! streams by (small JSON files stay in memory), and the archive's structure is resolved
//! afterwards.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path};

use oci_spec::image::{ImageIndex, ImageManifest};

use super::digest::Digest;
use super::manifest::{self, Document, Platform, DOCKER_CONFIG, DOCKER_LAYER_TAR, DOCKER_MANIFEST};
use super::names::{self, NameEntry};
use super::reference::Reference;
use super::store::{IoContext, Store, StoreError};
use super::unpack::Limits;
use super::{rootfs, ImageError, ImageRecord, MAX_JSON_BLOB};

/// Errors about archives and layouts.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive lacks a file it must have.
    #[error("{0}: not a {1} (no {2})")]
    Missing(String, &'static str, String),
    /// A metadata file in the archive is malformed.
    #[error("{0}: malformed {1}: {2}")]
    Malformed(String, String, String),
    /// The archive is not a readable tar.
    #[error("{0}: not a readable tar archive: {1}")]
    Tar(String, io::Error),
    /// A layer does not match the diff ID the config lists for it.
    #[error("{0}: layer {1} does not match the config's diff_id {2}")]
    DiffId(String, String, String),
    /// The archive holds no image.
    #[error("{0}: the archive holds no image")]
    Empty(String),
    /// One name was given for several images.
    #[error("{0}: holds {1} images; a name can only be given to one")]
    SeveralImages(String, usize),
}

/// What a file in an archive became.
enum Member {
    /// A small file kept in memory.
    Bytes(Vec<u8>),
    /// A file stored as a blob.
    Blob(Digest, u64),
    /// A symlink or hard link to another member (path within the archive).
    Link(String),
}

/// The files of an archive, by normalized path.
struct Members {
    source: String,
    map: HashMap<String, Member>,
}

fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

impl Members {
    /// Reads a (possibly compressed) tar, storing large members as blobs.
    fn read(store: &Store, path: &Path) -> Result<Self, ImageError> {
        let source = path.display().to_string();
        let reader = super::unpack::open_layer(path).at(path)?;
        let mut archive = tar::Archive::new(reader);
        let tar_err = |e| ArchiveError::Tar(source.clone(), e);
        let mut map = HashMap::new();
        for entry in archive.entries().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            let Some(name) = entry.path().ok().and_then(|p| normalize(&p)) else {
                continue;
            };
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let Some(target) = entry.link_name().ok().flatten() else {
                    continue;
                };
                let base = if kind.is_symlink() {
                    Path::new(&name)
                        .parent()
                        .unwrap_or(Path::new(""))
                        .join(&target)
                } else {
                    target.into_owned()
                };
                if let Some(t) = normalize(&base) {
                    map.insert(name, Member::Link(t));
                }
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let size = entry.size();
            let small = size <= MAX_JSON_BLOB
                && (name.ends_with(".json") || name == "repositories" || name == "oci-layout");
            if small {
                let mut buf = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut buf).map_err(tar_err)?;
                map.insert(name, Member::Bytes(buf));
                continue;
            }
            // Blob paths name their digest: verify against it; other files are stored by
            // the digest of what they hold.
            let expected = name
                .strip_prefix("blobs/sha256/")
                .and_then(|h| Digest::from_hex(h).ok());
            let mut w = store.blob_writer()?;
            let tmp = w.path.clone();
            io::copy(&mut entry, &mut w).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    ImageError::Archive(tar_err(e))
                } else {
                    StoreError::Io(tmp.clone(), e).into()
                }
            })?;
            let digest = match expected {
                Some(d) => d,
                None => hash_of_tmp(&w)?,
            };
            if store.has_blob(&digest) {
                w.verify_and_discard(&digest, Some(size), &name)?;
            } else {
                w.commit(&store.blob_path(&digest), Some(&digest), Some(size), &name)?;
            }
            map.insert(name, Member::Blob(digest, size));
        }
        Ok(Self { source, map })
    }

    /// Follows links (a few hops at most) to a member.
    fn get(&self, name: &str) -> Option<&Member> {
        let mut name = normalize(Path::new(name))?;
        for _ in 0..8 {
            match self.map.get(&name)? {
                Member::Link(t) => name = t.clone(),
                m => return Some(m),
            }
        }
        None
    }

    fn bytes(&self, store: &Store, name: &str) -> Result<Vec<u8>, ImageError> {
        match self.get(name) {
            Some(Member::Bytes(b)) => Ok(b.clone()),
            Some(Member::Blob(d, _)) => Ok(store.read_blob(d, MAX_JSON_BLOB)?),
            _ => Err(
                ArchiveError::Missing(self.source.clone(), "image archive", name.to_string())
                    .into(),
            ),
        }
    }

    /// The member as a blob (storing in-memory members), with its size.
    fn blob(&self, store: &Store, name: &str) -> Result<(Digest, u64), ImageError> {
        match self.get(name) {
            Some(Member::Blob(d, s)) => Ok((d.clone(), *s)),
            Some(Member::Bytes(b)) => Ok((store.put_blob(b)?, b.len() as u64)),
            _ => Err(
                ArchiveError::Missing(self.source.clone(), "image archive", name.to_string())
                    .into(),
            ),
        }
    }
}

/// The digest of what has been written to `w` so far.
fn hash_of_tmp(w: &super::store::AtomicFile) -> Result<Digest, ImageError> {
    Ok(w.digest_so_far())
}

/// One image brought in: its names and record.
#[derive(Debug)]
pub struct Loaded {
    pub names: Vec<String>,
    pub record: ImageRecord,
}

/// `brig load`: a docker-archive tarball.
pub fn load(store: &Store, path: &Path, limits: Limits) -> Result<Vec<Loaded>, ImageError> {
    let _shared = store.lock_shared()?;
    let members = Members::read(store, path)?;
    let src = members.source.clone();
    if members.get("manifest.json").is_none() {
        if members.get("index.json").is_some() {
            // An OCI archive handed to load: accept it as docker does.
            return import_members(store, &members, None, limits);
        }
        return Err(ArchiveError::Missing(src, "docker-archive", "manifest.json".into()).into());
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let bytes = members.bytes(store, "manifest.json")?;
    let entries: Vec<Entry> = serde_json::from_slice(&bytes)
        .map_err(|e| ArchiveError::Malformed(src.clone(), "manifest.json".into(), e.to_string()))?;
    if entries.is_empty() {
        return Err(ArchiveError::Empty(src).into());
    }
    let mut out = Vec::new();
    for e in entries {
        let (config_digest, config_size) = members.blob(store, &e.config)?;
        let cfg = store.config(&config_digest)?;
        let diff_ids = cfg.rootfs().diff_ids().clone();
        let mut layers = Vec::new();
        for (i, l) in e.layers.iter().enumerate() {
            let (d, size) = members.blob(store, l)?;
            let compressed = {
                let mut head = [0u8; 4];
                let n = File::open(store.blob_path(&d))
                    .and_then(|mut f| f.read(&mut head))
                    .at(&store.blob_path(&d))?;
                n >= 2 && (head[..2] == [0x1f, 0x8b] || head == [0x28, 0xb5, 0x2f, 0xfd])
            };
            if !compressed {
                if let Some(want) = diff_ids.get(i) {
                    if want.strip_prefix("sha256:") != Some(d.hex()) {
                        return Err(
                            ArchiveError::DiffId(src.clone(), l.clone(), want.to_string()).into(),
                        );
                    }
                }
            }
            let media = if compressed {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            } else {
                DOCKER_LAYER_TAR
            };
            layers.push(
                serde_json::json!({"mediaType": media, "size": size, "digest": d.to_string()}),
            );
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": config_size, "digest": config_digest.to_string()},
            "layers": layers,
        });
        let mbytes = serde_json::to_vec(&manifest)
            .map_err(|e| ArchiveError::Malformed(src.clone(), "manifest".into(), e.to_string()))?;
        let mdigest = store.put_blob(&mbytes)?;
        let tags = e.repo_tags.unwrap_or_default();
        out.push(finish(
            store,
            &mdigest,
            None,
            &config_digest,
            &tags,
            limits,
        )?);
    }
    Ok(out)
}

/// `brig import`: an OCI layout directory or oci-archive; `name` names the image.
pub fn import(
    store: &Store,
    path: &Path,
    name: Option<&str>,
    limits: Limits,
) -> Result<Vec<Loaded>, ImageError> {
    let _shared = store.lock_shared()?;
    if path.is_dir() {
        let members = layout_members(store, path)?;
        import_members(store, &members, name, limits)
    } else {
        let members = Members::read(store, path)?;
        import_members(store, &members, name, limits)
    }
}

/// Reads a layout directory's index, copying blobs in as they are needed.
fn layout_members(store: &Store, dir: &Path) -> Result<Members, ImageError> {
    let source = dir.display().to_string();
    let index_path = dir.join("index.json");
    let index = std::fs::read(&index_path).map_err(|_| {
        ArchiveError::Missing(source.clone(), "OCI image layout", "index.json".into())
    })?;
    let mut map = HashMap::new();
    map.insert("index.json".to_string(), Member::Bytes(index));
    let blobs = dir.join("blobs/sha256");
    if let Ok(rd) = std::fs::read_dir(&blobs) {
        for e in rd.flatten() {
            let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|h| Digest::from_hex(h).ok())
            else {
                continue;
            };
            let p = e.path();
            if !store.has_blob(&d) {
                let size = std::fs::metadata(&p).at(&p)?.len();
                let mut f = File::open(&p).at(&p)?;
                store.put_blob_from(&mut f, &d, Some(size), &p.display().to_string())?;
            }
            let size = std::fs::metadata(store.blob_path(&d))
                .map(|m| m.len())
                .unwrap_or(0);
            map.insert(format!("blobs/sha256/{}", d.hex()), Member::Blob(d, size));
        }
    }
    Ok(Members { source, map })
}

fn import_members(
    store: &Store,
    members: &Members,
    name: Option<&str>,
    limits: Limits,
) -> Result<Vec<Loaded>, ImageError> {
    let src = members.source.clone();
    let index_bytes = members.bytes(store, "index.json")?;
    let index: ImageIndex = serde_json::from_slice(&index_bytes)
        .map_err(|e| ArchiveError::Malformed(src.clone(), "index.json".into(), e.to_string()))?;
    if index.manifests().is_empty() {
        return Err(ArchiveError::Empty(src).into());
    }
    if name.is_some() && index.manifests().len() > 1 {
        return Err(ArchiveError::SeveralImages(src, index.manifests().len()).into());
    }
    let mut out = Vec::new();
    for desc in index.manifests() {
        let d = manifest::descriptor_digest(desc)?;
        let bytes = members_blob_bytes(store, members, &d)?;
        let (mdigest, mbytes, index_digest) =
            match manifest::parse(&bytes, desc.media_type().as_ref())? {
                Document::Manifest(_) => (d.clone(), bytes, None),
                Document::Index(idx) => {
                    let sel = manifest::select_platform(&idx, &Platform::host())?;
                    let md = manifest::descriptor_digest(&sel)?;
                    (
                        md.clone(),
                        members_blob_bytes(store, members, &md)?,
                        Some(d.clone()),
                    )
                }
            };
        let m: ImageManifest = match manifest::parse(&mbytes, "")? {
            Document::Manifest(m) => *m,
            Document::Index(_) => {
                return Err(manifest::ManifestError::UnsupportedMediaType(
                    "nested image index".into(),
                    "",
                )
                .into())
            }
        };
        let config_digest = manifest::descriptor_digest(m.config())?;
        for blob in std::iter::once(m.config()).chain(m.layers().iter()) {
            let bd = manifest::descriptor_digest(blob)?;
            if !store.has_blob(&bd) {
                return Err(ArchiveError::Missing(
                    src.clone(),
                    "complete OCI layout",
                    format!("blob {bd}"),
                )
                .into());
            }
        }
        let annotations = desc.annotations().clone().unwrap_or_default();
        let tags: Vec<String> = match name {
            Some(n) => vec![n.to_string()],
            None => annotations
                .get("io.containerd.image.name")
                .or_else(|| annotations.get("org.opencontainers.image.ref.name"))
                .map(|n| {
                    if n.contains('/') || n.contains(':') || n.contains('@') {
                        n.clone()
                    } else {
                        format!("localhost/{}:{n}", layout_name(&src))
                    }
                })
                .into_iter()
                .collect(),
        };
        out.push(finish(
            store,
            &mdigest,
            index_digest,
            &config_digest,
            &tags,
            limits,
        )?);
    }
    Ok(out)
}

/// A repository name from a layout's path: `/tmp/My Image.tar` → `my-image`.
fn layout_name(src: &str) -> String {
    let base = Path::new(src)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = base.strip_suffix(".tar").unwrap_or(&base);
    let s: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "image".into()
    } else {
        s
    }
}

fn members_blob_bytes(store: &Store, members: &Members, d: &Digest) -> Result<Vec<u8>, ImageError> {
    let bytes = match members.get(&format!("blobs/sha256/{}", d.hex())) {
        Some(Member::Bytes(b)) => b.clone(),
        _ => store.read_blob(d, MAX_JSON_BLOB)?,
    };
    if &Digest::of(&bytes) != d {
        return Err(StoreError::DigestMismatch {
            what: format!("{} blob", members.source),
            expected: d.clone(),
            actual: Digest::of(&bytes),
        }
        .into());
    }
    store.put_blob(&bytes)?;
    Ok(bytes)
}

/// Builds the rootfs and records the names of one loaded image.
fn finish(
    store: &Store,
    manifest_digest: &Digest,
    index_digest: Option<Digest>,
    config_digest: &Digest,
    tags: &[String],
    limits: Limits,
) -> Result<Loaded, ImageError> {
    let m = store.manifest(manifest_digest)?;
    let layers: Vec<Digest> = m
        .layers()
        .iter()
        .map(manifest::descriptor_digest)
        .collect::<Result<_, _>>()?;
    rootfs::ensure::<ImageError>(store, manifest_digest, &layers, limits, |i| {
        let p = store.blob_path(&layers[i]);
        if p.is_file() {
            Ok(p)
        } else {
            Err(StoreError::MissingBlob(layers[i].clone()).into())
        }
    })?;
    let mut shown = Vec::new();
    for t in tags {
        let r = Reference::parse(t)?;
        names::set(
            store,
            NameEntry::new(
                r.name(),
                r.tag.clone(),
                manifest_digest.clone(),
                index_digest.clone(),
                config_digest.clone(),
            ),
        )?;
        shown.push(r.to_string());
    }
    if tags.is_empty() {
        names::set(
            store,
            NameEntry::new(
                String::new(),
                None,
                manifest_digest.clone(),
                index_digest,
                config_digest.clone(),
            ),
        )?;
    }
    Ok(Loaded {
        names: shown,
        record: store.record(manifest_digest)?,
    })
}
