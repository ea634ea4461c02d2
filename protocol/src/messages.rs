//! The messages host and guest exchange.

use serde::{Deserialize, Serialize};

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// guest → host, first frame: the agent is up.
    Hello {
        version: u32,
        /// Guest uptime (CLOCK_BOOTTIME) when the agent started, in nanoseconds.
        uptime_ns: u64,
    },
    /// host → guest: what to run.
    Run(Box<RunSpec>),
    /// guest → host: the workload was spawned; `phases` are the agent's steps on the way
    /// (name, guest uptime in ns when it ended), for `brig run --timings`.
    Started {
        pid: u32,
        uptime_ns: u64,
        phases: Vec<(String, u64)>,
    },
    /// host → guest: bytes for the workload's stdin; an empty payload closes it.
    Stdin(Vec<u8>),
    /// guest → host: bytes the workload wrote to stdout (or to its terminal with a TTY).
    Stdout(Vec<u8>),
    /// guest → host: bytes the workload wrote to stderr.
    Stderr(Vec<u8>),
    /// host → guest: the terminal was resized.
    Resize { rows: u16, cols: u16 },
    /// host → guest: deliver this signal to the workload.
    Signal(i32),
    /// guest → host, last frame: how the workload ended.
    Exit(ExitStatus),
    /// guest → host, last frame: the workload could not be started.
    ExecFailed {
        kind: ExecErrorKind,
        message: String,
    },
    /// host → guest, instead of Run on a further connection: signal the main workload.
    Kill { signal: i32 },
    /// host → guest, instead of Run: report resource usage ([`Message::Stats`] answers).
    StatsRequest,
    /// guest → host: resource usage of the sandbox's workloads.
    Stats(Stats),
    /// host → guest, instead of Run: send `path` as a tar stream in Stdout frames.
    CopyOut { path: String },
    /// host → guest, instead of Run: unpack the tar stream that follows in Stdin frames (an
    /// empty one ends it) into the directory `path`.
    CopyIn { path: String },
    /// guest → host, last frame of Kill, CopyOut and CopyIn: success, or why not.
    Done { error: Option<String> },
    /// host → guest, instead of Run: describe `path` (symlinks followed), answered by
    /// [`Message::PathInfo`] (kind `Missing` when nothing is there), or by Done with the error
    /// when it cannot be looked up.
    Stat { path: String },
    /// guest → host: what Stat found.
    PathInfo(PathInfo),
    /// host → guest, instead of Run, while a template is made: listen on
    /// [`crate::RESTORE_PORT`], answer Done, close this connection and hold none until a
    /// restored copy of the VM is reached there.
    Freeze,
    /// host → guest, first frame on a [`crate::RESTORE_PORT`] connection to a restored VM:
    /// make this copy unique and attach its disks; the agent then says Hello and the session
    /// goes on as on a fresh boot's.
    Restore(RestoreSpec),
    /// host → guest, instead of Run: change the workload cgroup's limits (`brig-runc
    /// update`, `brig update`); answered by Done.
    Update(ResourceUpdate),
    /// host → guest, instead of Run (`brig checkpoint create`): park the main session so that
    /// the VM can be saved while its workload runs. Answered by Done once the agent listens
    /// on [`crate::RESTORE_PORT`]; the agent then sends [`Message::Parked`] on the main
    /// connection and closes it. A restored copy is reached there with a Restore, says Hello
    /// and goes on with the session: its output, then its Exit.
    Checkpoint,
    /// guest → host, on the main connection: the session is parked (see
    /// [`Message::Checkpoint`]); nothing more comes on this connection.
    Parked,
}

/// New limits for the workload cgroup, each as its cgroup file takes it (bytes or a count,
/// or `max`); `None` leaves one as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceUpdate {
    pub memory_max: Option<String>,
    pub memory_swap_max: Option<String>,
    pub pids_max: Option<String>,
}

/// What makes a VM restored from a template unique, and the disks it now has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreSpec {
    /// The host's wall clock (CLOCK_REALTIME), in nanoseconds since the epoch.
    pub realtime_ns: u64,
    /// Fresh host entropy for the guest's RNG (credited and reseeded before anything runs).
    pub seed: Vec<u8>,
    /// The disks now attached, and their size the guest must see before it uses them.
    pub disks: Vec<DiskSize>,
    /// The network the interface now has, for a VM restored from a checkpoint whose
    /// interface was configured before (its address, routes and MAC are replaced); `None`
    /// for a template's, whose Run brings the network.
    pub network: Option<NetworkSpec>,
}

/// A disk and its size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSize {
    /// The guest's name for it (`vda`).
    pub name: String,
    /// Its capacity in 512-byte sectors (`/sys/block/NAME/size`).
    pub sectors: u64,
}

/// The type of a file, as Stat reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Nothing at that path (ENOENT or ENOTDIR).
    Missing,
    Directory,
    File,
    /// A symlink whose target does not exist (others are followed).
    Symlink,
    /// A device node, FIFO or socket.
    Other,
}

/// A path in the sandbox, as `brig cp` needs to know it before copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathInfo {
    pub kind: FileKind,
    /// Permission bits (st_mode & 0o7777).
    pub mode: u32,
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// Resource usage of the sandbox's workloads (their cgroup) and of the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// CPU time used, in microseconds (cgroup cpu.stat usage_usec).
    pub cpu_usage_usec: u64,
    /// Memory used, in bytes (memory.current).
    pub memory_current: u64,
    /// Memory limit in bytes; 0 when unlimited (then see `memory_total`).
    pub memory_max: u64,
    /// The guest's RAM, in bytes (MemTotal).
    pub memory_total: u64,
    /// Processes (pids.current).
    pub pids_current: u64,
    /// Number of vCPUs online in the guest.
    pub cpus: u32,
    /// Guest uptime, in nanoseconds, when sampled.
    pub uptime_ns: u64,
    /// Bytes the sandbox received and sent on its network interfaces, loopback excluded
    /// (docker's NET I/O).
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// How the workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// Guest uptime when it was reaped, in nanoseconds.
    #[serde(default)]
    pub uptime_ns: u64,
}

impl ExitStatus {
    /// The status as a shell (and docker) reports it: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (_, Some(sig)) => 128 + sig,
            (Some(code), None) => code,
            (None, None) => 255,
        }
    }
}

/// Why a workload could not be started; maps to docker's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecErrorKind {
    /// The command does not exist (exit 127).
    NotFound,
    /// The command exists but cannot be executed (exit 126).
    NotExecutable,
    /// Anything else in setting the workload up (exit 125): unknown user, bad cwd, ...
    Setup,
}

/// What to run in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSpec {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Environment as `KEY=VALUE` strings.
    pub env: Vec<String>,
    /// Working directory (created when missing, as docker does).
    pub cwd: String,
    /// `""`, a user name, `uid`, `uid:gid`, `name:group`, resolved in the guest's /etc files.
    pub user: String,
    /// Extra supplementary groups (names or ids).
    pub groups: Vec<String>,
    /// Allocate a pseudo-terminal for the workload.
    pub tty: bool,
    /// Terminal size when `tty` is set.
    pub rows: u16,
    pub cols: u16,
    /// Keep stdin open (`-i`); when false the workload's stdin is /dev/null.
    pub stdin: bool,
    /// Resource limits applied before exec.
    pub rlimits: Vec<Rlimit>,
    /// The workload's umask (`process.user.umask` of an OCI bundle); `None`: the agent's.
    pub umask: Option<u32>,
    /// Host name of the sandbox; empty keeps the guest's.
    pub hostname: String,
    /// Root file system to pivot into; `None` runs the command in the initramfs.
    pub rootfs: Option<RootfsSpec>,
    /// cgroup v2 memory limit for the workload, in bytes (0: none).
    pub memory_limit: u64,
    /// cgroup v2 pids limit for the workload (0: none).
    pub pids_limit: u64,
    /// docker's MemorySwap: memory plus swap in bytes for the workload; -1: unlimited swap;
    /// 0: docker's default, swap as large as `memory_limit` (what hosts that predate this
    /// field meant). The agent writes `memory_swap - memory_limit` to memory.swap.max.
    pub memory_swap: i64,
    /// cgroup v2 `cpuset.cpus` for the workload, in the guest's CPU numbers (`0-1`); empty:
    /// not set (the workload gets every vCPU anyway).
    pub cpuset_cpus: String,
    /// cgroup v2 `cpuset.mems` for the workload (`0`); empty: not set.
    pub cpuset_mems: String,
    /// The guest's network interface, configured before the workload runs; `None`: only
    /// `lo` (`--network none`), or an exec (the sandbox's network is already up).
    pub network: Option<NetworkSpec>,
    /// The workload's confinement (capabilities, no_new_privs, seccomp, masked paths);
    /// `None` (hosts that predate it, `brig boot`): every capability, nothing masked.
    pub security: Option<SecuritySpec>,
    /// Nothing the guest wrote outlives the workload (`--rm` without volumes): the agent
    /// reports the exit status without first flushing the guest's disks, which the host
    /// discards. `false` (hosts that predate it): flushed first.
    pub discard_disks: bool,
}

/// How the agent confines the workload before exec, in runc's order: no_new_privs, the
/// bounding set, uid/gid keeping capabilities, capset, and the seccomp filter last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecuritySpec {
    /// Capability mask (bit N = capability N): the bounding set, and for a root workload
    /// also its permitted and effective sets (a non-root one gets none, as under docker).
    pub capabilities: u64,
    /// Set `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// A classic BPF seccomp program, one instruction per value packed as
    /// `code | jt << 16 | jf << 24 | k << 32`; empty: no filter. In JSON one base64
    /// string (see `packed.rs`).
    #[serde(with = "crate::packed")]
    pub seccomp: Vec<u64>,
    /// Paths to hide (an empty read-only file or tmpfs over each), once, before the first
    /// workload runs.
    pub masked_paths: Vec<String>,
    /// Paths to bind read-only over themselves.
    pub readonly_paths: Vec<String>,
}

/// How the agent configures the guest's one network interface (`eth0`, virtio-net) and the
/// files a networked sandbox always gets, as docker bind-mounts its own over the image's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkSpec {
    /// The guest's IPv4 address (`10.89.0.2`).
    pub address: String,
    /// Its prefix length (`30`).
    pub prefix_len: u8,
    /// The default route's gateway (the host's side of the link); empty: no default route.
    pub gateway: String,
    /// The interface's MTU.
    pub mtu: u16,
    /// The interface's MAC address (`02:42:0a:59:00:02`), set before it comes up; empty:
    /// the address the device offered at probe (a VM restored from a template probed the
    /// template's device, whose address is not the sandbox's).
    pub mac: String,
    /// `/etc/resolv.conf`, whole.
    pub resolv_conf: String,
    /// `/etc/hosts`, whole.
    pub hosts: String,
}

/// A MAC address as [`NetworkSpec::mac`] writes it: six lowercase hex pairs and colons.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The address [`format_mac`] wrote; `None` for anything else, or for an address no NIC can
/// have (multicast, all zeroes).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    let nic = mac[0] & 1 == 0 && mac != [0; 6];
    (parts.next().is_none() && nic).then_some(mac)
}

impl RunSpec {
    /// The workload cgroup's `memory.swap.max` with docker's rules, or `None` to leave it:
    /// with a memory limit M, swap is `memory_swap - M` (`max` for -1, M when unset); without
    /// one, only -1 (unlimited) says anything.
    pub fn swap_max(&self) -> Option<String> {
        match (self.memory_limit, self.memory_swap) {
            (_, -1) => Some("max".into()),
            (0, _) => None,
            (m, 0) => Some(m.to_string()),
            (m, total) => Some(total.unsigned_abs().saturating_sub(m).to_string()),
        }
    }
}

/// A resource limit (`setrlimit`), named as in docker's `--ulimit` (`nofile`, `nproc`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: String,
    pub soft: u64,
    pub hard: u64,
}

/// Where the guest finds the image's root file system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RootfsSpec {
    /// Block device of the read-only image (e.g. `/dev/vda`).
    pub device: String,
    /// File system type of that device (`erofs`).
    pub fstype: String,
    /// Block device for the writable overlay upper layer; empty: a tmpfs upper layer.
    pub scratch: String,
    /// Mount the root read-only with no overlay.
    pub read_only: bool,
    /// Volumes and tmpfs mounts, mounted in order before the workload starts (parents
    /// before children: the host sorts them).
    pub mounts: Vec<MountSpec>,
    /// Small files the caller made for the container (an OCI runtime's caller: podman's
    /// `/run/.containerenv`, the `/etc/hosts` docker or CRI wrote), written into the root
    /// after the mounts, before the workload starts.
    pub files: Vec<FileSpec>,
}

/// One file of [`RootfsSpec::files`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileSpec {
    /// Absolute path in the workload's root.
    pub path: String,
    pub content: String,
}

/// One mount the agent makes in the workload's root (`-v`, `--mount`, `--tmpfs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountSpec {
    /// `virtiofs` (then `source` is the device's tag) or `tmpfs`.
    pub fstype: String,
    pub source: String,
    /// Absolute path in the workload's root.
    pub target: String,
    pub read_only: bool,
    /// tmpfs options (`size=...,mode=...`).
    pub options: String,
    /// The share holds one file of this name, mounted at `target` as a file (a single-file
    /// `-v`); empty: the share is the directory mounted at `target`.
    pub file: String,
    /// Copy the image's content at `target` into the share before mounting it over (docker's
    /// rule for a new, empty named volume).
    pub copy_up: bool,
}

#[cfg(test)]
mod mac_tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let mac = [0x02, 0x42, 0x0a, 0x59, 0x00, 0xff];
        assert_eq!(format_mac(mac), "02:42:0a:59:00:ff");
        assert_eq!(parse_mac("02:42:0a:59:00:ff"), Some(mac));
        assert_eq!(parse_mac("02:42:0A:59:00:FF"), Some(mac));
        for bad in [
            "",
            "02:42:0a:59:00",
            "02:42:0a:59:00:ff:00",
            "2:42:0a:59:00:ff",
            "02:42:0a:59:00:fg",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "02-42-0a-59-00-ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }
}
