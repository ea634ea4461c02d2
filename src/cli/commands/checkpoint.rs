//! `brig checkpoint create|ls|rm`: running sandboxes saved (memory, device state, scratch
//! disk) and resumed later with `brig start --checkpoint` (docker's checkpoint CLI).

use clap::{Args, Subcommand};

use crate::sandbox::{checkpoint, lifecycle};

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    command: CheckpointCommand,
}

#[derive(Debug, Subcommand)]
enum CheckpointCommand {
    /// Save a running sandbox as CHECKPOINT; it stops (as docker's default).
    Create {
        /// Keep the sandbox running: it goes on from the checkpoint at once (in a new VMM
        /// process; connections through its published ports are cut).
        #[arg(
            long = "leave-running",
            default_value_t = false,
            action = clap::ArgAction::Set,
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true"
        )]
        leave_running: bool,
        sandbox: String,
        checkpoint: String,
    },
    /// List a sandbox's checkpoints.
    #[command(alias = "list")]
    Ls { sandbox: String },
    /// Remove a sandbox's checkpoint.
    #[command(alias = "remove")]
    Rm { sandbox: String, checkpoint: String },
}

pub fn run(args: CheckpointArgs) -> anyhow::Result<i32> {
    let home = super::home()?;
    match args.command {
        CheckpointCommand::Create {
            leave_running,
            sandbox,
            checkpoint: name,
        } => {
            let sb = super::resolve(&home, &sandbox)?;
            checkpoint::create(&sb, &sandbox, &name)?;
            if leave_running {
                resume(sb, &sandbox, &name, false)?;
            }
            println!("{name}");
        }
        CheckpointCommand::Ls { sandbox } => {
            let sb = super::resolve(&home, &sandbox)?;
            println!("CHECKPOINT NAME");
            for meta in checkpoint::list(&sb) {
                println!("{}", meta.name);
            }
        }
        CheckpointCommand::Rm {
            sandbox,
            checkpoint: name,
        } => {
            let sb = super::resolve(&home, &sandbox)?;
            checkpoint::remove(&sb, &sandbox, &name)?;
        }
    }
    Ok(0)
}

/// Starts the stopped `sb` (the user's `name`) from `checkpoint`: detached, or attached to
/// its output with `attach` (its exit code then). A start that fails leaves no request for
/// the next one.
pub fn resume(
    sb: crate::sandbox::state::Sandbox,
    name: &str,
    checkpoint: &str,
    attach: bool,
) -> anyhow::Result<i32> {
    checkpoint::prepare_resume(&sb, name, checkpoint)?;
    let withdraw = sb.clone();
    let started = (|| {
        let Some(created) = lifecycle::reopen(sb)? else {
            anyhow::bail!("sandbox {name} started meanwhile");
        };
        if attach {
            return Ok(created.run(false, false, None, None)??);
        }
        created.detach(None)?;
        Ok(0)
    })();
    if started.is_err() {
        checkpoint::cancel_resume(&withdraw);
    }
    started
}
