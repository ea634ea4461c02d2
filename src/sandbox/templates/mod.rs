//! Templates: a sandbox VM booted once to "agent ready", saved, and restored for every later
//! `brig run` of the same shape instead of booting (design: ../shared/design/snapshot.md §5).
//!
//! A template is made by a cold boot of the run's VM with placeholder disks (empty files: the
//! guest sees 0-sector disks and caches nothing of them) whose agent, on Freeze, listens on
//! [`RESTORE_PORT`] and drops its connection; once the VM holds no vsock connection it is
//! saved with [`crate::vmm::RunningVm::snapshot`]. A restore maps the memory file
//! copy-on-write, attaches the run's real disks (the VMM raises a config change) and hands the
//! agent fresh entropy, the host's clock and the disks' sizes ([`restore_message`]).
//!
//! On disk: `$BRIG_HOME/templates/<key>/{state,memory,key.json}`, `<key>` a hash of
//! everything the saved guest depends on ([`KeyInputs`]). A template is built under
//! `templates/locks/<key>.lock` (a second `brig run` waits for it), in a temporary directory
//! renamed into place when whole, and never written again: removal is an unlink (VMs still
//! mapping its memory keep their pages).
//!
//! A VM with a network device restores a template made with the same device unwired
//! ([`crate::vmm::NetDeviceConfig::without_wire`]: the template's guest never sees a
//! network), and gets the sandbox's own TAP or passt socket at restore; the agent gives the interface (up since
//! the template was made) the sandbox's MAC address once it has its IPv4 address, which
//! announces it ([`brig_protocol::NetworkSpec::mac`]).
//!
//! A VM with shared directories restores a template made with as many virtio-fs devices,
//! under the same tags, and no file server ([`crate::vmm::FsConfig::placeholder`]): the
//! template's guest probes them and mounts nothing. A restore wires each to the sandbox's own
//! server and maps the template copy-on-write like any other: the servers see only the
//! device's bounce buffers, never guest memory (see `devices::virtio::fs_relay`).

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use brig_protocol::{
    read_message, write_message, DiskSize, Message, NetworkSpec, RestoreSpec, RESTORE_PORT,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::runtime::{new_id, RuntimeDir};
use super::vm::{self, VmError};
use crate::vmm::snapshot::{self, host::HostFingerprint};
use crate::vmm::{
    self, ConsoleLog, DiskConfig, FsConfig, NetDeviceConfig, VmConfig, DEFAULT_GUEST_CID,
};

/// The directory under brig's home.
const DIR: &str = "templates";
/// What a template directory records about its key (for `brig template ls`).
const KEY_FILE: &str = "key.json";
/// How long making a template may take (a cold boot under nested emulation, and the save).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a restored agent may take to answer.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of host entropy each restored VM gets.
const SEED_BYTES: usize = 64;

/// A template could not be found, made or used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file of the template store.
    #[error("template store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    /// The guest agent did not do its part.
    #[error("the template's guest agent: {0}")]
    Agent(String),
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Whether templates are used at all: not with `BRIG_TEMPLATES=off` (or `BRIG_SNAPSHOT=off`,
/// the name), which `brig run --cold` sets for itself and its VMM process.
pub fn enabled() -> bool {
    ["BRIG_TEMPLATES", "BRIG_SNAPSHOT"].iter().all(|k| {
        std::env::var(k).map_or(true, |v| {
            !matches!(
                v.to_ascii_lowercase().as_str(),
                "off" | "0" | "false" | "no"
            )
        })
    })
}

/// Everything a saved guest depends on; its hash names the template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInputs {
    /// The snapshot format's version.
    pub format: u32,
    /// The kernel file: its path, size, inode and modification time (hashing a vmlinux on
    /// every run costs more than the restore saves; any rebuild changes these).
    pub kernel: String,
    pub kernel_size: u64,
    pub kernel_ino: u64,
    pub kernel_mtime_ns: i128,
    /// The initramfs: brig's own by its layout and the guest agent build's SHA-256 (taken when
    /// brig was built), another by its SHA-256.
    pub initramfs: String,
    pub cmdline_extra: String,
    pub cpus: u8,
    pub mem_mib: u64,
    /// The disks in guest order: read-only or not (fixed when the driver probes).
    pub disks_read_only: Vec<bool>,
    /// The network device's MTU (its driver fixes the largest MTU at probe), or `None`
    /// without one.
    #[serde(default)]
    pub net_mtu: Option<u16>,
    /// The tags of the shared directories (virtio-fs devices), in order: the guest's driver
    /// reads them at probe.
    #[serde(default)]
    pub fs_tags: Vec<String>,
    pub vsock_cid: u64,
    /// The brig executable that saves and restores (size, inode, modification time): a
    /// rebuilt VMM may set up vCPUs and devices otherwise (CPUID it offers, device state it
    /// saves) while its version string stays the same.
    pub vmm_build: String,
    /// The host (kernel, brig, KVM's CPUID and MSR lists).
    pub host: HostFingerprint,
}

impl KeyInputs {
    /// The template's name: a hash of the inputs.
    pub fn key(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let hex = format!("{:x}", Sha256::digest(&json));
        hex[..32].to_string()
    }
}

/// The key inputs of `vm`'s template on this host.
pub fn inputs_of(vm: &VmConfig) -> Result<KeyInputs, TemplateError> {
    let meta = std::fs::metadata(&vm.kernel).map_err(io_err(&vm.kernel))?;
    let kvm = vmm::kvm::open().map_err(|e| TemplateError::Agent(e.to_string()))?;
    let kernel = std::fs::canonicalize(&vm.kernel).unwrap_or_else(|_| vm.kernel.clone());
    Ok(KeyInputs {
        format: snapshot::format::VERSION,
        kernel: kernel.display().to_string(),
        kernel_size: meta.len(),
        kernel_ino: meta.ino(),
        kernel_mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        initramfs: vm.initrd.identity(),
        cmdline_extra: vm.cmdline_extra.clone(),
        cpus: vm.cpus,
        mem_mib: vm.mem_mib,
        disks_read_only: vm.disks.iter().map(|d| d.read_only).collect(),
        net_mtu: vm.net.as_ref().map(|n| n.mtu),
        fs_tags: vm.fs.iter().map(|f| f.tag.clone()).collect(),
        vsock_cid: DEFAULT_GUEST_CID,
        vmm_build: vmm_build(),
        host: snapshot::host::fingerprint(&kvm)?,
    })
}

/// This brig executable's identity (see [`KeyInputs::vmm_build`]); empty when unreadable.
fn vmm_build() -> String {
    std::fs::metadata("/proc/self/exe")
        .map(|m| format!("{}:{}:{}.{}", m.len(), m.ino(), m.mtime(), m.mtime_nsec()))
        .unwrap_or_default()
}

/// Records the working set of the template in `dir` (see
/// [`snapshot::workingset`]) from process `pid`, a VMM that restored it and whose workload
/// has just started, unless the template has one already. Failing only costs later restores
/// their head start, so it is logged, not reported.
pub fn record_working_set(dir: &Path, pid: u32) {
    use snapshot::workingset::{WorkingSet, WORKING_SET_FILE};
    if dir.join(WORKING_SET_FILE).exists() {
        return;
    }
    let saved = snapshot::read(dir)
        .map_err(|e| e.to_string())
        .and_then(|(saved, _)| {
            WorkingSet::record(pid, &dir.join(snapshot::MEMORY_FILE), &saved.regions)
                .map_err(|e| e.to_string())
        })
        .and_then(|set| match set.pages() {
            0 => Ok(()),
            _ => set.save(dir).map_err(|e| e.to_string()),
        });
    if let Err(e) = saved {
        tracing::debug!("recording the working set of {}: {e}", dir.display());
    }
}

/// The template store under `home`.
pub fn store_dir(home: &Path) -> PathBuf {
    home.join(DIR)
}

/// The template for `vm`: found, or made now (a cold boot and a save, once per key, while
/// concurrent callers wait on its lock). Returns its directory and whether it was made now.
pub fn ensure(home: &Path, vm: &VmConfig) -> Result<(PathBuf, bool), TemplateError> {
    let inputs = inputs_of(vm)?;
    let key = inputs.key();
    let store = store_dir(home);
    let dir = store.join(&key);
    if dir.join(snapshot::STATE_FILE).is_file() {
        return Ok((dir, false));
    }
    let locks = store.join("locks");
    std::fs::create_dir_all(&locks).map_err(io_err(&locks))?;
    let lock_path = locks.join(format!("{key}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err(&lock_path)(e.into()))?;
    // Whoever held the lock may have made it meanwhile.
    if dir.join(snapshot::STATE_FILE).is_file() {
        return Ok((dir, false));
    }
    sweep_partial(&store, &key);
    let tmp = store.join(format!(".tmp-{key}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let made = build(vm, &inputs, &tmp).and_then(|()| {
        // A broken leftover under the final name (a state file missing) goes first.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(io_err(&dir))
    });
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    made.map(|()| (dir, true))
}

/// Removes what builds of `key` killed midway left (`.tmp-<key>-<pid>`: a partial memory
/// file can be large). Called with the key's lock held, so no build of it is under way.
fn sweep_partial(store: &Path, key: &str) {
    let prefix = format!(".tmp-{key}-");
    for e in std::fs::read_dir(store).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Whether a run of `vm` restores a template, as [`choose`] decided.
#[derive(Debug)]
pub struct Choice {
    /// The template to restore.
    pub dir: Option<PathBuf>,
    /// Why not, when not.
    pub why_not: Option<String>,
    /// When the choice was made (a template made now included).
    pub at: Instant,
}

/// The template a run of `vm` restores: none when templates are off or do not apply, or when
/// none could be made (said in one line on stderr; the run boots cold).
pub fn choose(home: &Path, vm: &VmConfig) -> Choice {
    let (dir, why_not) = if !enabled() {
        (None, Some("templates are off".to_string()))
    } else {
        match ensure(home, vm) {
            Ok((dir, _)) => (Some(dir), None),
            Err(e) => {
                eprintln!("brig: warning: no template ({e}); booting cold");
                (None, Some(e.to_string()))
            }
        }
    };
    Choice {
        dir,
        why_not,
        at: Instant::now(),
    }
}

/// What a `brig run` looks like to its template (`brig template build`'s flags).
#[derive(Debug, Clone)]
pub struct Shape {
    pub mem_mib: u64,
    pub cpus: u8,
    /// `--read-only`: no scratch disk.
    pub read_only: bool,
    /// A network device (every `--network` but `none`).
    pub network: bool,
    /// Shared directories (`-v`/`--mount` binds and named volumes; not `--tmpfs`).
    pub volumes: usize,
}

/// The MAC address a template's unwired network device offers (each sandbox's agent sets
/// its own).
const TEMPLATE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

/// Makes (or finds) the template a `brig run` of `shape` with `kernel` restores, as `brig
/// template build` does ahead of the first run.
pub fn build_for(
    home: &Path,
    kernel: &Path,
    shape: &Shape,
) -> Result<(String, bool), TemplateError> {
    let Shape {
        mem_mib,
        cpus,
        read_only,
        network,
        volumes,
    } = *shape;
    // Only whether each disk is read-only (and its serial) matters to a template.
    let disk = |read_only: bool, serial: &str| DiskConfig {
        path: PathBuf::new(),
        read_only,
        serial: serial.into(),
        limits: Default::default(),
    };
    let mut disks = vec![disk(true, "brig-rootfs")];
    if !read_only {
        disks.push(disk(false, "brig-scratch"));
    }
    let vm = VmConfig {
        kernel: kernel.to_path_buf(),
        initrd: crate::vmm::initramfs::Initrd::Guest,
        cmdline_extra: String::new(),
        mem_mib,
        cpus,
        host_cpus: Vec::new(),
        console: ConsoleLog::default(),
        disks,
        vsock: None,
        net: None,
        fs: (0..volumes)
            .map(|i| FsConfig {
                socket: None,
                tag: super::volumes::tag(i),
            })
            .collect(),
    };
    let vm = VmConfig {
        net: network
            .then(|| NetDeviceConfig::without_wire(TEMPLATE_MAC, super::network::MTU))
            .transpose()
            .map_err(io_err(Path::new("eventfd")))?,
        ..vm
    };
    let (dir, made) = ensure(home, &vm)?;
    let key = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((key, made))
}

/// `vm`'s shape without its network device and its vsock device.
fn shape_of(vm: &VmConfig) -> VmConfig {
    VmConfig {
        kernel: vm.kernel.clone(),
        initrd: vm.initrd.clone(),
        cmdline_extra: vm.cmdline_extra.clone(),
        mem_mib: vm.mem_mib,
        cpus: vm.cpus,
        host_cpus: vm.host_cpus.clone(),
        console: vm.console.clone(),
        disks: vm.disks.clone(),
        vsock: None,
        net: None,
        fs: vm.fs.clone(),
    }
}

/// Boots `vm` with placeholder disks into `dir` and saves it there at "agent ready".
fn build(vm: &VmConfig, inputs: &KeyInputs, dir: &Path) -> Result<(), TemplateError> {
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let mut disks = Vec::new();
    for (i, d) in vm.disks.iter().enumerate() {
        let path = dir.join(format!("placeholder-{i}"));
        std::fs::File::create(&path).map_err(io_err(&path))?;
        disks.push(DiskConfig {
            path,
            read_only: d.read_only,
            serial: d.serial.clone(),
            limits: Default::default(),
        });
    }
    let console = ConsoleLog::default();
    let net = vm.net.as_ref().map(|n| n.unwired()).transpose();
    let config = VmConfig {
        console: console.clone(),
        disks,
        fs: vm.fs.iter().map(FsConfig::placeholder).collect(),
        net: net.map_err(io_err(dir))?,
        ..shape_of(vm)
    };
    let runtime = RuntimeDir::create(&new_id()).map_err(io_err(dir))?;
    let agent_vm = vm::start(config, &runtime)?;
    let agent = |what: &str| {
        let tail = console.tail();
        let last = tail.lines().last().unwrap_or("").to_string();
        TemplateError::Agent(format!("{what} (console: {last})"))
    };
    let mut conn = agent_vm
        .accept(Some(deadline))
        .map_err(|end| agent(&format!("no connection: {end:?}")))?;
    conn.set_read_timeout(Some(BUILD_TIMEOUT)).ok();
    match read_message(&mut conn) {
        Ok(Some(Message::Hello { .. })) => {}
        other => return Err(agent(&format!("expected hello, got {other:?}"))),
    }
    write_message(&mut conn, &Message::Freeze).map_err(|e| agent(&e.to_string()))?;
    match read_message(&mut conn) {
        Ok(Some(Message::Done { error: None })) => {}
        other => return Err(agent(&format!("freeze not acknowledged: {other:?}"))),
    }
    // The agent closes its side; the VM may be saved once the VMM has let go of it too.
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    drop(conn);
    agent_vm
        .vm
        .wait_until_saveable(deadline)
        .map_err(|why| agent(&why))?;
    agent_vm.vm.snapshot(dir).map_err(VmError::from)?;
    for i in 0..vm.disks.len() {
        let _ = std::fs::remove_file(dir.join(format!("placeholder-{i}")));
    }
    let record = Record {
        inputs: inputs.clone(),
        created: super::state::now_rfc3339(),
    };
    let path = dir.join(KEY_FILE);
    let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
    std::fs::write(&path, json).map_err(io_err(&path))?;
    Ok(())
}

/// What `key.json` holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub inputs: KeyInputs,
    pub created: String,
}

/// The sizes of `disks` as the restored guest names them (`vda`, `vdb`, ...): read before
/// the VM starts, while a VMM about to be jailed still sees the files by path.
pub fn disk_sizes(disks: &[DiskConfig]) -> Result<Vec<DiskSize>, TemplateError> {
    let mut sizes = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let len = std::fs::metadata(&d.path).map_err(io_err(&d.path))?.len();
        let letter = char::from(b'a' + u8::try_from(i).unwrap_or(25).min(25));
        sizes.push(DiskSize {
            name: format!("vd{letter}"),
            sectors: len / 512,
        });
    }
    Ok(sizes)
}

/// The first message to the agent of a VM restored with disks of `sizes`
/// ([`disk_sizes`]): fresh entropy, the host's clock now, the sizes, and the network to
/// configure anew (a checkpoint's; see [`RestoreSpec::network`]).
pub fn restore_message(
    sizes: Vec<DiskSize>,
    network: Option<NetworkSpec>,
) -> Result<Message, TemplateError> {
    let mut seed = vec![0u8; SEED_BYTES];
    match rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty()) {
        Ok(n) if n == seed.len() => {}
        _ => return Err(TemplateError::Agent("no host entropy".into())),
    }
    let realtime_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Ok(Message::Restore(RestoreSpec {
        realtime_ns,
        seed,
        disks: sizes,
        network,
    }))
}

/// Reaches the agent of a VM just restored from a template through its vsock socket, sends
/// it [`restore_message`] and waits for its Hello (the copy is unique and its disks, of
/// `sizes`, are attached). Returns the connection and the Hello. Gives up once `alive` says
/// the VM has ended (a guest that crashed on resuming).
pub fn reconnect(
    vsock_socket: &Path,
    sizes: Vec<DiskSize>,
    network: Option<NetworkSpec>,
    alive: &dyn Fn() -> bool,
) -> Result<(UnixStream, Message), TemplateError> {
    let msg = restore_message(sizes, network)?;
    let mut conn =
        super::control::connect_while(vsock_socket, RESTORE_PORT, RESTORE_TIMEOUT, alive)
            .map_err(|e| TemplateError::Agent(e.to_string()))?;
    write_message(&mut conn, &msg).map_err(|e| TemplateError::Agent(e.to_string()))?;
    conn.set_read_timeout(Some(RESTORE_TIMEOUT)).ok();
    let hello = match read_message(&mut conn) {
        Ok(Some(hello @ Message::Hello { .. })) => hello,
        other => {
            return Err(TemplateError::Agent(format!(
                "expected hello after restore, got {other:?}"
            )))
        }
    };
    conn.set_read_timeout(None).ok();
    Ok((conn, hello))
}

/// Removes the template in `dir` (a damaged one, or at the user's request). VMs restored from
/// it keep their mapping: the files are unlinked, not truncated.
pub fn discard(dir: &Path) -> Result<(), TemplateError> {
    let trash = dir.with_file_name(format!(".trash-{}", new_id()));
    std::fs::rename(dir, &trash).map_err(io_err(dir))?;
    std::fs::remove_dir_all(&trash).map_err(io_err(&trash))
}

/// A template as `brig template ls` shows it.
#[derive(Debug)]
pub struct Listed {
    pub key: String,
    pub dir: PathBuf,
    /// `None` when its key file is unreadable.
    pub record: Option<Record>,
    /// Bytes the template takes on disk (its memory file is sparse).
    pub disk_bytes: u64,
}

/// The templates under `home`.
pub fn list(home: &Path) -> Result<Vec<Listed>, TemplateError> {
    let store = store_dir(home);
    let entries = match std::fs::read_dir(&store) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&store)(e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        if name.starts_with('.') || name == "locks" || !dir.is_dir() {
            continue;
        }
        let record = std::fs::read(dir.join(KEY_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let disk_bytes = std::fs::read_dir(&dir)
            .map(|files| {
                files
                    .flatten()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum()
            })
            .unwrap_or(0);
        out.push(Listed {
            key: name,
            dir,
            record,
            disk_bytes,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Removes the templates whose key starts with `prefix` (every one for `None`); returns the
/// keys removed.
pub fn remove(home: &Path, prefix: Option<&str>) -> Result<Vec<String>, TemplateError> {
    let mut removed = Vec::new();
    for t in list(home)? {
        if prefix.is_none_or(|p| t.key.starts_with(p)) {
            discard(&t.dir)?;
            removed.push(t.key);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
