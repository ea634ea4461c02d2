//! `brig volume create|ls|inspect|rm|prune`: named volumes, as docker's `volume` commands.

use clap::{Args, Subcommand};

use crate::sandbox::volumes::{VolumeInfo, Volumes};

#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Create a volume (a name is generated when none is given).
    Create { name: Option<String> },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show volumes' details as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes (not while a sandbox uses them, unless --force).
    #[command(alias = "remove")]
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove unused anonymous volumes (--all: unused named ones too).
    Prune {
        #[arg(short, long)]
        all: bool,
        /// Do not ask (brig never asks; accepted for docker's scripts).
        #[arg(short, long)]
        force: bool,
    },
}

/// docker's `volume inspect` shape.
fn json(vols: &Volumes, v: &VolumeInfo) -> serde_json::Value {
    serde_json::json!({
        "Name": v.name,
        "Driver": "local",
        "Mountpoint": vols.data_dir(&v.name),
        "CreatedAt": v.created,
        "Scope": "local",
        "Labels": {},
        "Options": {},
        "Anonymous": v.anonymous,
    })
}

pub fn run(args: VolumeArgs) -> anyhow::Result<i32> {
    let home = super::home()?;
    let vols = Volumes::new(&home);
    match args.command {
        VolumeCommand::Create { name } => {
            let name = name.unwrap_or_else(crate::sandbox::runtime::new_id);
            let (info, _) = vols.ensure(&name, false)?;
            println!("{}", info.name);
        }
        VolumeCommand::Ls { quiet } => {
            let list = vols.list()?;
            if quiet {
                for v in list {
                    println!("{}", v.name);
                }
            } else {
                println!("DRIVER  VOLUME NAME");
                for v in list {
                    println!("{:<8}{}", "local", v.name);
                }
            }
        }
        VolumeCommand::Inspect { names } => {
            let mut out = Vec::new();
            for n in &names {
                out.push(json(&vols, &vols.inspect(n)?));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCommand::Rm { force, names } => {
            let mut code = 0;
            for n in &names {
                match vols.remove(&home, n, force) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("brig: {e}");
                        code = crate::cli::EXIT_BRIG_ERROR;
                    }
                }
            }
            return Ok(code);
        }
        VolumeCommand::Prune { all, force: _ } => {
            let removed = vols.prune(&home, all)?;
            for n in &removed {
                println!("{n}");
            }
            println!("Total reclaimed: {} volume(s)", removed.len());
        }
    }
    Ok(0)
}
