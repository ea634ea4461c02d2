//! The workload's confinement inside the guest, with docker's defaults and flags:
//! capabilities ([`caps`]: `--cap-add`, `--cap-drop`, `--privileged`), a seccomp filter
//! ([`profile`] reads docker's profile format, [`bpf`] compiles it for x86_64 and i386;
//! `--security-opt seccomp=...`), `no_new_privs` (`--security-opt no-new-privileges`), and
//! runc's masked and read-only paths.
//!
//! The host compiles the filter and sends it in the RunSpec ([`SecuritySpec`]); the guest
//! agent, which stays small and static, only installs what it is given, in runc's order.

pub mod bpf;
pub mod cache;
pub mod caps;
pub mod profile;

use serde::{Deserialize, Serialize};

use std::borrow::Cow;

use brig_protocol::SecuritySpec;

/// The flags as the user gave them (kept in the sandbox's config for `brig inspect` and
/// `brig exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityFlags {
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    /// `--security-opt` values, as given.
    pub security_opt: Vec<String>,
    /// `--jail-uid`/`--jail-gid`: the ids the sandbox's VMM runs as (default: one of brig's
    /// jail range, see `sandbox::jail`).
    pub jail_uid: Option<u32>,
    pub jail_gid: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A `--cap-add`/`--cap-drop` name no kernel capability has (docker's wording).
    #[error("invalid {flag}: unknown capability: {name:?}")]
    UnknownCapability { flag: &'static str, name: String },
    /// A `--security-opt` brig does not know.
    #[error("invalid --security-opt: {0:?}")]
    BadOption(String),
    /// The seccomp profile file could not be read.
    #[error("opening seccomp profile ({0}) failed: {1}")]
    ReadProfile(String, #[source] std::io::Error),
    /// The seccomp profile is malformed or uses what brig cannot compile.
    #[error("seccomp profile: {0}")]
    Profile(String),
}

/// runc's default masked paths: an empty read-only file or directory over each.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's default read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where the seccomp profile comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seccomp {
    Default,
    Unconfined,
    /// The JSON text of a `seccomp=FILE` profile.
    Profile(String),
}

/// The parsed `--security-opt` values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    seccomp: Seccomp,
    no_new_privs: bool,
    /// `systempaths=unconfined`: no masked or read-only paths.
    system_paths: bool,
}

fn parse_bool(opt: &str, v: &str) -> Result<bool, SecurityError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(SecurityError::BadOption(opt.to_string())),
    }
}

/// docker's `--security-opt` rules (`KEY=VALUE`, or the older `KEY:VALUE`); `read` reads a
/// profile file.
fn parse_options(
    opts: &[String],
    read: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<Options, SecurityError> {
    let mut out = Options {
        seccomp: Seccomp::Default,
        no_new_privs: false,
        system_paths: true,
    };
    for opt in opts {
        if opt == "no-new-privileges" {
            out.no_new_privs = true;
            continue;
        }
        let (key, value) = opt
            .split_once('=')
            .or_else(|| opt.split_once(':'))
            .ok_or_else(|| SecurityError::BadOption(opt.clone()))?;
        match key {
            "no-new-privileges" => out.no_new_privs = parse_bool(opt, value)?,
            "seccomp" => {
                out.seccomp = match value {
                    "unconfined" => Seccomp::Unconfined,
                    "builtin" | "" => Seccomp::Default,
                    file => Seccomp::Profile(
                        read(file).map_err(|e| SecurityError::ReadProfile(file.into(), e))?,
                    ),
                }
            }
            "systempaths" if value == "unconfined" => out.system_paths = false,
            // No LSM in the guest kernel: docker on a host without AppArmor or SELinux
            // accepts these and applies nothing either.
            "apparmor" | "label" => {}
            _ => return Err(SecurityError::BadOption(opt.clone())),
        }
    }
    Ok(out)
}

/// The confinement a command line asks for, checked (capability names, options, a profile
/// file read), its seccomp profile not compiled yet: a command line is checked before the
/// host is, and compiling goes through the filter cache under brig's home.
#[derive(Debug)]
pub struct Confinement {
    capabilities: u64,
    no_new_privs: bool,
    /// The profile's JSON, when a filter is wanted.
    profile: Option<Cow<'static, str>>,
    confined_paths: bool,
}

impl SecurityFlags {
    /// The confinement these flags ask for; `read` reads a profile file.
    pub fn resolve_with(
        &self,
        read: &dyn Fn(&str) -> std::io::Result<String>,
    ) -> Result<Confinement, SecurityError> {
        let capabilities = caps::tweak(&self.cap_add, &self.cap_drop, self.privileged)?;
        let opts = parse_options(&self.security_opt, read)?;
        let profile = match (opts.seccomp, self.privileged) {
            (_, true) | (Seccomp::Unconfined, _) => None,
            (Seccomp::Default, false) => Some(Cow::Borrowed(profile::DEFAULT_PROFILE)),
            (Seccomp::Profile(text), false) => Some(Cow::Owned(text)),
        };
        Ok(Confinement {
            capabilities,
            no_new_privs: opts.no_new_privs,
            profile,
            confined_paths: opts.system_paths && !self.privileged,
        })
    }

    /// [`Self::resolve_with`] reading profile files from the host's file system.
    pub fn resolve(&self) -> Result<Confinement, SecurityError> {
        self.resolve_with(&|f| std::fs::read_to_string(f))
    }

    /// The confinement these flags ask for, filter compiled; `read` reads a profile file.
    #[cfg(test)]
    pub fn spec_with(
        &self,
        read: &dyn Fn(&str) -> std::io::Result<String>,
    ) -> Result<SecuritySpec, SecurityError> {
        self.resolve_with(read)?.compiled(compile_profile)
    }
}

impl Confinement {
    /// The spec for the RunSpec, its filter compiled through `cache`.
    pub fn spec(self, cache: &cache::FilterCache) -> Result<SecuritySpec, SecurityError> {
        self.compiled(|json, caps| cache.compile(json, caps))
    }

    fn compiled<F>(self, compile: F) -> Result<SecuritySpec, SecurityError>
    where
        F: Fn(&str, u64) -> Result<Vec<u64>, SecurityError>,
    {
        let seccomp = match &self.profile {
            Some(json) => compile(json, self.capabilities)?,
            None => Vec::new(),
        };
        let paths = |list: &[&str]| {
            if self.confined_paths {
                list.iter().map(|p| p.to_string()).collect()
            } else {
                Vec::new()
            }
        };
        Ok(SecuritySpec {
            capabilities: self.capabilities,
            no_new_privs: self.no_new_privs,
            seccomp,
            masked_paths: paths(MASKED_PATHS),
            readonly_paths: paths(READONLY_PATHS),
        })
    }
}

/// A seccomp profile (docker's format, which runtime-spec's `linux.seccomp` is a subset of)
/// compiled for a workload with the `bounding` capabilities, packed for the RunSpec.
pub fn compile_profile(json: &str, bounding: u64) -> Result<Vec<u64>, SecurityError> {
    Ok(bpf::compile(&profile::resolve(json, bounding)?)?
        .into_iter()
        .map(bpf::Insn::pack)
        .collect())
}

/// `brig exec --privileged`: the sandbox's confinement with every capability and no
/// seccomp filter (its no_new_privs stays, as docker's does).
pub fn privileged_exec(base: &SecuritySpec) -> SecuritySpec {
    SecuritySpec {
        capabilities: caps::ALL,
        seccomp: Vec::new(),
        ..base.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(opts: &[&str]) -> SecurityFlags {
        SecurityFlags {
            security_opt: opts.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn no_files(f: &str) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            f.to_string(),
        ))
    }

    #[test]
    fn defaults_are_dockers() {
        let s = flags(&[]).spec_with(&no_files).unwrap();
        assert_eq!(s.capabilities, 0xa80425fb);
        assert!(!s.no_new_privs && !s.seccomp.is_empty());
        assert_eq!(s.masked_paths.len(), MASKED_PATHS.len());
        assert_eq!(s.readonly_paths.len(), READONLY_PATHS.len());
    }

    #[test]
    fn privileged_lifts_everything() {
        let f = SecurityFlags {
            privileged: true,
            ..flags(&["no-new-privileges"])
        };
        let s = f.spec_with(&no_files).unwrap();
        assert_eq!(s.capabilities, caps::ALL);
        assert!(s.seccomp.is_empty() && s.masked_paths.is_empty() && s.readonly_paths.is_empty());
        assert!(s.no_new_privs);
    }

    #[test]
    fn security_opt_forms() {
        for (opt, nnp) in [
            ("no-new-privileges", true),
            ("no-new-privileges=true", true),
            ("no-new-privileges:true", true),
            ("no-new-privileges=false", false),
        ] {
            assert_eq!(
                flags(&[opt]).spec_with(&no_files).unwrap().no_new_privs,
                nnp,
                "{opt}"
            );
        }
        assert!(flags(&["seccomp=unconfined"])
            .spec_with(&no_files)
            .unwrap()
            .seccomp
            .is_empty());
        let s = flags(&["systempaths=unconfined"])
            .spec_with(&no_files)
            .unwrap();
        assert!(s.masked_paths.is_empty());
        assert!(flags(&["bogus=1"]).spec_with(&no_files).is_err());
        assert!(flags(&["no-new-privileges=maybe"])
            .spec_with(&no_files)
            .is_err());
        let e = flags(&["seccomp=/nope.json"])
            .spec_with(&no_files)
            .unwrap_err();
        assert!(e
            .to_string()
            .starts_with("opening seccomp profile (/nope.json) failed"));
    }

    #[test]
    fn profile_files_are_compiled() {
        let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#;
        let s = flags(&["seccomp=p.json"])
            .spec_with(&|_| Ok(json.to_string()))
            .unwrap();
        assert!(!s.seccomp.is_empty());
        assert!(flags(&["seccomp=p.json"])
            .spec_with(&|_| Ok("{}".to_string()))
            .is_err());
    }

    #[test]
    fn exec_privileged_keeps_no_new_privs() {
        let base = flags(&["no-new-privileges"]).spec_with(&no_files).unwrap();
        let p = privileged_exec(&base);
        assert_eq!(p.capabilities, caps::ALL);
        assert!(p.seccomp.is_empty() && p.no_new_privs);
        assert_eq!(p.masked_paths, base.masked_paths);
    }
}
