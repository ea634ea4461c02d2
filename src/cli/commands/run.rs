//! `brig run`: run an OCI image in its own microVM, with docker's flags and exit codes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use brig_protocol::RootfsSpec;
use clap::{ArgAction, Args, ValueEnum};

use crate::cli::{CliError, Context};
use crate::image::{self, PullOptions};
use crate::sandbox::runtime::{new_id, RuntimeDir};
use crate::sandbox::spec::{compose, parse_bytes, RunOptions};
use crate::sandbox::state::{DiskSpec, Sandbox, SandboxConfig};
use crate::sandbox::supervisor::{supervise, Mode};
use crate::sandbox::{scratch, state};

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
    /// Remove the sandbox's state when it ends.
    #[arg(long)]
    rm: bool,
    /// Run in the background and print the sandbox's id.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Name of the sandbox (default: a generated one).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
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
    if args.detach && args.interactive {
        // docker allows -d with -i/-t only to attach later; brig has no attach (yet).
        return Err(CliError::new(
            "-d cannot be combined with -i (brig has no attach yet); use brig exec -it",
        ));
    }
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

    // A host that cannot run the VM says so before anything is pulled.
    crate::vmm::kvm::open().map_err(|e| CliError::new(e.to_string()))?;
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
    let mut run = compose(&record.config, &opts, &id[..12], &host_env).map_err(CliError::new)?;

    // The runtime directory (and its lock) first: it is what marks the sandbox alive.
    let runtime = RuntimeDir::create(&id).context("runtime directory")?;
    let mut disks = vec![DiskSpec {
        path: record.rootfs_path.clone(),
        read_only: true,
        serial: "brig-rootfs".into(),
    }];
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
    let scratch_path = store
        .home()
        .join("sandboxes")
        .join(&id)
        .join("scratch.ext4");
    if !args.read_only {
        disks.push(DiskSpec {
            path: scratch_path.clone(),
            read_only: false,
            serial: "brig-scratch".into(),
        });
    }
    let config = SandboxConfig {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| state::generate_name(&id)),
        id: id.clone(),
        image: args.image.clone(),
        image_id: record.config_digest.to_string(),
        created: crate::cli::fmt::now_rfc3339(),
        kernel,
        mem_mib,
        cpus,
        disks,
        run,
        stop_signal: record
            .config
            .stop_signal
            .clone()
            .unwrap_or_else(|| "SIGTERM".into()),
        auto_remove: args.rm,
        detached: args.detach,
    };
    let sandbox =
        Sandbox::create(store.home(), &config).map_err(|e| CliError::new(e.to_string()))?;
    let created = (|| {
        if !args.read_only {
            scratch::create(
                &store.home().join("cache"),
                &scratch_path,
                scratch::DEFAULT_SIZE,
            )
            .map_err(|e| CliError::new(e.to_string()))?;
        }
        Ok::<(), CliError>(())
    })();
    if let Err(e) = created {
        let _ = sandbox.remove();
        return Err(e);
    }
    let timeout = args.timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
    if args.detach {
        return detach(&sandbox, runtime, timeout);
    }
    let mode = Mode::Foreground {
        stdin: args.interactive,
        console: args.console,
    };
    let ended = supervise(&sandbox, &runtime, mode, timeout, &mut |_| {});
    if args.rm {
        let _ = sandbox.remove();
    }
    drop(runtime);
    let ended = ended.map_err(|e| CliError::new(e.to_string()))?;
    if args.timings {
        ended.outcome.print_timings(t0);
    }
    match ended.error {
        None => Ok(ended.code),
        Some(msg) => Err(CliError::with_code(msg, ended.code)),
    }
}

/// `run -d`: hands the sandbox to a `brig __supervise` process of its own (with the runtime
/// lock), waits until the workload runs, prints the id.
fn detach(
    sandbox: &Sandbox,
    runtime: RuntimeDir,
    timeout: Option<Duration>,
) -> Result<i32, CliError> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| CliError::new(format!("pipe: {}", std::io::Error::from(e))))?;
    let (lock_fd, ready_fd) = (runtime.lock_fd(), write_end.as_raw_fd());
    let log =
        std::fs::File::create(sandbox.dir.join("supervisor.log")).context("supervisor log")?;
    let exe = std::env::current_exe().context("locating the brig binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "__supervise",
        &sandbox.id,
        "--lock-fd",
        &lock_fd.to_string(),
        "--ready-fd",
        &ready_fd.to_string(),
    ]);
    if let Some(t) = timeout {
        cmd.args(["--timeout", &t.as_secs_f64().to_string()]);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: in the child before exec, only system calls: a new session (no terminal, no
    // signals from ours), and the two descriptors kept open across exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            for fd in [lock_fd, ready_fd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the sandbox's VMM process")?;
    drop(write_end);
    runtime.release();
    // One line: "ok", or "err CODE MESSAGE" (the child keeps its end open while it runs).
    let mut answer = Vec::new();
    let mut pipe = std::fs::File::from(read_end);
    let mut byte = [0u8; 1];
    while answer.len() < 4096 && matches!(pipe.read(&mut byte), Ok(1)) && byte[0] != b'\n' {
        answer.push(byte[0]);
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let line = answer.as_str();
    if line == "ok" {
        println!("{}", sandbox.id);
        return Ok(0);
    }
    let _ = child;
    match line.strip_prefix("err ").and_then(|r| r.split_once(' ')) {
        Some((code, msg)) => Err(CliError::with_code(
            msg.to_string(),
            code.parse().unwrap_or(125),
        )),
        None => Err(CliError::new(format!(
            "the sandbox's VMM process ended before the workload started (see {})",
            sandbox.dir.join("supervisor.log").display()
        ))),
    }
}

/// `brig __supervise ID`: the VMM process of a detached sandbox.
pub fn supervise_detached(
    id: &str,
    lock_fd: i32,
    ready_fd: i32,
    timeout: Option<f64>,
) -> Result<i32, CliError> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: the parent handed this descriptor down for us alone.
    let mut ready = unsafe { std::fs::File::from_raw_fd(ready_fd) };
    let home = image::store::default_home().map_err(|e| CliError::new(e.to_string()))?;
    let sandbox = state::resolve(&home, id).map_err(|e| CliError::new(e.to_string()))?;
    let runtime = RuntimeDir::adopt(id, lock_fd).context("runtime directory")?;
    let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
    let mut report = |r: Result<(), (i32, String)>| {
        let line = match r {
            Ok(()) => "ok\n".to_string(),
            Err((code, msg)) => format!("err {code} {}\n", msg.replace('\n', " ")),
        };
        let _ = ready.write_all(line.as_bytes());
    };
    let ended = supervise(&sandbox, &runtime, Mode::Detached, timeout, &mut report);
    if sandbox.config().is_ok_and(|c| c.auto_remove) {
        let _ = sandbox.remove();
    }
    drop(runtime);
    ended
        .map(|e| e.code)
        .map_err(|e| CliError::new(e.to_string()))
}
