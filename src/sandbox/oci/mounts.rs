//! `config.json`'s mounts in a VM: what the guest makes itself (`/proc`, `/sys`, `/dev` and
//! below), the caller's own small files (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`,
//! podman's `/run/.containerenv`: read at create and written into the root by the guest
//! agent, so they cost no file server and keep the VM eligible for a template), and the
//! rest as brig volumes: bind
//! mounts shared live over virtio-fs (uids passed through, as a bind mount shows them),
//! tmpfs mounts in the guest. A mount brig cannot make fails `create` rather than leave the
//! workload writing where nothing is kept.

use std::path::Path;

use brig_protocol::FileSpec;
use serde::Deserialize;

use super::OciError;
use crate::sandbox::volumes::{Ownership, Source, VolumeMount};

/// The most a caller's `/etc` file may hold.
const ETC_FILE_MAX: u64 = 64 << 10;

/// Where the guest makes its own mounts (proc, sysfs, devtmpfs, devpts, mqueue, shm, cgroup).
const GUEST_OWN: &[&str] = &["/proc", "/sys", "/dev"];

/// One `mounts[]` entry.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

impl Mount {
    fn is_bind(&self) -> bool {
        self.kind == "bind" || self.options.iter().any(|o| o == "bind" || o == "rbind")
    }

    fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// The caller's network files, whole.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EtcFiles {
    pub hosts: Option<String>,
    pub resolv_conf: Option<String>,
    pub hostname: Option<String>,
}

/// The mounts as brig makes them.
#[derive(Debug, Default)]
pub struct Placed {
    pub volumes: Vec<VolumeMount>,
    /// The caller's files, copied in.
    pub files: Vec<FileSpec>,
    pub etc: EtcFiles,
}

/// Sorts `mounts` into volumes and the caller's `/etc` files; `rootfs` resolves a relative
/// bind source (runtime-spec: relative to the bundle).
pub fn place(mounts: &[Mount], bundle: &Path) -> Result<Placed, OciError> {
    let mut placed = Placed::default();
    for m in mounts {
        let dest = normalize(&m.destination);
        if GUEST_OWN
            .iter()
            .any(|own| dest == *own || dest.starts_with(&format!("{own}/")))
        {
            continue;
        }
        let bad = |why: String| OciError::Bundle(format!("mount {dest}: {why}"));
        if m.is_bind() {
            let source = bundle.join(&m.source);
            let etc = match dest.as_str() {
                "/etc/hosts" => Some(Some(&mut placed.etc.hosts)),
                "/etc/resolv.conf" => Some(Some(&mut placed.etc.resolv_conf)),
                "/etc/hostname" => Some(Some(&mut placed.etc.hostname)),
                "/run/.containerenv" => Some(None),
                _ => None,
            };
            if let Some(slot) = etc {
                let content = read_small(&source).map_err(bad)?;
                if let Some(slot) = slot {
                    *slot = Some(content.clone());
                }
                placed.files.push(FileSpec {
                    path: dest,
                    content,
                });
                continue;
            }
            placed.volumes.push(VolumeMount {
                source: Source::Bind { path: source },
                target: dest,
                read_only: m.read_only(),
                ownership: Ownership::Passthrough,
                create_missing: false,
                nocopy: true,
            });
            continue;
        }
        if m.kind == "tmpfs" {
            // What a guest tmpfs understands; propagation and atime flags mean nothing there.
            let opts: Vec<&str> = m
                .options
                .iter()
                .map(String::as_str)
                .filter(|o| o.starts_with("size=") || o.starts_with("mode=") || *o == "ro")
                .collect();
            let spec = format!("{dest}:{}", opts.join(","));
            let v = crate::sandbox::volumes::spec::parse_tmpfs(&spec)
                .map_err(|e| bad(e.to_string()))?;
            placed.volumes.push(v);
            continue;
        }
        return Err(bad(format!(
            "type {:?} is not supported in a microVM (bind and tmpfs are)",
            m.kind
        )));
    }
    crate::sandbox::volumes::spec::check_all(&placed.volumes)
        .map_err(|e| OciError::Bundle(format!("mounts: {e}")))?;
    Ok(placed)
}

/// `/a//b/` as `/a/b`.
fn normalize(dest: &str) -> String {
    let parts: Vec<&str> = dest
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// A small regular file's text.
fn read_small(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(ETC_FILE_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > ETC_FILE_MAX {
        return Err(format!("{} is larger than 64 KiB", path.display()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            destination: dest.into(),
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn dockers_mounts_become_guest_mounts_files_and_volumes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hosts"), "10.0.0.2 c1\n").unwrap();
        std::fs::write(dir.path().join("resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let mounts = [
            mount("/proc", "proc", "proc", &["nosuid"]),
            mount("/dev", "tmpfs", "tmpfs", &["nosuid", "mode=755"]),
            mount("/dev/shm", "bind", "/var/lib/x/shm", &["rbind", "rprivate"]),
            mount("/sys/fs/cgroup", "cgroup", "cgroup", &["ro"]),
            mount("/etc/hosts", "bind", "hosts", &["rbind", "rprivate"]),
            mount("/etc/resolv.conf", "", "resolv.conf", &["bind", "ro"]),
            mount("/data/", "bind", "data", &["rbind", "ro"]),
            mount(
                "/scratch",
                "tmpfs",
                "tmpfs",
                &["nosuid", "size=65536k", "mode=1777", "strictatime"],
            ),
        ];
        let p = place(&mounts, dir.path()).unwrap();
        assert_eq!(p.etc.hosts.as_deref(), Some("10.0.0.2 c1\n"));
        assert_eq!(p.etc.resolv_conf.as_deref(), Some("nameserver 10.0.0.1\n"));
        assert_eq!(p.etc.hostname, None);
        assert_eq!(p.files.len(), 2);
        assert_eq!(p.files[0].path, "/etc/hosts");
        assert_eq!(p.volumes.len(), 2);
        assert_eq!(p.volumes[0].target, "/data");
        assert!(p.volumes[0].read_only);
        assert_eq!(p.volumes[0].ownership, Ownership::Passthrough);
        assert_eq!(
            p.volumes[0].source,
            Source::Bind {
                path: dir.path().join("data")
            }
        );
        assert_eq!(
            p.volumes[1].source,
            Source::Tmpfs {
                size: 65536 << 10,
                mode: 0o1777
            }
        );
    }

    #[test]
    fn what_a_vm_cannot_mount_fails_create() {
        let e = place(&[mount("/x", "nfs", "srv:/x", &[])], Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mount /x: type \"nfs\" is not supported"), "{e}");
        let e = place(
            &[mount("/etc/hosts", "bind", "/nonexistent/h", &["bind"])],
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/h"), "{e}");
    }
}
