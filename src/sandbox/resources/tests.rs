//! Tests of docker's resource flags: sizes, swap rules, CPU lists, throttles and the disks
//! they name.

use std::path::Path;

use super::*;

fn flags() -> ResourceFlags {
    ResourceFlags::default()
}

fn on(flags: &ResourceFlags) -> Result<Resources, ResourceError> {
    Resources::from_flags_on(flags, &[0, 1, 2, 3], 32)
}

#[test]
fn memory_and_cpus_follow_docker_flags() {
    let r = on(&flags()).unwrap();
    assert_eq!((r.memory_limit, r.mem_mib, r.cpus), (0, DEFAULT_MEM_MIB, 1));
    let r = on(&ResourceFlags {
        memory: Some("512m".into()),
        cpus: Some(1.5),
        ..flags()
    })
    .unwrap();
    assert_eq!(
        (r.memory_limit, r.mem_mib, r.cpus),
        (512 << 20, 512 + GUEST_OVERHEAD_MIB, 2)
    );
    let e = on(&ResourceFlags {
        memory: Some("1m".into()),
        ..flags()
    })
    .unwrap_err();
    assert_eq!(e.to_string(), "--memory 1m is below the minimum of 6 MiB");
    let e = on(&ResourceFlags {
        cpus: Some(0.0),
        ..flags()
    })
    .unwrap_err();
    assert_eq!(e.to_string(), "--cpus 0 is out of range");
    assert!(on(&ResourceFlags {
        memory: Some("lots".into()),
        ..flags()
    })
    .is_err());
}

fn swap(memory: Option<&str>, swap: Option<&str>) -> Result<i64, String> {
    on(&ResourceFlags {
        memory: memory.map(Into::into),
        memory_swap: swap.map(Into::into),
        ..flags()
    })
    .map(|r| r.memory_swap)
    .map_err(|e| e.to_string())
}

#[test]
fn memory_swap_follows_docker() {
    assert_eq!(swap(None, None), Ok(0));
    assert_eq!(
        swap(Some("64m"), None),
        Ok(128 << 20),
        "docker's default: 2 x -m"
    );
    assert_eq!(swap(Some("64m"), Some("96m")), Ok(96 << 20));
    assert_eq!(swap(Some("64m"), Some("64m")), Ok(64 << 20));
    assert_eq!(swap(Some("64m"), Some("-1")), Ok(-1));
    assert_eq!(swap(None, Some("-1")), Ok(-1));
    assert_eq!(
        swap(Some("64m"), Some("32m")),
        Err("Minimum memoryswap limit should be larger than memory limit, see usage".into())
    );
    assert_eq!(
        swap(None, Some("1g")),
        Err("You should always set the Memory limit when using Memoryswap limit, see usage".into())
    );
    assert!(swap(Some("64m"), Some("much")).is_err());
}

#[test]
fn cpu_lists_parse_and_format_as_docker_writes_them() {
    assert_eq!(parse_list("0-2,4"), Some(vec![0, 1, 2, 4]));
    assert_eq!(parse_list("3,1,1-2"), Some(vec![1, 2, 3]));
    assert_eq!(parse_list("7"), Some(vec![7]));
    for bad in ["", "a", "1-", "-1", "2-1", "1,,2", " 1", "1 ", "0-99999"] {
        assert_eq!(parse_list(bad), None, "{bad:?}");
    }
    assert_eq!(format_list(&[0, 1, 2, 4, 6, 7]), "0-2,4,6-7");
    assert_eq!(format_list(&[0]), "0");
    assert_eq!(format_list(&[]), "");
}

#[test]
fn cpuset_sizes_the_vm_and_is_checked_against_the_host() {
    let set = |list: &str, cpus: Option<f64>| {
        Resources::from_flags_on(
            &ResourceFlags {
                cpuset_cpus: Some(list.into()),
                cpus,
                ..flags()
            },
            &[0, 1],
            2,
        )
    };
    let r = set("1", None).unwrap();
    assert_eq!(
        (r.cpus, r.host_cpus.clone(), r.guest_cpuset()),
        (1, vec![1], "0".into())
    );
    let r = set("0-1", None).unwrap();
    assert_eq!((r.cpus, r.guest_cpuset()), (2, "0-1".to_string()));
    assert_eq!(set("0,1", Some(1.0)).unwrap().cpus, 1, "--cpus wins");
    assert_eq!(
        set("0-3", None).unwrap_err().to_string(),
        "Requested CPUs are not available - requested 0-3, available: 0-1"
    );
    assert_eq!(
        set("x", None).unwrap_err().to_string(),
        "Invalid value x for cpuset cpus"
    );
    // The max vCPU cap holds for large sets.
    let all: Vec<usize> = (0..64).collect();
    let r = Resources::from_flags_on(
        &ResourceFlags {
            cpuset_cpus: Some("0-63".into()),
            ..flags()
        },
        &all,
        32,
    )
    .unwrap();
    assert_eq!((r.cpus, r.guest_cpuset()), (32, "0-31".to_string()));
    assert_eq!(on(&flags()).unwrap().guest_cpuset(), "");
}

#[test]
fn cpuset_mems_has_one_node() {
    let mems = |m: &str| {
        on(&ResourceFlags {
            cpuset_mems: Some(m.into()),
            ..flags()
        })
    };
    assert_eq!(mems("0").unwrap().cpuset_mems, "0");
    assert_eq!(
        mems("0-1").unwrap_err().to_string(),
        "Requested memory nodes are not available - requested 0-1, available: 0"
    );
}

#[test]
fn rates_are_go_units_ram_in_bytes() {
    assert_eq!(ram_in_bytes("10mb"), Some(10 << 20));
    assert_eq!(ram_in_bytes("1gb"), Some(1 << 30));
    assert_eq!(ram_in_bytes("1GiB"), Some(1 << 30));
    assert_eq!(ram_in_bytes("64k"), Some(64 << 10));
    assert_eq!(ram_in_bytes("64 KB"), Some(64 << 10));
    assert_eq!(ram_in_bytes("1.5m"), Some(3 << 19));
    assert_eq!(ram_in_bytes("4096"), Some(4096));
    assert_eq!(ram_in_bytes("4096b"), Some(4096));
    for bad in ["", "mb", "-1", "1x", "1mbb", ".5m", "1.m", "1  m"] {
        assert_eq!(ram_in_bytes(bad), None, "{bad:?}");
    }
}

#[test]
fn throttle_flags_parse_with_docker_errors() {
    let r = on(&ResourceFlags {
        device_read_bps: vec!["/dev/vda:1mb".into()],
        device_write_bps: vec!["/dev/vdb:10485760".into()],
        device_read_iops: vec!["/dev/vda:100".into()],
        device_write_iops: vec!["/dev/sda:5".into(), "/dev/vdb:7".into()],
        ..flags()
    })
    .unwrap();
    let dev = |p: &str, rate| ThrottleDevice {
        path: p.into(),
        rate,
    };
    assert_eq!(r.blkio.read_bps, [dev("/dev/vda", 1 << 20)]);
    assert_eq!(r.blkio.write_bps, [dev("/dev/vdb", 10 << 20)]);
    assert_eq!(r.blkio.read_iops, [dev("/dev/vda", 100)]);
    assert_eq!(r.blkio.write_iops, [dev("/dev/sda", 5), dev("/dev/vdb", 7)]);
    let err = |bps: &str, iops: &str| {
        on(&ResourceFlags {
            device_read_bps: if bps.is_empty() {
                vec![]
            } else {
                vec![bps.into()]
            },
            device_write_iops: if iops.is_empty() {
                vec![]
            } else {
                vec![iops.into()]
            },
            ..flags()
        })
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        err("vda", ""),
        "invalid argument \"vda\" for \"--device-read-bps\" flag: bad format: vda"
    );
    assert!(err("vda:1mb", "").ends_with("bad format for device path: vda:1mb"));
    assert!(err("/dev/vda:fast", "").contains("invalid rate for device: /dev/vda:fast."));
    assert!(err("", "/dev/vda:1k").contains("\"--device-write-iops\" flag: invalid rate"));
    assert!(err("", "/dev/vda:-1").contains("invalid rate"));
}

#[test]
fn throttles_name_guest_disks() {
    let blkio = BlkioThrottle {
        read_bps: vec![ThrottleDevice {
            path: "/dev/vda".into(),
            rate: 1 << 20,
        }],
        write_bps: vec![ThrottleDevice {
            path: "/dev/vdb".into(),
            rate: 2 << 20,
        }],
        write_iops: vec![
            ThrottleDevice {
                path: "/dev/vdb".into(),
                rate: 10,
            },
            ThrottleDevice {
                path: "/dev/vdb".into(),
                rate: 20,
            },
        ],
        ..Default::default()
    };
    let disks = [
        NamedDisk {
            guest: "/dev/vda",
            host: Path::new("/nonexistent/rootfs.erofs"),
        },
        NamedDisk {
            guest: "/dev/vdb",
            host: Path::new("/nonexistent/scratch.ext4"),
        },
    ];
    let limits = disk_limits(&blkio, &disks, Path::new("/sys")).unwrap();
    assert_eq!(
        limits[0],
        DiskLimits {
            read_bps: 1 << 20,
            ..Default::default()
        }
    );
    assert_eq!(
        limits[1],
        DiskLimits {
            write_bps: 2 << 20,
            write_iops: 20,
            ..Default::default()
        },
        "the later entry wins"
    );
    // A read-only sandbox has no /dev/vdb; /dev/null is no block device.
    for dev in ["/dev/vdb", "/dev/null", "/dev/no-such-device"] {
        let blkio = BlkioThrottle {
            read_iops: vec![ThrottleDevice {
                path: dev.into(),
                rate: 1,
            }],
            ..Default::default()
        };
        if dev == "/dev/vdb" && Path::new(dev).exists() {
            continue; // This host has a /dev/vdb of its own.
        }
        let e = disk_limits(&blkio, &disks[..1], Path::new("/sys")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--device-read-iops {dev}: neither a disk of the sandbox (/dev/vda) nor a host \
                 block device"
            )
        );
    }
}

/// A sysfs with sda (8:0) and its partition sda1 (8:1).
fn fake_sysfs() -> tempfile::TempDir {
    let sys = tempfile::tempdir().unwrap();
    let sda = sys.path().join("devices/pci0/block/sda");
    std::fs::create_dir_all(sda.join("sda1")).unwrap();
    std::fs::write(sda.join("dev"), "8:0\n").unwrap();
    std::fs::write(sda.join("sda1/dev"), "8:1\n").unwrap();
    std::fs::write(sda.join("sda1/partition"), "1\n").unwrap();
    std::fs::create_dir_all(sys.path().join("dev/block")).unwrap();
    std::os::unix::fs::symlink(sda.join("sda1"), sys.path().join("dev/block/8:1")).unwrap();
    std::os::unix::fs::symlink(&sda, sys.path().join("dev/block/8:0")).unwrap();
    sys
}

#[test]
fn host_devices_cover_their_partitions() {
    let sys = fake_sysfs();
    let dev = rustix::fs::makedev;
    assert!(
        on_device(dev(8, 0), dev(8, 0), sys.path()),
        "the disk itself"
    );
    assert!(
        on_device(dev(8, 1), dev(8, 0), sys.path()),
        "a partition of it"
    );
    assert!(
        on_device(dev(8, 1), dev(8, 1), sys.path()),
        "the partition itself"
    );
    assert!(
        !on_device(dev(8, 0), dev(8, 1), sys.path()),
        "not the other way"
    );
    assert!(
        !on_device(dev(8, 1), dev(8, 16), sys.path()),
        "another disk"
    );
    assert!(
        !on_device(dev(0, 42), dev(8, 0), sys.path()),
        "tmpfs, overlay: no device"
    );
}

#[test]
fn a_host_block_device_applies_to_the_disks_on_it() {
    // The block device the temporary directory lives on, where this host has one in /dev.
    let Ok(st) = rustix::fs::stat(std::env::temp_dir()) else {
        return;
    };
    let (maj, min) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    let Ok(name) = std::fs::read_link(format!("/sys/dev/block/{maj}:{min}")) else {
        return;
    };
    let Some(dev) = name
        .file_name()
        .map(|n| format!("/dev/{}", n.to_string_lossy()))
        .filter(|d| Path::new(d).exists())
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let blkio = BlkioThrottle {
        read_bps: vec![ThrottleDevice {
            path: dev.clone(),
            rate: 4096,
        }],
        ..Default::default()
    };
    let file = tmp.path().join("not-yet-created.ext4");
    let disks = [
        // Guest names that no host device has, so that the host's is looked up.
        NamedDisk {
            guest: "/dev/guest-a",
            host: &file,
        },
        NamedDisk {
            guest: "/dev/guest-b",
            host: Path::new("/proc/self/status"),
        },
    ];
    let limits = disk_limits(&blkio, &disks, Path::new("/sys")).unwrap();
    assert_eq!(limits[0].read_bps, 4096, "{dev}");
    assert_eq!(limits[1].read_bps, 0, "/proc is on no block device");
}
