//! Sandboxes that live (issue 6): `run -d`, `ps`, `exec`, `logs`, `cp`, `stop`, `kill`,
//! `rm`, `stats`, `inspect`, `pause`, `unpause`, `start` end to end, on a busybox image in a
//! private store.
//! Needs KVM: runs under scripts/with-kvm where this host has none usable (see common/kvm.rs).

#[path = "sandbox/checkpoint.rs"]
mod checkpoint;
mod common;
#[path = "sandbox/pause.rs"]
mod pause;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::fixture::{check, eventually, process_gone, stderr, stdout, Fixture};
use common::images::{self, busybox_layer};
use common::kvm::{run_tests_with, trial, Limits};
use common::procs::Running;
use common::pty::Pty;
use common::{Layer, Layout};

/// Where the test image's layout is built (on the host, before any nested VM).
fn layout_dir() -> PathBuf {
    images::cache_dir().join("sandbox-layouts")
}

/// Host side: the busybox image `sbx` (Cmd `sleep 1000`) with a few more applets.
fn prepare() {
    let dir = layout_dir();
    let _ = fs::remove_dir_all(&dir);
    let mut extra = Layer::new();
    for applet in ["find", "stat", "md5sum", "xargs", "cut", "chmod", "date"] {
        extra = extra.symlink(&format!("bin/{applet}"), "busybox");
    }
    Layout::new(dir.join("sbx")).add(
        "latest",
        vec![busybox_layer(), extra],
        serde_json::json!({"Cmd": ["sleep", "1000"], "Env": ["PATH=/bin"]}),
    );
}

/// The store the tests run from, with the test image imported once.
fn fixture() -> &'static Fixture {
    Fixture::shared("sandbox", &[("sbx", layout_dir().join("sbx"))])
}

impl Fixture {
    /// `brig run -d --name NAME [extra] sbx CMD...`; the guard removes it.
    fn start(&self, name: &str, extra: &[&str], cmd: &[&str]) -> Result<Started, String> {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.push("sbx");
        args.extend_from_slice(cmd);
        let out = self.brig(&args);
        let id = stdout(&out).trim().to_string();
        check(
            out.status.success() && id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            &format!("run -d --name {name} prints the id"),
            &out,
        )?;
        Ok(Started { id })
    }

    /// Readiness: waits until sandbox `name` has logged `line` (its workload runs).
    fn logged(&self, name: &str, line: &str) -> Result<(), String> {
        eventually(120, &format!("{name} logs {line:?}"), || {
            stdout(&self.brig(&["logs", name]))
                .lines()
                .any(|l| l == line)
        })
    }
}

/// A started sandbox, removed (`rm -f`) when dropped.
struct Started {
    id: String,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = fixture().brig(&["rm", "-f", &self.id]);
    }
}

/// Fails unless `out` is brig's one-line error with exit 125 that mentions `needle`.
fn one_line_error(out: &Output, needle: &str, what: &str) -> Result<(), String> {
    check(
        out.status.code() == Some(125)
            && stderr(out).lines().count() == 1
            && stderr(out).contains(needle),
        &format!("{what}: one line, exit 125, mentioning {needle:?}"),
        out,
    )
}

/// The numbers sandbox `name` has logged so far.
fn ticks(name: &str) -> Vec<u64> {
    stdout(&fixture().brig(&["logs", name]))
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn json(out: &Output) -> Result<serde_json::Value, String> {
    serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON ({e}): {:?}", stdout(out)))
}

fn run_detached_shows_up_with_stats() -> Result<(), String> {
    let f = fixture();
    let sb = f.start("up", &["-m", "64m"], &[])?;
    let out = f.brig(&["ps"]);
    let line = stdout(&out)
        .lines()
        .find(|l| l.ends_with(" up"))
        .unwrap_or_default()
        .to_string();
    check(
        line.starts_with(&sb.id[..12]) && line.contains("Up ") && line.contains("\"sleep 1000\""),
        "ps shows it Up",
        &out,
    )?;
    let out = f.brig(&["ps", "-q"]);
    check(
        stdout(&out).lines().any(|l| l == &sb.id[..12]),
        "ps -q",
        &out,
    )?;
    let out = f.brig(&["ps", "--format", "json"]);
    let rows = json(&out)?;
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["Names"] == "up"))
        .ok_or_else(|| format!("no row for up in {rows}"))?;
    check(row["State"] == "running", "ps --format json", &out)?;
    // The VMM is a process of its own, named by inspect.
    let out = f.brig(&["inspect", "up"]);
    let pid = json(&out)?[0]["State"]["Pid"].as_u64().unwrap_or(0);
    check(
        pid > 0 && Path::new(&format!("/proc/{pid}")).exists(),
        "inspect names the VMM's pid",
        &out,
    )?;
    let out = f.brig(&["stats", "--no-stream", "--format", "json", "up"]);
    let rows = json(&out)?;
    let (usage, limit) = (
        rows[0]["MemUsage"].as_u64().unwrap_or(0),
        rows[0]["MemLimit"].as_u64().unwrap_or(0),
    );
    check(
        limit == 64 << 20 && usage > 0 && usage <= limit && rows[0]["Pids"].as_u64() >= Some(1),
        "stats: memory used within the -m limit",
        &out,
    )?;
    let out = f.brig(&["stats", "--no-stream", "up"]);
    check(
        stdout(&out).contains("64.0MiB") && stdout(&out).contains("up"),
        "stats table",
        &out,
    )?;
    // brig update: new limits in the running guest; more memory than the VM has is refused.
    let out = f.brig(&["update", "-m", "32m", "--pids-limit", "20", "up"]);
    check(out.status.success(), "update", &out)?;
    let out = f.brig(&["stats", "--no-stream", "--format", "json", "up"]);
    check(
        json(&out)?[0]["MemLimit"].as_u64() == Some(32 << 20),
        "stats after update: the new memory limit",
        &out,
    )?;
    let out = f.brig(&["exec", "up", "cat", "/sys/fs/cgroup/workload/pids.max"]);
    check(
        stdout(&out) == "20\n",
        "update: pids.max in the guest",
        &out,
    )?;
    let out = f.brig(&["update", "-m", "100g", "up"]);
    one_line_error(
        &out,
        "fixed when it is created",
        "update beyond the VM's memory",
    )
}

fn exec_relays_output_and_exit_codes() -> Result<(), String> {
    let f = fixture();
    let _sb = f.start("ex", &[], &[])?;
    let out = f.brig(&["exec", "ex", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    check(
        out.status.code() == Some(3) && stdout(&out) == "out\n" && stderr(&out) == "err\n",
        "exec: stdout, stderr apart; exit 3",
        &out,
    )?;
    let out = f.brig(&["exec", "ex", "true"]);
    check(out.status.success(), "exec true", &out)?;
    let out = f.brig(&["exec", "ex", "no-such-command"]);
    check(out.status.code() == Some(127), "not found: 127", &out)?;
    let out = f.brig(&["exec", "ex", "/etc/passwd"]);
    check(out.status.code() == Some(126), "not executable: 126", &out)?;
    let out = f.brig(&["exec", "ex", "sh", "-c", "kill -9 $$"]);
    check(out.status.code() == Some(137), "killed: 137", &out)?;
    let out = f.brig(&[
        "exec",
        "-e",
        "A=1",
        "-w",
        "/tmp",
        "-u",
        "1000",
        "ex",
        "sh",
        "-c",
        "echo $A; pwd; id -u",
    ]);
    check(stdout(&out) == "1\n/tmp\n1000\n", "exec -e -w -u", &out)?;
    let out = f.brig(&["exec", "-w", "/no/such/dir", "ex", "true"]);
    one_line_error(&out, "/no/such/dir", "exec -w of a missing directory")?;
    let mut child = Running::spawn(f.cmd(&["exec", "-i", "ex", "sort"]).stdin(Stdio::piped()))?;
    child
        .stdin()
        .unwrap()
        .write_all(b"b\na\n")
        .map_err(|e| e.to_string())?;
    let out = child.output();
    check(stdout(&out) == "a\nb\n", "exec -i: piped stdin", &out)
}

fn exec_with_a_tty() -> Result<(), String> {
    let f = fixture();
    let _sb = f.start("tty", &[], &[])?;
    let mut term = Pty::spawn(f.cmd(&["exec", "-it", "tty", "sh"]), 31, 101)?;
    let result = (|| {
        term.read_until("# ", 120)?;
        term.write(b"stty size; tty\n")?;
        term.read_until("31 101", 60)?;
        term.read_until("/dev/pts/", 60)?;
        term.write(b"exit 4\n")
    })();
    let status = term.wait(120);
    result?;
    match status? {
        s if s.code() == Some(4) => Ok(()),
        s => Err(format!(
            "exec -it should exit 4, got {s:?}; terminal: {:?}",
            term.seen
        )),
    }
}

fn two_execs_run_at_once() -> Result<(), String> {
    let f = fixture();
    let _sb = f.start("two", &[], &[])?;
    // The first can only finish once the second has run while it waits.
    let mut first = f.spawn(&[
        "exec",
        "two",
        "sh",
        "-c",
        "echo waiting; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo first",
    ])?;
    first.wait_for_stdout("waiting\n", 120)?;
    let out = f.brig(&["exec", "two", "sh", "-c", "touch /tmp/go; echo second"]);
    check(stdout(&out) == "second\n", "second exec", &out)?;
    let out = first.output();
    check(
        out.status.success() && stdout(&out) == "waiting\nfirst\n",
        "first exec, released by the second",
        &out,
    )
}

fn logs_and_logs_follow() -> Result<(), String> {
    let f = fixture();
    let _sb = f.start(
        "logs",
        &[],
        &[
            "sh",
            "-c",
            "echo one; echo err >&2; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo two",
        ],
    )?;
    eventually(60, "the first line is logged", || {
        stdout(&f.brig(&["logs", "logs"])) == "one\n"
    })?;
    let out = f.brig(&["logs", "logs"]);
    check(stderr(&out) == "err\n", "logs keeps stderr apart", &out)?;
    let mut follow = f.spawn(&["logs", "-f", "logs"])?;
    // It has caught up with what was logged so far: what comes next, it follows.
    follow.wait_for_stdout("one\n", 120)?;
    let out = f.brig(&["exec", "logs", "touch", "/tmp/go"]);
    check(out.status.success(), "exec touch", &out)?;
    // The workload ends after "two": logs -f ends with it.
    let out = follow
        .output_within(120)
        .map_err(|e| format!("logs -f did not end with the sandbox: {e}"))?;
    check(
        stdout(&out) == "one\ntwo\n" && stderr(&out) == "err\n",
        "logs -f saw the output as it came",
        &out,
    )?;
    let out = f.brig(&["logs", "--tail", "1", "logs"]);
    check(stdout(&out) == "two\n", "logs --tail 1", &out)?;
    let out = f.brig(&["logs", "-t", "logs"]);
    let first = stdout(&out).lines().next().unwrap_or_default().to_string();
    check(
        first.len() > 20 && first.as_bytes()[4] == b'-' && first.ends_with(" one"),
        "logs -t prefixes RFC 3339 times",
        &out,
    )?;
    let out = f.brig(&["ps", "-a"]);
    check(
        stdout(&out)
            .lines()
            .any(|l| l.ends_with(" logs") && l.contains("Exited (0)")),
        "ps -a: exited 0",
        &out,
    )
}

/// A tree with nested directories, odd modes, times, a symlink, an empty file, a name
/// with a space and a few MB of random bytes.
fn make_tree(root: &Path) -> Result<(), String> {
    let e = |e: std::io::Error| e.to_string();
    fs::create_dir_all(root.join("sub/deeper")).map_err(e)?;
    fs::write(root.join("a file.txt"), b"alpha\n").map_err(e)?;
    fs::write(root.join("sub/run.sh"), b"#!/bin/sh\necho hi\n").map_err(e)?;
    fs::write(root.join("sub/deeper/empty"), b"").map_err(e)?;
    let mut rnd = Vec::new();
    fs::File::open("/dev/urandom")
        .and_then(|f| f.take(3 << 20).read_to_end(&mut rnd))
        .map_err(e)?;
    fs::write(root.join("sub/random.bin"), &rnd).map_err(e)?;
    std::os::unix::fs::symlink("../a file.txt", root.join("sub/link")).map_err(e)?;
    for (p, mode) in [
        ("sub/run.sh", 0o751),
        ("a file.txt", 0o600),
        ("sub/deeper", 0o705),
    ] {
        fs::set_permissions(root.join(p), fs::Permissions::from_mode(mode)).map_err(e)?;
    }
    for (i, p) in [
        "a file.txt",
        "sub/run.sh",
        "sub/random.bin",
        "sub/deeper",
        "sub",
        "",
    ]
    .iter()
    .enumerate()
    {
        let t = libc::timespec {
            tv_sec: 1_500_000_000 + i as i64 * 1000,
            tv_nsec: 0,
        };
        let path = std::ffi::CString::new(root.join(p).to_str().unwrap()).unwrap();
        // SAFETY: path is NUL-terminated; times points to two timespecs.
        let r = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), [t, t].as_ptr(), 0) };
        if r != 0 {
            return Err(format!(
                "utimensat {p}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// (path, mode, mtime, sha256 or link target) of every entry under `root`, sorted.
fn describe(root: &Path) -> Vec<(String, u32, i64, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let (mtime, body) = if m.file_type().is_symlink() {
                (0, fs::read_link(&p).unwrap().display().to_string())
            } else if m.is_dir() {
                stack.push(p.clone());
                (m.mtime(), String::new())
            } else {
                (m.mtime(), common::sha256_hex(&fs::read(&p).unwrap()))
            };
            out.push((rel, m.mode() & 0o7777, mtime, body));
        }
    }
    out.sort();
    out
}

fn same_tree(a: &Path, b: &Path, what: &str) -> Result<(), String> {
    let (da, db) = (describe(a), describe(b));
    let top = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.mode() & 0o7777, m.mtime())
    };
    if da != db || da.is_empty() || top(a) != top(b) {
        return Err(format!("{what}: trees differ\n  {da:?}\n  {db:?}"));
    }
    Ok(())
}

fn cp_round_trips_a_tree() -> Result<(), String> {
    let f = fixture();
    let work = f.base.join("cp");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let tree = work.join("tree");
    make_tree(&tree)?;
    let w = |p: &str| work.join(p).to_str().unwrap().to_string();
    let sb = f.start("cp", &[], &[])?;
    // Into a running sandbox: a new name, then into an existing directory.
    let out = f.brig(&["cp", &w("tree"), "cp:/data"]);
    check(out.status.success(), "cp tree cp:/data", &out)?;
    let out = f.brig(&["cp", &w("tree"), "cp:/tmp"]);
    check(out.status.success(), "cp tree cp:/tmp", &out)?;
    let out = f.brig(&[
        "exec",
        "cp",
        "sh",
        "-c",
        "sha256sum '/data/sub/random.bin' '/tmp/tree/a file.txt'; stat -c '%a %Y' /data/sub/run.sh",
    ]);
    let want = format!(
        "{}  /data/sub/random.bin\n{}  /tmp/tree/a file.txt\n751 1500001000\n",
        common::sha256_hex(&fs::read(tree.join("sub/random.bin")).unwrap()),
        common::sha256_hex(b"alpha\n"),
    );
    check(
        stdout(&out) == want,
        "the tree arrived byte for byte, with modes and times",
        &out,
    )?;
    // Out again: byte-identical.
    let out = f.brig(&["cp", "cp:/data", &w("back")]);
    check(out.status.success(), "cp cp:/data back", &out)?;
    same_tree(&tree, &work.join("back"), "running sandbox: /data")?;
    let out = f.brig(&["cp", "cp:/tmp/tree/.", &w("back")]);
    check(
        out.status.success(),
        "cp of a directory's contents into an existing one",
        &out,
    )?;
    same_tree(
        &tree,
        &work.join("back"),
        "contents merged over the same tree",
    )?;
    let out = f.brig(&["cp", "cp:/data/sub/run.sh", &w("")]);
    check(
        out.status.success()
            && fs::read(work.join("run.sh")).ok().as_deref()
                == Some(b"#!/bin/sh\necho hi\n".as_slice()),
        "a file into an existing directory",
        &out,
    )?;
    // From a stopped sandbox whose state was kept; and into it.
    let out = f.brig(&["stop", "-t", "1", "cp"]);
    check(out.status.success(), "stop", &out)?;
    let out = f.brig(&["cp", "cp:/data", &w("stopped")]);
    check(out.status.success(), "cp out of a stopped sandbox", &out)?;
    same_tree(&tree, &work.join("stopped"), "stopped sandbox: /data")?;
    let out = f.brig(&["cp", &w("run.sh"), "cp:/data/added.sh"]);
    check(out.status.success(), "cp into a stopped sandbox", &out)?;
    let out = f.brig(&["cp", "cp:/data/added.sh", &w("added.sh")]);
    check(
        out.status.success()
            && fs::read(work.join("added.sh")).ok().as_deref()
                == Some(b"#!/bin/sh\necho hi\n".as_slice()),
        "what was copied into the stopped sandbox stays there",
        &out,
    )?;
    let runtime = f.runtime_leftovers();
    if !runtime.is_empty() {
        return Err(format!("maintenance VMs left runtime files: {runtime:?}"));
    }
    let left: Vec<_> = fs::read_dir(&work)
        .map_err(|e| e.to_string())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".brig-cp"))
        .collect();
    drop(sb);
    if !left.is_empty() {
        return Err(format!("staging directories left: {left:?}"));
    }
    Ok(())
}

/// A workload that writes and ends at once leaves its files on the kept overlay: the VM is
/// stopped as soon as its status is in, so the guest must flush before it reports it.
fn a_quick_workloads_files_are_kept() -> Result<(), String> {
    let f = fixture();
    let _ = f.brig(&["rm", "-f", "quick"]);
    let script = "echo kept > /kept && seq 1 50000 > /many && mkdir -p /d/e && echo deep > /d/e/f";
    let out = f.brig(&[
        "run",
        "--name",
        "quick",
        "--network",
        "none",
        "sbx",
        "sh",
        "-c",
        script,
    ]);
    check(
        out.status.success(),
        "run --name quick, writing three files",
        &out,
    )?;
    let sb = Started {
        id: "quick".to_string(),
    };
    let work = f.base.join("quick");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let dest = |name: &str| work.join(name).to_string_lossy().into_owned();
    for (from, to) in [
        ("quick:/kept", "kept"),
        ("quick:/many", "many"),
        ("quick:/d", "d"),
    ] {
        let out = f.brig(&["cp", from, &dest(to)]);
        check(
            out.status.success(),
            &format!("cp {from} out of the stopped sandbox"),
            &out,
        )?;
    }
    let read = |p: &str| fs::read_to_string(work.join(p)).unwrap_or_default();
    let many: String = (1..=50000).map(|i| format!("{i}\n")).collect();
    if read("kept") != "kept\n" || read("many") != many || read("d/e/f") != "deep\n" {
        return Err(format!(
            "the stopped sandbox lost what its workload wrote: /kept {:?}, /many {} of {} bytes, /d/e/f {:?}",
            read("kept"),
            read("many").len(),
            many.len(),
            read("d/e/f")
        ));
    }
    drop(sb);
    Ok(())
}

fn stop_is_sigterm_then_sigkill() -> Result<(), String> {
    let f = fixture();
    let _a = f.start(
        "traps",
        &[],
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo trapping; while :; do sleep 0.1; done",
        ],
    )?;
    let _b = f.start(
        "ignores",
        &[],
        &[
            "sh",
            "-c",
            "trap '' TERM; echo ignoring; while :; do sleep 0.1; done",
        ],
    )?;
    // Stopped only once the traps are set, not while the shells are starting.
    f.logged("traps", "trapping")?;
    f.logged("ignores", "ignoring")?;
    let t = Instant::now();
    let out = f.brig(&["stop", "-t", "60", "traps"]);
    let took = t.elapsed();
    check(
        out.status.success() && stdout(&out) == "traps\n",
        "stop traps",
        &out,
    )?;
    let out = f.brig(&["wait", "traps"]);
    check(
        stdout(&out) == "7\n",
        "the trap's exit code: it ended on SIGTERM",
        &out,
    )?;
    let out = f.brig(&["logs", "traps"]);
    check(stdout(&out) == "trapping\ngot-term\n", "the trap ran", &out)?;
    if took >= Duration::from_secs(60) {
        return Err(format!("stop waited out the grace period ({took:?})"));
    }
    let t = Instant::now();
    let out = f.brig(&["stop", "-t", "2", "ignores"]);
    let took = t.elapsed();
    check(out.status.success(), "stop ignores", &out)?;
    let out = f.brig(&["wait", "ignores"]);
    check(
        stdout(&out) == "137\n",
        "killed after the grace period: 137",
        &out,
    )?;
    if took < Duration::from_secs(2) {
        return Err(format!(
            "stop -t 2 did not wait the grace period ({took:?})"
        ));
    }
    let out = f.brig(&["inspect", "ignores"]);
    let v = json(&out)?;
    check(
        v[0]["State"]["Status"] == "exited" && v[0]["State"]["ExitCode"] == 137,
        "inspect: exited 137",
        &out,
    )
}

fn killed_vmm_reads_as_exited_and_rm_cleans_up() -> Result<(), String> {
    let f = fixture();
    let sb = f.start("doomed", &[], &[])?;
    let out = f.brig(&["inspect", "doomed"]);
    let pid = json(&out)?[0]["State"]["Pid"].as_u64().unwrap_or(0) as i32;
    check(pid > 0, "inspect names the VMM's pid", &out)?;
    // SAFETY: kill on the pid brig reported for its VMM.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    eventually(30, "the VMM process is gone", || process_gone(pid as u32))?;
    let out = f.brig(&["ps"]);
    check(
        !stdout(&out).contains("doomed"),
        "ps no longer lists it",
        &out,
    )?;
    let out = f.brig(&["ps", "-a"]);
    check(
        stdout(&out).lines().any(|l| {
            l.ends_with(" doomed") && l.contains("Exited") && l.contains("VMM process died")
        }),
        "ps -a: exited, with the reason",
        &out,
    )?;
    let out = f.brig(&["inspect", "doomed"]);
    let v = json(&out)?;
    check(
        v[0]["State"]["Running"] == false && v[0]["State"]["Status"] == "exited",
        "inspect: not running",
        &out,
    )?;
    let out = f.brig(&["exec", "doomed", "true"]);
    one_line_error(&out, "not running", "exec into a dead sandbox")?;
    let out = f.brig(&["rm", "doomed"]);
    check(out.status.success(), "rm", &out)?;
    let left: Vec<String> = f
        .leftovers()
        .into_iter()
        .filter(|d| d.contains(&sb.id[..12]))
        .collect();
    if !left.is_empty() {
        return Err(format!("rm left {left:?}"));
    }
    Ok(())
}

/// Runs `f` over `items`, `width` at a time; returns the results in order.
fn parallel<T: Send + 'static, R: Send + 'static>(
    items: Vec<T>,
    width: usize,
    f: fn(T) -> R,
) -> Vec<R> {
    let mut out = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let batch: Vec<_> = items
            .by_ref()
            .take(width)
            .map(|t| std::thread::spawn(move || f(t)))
            .collect();
        out.extend(batch.into_iter().map(|h| h.join().expect("thread")));
    }
    out
}

fn supervise_processes() -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("__supervise") {
                found.push(cmd);
            }
        }
    }
    found
}

fn twenty_sandboxes_leave_nothing_behind() -> Result<(), String> {
    let f = fixture();
    let names: Vec<String> = (0..20).map(|i| format!("many{i:02}")).collect();
    let started = parallel(names.clone(), 5, |n| {
        fixture().brig(&["run", "-d", "--name", &n, "-m", "64m", "sbx"])
    });
    for out in &started {
        check(out.status.success(), "run -d", out)?;
    }
    let ids: Vec<String> = started
        .iter()
        .map(|o| stdout(o).trim().to_string())
        .collect();
    let out = f.brig(&["ps"]);
    let up = stdout(&out)
        .lines()
        .filter(|l| l.contains(" Up ") && l.contains(" many"))
        .count();
    check(up == 20, "ps lists the 20 sandboxes Up", &out)?;
    let out = f.brig(&["ps", "-q"]);
    check(stdout(&out).lines().count() == 20, "ps -q", &out)?;
    // Twenty ids: two share a first hex digit. A prefix must name one sandbox.
    let prefix = (0..ids.len())
        .find_map(|i| {
            ids[i + 1..]
                .iter()
                .find(|o| o[..1] == ids[i][..1])
                .map(|_| ids[i][..1].to_string())
        })
        .ok_or("no shared first digit among 20 ids")?;
    let out = f.brig(&["exec", &prefix, "true"]);
    one_line_error(&out, "matches several", "ambiguous id prefix")?;
    let out = f.brig(&["exec", &ids[0][..10], "true"]);
    check(out.status.success(), "exec by a unique id prefix", &out)?;
    let stopped = parallel(names.clone(), 5, |n| {
        fixture().brig(&["stop", "-t", "5", &n])
    });
    for out in &stopped {
        check(out.status.success(), "stop", out)?;
    }
    let out = f.brig(&["ps"]);
    check(!stdout(&out).contains("many"), "ps: none running", &out)?;
    let out = f.brig(&["ps", "-a"]);
    check(
        stdout(&out).lines().filter(|l| l.contains(" many")).count() == 20,
        "ps -a: all 20 kept",
        &out,
    )?;
    let mut rm = vec!["rm"];
    rm.extend(names.iter().map(String::as_str));
    let out = f.brig(&rm);
    check(out.status.success(), "rm of the 20", &out)?;
    let left = f.leftovers();
    if !left.is_empty() {
        return Err(format!("files left behind: {left:?}"));
    }
    let procs = supervise_processes();
    if !procs.is_empty() {
        return Err(format!("VMM processes left behind: {procs:?}"));
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mounts.contains(&f.base.display().to_string()) {
        return Err(format!("mounts left behind: {mounts}"));
    }
    Ok(())
}

fn bad_input_is_one_line() -> Result<(), String> {
    let f = fixture();
    for args in [
        vec!["exec", "nosuch", "true"],
        vec!["logs", "nosuch"],
        vec!["inspect", "nosuch"],
        vec!["cp", "nosuch:/etc", "/tmp/x"],
        vec!["wait", "nosuch"],
        vec!["kill", "nosuch"],
    ] {
        one_line_error(&f.brig(&args), "nosuch", &format!("{args:?}"))?;
    }
    // stop and rm report each name and exit 1, as docker's do.
    for args in [vec!["stop", "nosuch"], vec!["rm", "nosuch"]] {
        let out = f.brig(&args);
        check(
            out.status.code() == Some(1)
                && stderr(&out).lines().count() == 1
                && stderr(&out).contains("no such sandbox"),
            &format!("{args:?}"),
            &out,
        )?;
    }
    let sb = f.start("bad", &[], &[])?;
    let out = f.brig(&["run", "-d", "--name", "bad", "sbx"]);
    one_line_error(&out, "already in use", "a second run --name")?;
    let out = f.brig(&["ps"]);
    check(
        stdout(&out).lines().filter(|l| l.ends_with(" bad")).count() == 1,
        "the first one is untouched",
        &out,
    )?;
    let host = f.base.join("bad-input");
    let _ = fs::remove_dir_all(&host);
    fs::create_dir_all(&host).map_err(|e| e.to_string())?;
    fs::write(host.join("f"), b"x").map_err(|e| e.to_string())?;
    let h = |p: &str| host.join(p).to_str().unwrap().to_string();
    for (args, needle) in [
        (
            vec!["cp", "bad:../../etc", &h("out")],
            "outside the sandbox",
        ),
        (vec!["cp", &h("f"), "bad:../../etc"], "outside the sandbox"),
        (
            vec!["cp", &h("f"), "bad:/tmp/../../x"],
            "outside the sandbox",
        ),
        (vec!["cp", "bad:/no/such/file", &h("out")], "no such file"),
        (vec!["cp", &h("nope"), "bad:/tmp"], "no such file"),
        (
            vec!["cp", "bad:/etc", &h("f")],
            "cannot copy a directory to a file",
        ),
        (
            vec!["cp", "bad:/etc/passwd", &h("no/such/dir/x")],
            "no such directory",
        ),
        (
            vec!["cp", &h("f"), "bad:/no/such/dir/x"],
            "no such directory",
        ),
        (vec!["cp", &h("f"), &h("g")], "NAME:PATH"),
    ] {
        one_line_error(&f.brig(&args), needle, &format!("{args:?}"))?;
    }
    let out = f.brig(&["stop", "-t", "1", "bad"]);
    check(out.status.success(), "stop", &out)?;
    let out = f.brig(&["exec", "bad", "true"]);
    one_line_error(&out, "not running", "exec into a stopped sandbox")?;
    let out = f.brig(&["cp", "bad:/no/such/file", &h("out")]);
    one_line_error(
        &out,
        "no such file",
        "cp of a missing file from a stopped sandbox",
    )?;
    drop(sb);
    let left: Vec<_> = fs::read_dir(&host)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    if left.len() != 1 {
        return Err(format!("failed copies left files: {left:?}"));
    }
    Ok(())
}

fn main() {
    // Measured under nested TCG: a trial up to ~100 s (twenty_sandboxes_leave_nothing_behind),
    // all together ~3.5 minutes.
    run_tests_with(
        Limits::secs(300, 1200),
        prepare,
        || {
            fixture();
        },
        vec![
            trial(
                "run_detached_shows_up_with_stats",
                run_detached_shows_up_with_stats,
            ),
            trial(
                "exec_relays_output_and_exit_codes",
                exec_relays_output_and_exit_codes,
            ),
            trial("exec_with_a_tty", exec_with_a_tty),
            trial("two_execs_run_at_once", two_execs_run_at_once),
            trial("logs_and_logs_follow", logs_and_logs_follow),
            trial("cp_round_trips_a_tree", cp_round_trips_a_tree),
            trial(
                "a_quick_workloads_files_are_kept",
                a_quick_workloads_files_are_kept,
            ),
            trial("stop_is_sigterm_then_sigkill", stop_is_sigterm_then_sigkill),
            trial(
                "killed_vmm_reads_as_exited_and_rm_cleans_up",
                killed_vmm_reads_as_exited_and_rm_cleans_up,
            ),
            trial(
                "twenty_sandboxes_leave_nothing_behind",
                twenty_sandboxes_leave_nothing_behind,
            ),
            trial("bad_input_is_one_line", bad_input_is_one_line),
            trial(
                "pause_unpause_and_start_again",
                pause::pause_unpause_and_start_again,
            ),
            trial(
                "checkpoint_and_resume_a_counter",
                checkpoint::checkpoint_and_resume_a_counter,
            ),
        ],
    )
}
