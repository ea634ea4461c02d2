//! The command line: clap types, dispatch, and the error type every command returns.
//!
//! Each subcommand lives in its own file under `commands/`.

mod commands;
mod error;

use clap::{Parser, Subcommand};

pub use error::{CliError, Context, EXIT_BRIG_ERROR};

/// Run OCI container images in KVM microVMs.
#[derive(Debug, Parser)]
#[command(name = "brig", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot the guest kernel with brig's init and run one command in it (no image).
    Boot(commands::boot::BootArgs),
    /// Download an image from a registry.
    Pull(commands::pull::PullArgs),
    /// Load images from a docker-archive tarball (docker save).
    Load(commands::load::LoadArgs),
    /// Import an OCI image layout directory or oci-archive.
    Import(commands::import::ImportArgs),
    /// List images.
    Images(commands::images::ImagesArgs),
    /// Show an image's manifest digest, config, layers and rootfs path as JSON.
    Inspect(commands::inspect::InspectArgs),
    /// Remove images.
    Rmi(commands::rmi::RmiArgs),
    /// Manage images.
    Image(commands::image::ImageArgs),
    /// Store credentials for a registry.
    Login(commands::login::LoginArgs),
}

/// Parses the command line and runs the command; returns the process exit code.
pub fn run() -> Result<i32, CliError> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors exit 125 as docker's do.
            let code = if e.use_stderr() { EXIT_BRIG_ERROR } else { 0 };
            let _ = e.print();
            return Ok(code);
        }
    };
    match cli.command {
        Command::Boot(args) => commands::boot::run(args),
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

/// Logs go to stderr, off unless `BRIG_LOG` asks for them (e.g. `BRIG_LOG=debug`).
pub fn init_logging() {
    let filter = std::env::var("BRIG_LOG").unwrap_or_else(|_| "off".into());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .try_init();
}
