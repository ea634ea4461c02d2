//! Manifests, indexes and platforms: what a registry or an image layout hands us, and
//! which media types brig understands.
//!
//! Accepted: OCI image index and Docker manifest list (resolved to one platform), OCI
//! image manifest and Docker schema 2 manifest, layers as tar, tar+gzip or tar+zstd.
//! Docker schema 1 and artifacts that are not container images are refused.

use std::fmt;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Uncompressed Docker layer (what `docker save` archives hold).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Layer media types brig unpacks.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    DOCKER_LAYER_TAR,
];

/// Errors about manifests and platforms.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The document's media type is not one brig understands.
    #[error("unsupported media type {0:?}{1}")]
    UnsupportedMediaType(String, &'static str),
    /// The document is not valid JSON of its media type.
    #[error("malformed {0}: {1}")]
    Malformed(&'static str, String),
    /// No manifest in the index is for the requested platform.
    #[error("no image for platform {0} (available: {1})")]
    NoPlatform(String, String),
    /// The image's config names another platform than the one asked for.
    #[error("image is for platform {1}, not the requested {0}")]
    PlatformMismatch(String, String),
    /// A platform string is not `os/arch[/variant]`.
    #[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/amd64")]
    BadPlatform(String),
    /// A descriptor's digest is not a sha256 digest.
    #[error("descriptor digest: {0}")]
    Digest(#[from] super::digest::DigestError),
}

/// An operating system, architecture and optional variant (`linux/arm64/v8`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this machine (`linux/amd64` on x86-64).
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, ManifestError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(ManifestError::BadPlatform(s.to_string()));
        }
        Ok(Self {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }

    /// Whether an image for `other` runs here when `self` was asked for.
    pub fn matches(&self, other: &Platform) -> bool {
        let norm = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", None) => Some("v8".to_string()),
            _ => p.variant.clone(),
        };
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || norm(self) == norm(other))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A parsed top-level document.
#[derive(Debug)]
pub enum Document {
    /// An OCI index or Docker manifest list.
    Index(Box<ImageIndex>),
    /// An OCI or Docker schema 2 image manifest.
    Manifest(Box<ImageManifest>),
}

/// Parses a manifest or index, given its bytes and the `Content-Type` it came with.
pub fn parse(bytes: &[u8], content_type: &str) -> Result<Document, ManifestError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| ManifestError::Malformed("manifest", e.to_string()))?;
    if probe.schema_version == Some(1) {
        return Err(ManifestError::UnsupportedMediaType(
            "application/vnd.docker.distribution.manifest.v1+json".into(),
            " (Docker schema 1 images are deprecated; push the image again with a current tool)",
        ));
    }
    let mt = probe
        .media_type
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| match content_type {
            "" | "application/json" | "application/octet-stream" if probe.manifests.is_some() => {
                OCI_INDEX.to_string()
            }
            "" | "application/json" | "application/octet-stream" => OCI_MANIFEST.to_string(),
            ct => ct.to_string(),
        });
    match mt.as_str() {
        OCI_INDEX | DOCKER_LIST => serde_json::from_slice(bytes)
            .map(|i| Document::Index(Box::new(i)))
            .map_err(|e| ManifestError::Malformed("image index", e.to_string())),
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: ImageManifest = serde_json::from_slice(bytes)
                .map_err(|e| ManifestError::Malformed("image manifest", e.to_string()))?;
            check_manifest(&m)?;
            Ok(Document::Manifest(Box::new(m)))
        }
        other => Err(ManifestError::UnsupportedMediaType(other.to_string(), "")),
    }
}

/// Refuses manifests whose config or layers are not container image content.
pub fn check_manifest(m: &ImageManifest) -> Result<(), ManifestError> {
    let ct = m.config().media_type().to_string();
    if ct != OCI_CONFIG && ct != DOCKER_CONFIG {
        return Err(ManifestError::UnsupportedMediaType(
            ct,
            " (the config is not a container image config)",
        ));
    }
    for l in m.layers() {
        let lt = l.media_type().to_string();
        if !LAYER_TYPES.contains(&lt.as_str()) {
            return Err(ManifestError::UnsupportedMediaType(lt, " (layer)"));
        }
        descriptor_digest(l)?;
    }
    descriptor_digest(m.config())?;
    Ok(())
}

/// The digest of a descriptor, as brig's validated type.
pub fn descriptor_digest(d: &Descriptor) -> Result<Digest, ManifestError> {
    Ok(d.digest().clone().try_into()?)
}

/// Picks the manifest for `want` from an index.
pub fn select_platform(index: &ImageIndex, want: &Platform) -> Result<Descriptor, ManifestError> {
    let mut available = Vec::new();
    for d in index.manifests() {
        let Some(p) = d.platform() else { continue };
        let have = Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        };
        if have.os == "unknown" {
            continue; // attestation manifests
        }
        if want.matches(&have) {
            return Ok(d.clone());
        }
        available.push(have.to_string());
    }
    if available.is_empty() && index.manifests().len() == 1 {
        return Ok(index.manifests()[0].clone());
    }
    Err(ManifestError::NoPlatform(
        want.to_string(),
        if available.is_empty() {
            "none".into()
        } else {
            available.join(", ")
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn index_json() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#,
            hex('a'),
            hex('b'),
            hex('c')
        )
    }

    #[test]
    fn selects_platforms() {
        let Document::Index(idx) = parse(index_json().as_bytes(), "").unwrap() else {
            panic!("not an index")
        };
        let d = select_platform(&idx, &Platform::parse("linux/amd64").unwrap()).unwrap();
        assert_eq!(descriptor_digest(&d).unwrap().hex(), hex('b'));
        let d = select_platform(&idx, &Platform::parse("linux/arm64").unwrap()).unwrap();
        assert_eq!(descriptor_digest(&d).unwrap().hex(), hex('a'));
        let e = select_platform(&idx, &Platform::parse("linux/s390x").unwrap()).unwrap_err();
        assert!(e.to_string().contains("linux/arm64/v8, linux/amd64"), "{e}");
    }

    #[test]
    fn refuses_unknown_media_types_and_schema1() {
        assert!(matches!(
            parse(br#"{"schemaVersion":1,"name":"x"}"#, ""),
            Err(ManifestError::UnsupportedMediaType(..))
        ));
        assert!(matches!(
            parse(
                br#"{"schemaVersion":2,"mediaType":"application/x-helm"}"#,
                ""
            ),
            Err(ManifestError::UnsupportedMediaType(..))
        ));
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"sha256:{}","size":2}},
            "layers":[{{"mediaType":"application/x-weird","digest":"sha256:{}","size":3}}]}}"#,
            hex('a'),
            hex('b')
        );
        assert!(matches!(
            parse(m.as_bytes(), ""),
            Err(ManifestError::UnsupportedMediaType(..))
        ));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/amd64/v1/x").is_err());
    }
}
