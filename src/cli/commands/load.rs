//! `brig load -i FILE`: load images from a docker-archive tarball (`docker save`).

use std::path::PathBuf;

use clap::Args;

use crate::image::{self, unpack::Limits, Store};
use anyhow::Context;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from this tar archive (possibly gzip- or zstd-compressed) instead of stdin.
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Print nothing.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: LoadArgs) -> anyhow::Result<i32> {
    let store = Store::open_default()?;
    let (path, _tmp) = match args.input {
        Some(p) => (p, None),
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                anyhow::bail!("requested load from stdin, but stdin is a terminal (use -i FILE)");
            }
            let tmp = store
                .tmp_dir()
                .join(format!("load-{}", image::store::tmp_suffix()));
            let mut f = std::fs::File::create(&tmp).with_context(|| tmp.display().to_string())?;
            let guard = TmpFile(tmp.clone());
            std::io::copy(&mut std::io::stdin().lock(), &mut f).context("reading stdin")?;
            (tmp, Some(guard))
        }
    };
    if !path.exists() {
        anyhow::bail!("{}: no such file", path.display());
    }
    let loaded = image::archive::load(&store, &path, Limits::from_env())?;
    if !args.quiet {
        super::import::print_loaded(&loaded);
    }
    Ok(0)
}

/// Removes a temporary file when dropped.
struct TmpFile(PathBuf);

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
