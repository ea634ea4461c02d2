//! Volumes: host directories, single files and named volumes shared live with the guest over
//! virtio-fs (one virtiofsd per share), and tmpfs mounts in the guest.
//!
//! - [`spec`]: docker's `-v`, `--mount`, `--tmpfs` flags, checked.
//! - [`store`]: named volumes (`brig volume ...`).
//! - [`server`]: the file server of each share, confined, gone with the VM.
//!
//! [`resolve`] turns the flags into what a sandbox's config keeps (host paths resolved,
//! named volumes created, the guest's mount list); [`serve`] starts the servers when the
//! sandbox's VM starts.

pub mod server;
pub mod spec;
pub mod store;

use std::path::{Path, PathBuf};

use brig_protocol::MountSpec;
use serde::{Deserialize, Serialize};

pub use server::{Server, ServerError, Share};
pub use spec::{Ownership, Source, SpecError, VolumeMount};
pub use store::{StoreError, VolumeInfo, Volumes};

use crate::vmm::FsConfig;

/// A mount as a sandbox's config keeps it: the flag, checked, and the host path it resolved
/// to (empty for a tmpfs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedMount {
    #[serde(flatten)]
    pub mount: VolumeMount,
    pub host: PathBuf,
}

/// A volume could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("{0}")]
    Source(String),
}

/// The virtio-fs tag of share `i`.
pub fn tag(i: usize) -> String {
    format!("brig-vol{i}")
}

/// Checks every host source, creates what `-v` creates and the named volumes, and returns
/// the mounts with their host paths and the guest's mount list (in mount order). Volumes
/// made here are removed again when a later one fails.
pub fn resolve(
    home: &Path,
    mounts: &[VolumeMount],
) -> Result<(Vec<ResolvedMount>, Vec<MountSpec>), VolumeError> {
    spec::check_all(mounts)?;
    let vols = Volumes::new(home);
    let mut made = Vec::new();
    let result = resolve_all(&vols, mounts, &mut made);
    if result.is_err() {
        for name in made {
            let _ = vols.remove(home, &name, true);
        }
    }
    result
}

fn resolve_all(
    vols: &Volumes,
    mounts: &[VolumeMount],
    made: &mut Vec<String>,
) -> Result<(Vec<ResolvedMount>, Vec<MountSpec>), VolumeError> {
    // Parents before children: a mount at /a/b must come after one at /a.
    let mut order: Vec<&VolumeMount> = mounts.iter().collect();
    order.sort_by_key(|m| m.target.matches('/').count());
    let (mut resolved, mut guest) = (Vec::new(), Vec::new());
    let mut share = 0;
    for m in order {
        let mut m = m.clone();
        let (host, copy_up) = match &mut m.source {
            Source::Tmpfs { size, mode } => {
                let mut opts = vec![format!(
                    "mode={:o}",
                    if *mode == 0 { 0o1777 } else { *mode }
                )];
                if *size > 0 {
                    opts.push(format!("size={size}"));
                }
                guest.push(MountSpec {
                    fstype: "tmpfs".into(),
                    source: "tmpfs".into(),
                    target: m.target.clone(),
                    read_only: m.read_only,
                    options: opts.join(","),
                    ..Default::default()
                });
                resolved.push(ResolvedMount {
                    mount: m,
                    host: PathBuf::new(),
                });
                continue;
            }
            Source::Bind { path } => (bind_source(path, m.create_missing)?, false),
            Source::Volume { name, anonymous } => {
                if *anonymous {
                    *name = super::runtime::new_id();
                }
                let (_, new) = vols.ensure(name, *anonymous)?;
                if new {
                    made.push(name.clone());
                }
                // docker passes uids through on its own volumes: only brig reads the store.
                m.ownership = Ownership::Passthrough;
                (vols.data_dir(name), new && !m.nocopy)
            }
        };
        let file = if host.is_file() {
            host.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        guest.push(MountSpec {
            fstype: "virtiofs".into(),
            source: tag(share),
            target: m.target.clone(),
            read_only: m.read_only,
            file,
            copy_up,
            ..Default::default()
        });
        share += 1;
        resolved.push(ResolvedMount { mount: m, host });
    }
    Ok((resolved, guest))
}

/// Checks (and for `-v` creates) a bind source; returns it with symlinks resolved.
fn bind_source(path: &Path, create: bool) -> Result<PathBuf, VolumeError> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(path)
                .map_err(|e| VolumeError::Source(format!("creating {shown}: {e}")))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VolumeError::Source(format!(
                "bind source path does not exist: {shown}"
            )));
        }
        Err(e) => return Err(VolumeError::Source(format!("{shown}: {e}"))),
    }
    let real =
        std::fs::canonicalize(path).map_err(|e| VolumeError::Source(format!("{shown}: {e}")))?;
    let meta =
        std::fs::metadata(&real).map_err(|e| VolumeError::Source(format!("{shown}: {e}")))?;
    if !meta.is_dir() && !meta.is_file() {
        return Err(VolumeError::Source(format!(
            "{shown}: only directories and regular files can be shared"
        )));
    }
    let mode = if meta.is_dir() {
        rustix::fs::Access::READ_OK | rustix::fs::Access::EXEC_OK
    } else {
        rustix::fs::Access::READ_OK
    };
    rustix::fs::access(&real, mode)
        .map_err(|e| VolumeError::Source(format!("{shown}: cannot read it: {e}")))?;
    Ok(real)
}

/// The servers of a running sandbox's shares; dropping it stops them.
#[derive(Debug, Default)]
pub struct Served {
    pub servers: Vec<Server>,
}

/// Starts a server for every share of `mounts` (sockets in `runtime_dir`, logs in
/// `log_dir`) and returns them with the VM's virtio-fs devices.
pub fn serve(
    mounts: &[ResolvedMount],
    runtime_dir: &Path,
    log_dir: &Path,
) -> Result<(Served, Vec<FsConfig>), VolumeError> {
    let mut served = Served::default();
    let mut devices = Vec::new();
    for m in mounts.iter().filter(|m| !m.host.as_os_str().is_empty()) {
        let i = devices.len();
        let share = Share {
            source: m.host.clone(),
            read_only: m.mount.read_only,
            ownership: m.mount.ownership,
        };
        let log = log_dir.join(format!("virtiofsd-{i}.log"));
        let server = Server::start(&share, runtime_dir, i, &log)?;
        devices.push(FsConfig {
            socket: Some(server.socket.clone()),
            tag: tag(i),
        });
        served.servers.push(server);
    }
    Ok((served, devices))
}

/// Removes the anonymous volumes of `mounts` (a `--rm` sandbox's end, as docker does).
pub fn remove_anonymous(home: &Path, mounts: &[ResolvedMount]) {
    let vols = Volumes::new(home);
    for m in mounts {
        if let Source::Volume {
            name,
            anonymous: true,
        } = &m.mount.source
        {
            let _ = vols.remove(home, name, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_creates_and_orders() {
        let home = tempfile::tempdir().unwrap();
        let src = home.path().join("src");
        let file = home.path().join("one.txt");
        std::fs::write(&file, "x").unwrap();
        let v = |s: &str| spec::parse_volume(s).unwrap();
        let mounts = vec![
            v(&format!("{}:/a/b", src.display())),
            v("data:/a"),
            v(&format!("{}:/etc/one.txt:ro", file.display())),
            spec::parse_tmpfs("/scratch").unwrap(),
        ];
        let (resolved, guest) = resolve(home.path(), &mounts).unwrap();
        assert!(src.is_dir(), "-v creates a missing host directory");
        let targets: Vec<_> = guest.iter().map(|g| g.target.as_str()).collect();
        assert_eq!(targets, ["/a", "/scratch", "/a/b", "/etc/one.txt"]);
        assert!(
            guest[0].copy_up,
            "a new named volume gets the image's content"
        );
        assert_eq!(guest[1].fstype, "tmpfs");
        assert_eq!(guest[3].file, "one.txt");
        assert!(guest[3].read_only);
        let tags: Vec<_> = guest.iter().map(|g| g.source.as_str()).collect();
        assert_eq!(tags, ["brig-vol0", "tmpfs", "brig-vol1", "brig-vol2"]);
        assert_eq!(resolved[0].host, Volumes::new(home.path()).data_dir("data"));
        // Nothing is created when a later mount fails.
        let bad = vec![
            v("fresh:/x"),
            spec::parse_mount("type=bind,source=/nonexistent/brig,target=/y").unwrap(),
        ];
        let e = resolve(home.path(), &bad).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(Volumes::new(home.path()).inspect("fresh").is_err());
    }
}
