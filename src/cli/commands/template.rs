//! `brig template build|ls|rm`: the saved, booted VMs `brig run` restores instead of booting
//! (made on a run's first need; `build` makes one ahead of it).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::sandbox::resources::{ResourceFlags, Resources};
use crate::sandbox::templates;

#[derive(Debug, Args)]
pub struct TemplateArgs {
    #[command(subcommand)]
    command: TemplateCommand,
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    /// Make the template a `brig run` with these flags restores (nothing if it exists).
    Build {
        /// Memory limit, as `brig run -m` (the guest gets 64 MiB more).
        #[arg(short = 'm', long, value_name = "BYTES")]
        memory: Option<String>,
        /// Number of CPUs, as `brig run --cpus`.
        #[arg(long, value_name = "N")]
        cpus: Option<f64>,
        /// For `brig run --read-only` (no scratch disk).
        #[arg(long = "read-only")]
        read_only: bool,
        /// For `brig run --network MODE`: `none` (no network device) or any other mode
        /// (bridge, the default; host ports; a joined namespace): the same device.
        #[arg(long, value_name = "MODE", default_value = "bridge")]
        network: String,
        /// For a run with N shared directories (`-v`/`--mount` binds and named volumes;
        /// `--tmpfs` needs none).
        #[arg(long, value_name = "N", default_value_t = 0)]
        volumes: usize,
        /// Guest kernel (default: the one kernels/build.sh built).
        #[arg(long, value_name = "PATH")]
        kernel: Option<PathBuf>,
    },
    /// List templates.
    #[command(alias = "list")]
    Ls {
        /// Only keys.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove templates by key (a unique prefix will do), or all with --all.
    #[command(alias = "remove", alias = "prune")]
    Rm {
        #[arg(short, long)]
        all: bool,
        keys: Vec<String>,
    },
}

pub fn run(args: TemplateArgs) -> anyhow::Result<i32> {
    let home = super::home()?;
    match args.command {
        TemplateCommand::Build {
            memory,
            cpus,
            read_only,
            network,
            volumes,
            kernel,
        } => {
            let kernel = match kernel {
                Some(k) => k,
                None => crate::cli::default_kernel()?,
            };
            let r = Resources::from_flags(&ResourceFlags {
                memory,
                cpus,
                ..Default::default()
            })?;
            let shape = templates::Shape {
                mem_mib: r.mem_mib,
                cpus: r.cpus,
                read_only,
                network: network != "none",
                volumes,
            };
            let (key, made) = templates::build_for(&home, &kernel, &shape)?;
            println!("{key}{}", if made { "" } else { " (already there)" });
        }
        TemplateCommand::Ls { quiet } => {
            let list = templates::list(&home)?;
            if !quiet {
                println!(
                    "{:<34}{:<6}{:<9}{:<10}{:<9}{:<9}{:<10}CREATED",
                    "KEY", "CPUS", "MEMORY", "DISKS", "NETWORK", "VOLUMES", "ON DISK"
                );
            }
            for t in list {
                if quiet {
                    println!("{}", t.key);
                    continue;
                }
                let (cpus, mem, disks, net, vols, created) = match &t.record {
                    Some(r) => (
                        r.inputs.cpus.to_string(),
                        format!("{}MiB", r.inputs.mem_mib),
                        r.inputs
                            .disks_read_only
                            .iter()
                            .map(|ro| if *ro { "ro" } else { "rw" })
                            .collect::<Vec<_>>()
                            .join(","),
                        r.inputs
                            .net_mtu
                            .map_or("none".to_string(), |m| format!("mtu {m}")),
                        r.inputs.fs_tags.len().to_string(),
                        r.created.clone(),
                    ),
                    None => {
                        let q = || "?".to_string();
                        (q(), q(), q(), q(), q(), q())
                    }
                };
                println!(
                    "{:<34}{cpus:<6}{mem:<9}{disks:<10}{net:<9}{vols:<9}{:<10}{created}",
                    t.key,
                    format!("{:.1}MiB", t.disk_bytes as f64 / 1048576.0)
                );
            }
        }
        TemplateCommand::Rm { all, keys } => {
            if all {
                for key in templates::remove(&home, None)? {
                    println!("{key}");
                }
            } else if keys.is_empty() {
                anyhow::bail!("name the templates to remove, or --all");
            } else {
                for prefix in &keys {
                    let removed = templates::remove(&home, Some(prefix))?;
                    if removed.is_empty() {
                        anyhow::bail!("no template {prefix}");
                    }
                    for key in removed {
                        println!("{key}");
                    }
                }
            }
        }
    }
    Ok(0)
}
