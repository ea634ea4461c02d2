//! `brig-runc` (the brig binary under that name, or `brig oci ...`): an OCI runtime command
//! line in runc's dialect, for containerd's runc shim, conmon (podman) and dockerd. Errors
//! are one line on stderr and, with `--log`, a `"level":"error"` line there (where
//! containerd's shim reads them), and exit 1, as runc's.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::sandbox::oci::{self, OciError};

/// An OCI runtime that runs each container in a brig microVM.
#[derive(Debug, Parser)]
#[command(name = "brig-runc", disable_version_flag = true)]
pub struct OciCli {
    /// Where containers' state lives.
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Where errors are logged (as well as stderr).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// `text` or `json`.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    /// Accepted; brig does not manage cgroups through systemd.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Accepted.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted (`spec --rootless` too).
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    rootless: Option<String>,
    /// Accepted.
    #[arg(long, global = true)]
    criu: Option<String>,
    /// Print the version.
    #[arg(short = 'v', long)]
    version: bool,
    #[command(subcommand)]
    command: Option<OciCommand>,
}

/// `create`'s and `run`'s arguments (runc's; `--no-pivot`, `--no-new-keyring` and
/// `--preserve-fds` are accepted and mean nothing for a VM).
#[derive(Debug, clap::Args)]
struct CreateArgs {
    #[arg(short = 'b', long, default_value = ".")]
    bundle: PathBuf,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    #[arg(long)]
    no_pivot: bool,
    #[arg(long)]
    no_new_keyring: bool,
    #[arg(long)]
    preserve_fds: Option<u32>,
    /// `run` only: return once the container runs (create, then start).
    #[arg(short = 'd', long)]
    detach: bool,
    /// `run` only: runc keeps the stopped container's state; brig's goes with `delete`.
    #[arg(long, hide = true)]
    keep: bool,
    #[arg(long, hide = true)]
    no_subreaper: bool,
    id: String,
}

impl CreateArgs {
    /// The request; `detaching`: `create` (the caller goes on) rather than `run`.
    fn request(self, root: PathBuf, detaching: bool) -> Result<oci::CreateRequest, OciError> {
        let pid_file = self
            .pid_file
            .map(|p| std::path::absolute(p).map_err(OciError::io("--pid-file")))
            .transpose()?;
        Ok(oci::CreateRequest {
            root,
            id: self.id,
            bundle: self.bundle,
            pid_file,
            console_socket: self.console_socket,
            detaching,
        })
    }
}

#[derive(Debug, Subcommand)]
enum OciCommand {
    /// Create a container from a bundle; its process waits for `start`.
    Create(CreateArgs),
    /// Create, start and wait for a container, then delete it; exits with its status.
    Run(CreateArgs),
    /// Run a created container's process.
    Start { id: String },
    /// Run one more process in a running container.
    Exec {
        /// The process as runtime-spec JSON (else the command after the id).
        #[arg(short = 'p', long)]
        process: Option<PathBuf>,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[arg(short = 'd', long)]
        detach: bool,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(short = 't', long)]
        tty: bool,
        /// Without --process: the working directory, added environment, user
        /// (`UID[:GID]`) and additional groups of the command.
        #[arg(long)]
        cwd: Option<String>,
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        #[arg(short = 'u', long)]
        user: Option<String>,
        #[arg(short = 'g', long = "additional-gids")]
        additional_gids: Vec<u32>,
        /// Accepted as runc does; a VM's exec has no host label, cgroup or fds to take.
        #[arg(long = "cap", hide = true)]
        caps: Vec<String>,
        #[arg(long, hide = true)]
        no_new_privs: bool,
        #[arg(long, hide = true)]
        preserve_fds: Option<u32>,
        #[arg(long, hide = true)]
        process_label: Option<String>,
        #[arg(long, hide = true)]
        apparmor: Option<String>,
        #[arg(long, hide = true)]
        cgroup: Option<String>,
        #[arg(long, hide = true)]
        ignore_paused: bool,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List a container's host processes.
    Ps {
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        id: String,
    },
    /// Print a container's state as JSON.
    State { id: String },
    /// Pause a running container (its VM's vCPUs and devices stop; memory stays).
    Pause { id: String },
    /// Resume a paused container.
    Resume { id: String },
    /// Send a signal (default SIGTERM) to a container.
    Kill {
        #[arg(short = 'a', long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Change a container's limits: memory, swap and pids (CPU, blkio and cpuset values
    /// are accepted and left alone: a VM's vCPUs are fixed when it is created).
    Update {
        /// runtime-spec `LinuxResources` JSON from this file, or `-` for stdin.
        #[arg(short = 'r', long)]
        resources: Option<String>,
        #[arg(long)]
        memory: Option<String>,
        #[arg(long)]
        memory_swap: Option<String>,
        #[arg(long)]
        pids_limit: Option<i64>,
        #[arg(long, hide = true)]
        memory_reservation: Option<String>,
        #[arg(long, hide = true)]
        kernel_memory: Option<String>,
        #[arg(long, hide = true)]
        cpu_period: Option<String>,
        #[arg(long, hide = true)]
        cpu_quota: Option<String>,
        #[arg(long, hide = true)]
        cpu_share: Option<String>,
        #[arg(long, hide = true)]
        cpuset_cpus: Option<String>,
        #[arg(long, hide = true)]
        cpuset_mems: Option<String>,
        #[arg(long, hide = true)]
        blkio_weight: Option<String>,
        id: String,
    },
    /// Remove a container.
    Delete {
        #[arg(short = 'f', long)]
        force: bool,
        id: String,
    },
    /// List containers.
    List {
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Print what this runtime supports, as JSON.
    Features,
    /// Write a minimal config.json.
    Spec {
        #[arg(short = 'b', long, default_value = ".")]
        bundle: PathBuf,
    },
    /// A detached exec's proxy (started by `exec --detach`).
    #[command(name = "__exec", hide = true)]
    ExecProxy {
        sandbox: String,
        #[arg(long)]
        process_json: String,
    },
    /// A container's VMM process (started by `create`).
    #[command(name = "__supervise", hide = true)]
    Supervise {
        sandbox: String,
        #[arg(long)]
        start_fifo: PathBuf,
        #[arg(long)]
        ready_fd: i32,
    },
    /// A pod sandbox's placeholder (started by `create`).
    #[command(name = "__pod-sandbox", hide = true)]
    PodSandbox {
        #[arg(long)]
        start_fifo: PathBuf,
        #[arg(long)]
        ready_fd: i32,
    },
}

/// Whether this invocation is the OCI runtime: `argv[0]` `brig-runc`, or `brig oci ...`.
pub fn is_oci(args: &[OsString]) -> bool {
    let name = args.first().map(Path::new).and_then(Path::file_name);
    name.is_some_and(|n| n == "brig-runc") || args.get(1).is_some_and(|a| a == "oci")
}

/// Runs the OCI command line `args` (argv as given); returns the exit code.
pub fn main(mut args: Vec<OsString>) -> i32 {
    if args.get(1).is_some_and(|a| a == "oci") {
        args.remove(1);
    }
    let cli = match OciCli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    let log = cli.log.clone();
    let json = cli.log_format == "json";
    // exec's own failures are 255 (as runc's): 1 may be the command's status.
    let failed = if matches!(cli.command, Some(OciCommand::Exec { .. })) {
        255
    } else {
        1
    };
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = e.to_string();
            eprintln!("brig-runc: {msg}");
            if let Some(path) = log {
                log_error(&path, json, &msg);
            }
            failed
        }
    }
}

/// Appends `msg` to the log as runc writes it (logrus text or JSON).
fn log_error(path: &Path, json: bool, msg: &str) {
    let time = crate::sandbox::state::now_rfc3339();
    let line = if json {
        serde_json::json!({"level": "error", "msg": msg, "time": time}).to_string()
    } else {
        format!("time={time:?} level=error msg={msg:?}")
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn dispatch(cli: OciCli) -> Result<i32, OciError> {
    let root = match &cli.root {
        Some(r) => std::path::absolute(r).map_err(OciError::io("--root"))?,
        None => oci::default_root(),
    };
    let Some(command) = cli.command else {
        if cli.version {
            print_version();
            return Ok(0);
        }
        let _ = <OciCli as clap::CommandFactory>::command().print_help();
        return Ok(0);
    };
    match command {
        OciCommand::Create(args) => {
            oci::create(&args.request(root, true)?)?;
        }
        OciCommand::Run(args) if args.detach => {
            let req = args.request(root, true)?;
            oci::create(&req)?;
            if let Err(e) = oci::start(&req.root, &req.id) {
                let _ = oci::delete(&req.root, &req.id, true);
                return Err(e);
            }
        }
        OciCommand::Run(args) => return oci::run(&args.request(root, false)?),
        OciCommand::Start { id } => oci::start(&root, &id)?,
        OciCommand::State { id } => {
            let state = oci::Container::open(&root, &id)?.load()?;
            print_json(&state.to_json());
        }
        OciCommand::Kill { all, id, signal } => {
            oci::kill(&root, &id, oci::parse_signal(&signal)?, all)?
        }
        OciCommand::Delete { force, id } => oci::delete(&root, &id, force)?,
        OciCommand::Pause { id } => oci::pause(&root, &id, true)?,
        OciCommand::Resume { id } => oci::pause(&root, &id, false)?,
        OciCommand::Update {
            resources,
            memory,
            memory_swap,
            pids_limit,
            id,
            ..
        } => {
            let json = match resources.as_deref() {
                None => None,
                Some("-") => {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                        .map_err(OciError::io("reading the resources from stdin"))?;
                    Some(text)
                }
                Some(path) => Some(std::fs::read_to_string(path).map_err(OciError::io(path))?),
            };
            let flags = oci::update::Flags {
                memory,
                memory_swap,
                pids_limit,
            };
            oci::update::update(&root, &id, json.as_deref(), &flags)?
        }
        OciCommand::List { format, quiet } => list(&root, &format, quiet),
        OciCommand::Features => print_json(&oci::features_json()),
        OciCommand::Spec { bundle } => {
            let path = bundle.join("config.json");
            if path.exists() {
                return Err(OciError::Status(
                    "File config.json exists. Remove it first".into(),
                ));
            }
            let text = serde_json::to_string_pretty(&oci::default_spec()).unwrap_or_default();
            std::fs::write(&path, text).map_err(OciError::io(path.display().to_string()))?;
        }
        OciCommand::Exec {
            process,
            pid_file,
            detach,
            console_socket,
            tty,
            cwd,
            env,
            user,
            additional_gids,
            id,
            command,
            ..
        } => {
            let json = match process {
                Some(p) => {
                    std::fs::read_to_string(&p).map_err(OciError::io(p.display().to_string()))?
                }
                None => {
                    let (uid, gid) = parse_user(user.as_deref())?;
                    serde_json::json!({"args": command, "cwd": cwd.unwrap_or_else(|| "/".into()),
                        "terminal": tty, "env": env,
                        "user": {"uid": uid, "gid": gid, "additionalGids": additional_gids}})
                    .to_string()
                }
            };
            let socket = console_socket.as_deref();
            let pid_file = pid_file
                .map(|p| std::path::absolute(p).map_err(OciError::io("--pid-file")))
                .transpose()?;
            if !detach {
                return oci::exec::exec_wait(&root, &id, &json, socket, pid_file.as_deref());
            }
            oci::exec::exec_detached(&root, &id, &json, pid_file.as_deref(), socket)?;
        }
        OciCommand::Ps { format, id } => {
            let pids = oci::exec::pids(&root, &id)?;
            if format == "json" {
                println!("{}", serde_json::Value::from(pids));
            } else {
                println!("PID");
                for p in pids {
                    println!("{p}");
                }
            }
        }
        OciCommand::ExecProxy {
            sandbox,
            process_json,
        } => return oci::exec::run_proxy(&sandbox, &process_json),
        OciCommand::Supervise {
            sandbox,
            start_fifo,
            ready_fd,
        } => return Ok(oci::supervise::run(&sandbox, &start_fifo, ready_fd)),
        OciCommand::PodSandbox {
            start_fifo,
            ready_fd,
        } => return Ok(oci::pod::run(&start_fifo, ready_fd)),
    }
    Ok(0)
}

/// runc's `exec --user UID[:GID]` (numeric; 0:0 when absent).
fn parse_user(user: Option<&str>) -> Result<(u32, u32), OciError> {
    let Some(user) = user else { return Ok((0, 0)) };
    let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
    match (uid.parse(), gid.parse()) {
        (Ok(u), Ok(g)) => Ok((u, g)),
        _ => Err(OciError::Bundle(format!(
            "--user {user:?}: expected numeric UID[:GID]"
        ))),
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn print_version() {
    println!("brig-runc version {}", env!("CARGO_PKG_VERSION"));
    println!("spec: {}", oci::container::OCI_VERSION);
}

fn list(root: &Path, format: &str, quiet: bool) {
    let all = oci::list(root);
    if format == "json" {
        let v: Vec<_> = all.iter().map(|s| s.to_json()).collect();
        println!("{}", serde_json::Value::from(v));
        return;
    }
    if quiet {
        for s in &all {
            println!("{}", s.id);
        }
        return;
    }
    println!("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER");
    for s in &all {
        let j = s.to_json();
        println!(
            "{}\t{}\t{}\t{}\t{}\t",
            s.id,
            j["pid"],
            j["status"].as_str().unwrap_or(""),
            s.bundle.display(),
            s.created
        );
    }
}
