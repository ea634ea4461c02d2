//! One module per subcommand.

pub mod boot;
pub mod image;
pub mod images;
pub mod import;
pub mod info;
pub mod inspect;
pub mod load;
pub mod login;
pub mod pull;
pub mod rmi;
pub mod run;

use crate::cli::CliError;

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
