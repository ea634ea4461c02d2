//! Compatibility with docker (issue 10): the guest kernel's system calls against
//! kernels/syscalls-omitted.txt, overlay2 file system semantics, and 32-bit x86 binaries.
//! Needs KVM: runs under scripts/with-kvm where this host has none usable (see common/kvm.rs).
//!
//! The probe (tests/compat/probe.c) is built here with `gcc -static`; the i386 busybox comes
//! from Debian's busybox-static:i386 (`apt-get download`; scripts/setup.sh adds the i386
//! architecture to apt).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::fixture::check;
use common::kvm::{repo_root, run_tests_with, trial, Limits};
use common::{images, Layer, Layout};

fn work_dir() -> PathBuf {
    images::cache_dir().join("compat")
}

fn layouts_dir() -> PathBuf {
    work_dir().join("layouts")
}

fn probe_path() -> PathBuf {
    work_dir().join("probe")
}

fn busybox_i386() -> PathBuf {
    work_dir().join("busybox-i386/bin/busybox")
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Debian's i386 busybox-static, unpacked once under the cache.
fn fetch_busybox_i386() {
    if busybox_i386().exists() {
        return;
    }
    let dl = work_dir().join(format!("dl.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl).unwrap();
    run_ok(
        Command::new("apt-get")
            .args(["download", "busybox-static:i386"])
            .current_dir(&dl),
        "apt-get download busybox-static:i386 (scripts/setup.sh adds the i386 architecture)",
    );
    let deb = std::fs::read_dir(&dl)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("the downloaded .deb");
    let tree = dl.join("tree");
    run_ok(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree),
        "dpkg-deb -x",
    );
    let dest = work_dir().join("busybox-i386");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tree, &dest).unwrap();
    let _ = std::fs::remove_dir_all(&dl);
}

/// A busybox layer whose /bin/busybox is `busybox` (applets as links), with /etc/passwd.
fn busybox_layer_from(busybox: &Path) -> Layer {
    let bb = std::fs::read(busybox).unwrap();
    let mut l = Layer::new()
        .dir("bin", 0o755)
        .file("bin/busybox", &bb, 0o755);
    for applet in [
        "sh", "ls", "cat", "echo", "uname", "head", "od", "id", "true",
    ] {
        l = l.symlink(&format!("bin/{applet}"), "busybox");
    }
    l.dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file("etc/group", b"root:x:0:\n", 0o644)
}

/// Host side: build the probe, fetch the i386 busybox, write the layouts.
fn prepare() {
    std::fs::create_dir_all(work_dir()).unwrap();
    let src = repo_root().join("tests/compat/probe.c");
    let tmp = work_dir().join(format!("probe.{}", std::process::id()));
    run_ok(
        Command::new("gcc")
            .args(["-static", "-O1", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&src),
        "gcc -static tests/compat/probe.c",
    );
    std::fs::rename(&tmp, probe_path()).unwrap();
    fetch_busybox_i386();

    let dir = layouts_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let probe = std::fs::read(probe_path()).unwrap();
    let bb32 = std::fs::read(busybox_i386()).unwrap();
    Layout::new(dir.join("compat")).add(
        "latest",
        vec![
            images::busybox_layer(),
            Layer::new()
                .file("probe", &probe, 0o755)
                .dir("bin32", 0o755)
                .file("bin32/busybox", &bb32, 0o755)
                .dir("data", 0o755)
                .file("data/lower.txt", b"lower\n", 0o644)
                .file("data/link-src.txt", b"link\n", 0o644),
        ],
        serde_json::json!({"Cmd": ["sh"], "Env": ["PATH=/bin"]}),
    );
    let mut l = Layout::new(dir.join("bb386"));
    let (desc, _) = l.image(
        vec![busybox_layer_from(&busybox_i386())],
        "386",
        serde_json::json!({"Cmd": ["sh"], "Env": ["PATH=/bin"]}),
    );
    // A plain manifest, not an index: `brig import` takes the host's platform from an index,
    // and a single manifest's config says which platform it is.
    l.tag(desc, "latest");
}

struct Fixture {
    home: PathBuf,
    runtime: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let base = PathBuf::from(format!("/run/brig-compat-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let f = Fixture {
            home: base.join("home"),
            runtime: base.join("run"),
        };
        std::fs::create_dir_all(&f.home).unwrap();
        std::fs::create_dir_all(&f.runtime).unwrap();
        for layout in ["compat", "bb386"] {
            let out = f.brig(&[
                "import",
                "-q",
                layouts_dir().join(layout).to_str().unwrap(),
                layout,
            ]);
            assert!(
                out.status.success(),
                "import {layout}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        f
    })
}

impl Fixture {
    fn brig(&self, args: &[&str]) -> Output {
        Command::new(common::kvm::brig_exe())
            .args(args)
            .env("BRIG_HOME", &self.home)
            .env("BRIG_RUNTIME_DIR", &self.runtime)
            .stdin(Stdio::null())
            .output()
            .expect("running brig")
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["run", "--rm", "--timeout", "600", "--pull", "never"];
        all.extend_from_slice(args);
        self.brig(&all)
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A list of omitted system calls under kernels/: number → name.
fn omitted(file: &str) -> BTreeMap<u32, String> {
    let text = std::fs::read_to_string(repo_root().join("kernels").join(file))
        .unwrap_or_else(|e| panic!("kernels/{file}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut w = l.split_whitespace();
            let nr = w.next().unwrap().parse().expect("a syscall number");
            (nr, w.next().expect("a syscall name").to_string())
        })
        .collect()
}

/// Runs `/probe MODE` in a guest and compares the calls that return ENOSYS with `file`.
fn enosys_set_matches(mode: &str, file: &str) -> Result<(), String> {
    // --privileged: the probe checks the kernel, not docker's seccomp profile (which turns
    // many calls into EPERM) nor its capabilities.
    let out = fixture().run(&["--privileged", "compat", "/probe", mode]);
    check(out.status.success(), "the probe exits 0", &out)?;
    let text = stdout(&out);
    check(
        text.lines()
            .any(|l| l.starts_with("probed 3") || l.starts_with("probed 4")),
        "the probe reports how many calls it made",
        &out,
    )?;
    let enosys: BTreeMap<u32, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("enosys "))
        .map(|l| {
            let (nr, name) = l.split_once(' ').unwrap();
            (nr.parse().unwrap(), name.to_string())
        })
        .collect();
    let listed = omitted(file);
    let missing: Vec<_> = enosys
        .iter()
        .filter(|(nr, _)| !listed.contains_key(nr))
        .map(|(nr, n)| format!("{nr} {n}"))
        .collect();
    let present: Vec<_> = listed
        .iter()
        .filter(|(nr, _)| !enosys.contains_key(nr))
        .map(|(nr, n)| format!("{nr} {n}"))
        .collect();
    if missing.is_empty() && present.is_empty() {
        return Ok(());
    }
    Err(format!(
        "ENOSYS in the guest but not in kernels/{file}: {missing:?}\n\
         listed in kernels/{file} but implemented (update the list): {present:?}"
    ))
}

/// Every x86_64 system call number is called in a guest: the ones that return ENOSYS must
/// be exactly those kernels/syscalls-omitted.txt lists.
fn syscalls_match_the_omitted_list() -> Result<(), String> {
    enosys_set_matches("syscalls", "syscalls-omitted.txt")
}

/// The same for the i386 table (32-bit binaries), through `int $0x80`.
fn ia32_syscalls_match_the_omitted_list() -> Result<(), String> {
    enosys_set_matches("syscalls32", "syscalls-omitted-ia32.txt")
}

/// overlay2 semantics on the root overlay (erofs lower, ext4 scratch upper): inode numbers,
/// notifications, ACLs and xattrs, O_TMPFILE, renameat2, locks, hard links to lower files,
/// copy_file_range, sparse files and fallocate, fadvise.
fn overlay_behaves_as_docker_overlay2() -> Result<(), String> {
    // --privileged, as docker needs for fanotify and trusted.* xattrs (CAP_SYS_ADMIN).
    let out = fixture().run(&[
        "--privileged",
        "-e",
        "PROBE_LOWER=1",
        "compat",
        "/probe",
        "fs",
        "/tmp/fs",
    ]);
    check(
        out.status.success() && stdout(&out).contains("failures 0"),
        "every file system trial passes on the overlay",
        &out,
    )
}

/// With --read-only the overlay's upper layer is a tmpfs: inode numbers still agree.
fn read_only_root_keeps_inode_numbers() -> Result<(), String> {
    // --network none: a networked sandbox on a read-only root has /etc/resolv.conf, hosts
    // and hostname bind-mounted over the image's (as docker's), and a mount point's stat is
    // the mounted file's, not the directory entry's. The overlay's inode numbers are the point.
    let out = fixture().run(&[
        "--privileged",
        "--read-only",
        "--network",
        "none",
        "compat",
        "/probe",
        "fs",
        "/tmp/fs",
    ]);
    check(
        stdout(&out)
            .lines()
            .any(|l| l == "ok readdir_inode_matches_stat"),
        "readdir and stat agree on a read-only root",
        &out,
    )
}

/// The same trials on the guest's tmpfs (/dev/shm) where they apply.
fn tmpfs_acls_xattrs_and_notifications() -> Result<(), String> {
    let out = fixture().run(&["--privileged", "compat", "/probe", "fs", "/dev/shm/fs"]);
    let text = stdout(&out);
    for name in [
        "dnotify",
        "inotify",
        "fanotify",
        "posix_acl",
        "xattr",
        "o_tmpfile",
        "renameat2",
        "flock_ofd_posix_locks",
        "copy_file_range",
    ] {
        check(
            text.lines().any(|l| l == format!("ok {name}")),
            &format!("{name} on tmpfs"),
            &out,
        )?;
    }
    Ok(())
}

/// A 32-bit static binary runs inside a 64-bit image.
fn i386_static_binary_in_an_amd64_image() -> Result<(), String> {
    let out = fixture().run(&[
        "compat",
        "/bin32/busybox",
        "sh",
        "-c",
        "echo hello from i386; /bin32/busybox od -An -tx1 -j4 -N1 /bin32/busybox",
    ]);
    check(
        out.status.success() && stdout(&out) == "hello from i386\n 01\n",
        "i386 busybox runs (ELF class 1: 32-bit)",
        &out,
    )
}

/// `brig run --platform linux/386` of an i386 image.
fn platform_386_image_runs() -> Result<(), String> {
    let out = fixture().run(&[
        "--platform",
        "linux/386",
        "bb386",
        "sh",
        "-c",
        "echo ok; od -An -tx1 -j4 -N1 /bin/busybox; id -u",
    ]);
    check(
        out.status.success() && stdout(&out) == "ok\n 01\n0\n",
        "the i386 image runs with 32-bit binaries",
        &out,
    )
}

/// An i386 workload is confined by docker's profile under its i386 numbers: the filter's
/// i386 section lets busybox run and denies unshare(CLONE_NEWUSER) with EPERM, as the x86_64
/// section does (tests/security.rs).
fn platform_386_gets_the_default_profile() -> Result<(), String> {
    let out = fixture().run(&[
        "--platform",
        "linux/386",
        "bb386",
        "sh",
        "-c",
        "/bin/busybox grep -E '^(Seccomp|CapEff):' /proc/self/status; /bin/busybox unshare -U true",
    ]);
    check(
        out.status.code() == Some(1)
            && stdout(&out) == "CapEff:\t00000000a80425fb\nSeccomp:\t2\n"
            && String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "the i386 workload runs under the filter, unshare is EPERM",
        &out,
    )
}

/// The workload's cgroup has the cpuset controller, as a docker container's has
/// (cpuset.cpus.effective is what runtimes size their thread pools from).
fn cpuset_controller_in_the_workload_cgroup() -> Result<(), String> {
    let out = fixture().run(&[
        "--cpus",
        "2",
        "compat",
        "sh",
        "-c",
        "cg=/sys/fs/cgroup$(busybox cut -d: -f3 /proc/self/cgroup); \
         grep -o cpuset /sys/fs/cgroup/cgroup.subtree_control; cat $cg/cpuset.cpus.effective",
    ]);
    check(
        out.status.success() && stdout(&out) == "cpuset\n0-1\n",
        "cpuset is enabled and the workload sees its two CPUs",
        &out,
    )
}

/// The hugetlb controller is there too (hugetlb.2MB.max in the workload's cgroup, as on a
/// docker host that has it), and huge pages can be reserved and mapped.
fn hugetlb_controller_and_huge_pages() -> Result<(), String> {
    // --privileged: /proc/sys is read-only otherwise, as in a docker container.
    let out = fixture().run(&[
        "--privileged",
        "compat",
        "sh",
        "-c",
        "cg=/sys/fs/cgroup$(busybox cut -d: -f3 /proc/self/cgroup); \
         grep -o hugetlb /sys/fs/cgroup/cgroup.subtree_control; cat $cg/hugetlb.2MB.max; \
         echo 2 > /proc/sys/vm/nr_hugepages; grep HugePages_Total /proc/meminfo",
    ]);
    check(
        out.status.success()
            && stdout(&out).starts_with("hugetlb\nmax\n")
            && stdout(&out).contains("HugePages_Total:       2"),
        "hugetlb is enabled, unlimited, and two huge pages can be reserved",
        &out,
    )
}

/// The loopback interface is up (flags IFF_UP|IFF_LOOPBACK), as in a docker container.
fn loopback_is_up() -> Result<(), String> {
    let out = fixture().run(&["compat", "cat", "/sys/class/net/lo/flags"]);
    check(
        out.status.success() && stdout(&out) == "0x9\n",
        "lo is up",
        &out,
    )
}

fn main() {
    // Measured under nested TCG: about 70 s in all; the probe's syscall sweep is the longest.
    run_tests_with(
        Limits::secs(300, 900),
        prepare,
        || {},
        vec![
            trial(
                "syscalls_match_the_omitted_list",
                syscalls_match_the_omitted_list,
            ),
            trial(
                "overlay_behaves_as_docker_overlay2",
                overlay_behaves_as_docker_overlay2,
            ),
            trial(
                "read_only_root_keeps_inode_numbers",
                read_only_root_keeps_inode_numbers,
            ),
            trial(
                "tmpfs_acls_xattrs_and_notifications",
                tmpfs_acls_xattrs_and_notifications,
            ),
            trial(
                "i386_static_binary_in_an_amd64_image",
                i386_static_binary_in_an_amd64_image,
            ),
            trial(
                "ia32_syscalls_match_the_omitted_list",
                ia32_syscalls_match_the_omitted_list,
            ),
            trial("platform_386_image_runs", platform_386_image_runs),
            trial(
                "platform_386_gets_the_default_profile",
                platform_386_gets_the_default_profile,
            ),
            trial(
                "cpuset_controller_in_the_workload_cgroup",
                cpuset_controller_in_the_workload_cgroup,
            ),
            trial(
                "hugetlb_controller_and_huge_pages",
                hugetlb_controller_and_huge_pages,
            ),
            trial("loopback_is_up", loopback_is_up),
        ],
    )
}
