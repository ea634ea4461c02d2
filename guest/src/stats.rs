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

pub fn sample() -> Stats {
    let dir = cgroup_dir();
    let cpu = fs::read_to_string(format!("{dir}/cpu.stat")).unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_total = field(&meminfo, "MemTotal").unwrap_or(0) * 1024;
    // The root cgroup has no memory.current: use what the guest has in use.
    let memory_current = read_u64(&format!("{dir}/memory.current")).unwrap_or_else(|| {
        memory_total.saturating_sub(field(&meminfo, "MemAvailable").unwrap_or(0) * 1024)
    });
    Stats {
        cpu_usage_usec: field(&cpu, "usage_usec").unwrap_or(0),
        memory_current,
        memory_max: read_u64(&format!("{dir}/memory.max")).unwrap_or(0),
        memory_total,
        pids_current: read_u64(&format!("{dir}/pids.current")).unwrap_or(0),
        // SAFETY: sysconf has no preconditions.
        cpus: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u32,
        uptime_ns: crate::sys::uptime_ns(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
