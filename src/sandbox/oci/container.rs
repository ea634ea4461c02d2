//! A container's state under the runtime root (`--root`, default `<brig runtime dir>/oci`):
//! `<root>/<id>/state.json` (written atomically) and the `start` FIFO on which its VMM
//! process waits. Its status is derived, as runc's is: the VMM process alive (the same
//! process: its start time is recorded against pid reuse) and started → running; alive →
//! created; gone → stopped, pid 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::OciError;

/// The OCI version brig reports in `state`.
pub const OCI_VERSION: &str = "1.0.2-dev";

/// The runtime root when `--root` is not given: stable, as podman passes none.
pub fn default_root() -> PathBuf {
    crate::sandbox::runtime::base_dir().join("oci")
}

/// What brig keeps about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OciState {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// The VMM process and its start time (clock ticks after boot, /proc/PID/stat field 22).
    pub pid: i32,
    pub start_time: u64,
    /// RFC 3339 with nanoseconds.
    pub created: String,
    /// The brig sandbox (its 64-hex id) behind the container.
    pub sandbox_id: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `start` was given.
    #[serde(default)]
    pub started: bool,
    /// The cgroup the VMM process was put in (`linux.cgroupsPath`), removed by `delete`.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// `config.json`'s hooks, for `start` and `delete`.
    #[serde(default, skip_serializing_if = "super::hooks::Hooks::is_empty")]
    pub hooks: super::hooks::Hooks,
}

impl OciState {
    /// The state a hook reads on its stdin, with `status`.
    pub fn hook_json(&self, status: &str) -> String {
        super::hooks::state_json(&self.id, status, self.pid, &self.bundle, &self.annotations)
    }
}

/// A container's status, as runc names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    /// Running, its VMM frozen (`pause`).
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        }
    }
}

/// A container's directory under the root.
#[derive(Debug, Clone)]
pub struct Container {
    pub dir: PathBuf,
}

/// runc's id rule: `^[\w+-\.]+$`, and not `.` or `..`.
pub fn check_id(id: &str) -> Result<(), OciError> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(OciError::BadId(id.into()))
    }
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), `None` when it is gone or
/// a zombie (it has exited; its parent has not reaped it yet).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field 22 is index 19.
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl Container {
    pub fn new(root: &Path, id: &str) -> Result<Self, OciError> {
        check_id(id)?;
        Ok(Self { dir: root.join(id) })
    }

    /// The container `id`, which must exist.
    pub fn open(root: &Path, id: &str) -> Result<Self, OciError> {
        let c = Self::new(root, id)?;
        if !c.dir.join("state.json").is_file() {
            return Err(OciError::NotExist);
        }
        Ok(c)
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The FIFO the VMM process waits on until `start`.
    pub fn start_fifo(&self) -> PathBuf {
        self.dir.join("start")
    }

    pub fn load(&self) -> Result<OciState, OciError> {
        let text = std::fs::read(self.state_path()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                OciError::NotExist
            } else {
                OciError::io(self.state_path().display().to_string())(e)
            }
        })?;
        serde_json::from_slice(&text).map_err(|e| OciError::Io {
            what: self.state_path().display().to_string(),
            source: std::io::Error::other(e),
        })
    }

    pub fn save(&self, state: &OciState) -> Result<(), OciError> {
        let bytes = serde_json::to_vec(state).unwrap_or_default();
        write_atomic(&self.state_path(), &bytes)
    }
}

impl OciState {
    /// Whether the recorded VMM process is still the one running.
    pub fn alive(&self) -> bool {
        self.pid > 0 && process_start_time(self.pid) == Some(self.start_time)
    }

    /// Its sandbox, once its VM runs. A container is running once `start` returned, and
    /// callers act on it at once (exec probes, pause); its VM may still be starting then
    /// (booting, or making its template): this waits until the VM runs, or its VMM process
    /// is gone.
    pub fn vm_started(&self) -> Result<crate::sandbox::state::Sandbox, OciError> {
        let sandbox = super::sandbox_of(&self.sandbox_id)?;
        while self.alive()
            && !sandbox.is_running()
            && sandbox
                .state()
                .is_ok_and(|s| s.status == crate::sandbox::state::Status::Created)
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(sandbox)
    }

    /// Whether its sandbox's VMM is paused (`pause`; a pod's sandbox container has none).
    fn paused(&self) -> bool {
        !self.sandbox_id.is_empty()
            && super::sandbox_of(&self.sandbox_id)
                .is_ok_and(|s| crate::sandbox::pause::is_paused(&s))
    }

    pub fn status(&self) -> Status {
        match (self.alive(), self.started) {
            (false, _) => Status::Stopped,
            (true, true) if self.paused() => Status::Paused,
            (true, true) => Status::Running,
            (true, false) => Status::Created,
        }
    }

    /// runc's `state` JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let status = self.status();
        serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": if status == Status::Stopped { 0 } else { self.pid },
            "status": status.as_str(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "annotations": self.annotations,
            "owner": "",
        })
    }
}

/// Writes `path` whole or not at all ([`crate::atomic`]; runc writes its pid file so too).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OciError> {
    crate::atomic::write(path, bytes, 0o666).map_err(OciError::io(path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_runc() {
        assert!(check_id("abc-1_2.x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn this_process_is_alive_and_a_stranger_is_not() {
        let me = std::process::id() as i32;
        let t = process_start_time(me).unwrap();
        let mut s = OciState {
            id: "x".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            pid: me,
            start_time: t,
            created: "2026-01-01T00:00:00.000000000Z".into(),
            sandbox_id: "0".repeat(64),
            annotations: BTreeMap::new(),
            started: false,
            cgroup: None,
            hooks: Default::default(),
        };
        assert_eq!(s.status(), Status::Created);
        s.started = true;
        assert_eq!(s.to_json()["status"], "running");
        s.start_time += 1;
        assert_eq!(s.status(), Status::Stopped);
        assert_eq!(s.to_json()["pid"], 0);
    }
}
