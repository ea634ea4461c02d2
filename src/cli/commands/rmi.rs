//! `brig rmi IMAGE...`: remove names; an image left without names loses its rootfs and the
//! blobs no other image uses.

use clap::Args;

use crate::image::{gc, Store};

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Remove every name of an image given by ID, even when it has several.
    #[arg(short, long)]
    pub force: bool,
    /// Image name, ID or digest.
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub fn run(args: RmiArgs) -> anyhow::Result<i32> {
    let store = Store::open_default()?;
    for image in &args.images {
        let found = store.lookup(image)?;
        let names: std::collections::BTreeSet<_> =
            found.iter().map(|n| (&n.repository, &n.tag)).collect();
        if names.len() > 1 && !args.force {
            anyhow::bail!(
                "unable to delete {image}: image is referenced by {} names (use -f, or remove each name)",
                names.len()
            );
        }
        let removed = gc::remove(&store, &found)?;
        for u in removed.untagged {
            println!("Untagged: {u}");
        }
        for d in removed.deleted {
            println!("Deleted: {d}");
        }
    }
    Ok(0)
}
