//! `brig images`: list local images (table, or `--format json`).

use std::collections::BTreeMap;

use clap::{Args, ValueEnum};

use crate::cli::fmt::{human_size, now_secs, parse_rfc3339, since};
use crate::image::{names, Store};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Print image IDs only.
    #[arg(short, long)]
    pub quiet: bool,
}

/// One row of the listing.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    repository: String,
    tag: String,
    #[serde(rename = "ID")]
    id: String,
    digest: String,
    created_at: String,
    created_since: String,
    size: u64,
    rootfs: String,
}

pub fn run(args: ImagesArgs) -> anyhow::Result<i32> {
    let store = Store::open_default()?;
    let mut entries = names::load(&store)?;
    entries.sort_by(|a, b| b.added.cmp(&a.added).then(a.repository.cmp(&b.repository)));
    let mut sizes: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut rows = Vec::new();
    let now = now_secs();
    for n in &entries {
        let (size, created) = sizes
            .entry(n.manifest.hex().to_string())
            .or_insert_with(|| match store.record(&n.manifest) {
                Ok(r) => {
                    let size = std::fs::metadata(&r.rootfs_path)
                        .map(|m| m.len())
                        .unwrap_or_else(|_| r.layers.iter().map(|l| l.size).sum());
                    (size, r.created.unwrap_or_default())
                }
                Err(_) => (0, String::new()),
            })
            .clone();
        let repository = if n.repository.is_empty() {
            "<none>".to_string()
        } else {
            crate::image::Reference::parse(&n.repository)
                .map(|r| r.familiar_name())
                .unwrap_or_else(|_| n.repository.clone())
        };
        rows.push(Row {
            repository,
            tag: n.tag.clone().unwrap_or_else(|| "<none>".into()),
            id: n.config.to_string(),
            digest: n
                .index
                .clone()
                .unwrap_or_else(|| n.manifest.clone())
                .to_string(),
            created_since: parse_rfc3339(&created)
                .map(|t| since(now, t))
                .unwrap_or_else(|| "N/A".into()),
            created_at: created,
            size,
            rootfs: store.rootfs_path(&n.manifest).display().to_string(),
        });
    }
    if args.quiet {
        let mut seen = std::collections::HashSet::new();
        for r in &rows {
            if seen.insert(r.id.clone()) {
                println!("{}", &r.id[7..19]);
            }
        }
        return Ok(0);
    }
    match args.format {
        Format::Json => {
            let text = serde_json::to_string_pretty(&rows)?;
            println!("{text}");
        }
        Format::Table => {
            let table: Vec<[String; 5]> = rows
                .iter()
                .map(|r| {
                    [
                        r.repository.clone(),
                        r.tag.clone(),
                        r.id[7..19].to_string(),
                        r.created_since.clone(),
                        human_size(r.size),
                    ]
                })
                .collect();
            let rows: Vec<Vec<String>> = table.into_iter().map(Vec::from).collect();
            crate::cli::fmt::print_table(
                &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
                &rows,
            );
        }
    }
    Ok(0)
}
