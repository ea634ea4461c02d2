//! Resource usage for `brig stats`: the workloads' cgroup (cpu, memory, pids) and the guest.

use std::fs;

use brig_protocol::Stats;

/// Where the workloads run: their cgroup if limits made one, else the root.
fn cgroup_dir() -> &'static str {
    if std::path::Path::new(crate::WORKLOAD_CGROUP).exists() {
        crate::WORKLOAD_CGROUP
    } else {
        "/sys/fs/cgroup"
    }
}

fn read_u64(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (cpu.stat, /proc/meminfo without the unit).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()?.trim_end_matches(':') == key).then(|| parts.next()?.parse().ok())?
    })
}

/// Bytes received and sent on every interface but `lo`, from /proc/net/dev's
/// `name: rx_bytes packets ... tx_bytes ...` lines (tx_bytes is the 9th number).
fn net_bytes(dev: &str) -> (u64, u64) {
    let mut total = (0, 0);
    for line in dev.lines().skip(2) {
        let Some((name, numbers)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let n: Vec<u64> = numbers
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if n.len() >= 9 {
            total.0 += n[0];
            total.1 += n[8];
        }
    }
    total
}

pub fn sample() -> Stats {
    let dir = cgroup_dir();
    let cpu = fs::read_to_string(format!("{dir}/cpu.stat")).unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_total = field(&meminfo, "MemTotal").unwrap_or(0) * 1024;
    // The root cgroup has no memory.current: use what the guest has in use.
    let memory_current = read_u64(&format!("{dir}/memory.current")).unwrap_or_else(|| {
        memory_total.saturating_sub(field(&meminfo, "MemAvailable").unwrap_or(0) * 1024)
    });
    let (net_rx_bytes, net_tx_bytes) =
        net_bytes(&fs::read_to_string("/proc/net/dev").unwrap_or_default());
    Stats {
        cpu_usage_usec: field(&cpu, "usage_usec").unwrap_or(0),
        memory_current,
        memory_max: read_u64(&format!("{dir}/memory.max")).unwrap_or(0),
        memory_total,
        pids_current: read_u64(&format!("{dir}/pids.current")).unwrap_or(0),
        // SAFETY: sysconf has no preconditions.
        cpus: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u32,
        uptime_ns: crate::sys::uptime_ns(),
        net_rx_bytes,
        net_tx_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_bytes_skip_loopback() {
        let dev = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  eth0:  123456     100    0    0    0     0          0         0     7890      50    0    0    0     0       0          0
";
        assert_eq!(net_bytes(dev), (123456, 7890));
        assert_eq!(net_bytes(""), (0, 0));
    }

    #[test]
    fn fields_parse() {
        assert_eq!(
            field("usage_usec 1234\nuser_usec 1000\n", "usage_usec"),
            Some(1234)
        );
        assert_eq!(
            field("MemTotal:  1000 kB\nMemAvailable: 10 kB\n", "MemAvailable"),
            Some(10)
        );
        assert_eq!(field("x 1", "y"), None);
        let s = sample();
        assert!(s.memory_total > 0 && s.cpus >= 1);
    }
}
