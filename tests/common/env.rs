//! A private brig home for the image tests, and brig's one-line errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use super::sha256_hex;
use super::tree::LOSSY_EXTRACT;

/// A private brig home, docker config dir and scratch space.
pub struct Env {
    pub dir: tempfile::TempDir,
    mounts: Mutex<Vec<PathBuf>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for m in self.mounts.lock().unwrap().drain(..) {
            let _ = Command::new("umount").arg(&m).status();
        }
    }
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("brig-image-test")
            .tempdir()
            .unwrap();
        fs::create_dir_all(dir.path().join("home")).unwrap();
        fs::create_dir_all(dir.path().join("docker")).unwrap();
        Self {
            dir,
            mounts: Mutex::new(Vec::new()),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_brig"));
        c.env("BRIG_HOME", self.home())
            .env("DOCKER_CONFIG", self.dir.path().join("docker"))
            .env_remove("BRIG_INSECURE_REGISTRIES")
            .env_remove("BRIG_MAX_LAYER_BYTES")
            .env_remove("BRIG_MAX_LAYER_ENTRIES")
            .stdin(Stdio::null());
        c
    }

    pub fn brig(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs brig and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.brig(args);
        assert!(
            out.status.success(),
            "brig {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs brig, asserts exit 125 and a one-line `brig: ...` error containing `needle`.
    pub fn fails(&self, args: &[&str], needle: &str) -> String {
        let out = self.brig(args);
        assert_bad(&out, needle, &format!("brig {args:?}"));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The erofs rootfs of `image` as a tree: mounted read-only where the kernel allows
    /// (as root with erofs and loop devices), else extracted with fsck.erofs.
    pub fn extract_rootfs(&self, image: &str, into: &Path) -> PathBuf {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", image])).unwrap();
        let rootfs = v[0]["RootfsPath"].as_str().unwrap().to_string();
        fs::create_dir_all(into).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(&rootfs)
            .arg(into)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if mounted {
            self.mounts.lock().unwrap().push(into.to_path_buf());
            return into.to_path_buf();
        }
        LOSSY_EXTRACT.store(true, Ordering::Relaxed);
        let _ = fs::remove_dir(into);
        let st = Command::new("fsck.erofs")
            .arg(format!("--extract={}", into.display()))
            .arg("--preserve")
            .arg(&rootfs)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "fsck.erofs: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        into.to_path_buf()
    }

    /// Asserts the store holds nothing incomplete: every blob hashes to its name, no
    /// temporary file sits next to final names.
    pub fn assert_store_consistent(&self) {
        let blobs = self.home().join("blobs/sha256");
        if let Ok(rd) = fs::read_dir(&blobs) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let data = fs::read(e.path()).unwrap();
                assert_eq!(
                    sha256_hex(&data),
                    name,
                    "blob {name} does not match its name"
                );
            }
        }
        if let Ok(rd) = fs::read_dir(self.home().join("rootfs")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    name.ends_with(".erofs") && name.len() == 64 + 6,
                    "unexpected rootfs entry {name}"
                );
            }
        }
    }

    pub fn rootfs_count(&self) -> usize {
        fs::read_dir(self.home().join("rootfs"))
            .map(|r| r.count())
            .unwrap_or(0)
    }
}

/// Asserts exit 125 with one `brig: ` line on stderr containing `needle`.
pub fn assert_bad(out: &Output, needle: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(125),
        "{what}: expected exit 125, stderr: {stderr}"
    );
    let errs: Vec<&str> = stderr.lines().filter(|l| l.starts_with("brig: ")).collect();
    assert_eq!(
        errs.len(),
        1,
        "{what}: expected one error line, got: {stderr}"
    );
    assert!(
        errs[0].to_lowercase().contains(&needle.to_lowercase()),
        "{what}: error {:?} lacks {needle:?}",
        errs[0]
    );
}
