//! One module per subcommand.

pub mod boot;
pub mod checkpoint;
pub mod compare;
pub mod cp;
pub mod exec;
pub mod image;
pub mod images;
pub mod import;
pub mod info;
pub mod inspect;
pub mod kill;
pub mod load;
pub mod login;
pub mod logs;
pub mod oci;
pub mod pause;
pub mod port;
pub mod ps;
pub mod pull;
pub mod rm;
pub mod rmi;
pub mod run;
pub mod start;
pub mod stats;
pub mod stop;
pub mod template;
pub mod update;
pub mod volume;
pub mod wait;

use std::path::{Path, PathBuf};

use crate::sandbox::state::{self, Sandbox};

/// `$BRIG_HOME`.
pub fn home() -> anyhow::Result<PathBuf> {
    Ok(crate::image::store::default_home()?)
}

/// The sandbox a user named (name, id or unique id prefix).
pub fn resolve(home: &Path, name: &str) -> anyhow::Result<Sandbox> {
    Ok(state::resolve(home, name)?)
}
