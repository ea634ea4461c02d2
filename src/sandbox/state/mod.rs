//! Persistent per-sandbox state under `$BRIG_HOME/sandboxes/<id>/`, as docker keeps
//! /var/lib/docker/containers: `config.json` (what to run, written once), `state.json`
//! (status, VMM pid, times, exit code; replaced atomically), the workload's log, the guest
//! console's log and the scratch disk. Runtime files (sockets, the VMM's lock) live apart,
//! in the runtime directory ([`super::runtime`]).
//!
//! A sandbox is running while its runtime lock is held; a state that says running without
//! a live lock is reported as exited ("the VMM process died").

mod memo;

use super::network::{NetworkOptions, NetworkState};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use brig_protocol::RunSpec;

use super::security::SecurityFlags;
use serde::{Deserialize, Serialize};

use super::resources::{BlkioThrottle, DiskLimits};
use super::runtime;
use crate::vmm::DiskConfig;

const AUTOREMOVE: &str = "autoremove";

/// A sandbox's state could not be read or written, or the name is not known.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No sandbox has this name or id (prefix).
    #[error("no such sandbox: {0}")]
    NotFound(String),
    /// An id prefix matches several sandboxes.
    #[error("{0} matches several sandboxes ({1}); give more of the id")]
    Ambiguous(String, String),
    /// `--name` is taken.
    #[error("the name {0:?} is already in use by sandbox {1}; remove it (brig rm) or choose another name")]
    NameInUse(String, String),
    /// A name docker would not accept.
    #[error("invalid sandbox name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-]* is allowed")]
    BadName(String),
    /// Reading or writing a state file failed.
    #[error("sandbox state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A state file is not what brig wrote.
    #[error("sandbox state {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A disk as the config records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
    pub serial: String,
    /// `--device-*-bps`/`-iops` limits the VMM enforces on this disk.
    #[serde(default)]
    pub limits: DiskLimits,
}

impl From<&DiskSpec> for DiskConfig {
    fn from(d: &DiskSpec) -> Self {
        DiskConfig {
            path: d.path.clone(),
            read_only: d.read_only,
            serial: d.serial.clone(),
            limits: d.limits.into(),
        }
    }
}

/// What a sandbox runs; written when it is created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// 64 hex digits; the first 12 are the short id.
    pub id: String,
    pub name: String,
    /// The image as the user named it, and its ID.
    pub image: String,
    pub image_id: String,
    pub created: String,
    pub kernel: PathBuf,
    pub mem_mib: u64,
    pub cpus: u8,
    /// `--cpuset-cpus`: the host CPUs the VMM runs on (empty: any), and the flag as given.
    #[serde(default)]
    pub host_cpus: Vec<usize>,
    #[serde(default)]
    pub cpuset_cpus: String,
    /// `--cpuset-mems` as given.
    #[serde(default)]
    pub cpuset_mems: String,
    /// The blkio throttles as given (each disk's share is in its [`DiskSpec`]).
    #[serde(default)]
    pub blkio: BlkioThrottle,
    pub disks: Vec<DiskSpec>,
    /// The main workload.
    pub run: RunSpec,
    /// The image's StopSignal (`brig stop`), e.g. "SIGTERM".
    pub stop_signal: String,
    pub auto_remove: bool,
    pub detached: bool,
    /// `--network`, `-p`, `--dns`, ... (configs from before networking: none).
    #[serde(default)]
    pub network: NetworkOptions,
    /// `--cap-add`, `--cap-drop`, `--privileged`, `--security-opt` as given (configs from
    /// before confinement: none, and their RunSpec has no security either).
    #[serde(default)]
    pub security: SecurityFlags,
    /// `-v`, `--mount`, `--tmpfs`, resolved (configs from before volumes: none).
    #[serde(default)]
    pub volumes: Vec<super::volumes::ResolvedMount>,
}

/// Lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

/// What happened to a sandbox so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxState {
    pub status: Status,
    /// The VMM process (brig itself for foreground runs).
    pub pid: u32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    /// Why it ended abnormally (kernel panic, VMM died, ...).
    pub error: Option<String>,
    /// How its VM came to run: `boot`, `template` or `snapshot`.
    #[serde(default)]
    pub start_path: Option<String>,
    /// The network while it runs (address, published ports, policy).
    #[serde(default)]
    pub network: Option<NetworkState>,
    /// Running, with its VMM paused (`brig pause`, see [`super::pause`]).
    #[serde(default)]
    pub paused: bool,
}

impl SandboxState {
    pub fn created() -> Self {
        Self {
            status: Status::Created,
            pid: 0,
            started_at: None,
            finished_at: None,
            exit_code: None,
            error: None,
            start_path: None,
            network: None,
            paused: false,
        }
    }
}

/// Whether process `pid` runs: it exists and is not a zombie. 0 (not recorded) counts as
/// alive, so that only a VMM known to be dead changes what the lock says.
fn process_alive(pid: u32) -> bool {
    if pid == 0 {
        return true;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the command name's closing parenthesis.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x"))
}

/// Writes `bytes` to `path` atomically ([`crate::atomic`]).
/// Replaces `path` with `bytes`: flushed to the disk unless `volatile`.
fn write_atomic(path: &Path, bytes: &[u8], volatile: bool) -> Result<(), StateError> {
    if volatile {
        crate::atomic::write_volatile(path, bytes, 0o666)
    } else {
        crate::atomic::write(path, bytes, 0o666)
    }
    .map_err(io_err(path))
}

fn read_json<T: for<'a> Deserialize<'a>>(path: &Path) -> Result<T, StateError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

fn sandboxes_dir(home: &Path) -> PathBuf {
    home.join("sandboxes")
}

/// Holds `locks/sandbox-names` while names are checked and taken (with the store's other
/// locks: nothing but sandboxes lives under `sandboxes/`, so that it is empty once every
/// sandbox is removed).
fn names_lock(home: &Path) -> Result<File, StateError> {
    let dir = sandboxes_dir(home);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let locks = home.join("locks");
    fs::create_dir_all(&locks).map_err(io_err(&locks))?;
    let path = locks.join("sandbox-names");
    let f = File::create(&path).map_err(io_err(&path))?;
    // Blocks until the lock is ours.
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err(&path)(e.into()))?;
    Ok(f)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A name as docker makes them up: adjective_noun.
/// `t` in RFC 3339 with nanoseconds (`2024-01-02T03:04:05.123456789Z`), as the state files
/// and docker's `inspect` write times.
pub fn rfc3339(t: jiff::Timestamp) -> String {
    jiff::fmt::temporal::DateTimePrinter::new()
        .precision(Some(9))
        .timestamp_to_string(&t)
}

/// The current time as [`rfc3339`] writes it.
pub fn now_rfc3339() -> String {
    rfc3339(jiff::Timestamp::now())
}

pub fn generate_name(id: &str) -> String {
    const ADJ: [&str; 16] = [
        "brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry",
        "nifty", "proud", "quiet", "sharp", "tender", "witty",
    ];
    const NOUN: [&str; 16] = [
        "anchor", "barge", "cutter", "dory", "ferry", "galley", "hull", "junk", "keel", "mast",
        "oar", "pilot", "rudder", "sloop", "tender", "wharf",
    ];
    let b = u64::from_str_radix(&id[..id.len().min(12)], 16).unwrap_or(0);
    format!(
        "{}_{}_{}",
        ADJ[(b & 15) as usize],
        NOUN[((b >> 4) & 15) as usize],
        &id[..4.min(id.len())]
    )
}

/// One sandbox's state directory.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub dir: PathBuf,
    pub id: String,
}

impl Sandbox {
    /// Sandbox `id` of the store at `home` (whether or not it exists).
    pub fn at(home: &Path, id: &str) -> Self {
        Self {
            dir: sandboxes_dir(home).join(id),
            id: id.to_string(),
        }
    }

    /// Creates the state directory for `config`, taking its name (unique).
    pub fn create(home: &Path, config: &SandboxConfig) -> Result<Self, StateError> {
        if !valid_name(&config.name) {
            return Err(StateError::BadName(config.name.clone()));
        }
        let _lock = names_lock(home)?;
        for other in list(home)? {
            if other.name().is_ok_and(|n| n == config.name) {
                return Err(StateError::NameInUse(
                    config.name.clone(),
                    other.short_id().to_string(),
                ));
            }
        }
        let dir = sandboxes_dir(home).join(&config.id);
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        let sandbox = Self {
            dir,
            id: config.id.clone(),
        };
        if config.auto_remove {
            let marker = sandbox.dir.join(AUTOREMOVE);
            File::create(&marker).map_err(io_err(&marker))?;
        }
        sandbox.write_config(config)?;
        sandbox.write_state(&SandboxState::created())?;
        Ok(sandbox)
    }

    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }

    pub fn config(&self) -> Result<SandboxConfig, StateError> {
        let path = self.dir.join("config.json");
        if let Some(config) = memo::get(&path) {
            return Ok(config);
        }
        let config = read_json(&path)?;
        memo::put(&path, &config);
        Ok(config)
    }

    /// Its name, read from its config without building the rest of it (every create and
    /// every lookup by name reads each sandbox's).
    pub fn name(&self) -> Result<String, StateError> {
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        read_json::<Named>(&self.dir.join("config.json")).map(|n| n.name)
    }

    /// Replaces the config (`update` changes the workload's limits in it).
    pub fn write_config(&self, config: &SandboxConfig) -> Result<(), StateError> {
        let path = self.dir.join("config.json");
        let bytes = serde_json::to_vec_pretty(config).unwrap_or_default();
        write_atomic(&path, &bytes, self.ephemeral())?;
        memo::put(&path, config);
        Ok(())
    }

    /// The recorded state (see [`Sandbox::current_state`] for what is true now).
    pub fn state(&self) -> Result<SandboxState, StateError> {
        read_json(&self.dir.join("state.json"))
    }

    pub fn write_state(&self, state: &SandboxState) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        write_atomic(&self.dir.join("state.json"), &bytes, self.ephemeral())
    }

    /// Whether it is removed when its VM ends (`--rm`): its files are then not flushed to
    /// the disk each time they change (up to four flushes of a `brig run --rm`, each a
    /// journal commit on a disk-backed home, for files deleted a moment later).
    fn ephemeral(&self) -> bool {
        self.dir.join(AUTOREMOVE).exists()
    }

    /// Whether a VM of it is alive (its VMM, or a `brig cp` maintenance VM, holds the
    /// runtime lock).
    pub fn is_live(&self) -> bool {
        runtime::is_live(self.short_id())
    }

    /// Whether its workload runs: started, and its VMM alive. (A stopped sandbox whose disks
    /// a maintenance VM has open is live, but not running.)
    pub fn is_running(&self) -> bool {
        self.is_live()
            && self
                .state()
                .is_ok_and(|s| s.status == Status::Running && process_alive(s.pid))
    }

    /// Waits up to `d` for the sandbox's VM to be gone (its keeper has let go of the
    /// runtime lock); false when it is still there.
    pub fn wait_gone(&self, d: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + d;
        while self.is_live() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        true
    }

    /// Waits up to `within` for the keeper of a VMM that died to record the end and let go
    /// of the lock (a moment: it reaps the VMM, writes the state, and tears down).
    pub fn settle(&self, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline
            && self.is_live()
            && self
                .state()
                .is_ok_and(|s| s.status == Status::Running && !process_alive(s.pid))
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The state, corrected for a VMM that died without recording its end.
    pub fn current_state(&self) -> Result<SandboxState, StateError> {
        let mut state = self.state()?;
        // A jailed VMM runs as its keeper's child, and the keeper holds the lock until it
        // has reaped it and recorded the end: a VMM killed a moment ago is a zombie (or
        // gone) while the lock is still held, and reads as dead already.
        if state.status == Status::Running && !(self.is_live() && process_alive(state.pid)) {
            state.status = Status::Exited;
            state.paused = false;
            state
                .error
                .get_or_insert_with(|| "the VMM process died".into());
            // Record it, so that later readers agree; a racing writer wins either way. While
            // the lock is held, its keeper is winding down and records the end itself.
            if !self.is_live() {
                let _ = self.write_state(&state);
            }
        }
        Ok(state)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("workload.log")
    }

    pub fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Removes the state directory and everything in it.
    pub fn remove(&self) -> Result<(), StateError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.dir)(e)),
        }
    }
}

/// Every sandbox, oldest first.
pub fn list(home: &Path) -> Result<Vec<Sandbox>, StateError> {
    let dir = sandboxes_dir(home);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut all: Vec<(std::time::SystemTime, Sandbox)> = entries
        .flatten()
        .filter(|e| e.path().join("config.json").is_file())
        .filter_map(|e| {
            let id = e.file_name().to_str()?.to_string();
            let created = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((created, Sandbox { dir: e.path(), id }))
        })
        .collect();
    all.sort_by_key(|(t, _)| *t);
    Ok(all.into_iter().map(|(_, s)| s).collect())
}

/// Finds a sandbox by name, full id, or unique id prefix (as docker does).
pub fn resolve(home: &Path, name_or_id: &str) -> Result<Sandbox, StateError> {
    let all = list(home)?;
    if let Some(s) = all.iter().find(|s| s.id == name_or_id) {
        return Ok(s.clone());
    }
    if let Some(s) = all.iter().find(|s| s.name().is_ok_and(|n| n == name_or_id)) {
        return Ok(s.clone());
    }
    let matches: Vec<&Sandbox> = if name_or_id.is_empty() {
        Vec::new()
    } else {
        all.iter()
            .filter(|s| s.id.starts_with(name_or_id))
            .collect()
    };
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(StateError::NotFound(name_or_id.to_string())),
        many => Err(StateError::Ambiguous(
            name_or_id.to_string(),
            many.iter()
                .map(|s| s.short_id().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// Removes what sandboxes killed before their cleanup left behind: runtime directories
/// without a live VM, and auto-removed state directories whose VM is gone.
pub fn sweep_stale(home: &Path) {
    runtime::sweep_stale();
    let Ok(all) = list(home) else { return };
    for s in all {
        // A sandbox's runtime directory (and its lock) exists before its state directory,
        // so a state directory without a live lock belongs to a VM that is gone.
        if s.dir.join(AUTOREMOVE).exists() && !s.is_live() {
            let _ = s.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn config(id: &str, name: &str) -> SandboxConfig {
        SandboxConfig {
            id: id.into(),
            name: name.into(),
            image: "bb".into(),
            image_id: "sha256:00".into(),
            created: "2024-01-01T00:00:00Z".into(),
            kernel: "/k".into(),
            mem_mib: 128,
            cpus: 1,
            host_cpus: Vec::new(),
            cpuset_cpus: String::new(),
            cpuset_mems: String::new(),
            blkio: BlkioThrottle::default(),
            disks: Vec::new(),
            run: RunSpec::default(),
            stop_signal: "SIGTERM".into(),
            auto_remove: false,
            detached: true,
            network: NetworkOptions::default(),
            security: SecurityFlags::default(),
            volumes: Vec::new(),
        }
    }

    #[test]
    fn names_are_unique_and_resolve_by_prefix() {
        let home = tempfile::tempdir().unwrap();
        let a = Sandbox::create(home.path(), &config(&"a1".repeat(32), "web")).unwrap();
        Sandbox::create(home.path(), &config(&"a2".repeat(32), "db")).unwrap();
        assert!(matches!(
            Sandbox::create(home.path(), &config(&"b".repeat(64), "web")),
            Err(StateError::NameInUse(..))
        ));
        assert!(matches!(
            Sandbox::create(home.path(), &config(&"c".repeat(64), "-bad")),
            Err(StateError::BadName(_))
        ));
        assert_eq!(resolve(home.path(), "web").unwrap().id, a.id);
        assert_eq!(resolve(home.path(), "a1a1").unwrap().id, a.id);
        assert!(matches!(
            resolve(home.path(), "a"),
            Err(StateError::Ambiguous(..))
        ));
        assert!(matches!(
            resolve(home.path(), "zz"),
            Err(StateError::NotFound(_))
        ));
        assert!(matches!(
            resolve(home.path(), ""),
            Err(StateError::NotFound(_))
        ));
        assert_eq!(list(home.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_dead_vmm_reads_as_exited() {
        let home = tempfile::tempdir().unwrap();
        let s = Sandbox::create(home.path(), &config(&"d".repeat(64), "x")).unwrap();
        assert_eq!(s.state().unwrap().status, Status::Created);
        let mut st = SandboxState::created();
        st.status = Status::Running;
        st.pid = 999_999;
        s.write_state(&st).unwrap();
        let now = s.current_state().unwrap();
        assert_eq!(now.status, Status::Exited);
        assert_eq!(now.error.as_deref(), Some("the VMM process died"));
        assert_eq!(s.state().unwrap().status, Status::Exited);
        s.remove().unwrap();
        assert!(list(home.path()).unwrap().is_empty());
        let left: Vec<_> = fs::read_dir(sandboxes_dir(home.path())).unwrap().collect();
        assert!(
            left.is_empty(),
            "nothing is left under sandboxes/: {left:?}"
        );
    }

    #[test]
    fn a_zombie_or_missing_process_is_not_alive() {
        assert!(process_alive(std::process::id()));
        assert!(process_alive(0), "an unrecorded pid defers to the lock");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it has exited.
        let zombie = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            !process_alive(pid)
        });
        assert!(zombie, "an exited, unreaped child reads as not alive");
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn generated_names_are_valid() {
        let n = generate_name(&"0123456789ab".repeat(5));
        assert!(valid_name(&n), "{n}");
    }
}
