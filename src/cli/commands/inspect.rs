//! `brig inspect IMAGE...`: an image's manifest digest, config, layers and rootfs path, as
//! a JSON array (as `docker inspect` prints).

use clap::Args;

use crate::cli::CliError;
use crate::image::{display_name, Store};

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image name, ID or digest.
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub fn run(args: InspectArgs) -> Result<i32, CliError> {
    let store = Store::open_default()?;
    let mut out = Vec::new();
    for image in &args.images {
        let found = store.lookup(image)?;
        let Some(first) = found.first() else {
            return Err(CliError::new(format!("no such image: {image}")));
        };
        let rec = store.record(&first.manifest)?;
        let all = crate::image::names::load(&store)?;
        let digests: Vec<String> = all
            .iter()
            .filter(|n| n.manifest == rec.manifest_digest && !n.repository.is_empty())
            .map(|n| {
                let mut n = n.clone();
                n.tag = None;
                display_name(&n)
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let size = std::fs::metadata(&rec.rootfs_path).map(|m| m.len()).ok();
        out.push(serde_json::json!({
            "Id": rec.config_digest,
            "RepoTags": rec.names.iter().filter(|n| !n.contains('@')).collect::<Vec<_>>(),
            "RepoDigests": digests,
            "ManifestDigest": rec.manifest_digest,
            "IndexDigest": first.index,
            "Created": rec.created,
            "Os": rec.platform.os,
            "Architecture": rec.platform.architecture,
            "Variant": rec.platform.variant,
            "Config": rec.config,
            "Layers": rec.layers,
            "RootfsPath": rec.rootfs_path,
            "RootfsSize": size,
        }));
    }
    let text = serde_json::to_string_pretty(&out).map_err(|e| CliError::new(e.to_string()))?;
    println!("{text}");
    Ok(0)
}
