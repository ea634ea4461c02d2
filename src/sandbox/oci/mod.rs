//! brig as an OCI runtime, in runc's dialect (`brig-runc`): what containerd's runc shim,
//! conmon and dockerd run for each container. A container is a brig sandbox whose VMM
//! process (`brig oci __supervise`) is the pid callers wait on: `create` starts it with the
//! caller's stdio and it waits for `start` before it boots; it exits with the workload's
//! status (128+N for signal N).
//!
//! - [`bundle`]: `config.json` and the workload it makes; runc's create-time executable check.
//! - [`rootfs`]: the bundle's root directory as a cached erofs image.
//! - [`container`]: the container's state under the runtime root, and runc's state JSON.
//! - [`verbs`]: create, start, kill, delete, run, list; [`supervise`]: the VMM process.
//! - [`exec`]: exec (its detached proxy) and ps; [`console`]: a terminal through `--console-socket`.

pub mod bundle;
pub mod cgroup;
pub mod console;
pub mod container;
pub mod exec;
pub mod hooks;
pub mod keeper;
pub mod mounts;
pub mod pod;
pub mod rootfs;
pub mod supervise;
pub mod update;
pub mod verbs;

pub use container::{default_root, Container};
pub use verbs::{create, delete, kill, list, pause, run, start, CreateRequest};

/// The brig sandbox `sandbox_id` behind a container, in brig's default home.
pub(crate) fn sandbox_of(sandbox_id: &str) -> Result<crate::sandbox::state::Sandbox, OciError> {
    let home = crate::image::store::default_home().map_err(|e| OciError::Sandbox(e.to_string()))?;
    Ok(crate::sandbox::state::Sandbox::at(&home, sandbox_id))
}

/// The hidden subcommand (after `oci`) that is a container's VMM process.
pub const SUPERVISE_COMMAND: &str = "__supervise";

/// Why an OCI verb failed; the message is what runc would say where callers parse it.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// `config.json` is missing or malformed.
    #[error("bundle: {0}")]
    Bundle(String),
    /// The process cannot be executed (runc's create-time `LookPath`).
    #[error("{0}")]
    Exec(String),
    /// The root directory could not be turned into an image.
    #[error("rootfs: {0}")]
    Rootfs(String),
    /// No container by that id.
    #[error("container does not exist")]
    NotExist,
    /// The id is taken.
    #[error("container with id exists: {0}")]
    Exists(String),
    /// An id runc would refuse.
    #[error("invalid container id format: {0}")]
    BadId(String),
    /// A verb not allowed in the container's status.
    #[error("{0}")]
    Status(String),
    /// An unknown signal name or number.
    #[error("unknown signal {0:?}")]
    Signal(String),
    /// The sandbox could not be made.
    #[error("{0}")]
    Sandbox(String),
    /// A hook failed ("error running prestart hook #0: ...").
    #[error("{0}")]
    Hook(String),
    /// A file under the runtime root, or a process, failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl OciError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// A signal as runc's `kill` takes it: a number, or a name with or without `SIG`.
pub fn parse_signal(s: &str) -> Result<i32, OciError> {
    if s == "0" {
        // Delivers nothing: only whether the container's process is there.
        return Ok(0);
    }
    super::control::parse_signal(s).ok_or_else(|| OciError::Signal(s.into()))
}

/// runc's `features` output (runc ≥ 1.1; containerd 2 asks and tolerates failure).
pub fn features_json() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["bind", "rbind", "ro", "rw"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": &crate::sandbox::security::caps::NAMES[..],
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {"io.brig.runtime": "microvm"}
    })
}

/// runc's `spec`: the config.json runc 1.1 writes (a terminal running `sh` from a
/// read-only `rootfs`, runc's three capabilities, its mounts, namespaces and masked paths),
/// so that tools and tests written against `runc spec` find what they expect.
pub fn default_spec() -> serde_json::Value {
    let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("sigusr1").unwrap(), libc::SIGUSR1);
        // Signal 0 only checks that the container's process is there, as under runc.
        assert_eq!(parse_signal("0").unwrap(), 0);
        assert!(parse_signal("65").is_err());
        assert!(parse_signal("NOPE").is_err());
    }
}
