//! OCI images: references, registry client, content-addressed store, safe unpacking and
//! the read-only rootfs image each VM boots from.
//!
//! # API for `brig run`
//! ```ignore
//! let store = image::Store::open_default()?;              // $BRIG_HOME, created if needed
//! let record = store.resolve_or_pull(
//!     "busybox:1.36",                                       // as the user wrote it
//!     &image::PullOptions::default(),                       // platform, insecure registries
//!     &image::Progress::new(false),                         // bars on stderr
//! )?;
//! record.rootfs_path;      // rootfs/<manifest-hex>.erofs: attach read-only as virtio-blk
//! record.config.entrypoint; record.config.cmd; record.config.env; record.config.working_dir;
//! record.config.user; record.config.exposed_ports; record.config.volumes;
//! record.config.labels; record.config.stop_signal;
//! record.manifest_digest;  // identifies the image (and its rootfs)
//! ```
//! `resolve_or_pull` uses a local image when the name (or ID, or digest) is known and its
//! rootfs is built, without touching the network; otherwise it pulls. [`ImageError`]'s
//! `Display` is one line for the user.
//!
//! # Modules
//! `reference` parses names, `auth` and `registry` speak the distribution API, `manifest`
//! understands media types and platforms, `store` and `names` keep content and names on
//! disk, `pull` and `archive` bring images in, `unpack` applies layers safely, `rootfs`
//! builds the erofs image.

pub mod archive;
pub mod auth;
pub mod digest;
mod fsat;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod gc;
pub mod layer;
pub mod manifest;
pub mod names;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod store;
pub mod unpack;

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::image::{ImageConfiguration, ImageManifest};

pub use digest::Digest;
pub use manifest::Platform;
pub use progress::Progress;
pub use pull::PullOptions;
pub use reference::Reference;
pub use store::Store;

/// The largest config or manifest blob brig reads into memory.
pub const MAX_JSON_BLOB: u64 = 16 << 20;

/// Every error the image code returns; its `Display` is the line the user reads.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is malformed.
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    /// The registry failed or refused.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// Credentials could not be read or written.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// A manifest, index or platform problem.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// The store failed (I/O, digest or size mismatch, disk full).
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Building the rootfs failed (including malicious layers).
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    /// A digest is malformed.
    #[error(transparent)]
    Digest(#[from] digest::DigestError),
    /// An archive or layout to load is malformed.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// No local image has this name or ID.
    #[error("no such image: {0}")]
    NoSuchImage(String),
    /// A short ID matches several images.
    #[error("image ID prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// A blob download was cut short.
    #[error("truncated download of blob {digest}: got {got} of {want} bytes{why} (pull again to resume)")]
    Truncated {
        digest: String,
        got: u64,
        want: u64,
        why: String,
    },
    /// The image config is not valid JSON.
    #[error("malformed image config {0}: {1}")]
    BadConfig(Digest, String),
    /// The download was stopped because another one failed.
    #[error("download cancelled")]
    Cancelled,
}

impl From<unpack::UnpackError> for ImageError {
    fn from(e: unpack::UnpackError) -> Self {
        Self::Rootfs(rootfs::RootfsError::Unpack(e))
    }
}

/// What `brig run` needs from an image config (Docker names; empty when unset).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    fn from_oci(c: &ImageConfiguration) -> Self {
        let Some(cfg) = c.config() else {
            return Self::default();
        };
        Self {
            entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
            cmd: cfg.cmd().clone().unwrap_or_default(),
            env: cfg.env().clone().unwrap_or_default(),
            working_dir: cfg.working_dir().clone().unwrap_or_default(),
            user: cfg.user().clone().unwrap_or_default(),
            exposed_ports: cfg.exposed_ports().clone().unwrap_or_default(),
            volumes: cfg.volumes().clone().unwrap_or_default(),
            labels: cfg
                .labels()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            stop_signal: cfg.stop_signal().clone(),
        }
    }
}

/// One layer of an image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerInfo {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// A local image, as `brig run` and `brig inspect` see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageRecord {
    /// Names pointing at it (`busybox:latest`).
    pub names: Vec<String>,
    /// The platform-specific manifest; names the rootfs.
    pub manifest_digest: Digest,
    /// The config blob's digest (docker's image ID).
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub platform: Platform,
    /// When the image was built (RFC 3339), if the config says.
    pub created: Option<String>,
    pub layers: Vec<LayerInfo>,
    /// The erofs image to attach read-only.
    pub rootfs_path: PathBuf,
}

impl Store {
    /// Reads and checks the manifest blob `manifest`.
    pub fn manifest(&self, manifest: &Digest) -> Result<ImageManifest, ImageError> {
        let bytes = self.read_blob(manifest, MAX_JSON_BLOB)?;
        match manifest::parse(&bytes, "")? {
            manifest::Document::Manifest(m) => Ok(*m),
            manifest::Document::Index(_) => Err(manifest::ManifestError::UnsupportedMediaType(
                "image index".into(),
                " where an image manifest was expected",
            )
            .into()),
        }
    }

    /// Reads the image config blob `config`.
    pub fn config(&self, config: &Digest) -> Result<ImageConfiguration, ImageError> {
        let bytes = self.read_blob(config, MAX_JSON_BLOB)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::BadConfig(config.clone(), e.to_string()))
    }

    /// The record of the image with this manifest (its rootfs may not be built yet).
    pub fn record(&self, manifest_digest: &Digest) -> Result<ImageRecord, ImageError> {
        self.record_among(&names::load(self)?, manifest_digest)
    }

    /// [`Store::record`], its names taken from `all` (the store's names, loaded once by a
    /// caller that has them already).
    fn record_among(
        &self,
        all: &[names::NameEntry],
        manifest_digest: &Digest,
    ) -> Result<ImageRecord, ImageError> {
        let m = self.manifest(manifest_digest)?;
        let config_digest = manifest::descriptor_digest(m.config())?;
        let cfg = self.config(&config_digest)?;
        let layers = m
            .layers()
            .iter()
            .map(|l| {
                Ok(LayerInfo {
                    digest: manifest::descriptor_digest(l)?,
                    size: l.size(),
                    media_type: l.media_type().to_string(),
                })
            })
            .collect::<Result<Vec<_>, ImageError>>()?;
        let names = all
            .iter()
            .filter(|n| &n.manifest == manifest_digest && !n.repository.is_empty())
            .map(display_name)
            .collect();
        Ok(ImageRecord {
            names,
            manifest_digest: manifest_digest.clone(),
            config_digest,
            config: ImageConfig::from_oci(&cfg),
            platform: Platform {
                os: cfg.os().to_string(),
                architecture: cfg.architecture().to_string(),
                variant: cfg.variant().clone(),
            },
            created: cfg.created().clone(),
            layers,
            rootfs_path: self.rootfs_path(manifest_digest),
        })
    }

    /// Finds a local image: a name (`busybox`, `x:tag`, `x@sha256:..`), a full manifest or
    /// config digest, or a prefix of an image ID. Returns the matching name entries.
    pub fn lookup(&self, image: &str) -> Result<Vec<names::NameEntry>, ImageError> {
        Self::lookup_among(&names::load(self)?, image)
    }

    /// [`Store::lookup`] in `all`, the store's names.
    fn lookup_among(
        all: &[names::NameEntry],
        image: &str,
    ) -> Result<Vec<names::NameEntry>, ImageError> {
        let id = image.strip_prefix("sha256:").unwrap_or(image);
        if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let by_id: Vec<_> = all
                .iter()
                .filter(|n| n.config.hex().starts_with(id) || n.manifest.hex() == id)
                .cloned()
                .collect();
            let ids: std::collections::HashSet<_> = by_id.iter().map(|n| &n.manifest).collect();
            match ids.len() {
                0 => {}
                1 => return Ok(by_id),
                _ => return Err(ImageError::Ambiguous(image.to_string())),
            }
        }
        let r = Reference::parse(image)?;
        let name = r.name();
        let found: Vec<_> = all
            .iter()
            .filter(|n| {
                n.repository == name
                    && match (&r.digest, &r.tag) {
                        (Some(d), _) => &n.manifest == d || n.index.as_ref() == Some(d),
                        (None, t) => &n.tag == t,
                    }
            })
            .collect();
        if found.is_empty() {
            return Err(ImageError::NoSuchImage(image.to_string()));
        }
        Ok(found.into_iter().take(1).cloned().collect())
    }

    /// The local image `image` (name, ID or digest) for the requested platform, its rootfs
    /// rebuilt from stored layers if missing; no network. `Ok(None)` when not present.
    pub fn resolve_local(
        &self,
        image: &str,
        opts: &PullOptions,
    ) -> Result<Option<ImageRecord>, ImageError> {
        // The names index is read once for both (it lists every local image).
        let all = names::load(self)?;
        let found = match Self::lookup_among(&all, image) {
            Ok(found) => found,
            Err(ImageError::NoSuchImage(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(n) = found.first() else {
            return Ok(None);
        };
        let rec = self.record_among(&all, &n.manifest)?;
        if !opts
            .platform
            .as_ref()
            .is_none_or(|p| p.matches(&rec.platform))
        {
            return Ok(None);
        }
        if !rec.rootfs_path.is_file() {
            let _shared = self.lock_shared()?;
            let layers: Vec<Digest> = rec.layers.iter().map(|l| l.digest.clone()).collect();
            rootfs::ensure::<ImageError>(self, &rec.manifest_digest, &layers, opts.limits, |i| {
                let p = self.blob_path(&layers[i]);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(store::StoreError::MissingBlob(layers[i].clone()).into())
                }
            })?;
        }
        Ok(Some(rec))
    }

    /// Pulls `image` from its registry (even when present) and returns it.
    pub fn pull_record(
        &self,
        image: &str,
        opts: &PullOptions,
        progress: &Progress,
    ) -> Result<ImageRecord, ImageError> {
        let r = Reference::parse(image)?;
        Ok(pull::pull(self, &r, opts, progress)?.record)
    }

    /// The local image `image` if it is known and its rootfs is built (no network);
    /// otherwise pulls it.
    pub fn resolve_or_pull(
        &self,
        image: &str,
        opts: &PullOptions,
        progress: &Progress,
    ) -> Result<ImageRecord, ImageError> {
        match self.resolve_local(image, opts)? {
            Some(rec) => Ok(rec),
            None => self.pull_record(image, opts, progress),
        }
    }
}

/// `busybox:latest`, `ghcr.io/x/y@sha256:...` as docker shows names.
pub fn display_name(n: &names::NameEntry) -> String {
    if n.repository.is_empty() {
        return "<none>".into();
    }
    let r = Reference {
        registry: n.repository.split('/').next().unwrap_or("").to_string(),
        repository: n
            .repository
            .split_once('/')
            .map(|x| x.1)
            .unwrap_or("")
            .to_string(),
        tag: n.tag.clone(),
        digest: if n.tag.is_none() {
            Some(n.index.clone().unwrap_or_else(|| n.manifest.clone()))
        } else {
            None
        },
    };
    r.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-layer OCI layout in `dir`, tagged `t`.
    fn layout(dir: &std::path::Path) {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("hello").unwrap();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"hi"[..]).unwrap();
        let layer = b.into_inner().unwrap();
        let cfg = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/hello"], "Env": ["A=1"], "WorkingDir": "/w", "StopSignal": "SIGINT"},
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer).to_string()]},
        });
        let cfg = serde_json::to_vec(&cfg).unwrap();
        let desc = |mt: &str, b: &[u8]| serde_json::json!({"mediaType": mt, "digest": Digest::of(b).to_string(), "size": b.len()});
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
            "config": desc(manifest::OCI_CONFIG, &cfg),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar", &layer)],
        });
        let m = serde_json::to_vec(&m).unwrap();
        let mut md = desc(manifest::OCI_MANIFEST, &m);
        md["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "t"});
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [md]});
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        for b in [&layer, &cfg, &m] {
            std::fs::write(dir.join("blobs/sha256").join(Digest::of(b).hex()), b).unwrap();
        }
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    #[test]
    fn resolve_or_pull_uses_local_images_without_network() {
        let dir = tempfile::tempdir().unwrap();
        layout(&dir.path().join("layout"));
        let store = Store::open(dir.path().join("home")).unwrap();
        let loaded = archive::import(
            &store,
            &dir.path().join("layout"),
            Some("example.com/x/y:1"),
            unpack::Limits::default(),
        )
        .unwrap();
        let id = loaded[0].record.config_digest.clone();
        // example.com is never contacted: the image is local and its rootfs built.
        let opts = PullOptions::default();
        for name in ["example.com/x/y:1", id.short(), &id.to_string()] {
            let rec = store
                .resolve_or_pull(name, &opts, &Progress::hidden())
                .unwrap();
            assert!(rec.rootfs_path.is_file());
            assert_eq!(rec.config.cmd, ["/hello"]);
            assert_eq!(rec.config.env, ["A=1"]);
            assert_eq!(rec.config.working_dir, "/w");
            assert_eq!(rec.config.stop_signal.as_deref(), Some("SIGINT"));
            assert_eq!(rec.names, ["example.com/x/y:1"]);
        }
        // A lost rootfs is rebuilt from the stored layers.
        let rec = store
            .resolve_or_pull("example.com/x/y:1", &opts, &Progress::hidden())
            .unwrap();
        std::fs::remove_file(&rec.rootfs_path).unwrap();
        let rec = store
            .resolve_or_pull("example.com/x/y:1", &opts, &Progress::hidden())
            .unwrap();
        assert!(rec.rootfs_path.is_file());
        assert!(matches!(
            store.lookup("example.com/x/none:1"),
            Err(ImageError::NoSuchImage(_))
        ));
    }
}
