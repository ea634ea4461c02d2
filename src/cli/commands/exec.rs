//! `brig exec`: one more process in a running sandbox, over a new vsock connection, with
//! `run`'s stdio, TTY and exit-code behaviour.

use clap::Args;

use crate::sandbox::exec::{exec, ExecOptions};

#[derive(Debug, Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Keep stdin open and forward it.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to copy the host's).
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Working directory (default: the sandbox's).
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// Give the process every capability and no seccomp filter.
    #[arg(long)]
    privileged: bool,
    /// User (default: the sandbox's).
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// The sandbox (name or id).
    sandbox: String,
    /// Command and arguments.
    #[arg(required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(args: ExecArgs) -> anyhow::Result<i32> {
    let home = super::home()?;
    let sb = super::resolve(&home, &args.sandbox)?;
    let opts = ExecOptions {
        command: args.command,
        env: args.env,
        workdir: args.workdir,
        user: args.user,
        tty: args.tty,
        interactive: args.interactive,
        privileged: args.privileged,
        groups: None,
    };
    Ok(exec(&sb, &args.sandbox, &opts)?)
}
