//! docker's resource flags, checked and turned into a VM's size and limits: `-m`,
//! `--memory-swap`, `--cpus`, `--cpuset-cpus`, `--cpuset-mems` and the blkio throttles
//! (`--device-read-bps` and its kin), with docker's syntax, rules and error messages.
//!
//! In a VM the CPU set names host CPUs: the VMM process is pinned to them and the guest gets
//! one vCPU per CPU of the set. The throttles name one of the sandbox's disks (its guest
//! path, `/dev/vda`) or, as docker means them, a host block device; the VMM enforces them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::spec::parse_bytes;

/// Guest RAM beyond the workload's `-m`: kernel, agent and page cache headroom.
pub const GUEST_OVERHEAD_MIB: u64 = 64;
/// Guest RAM without `-m`.
pub const DEFAULT_MEM_MIB: u64 = 1024;
/// Docker's smallest `-m`.
pub const MIN_MEMORY: u64 = 6 << 20;

/// A resource flag is malformed, out of range, or asks for what the host lacks. The message
/// is docker's where docker has one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ResourceError(pub String);

/// The resource flags as given on the command line.
#[derive(Debug, Default, Clone)]
pub struct ResourceFlags {
    pub memory: Option<String>,
    pub memory_swap: Option<String>,
    pub cpus: Option<f64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub device_read_bps: Vec<String>,
    pub device_write_bps: Vec<String>,
    pub device_read_iops: Vec<String>,
    pub device_write_iops: Vec<String>,
}

/// One `--device-*-bps`/`--device-*-iops` entry, as docker's HostConfig shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleDevice {
    /// The device as the user named it.
    #[serde(rename = "Path")]
    pub path: String,
    /// Bytes or operations per second.
    #[serde(rename = "Rate")]
    pub rate: u64,
}

/// docker's blkio throttles, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlkioThrottle {
    pub read_bps: Vec<ThrottleDevice>,
    pub write_bps: Vec<ThrottleDevice>,
    pub read_iops: Vec<ThrottleDevice>,
    pub write_iops: Vec<ThrottleDevice>,
}

/// The rate limits of one disk (0: none), as its config records them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskLimits {
    pub read_bps: u64,
    pub write_bps: u64,
    pub read_iops: u64,
    pub write_iops: u64,
}

impl From<DiskLimits> for crate::vmm::IoLimits {
    fn from(l: DiskLimits) -> Self {
        Self {
            read_bps: l.read_bps,
            write_bps: l.write_bps,
            read_iops: l.read_iops,
            write_iops: l.write_iops,
        }
    }
}

/// The VM's size and the workload's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// The workload's memory limit in bytes (0: none).
    pub memory_limit: u64,
    /// docker's MemorySwap: memory plus swap in bytes, -1 unlimited, 0 unset.
    pub memory_swap: i64,
    /// Guest RAM.
    pub mem_mib: u64,
    pub cpus: u8,
    /// `--cpuset-cpus` as given ("" when absent) and the host CPUs it names.
    pub cpuset_cpus: String,
    pub host_cpus: Vec<usize>,
    /// `--cpuset-mems` as given ("" when absent).
    pub cpuset_mems: String,
    pub blkio: BlkioThrottle,
}

impl Resources {
    /// Checks the flags against the host CPUs this process may use.
    pub fn from_flags(flags: &ResourceFlags) -> Result<Self, ResourceError> {
        let available: Vec<usize> = rustix::thread::sched_getaffinity(None)
            .map(|set| (0..MAX_CPU).filter(|&c| set.is_set(c)).collect())
            .map_err(|e| ResourceError(format!("reading this process's CPU affinity: {e}")))?;
        Self::from_flags_on(flags, &available, crate::vmm::max_cpus())
    }

    /// `-m 512m` gives the workload a 512 MiB limit and the guest 64 MiB more; `--cpus 1.5`
    /// gives 2 vCPUs; `--cpuset-cpus 0-2` without `--cpus` gives 3 (at most `max_cpus`).
    /// `available` are the host CPUs the set may name.
    pub fn from_flags_on(
        flags: &ResourceFlags,
        available: &[usize],
        max_cpus: u8,
    ) -> Result<Self, ResourceError> {
        let bad = |m: String| ResourceError(m);
        let memory_limit = match &flags.memory {
            Some(m) => {
                let bytes = parse_bytes(m).map_err(|e| bad(format!("--memory: {e}")))?;
                if bytes < MIN_MEMORY {
                    return Err(bad(format!("--memory {m} is below the minimum of 6 MiB")));
                }
                bytes
            }
            None => 0,
        };
        let memory_swap = memory_swap(memory_limit, flags.memory_swap.as_deref())?;
        let mem_mib = if memory_limit > 0 {
            memory_limit.div_ceil(1 << 20) + GUEST_OVERHEAD_MIB
        } else {
            DEFAULT_MEM_MIB
        };
        let host_cpus = match &flags.cpuset_cpus {
            Some(list) => cpuset(list, available)?,
            None => Vec::new(),
        };
        let cpus = match flags.cpus {
            // One vCPU per CPU of the set, as many as a container of that set would see.
            None if !host_cpus.is_empty() => {
                u8::try_from(host_cpus.len()).map_or(max_cpus, |n| n.min(max_cpus))
            }
            None => 1,
            Some(c) if c > 0.0 && c <= 255.0 => {
                // In 1..=255 after ceil, so the cast is exact.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let n = c.ceil() as u8;
                n
            }
            Some(c) => return Err(bad(format!("--cpus {c} is out of range"))),
        };
        if let Some(mems) = &flags.cpuset_mems {
            // The guest has one NUMA node.
            let nodes = parse_list(mems)
                .ok_or_else(|| bad(format!("Invalid value {mems} for cpuset mems")))?;
            if nodes.iter().any(|&n| n != 0) {
                return Err(bad(format!(
                    "Requested memory nodes are not available - requested {mems}, available: 0"
                )));
            }
        }
        let throttles = |flag: &str, values: &[String], iops: bool| {
            values
                .iter()
                .map(|v| parse_throttle(flag, v, iops))
                .collect::<Result<Vec<_>, _>>()
        };
        let blkio = BlkioThrottle {
            read_bps: throttles("--device-read-bps", &flags.device_read_bps, false)?,
            write_bps: throttles("--device-write-bps", &flags.device_write_bps, false)?,
            read_iops: throttles("--device-read-iops", &flags.device_read_iops, true)?,
            write_iops: throttles("--device-write-iops", &flags.device_write_iops, true)?,
        };
        Ok(Self {
            memory_limit,
            memory_swap,
            mem_mib,
            cpus,
            cpuset_cpus: flags.cpuset_cpus.clone().unwrap_or_default(),
            host_cpus,
            cpuset_mems: flags.cpuset_mems.clone().unwrap_or_default(),
            blkio,
        })
    }

    /// The workload cgroup's `cpuset.cpus` in the guest: every vCPU (empty without a set).
    pub fn guest_cpuset(&self) -> String {
        match self.cpus {
            _ if self.host_cpus.is_empty() => String::new(),
            0 | 1 => "0".into(),
            n => format!("0-{}", n - 1),
        }
    }
}

/// One `--memory-swap` value as docker reads it: memory plus swap in bytes, or -1 for
/// unlimited swap.
pub fn parse_memory_swap(s: &str) -> Result<i64, ResourceError> {
    if s == "-1" {
        return Ok(-1);
    }
    let bytes = ram_in_bytes(s).ok_or_else(|| {
        ResourceError(format!(
            "invalid argument {s:?} for \"--memory-swap\" flag: invalid size: '{s}'"
        ))
    })?;
    i64::try_from(bytes).map_err(|_| ResourceError(format!("--memory-swap {s} is out of range")))
}

/// docker's MemorySwap for `-m` (0: none) and `--memory-swap`: 2 x memory by default, -1
/// unlimited, otherwise at least the memory limit, and only with one.
fn memory_swap(memory: u64, flag: Option<&str>) -> Result<i64, ResourceError> {
    let total = flag.map(parse_memory_swap).transpose()?.unwrap_or(0);
    if memory == 0 && total > 0 {
        return Err(ResourceError(
            "You should always set the Memory limit when using Memoryswap limit, see usage".into(),
        ));
    }
    if memory > 0 && total > 0 && total.unsigned_abs() < memory {
        return Err(ResourceError(
            "Minimum memoryswap limit should be larger than memory limit, see usage".into(),
        ));
    }
    if memory > 0 && total == 0 {
        // docker's default: as much swap as memory.
        return Ok(i64::try_from(memory.saturating_mul(2)).unwrap_or(i64::MAX));
    }
    Ok(total)
}

/// The host CPUs `list` (docker's `0-2,4`) names, each one of `available`.
fn cpuset(list: &str, available: &[usize]) -> Result<Vec<usize>, ResourceError> {
    let cpus = parse_list(list)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ResourceError(format!("Invalid value {list} for cpuset cpus")))?;
    if cpus.iter().any(|c| !available.contains(c)) {
        return Err(ResourceError(format!(
            "Requested CPUs are not available - requested {list}, available: {}",
            format_list(available)
        )));
    }
    Ok(cpus)
}

/// The most CPUs a list may name (the kernel's CPU_SETSIZE).
const MAX_CPU: usize = rustix::thread::CpuSet::MAX_CPU;

/// docker's unsigned list syntax (`0-2,4`), sorted and without repeats; `None` if malformed
/// or naming a CPU past [`MAX_CPU`].
pub fn parse_list(s: &str) -> Option<Vec<usize>> {
    let num = |t: &str| {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse::<usize>().ok())
            .flatten()
            .filter(|&n| n < MAX_CPU)
    };
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            None => out.push(num(part)?),
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return None;
                }
                out.extend(a..=b);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// `[0, 1, 2, 4]` as `0-2,4`.
pub fn format_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// docker's RAMInBytes (go-units): a decimal number, an optional space, then an optional
/// k/m/g/t/p (powers of 1024), `i` and `b`, in any case: `10mb`, `1.5G`, `4096`, `64 KiB`.
pub fn ram_in_bytes(s: &str) -> Option<u64> {
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(digits);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest).to_ascii_lowercase();
    let mut chars = rest.chars().peekable();
    let shift = match chars.peek() {
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        Some('p') => 50,
        _ => 0,
    };
    if shift > 0 {
        chars.next();
    }
    if chars.peek() == Some(&'i') {
        chars.next();
    }
    if chars.peek() == Some(&'b') {
        chars.next();
    }
    if chars.next().is_some() {
        return None;
    }
    let bytes = value * (1u64 << shift) as f64;
    // Truncated as go-units truncates; out of range is refused.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// One `DEV:RATE` (bytes per second, docker's units) or `DEV:N` (operations per second).
fn parse_throttle(flag: &str, value: &str, iops: bool) -> Result<ThrottleDevice, ResourceError> {
    let err = |m: String| {
        ResourceError(format!(
            "invalid argument {value:?} for \"{flag}\" flag: {m}"
        ))
    };
    let (path, rate) = value
        .split_once(':')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| err(format!("bad format: {value}")))?;
    if !path.starts_with("/dev/") {
        return Err(err(format!("bad format for device path: {value}")));
    }
    let rate = if iops {
        rate.parse::<u64>().map_err(|_| {
            err(format!(
                "invalid rate for device: {value}. The correct format is <device-path>:<number>. \
                 Number must be a positive integer"
            ))
        })?
    } else {
        ram_in_bytes(rate).ok_or_else(|| {
            err(format!(
                "invalid rate for device: {value}. The correct format is \
                 <device-path>:<number>[<unit>]. Number must be a positive integer. Unit is \
                 optional and can be kb, mb, or gb"
            ))
        })?
    };
    Ok(ThrottleDevice {
        path: path.to_string(),
        rate,
    })
}

/// A sandbox disk a throttle may name: its guest path and its backing file on the host.
#[derive(Debug, Clone, Copy)]
pub struct NamedDisk<'a> {
    pub guest: &'a str,
    pub host: &'a Path,
}

/// Each disk's limits under `blkio`: an entry applies to the disk whose guest path it names,
/// or else (docker's meaning) to each disk whose file lives on that host block device or a
/// partition of it. `sys` is sysfs (`/sys`). Later entries win.
pub fn disk_limits(
    blkio: &BlkioThrottle,
    disks: &[NamedDisk<'_>],
    sys: &Path,
) -> Result<Vec<DiskLimits>, ResourceError> {
    let mut limits = vec![DiskLimits::default(); disks.len()];
    type Field = fn(&mut DiskLimits) -> &mut u64;
    let kinds: [(&str, &[ThrottleDevice], Field); 4] = [
        ("--device-read-bps", &blkio.read_bps, |l| &mut l.read_bps),
        ("--device-write-bps", &blkio.write_bps, |l| &mut l.write_bps),
        ("--device-read-iops", &blkio.read_iops, |l| &mut l.read_iops),
        ("--device-write-iops", &blkio.write_iops, |l| {
            &mut l.write_iops
        }),
    ];
    for (flag, entries, field) in kinds {
        for entry in entries {
            for i in disks_named(flag, &entry.path, disks, sys)? {
                *field(&mut limits[i]) = entry.rate;
            }
        }
    }
    Ok(limits)
}

/// The indices of the disks `dev` names.
fn disks_named(
    flag: &str,
    dev: &str,
    disks: &[NamedDisk<'_>],
    sys: &Path,
) -> Result<Vec<usize>, ResourceError> {
    if let Some(i) = disks.iter().position(|d| d.guest == dev) {
        return Ok(vec![i]);
    }
    let not_a_disk = || {
        let names: Vec<&str> = disks.iter().map(|d| d.guest).collect();
        ResourceError(format!(
            "{flag} {dev}: neither a disk of the sandbox ({}) nor a host block device",
            names.join(", ")
        ))
    };
    let st = rustix::fs::stat(dev).map_err(|_| not_a_disk())?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::BlockDevice {
        return Err(not_a_disk());
    }
    let mut found = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        if let Some(file_dev) = device_of(d.host) {
            if on_device(file_dev, st.st_rdev, sys) {
                found.push(i);
            }
        }
    }
    Ok(found)
}

/// The st_dev of `path`, or of its nearest existing ancestor (a disk not yet created).
fn device_of(path: &Path) -> Option<u64> {
    path.ancestors()
        .find_map(|p| rustix::fs::stat(p).ok())
        .map(|st| st.st_dev)
}

/// Whether a file on `file_dev` lives on the block device `dev`: the same device, or a
/// partition of it (`/sys/dev/block/MAJ:MIN/partition`, whose parent is the whole disk).
pub fn on_device(file_dev: u64, dev: u64, sys: &Path) -> bool {
    if file_dev == dev {
        return true;
    }
    let node = sys.join("dev/block").join(format!(
        "{}:{}",
        rustix::fs::major(file_dev),
        rustix::fs::minor(file_dev)
    ));
    if !node.join("partition").exists() {
        return false;
    }
    let Ok(real) = std::fs::canonicalize(&node) else {
        return false;
    };
    let Some(parent) = real.parent() else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(parent.join("dev")) else {
        return false;
    };
    let parsed = text
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
    parsed.is_some_and(|(maj, min)| rustix::fs::makedev(maj, min) == dev)
}

#[cfg(test)]
mod tests;
