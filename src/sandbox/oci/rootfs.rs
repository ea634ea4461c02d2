//! The bundle's root directory as an erofs image, the lower layer brig's guests already
//! boot from (the scratch disk is the upper, as for images from the store).
//!
//! Built with `mkfs.erofs` from the directory and cached under
//! `<home>/oci/rootfs/<key>.erofs`, keyed by a digest of the tree's metadata (names, modes,
//! owners, sizes, mtimes, link targets): a second container of the same unchanged tree skips
//! the build. Why erofs rather than sharing the directory over virtio-fs: it is the path
//! every brig sandbox already takes (the agent mounts an erofs lower and an ext4 upper), so
//! the guest needs no change, and the caller's directory is not exposed to the guest live.
//!
//! The other way, asked for with the annotation `io.brig.rootfs=virtiofs`: the directory
//! shared read-only over virtio-fs as the lower layer, nothing built (a large image's first
//! container starts without the erofs build, and runs a file server). [`plan`] lays out
//! either.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use brig_protocol::{MountSpec, RootfsSpec};

use super::OciError;
use crate::sandbox::state::DiskSpec;
use crate::sandbox::volumes::{Ownership, ResolvedMount, Source, VolumeMount};

/// The annotation that chooses how the root directory reaches the guest.
pub const ANNOTATION: &str = "io.brig.rootfs";

/// The VM's disks and the guest's root for a bundle's root directory.
#[derive(Debug)]
pub struct Plan {
    pub disks: Vec<DiskSpec>,
    pub spec: RootfsSpec,
    /// The share of the root directory (virtio-fs), the sandbox's first.
    pub share: Option<ResolvedMount>,
}

/// The root of a container with root directory `root`: erofs (built or cached) or, when
/// `annotation` says `virtiofs`, the directory shared; a scratch disk at `scratch` as the
/// upper layer unless `read_only`.
pub fn plan(
    home: &Path,
    root: &Path,
    annotation: Option<&str>,
    scratch: &Path,
    read_only: bool,
) -> Result<Plan, OciError> {
    let shared = match annotation {
        None | Some("erofs") => false,
        Some("virtiofs") => true,
        Some(other) => {
            return Err(OciError::Bundle(format!(
                "annotation {ANNOTATION}={other:?}: erofs or virtiofs"
            )))
        }
    };
    let mut disks = Vec::new();
    if !shared {
        disks.push(DiskSpec {
            path: ensure(home, root)?,
            read_only: true,
            serial: "brig-rootfs".into(),
            limits: Default::default(),
        });
    }
    if !read_only {
        disks.push(DiskSpec {
            path: scratch.to_path_buf(),
            read_only: false,
            serial: "brig-scratch".into(),
            limits: Default::default(),
        });
    }
    let device = |i: usize| format!("/dev/vd{}", char::from(b'a' + i as u8));
    let spec = RootfsSpec {
        device: if shared {
            crate::sandbox::volumes::tag(0)
        } else {
            device(0)
        },
        fstype: if shared { "virtiofs" } else { "erofs" }.into(),
        scratch: if read_only {
            String::new()
        } else {
            device(disks.len() - 1)
        },
        read_only,
        mounts: Vec::new(),
        files: Vec::new(),
    };
    let share = shared.then(|| ResolvedMount {
        mount: VolumeMount {
            source: Source::Bind {
                path: root.to_path_buf(),
            },
            target: "/".into(),
            read_only: true,
            ownership: Ownership::Passthrough,
            create_missing: false,
            nocopy: true,
        },
        host: root.to_path_buf(),
    });
    Ok(Plan { disks, spec, share })
}

/// The guest's mounts once the root's share is the first: the volumes' tags move up by one.
pub fn after_root_share(mounts: Vec<MountSpec>) -> Vec<MountSpec> {
    let mut shares = 0;
    mounts
        .into_iter()
        .map(|mut m| {
            if m.fstype == "virtiofs" {
                shares += 1;
                m.source = crate::sandbox::volumes::tag(shares);
            }
            m
        })
        .collect()
}

/// Most entries hashed before giving up on the tree (a runaway or looping tree).
const MAX_ENTRIES: usize = 2_000_000;

/// The digest of `root`'s tree (metadata only, no contents).
pub fn tree_key(root: &Path) -> Result<String, OciError> {
    let mut hasher = Sha256::new();
    let mut stack = vec![PathBuf::new()];
    let mut seen = 0usize;
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| OciError::Rootfs(format!("{}: {e}", dir.display())))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(OciError::Rootfs("the rootfs has too many entries".into()));
            }
            let Ok(m) = e.metadata() else { continue };
            let name = rel.join(e.file_name());
            hasher.update(name.as_os_str().as_encoded_bytes());
            hasher.update([0]);
            for v in [
                u64::from(m.mode()),
                u64::from(m.uid()),
                u64::from(m.gid()),
                m.size(),
                m.mtime() as u64,
                m.mtime_nsec() as u64,
                m.rdev(),
            ] {
                hasher.update(v.to_le_bytes());
            }
            if m.file_type().is_symlink() {
                if let Ok(t) = std::fs::read_link(e.path()) {
                    hasher.update(t.as_os_str().as_encoded_bytes());
                }
            } else if m.is_dir() {
                stack.push(name);
            }
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The erofs image of `root`, built unless the cache has it.
pub fn ensure(home: &Path, root: &Path) -> Result<PathBuf, OciError> {
    let key = tree_key(root)?;
    let dir = home.join("oci").join("rootfs");
    std::fs::create_dir_all(&dir)
        .map_err(|e| OciError::Rootfs(format!("{}: {e}", dir.display())))?;
    let out = dir.join(format!("{key}.erofs"));
    if out.is_file() {
        return Ok(out);
    }
    let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
    let built = crate::image::rootfs::mkfs(root, &tmp)
        .map_err(|e| OciError::Rootfs(e.to_string()))
        .and_then(|()| {
            std::fs::rename(&tmp, &out)
                .map_err(|e| OciError::Rootfs(format!("{}: {e}", out.display())))
        });
    if built.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    built.map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_tree() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("bin")).unwrap();
        std::fs::write(d.path().join("bin/a"), "1").unwrap();
        let k1 = tree_key(d.path()).unwrap();
        assert_eq!(k1, tree_key(d.path()).unwrap());
        std::fs::write(d.path().join("bin/a"), "12").unwrap();
        let k2 = tree_key(d.path()).unwrap();
        assert_ne!(k1, k2);
        std::os::unix::fs::symlink("a", d.path().join("bin/b")).unwrap();
        assert_ne!(k2, tree_key(d.path()).unwrap());
    }
}
