//! `brig image prune`: delete blobs, rootfs images and leftovers that no image name reaches.

use clap::{Args, Subcommand};

use crate::image::{gc, Store};

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Remove unreferenced blobs, rootfs images and leftovers of interrupted pulls.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Accepted for docker compatibility (brig never prompts).
    #[arg(short, long)]
    pub force: bool,
    /// Accepted for docker compatibility (untagged images are always kept until `rmi`).
    #[arg(short, long)]
    pub all: bool,
}

pub fn run(args: ImageArgs) -> anyhow::Result<i32> {
    match args.command {
        ImageCommand::Prune(_) => {
            let store = Store::open_default()?;
            let freed = gc::prune(&store)?;
            if !freed.is_empty() {
                println!("Deleted:");
            }
            let mut total = 0;
            for f in &freed {
                println!("deleted: {}", f.what);
                total += f.bytes;
            }
            println!(
                "Total reclaimed space: {}",
                crate::cli::fmt::human_size(total)
            );
            Ok(0)
        }
    }
}
