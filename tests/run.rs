//! `brig run` end to end: images imported into a private store, run in microVMs.
//! Needs KVM: runs under scripts/with-kvm where this host has none usable (see common/kvm.rs).

mod common;
#[path = "run/resources.rs"]
mod resources;
#[path = "run/templates.rs"]
mod templates;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::fixture::{check, stderr, stdout, Fixture};
use common::images;
use common::kvm::{run_tests_with, trial, Limits};
use common::pty::Pty;

/// Where the test layouts are built (on the host, before any nested VM).
fn layouts_dir() -> PathBuf {
    images::cache_dir().join("layouts")
}

/// Host side: build the layouts (debootstrap needs the network and a minute, once).
fn prepare() {
    let dir = layouts_dir();
    for name in ["bb", "bb-entry"] {
        let _ = std::fs::remove_dir_all(dir.join(name));
    }
    images::busybox_layouts(&dir);
    let deb = dir.join("debian");
    if !deb.join("index.json").exists() {
        let tmp = dir.join(format!("debian.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        images::debian_layout(&tmp);
        std::fs::rename(&tmp, &deb).unwrap();
    }
}

/// The store the tests run from, with the busybox and Debian images imported once.
fn fixture() -> &'static Fixture {
    let images = ["bb", "bb-entry", "debian"].map(|name| (name, layouts_dir().join(name)));
    Fixture::shared("run", &images)
}

impl Fixture {
    /// `brig run --rm --timeout 600 ARGS`.
    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["run", "--rm", "--timeout", "600"];
        all.extend_from_slice(args);
        self.brig(&all)
    }
}

fn stdout_and_stderr_are_apart() -> Result<(), String> {
    let out = fixture().run(&["bb", "sh", "-c", "echo out; echo err >&2; echo out2"]);
    check(out.status.success(), "exit 0", &out)?;
    check(stdout(&out) == "out\nout2\n", "stdout only", &out)?;
    check(stderr(&out) == "err\n", "stderr only", &out)
}

/// The agent widens the image disk's read-ahead before mounting it (guest/src/rootfs.rs):
/// a workload's first page faults then read the image in fewer, larger requests.
fn the_image_disk_reads_ahead_widely() -> Result<(), String> {
    let out = fixture().run(&["bb", "cat", "/sys/block/vda/queue/read_ahead_kb"]);
    check(out.status.success(), "exit 0", &out)?;
    check(
        stdout(&out) == "1024\n",
        "read_ahead_kb of /dev/vda is 1024",
        &out,
    )
}

fn exit_codes_follow_docker() -> Result<(), String> {
    let f = fixture();
    for (args, code) in [
        (vec!["bb", "true"], 0),
        (vec!["bb", "sh", "-c", "exit 3"], 3),
        (vec!["bb", "no-such-command"], 127),
        (vec!["bb", "/etc/passwd"], 126),
        (vec!["bb", "sh", "-c", "kill -9 $$"], 137),
    ] {
        let out = f.run(&args);
        check(
            out.status.code() == Some(code),
            &format!("{args:?} exits {code}"),
            &out,
        )?;
    }
    Ok(())
}

fn entrypoint_and_cmd_compose() -> Result<(), String> {
    let f = fixture();
    let out = f.run(&["bb"]);
    check(stdout(&out) == "default\n", "image Cmd", &out)?;
    let out = f.run(&["bb-entry"]);
    check(
        stdout(&out) == "entry default-arg\n",
        "Entrypoint + Cmd",
        &out,
    )?;
    let out = f.run(&["bb-entry", "x", "y"]);
    check(
        stdout(&out) == "entry x y\n",
        "Entrypoint + arguments",
        &out,
    )?;
    let out = f.run(&["--entrypoint", "/bin/echo", "bb-entry", "only"]);
    check(stdout(&out) == "only\n", "--entrypoint replaces both", &out)?;
    let out = f.run(&["--entrypoint", "", "bb-entry", "echo", "plain"]);
    check(stdout(&out) == "plain\n", "--entrypoint '' clears it", &out)
}

fn env_workdir_and_hostname() -> Result<(), String> {
    let f = fixture();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=yes\nFOO=file\n").map_err(|e| e.to_string())?;
    let out = f.run(&[
        "-e",
        "A=1",
        "--env-file",
        env_file.to_str().unwrap(),
        "-e",
        "FOO=cli",
        "-w",
        "/made/up",
        "-h",
        "boxy",
        "bb",
        "sh",
        "-c",
        "echo $A $FROM_FILE $FOO; pwd; hostname; cat /etc/hostname",
    ]);
    check(out.status.success(), "exit 0", &out)?;
    check(
        stdout(&out) == "1 yes cli\n/made/up\nboxy\nboxy\n",
        "env, workdir, hostname",
        &out,
    )?;
    let out = f.run(&["bb-entry"]);
    check(out.status.success(), "image WorkingDir and User", &out)?;
    let out = f.run(&["--entrypoint", "", "bb-entry", "sh", "-c", "pwd; id -un"]);
    check(
        stdout(&out) == "/work\napp\n",
        "image WorkingDir and User apply",
        &out,
    )?;
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "GOOD=1\nBAD KEY=2\n").map_err(|e| e.to_string())?;
    let out = f.run(&["--env-file", bad.to_str().unwrap(), "bb", "true"]);
    check(
        out.status.code() == Some(125) && stderr(&out).contains("line 2"),
        "malformed env-file",
        &out,
    )
}

fn users_resolve_through_the_image() -> Result<(), String> {
    let f = fixture();
    let out = f.run(&["-u", "1000:1000", "bb", "id"]);
    check(
        stdout(&out) == "uid=1000(app) gid=1000(app) groups=1000(app)\n",
        "-u 1000:1000",
        &out,
    )?;
    let out = f.run(&["-u", "nobody", "debian", "id"]);
    check(
        stdout(&out) == "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)\n",
        "-u nobody in Debian",
        &out,
    )?;
    let out = f.run(&["debian", "id"]);
    check(
        stdout(&out).starts_with("uid=0(root) gid=0(root)"),
        "root by default",
        &out,
    )?;
    let out = f.run(&["-u", "ghost", "bb", "id"]);
    check(
        out.status.code() == Some(125) && stderr(&out).contains("unable to find user ghost"),
        "unknown user",
        &out,
    )
}

fn debian_image_runs() -> Result<(), String> {
    let out = fixture().run(&[
        "debian",
        "bash",
        "-c",
        "source /etc/os-release; echo $ID $VERSION_CODENAME; dpkg -s coreutils | grep -c Status",
    ]);
    check(
        stdout(&out) == "debian bookworm\n1\n",
        "Debian's bash and dpkg",
        &out,
    )
}

fn stdin_is_piped() -> Result<(), String> {
    let f = fixture();
    let mut child = common::procs::Running::spawn(
        f.cmd(&["run", "--rm", "-i", "bb", "sort"])
            .stdin(Stdio::piped()),
    )?;
    child
        .stdin()
        .unwrap()
        .write_all(b"b\na\n")
        .map_err(|e| e.to_string())?;
    let out = child.output();
    check(
        out.status.success() && stdout(&out) == "a\nb\n",
        "sort of stdin",
        &out,
    )?;
    // Without -i the workload's stdin is empty.
    let out = f.run(&["bb", "wc", "-c"]);
    check(stdout(&out).trim() == "0", "no stdin without -i", &out)
}

fn tty_session_through_a_pty() -> Result<(), String> {
    let f = fixture();
    let cmd = f.cmd(&["run", "--rm", "-it", "--timeout", "600", "bb", "sh"]);
    let mut term = Pty::spawn(cmd, 31, 101)?;
    let result = (|| {
        term.read_until("# ", 300)?;
        term.write(b"stty size\n")?;
        term.read_until("31 101", 60)?;
        // A foreground job that says when it runs: "sleeping-42" is in its output only (the
        // terminal echoes the command line with $((6*7)) unexpanded). From then on the job's
        // process is there to take Ctrl-C, as the subshell that is about to become `sleep`
        // or as `sleep` itself; either dies of SIGINT.
        term.write(b"(echo sleeping-$((6*7)); exec sleep 1000)\n")?;
        term.read_until("sleeping-42", 120)?;
        term.write(&[3])?; // Ctrl-C
                           // The interactive shell reports the interrupted job's status: 128 + SIGINT.
        term.write(b"echo status-$?\n")?;
        term.read_until("status-130", 60)?;
        term.write(b"exit 5\n")
    })();
    // Drains the terminal meanwhile, so brig never blocks writing to it.
    let status = term.wait(120);
    result?;
    match status {
        Ok(s) if s.code() == Some(5) => Ok(()),
        other => Err(format!(
            "brig -it should exit 5, got {other:?}; terminal: {:?}",
            term.seen
        )),
    }
}

fn large_output_arrives_intact() -> Result<(), String> {
    // 100 MB of random bytes: the guest prints their checksum on stderr, the bytes on stdout.
    let out = fixture().run(&[
        "bb",
        "sh",
        "-c",
        "head -c 100000000 /dev/urandom > /tmp/r && sha256sum /tmp/r >&2 && cat /tmp/r",
    ]);
    check(out.status.success(), "exit 0", &out)?;
    check(
        out.stdout.len() == 100_000_000,
        "100 MB arrived",
        &Output {
            stdout: Vec::new(),
            ..out.clone()
        },
    )?;
    let want = stderr(&out)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let got = common::sha256_hex(&out.stdout);
    if want != got {
        return Err(format!("checksum mismatch: guest {want}, host {got}"));
    }
    Ok(())
}

fn timeout_kills_and_exits_124() -> Result<(), String> {
    let start = Instant::now();
    let out = fixture().brig(&["run", "--rm", "--timeout", "5", "bb", "sleep", "1000"]);
    check(out.status.code() == Some(124), "exit 124", &out)?;
    check(
        start.elapsed() < Duration::from_secs(300),
        "ends soon after",
        &out,
    )
}

fn memory_limit_oom_kills_with_137() -> Result<(), String> {
    let f = fixture();
    // dd with a 100 MiB block allocates and fills a 100 MiB buffer: past -m 64m but within
    // the guest's RAM (-m + 64 MiB), so the cgroup's OOM killer, not malloc, stops it.
    let out = f.run(&[
        "-m",
        "64m",
        "bb",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=100M",
        "count=1",
    ]);
    check(out.status.code() == Some(137), "OOM-killed: 137", &out)?;
    let out = f.run(&[
        "-m",
        "64m",
        "bb",
        "cat",
        "/sys/fs/cgroup/workload/memory.max",
    ]);
    check(
        stdout(&out).trim() == (64u64 << 20).to_string(),
        "the cgroup limit is -m",
        &out,
    )?;
    let out = f.run(&["-m", "1m", "bb", "true"]);
    check(
        out.status.code() == Some(125) && stderr(&out).contains("minimum"),
        "below the minimum",
        &out,
    )
}

fn pids_limit_stops_a_fork_bomb() -> Result<(), String> {
    let f = fixture();
    let out = f.run(&[
        "--pids-limit", "50", "bb", "sh", "-c",
        // At the limit nothing can fork: spin with builtins, then exec (no fork) to report.
        "bomb() { bomb | bomb & }; bomb 2>/dev/null; i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; exec cat /sys/fs/cgroup/workload/pids.max /sys/fs/cgroup/workload/pids.events",
    ]);
    let text = stdout(&out);
    let hits: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    check(
        text.starts_with("50\n") && hits > 0,
        "the bomb hit pids.max",
        &out,
    )?;
    // The host is fine and brig still runs sandboxes.
    let out = f.run(&["bb", "echo", "still-here"]);
    check(stdout(&out) == "still-here\n", "the next run works", &out)
}

fn writes_stay_in_the_overlay() -> Result<(), String> {
    let f = fixture();
    let rootfs = f.brig(&["inspect", "bb"]);
    let json: serde_json::Value =
        serde_json::from_slice(&rootfs.stdout).map_err(|e| format!("inspect: {e}"))?;
    let path = json[0]["RootfsPath"]
        .as_str()
        .ok_or_else(|| format!("no RootfsPath in {json}"))?
        .to_string();
    let before = common::sha256_hex(&std::fs::read(&path).map_err(|e| e.to_string())?);
    let out = f.run(&[
        "bb",
        "sh",
        "-c",
        "echo new > /bin/newfile && rm /bin/cat && echo changed > /etc/passwd && ls /bin/newfile",
    ]);
    check(
        stdout(&out) == "/bin/newfile\n",
        "writes succeed in the sandbox",
        &out,
    )?;
    let out = f.run(&[
        "bb",
        "sh",
        "-c",
        "ls /bin/newfile; ls /bin/cat; head -c 4 /etc/passwd",
    ]);
    check(
        stdout(&out) == "/bin/cat\nroot",
        "and vanish after it",
        &out,
    )?;
    let after = common::sha256_hex(&std::fs::read(&path).map_err(|e| e.to_string())?);
    if before != after {
        return Err("the shared rootfs image changed".into());
    }
    let out = f.run(&[
        "--read-only",
        "bb",
        "sh",
        "-c",
        "touch /x; echo $?; touch /tmp/x && echo tmp-ok",
    ]);
    check(
        stdout(&out) == "1\ntmp-ok\n",
        "--read-only root, writable /tmp",
        &out,
    )
}

/// The agent never reports an exit: the workload resets the VM under it. brig says so in one
/// line, exits 125 and leaves no state or socket behind.
fn vm_ending_under_the_workload_is_reported() -> Result<(), String> {
    let f = fixture();
    // --privileged: reboot needs CAP_SYS_BOOT, which docker's defaults do not grant.
    let out = f.run(&["--privileged", "bb", "/bin/busybox", "reboot", "-f"]);
    check(
        out.status.code() == Some(125)
            && stderr(&out).lines().count() == 1
            && stderr(&out).contains("before the workload's exit status"),
        "a VM that ends without the workload's exit status",
        &out,
    )?;
    let left = f.leftovers();
    if !left.is_empty() {
        return Err(format!("left behind after the VM ended early: {left:?}"));
    }
    Ok(())
}

fn ten_concurrent_runs_leave_nothing_behind() -> Result<(), String> {
    let f = fixture();
    let handles: Vec<_> = (0..10)
        .map(|i| {
            std::thread::spawn(move || fixture().run(&["bb", "sh", "-c", &format!("echo run-{i}")]))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().map_err(|_| "thread panicked".to_string())?;
        check(
            out.status.success() && stdout(&out) == format!("run-{i}\n"),
            "each run succeeds",
            &out,
        )?;
    }
    let left = f.leftovers();
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}"));
    }
    Ok(())
}

fn killed_brig_leaves_no_vm_behind() -> Result<(), String> {
    let f = fixture();
    let mut child = f.spawn(&[
        "run",
        "--rm",
        "bb",
        "sh",
        "-c",
        "echo workload-started; exec sleep 1000",
    ])?;
    // Killed only once the VM runs the workload, not while brig is still starting it.
    child.wait_for_stdout("workload-started\n", 300)?;
    child.kill();
    // A helper of the sandbox's (passt, a volume's file server) ends on end-of-file, a
    // moment after brig: give it that moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stray = common::procs::ours();
    while !stray.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        stray = common::procs::ours();
    }
    if !stray.is_empty() {
        return Err(format!(
            "processes outlived the killed brig:\n{}",
            common::procs::threads_report(&stray)
        ));
    }
    // The VMM (brig's jailed child, or brig's own threads unjailed) is gone with it. Its
    // files and cgroup are swept by the next run.
    let out = f.run(&["bb", "true"]);
    check(out.status.success(), "next run", &out)?;
    let left = f.leftovers();
    if !left.is_empty() {
        return Err(format!("left behind after a killed run: {left:?}"));
    }
    Ok(())
}

/// The README's first run: `scripts/local-image` (what `scripts/setup.sh` runs) imports
/// Debian's busybox-static as `localhost/busybox`, and `brig run --rm` of it prints, offline.
fn readme_first_run_works_offline() -> Result<(), String> {
    let f = fixture();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/local-image");
    let import = || {
        std::process::Command::new(&script)
            .arg("--brig")
            .arg(common::kvm::brig_exe())
            .env("BRIG_HOME", &f.home)
            .env("BRIG_RUNTIME_DIR", &f.runtime)
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))
    };
    let imported = import()?;
    check(
        imported.status.success(),
        "scripts/local-image exit 0",
        &imported,
    )?;
    let images = f.brig(&["images"]);
    check(
        stdout(&images).contains("localhost/busybox"),
        "localhost/busybox listed",
        &images,
    )?;
    let out = f.run(&["localhost/busybox", "echo", "hello", "from", "a", "microVM"]);
    check(out.status.success(), "exit 0", &out)?;
    check(
        stdout(&out) == "hello from a microVM\n",
        "the README's greeting",
        &out,
    )?;
    // Importing it again changes nothing (setup is idempotent): the same image id.
    let again = import()?;
    check(again.status.success(), "a second import exit 0", &again)?;
    let after = f.brig(&["images"]);
    check(
        stdout(&after) == stdout(&images),
        "the same images after a second import",
        &after,
    )
}

fn bad_input_is_one_line() -> Result<(), String> {
    let f = fixture();
    let out = f.brig(&["run", "--pull", "never", "no-such-image"]);
    check(
        out.status.code() == Some(125) && stderr(&out).lines().count() == 1,
        "absent image",
        &out,
    )?;
    let out = f.brig(&["run", "127.0.0.1:9/none:latest"]);
    check(
        out.status.code() == Some(125) && stderr(&out).lines().count() == 1,
        "unpullable image",
        &out,
    )?;
    let out = f.brig(&["run", "-it", "bb", "true"]);
    check(
        out.status.code() == Some(125) && stderr(&out).contains("not a TTY"),
        "-it without a terminal",
        &out,
    )
}

fn main() {
    // Measured under nested TCG: importing the images ~2.5 minutes, a trial up to ~2
    // (large_output_arrives_intact), all together ~10.
    run_tests_with(
        Limits::secs(300, 1800),
        prepare,
        || {
            fixture();
        },
        vec![
            trial("stdout_and_stderr_are_apart", stdout_and_stderr_are_apart),
            trial(
                "the_image_disk_reads_ahead_widely",
                the_image_disk_reads_ahead_widely,
            ),
            trial("exit_codes_follow_docker", exit_codes_follow_docker),
            trial("entrypoint_and_cmd_compose", entrypoint_and_cmd_compose),
            trial("env_workdir_and_hostname", env_workdir_and_hostname),
            trial(
                "users_resolve_through_the_image",
                users_resolve_through_the_image,
            ),
            trial("debian_image_runs", debian_image_runs),
            trial("stdin_is_piped", stdin_is_piped),
            trial("tty_session_through_a_pty", tty_session_through_a_pty),
            trial("large_output_arrives_intact", large_output_arrives_intact),
            trial("timeout_kills_and_exits_124", timeout_kills_and_exits_124),
            trial(
                "memory_limit_oom_kills_with_137",
                memory_limit_oom_kills_with_137,
            ),
            trial("pids_limit_stops_a_fork_bomb", pids_limit_stops_a_fork_bomb),
            trial("writes_stay_in_the_overlay", writes_stay_in_the_overlay),
            trial(
                "vm_ending_under_the_workload_is_reported",
                vm_ending_under_the_workload_is_reported,
            ),
            trial(
                "ten_concurrent_runs_leave_nothing_behind",
                ten_concurrent_runs_leave_nothing_behind,
            ),
            trial(
                "killed_brig_leaves_no_vm_behind",
                killed_brig_leaves_no_vm_behind,
            ),
            trial("bad_input_is_one_line", bad_input_is_one_line),
            trial(
                "readme_first_run_works_offline",
                readme_first_run_works_offline,
            ),
            trial(
                "resource_flags_cpuset_cpus_pin_the_vm",
                resources::cpuset_cpus_pin_the_vm_and_size_it,
            ),
            trial(
                "resource_flags_cpuset_cpus_outside_the_host_fail",
                resources::cpuset_cpus_outside_the_host_fail_like_docker,
            ),
            trial(
                "resource_flags_memory_swap_follows_docker",
                resources::memory_swap_follows_docker,
            ),
            trial(
                "resource_flags_device_write_bps_throttles",
                resources::device_write_bps_throttles_the_scratch_disk,
            ),
            trial(
                "templates_restored_guests_are_unique_and_on_time",
                templates::restored_guests_are_unique_and_on_time,
            ),
            trial(
                "templates_cold_and_restored_runs_agree",
                templates::cold_and_restored_runs_agree,
            ),
            trial(
                "templates_a_damaged_template_is_rebuilt",
                templates::a_damaged_template_is_rebuilt,
            ),
            trial(
                "templates_a_template_whose_guest_dies_is_rebuilt",
                templates::a_template_whose_guest_dies_is_rebuilt,
            ),
            trial(
                "templates_detached_jailed_sandboxes_restore_them",
                templates::detached_jailed_sandboxes_restore_templates,
            ),
        ],
    )
}
