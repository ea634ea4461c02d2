//! One module per subcommand.

pub mod boot;
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
pub mod ps;
pub mod pull;
pub mod rm;
pub mod rmi;
pub mod run;
pub mod stats;
pub mod stop;
pub mod wait;

use std::path::{Path, PathBuf};

use crate::cli::CliError;
use crate::sandbox::state::{self, Sandbox};

/// `$BRIG_HOME`.
pub fn home() -> Result<PathBuf, CliError> {
    crate::image::store::default_home().map_err(|e| CliError::new(e.to_string()))
}

/// The sandbox a user named (name, id or unique id prefix).
pub fn resolve(home: &Path, name: &str) -> Result<Sandbox, CliError> {
    state::resolve(home, name).map_err(|e| CliError::new(e.to_string()))
}

impl From<crate::image::ImageError> for CliError {
    fn from(e: crate::image::ImageError) -> Self {
        CliError::new(e.to_string())
    }
}

macro_rules! image_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for CliError {
            fn from(e: $t) -> Self {
                CliError::new(e.to_string())
            }
        }
    )*};
}

image_errors!(
    crate::image::reference::ReferenceError,
    crate::image::manifest::ManifestError,
    crate::image::store::StoreError,
    crate::image::auth::AuthError
);
