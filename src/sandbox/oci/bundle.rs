//! An OCI bundle's `config.json`, the part brig uses (runtime-spec config.md): the process
//! (with its capabilities), the root, the host name, the mounts, the hooks, the namespaces,
//! the resources (memory, CPU quota, pids) and the seccomp filter; and the workload it makes
//! ([`Bundle::run_spec`]). Unknown fields are ignored, as runc ignores what it does not use.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use brig_protocol::{Rlimit, RunSpec, SecuritySpec};
use serde::Deserialize;

use super::OciError;
use crate::sandbox::resources::{ResourceFlags, Resources as VmResources};
use crate::sandbox::security::{cache::FilterCache, caps};

/// Where a container's network comes from (`linux.namespaces`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetNamespace {
    /// No network namespace: runc would share the host's, which a VM cannot; the guest
    /// gets only `lo`.
    Host,
    /// A new one, which the container's pid holds: hooks (docker's) may configure it.
    New,
    /// The one at this path (a pod's, podman's, CNI's).
    Join(PathBuf),
}

/// `config.json`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Config {
    pub oci_version: String,
    pub process: Option<Process>,
    pub root: Option<Root>,
    pub hostname: String,
    pub mounts: Vec<super::mounts::Mount>,
    pub hooks: Option<super::hooks::Hooks>,
    pub linux: Option<Linux>,
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Process {
    pub terminal: bool,
    pub console_size: Option<ConsoleSize>,
    pub user: User,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub rlimits: Vec<ConfigRlimit>,
    pub no_new_privileges: bool,
    pub capabilities: Option<Capabilities>,
}

/// `process.capabilities`: the bounding set is what the workload can ever have; brig gives a
/// root workload that set as its permitted and effective ones (see `SecuritySpec`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
}

/// `process.consoleSize`: the terminal's initial size.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
pub struct ConsoleSize {
    pub height: u16,
    pub width: u16,
}

impl Process {
    /// The terminal's initial size as (rows, cols), when the config gives one.
    pub fn console_rows_cols(&self) -> Option<(u16, u16)> {
        self.console_size.map(|c| (c.height, c.width))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConfigRlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Root {
    pub path: String,
    pub readonly: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    pub resources: Option<Resources>,
    pub cgroups_path: String,
    pub namespaces: Vec<Namespace>,
    /// runtime-spec's `LinuxSeccomp`, which docker's profile format reads as it is.
    pub seccomp: Option<serde_json::Value>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
}

/// `linux.namespaces[]`: a namespace to create (no `path`) or to join.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub memory: Option<Memory>,
    pub cpu: Option<Cpu>,
    pub pids: Option<Pids>,
}

/// `linux.resources.cpu`: a quota per period becomes vCPUs (rounded up), `cpus` a cpuset.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Cpu {
    pub quota: Option<i64>,
    pub period: Option<u64>,
    pub cpus: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pids {
    pub limit: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Memory {
    pub limit: Option<i64>,
    pub swap: Option<i64>,
}

/// A bundle directory and its parsed config.
#[derive(Debug)]
pub struct Bundle {
    /// Absolute.
    pub dir: PathBuf,
    pub config: Config,
    /// The root directory, absolute (`root.path` may be relative to the bundle).
    pub rootfs: PathBuf,
}

/// runc's default PATH when the process's env has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Bundle {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self, OciError> {
        let dir = std::path::absolute(dir).map_err(|e| OciError::Bundle(e.to_string()))?;
        let path = dir.join("config.json");
        let text = std::fs::read(&path)
            .map_err(|e| OciError::Bundle(format!("{}: {e}", path.display())))?;
        let config: Config = serde_json::from_slice(&text)
            .map_err(|e| OciError::Bundle(format!("{}: {e}", path.display())))?;
        let root = config
            .root
            .as_ref()
            .ok_or_else(|| OciError::Bundle("config.json has no root".into()))?;
        let rootfs = dir.join(&root.path);
        if !rootfs.is_dir() {
            return Err(OciError::Bundle(format!(
                "rootfs ({}) does not exist",
                rootfs.display()
            )));
        }
        if config.process.is_none() {
            return Err(OciError::Bundle("config.json has no process".into()));
        }
        Ok(Self {
            dir,
            config,
            rootfs,
        })
    }

    pub fn process(&self) -> &Process {
        // Checked by load.
        self.config.process.as_ref().expect("process")
    }

    /// `linux.resources.memory.limit` in bytes (0: none).
    pub fn memory_limit(&self) -> u64 {
        let limit = self
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .and_then(|r| r.memory.as_ref())
            .and_then(|m| m.limit);
        limit.map_or(0, |l| u64::try_from(l).unwrap_or(0))
    }

    /// `linux.cgroupsPath` ("" when none).
    pub fn cgroups_path(&self) -> &str {
        self.config
            .linux
            .as_ref()
            .map_or("", |l| l.cgroups_path.as_str())
    }

    /// `linux.resources` as brig run's flags would give them: the memory limit (and
    /// docker's swap), CPUs from the quota (rounded up), the cpuset. As under `brig run`,
    /// the VM gets the workload's memory plus the guest's overhead.
    pub fn resources(&self) -> Result<VmResources, OciError> {
        let r = self
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref());
        let memory = r.and_then(|r| r.memory.as_ref());
        let limit = memory.and_then(|m| m.limit).filter(|l| *l > 0);
        let cpu = r.and_then(|r| r.cpu.as_ref());
        let flags = ResourceFlags {
            memory: limit.map(|l| l.to_string()),
            memory_swap: limit
                .and(memory.and_then(|m| m.swap))
                .filter(|s| *s != 0)
                .map(|s| s.to_string()),
            cpus: cpu.and_then(|c| match (c.quota, c.period) {
                (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
                _ => None,
            }),
            cpuset_cpus: cpu.map(|c| c.cpus.clone()).filter(|c| !c.is_empty()),
            ..Default::default()
        };
        VmResources::from_flags(&flags)
            .map_err(|e| OciError::Bundle(format!("linux.resources: {e}")))
    }

    /// `linux.resources.pids.limit` (0: none).
    pub fn pids_limit(&self) -> u64 {
        let pids = self
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .and_then(|r| r.pids.as_ref());
        pids.map_or(0, |p| u64::try_from(p.limit).unwrap_or(0))
    }

    /// Where the container's network comes from: its `network` namespace entry.
    pub fn network_namespace(&self) -> NetNamespace {
        let ns = self
            .config
            .linux
            .as_ref()
            .and_then(|l| l.namespaces.iter().find(|n| n.kind == "network"));
        match ns {
            None => NetNamespace::Host,
            Some(n) if n.path.is_empty() => NetNamespace::New,
            Some(n) => NetNamespace::Join(PathBuf::from(&n.path)),
        }
    }

    /// The workload's confinement: the bounding set of `process.capabilities` (every
    /// capability when absent), noNewPrivileges, `linux.seccomp` compiled, and the masked and
    /// read-only paths; `None` when the config asks for none of it. The filter comes from
    /// `filters` when given (containerd and podman send the same profile each time).
    pub fn security(
        &self,
        filters: Option<&FilterCache>,
    ) -> Result<Option<SecuritySpec>, OciError> {
        let p = self.process();
        let linux = self.config.linux.as_ref();
        let seccomp = linux.and_then(|l| l.seccomp.as_ref());
        let (masked, readonly) = linux.map_or((&[][..], &[][..]), |l| {
            (&l.masked_paths[..], &l.readonly_paths[..])
        });
        if p.capabilities.is_none()
            && !p.no_new_privileges
            && seccomp.is_none()
            && masked.is_empty()
            && readonly.is_empty()
        {
            return Ok(None);
        }
        let capabilities = p.capabilities.as_ref().map_or(caps::ALL, |c| {
            let names: Vec<&str> = c.bounding.iter().map(String::as_str).collect();
            caps::mask(&names)
        });
        let seccomp = match seccomp {
            Some(profile) => {
                let json = profile.to_string();
                match filters {
                    Some(cache) => cache.compile(&json, capabilities),
                    None => crate::sandbox::security::compile_profile(&json, capabilities),
                }
                .map_err(|e| OciError::Bundle(format!("linux.seccomp: {e}")))?
            }
            None => Vec::new(),
        };
        Ok(Some(SecuritySpec {
            capabilities,
            no_new_privs: p.no_new_privileges,
            seccomp,
            masked_paths: masked.to_vec(),
            readonly_paths: readonly.to_vec(),
        }))
    }

    /// Whether `root.readonly` is set.
    pub fn read_only(&self) -> bool {
        self.config.root.as_ref().is_some_and(|r| r.readonly)
    }

    /// The workload (without its rootfs, which the caller sets).
    pub fn run_spec(&self, filters: Option<&FilterCache>) -> Result<RunSpec, OciError> {
        let p = self.process();
        if p.args.is_empty() {
            return Err(OciError::Bundle("process.args must not be empty".into()));
        }
        let rlimits = p
            .rlimits
            .iter()
            .map(|r| Rlimit {
                resource: r
                    .kind
                    .strip_prefix("RLIMIT_")
                    .unwrap_or(&r.kind)
                    .to_ascii_lowercase(),
                soft: r.soft,
                hard: r.hard,
            })
            .collect();
        let security = self.security(filters)?;
        Ok(RunSpec {
            argv: p.args.clone(),
            env: p.env.clone(),
            cwd: if p.cwd.is_empty() {
                "/".into()
            } else {
                p.cwd.clone()
            },
            user: format!("{}:{}", p.user.uid, p.user.gid),
            groups: p.user.additional_gids.iter().map(u32::to_string).collect(),
            tty: p.terminal,
            // As under runc, the workload's stdin is the container's fd 0 (relayed): the
            // caller's pipe for -i, its terminal, or /dev/null (at its end at once).
            stdin: true,
            rlimits,
            umask: p.user.umask,
            hostname: self.config.hostname.clone(),
            memory_limit: self.memory_limit(),
            pids_limit: self.pids_limit(),
            security,
            ..Default::default()
        })
    }

    /// runc's create-time `exec.LookPath(args[0])`, done in the host's view of the rootfs:
    /// `executable file not found in $PATH` or `permission denied`, in runc's words.
    pub fn check_executable(&self) -> Result<(), OciError> {
        let p = self.process();
        let Some(arg0) = p.args.first() else {
            return Ok(());
        };
        let fail = |what: &str| {
            Err(OciError::Exec(format!(
                "unable to start container process: exec: {arg0:?}: {what}"
            )))
        };
        if arg0.contains('/') {
            let abs = if arg0.starts_with('/') {
                arg0.clone()
            } else {
                format!("{}/{arg0}", p.cwd.trim_end_matches('/'))
            };
            return match self.resolve_in_root(&abs) {
                None => fail("no such file or directory"),
                Some(m) if m.is_dir() || m.permissions().mode() & 0o111 == 0 => {
                    fail("permission denied")
                }
                Some(_) => Ok(()),
            };
        }
        let path = p
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        let mut denied = false;
        for dir in path.split(':').filter(|d| d.starts_with('/')) {
            match self.resolve_in_root(&format!("{dir}/{arg0}")) {
                Some(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(()),
                Some(m) if m.is_file() => denied = true,
                _ => {}
            }
        }
        if denied {
            fail("permission denied")
        } else {
            fail("executable file not found in $PATH")
        }
    }

    /// The metadata of the guest path `path` in the rootfs, following symbolic links as the
    /// guest would (absolute targets stay inside the rootfs); `None` when it is missing.
    fn resolve_in_root(&self, path: &str) -> Option<std::fs::Metadata> {
        let mut parts: Vec<String> = Vec::new();
        let mut todo: Vec<String> = path.split('/').rev().map(str::to_string).collect();
        let mut links = 0;
        while let Some(part) = todo.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    parts.pop();
                    continue;
                }
                _ => {}
            }
            parts.push(part);
            let host = self.rootfs.join(parts.join("/"));
            let meta = std::fs::symlink_metadata(&host).ok()?;
            if meta.file_type().is_symlink() {
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = std::fs::read_link(&host).ok()?;
                let target = target.to_string_lossy().into_owned();
                parts.pop();
                if target.starts_with('/') {
                    parts.clear();
                }
                todo.extend(target.split('/').rev().map(str::to_string));
            }
        }
        std::fs::metadata(self.rootfs.join(parts.join("/"))).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(config: &str) -> (tempfile::TempDir, Bundle) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("usr")).unwrap();
        std::fs::write(root.join("bin/busybox"), "x").unwrap();
        std::fs::set_permissions(
            root.join("bin/busybox"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("/bin/busybox", root.join("bin/sh")).unwrap();
        std::os::unix::fs::symlink("../bin", root.join("usr/bin")).unwrap();
        std::fs::write(root.join("bin/data"), "x").unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        let b = Bundle::load(dir.path()).unwrap();
        (dir, b)
    }

    fn with_args(args: &str) -> String {
        format!(
            r#"{{"ociVersion":"1.0.2","process":{{"args":{args},"env":["PATH=/usr/bin"],"cwd":"/",
            "user":{{"uid":1000,"gid":100,"additionalGids":[5],"umask":18}},"rlimits":[{{"type":"RLIMIT_NOFILE","hard":1024,"soft":512}}]}},
            "root":{{"path":"rootfs"}},"hostname":"h1","linux":{{"resources":{{"memory":{{"limit":67108864}}}}}}}}"#
        )
    }

    #[test]
    fn run_spec_follows_the_config() {
        let (_d, b) = bundle(&with_args(r#"["sh","-c","true"]"#));
        let s = b.run_spec(None).unwrap();
        assert_eq!(s.argv, ["sh", "-c", "true"]);
        assert_eq!(s.user, "1000:100");
        assert_eq!(s.groups, ["5"]);
        assert_eq!(s.umask, Some(0o022));
        assert_eq!(s.hostname, "h1");
        assert_eq!(s.memory_limit, 64 << 20);
        assert_eq!(s.rlimits[0].resource, "nofile");
        assert_eq!((s.rlimits[0].soft, s.rlimits[0].hard), (512, 1024));
        assert!(b.rootfs.is_absolute());
    }

    #[test]
    fn executables_are_looked_up_in_the_rootfs() {
        // Through a relative directory link and an absolute file link.
        let (_d, b) = bundle(&with_args(r#"["sh"]"#));
        b.check_executable().unwrap();
        let (_d, b) = bundle(&with_args(r#"["nosuchcmd"]"#));
        let e = b.check_executable().unwrap_err().to_string();
        assert!(e.contains("executable file not found in $PATH"), "{e}");
        let (_d, b) = bundle(&with_args(r#"["/bin/data"]"#));
        let e = b.check_executable().unwrap_err().to_string();
        assert!(e.contains("permission denied"), "{e}");
        let (_d, b) = bundle(&with_args(r#"["data"]"#));
        let e = b.check_executable().unwrap_err().to_string();
        assert!(e.contains("permission denied"), "{e}");
    }

    #[test]
    fn capabilities_seccomp_resources_and_namespaces_follow_the_config() {
        let config = with_args(r#"["sh"]"#)
            .replace(
                "\"args\"",
                r#""noNewPrivileges":true,"capabilities":{"bounding":["CAP_CHOWN","CAP_KILL","CAP_NO_SUCH"]},"args""#,
            )
            .replace(
                r#""resources":{"memory":{"limit":67108864}}"#,
                r#""resources":{"memory":{"limit":67108864,"swap":134217728},"cpu":{"quota":150000,"period":100000},"pids":{"limit":50}},
                "namespaces":[{"type":"pid"},{"type":"network","path":"/run/netns/pod"}],
                "maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"],
                "seccomp":{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,"architectures":["SCMP_ARCH_X86_64"],"flags":["SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
                  "syscalls":[{"names":["read","write","exit_group"],"action":"SCMP_ACT_ALLOW"},
                              {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
            );
        let (_d, b) = bundle(&config);
        let s = b.run_spec(None).unwrap();
        let sec = s.security.unwrap();
        assert_eq!(sec.capabilities, caps::mask(&["CAP_CHOWN", "CAP_KILL"]));
        assert!(sec.no_new_privs);
        assert!(!sec.seccomp.is_empty());
        assert_eq!(sec.masked_paths, ["/proc/kcore"]);
        assert_eq!(sec.readonly_paths, ["/proc/sys"]);
        assert_eq!(s.pids_limit, 50);
        let r = b.resources().unwrap();
        assert_eq!(r.cpus, 2);
        assert_eq!(r.memory_swap, 128 << 20);
        assert_eq!(
            r.mem_mib,
            64 + crate::sandbox::resources::GUEST_OVERHEAD_MIB
        );
        assert_eq!(
            b.network_namespace(),
            NetNamespace::Join(PathBuf::from("/run/netns/pod"))
        );
        // Nothing asked: every capability, no filter (as brig boot's).
        let (_d, b) = bundle(&with_args(r#"["sh"]"#));
        assert_eq!(b.run_spec(None).unwrap().security, None);
        assert_eq!(b.network_namespace(), NetNamespace::Host);
    }

    #[test]
    fn a_terminal_is_a_tty_with_input_and_its_size() {
        let (_d, b) = bundle(&with_args(r#"["sh"]"#).replace(
            "\"args\"",
            "\"terminal\":true,\"consoleSize\":{\"height\":40,\"width\":100},\"args\"",
        ));
        let run = b.run_spec(None).unwrap();
        assert!(run.tty && run.stdin);
        assert_eq!(b.process().console_rows_cols(), Some((40, 100)));
    }
}
