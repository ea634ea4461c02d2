//! `brig import PATH [REPOSITORY[:TAG]]`: bring in an OCI image layout (a directory, as
//! `skopeo copy ... oci:DIR:TAG` writes it) or an oci-archive tarball.

use std::path::PathBuf;

use clap::Args;

use crate::image::{self, archive::Loaded, unpack::Limits, Store};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Print nothing.
    #[arg(short, long)]
    pub quiet: bool,
    /// OCI layout directory or oci-archive file.
    pub path: PathBuf,
    /// Name for the image (default: the layout's ref.name annotation).
    pub reference: Option<String>,
}

pub fn run(args: ImportArgs) -> anyhow::Result<i32> {
    if !args.path.exists() {
        anyhow::bail!("{}: no such file or directory", args.path.display());
    }
    if let Some(r) = &args.reference {
        image::Reference::parse(r)?;
    }
    let store = Store::open_default()?;
    let loaded = image::archive::import(
        &store,
        &args.path,
        args.reference.as_deref(),
        Limits::from_env(),
    )?;
    if !args.quiet {
        print_loaded(&loaded);
    }
    Ok(0)
}

/// Prints what `load`/`import` brought in, as docker load does.
pub fn print_loaded(loaded: &[Loaded]) {
    for l in loaded {
        if l.names.is_empty() {
            println!("Loaded image ID: {}", l.record.config_digest);
        }
        for n in &l.names {
            println!("Loaded image: {n}");
        }
    }
}
