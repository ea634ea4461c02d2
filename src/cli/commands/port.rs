//! `brig port`: a running sandbox's published ports, as `docker port` lists them.

use clap::Args;

use crate::sandbox::network::ports::{lookup_port, port_lines};

#[derive(Debug, Args)]
pub struct PortArgs {
    /// The sandbox.
    sandbox: String,
    /// Only this sandbox port (PORT or PORT/PROTO).
    #[arg(value_name = "PORT[/PROTO]")]
    port: Option<String>,
}

pub fn run(args: PortArgs) -> anyhow::Result<i32> {
    let home = super::home()?;
    let sb = super::resolve(&home, &args.sandbox)?;
    if !sb.is_running() {
        anyhow::bail!("sandbox {} is not running", args.sandbox);
    }
    let ports = sb
        .current_state()?
        .network
        .map(|n| n.ports)
        .unwrap_or_default();
    let lines = match &args.port {
        None => port_lines(&ports),
        Some(query) => lookup_port(&ports, query, &args.sandbox)?,
    };
    for l in lines {
        println!("{l}");
    }
    Ok(0)
}
