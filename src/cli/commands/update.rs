//! `brig update`: change sandboxes' memory, swap and pids limits (docker's `update`), live
//! in the guest, and kept for the sandbox's next start.

use clap::Args;

use crate::sandbox::resources::parse_memory_swap;
use crate::sandbox::spec::parse_bytes;
use crate::sandbox::update::{self, Limits};

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Memory limit (`512m`, `1g`; 0: none), at most the VM's memory.
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// Memory plus swap (`-1`: unlimited swap).
    #[arg(long)]
    memory_swap: Option<String>,
    /// Most processes the workload may have (0 or -1: no limit).
    #[arg(long, allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// Sandboxes (names or ids).
    #[arg(required = true)]
    sandboxes: Vec<String>,
}

pub fn run(args: UpdateArgs) -> anyhow::Result<i32> {
    // Read as brig run reads -m and --memory-swap.
    let memory = args
        .memory
        .as_deref()
        .map(|m| parse_bytes(m).map_err(|e| anyhow::anyhow!("--memory: {e}")))
        .transpose()?;
    let memory_swap = args
        .memory_swap
        .as_deref()
        .map(parse_memory_swap)
        .transpose()?;
    let limits = Limits {
        memory,
        memory_swap,
        pids: args.pids_limit.map(|p| u64::try_from(p).unwrap_or(0)),
    };
    if limits == Limits::default() {
        anyhow::bail!("you must provide one or more flags when using this command");
    }
    let home = super::home()?;
    for name in &args.sandboxes {
        let sb = super::resolve(&home, name)?;
        update::update(&sb, &limits).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        println!("{name}");
    }
    Ok(0)
}
