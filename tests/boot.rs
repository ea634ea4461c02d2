//! `brig boot` end to end: a real guest kernel, brig's init, a command from the host.
//! Needs KVM: runs under scripts/with-kvm where this host has none usable (see common/kvm.rs).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::{Duration, Instant};

use common::fixture::{check, sha256_of, stderr, stdout};
use common::kvm::{brig, brig_cmd, run_tests, trial, Limits};

/// `brig boot` with busybox as /bin/sh (and as itself), a generous timeout, then `args`.
fn boot(extra: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec![
        "boot",
        "--add",
        "/bin/busybox:/bin/sh",
        "--add",
        "/bin/busybox:/bin/busybox",
        "--timeout",
        "300",
    ];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(cmd);
    brig(&args)
}

fn sh(script: &str) -> Output {
    boot(&[], &["/bin/sh", "-c", script])
}

fn echo_output_is_returned() -> Result<(), String> {
    let out = sh("echo hello from a microVM");
    check(out.status.code() == Some(0), "exit 0", &out)?;
    check(
        stdout(&out) == "hello from a microVM\n",
        "stdout is the echo",
        &out,
    )?;
    check(stderr(&out).is_empty(), "nothing on stderr", &out)
}

fn exit_codes_0_and_7() -> Result<(), String> {
    let out = sh("exit 0");
    check(out.status.code() == Some(0), "exit 0", &out)?;
    let out = sh("exit 7");
    check(out.status.code() == Some(7), "exit 7", &out)
}

fn stderr_is_kept_apart() -> Result<(), String> {
    let out = sh("echo out; echo err >&2; echo out2");
    check(out.status.code() == Some(0), "exit 0", &out)?;
    check(
        stdout(&out) == "out\nout2\n",
        "stdout has only stdout",
        &out,
    )?;
    check(stderr(&out) == "err\n", "stderr has only stderr", &out)
}

fn sigkill_gives_137() -> Result<(), String> {
    let out = sh("kill -9 $$");
    check(
        out.status.code() == Some(137),
        "killed by SIGKILL: 128+9",
        &out,
    )
}

fn missing_command_gives_127() -> Result<(), String> {
    let out = boot(&[], &["/no/such/command"]);
    check(out.status.code() == Some(127), "exit 127", &out)?;
    check(
        stderr(&out).lines().count() == 1,
        "one line on stderr",
        &out,
    )?;
    let out = boot(&[], &["no-such-command-in-path"]);
    check(
        out.status.code() == Some(127),
        "exit 127 for a PATH lookup",
        &out,
    )?;
    check(stderr(&out).contains("not found"), "says not found", &out)
}

fn non_executable_gives_126() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("data");
    std::fs::write(&file, "not a program\n").map_err(|e| e.to_string())?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())?;
    let add = format!("{}:/data", file.display());
    let out = boot(&["--add", &add], &["/data"]);
    check(out.status.code() == Some(126), "exit 126", &out)
}

fn kernel_panic_is_reported() -> Result<(), String> {
    // No init where the kernel is told to look: it panics ("VFS: Unable to mount root fs").
    let out = boot(
        &["--cmdline", "rdinit=/nonexistent"],
        &["/bin/sh", "-c", "true"],
    );
    check(out.status.code() == Some(125), "exit 125", &out)?;
    let err = stderr(&out);
    check(
        err.contains("the guest kernel panicked: Kernel panic - not syncing"),
        "the panic line",
        &out,
    )?;
    check(err.lines().count() == 1, "one line", &out)
}

fn timeout_ends_a_guest_that_never_finishes() -> Result<(), String> {
    let start = Instant::now();
    let out = brig(&[
        "boot",
        "--add",
        "/bin/busybox:/bin/sh",
        "--timeout",
        "5",
        "--",
        "/bin/sh",
        "-c",
        "while :; do sleep 1; done",
    ]);
    check(out.status.code() == Some(125), "exit 125", &out)?;
    check(
        stderr(&out).contains("did not finish within --timeout 5s"),
        "says so",
        &out,
    )?;
    check(
        start.elapsed() < Duration::from_secs(120),
        "ends soon after the timeout",
        &out,
    )
}

fn two_cpus_are_seen() -> Result<(), String> {
    let out = boot(&["--cpus", "2"], &["/bin/busybox", "nproc"]);
    check(out.status.code() == Some(0), "exit 0", &out)?;
    check(stdout(&out).trim() == "2", "guest sees 2 CPUs", &out)?;
    let out = boot(&[], &["/bin/busybox", "nproc"]);
    check(stdout(&out).trim() == "1", "and 1 by default", &out)
}

fn memory_size_is_what_the_guest_sees() -> Result<(), String> {
    let out = boot(
        &["--mem", "512"],
        &["/bin/busybox", "grep", "MemTotal", "/proc/meminfo"],
    );
    check(out.status.code() == Some(0), "exit 0", &out)?;
    let text = stdout(&out);
    let kib: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no MemTotal in {text:?}"))?;
    // The kernel keeps some for itself (its image, page tables, reserved areas).
    check(
        (512 * 1024 - 48 * 1024..=512 * 1024).contains(&kib),
        "MemTotal within the kernel's reservation of 512 MiB",
        &out,
    )
}

fn timings_name_every_phase() -> Result<(), String> {
    let out = boot(&["--timings"], &["/bin/sh", "-c", "true"]);
    check(out.status.code() == Some(0), "exit 0", &out)?;
    let err = stderr(&out);
    for phase in [
        "vmm ready",
        "kernel entry",
        "init started",
        "command exited",
        "vm gone",
    ] {
        check(
            err.contains(phase),
            &format!("--timings shows {phase}"),
            &out,
        )?;
    }
    // The jailed VMM's move into its cgroup, where brig makes one (cgroup v2 with the memory
    // controller, as root).
    let cgroups = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    if cgroups.split_whitespace().any(|c| c == "memory") && rustix::process::geteuid().is_root() {
        check(
            err.lines()
                .any(|l| l.trim_start().starts_with("cgroup joined") && l.contains("(took ")),
            "--timings shows when the VMM joined its cgroup and how long it took",
            &out,
        )?;
        // Linux 5.7+ and a single-threaded keeper: the VMM is started in it, no move.
        check(
            err.lines().any(|l| {
                l.trim_start().starts_with("cgroup joined") && l.contains("started in it")
            }),
            "the VMM was started in its cgroup (clone3 CLONE_INTO_CGROUP), not moved there",
            &out,
        )?;
    }
    Ok(())
}

/// Every vCPU thread runs under its seccomp filter (mode 2 in /proc/PID/task/TID/status).
fn vcpu_threads_are_seccomp_filtered() -> Result<(), String> {
    let mut child = brig_cmd(&["boot", "--cpus", "2", "--add", "/bin/busybox:/bin/busybox"])
        .args(["--timeout", "300", "--", "/bin/busybox", "sleep", "600"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let brig = child.id();
    // The VMM: brig's jailed child (as root), or brig itself (BRIG_JAIL=off).
    let vmm = || -> u32 {
        std::fs::read_to_string(format!("/proc/{brig}/task/{brig}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok())
            .unwrap_or(brig)
    };
    let vcpus = || -> Vec<(String, String)> {
        let pid = vmm();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter_map(|t| {
                let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                let status = std::fs::read_to_string(t.path().join("status")).ok()?;
                let mode = status.lines().find(|l| l.starts_with("Seccomp:"))?;
                comm.starts_with("vcpu")
                    .then(|| (comm.trim().to_string(), mode.to_string()))
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = vcpus();
    while (seen.len() < 2 || seen.iter().any(|(_, m)| !m.ends_with('2')))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        seen = vcpus();
    }
    let jailed = vmm() != brig && common::fixture::is_jailed_vmm(&vmm().to_string());
    let _ = child.kill();
    let _ = child.wait();
    if seen.len() == 2 && seen.iter().all(|(_, m)| m.ends_with("\t2")) && jailed {
        Ok(())
    } else {
        Err(format!(
            "vCPU threads and their seccomp modes: {seen:?}; the VMM jailed: {jailed}"
        ))
    }
}

fn permission_denied_on_kvm_is_one_line() -> Result<(), String> {
    // Run brig as nobody, who may not open /dev/kvm; the kernel is copied where nobody can read it.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let kernel = dir.path().join("vmlinux");
    let src = std::env::var("BRIG_KERNEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            let home = std::env::var("XDG_CACHE_HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|_| {
                    std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                        .join(".cache")
                });
            home.join("brig/kernels/current/vmlinux")
        });
    std::fs::copy(&src, &kernel).map_err(|e| format!("{}: {e}", src.display()))?;
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())?;
    // Sockets need a file system that takes them (not 9p, where /tmp may be): /run.
    let run_parent = tempfile::Builder::new()
        .prefix("brig-test-")
        .tempdir_in("/run")
        .map_err(|e| e.to_string())?;
    let run = run_parent.path().join("run");
    std::fs::create_dir(&run).map_err(|e| e.to_string())?;
    std::fs::set_permissions(run_parent.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| e.to_string())?;
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(common::kvm::brig_exe())
        .args(["boot", "--kernel"])
        .arg(&kernel)
        .args(["--", "/init"])
        .env("BRIG_RUNTIME_DIR", &run)
        .output()
        .map_err(|e| format!("setpriv: {e}"))?;
    check(out.status.code() == Some(125), "exit 125", &out)?;
    let err = stderr(&out);
    check(
        err.contains("permission denied opening /dev/kvm"),
        "says permission denied",
        &out,
    )?;
    check(err.lines().count() == 1, "one line", &out)
}

/// The guest's /tick: counts on the console, then (after the restore) reads the virtio-rng
/// device and resets the VM. It runs as the kernel's init (`rdinit=/tick`): no agent.
const TICK_SCRIPT: &str = "#!/bin/sh
B=/bin/busybox
$B mount -t devtmpfs dev /dev
i=0
while [ $i -lt 10 ]; do echo \"tick $i\"; i=$((i+1)); $B sleep 0.3; done
n=$($B dd if=/dev/hwrng bs=16 count=1 2>/dev/null | $B wc -c)
echo \"rng bytes $n\"
echo done
$B reboot -f
";

/// The ticks a console shows, in order.
fn ticks(console: &str) -> Vec<u32> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tick ")?.parse().ok())
        .collect()
}

/// A guest saved mid-loop (`brig boot --snapshot-when`) goes on from where it was when
/// restored (`--restore-from`), twice from the same files: its counter continues, its
/// virtio-rng queue works, and the memory file is never written through.
fn a_saved_guest_resumes_where_it_stopped() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let script = dir.path().join("tick");
    std::fs::write(&script, TICK_SCRIPT).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    // Guest memory is mapped from this file: a file system that maps (not 9p): /run.
    let snap_parent = tempfile::Builder::new()
        .prefix("brig-snap-")
        .tempdir_in("/run")
        .map_err(|e| e.to_string())?;
    let snap = snap_parent.path().join("snap");
    let add_tick = format!("{}:/tick", script.display());
    let snap_s = snap.display().to_string();
    let base = [
        "boot",
        "--add",
        "/bin/busybox:/bin/sh",
        "--add",
        "/bin/busybox:/bin/busybox",
        "--add",
        &add_tick,
        "--cmdline",
        "rdinit=/tick",
        "--cpus",
        "2",
        // A small guest: its memory file is written, hashed and mapped under emulation.
        "--mem",
        "128",
        "--timeout",
        "300",
    ];
    let with = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--", "/bin/true"]);
        brig(&a)
    };
    let out = with(&["--snapshot-when", "tick 3", "--snapshot-to", &snap_s]);
    check(out.status.code() == Some(0), "the save exits 0", &out)?;
    check(
        snap.join("state").is_file() && snap.join("memory").is_file(),
        "state and memory files written",
        &out,
    )?;
    let before = sha256_of(&snap.join("memory"))?;
    for round in 1..=2 {
        let out = with(&["--console", "--restore-from", &snap_s]);
        let err = stderr(&out);
        let seen = ticks(&err);
        check(
            seen.first().is_some_and(|&t| t >= 3),
            &format!("restore {round}: the count goes on from the save (ticks {seen:?})"),
            &out,
        )?;
        check(
            seen.windows(2).all(|w| w[1] == w[0] + 1) && seen.last() == Some(&9),
            &format!("restore {round}: every later tick, in order (ticks {seen:?})"),
            &out,
        )?;
        check(
            err.contains("rng bytes 16"),
            &format!("restore {round}: virtio-rng answers"),
            &out,
        )?;
        check(
            err.contains("done"),
            &format!("restore {round}: ran to the end"),
            &out,
        )?;
    }
    let after = sha256_of(&snap.join("memory"))?;
    if after != before {
        return Err(format!("the memory file changed: {before} -> {after}"));
    }
    // A damaged state file is refused in one line, before anything runs.
    let state = snap.join("state");
    let mut bytes = std::fs::read(&state).map_err(|e| e.to_string())?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&state, &bytes).map_err(|e| e.to_string())?;
    let out = with(&["--restore-from", &snap_s]);
    check(
        out.status.code() == Some(125),
        "a corrupt snapshot: exit 125",
        &out,
    )?;
    let err = stderr(&out);
    check(
        err.lines().count() == 1 && err.contains("snapshot is corrupt: checksum mismatch"),
        "one line saying why",
        &out,
    )
}

/// One cpio entry: path, mode (with its file type bits), content, and a character device's
/// `(major, minor)`.
type CpioEntry<'a> = (&'a str, u32, &'a [u8], Option<(u32, u32)>);

/// A newc cpio archive, what Firecracker and QEMU take as an initrd.
fn cpio(entries: &[CpioEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let pad = |out: &mut Vec<u8>| out.resize(out.len().next_multiple_of(4), 0);
    let trailer: CpioEntry<'_> = ("TRAILER!!!", 0, b"", None);
    for (ino, (name, mode, data, dev)) in entries.iter().chain([&trailer]).enumerate() {
        let (major, minor) = dev.unwrap_or((0, 0));
        let fields = [
            ino as u32 + 1,
            *mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            major,
            minor,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(&mut out);
        out.extend_from_slice(data);
        pad(&mut out);
    }
    out
}

/// `--initrd`: an initramfs of our own with no brig init in it (as Firecracker and QEMU boot
/// one) runs its /init and the run ends 0 when that init reboots; one whose init is missing
/// panics the kernel: 125 and the panic line; a missing file is one line.
fn a_foreign_initramfs_boots_without_the_agent() -> Result<(), String> {
    let busybox = std::fs::read("/bin/busybox").map_err(|e| format!("/bin/busybox: {e}"))?;
    let init =
        b"#!/bin/busybox sh\n/bin/busybox echo bare-init-ran-$((6 * 7))\n/bin/busybox reboot -f\n";
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let good = dir.path().join("good.cpio");
    let console = Some((5, 1));
    let archive = cpio(&[
        ("bin", 0o40755, b"", None),
        ("dev", 0o40755, b"", None),
        ("dev/console", 0o20600, b"", console),
        ("bin/busybox", 0o100755, &busybox, None),
        ("init", 0o100755, init, None),
    ]);
    std::fs::write(&good, archive).map_err(|e| e.to_string())?;
    let good = good.to_str().ok_or("path")?;
    let out = brig(&["boot", "--initrd", good, "--console", "--timeout", "300"]);
    check(out.status.success(), "exit 0 when the guest reboots", &out)?;
    check(
        stderr(&out).contains("bare-init-ran-42"),
        "the initramfs's own /init ran (its console line)",
        &out,
    )?;
    check(stdout(&out).is_empty(), "no agent, no command output", &out)?;

    let bad = dir.path().join("no-init.cpio");
    std::fs::write(&bad, cpio(&[("dev", 0o40755, b"", None)])).map_err(|e| e.to_string())?;
    let out = brig(&[
        "boot",
        "--initrd",
        bad.to_str().ok_or("path")?,
        "--timeout",
        "300",
    ]);
    check(
        out.status.code() == Some(125),
        "exit 125 without an init",
        &out,
    )?;
    let err = stderr(&out);
    check(
        err.contains("the guest kernel panicked: Kernel panic - not syncing")
            && err.lines().count() == 1,
        "the panic line, one line",
        &out,
    )?;

    let out = brig(&["boot", "--initrd", "/nonexistent.cpio"]);
    check(
        out.status.code() == Some(125),
        "exit 125 for a missing file",
        &out,
    )?;
    let err = stderr(&out);
    check(
        err.lines().count() == 1 && err.contains("--initrd /nonexistent.cpio"),
        "one line naming the file",
        &out,
    )?;
    let out = brig(&["boot", "--initrd", good, "--", "/bin/true"]);
    check(
        out.status.code() == Some(125) && stderr(&out).contains("cannot be used with"),
        "a command with --initrd is refused",
        &out,
    )
}

fn main() {
    // Measured under nested TCG: a trial up to ~6 s, all together under a minute.
    run_tests(
        Limits::secs(300, 600),
        vec![
            trial("echo_output_is_returned", echo_output_is_returned),
            trial("exit_codes_0_and_7", exit_codes_0_and_7),
            trial("stderr_is_kept_apart", stderr_is_kept_apart),
            trial("sigkill_gives_137", sigkill_gives_137),
            trial("missing_command_gives_127", missing_command_gives_127),
            trial("non_executable_gives_126", non_executable_gives_126),
            trial("kernel_panic_is_reported", kernel_panic_is_reported),
            trial(
                "timeout_ends_a_guest_that_never_finishes",
                timeout_ends_a_guest_that_never_finishes,
            ),
            trial("two_cpus_are_seen", two_cpus_are_seen),
            trial(
                "memory_size_is_what_the_guest_sees",
                memory_size_is_what_the_guest_sees,
            ),
            trial("timings_name_every_phase", timings_name_every_phase),
            trial(
                "vcpu_threads_are_seccomp_filtered",
                vcpu_threads_are_seccomp_filtered,
            ),
            trial(
                "permission_denied_on_kvm_is_one_line",
                permission_denied_on_kvm_is_one_line,
            ),
            trial(
                "a_saved_guest_resumes_where_it_stopped",
                a_saved_guest_resumes_where_it_stopped,
            ),
            trial(
                "a_foreign_initramfs_boots_without_the_agent",
                a_foreign_initramfs_boots_without_the_agent,
            ),
        ],
    )
}
