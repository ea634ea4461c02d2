//! `brig run`: run an OCI image in its own microVM, with docker's flags and exit codes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use brig_protocol::RootfsSpec;
use clap::{ArgAction, Args, ValueEnum};

use crate::cli::{CliError, Context};
use crate::devices::serial::ConsoleLog;
use crate::image::{self, PullOptions};
use crate::initramfs::Initramfs;
use crate::sandbox::agent::SessionEnd;
use crate::sandbox::launch::{launch, Launch};
use crate::sandbox::runtime::{new_id, RuntimeDir};
use crate::sandbox::spec::{compose, parse_bytes, RunOptions};
use crate::sandbox::{scratch, state};
use crate::vmm::{DiskConfig, VmConfig};

/// Exit code of `--timeout` (as coreutils' timeout).
pub const EXIT_TIMEOUT: i32 = 124;
/// Guest RAM beyond the workload's `-m`: kernel, agent and page cache headroom.
pub const GUEST_OVERHEAD_MIB: u64 = 64;
/// Guest RAM without `-m`.
pub const DEFAULT_MEM_MIB: u64 = 1024;
/// Docker's smallest `-m`.
pub const MIN_MEMORY: u64 = 6 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    Missing,
    Always,
    Never,
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// Keep stdin open and forward it to the workload.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Remove the sandbox's state when it ends (the default for foreground runs).
    #[arg(long)]
    rm: bool,
    /// Override the image's Entrypoint ("" clears it).
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to copy the host's).
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the sandbox.
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// User (name or uid, optionally :group or :gid).
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Additional groups to join.
    #[arg(long = "group-add", value_name = "GROUP")]
    group_add: Vec<String>,
    /// Host name of the sandbox (default: its id).
    #[arg(short = 'h', long, value_name = "NAME")]
    hostname: Option<String>,
    /// Memory limit (e.g. 512m, 2g): the workload's cgroup limit; guest RAM gets 64 MiB more.
    #[arg(short = 'm', long, value_name = "BYTES")]
    memory: Option<String>,
    /// Number of CPUs (vCPUs; fractions round up).
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// Limit on the number of processes (-1: unlimited).
    #[arg(long = "pids-limit", value_name = "N", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// Mount the root file system read-only (no overlay).
    #[arg(long = "read-only")]
    read_only: bool,
    /// Resource limit (name=soft[:hard]), e.g. nofile=1024:2048.
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    ulimit: Vec<String>,
    /// Kill the sandbox and exit 124 after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Guest kernel to boot (default: the one kernels/build.sh built).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Platform of the image to pull (os/arch[/variant]).
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    /// When to pull the image.
    #[arg(long, value_enum, default_value = "missing")]
    pull: PullPolicy,
    /// Registry that may be spoken to over plain HTTP.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
    /// Suppress pull progress.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Print the boot phases and their times on stderr.
    #[arg(long)]
    timings: bool,
    /// Copy the guest console (kernel messages) to stderr.
    #[arg(long)]
    console: bool,
    /// The image.
    #[arg(value_name = "IMAGE")]
    image: String,
    /// Command and arguments (default: the image's Entrypoint and Cmd).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

fn resolve_image(args: &RunArgs, store: &image::Store) -> Result<image::ImageRecord, CliError> {
    let mut opts = PullOptions::default();
    if let Some(p) = &args.platform {
        opts.platform =
            Some(image::Platform::parse(p).map_err(|e| CliError::new(format!("--platform: {e}")))?);
    }
    opts.insecure_registries
        .extend(args.insecure_registry.iter().cloned());
    let progress = image::Progress::new(args.quiet);
    match args.pull {
        PullPolicy::Never => store
            .resolve_local(&args.image, &opts)
            .map_err(|e| CliError::new(e.to_string()))?
            .ok_or_else(|| {
                CliError::new(format!(
                    "image {} is not present locally (--pull never)",
                    args.image
                ))
            }),
        PullPolicy::Always => store
            .pull_record(&args.image, &opts, &progress)
            .map_err(|e| CliError::new(e.to_string())),
        PullPolicy::Missing => store
            .resolve_or_pull(&args.image, &opts, &progress)
            .map_err(|e| CliError::new(e.to_string())),
    }
}

pub fn run(args: RunArgs) -> Result<i32, CliError> {
    let t0 = Instant::now();
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => crate::cli::default_kernel()?,
    };
    let memory_limit = match &args.memory {
        Some(m) => {
            let bytes = parse_bytes(m).map_err(|e| CliError::new(format!("--memory: {e}")))?;
            if bytes < MIN_MEMORY {
                return Err(CliError::new(format!(
                    "--memory {m} is below the minimum of 6 MiB"
                )));
            }
            bytes
        }
        None => 0,
    };
    let mem_mib = if memory_limit > 0 {
        memory_limit.div_ceil(1 << 20) + GUEST_OVERHEAD_MIB
    } else {
        DEFAULT_MEM_MIB
    };
    let cpus = match args.cpus {
        None => 1,
        Some(c) if c > 0.0 && c <= 255.0 => c.ceil() as u8,
        Some(c) => return Err(CliError::new(format!("--cpus {c} is out of range"))),
    };
    if args.tty && args.interactive && !crate::sandbox::tty::is_tty(libc::STDIN_FILENO) {
        return Err(CliError::new(
            "the input device is not a TTY (drop -t, or run from a terminal)",
        ));
    }
    let mut env_files = Vec::new();
    for f in &args.env_file {
        let text = std::fs::read_to_string(f).context(format!("--env-file {}", f.display()))?;
        env_files.push((f.clone(), text));
    }

    let store = image::Store::open_default().map_err(|e| CliError::new(e.to_string()))?;
    state::sweep_stale(store.home());
    let record = resolve_image(&args, &store)?;

    let id = new_id();
    let opts = RunOptions {
        entrypoint: args.entrypoint.clone(),
        env: args.env.clone(),
        env_files,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        group_add: args.group_add.clone(),
        hostname: args.hostname.clone(),
        command: args.command.clone(),
        tty: args.tty,
        interactive: args.interactive,
        ulimits: args.ulimit.clone(),
        memory_limit,
        pids_limit: args.pids_limit.filter(|p| *p > 0).map_or(0, |p| p as u64),
    };
    let host_env = |k: &str| std::env::var(k).ok();
    let mut run = compose(&record.config, &opts, &id, &host_env).map_err(CliError::new)?;

    // The runtime directory (and its lock) first: it is what marks the sandbox alive.
    let runtime = RuntimeDir::create(&id).context("runtime directory")?;
    let sandbox = state::SandboxDir::create(store.home(), &id).context("sandbox state")?;
    let mut disks = vec![DiskConfig {
        path: record.rootfs_path.clone(),
        read_only: true,
        serial: "brig-rootfs".into(),
    }];
    if !args.read_only {
        let scratch_path = sandbox.scratch_path();
        scratch::create(
            &store.home().join("cache"),
            &scratch_path,
            scratch::DEFAULT_SIZE,
        )
        .map_err(|e| CliError::new(e.to_string()))?;
        disks.push(DiskConfig {
            path: scratch_path,
            read_only: false,
            serial: "brig-scratch".into(),
        });
    }
    run.rootfs = Some(RootfsSpec {
        device: "/dev/vda".into(),
        fstype: "erofs".into(),
        scratch: if args.read_only {
            String::new()
        } else {
            "/dev/vdb".into()
        },
        read_only: args.read_only,
    });
    let initrd = Initramfs::with_init().to_bytes().context("initramfs")?;
    let console = if args.console {
        ConsoleLog::with_echo(Box::new(std::io::stderr()))
    } else {
        ConsoleLog::default()
    };
    let spec = Launch {
        vm: VmConfig {
            kernel,
            initrd,
            cmdline_extra: String::new(),
            mem_mib,
            cpus,
            console,
            disks,
            vsock: None,
        },
        run,
        stdin: args.interactive,
        timeout: args.timeout.map(|t| Duration::from_secs_f64(t.max(0.0))),
    };
    let outcome = launch(spec, &runtime).map_err(|e| CliError::new(e.to_string()))?;
    drop(sandbox);
    drop(runtime);
    if args.timings {
        outcome.print_timings(t0);
    }
    match outcome.end {
        SessionEnd::Exited(status) => Ok(status.shell_code()),
        SessionEnd::ExecFailed { kind, message } => Err(crate::cli::exec_error(kind, message)),
        SessionEnd::TimedOut => Err(CliError::with_code(
            format!(
                "the sandbox did not finish within --timeout {}s and was killed",
                args.timeout.unwrap_or_default()
            ),
            EXIT_TIMEOUT,
        )),
        SessionEnd::VmEnded => Err(crate::cli::vm_died(&outcome.console, &outcome.reason)),
        SessionEnd::Broken(msg) => Err(CliError::new(msg)),
    }
}
