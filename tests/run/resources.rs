//! docker's resource flags in a real guest: --cpuset-cpus, --memory-swap and the blkio
//! throttles the VMM enforces.

use crate::common::fixture::{check, stderr, stdout};
use crate::fixture;

/// The workload's cgroup as the guest agent makes it.
const CG: &str = "/sys/fs/cgroup/workload";

pub fn cpuset_cpus_pin_the_vm_and_size_it() -> Result<(), String> {
    let f = fixture();
    let script = format!("nproc; cat {CG}/cpuset.cpus {CG}/cpuset.cpus.effective");
    let out = f.run(&["--cpuset-cpus", "0", "bb", "sh", "-c", &script]);
    check(
        out.status.success() && stdout(&out) == "1\n0\n0\n",
        "one vCPU, and the workload's cpuset is it",
        &out,
    )?;
    // Detached: the VMM process is pinned, every one of its threads, and inspect says so.
    let out = f.brig(&[
        "run",
        "-d",
        "--rm",
        "--cpuset-cpus",
        "0",
        "-m",
        "64m",
        "--memory-swap",
        "96m",
        "--device-write-iops",
        "/dev/vdb:1000",
        "bb",
        "sleep",
        "600",
    ]);
    check(out.status.success(), "run -d", &out)?;
    let id = stdout(&out).trim().to_string();
    let inspected = f.brig(&["inspect", &id]);
    let v: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap_or_default();
    let pid = v[0]["State"]["Pid"].as_u64().unwrap_or(0);
    // Every thread's allowed CPUs, read while the VM runs.
    let masks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|m| m.trim().to_string())
        })
        .collect();
    let _ = f.brig(&["rm", "-f", &id]);
    if pid == 0 {
        return Err(format!("inspect names no VMM pid: {}", stdout(&inspected)));
    }
    // The VMM's threads: main, device loop, one vCPU at least.
    if masks.len() < 3 || masks.iter().any(|m| m != "0") {
        return Err(format!("VMM threads not all pinned to CPU 0: {masks:?}"));
    }
    let host = &v[0]["HostConfig"];
    check(
        host["CpusetCpus"] == "0"
            && host["MemorySwap"] == 96u64 << 20
            && host["BlkioDeviceWriteIOps"][0]["Path"] == "/dev/vdb"
            && host["BlkioDeviceWriteIOps"][0]["Rate"] == 1000,
        "inspect shows docker's HostConfig keys",
        &inspected,
    )
}

pub fn cpuset_cpus_outside_the_host_fail_like_docker() -> Result<(), String> {
    let f = fixture();
    let out = f.run(&["--cpuset-cpus", "1023", "bb", "true"]);
    check(
        out.status.code() == Some(125)
            && stderr(&out).lines().count() == 1
            && stderr(&out)
                .contains("Requested CPUs are not available - requested 1023, available: "),
        "docker's message, exit 125",
        &out,
    )
}

pub fn memory_swap_follows_docker() -> Result<(), String> {
    let f = fixture();
    let swap_max = format!("cat {CG}/memory.swap.max");
    for (flags, want) in [
        (&["-m", "64m"][..], "67108864"),
        (&["-m", "64m", "--memory-swap", "96m"][..], "33554432"),
        (&["-m", "64m", "--memory-swap", "-1"][..], "max"),
    ] {
        let mut args = flags.to_vec();
        args.extend_from_slice(&["bb", "sh", "-c", &swap_max]);
        let out = f.run(&args);
        check(
            out.status.success() && stdout(&out).trim() == want,
            &format!("{flags:?}: memory.swap.max {want}"),
            &out,
        )?;
    }
    Ok(())
}

pub fn device_write_bps_throttles_the_scratch_disk() -> Result<(), String> {
    let f = fixture();
    // 3 MiB of direct writes at 1 MiB/s, the first second's worth in the bucket: at least
    // 2 s of guest time (uptime has 10 ms steps). Only a lower bound: slower is not wrong.
    let script = "read a _ < /proc/uptime; \
                  dd if=/dev/zero of=/f bs=64k count=48 oflag=direct conv=fsync 2>/dev/null \
                  || exit 9; read b _ < /proc/uptime; echo $a $b";
    let out = f.run(&[
        "--device-write-bps",
        "/dev/vdb:1mb",
        "bb",
        "sh",
        "-c",
        script,
    ]);
    check(out.status.success(), "dd ran", &out)?;
    let times: Vec<f64> = stdout(&out)
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    let took = match times[..] {
        [a, b] => b - a,
        _ => return Err(format!("no times in {:?}", stdout(&out))),
    };
    check(
        took >= 1.95,
        &format!("throttled: took {took:.2} s >= 2 s"),
        &out,
    )?;
    // A DEV that is neither a disk of the sandbox nor a host block device.
    let out = f.run(&["--device-read-bps", "/dev/null:1mb", "bb", "true"]);
    check(
        out.status.code() == Some(125)
            && stderr(&out).lines().count() == 1
            && stderr(&out).contains("neither a disk of the sandbox"),
        "a DEV that names nothing",
        &out,
    )
}
