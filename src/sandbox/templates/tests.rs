//! Unit tests of templates: keys, the restore message, the store's listing.

use super::*;

fn inputs() -> KeyInputs {
    KeyInputs {
        format: 1,
        kernel: "/k/vmlinux".into(),
        kernel_size: 10,
        kernel_ino: 5,
        kernel_mtime_ns: 7,
        initramfs: "aa".into(),
        cmdline_extra: String::new(),
        cpus: 1,
        mem_mib: 1024,
        disks_read_only: vec![true, false],
        net_mtu: None,
        fs_tags: Vec::new(),
        vsock_cid: 3,
        vmm_build: "1:2:3.4".into(),
        host: HostFingerprint {
            kernel: "6.1".into(),
            brig: "0.1".into(),
            cpuid: "c".into(),
            msrs: "m".into(),
        },
    }
}

/// Every input changes the key; the same inputs give the same key.
#[test]
fn the_key_follows_every_input() {
    let base = inputs();
    assert_eq!(base.key(), inputs().key());
    assert_eq!(base.key().len(), 32);
    let variants: [fn(&mut KeyInputs); 12] = [
        |i| i.fs_tags = vec!["brig-vol0".into()],
        |i| i.net_mtu = Some(1500),
        |i| i.format += 1,
        |i| i.kernel_mtime_ns += 1,
        |i| i.kernel_size += 1,
        |i| i.initramfs = "ab".into(),
        |i| i.cmdline_extra = "quiet".into(),
        |i| i.cpus = 2,
        |i| i.mem_mib = 512,
        |i| i.disks_read_only = vec![true],
        |i| i.host.cpuid = "d".into(),
        |i| i.vmm_build = "1:2:3.5".into(),
    ];
    for change in variants {
        let mut i = inputs();
        change(&mut i);
        assert_ne!(i.key(), base.key(), "{i:?}");
    }
}

#[test]
fn the_restore_message_carries_entropy_time_and_disk_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let disk = |name: &str, len: u64, ro: bool| {
        let path = dir.path().join(name);
        std::fs::write(&path, vec![0u8; len as usize]).unwrap();
        DiskConfig {
            path,
            read_only: ro,
            serial: String::new(),
            limits: Default::default(),
        }
    };
    let disks = [disk("a", 4096, true), disk("b", 1024, false)];
    let (Message::Restore(one), Message::Restore(two)) = (
        restore_message(disk_sizes(&disks).unwrap(), None).unwrap(),
        restore_message(disk_sizes(&disks).unwrap(), None).unwrap(),
    ) else {
        panic!("not a restore message");
    };
    assert_eq!(one.seed.len(), SEED_BYTES);
    assert_ne!(one.seed, two.seed, "fresh entropy each time");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert!(now.as_nanos() as u64 >= one.realtime_ns);
    assert!(now.as_nanos() as u64 - one.realtime_ns < 60_000_000_000);
    let sizes: Vec<(&str, u64)> = one
        .disks
        .iter()
        .map(|d| (d.name.as_str(), d.sectors))
        .collect();
    assert_eq!(sizes, [("vda", 8), ("vdb", 2)]);
}

#[test]
fn templates_are_listed_and_removed_by_prefix() {
    let home = tempfile::tempdir().unwrap();
    let store = store_dir(home.path());
    for key in ["abc1", "abd2"] {
        std::fs::create_dir_all(store.join(key)).unwrap();
        let record = Record {
            inputs: inputs(),
            created: "now".into(),
        };
        std::fs::write(
            store.join(key).join(KEY_FILE),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
    }
    std::fs::create_dir_all(store.join("locks")).unwrap();
    std::fs::create_dir_all(store.join(".tmp-x")).unwrap();
    let keys: Vec<String> = list(home.path())
        .unwrap()
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert_eq!(keys, ["abc1", "abd2"]);
    assert!(list(home.path()).unwrap()[0].record.is_some());
    assert_eq!(remove(home.path(), Some("abc")).unwrap(), ["abc1"]);
    assert_eq!(remove(home.path(), None).unwrap(), ["abd2"]);
    assert!(list(home.path()).unwrap().is_empty());
}

/// A template of a VM with shared directories has their devices, under the same tags, with
/// no file server; its other devices are the VM's.
#[test]
fn a_template_of_a_vm_with_volumes_has_placeholder_shares() {
    let share = |i: usize| crate::vmm::FsConfig {
        socket: Some(PathBuf::from(format!("/run/fs{i}.sock"))),
        tag: crate::sandbox::volumes::tag(i),
    };
    let placeholders: Vec<_> = [share(0), share(1)]
        .iter()
        .map(crate::vmm::FsConfig::placeholder)
        .collect();
    assert!(placeholders.iter().all(|f| f.socket.is_none()));
    let tags: Vec<_> = placeholders.iter().map(|f| f.tag.as_str()).collect();
    assert_eq!(tags, ["brig-vol0", "brig-vol1"]);
}

/// A build killed midway leaves `.tmp-<key>-<pid>`; the next build of that key removes it
/// (and nothing of another key's).
#[test]
fn partial_builds_of_the_key_are_swept() {
    let store = tempfile::tempdir().unwrap();
    for name in [".tmp-abc-12", ".tmp-abc-345", ".tmp-abd-12", "abc"] {
        std::fs::create_dir(store.path().join(name)).unwrap();
        std::fs::write(store.path().join(name).join("memory"), b"x").unwrap();
    }
    sweep_partial(store.path(), "abc");
    let mut left: Vec<String> = std::fs::read_dir(store.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, [".tmp-abd-12", "abc"]);
}
