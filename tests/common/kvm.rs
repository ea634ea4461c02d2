//! Harness for tests that need KVM (`harness = false` test targets).
//!
//! A test binary that needs KVM calls [`run_tests`]. Where this host's `/dev/kvm` can run
//! guests (hardware KVM), the tests run here. Where it cannot (missing, or PVM, as on the
//! development machines), the binary re-runs itself under `scripts/with-kvm`, which provides
//! a real `/dev/kvm` inside a nested VM. `BRIG_TEST_KVM=host|nested|auto` forces a choice.
//! Nothing is skipped: if KVM cannot be had either way, the tests fail and say why.
//!
//! Nothing may hang until CI gives up: each trial runs under a deadline ([`Limits::trial`],
//! `BRIG_TEST_TRIAL_TIMEOUT`), past which it fails with what it was waiting for (the brig
//! command, its output so far, the state of every thread of every process the test started)
//! and those processes are killed; the next trial then runs. The whole binary runs under
//! [`Limits::all`] (`BRIG_TEST_TIMEOUT`), past which it reports the same and exits, and under
//! scripts/with-kvm, `BRIG_WITH_KVM_TIMEOUT` (a little more) ends the nested VM itself if
//! even that cannot happen. Should the nested VM stop running altogether (QEMU's TCG can
//! livelock under load), with-kvm notices within `BRIG_WITH_KVM_STALL` and runs the binary
//! again, from the start, in a fresh VM (`BRIG_WITH_KVM_RETRIES`, up to three times by default). The
//! trials tolerate that: what they write lives in the VM's own /run (a fresh tmpfs) or in
//! temporary directories of unique names; `prepare` ran on this host, before, and is not rerun.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

use super::procs;

/// How long the trials of a test binary may take, each and all together. Under nested TCG
/// (the slow case) a trial takes seconds to a couple of minutes.
#[derive(Clone, Copy)]
pub struct Limits {
    /// Default per trial; `BRIG_TEST_TRIAL_TIMEOUT=SECS` overrides it.
    pub trial: Duration,
    /// All trials together; `BRIG_TEST_TIMEOUT=SECS` overrides it.
    pub all: Duration,
}

impl Limits {
    /// `trial` and `all` in seconds.
    pub const fn secs(trial: u64, all: u64) -> Self {
        Self {
            trial: Duration::from_secs(trial),
            all: Duration::from_secs(all),
        }
    }

    /// With the environment's overrides.
    fn with_env_overrides(self) -> Self {
        let secs = |var: &str, default: Duration| match std::env::var(var) {
            Ok(v) => Duration::from_secs(
                v.parse()
                    .unwrap_or_else(|_| panic!("{var} must be a number of seconds, not {v:?}")),
            ),
            Err(_) => default,
        };
        Self {
            trial: secs("BRIG_TEST_TRIAL_TIMEOUT", self.trial),
            all: secs("BRIG_TEST_TIMEOUT", self.all),
        }
    }
}

/// The per-trial deadline in force (set by [`run_tests`]).
static TRIAL_LIMIT: OnceLock<Duration> = OnceLock::new();

/// The repository root (where scripts/ lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True when this host's /dev/kvm is hardware KVM we can open.
fn host_kvm_usable() -> bool {
    !Path::new("/sys/module/kvm_pvm").exists()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// Runs `tests` within `limits`, under scripts/with-kvm when this host needs it.
pub fn run_tests(limits: Limits, tests: Vec<Trial>) -> ! {
    run_tests_with(limits, || {}, || {}, tests)
}

/// As [`run_tests`], with `prepare` run on this host first (not inside the nested VM): for
/// fixtures that are slow or need the network, such as debootstrap; and `setup` run where
/// the trials run, before them, so that what they all share (importing the test images)
/// counts against the overall limit, not the deadline of whichever trial comes first.
pub fn run_tests_with(limits: Limits, prepare: fn(), setup: fn(), tests: Vec<Trial>) -> ! {
    let limits = limits.with_env_overrides();
    let args = Arguments::from_args();
    let mode = std::env::var("BRIG_TEST_KVM").unwrap_or_else(|_| "auto".into());
    let inside = std::env::var_os("BRIG_KVM_MODE").is_some();
    let reexec = !inside
        && !args.list
        && match mode.as_str() {
            "host" => false,
            "nested" => true,
            _ => !host_kvm_usable(),
        };
    if !inside && !args.list {
        prepare();
    }
    if reexec {
        let exe = std::env::current_exe().expect("current_exe");
        let mut with_kvm = Command::new(repo_root().join("scripts/with-kvm"));
        if std::env::var_os("BRIG_WITH_KVM_TIMEOUT").is_none() {
            // The nested VM's own deadline, for when this binary cannot keep its (a hung L1):
            // past `all`, plus time to boot L1 and for the report.
            let secs = limits.all.as_secs() + 120;
            with_kvm.env("BRIG_WITH_KVM_TIMEOUT", secs.to_string());
        }
        let status = with_kvm
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .status()
            .unwrap_or_else(|e| panic!("running scripts/with-kvm: {e}"));
        std::process::exit(status.code().unwrap_or(125));
    }
    let mut args = args;
    // microVMs under nested TCG are slow: one at a time unless asked otherwise.
    if inside && args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let _ = TRIAL_LIMIT.set(limits.trial);
    if !args.list {
        watch_all(limits.all);
        setup();
    }
    libtest_mimic::run(&args, tests).exit()
}

/// Past `limit`, reports what is still running, kills it and ends the binary (exit 124).
fn watch_all(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "\nthe trials did not all finish within {} s (BRIG_TEST_TIMEOUT); giving up.\n{}",
            limit.as_secs(),
            procs::overrun_report()
        );
        procs::kill_ours();
        std::process::exit(124);
    });
}

/// A test case as a plain function returning an error message on failure, run under the
/// binary's per-trial deadline.
pub fn trial(name: &str, f: fn() -> Result<(), String>) -> Trial {
    let owned = name.to_string();
    Trial::test(name, move || {
        let limit = *TRIAL_LIMIT.get_or_init(|| Duration::from_secs(300));
        within(&owned, limit, f).map_err(Failed::from)
    })
}

/// Runs `f` on a thread of its own; past `limit`, fails with an overrun report and kills
/// the processes the test started (which lets `f` go on, and fail, soon after).
fn within(name: &str, limit: Duration, f: fn() -> Result<(), String>) -> Result<(), String> {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| e.to_string())?;
    let panicked = |worker: std::thread::JoinHandle<()>| match worker.join() {
        Err(p) => Err(
            match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
                (Some(s), _) => format!("panicked: {s}"),
                (_, Some(s)) => format!("panicked: {s}"),
                _ => "panicked".into(),
            },
        ),
        Ok(()) => Err("ended without a result".into()),
    };
    match rx.recv_timeout(limit) {
        Ok(result) => {
            let took = started.elapsed();
            if took > limit / 2 {
                eprintln!(
                    "note: {name} took {} s, more than half its deadline of {} s",
                    took.as_secs(),
                    limit.as_secs()
                );
            }
            result
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panicked(worker),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let report = procs::overrun_report();
            procs::kill_ours();
            // Give the trial a moment to notice, so that it does not overlap the next one.
            let ended = rx.recv_timeout(Duration::from_secs(30)).is_ok();
            procs::kill_ours();
            Err(format!(
                "{name}: did not finish within its deadline of {} s (BRIG_TEST_TRIAL_TIMEOUT); \
                 killed the processes it started{}.\n{report}",
                limit.as_secs(),
                if ended {
                    format!(
                        ", after which it ended ({} s in all)",
                        started.elapsed().as_secs()
                    )
                } else {
                    "; it is still running, alongside the next trials".into()
                },
            ))
        }
    }
}

/// The brig executable the KVM tests run: `$BRIG_TEST_BIN` when set (scripts/test.sh sets
/// the release build, the one users run: under nested emulation the unoptimised VMM makes
/// every microVM start ~1.4x slower), else cargo's build of this test run.
pub fn brig_exe() -> PathBuf {
    std::env::var_os("BRIG_TEST_BIN")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_brig")), PathBuf::from)
}

/// A `brig` command, marked as this test's (see [`procs`]), stdin empty.
pub fn brig_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(brig_exe());
    c.args(args).stdin(Stdio::null());
    procs::mark(&mut c);
    c
}

/// Runs brig with `args` and returns its output.
pub fn brig(args: &[&str]) -> std::process::Output {
    procs::output(&mut brig_cmd(args))
}
