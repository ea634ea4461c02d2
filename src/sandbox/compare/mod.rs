//! `brig compare`: one probe program (`brig-probe`, built from `guest/` and embedded here),
//! run on the host (the baseline of every verdict), in a container of an image under another
//! runtime (runc by default) and in a brig sandbox of the same image; for each probe, what
//! each side saw and whether the host's own resource was reachable from it.
//!
//! The probe gets into each side the same way a file of the image would: for the runtime,
//! into the bundle's copy of the image's layers; for brig, into the sandbox's scratch disk
//! (the overlay's upper layer, formatted with the probe in it), so that the workload is the
//! image's root plus one file on both sides. Each side has the network its runtime gives
//! by default: for runc and crun as root, a namespace with a NATed veth as docker's bridge
//! ([`netns`]; rootless: only `lo`); for brig, `--network bridge` with its egress policy.
//! The probe tries TCP connections to the host (a port this process listens on, at the
//! workload's gateway), to 169.254.169.254:80 and, with `--probe-target`, to the outside.
//!
//! Ctrl-C (SIGINT, SIGTERM, SIGHUP) ends the comparison after the step under way, with
//! everything made for it removed: the bundle, the namespace, the sandbox.

pub mod baseline;
pub mod facts;
pub mod hap;
pub mod netns;
pub mod render;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baseline::{Baseline, SideRun};
use facts::{Answer, Facts};
use hap::{Hap, Profiler};

use super::lifecycle::{self, CreateOptions, LifecycleError};
use super::logs::{self, Stream};
use super::network::{NetworkFlags, NetworkOptions};
use super::resources::{ResourceFlags, Resources};
use super::runtime;
use super::scratch;
use super::security::{cache::FilterCache, SecurityFlags};
use super::signals::SignalPipe;
use super::spec::RunOptions;
use crate::image::{ImageRecord, Store};

/// The probe, built from `guest/src/probe/` by build.rs.
pub static PROBE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/brig-probe"));

/// Where the probe lies in the workload's root on both sides.
pub const PROBE_PATH: &str = "/.brig-probe";

/// Each side's run may take this long.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// The comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// The baseline runtime is not installed.
    #[error(
        "{0} is not installed (the baseline runtime of brig compare; --runtime picks another)"
    )]
    NoRuntime(&'static str),
    /// This brig was built without the probe (`BRIG_GUEST_INIT` without `BRIG_GUEST_PROBE`).
    #[error("this brig was built without its probe (build with BRIG_GUEST_PROBE or without BRIG_GUEST_INIT)")]
    NoProbe,
    /// The baseline runtime failed.
    #[error("baseline runtime: {0}")]
    Baseline(String),
    /// The probe gave no answer on one side.
    #[error("the probe gave no answer under {0}: {1}")]
    NoAnswer(String, String),
    /// A file of the comparison.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// Unpacking the image for the baseline.
    #[error("unpacking the image: {0}")]
    Unpack(#[from] crate::image::rootfs::RootfsError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Scratch(#[from] scratch::ScratchError),
    /// brig's own flags for the sandbox (never the user's).
    #[error("sandbox options: {0}")]
    Options(String),
    /// Ctrl-C or another ending signal: everything made for the comparison is gone.
    #[error("interrupted by signal {0}; nothing left behind")]
    Interrupted(i32),
}

/// The metadata service every cloud has at this address.
pub const METADATA: &str = "169.254.169.254:80";

/// What to compare.
pub struct CompareOptions<'a> {
    /// The image as the user named it, and the store's record of it.
    pub image: String,
    pub record: &'a ImageRecord,
    pub store: &'a Store,
    pub kernel: PathBuf,
    pub baseline: Baseline,
    /// `--probe-target`: the "outside" the probe tries to reach; `None`: not probed.
    pub probe_target: Option<std::net::SocketAddrV4>,
    /// `--hap`: measure the horizontal attack profile (ftrace slows the host meanwhile).
    pub hap: bool,
}

/// One side of the comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Side {
    pub runtime: String,
    /// Milliseconds from the runtime's start to the probe's start.
    pub start_ms: f64,
    /// Peak host memory of the sandbox (runc: its cgroup's memory.peak; brig: the VMM
    /// process's peak resident set), when measured.
    pub memory_bytes: Option<u64>,
    /// The network the side had.
    pub network: String,
    /// Bottomley's horizontal attack profile of the run.
    pub hap: Hap,
    /// Probe key → verdict.
    pub probes: BTreeMap<String, Answer>,
    /// The probe's raw facts.
    pub facts: Facts,
}

/// The comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub image: String,
    /// The host's own facts (the probe run on the host).
    pub host: Facts,
    /// The baseline first, then brig.
    pub sides: Vec<Side>,
}

/// A directory removed on drop.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CompareError + '_ {
    move |e| CompareError::Io(path.to_path_buf(), e)
}

fn write_probe(path: &Path) -> Result<(), CompareError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(PROBE).map_err(io(path))?;
    drop(f);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io(path))
}

fn side(name: &str, network: String, run: SideRun, host: &Facts) -> Result<Side, CompareError> {
    let facts = facts::parse(&run.stdout);
    if !facts.contains_key("probe.elapsed_us") {
        return Err(CompareError::NoAnswer(
            name.into(),
            run.stdout.lines().last().unwrap_or("no output").into(),
        ));
    }
    Ok(Side {
        runtime: name.into(),
        start_ms: run.start_ms,
        memory_bytes: run.memory_bytes,
        network,
        hap: run.hap,
        probes: facts::judge(&facts, host),
        facts,
    })
}

/// Fails with `Interrupted` once an ending signal came.
fn interrupted(signals: &Option<SignalPipe>) -> Result<(), CompareError> {
    match signals.as_ref().and_then(|p| p.drain().first().copied()) {
        Some(sig) => Err(CompareError::Interrupted(sig)),
        None => Ok(()),
    }
}

/// Runs the probe on the host, under the baseline and under brig; the report.
pub fn compare(opts: CompareOptions<'_>) -> Result<Report, CompareError> {
    if PROBE.is_empty() {
        return Err(CompareError::NoProbe);
    }
    baseline::check(opts.baseline)?;
    // From here an ending signal is noted, and acted on between steps, so that the drops
    // below remove what was made.
    let signals = SignalPipe::install(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]).ok();
    let result = compare_steps(&opts, &signals);
    interrupted(&signals)?;
    result
}

fn compare_steps(
    opts: &CompareOptions<'_>,
    signals: &Option<SignalPipe>,
) -> Result<Report, CompareError> {
    // On the runtime directory's file system (tmpfs as root): runc wants a local rootfs.
    let base = runtime::base_dir();
    std::fs::create_dir_all(&base).map_err(io(&base))?;
    let work = WorkDir(base.join(format!("compare-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&work.0);
    std::fs::create_dir(&work.0).map_err(io(&work.0))?;

    let host_probe = work.0.join("brig-probe");
    write_probe(&host_probe)?;
    let out = std::process::Command::new(&host_probe)
        .output()
        .map_err(io(&host_probe))?;
    let host = facts::parse(&String::from_utf8_lossy(&out.stdout));

    // A host service for the workload to reach: listening on every address, never answered
    // (the kernel completes the handshake).
    let listener = std::net::TcpListener::bind("0.0.0.0:0").map_err(io(Path::new("0.0.0.0:0")))?;
    let port = listener
        .local_addr()
        .map_err(io(Path::new("0.0.0.0:0")))?
        .port();
    let mut argv = vec![
        PROBE_PATH.to_string(),
        "--connect".into(),
        format!("host=gw:{port}"),
        "--connect".into(),
        format!("metadata={METADATA}"),
    ];
    if let Some(t) = opts.probe_target {
        argv.extend(["--connect".into(), format!("outside={t}")]);
    }
    let profiler = if opts.hap {
        Profiler::open()
    } else {
        Err("not measured (--hap measures it)".to_string())
    };
    let profiler = profiler.as_ref().map_err(String::as_str);
    interrupted(signals)?;

    let bundle = work.0.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(io(&rootfs))?;
    let layers: Vec<_> = opts
        .record
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .collect();
    crate::image::rootfs::unpack_tree(opts.store, &layers, &rootfs)?;
    write_probe(&rootfs.join(&PROBE_PATH[1..]))?;
    interrupted(signals)?;
    let (ns, base_net) = match opts.baseline {
        Baseline::Podman => (None, "podman's default".to_string()),
        _ => match netns::Netns::create() {
            Ok(ns) => {
                let d = ns.describe.clone();
                (Some(ns), d)
            }
            Err(why) => (None, format!("only lo ({why})")),
        },
    };
    interrupted(signals)?;
    let base_run = baseline::run(
        opts.baseline,
        &bundle,
        &argv,
        ns.as_ref().map(|n| n.path.as_str()),
        profiler,
    );
    drop(ns);
    interrupted(signals)?;
    let base_side = side(opts.baseline.name(), base_net, base_run?, &host)?;

    let seed = work.0.join("seed");
    write_probe(&seed.join("upper").join(&PROBE_PATH[1..]))?;
    std::fs::create_dir_all(seed.join("work")).map_err(io(&seed))?;
    let (brig_run, brig_net) = run_brig(opts, &seed, &argv[1..], profiler)?;
    drop(listener);
    interrupted(signals)?;
    let brig_side = side("brig", brig_net, brig_run, &host)?;
    Ok(Report {
        image: opts.image.clone(),
        host,
        sides: vec![base_side, brig_side],
    })
}

/// The VMM's peak resident set so far (VmHWM), in bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The probe (with `args`) in a brig sandbox of the image (docker's confinement, the
/// default network), with brig as the VMM process: its peak resident set, reset first, is
/// the sandbox's memory. The run, and the network it had.
fn run_brig(
    opts: &CompareOptions<'_>,
    seed: &Path,
    args: &[String],
    profiler: Result<&Profiler, &str>,
) -> Result<(SideRun, String), CompareError> {
    let options = |e: String| CompareError::Options(e);
    let security = SecurityFlags::default();
    let run = RunOptions {
        entrypoint: Some(PROBE_PATH.into()),
        command: args.to_vec(),
        security: Some(
            security
                .resolve()
                .and_then(|c| c.spec(&FilterCache::at(opts.store.home())))
                .map_err(|e| options(e.to_string()))?,
        ),
        ..RunOptions::default()
    };
    let network =
        NetworkOptions::parse(&NetworkFlags::default()).map_err(|e| options(e.to_string()))?;
    let net = if rustix::process::geteuid().is_root() {
        "TAP+NAT, egress policy"
    } else {
        "passt, egress policy"
    };
    let resources =
        Resources::from_flags(&ResourceFlags::default()).map_err(|e| options(e.to_string()))?;
    let created = lifecycle::create(
        opts.store.home(),
        CreateOptions {
            volumes: Vec::new(),
            image: opts.image.clone(),
            record: opts.record,
            run,
            kernel: opts.kernel.clone(),
            resources,
            read_only: false,
            name: None,
            auto_remove: false,
            detached: false,
            network,
            security,
        },
    )?;
    let sandbox = created.sandbox.clone();
    let result = (|| {
        scratch::create_seeded(
            &sandbox.dir.join("scratch.ext4"),
            scratch::DEFAULT_SIZE,
            seed,
        )?;
        // Writing 5 to clear_refs resets the peak resident set (proc(5)).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        // From here, as from `runc run` on the other side (the bundle, like the sandbox's
        // files and disks, is made before).
        let t0 = Instant::now();
        let (ended, hap) = baseline::profiled(profiler, || created.run_quiet(Some(RUN_TIMEOUT)));
        let ended = ended?;
        let memory_bytes = ended.peak_rss.or_else(peak_rss);
        let records = logs::read_all(&sandbox.log_path()).map_err(io(&sandbox.log_path()))?;
        let stdout: Vec<u8> = records
            .iter()
            .filter(|r| r.stream == Stream::Stdout)
            .flat_map(|r| r.data.iter().copied())
            .collect();
        let start_ms = ended
            .started
            .map_or(0.0, |s| (s - t0).as_secs_f64() * 1000.0);
        Ok(SideRun {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            start_ms,
            memory_bytes,
            hap,
        })
    })();
    let result = result.map(|r| (r, net.to_string()));
    let _ = sandbox.remove();
    result
}
