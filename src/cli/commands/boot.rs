//! `brig boot`: boot the guest kernel with brig's init and run one command.

use clap::Args;

use crate::cli::CliError;

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Command to run in the guest, and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(_args: BootArgs) -> Result<i32, CliError> {
    Err(CliError::new("not implemented yet"))
}
