//! `brig pull [--platform os/arch] IMAGE`: download an image and build its rootfs.

use clap::Args;

use crate::image::{self, Platform, Progress, PullOptions, Reference, Store};

/// `--insecure-registry`, shared by `brig pull`, `brig login` and `brig run`.
#[derive(Debug, Args)]
pub struct InsecureRegistryArgs {
    /// Registry that may be used over plain HTTP (repeatable; localhost always may).
    #[arg(
        long = "insecure-registry",
        value_name = "HOST[:PORT]",
        env = "BRIG_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registry: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Platform to pull for, os/arch[/variant] (default: this host's).
    #[arg(long)]
    pub platform: Option<String>,
    #[command(flatten)]
    pub insecure: InsecureRegistryArgs,
    /// Print only the image name at the end.
    #[arg(short, long)]
    pub quiet: bool,
    /// Image to pull: NAME[:TAG|@DIGEST] as docker writes it.
    pub image: String,
}

pub fn run(args: PullArgs) -> anyhow::Result<i32> {
    let reference = Reference::parse(&args.image)?;
    let platform = args.platform.as_deref().map(Platform::parse).transpose()?;
    let opts = PullOptions {
        platform,
        insecure_registries: args.insecure.insecure_registry,
        ..PullOptions::default()
    };
    let store = Store::open_default()?;
    let progress = if args.quiet {
        Progress::hidden()
    } else {
        Progress::new(false)
    };
    if !args.quiet {
        if !args.image.contains(':') && reference.digest.is_none() {
            println!("Using default tag: {}", image::reference::DEFAULT_TAG);
        }
        println!(
            "{}: Pulling from {}",
            reference.tag.as_deref().unwrap_or("digest"),
            reference.repository
        );
    }
    let outcome = image::pull::pull(&store, &reference, &opts, &progress)?;
    if !args.quiet {
        println!("Digest: {}", outcome.digest);
        if outcome.downloaded {
            println!("Status: Downloaded newer image for {reference}");
        } else {
            println!("Status: Image is up to date for {reference}");
        }
    }
    let full = match (&reference.tag, &reference.digest) {
        (_, Some(d)) => format!("{}@{d}", reference.name()),
        (Some(t), None) => format!("{}:{t}", reference.name()),
        (None, None) => reference.name(),
    };
    println!("{full}");
    Ok(0)
}
