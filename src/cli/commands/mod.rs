//! One module per subcommand.

pub mod boot;
