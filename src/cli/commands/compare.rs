//! `brig compare [--runtime R] [--format F] [--output FILE] IMAGE`: the same probe in a
//! container of IMAGE under another runtime and in a brig sandbox, side by side.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::image::{self, PullOptions};
use crate::sandbox::compare::{self, baseline::Baseline, render, CompareOptions};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Runtime {
    Runc,
    Crun,
    Podman,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Html,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The baseline runtime.
    #[arg(long, value_enum, default_value = "runc")]
    runtime: Runtime,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Write the output to FILE instead of stdout.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// An outside address the probe tries to reach (TCP) from both sides; without it the
    /// "outside" row says "not probed".
    #[arg(long, value_name = "ADDR:PORT")]
    probe_target: Option<std::net::SocketAddrV4>,
    /// Also measure the horizontal attack profile (distinct host kernel functions each side
    /// makes the host run, with ftrace; needs root; slows the host while it runs).
    #[arg(long)]
    hap: bool,
    /// Guest kernel to boot.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// A local image.
    image: String,
}

pub fn run(args: CompareArgs) -> anyhow::Result<i32> {
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => crate::cli::default_kernel()?,
    };
    crate::vmm::kvm::open()?;
    let store = image::Store::open_default()?;
    let record = store
        .resolve_local(&args.image, &PullOptions::default())?
        .ok_or_else(|| anyhow::anyhow!("image {} is not present locally", args.image))?;
    let baseline = match args.runtime {
        Runtime::Runc => Baseline::Runc,
        Runtime::Crun => Baseline::Crun,
        Runtime::Podman => Baseline::Podman,
    };
    let report = compare::compare(CompareOptions {
        image: args.image.clone(),
        record: &record,
        store: &store,
        kernel,
        baseline,
        probe_target: args.probe_target,
        hap: args.hap,
    })?;
    let text = match args.format {
        Format::Table => render::table(&report),
        Format::Json => render::json(&report),
        Format::Html => render::html(&report),
    };
    match &args.output {
        Some(path) => std::fs::write(path, text).with_context(|| path.display().to_string())?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(0)
}
