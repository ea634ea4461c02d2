//! docker's volume flags, checked: `-v`, `--mount` and `--tmpfs` become [`VolumeMount`]s.
//!
//! Rules (docs.docker.com/storage/bind-mounts, /volumes, /tmpfs, moby's `volume/mounts`):
//! - `-v SRC:DST[:OPTS]`: SRC absolute is a host path (created as a directory when missing),
//!   a name is a named volume, no SRC (`-v DST`) an anonymous volume; OPTS comma-separated:
//!   `ro`/`rw`, and brig's `passthrough` (guest uids as they are, see [`Ownership`]);
//!   SELinux and propagation options are accepted and have no effect in a VM.
//! - `--mount type=bind|volume|tmpfs,source=..,target=..[,readonly]`: a missing bind source
//!   is an error (not created).
//! - `--tmpfs DST[:size=..,mode=..]`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// At most this many shared directories per sandbox (each is a virtio device and a server).
pub const MAX_SHARES: usize = 8;

/// Who owns what the guest creates in a shared host directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ownership {
    /// Files the guest creates belong on the host to the directory's owner, whatever guest
    /// uid made them (as rootless podman does): a guest root cannot plant root-owned files.
    #[default]
    Owner,
    /// Guest uids and gids reach the host as they are (docker's bind mounts).
    Passthrough,
}

/// Where a mount's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum Source {
    /// A host path (directory or single file), absolute and resolved.
    Bind { path: PathBuf },
    /// A named volume of the store (`anonymous` ones get a generated name).
    Volume { name: String, anonymous: bool },
    /// A tmpfs in the guest: `size` in bytes (0: the kernel's default), `mode` (0: 1777).
    Tmpfs { size: u64, mode: u32 },
}

/// One mount of a sandbox, as its config keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub source: Source,
    /// Absolute path in the guest.
    pub target: String,
    pub read_only: bool,
    #[serde(default)]
    pub ownership: Ownership,
    /// `--mount` refuses a missing bind source; `-v` creates it.
    #[serde(default)]
    pub create_missing: bool,
    /// `volume-nocopy` / `nocopy`: do not copy the image's content into a new volume.
    #[serde(default)]
    pub nocopy: bool,
}

/// A volume flag is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SpecError(pub String);

fn bad(msg: impl Into<String>) -> SpecError {
    SpecError(msg.into())
}

/// A valid volume name: docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn check_volume_name(name: &str) -> Result<(), SpecError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if name.len() < 2 || name.len() > 255 || !first_ok || !rest_ok {
        return Err(bad(format!(
            "invalid volume name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, \
             at least 2 characters (a host path must be absolute)"
        )));
    }
    Ok(())
}

fn check_target(target: &str, flag: &str) -> Result<String, SpecError> {
    if !target.starts_with('/') {
        return Err(bad(format!(
            "{flag}: the path in the sandbox {target:?} must be absolute"
        )));
    }
    let clean = Path::new(target);
    if clean
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad(format!("{flag}: {target:?} must not contain \"..\"")));
    }
    if clean == Path::new("/") {
        return Err(bad(format!("{flag}: cannot mount over / of the sandbox")));
    }
    let s = target.trim_end_matches('/');
    Ok(if s.is_empty() { "/".into() } else { s.into() })
}

fn source_of(src: &str, flag: &str) -> Result<Source, SpecError> {
    if src.starts_with('/') {
        return Ok(Source::Bind {
            path: PathBuf::from(src),
        });
    }
    if src.starts_with('.') || src.starts_with('~') || src.contains('/') {
        return Err(bad(format!(
            "{flag}: host path {src:?} must be absolute (for example \"$PWD/{}\")",
            src.trim_start_matches("./")
        )));
    }
    check_volume_name(src)?;
    Ok(Source::Volume {
        name: src.into(),
        anonymous: false,
    })
}

/// Options of `-v` that brig accepts and ignores (SELinux labels and mount propagation
/// mean nothing for a guest's view of a host directory).
const IGNORED: &[&str] = &[
    "z",
    "Z",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "cached",
    "delegated",
    "consistent",
];

fn is_option(o: &str) -> bool {
    ["ro", "readonly", "rw", "nocopy", "passthrough"].contains(&o) || IGNORED.contains(&o)
}

/// `-v [SRC:]DST[:OPTS]`.
pub fn parse_volume(spec: &str) -> Result<VolumeMount, SpecError> {
    let flag = format!("-v {spec}");
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [dst] => (None, *dst, ""),
        // docker's reading of two fields: DST:OPTS when the second is only options.
        [a, b] if b.starts_with('/') || !b.split(',').all(is_option) => (Some(*a), *b, ""),
        [dst, opts] => (None, *dst, *opts),
        [src, dst, opts] => (Some(*src), *dst, *opts),
        _ => return Err(bad(format!("{flag}: expected [SRC:]DST[:OPTIONS]"))),
    };
    if src == Some("") || dst.is_empty() {
        return Err(bad(format!("{flag}: empty source or destination")));
    }
    let target = check_target(dst, &flag)?;
    let source = match src {
        Some(s) => source_of(s, &flag)?,
        None => Source::Volume {
            name: String::new(),
            anonymous: true,
        },
    };
    let mut mount = VolumeMount {
        source,
        target,
        read_only: false,
        ownership: Ownership::Owner,
        create_missing: true,
        nocopy: false,
    };
    let (mut ro, mut rw) = (false, false);
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" | "readonly" => ro = true,
            "rw" => rw = true,
            "nocopy" => mount.nocopy = true,
            "passthrough" => mount.ownership = Ownership::Passthrough,
            o if IGNORED.contains(&o) => {}
            o => return Err(bad(format!("{flag}: unknown option {o:?}"))),
        }
    }
    if ro && rw {
        return Err(bad(format!(
            "{flag}: \"ro\" and \"rw\" contradict each other"
        )));
    }
    mount.read_only = ro;
    Ok(mount)
}

fn parse_bool(v: Option<&str>, key: &str, flag: &str) -> Result<bool, SpecError> {
    match v {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(o) => Err(bad(format!("{flag}: {key}={o:?} is not a boolean"))),
    }
}

/// `--mount type=...,source=...,target=...[,readonly]`.
pub fn parse_mount(spec: &str) -> Result<VolumeMount, SpecError> {
    let flag = format!("--mount {spec}");
    let (mut kind, mut src, mut dst) = (None, None, None);
    let (mut ro, mut nocopy, mut passthrough) = (None::<bool>, false, false);
    let (mut size, mut mode) = (0u64, 0u32);
    for field in spec.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (field, None),
        };
        let value = || v.ok_or_else(|| bad(format!("{flag}: {k} needs a value")));
        match k {
            "type" => kind = Some(value()?.to_string()),
            "source" | "src" => src = Some(value()?.to_string()),
            "target" | "destination" | "dst" => dst = Some(value()?.to_string()),
            "readonly" | "ro" => {
                let b = parse_bool(v, k, &flag)?;
                if ro.is_some_and(|prev| prev != b) {
                    return Err(bad(format!("{flag}: readonly given twice, differently")));
                }
                ro = Some(b);
            }
            "volume-nocopy" => nocopy = parse_bool(v, k, &flag)?,
            "passthrough" => passthrough = parse_bool(v, k, &flag)?,
            "tmpfs-size" => {
                size = crate::sandbox::spec::parse_bytes(value()?)
                    .map_err(|e| bad(format!("{flag}: tmpfs-size: {e}")))?
            }
            "tmpfs-mode" => {
                mode = u32::from_str_radix(value()?, 8)
                    .map_err(|_| bad(format!("{flag}: tmpfs-mode must be octal")))?
            }
            "bind-propagation" | "consistency" | "bind-nonrecursive" | "volume-driver" => {}
            other => return Err(bad(format!("{flag}: unknown field {other:?}"))),
        }
    }
    let dst = dst.ok_or_else(|| bad(format!("{flag}: target is required")))?;
    let target = check_target(&dst, &flag)?;
    let kind = kind.unwrap_or_else(|| "volume".into());
    let source = match kind.as_str() {
        "bind" => {
            let s = src.ok_or_else(|| bad(format!("{flag}: source is required")))?;
            if !s.starts_with('/') {
                return Err(bad(format!("{flag}: host path {s:?} must be absolute")));
            }
            Source::Bind { path: s.into() }
        }
        "volume" => match src {
            Some(s) => {
                check_volume_name(&s)?;
                Source::Volume {
                    name: s,
                    anonymous: false,
                }
            }
            None => Source::Volume {
                name: String::new(),
                anonymous: true,
            },
        },
        "tmpfs" => {
            if src.is_some() {
                return Err(bad(format!("{flag}: a tmpfs has no source")));
            }
            Source::Tmpfs { size, mode }
        }
        other => {
            return Err(bad(format!(
                "{flag}: type {other:?} is not supported (bind, volume or tmpfs)"
            )))
        }
    };
    Ok(VolumeMount {
        source,
        target,
        read_only: ro.unwrap_or(false),
        ownership: if passthrough {
            Ownership::Passthrough
        } else {
            Ownership::Owner
        },
        create_missing: false,
        nocopy,
    })
}

/// `--tmpfs DST[:OPTIONS]` (docker passes the options to mount(8); brig knows `size`,
/// `mode`, and the flags `ro`/`rw`, `noexec`/`exec`, `nosuid`, `nodev`, which a guest tmpfs
/// has anyway or ignores).
pub fn parse_tmpfs(spec: &str) -> Result<VolumeMount, SpecError> {
    let flag = format!("--tmpfs {spec}");
    let (dst, opts) = spec.split_once(':').unwrap_or((spec, ""));
    let target = check_target(dst, &flag)?;
    let (mut size, mut mode, mut ro) = (0u64, 0u32, false);
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            Some(("size", v)) => {
                size = crate::sandbox::spec::parse_bytes(v)
                    .map_err(|e| bad(format!("{flag}: size: {e}")))?
            }
            Some(("mode", v)) => {
                mode = u32::from_str_radix(v, 8)
                    .map_err(|_| bad(format!("{flag}: mode must be octal")))?
            }
            None if opt == "ro" => ro = true,
            None if ["rw", "exec", "noexec", "nosuid", "nodev", "suid", "dev"].contains(&opt) => {}
            _ => return Err(bad(format!("{flag}: unknown option {opt:?}"))),
        }
    }
    Ok(VolumeMount {
        source: Source::Tmpfs { size, mode },
        target,
        read_only: ro,
        ownership: Ownership::Owner,
        create_missing: false,
        nocopy: true,
    })
}

/// Every mount flag of a `brig run`, parsed and checked together.
pub fn parse_all(
    volumes: &[String],
    mounts: &[String],
    tmpfs: &[String],
) -> Result<Vec<VolumeMount>, SpecError> {
    let mut all = Vec::new();
    for v in volumes {
        all.push(parse_volume(v)?);
    }
    for m in mounts {
        all.push(parse_mount(m)?);
    }
    for t in tmpfs {
        all.push(parse_tmpfs(t)?);
    }
    check_all(&all)?;
    Ok(all)
}

/// Checks a sandbox's mounts together: no target twice, at most [`MAX_SHARES`] shares.
pub fn check_all(mounts: &[VolumeMount]) -> Result<(), SpecError> {
    let mut seen = std::collections::BTreeSet::new();
    for m in mounts {
        if !seen.insert(m.target.as_str()) {
            return Err(bad(format!("duplicate mount point: {}", m.target)));
        }
    }
    let shares = mounts
        .iter()
        .filter(|m| !matches!(m.source, Source::Tmpfs { .. }))
        .count();
    if shares > MAX_SHARES {
        return Err(bad(format!(
            "too many volumes: {shares} (at most {MAX_SHARES} host directories or named \
             volumes per sandbox)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_flag_forms() {
        let m = parse_volume("/src:/dst").unwrap();
        assert_eq!(
            m.source,
            Source::Bind {
                path: "/src".into()
            }
        );
        assert_eq!(m.target, "/dst");
        assert!(!m.read_only && m.create_missing);
        let m = parse_volume("/src:/dst/:ro,z").unwrap();
        assert!(m.read_only);
        assert_eq!(m.target, "/dst");
        let m = parse_volume("data:/var/lib/data:passthrough").unwrap();
        assert_eq!(
            m.source,
            Source::Volume {
                name: "data".into(),
                anonymous: false
            }
        );
        assert_eq!(m.ownership, Ownership::Passthrough);
        let m = parse_volume("/anon").unwrap();
        assert!(matches!(
            m.source,
            Source::Volume {
                anonymous: true,
                ..
            }
        ));
        let m = parse_volume("/anon:ro").unwrap();
        assert!(
            m.read_only
                && matches!(
                    m.source,
                    Source::Volume {
                        anonymous: true,
                        ..
                    }
                )
        );
    }

    #[test]
    fn v_flag_errors_are_one_line() {
        for (spec, needle) in [
            ("./rel:/x", "must be absolute"),
            ("rel/dir:/x", "must be absolute"),
            ("/src:rel", "must be absolute"),
            ("/src:/x:rw,ro", "contradict"),
            ("/src:/x:bogus", "unknown option"),
            ("a/b:/x", "must be absolute"),
            ("x:/y", "invalid volume name"),
            ("/src:/", "cannot mount over /"),
            ("/src:/a/../b", "\"..\""),
            ("/a:/b:ro:extra", "expected"),
        ] {
            let e = parse_volume(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn mount_flag_forms_and_errors() {
        let m = parse_mount("type=bind,source=/s,target=/t,readonly").unwrap();
        assert!(m.read_only && !m.create_missing);
        let m = parse_mount("type=volume,src=vol1,dst=/t,volume-nocopy").unwrap();
        assert!(m.nocopy);
        let m = parse_mount("type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=700").unwrap();
        assert_eq!(
            m.source,
            Source::Tmpfs {
                size: 64 << 20,
                mode: 0o700
            }
        );
        for (spec, needle) in [
            ("type=bind,target=/t", "source is required"),
            ("type=bind,source=rel,target=/t", "must be absolute"),
            ("type=bind,source=/s", "target is required"),
            ("type=nfs,source=/s,target=/t", "not supported"),
            (
                "type=bind,source=/s,target=/t,readonly=maybe",
                "not a boolean",
            ),
            (
                "type=bind,source=/s,target=/t,ro=true,readonly=false",
                "twice",
            ),
            ("type=volume,source=a/b,target=/t", "invalid volume name"),
        ] {
            let e = parse_mount(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn tmpfs_flag() {
        let m = parse_tmpfs("/run/x:size=1m,mode=0755,noexec").unwrap();
        assert_eq!(
            m.source,
            Source::Tmpfs {
                size: 1 << 20,
                mode: 0o755
            }
        );
        assert!(parse_tmpfs("rel").is_err());
        assert!(parse_tmpfs("/x:bogus=1").is_err());
    }

    #[test]
    fn all_mounts_together() {
        let v = |s: &str| parse_volume(s).unwrap();
        assert!(check_all(&[v("/a:/x"), v("/b:/x")])
            .unwrap_err()
            .0
            .contains("duplicate"));
        let many: Vec<_> = (0..9).map(|i| v(&format!("/a:/x{i}"))).collect();
        assert!(check_all(&many).unwrap_err().0.contains("too many"));
        assert!(check_all(&many[..8]).is_ok());
    }
}
