//! The processes a test starts: run with their output collected as it comes, so that a
//! trial that overruns its deadline can say what it was waiting for (the command, its
//! stdout and stderr so far, the state of every thread) before it kills them.
//!
//! Every command made by the helpers carries `BRIG_TEST_OWNER=<this test's pid>` in its
//! environment, and so does what brig starts from it (a sandbox's VMM process, which
//! leaves brig's process tree): [`ours`] finds them all by that mark or by ancestry.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The environment variable that marks a process as started by this test binary.
pub const OWNER_VAR: &str = "BRIG_TEST_OWNER";

/// Marks `cmd` (and what it starts) as this test binary's.
pub fn mark(cmd: &mut Command) -> &mut Command {
    cmd.env(OWNER_VAR, std::process::id().to_string())
}

type Buf = Arc<Mutex<Vec<u8>>>;

/// A command in flight, as the overrun report shows it.
struct InFlight {
    id: u64,
    what: String,
    pid: u32,
    since: Instant,
    out: Buf,
    err: Buf,
}

static IN_FLIGHT: Mutex<Vec<InFlight>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn lock_in_flight() -> std::sync::MutexGuard<'static, Vec<InFlight>> {
    // A trial that panicked while holding it left nothing half-written: the list is fine.
    IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running child whose stdout and stderr two threads collect as they come.
pub struct Running {
    child: Child,
    id: u64,
    what: String,
    out: Buf,
    err: Buf,
    readers: Vec<JoinHandle<()>>,
}

/// `cmd` as one line: program name and arguments.
fn describe(cmd: &Command) -> String {
    let program = cmd.get_program().to_string_lossy();
    let program = program.rsplit('/').next().unwrap_or_default().to_string();
    std::iter::once(program)
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn collect(from: impl Read + Send + 'static, into: &Buf) -> JoinHandle<()> {
    let into = into.clone();
    std::thread::spawn(move || {
        let mut from = from;
        let mut chunk = [0u8; 16 << 10];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    })
}

fn text(buf: &Buf) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

impl Running {
    /// Spawns `cmd` with stdout and stderr piped to collectors (stdin as `cmd` says).
    pub fn spawn(cmd: &mut Command) -> Result<Self, String> {
        let what = describe(cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{what}: {e}"))?;
        let (out, err) = (Buf::default(), Buf::default());
        let readers = vec![
            collect(child.stdout.take().unwrap(), &out),
            collect(child.stderr.take().unwrap(), &err),
        ];
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        lock_in_flight().push(InFlight {
            id,
            what: what.clone(),
            pid: child.id(),
            since: Instant::now(),
            out: out.clone(),
            err: err.clone(),
        });
        Ok(Self {
            child,
            id,
            what,
            out,
            err,
            readers,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdin, when `cmd` made it a pipe (once).
    pub fn stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub fn stdout_so_far(&self) -> String {
        text(&self.out)
    }

    fn so_far(&self) -> String {
        format!(
            "stdout so far: {:?}\n  stderr so far: {:?}",
            text(&self.out),
            text(&self.err)
        )
    }

    /// Readiness: waits until `needle` shows up on the child's stdout. Fails after `secs`,
    /// or when the child ends first, with what it printed.
    pub fn wait_for_stdout(&mut self, needle: &str, secs: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.stdout_so_far().contains(needle) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // What it wrote before it ended may still be on its way through the pipe.
                std::thread::sleep(Duration::from_millis(200));
                if self.stdout_so_far().contains(needle) {
                    return Ok(());
                }
                return Err(format!(
                    "`{}` ended ({status}) before {needle:?} appeared on its stdout\n  {}",
                    self.what,
                    self.so_far()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{needle:?} did not appear on the stdout of `{}` within {secs} s\n  {}",
                    self.what,
                    self.so_far()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the child has ended, without waiting.
    fn try_wait(&mut self) -> Result<Option<ExitStatus>, String> {
        self.child.try_wait().map_err(|e| e.to_string())
    }

    /// Waits for the child to end (the trial's deadline bounds this) and returns its output.
    pub fn output(mut self) -> Output {
        let status = self.child.wait().expect("waiting for a child");
        self.finish(status)
    }

    /// Waits up to `secs` for the child to end; else kills it and fails with what it printed.
    pub fn output_within(mut self, secs: u64) -> Result<Output, String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(self.finish(status));
            }
            if Instant::now() > deadline {
                let msg = format!(
                    "`{}` still running after {secs} s; killed\n  {}",
                    self.what,
                    self.so_far()
                );
                self.kill();
                return Err(msg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn finish(&mut self, status: ExitStatus) -> Output {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Output {
            status,
            stdout: std::mem::take(&mut *self.out.lock().unwrap()),
            stderr: std::mem::take(&mut *self.err.lock().unwrap()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
        lock_in_flight().retain(|f| f.id != self.id);
    }
}

/// Runs `cmd` to its end, collecting its output where an overrun report can show it.
pub fn output(cmd: &mut Command) -> Output {
    Running::spawn(cmd)
        .unwrap_or_else(|e| panic!("running {e}"))
        .output()
}

/// The last `max` bytes of `s`, marked as cut when they are not all of it.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return format!("{s:?}");
    }
    let mut cut = s.len() - max;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("...{:?}", &s[cut..])
}

/// The commands in flight, with their output so far.
pub fn in_flight_report() -> String {
    let list = lock_in_flight();
    if list.is_empty() {
        return "no brig command in flight\n".into();
    }
    let mut s = String::new();
    for f in list.iter() {
        s += &format!(
            "waiting for `{}` (pid {}, running {} s)\n  stdout so far: {}\n  stderr so far: {}\n",
            f.what,
            f.pid,
            f.since.elapsed().as_secs(),
            tail(&text(&f.out), 2000),
            tail(&text(&f.err), 2000),
        );
    }
    s
}

/// `/proc/PID/stat` as (state, ppid), from after the command name (which may hold spaces).
fn stat(path: &str) -> Option<(String, u32)> {
    let s = fs::read_to_string(path).ok()?;
    let mut rest = s[s.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.to_string();
    Some((state, rest.next()?.parse().ok()?))
}

/// The processes this test started (marked, or below this process), not this one.
pub fn ours() -> Vec<u32> {
    let me = std::process::id();
    let marker = format!("{OWNER_VAR}={me}");
    let mut parent = HashMap::new();
    let mut marked = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((_, ppid)) = stat(&format!("/proc/{pid}/stat")) {
            parent.insert(pid, ppid);
        }
        let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            marked.push(pid);
        }
    }
    let below_me = |mut pid: u32| {
        for _ in 0..64 {
            match parent.get(&pid) {
                Some(&p) if p == me => return true,
                Some(&p) if p > 1 => pid = p,
                _ => return false,
            }
        }
        false
    };
    let mut all: Vec<u32> = parent
        .keys()
        .copied()
        .filter(|&p| p != me && (marked.contains(&p) || below_me(p)))
        .collect();
    all.sort_unstable();
    all
}

/// Each of `pids` with its threads: state, where in the kernel it waits, its syscall and
/// the top of its kernel stack (readable as root), so a hang shows where it hangs.
pub fn threads_report(pids: &[u32]) -> String {
    let mut s = String::new();
    for &pid in pids {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        let Some((state, ppid)) = stat(&format!("/proc/{pid}/stat")) else {
            continue;
        };
        s += &format!(
            "process {pid} (parent {ppid}, {state}): {}\n",
            cmdline.trim()
        );
        let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| t.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_unstable();
        for tid in tids {
            let task = format!("/proc/{pid}/task/{tid}");
            let read = |f: &str| fs::read_to_string(format!("{task}/{f}")).unwrap_or_default();
            let state = stat(&format!("{task}/stat"))
                .map(|s| s.0)
                .unwrap_or_default();
            let syscall = read("syscall");
            let stack: Vec<String> = read("stack")
                .lines()
                .take(4)
                .filter_map(|l| l.split_whitespace().nth(1))
                .map(|f| f.split('+').next().unwrap_or(f).to_string())
                .collect();
            s += &format!(
                "  thread {tid} {:<16} {state} wchan={} syscall={} kstack={}\n",
                read("comm").trim(),
                read("wchan").trim(),
                syscall.split_whitespace().next().unwrap_or("?"),
                if stack.is_empty() {
                    "?".into()
                } else {
                    stack.join("<")
                },
            );
        }
    }
    if s.is_empty() {
        s = "no process of this test is left\n".into();
    }
    s
}

/// Sends SIGKILL to every process this test started (see [`ours`]).
pub fn kill_ours() {
    for pid in ours() {
        // SAFETY: kill(2) on a pid read from /proc; it may be gone already (ESRCH).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// What an overrun report says: commands in flight, then every thread of every process.
pub fn overrun_report() -> String {
    format!("{}{}", in_flight_report(), threads_report(&ours()))
}
