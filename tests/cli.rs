//! Bad input to `brig boot` that is caught before any VM exists: one line, exit 125.
//! Needs no KVM (the KVM device and the PVM probe are pointed elsewhere where it matters).

use std::path::Path;
use std::process::{Command, Output};

fn brig(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_brig"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("BRIG_ALLOW_PVM")
        .output()
        .expect("running brig")
}

/// A file with a valid x86_64 ELF header (enough to pass brig's checks before KVM).
fn fake_vmlinux(dir: &Path) -> String {
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[18] = 62; // x86_64
    let path = dir.join("vmlinux");
    std::fs::write(&path, elf).unwrap();
    path.display().to_string()
}

fn assert_one_line_125(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("brig: "), "{err}");
    assert!(err.contains(needle), "{err:?} should contain {needle:?}");
    assert!(out.stdout.is_empty());
}

const NO_PVM: (&str, &str) = ("BRIG_PVM_MODULE_PATH", "/nonexistent/kvm_pvm");

#[test]
fn missing_kvm_device() {
    let dir = tempfile::tempdir().unwrap();
    let k = fake_vmlinux(dir.path());
    let out = brig(
        &["boot", "--kernel", &k, "--", "/init"],
        &[NO_PVM, ("BRIG_KVM_DEVICE", "/nonexistent/kvm")],
    );
    assert_one_line_125(
        &out,
        "/nonexistent/kvm does not exist: KVM is not available",
    );
}

#[test]
fn a_device_that_is_not_kvm() {
    let dir = tempfile::tempdir().unwrap();
    let k = fake_vmlinux(dir.path());
    let out = brig(
        &["boot", "--kernel", &k, "--", "/init"],
        &[NO_PVM, ("BRIG_KVM_DEVICE", &k)],
    );
    assert_one_line_125(&out, "not a KVM device");
}

#[test]
fn pvm_host_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let k = fake_vmlinux(dir.path());
    let pvm = dir.path().display().to_string();
    let start = std::time::Instant::now();
    let out = brig(
        &["boot", "--kernel", &k, "--", "/init"],
        &[("BRIG_PVM_MODULE_PATH", &pvm)],
    );
    assert_one_line_125(&out, "PVM");
    assert_one_line_125(&out, "scripts/with-kvm");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "no hang"
    );
    // brig run says so before it pulls anything (this registry does not exist).
    let home = dir.path().join("home");
    let out = brig(
        &["run", "--kernel", &k, "127.0.0.1:1/nothing:here", "true"],
        &[
            ("BRIG_PVM_MODULE_PATH", &pvm),
            ("BRIG_HOME", home.to_str().unwrap()),
        ],
    );
    assert_one_line_125(&out, "PVM");
    assert!(!home.exists(), "nothing was written before the KVM check");
}

#[test]
fn kernel_missing_or_not_an_elf_vmlinux() {
    let dir = tempfile::tempdir().unwrap();
    let out = brig(
        &["boot", "--kernel", "/nonexistent/vmlinux", "--", "/init"],
        &[],
    );
    assert_one_line_125(&out, "kernel /nonexistent/vmlinux: No such file");
    let bz = dir.path().join("bzImage");
    std::fs::write(&bz, vec![0x4du8; 1024]).unwrap();
    let out = brig(
        &["boot", "--kernel", bz.to_str().unwrap(), "--", "/init"],
        &[],
    );
    assert_one_line_125(&out, "is not a loadable x86_64 ELF vmlinux");
}

#[test]
fn memory_too_small_or_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let k = fake_vmlinux(dir.path());
    let out = brig(&["boot", "--kernel", &k, "--mem", "8", "--", "/init"], &[]);
    assert_one_line_125(&out, "--mem 8 MiB is too small");
    let out = brig(
        &["boot", "--kernel", &k, "--mem", "100000000", "--", "/init"],
        &[],
    );
    assert_one_line_125(&out, "is more than this host's");
}

#[test]
fn command_line_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let k = fake_vmlinux(dir.path());
    let long = "x".repeat(3000);
    let out = brig(
        &["boot", "--kernel", &k, "--cmdline", &long, "--", "/init"],
        &[],
    );
    assert_one_line_125(&out, "kernel command line: too long");
}

#[test]
fn add_source_missing() {
    let dir = tempfile::tempdir().unwrap();
    let k = fake_vmlinux(dir.path());
    let out = brig(
        &[
            "boot",
            "--kernel",
            &k,
            "--add",
            "/nonexistent/file:/bin/x",
            "--",
            "/init",
        ],
        &[],
    );
    assert_one_line_125(&out, "--add: cannot read /nonexistent/file");
}

#[test]
fn cpu_count_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let k = fake_vmlinux(dir.path());
    let out = brig(&["boot", "--kernel", &k, "--cpus", "0", "--", "/init"], &[]);
    assert_one_line_125(&out, "--cpus 0 is out of range");
}

#[test]
fn usage_errors_exit_125() {
    let out = brig(&["boot"], &[]);
    assert_eq!(out.status.code(), Some(125));
    let out = brig(&["no-such-subcommand"], &[]);
    assert_eq!(out.status.code(), Some(125));
    let out = brig(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("boot"));
}

#[test]
fn run_resource_flags_are_checked_first_with_docker_messages() {
    // Checked before KVM, the store or the image: none of them needs to exist.
    let run = |flags: &[&str]| {
        let mut args = vec!["run", "--kernel", "/nonexistent/vmlinux"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["no-such-image", "true"]);
        brig(&args, &[("BRIG_HOME", "/nonexistent/brig-home")])
    };
    let out = run(&["--cpuset-cpus", "1000"]);
    assert_one_line_125(
        &out,
        "Requested CPUs are not available - requested 1000, available: ",
    );
    let out = run(&["--cpuset-cpus", "0-x"]);
    assert_one_line_125(&out, "Invalid value 0-x for cpuset cpus");
    let out = run(&["--memory-swap", "1g"]);
    assert_one_line_125(
        &out,
        "You should always set the Memory limit when using Memoryswap limit, see usage",
    );
    let out = run(&["-m", "64m", "--memory-swap", "32m"]);
    assert_one_line_125(
        &out,
        "Minimum memoryswap limit should be larger than memory limit, see usage",
    );
    let out = run(&["--device-write-bps", "vdb:1mb"]);
    assert_one_line_125(&out, "bad format for device path: vdb:1mb");
    let out = run(&["--device-read-iops", "/dev/vda:lots"]);
    assert_one_line_125(&out, "invalid rate for device: /dev/vda:lots");
    let out = run(&["--cpuset-mems", "1"]);
    assert_one_line_125(&out, "Requested memory nodes are not available");
}

#[test]
fn run_network_flags_are_checked_first() {
    // Checked before KVM, the store or the image, like the resource flags.
    let run = |flags: &[&str]| {
        let mut args = vec!["run", "--kernel", "/nonexistent/vmlinux"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["no-such-image", "true"]);
        brig(&args, &[("BRIG_HOME", "/nonexistent/brig-home")])
    };
    let out = run(&["--network", "host"]);
    assert_one_line_125(&out, "--network host is not supported");
    let out = run(&["--network", "mynet"]);
    assert_one_line_125(&out, "network mynet not found");
    let out = run(&["--network", "none", "-p", "8080:80"]);
    assert_one_line_125(
        &out,
        "-p needs a network: it cannot be used with --network none",
    );
    let out = run(&["-p", "x:80"]);
    assert_one_line_125(&out, "invalid hostPort: x");
    let out = run(&["-p", "80/sctp"]);
    assert_one_line_125(&out, "sctp is not supported");
    let out = run(&["--egress-allow", "10.0.0.0/33"]);
    assert_one_line_125(&out, "invalid --egress-allow \"10.0.0.0/33\"");
    let out = run(&["--egress-allow", "10.0.0.5/8"]);
    assert_one_line_125(&out, "host bits set");
    let out = run(&["--dns", "nameserver.example"]);
    assert_one_line_125(&out, "is not an IPv4 address (--dns)");
    let out = run(&["--add-host", "db"]);
    assert_one_line_125(&out, "bad format for add-host");
}
