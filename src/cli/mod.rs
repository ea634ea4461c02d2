//! The command line: clap types, dispatch, and the error type every command returns.
//!
//! Each subcommand lives in its own file under `commands/`.

mod commands;
mod error;
pub mod fmt;
mod lean;

use clap::{Parser, Subcommand};

pub use error::{exit_code, one_line, EXIT_BRIG_ERROR};

/// Run OCI container images in KVM microVMs.
#[derive(Debug, Parser)]
#[command(name = "brig", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command in a new microVM from an image.
    Run(Box<commands::run::RunArgs>),
    /// List sandboxes.
    Ps(commands::ps::PsArgs),
    /// Run a command in a running sandbox.
    Exec(commands::exec::ExecArgs),
    /// Show a sandbox's output.
    Logs(commands::logs::LogsArgs),
    /// Start stopped sandboxes again (their overlay's files kept).
    Start(commands::start::StartArgs),
    /// Save running sandboxes to disk and list or remove what was saved (`brig start
    /// --checkpoint` resumes one).
    Checkpoint(commands::checkpoint::CheckpointArgs),
    /// Pause sandboxes (their VMM frozen; memory and processes kept).
    Pause(commands::pause::PauseArgs),
    /// Unpause paused sandboxes.
    Unpause(commands::pause::PauseArgs),
    /// Stop sandboxes (StopSignal, then SIGKILL after a grace period).
    Stop(commands::stop::StopArgs),
    /// Send a signal to sandboxes' main process.
    Kill(commands::kill::KillArgs),
    /// Change sandboxes' memory, swap and pids limits.
    Update(commands::update::UpdateArgs),
    /// Wait for sandboxes to stop and print their exit codes.
    Wait(commands::wait::WaitArgs),
    /// Remove sandboxes.
    Rm(commands::rm::RmArgs),
    /// List a sandbox's published ports.
    Port(commands::port::PortArgs),
    /// Show sandboxes' resource usage.
    Stats(commands::stats::StatsArgs),
    /// Copy files between a sandbox and the host.
    Cp(commands::cp::CpArgs),
    /// Boot the guest kernel with brig's init and run one command in it (no image), or boot
    /// an initramfs of your own (--initrd).
    Boot(commands::boot::BootArgs),
    /// Download an image from a registry.
    Pull(commands::pull::PullArgs),
    /// Load images from a docker-archive tarball (docker save).
    Load(commands::load::LoadArgs),
    /// Import an OCI image layout directory or oci-archive.
    Import(commands::import::ImportArgs),
    /// List images.
    Images(commands::images::ImagesArgs),
    /// Show a sandbox's or an image's details as JSON.
    Inspect(commands::inspect::InspectArgs),
    /// Remove images.
    Rmi(commands::rmi::RmiArgs),
    /// Manage images.
    Image(commands::image::ImageArgs),
    /// Store credentials for a registry.
    Login(commands::login::LoginArgs),
    /// Manage named volumes.
    Volume(commands::volume::VolumeArgs),
    /// Manage the booted VMs `brig run` restores instead of booting.
    Template(commands::template::TemplateArgs),
    /// Run one probe suite under runc (or crun, podman) and under brig, side by side.
    Compare(commands::compare::CompareArgs),
    /// Show brig's version.
    Version,
    /// The VMM process of a detached sandbox (started by `brig run -d`).
    #[command(name = "__supervise", hide = true)]
    Supervise(commands::run::SuperviseArgs),
    /// Show what brig finds on this host: KVM, kernel, store, limits.
    Info,
}

pub use commands::oci::{is_oci, main as run_oci};

/// Parses the command line and runs the command; returns the process exit code.
pub fn run() -> anyhow::Result<i32> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let parsed = match lean::parse(&args) {
        Some(cli) => Ok(cli),
        None => Cli::try_parse_from(args),
    };
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors exit 125 as docker's do.
            let code = if e.use_stderr() { EXIT_BRIG_ERROR } else { 0 };
            let _ = e.print();
            return Ok(code);
        }
    };
    match cli.command {
        Command::Run(args) => commands::run::run(*args),
        Command::Boot(args) => commands::boot::run(args),
        Command::Ps(args) => commands::ps::run(args),
        Command::Exec(args) => commands::exec::run(args),
        Command::Logs(args) => commands::logs::run(args),
        Command::Start(args) => commands::start::run(args),
        Command::Pause(args) => commands::pause::run(args, true),
        Command::Checkpoint(args) => commands::checkpoint::run(args),
        Command::Unpause(args) => commands::pause::run(args, false),
        Command::Stop(args) => commands::stop::run(args),
        Command::Kill(args) => commands::kill::run(args),
        Command::Update(args) => commands::update::run(args),
        Command::Wait(args) => commands::wait::run(args),
        Command::Rm(args) => commands::rm::run(args),
        Command::Stats(args) => commands::stats::run(args),
        Command::Port(args) => commands::port::run(args),
        Command::Cp(args) => commands::cp::run(args),
        Command::Compare(args) => commands::compare::run(args),
        Command::Volume(args) => commands::volume::run(args),
        Command::Template(args) => commands::template::run(args),
        Command::Version => commands::info::version(),
        Command::Supervise(args) => commands::run::supervise(args),
        Command::Info => commands::info::info(),
        Command::Pull(args) => commands::pull::run(args),
        Command::Load(args) => commands::load::run(args),
        Command::Import(args) => commands::import::run(args),
        Command::Images(args) => commands::images::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Rmi(args) => commands::rmi::run(args),
        Command::Image(args) => commands::image::run(args),
        Command::Login(args) => commands::login::run(args),
    }
}

/// The guest kernel to boot when `--kernel` is not given.
pub fn default_kernel() -> anyhow::Result<std::path::PathBuf> {
    crate::vmm::boot::default_kernel().map_err(anyhow::Error::from)
}

/// Logs go to stderr, off unless `BRIG_LOG` asks for them (e.g. `BRIG_LOG=debug`).
///
/// Without it no subscriber is installed at all: every event then stops at tracing's
/// no-subscriber check, which is what the "off" filter did, minus building the filter and
/// the formatter on each start (about 10 ms of a `brig run` under nested emulation).
pub fn init_logging() {
    let filter = match std::env::var("BRIG_LOG") {
        Ok(f) if !f.is_empty() && f != "off" => f,
        _ => return,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .try_init();
}
