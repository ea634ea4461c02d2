//! An OCI bundle's `config.json`, the part brig uses (runtime-spec config.md): the process,
//! the root, the host name and the memory limit; and the workload it makes
//! ([`Bundle::run_spec`]). Unknown fields are ignored, as runc ignores what it does not use.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use brig_protocol::{Rlimit, RunSpec};
use serde::Deserialize;

use super::OciError;

/// `config.json`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Config {
    pub oci_version: String,
    pub process: Option<Process>,
    pub root: Option<Root>,
    pub hostname: String,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub memory: Option<Memory>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Memory {
    pub limit: Option<i64>,
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

    /// Whether `root.readonly` is set.
    pub fn read_only(&self) -> bool {
        self.config.root.as_ref().is_some_and(|r| r.readonly)
    }

    /// The workload (without its rootfs, which the caller sets).
    pub fn run_spec(&self) -> Result<RunSpec, OciError> {
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
        let security = p.no_new_privileges.then(|| brig_protocol::SecuritySpec {
            capabilities: u64::MAX >> (64 - 41),
            no_new_privs: true,
            ..Default::default()
        });
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
            hostname: self.config.hostname.clone(),
            memory_limit: self.memory_limit(),
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
            "user":{{"uid":1000,"gid":100,"additionalGids":[5]}},"rlimits":[{{"type":"RLIMIT_NOFILE","hard":1024,"soft":512}}]}},
            "root":{{"path":"rootfs"}},"hostname":"h1","linux":{{"resources":{{"memory":{{"limit":67108864}}}}}}}}"#
        )
    }

    #[test]
    fn run_spec_follows_the_config() {
        let (_d, b) = bundle(&with_args(r#"["sh","-c","true"]"#));
        let s = b.run_spec().unwrap();
        assert_eq!(s.argv, ["sh", "-c", "true"]);
        assert_eq!(s.user, "1000:100");
        assert_eq!(s.groups, ["5"]);
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
    fn a_terminal_is_a_tty_with_input_and_its_size() {
        let (_d, b) = bundle(&with_args(r#"["sh"]"#).replace(
            "\"args\"",
            "\"terminal\":true,\"consoleSize\":{\"height\":40,\"width\":100},\"args\"",
        ));
        let run = b.run_spec().unwrap();
        assert!(run.tty && run.stdin);
        assert_eq!(b.process().console_rows_cols(), Some((40, 100)));
    }
}
