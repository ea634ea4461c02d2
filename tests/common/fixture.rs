//! The private brig store the KVM tests run from, and the checks they make on brig's output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::kvm::brig_cmd;
use super::procs::{self, Running};

/// A private store and runtime directory on a tmpfs under /run (scratch disks are made in
/// the store, sockets in the runtime directory: neither works on 9p), test images imported.
pub struct Fixture {
    /// Scratch space of the test's own: `home` and `runtime` are in it.
    pub base: PathBuf,
    pub home: PathBuf,
    pub runtime: PathBuf,
}

impl Fixture {
    /// The test binary's fixture, made on first use: `/run/brig-{tag}-test-PID`, with each
    /// (name, OCI layout directory) of `images` imported.
    pub fn shared(tag: &str, images: &[(&str, PathBuf)]) -> &'static Self {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| Self::new(tag, images))
    }

    fn new(tag: &str, images: &[(&str, PathBuf)]) -> Self {
        let base = PathBuf::from(format!("/run/brig-{tag}-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let f = Self {
            home: base.join("home"),
            runtime: base.join("run"),
            base,
        };
        std::fs::create_dir_all(&f.home).unwrap();
        std::fs::create_dir_all(&f.runtime).unwrap();
        for (name, layout) in images {
            let out = f.brig(&["import", "-q", layout.to_str().unwrap(), name]);
            assert!(
                out.status.success(),
                "import {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        f
    }

    /// `brig ARGS` on this store; stdin empty unless the caller says otherwise.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = brig_cmd(args);
        c.env("BRIG_HOME", &self.home)
            .env("BRIG_RUNTIME_DIR", &self.runtime);
        c
    }

    /// Runs `brig ARGS` to its end.
    pub fn brig(&self, args: &[&str]) -> Output {
        procs::output(&mut self.cmd(args))
    }

    /// Starts `brig ARGS` with its output collected as it comes (see [`Running`]).
    pub fn spawn(&self, args: &[&str]) -> Result<Running, String> {
        Running::spawn(&mut self.cmd(args))
    }

    /// What runs leave behind: sandbox state directories, and [`Self::runtime_leftovers`].
    pub fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = std::fs::read_dir(self.home.join("sandboxes"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect();
        left.extend(self.runtime_leftovers());
        left
    }

    /// Runtime files and address leases left behind (the leases directory itself, with its
    /// lock, stays).
    pub fn runtime_leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let leases = self.runtime.join("leases");
        for dir in [self.runtime.clone(), leases.clone()] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                left.extend(
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| *p != leases && *p != leases.join("lock"))
                        .map(|p| p.display().to_string()),
                );
            }
        }
        left
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with a readable report unless `cond` holds.
pub fn check(cond: bool, what: &str, out: &Output) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(format!(
            "{what}\n  status: {:?}\n  stdout: {:?}\n  stderr: {:?}",
            out.status.code(),
            stdout(out),
            stderr(out)
        ))
    }
}

/// Runs a shell command on the test's host (L1); panics with its output when it fails
/// (setup only).
pub fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Readiness: polls `cond` until it holds; fails after `secs` naming `what`.
pub fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {secs} s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
pub fn process_gone(pid: u32) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).map_or(
        true,
        |s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("Z")
        },
    )
}

/// Whether process `pid` is a jailed VMM: pid 1 of a PID namespace of its own, and not root.
pub fn is_jailed_vmm(pid: &str) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    field("NSpid:").last().map(String::as_str) == Some("1")
        && field("Uid:").first().is_some_and(|u| u != "0")
}

/// sha256sum's digest of `path` (coreutils: a test binary's unoptimised hashing of a
/// memory file takes minutes under nested emulation).
pub fn sha256_of(path: &std::path::Path) -> Result<String, String> {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(sum) if out.status.success() && sum.len() == 64 => Ok(sum.to_string()),
        _ => Err(format!("sha256sum {}: {out:?}", path.display())),
    }
}

/// The processes whose command line (arguments joined by NULs, as /proc gives it) `wanted`
/// accepts.
pub fn pids_whose_cmdline(wanted: impl Fn(&str) -> bool) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| wanted(&String::from_utf8_lossy(&c)))
        })
        .collect()
}
