//! `brig stats`: CPU %, memory used / limit, processes, per running sandbox (from the guest
//! agent), and what the VMM process costs the host: its resident memory (RSS) and its
//! proportional share of it (PSS: pages it shares, a template's clean pages restored by
//! several sandboxes, count in part). A paused sandbox's agent cannot answer: its guest
//! columns read `--`.

use std::time::Duration;

use brig_protocol::Stats;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::cli::fmt::{human_size, print_table};
use crate::sandbox::control;
use crate::sandbox::runtime::vsock_socket_of;
use crate::sandbox::state::{self, Sandbox};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one sample and exit.
    #[arg(long)]
    no_stream: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Sandboxes (default: every running one).
    sandboxes: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    id: String,
    name: String,
    cpu_percent: f64,
    mem_usage: u64,
    mem_limit: u64,
    mem_percent: f64,
    pids: u64,
    vmm_rss: u64,
    vmm_pss: u64,
    paused: bool,
    net_rx: u64,
    net_tx: u64,
}

/// The `key:` line (in KiB) of /proc/PID/`file`, in bytes; 0 when unreadable.
fn proc_bytes(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The VMM process's resident memory.
fn vmm_rss(pid: u32) -> u64 {
    proc_bytes(pid, "status", "VmRSS")
}

/// The VMM process's proportional set size: pages it shares count in part.
fn vmm_pss(pid: u32) -> u64 {
    proc_bytes(pid, "smaps_rollup", "Pss")
}

fn row(sb: &Sandbox, a: &Stats, b: &Stats) -> Row {
    let name = sb.config().map(|c| c.name).unwrap_or_default();
    let wall_us = b.uptime_ns.saturating_sub(a.uptime_ns) as f64 / 1000.0;
    let cpu = if wall_us > 0.0 {
        b.cpu_usage_usec.saturating_sub(a.cpu_usage_usec) as f64 / wall_us * 100.0
    } else {
        0.0
    };
    let limit = if b.memory_max > 0 {
        b.memory_max.min(b.memory_total.max(1))
    } else {
        b.memory_total
    };
    let pid = sb.state().map(|s| s.pid).unwrap_or(0);
    Row {
        id: sb.id.clone(),
        name,
        cpu_percent: cpu,
        mem_usage: b.memory_current,
        mem_limit: limit,
        mem_percent: if limit > 0 {
            b.memory_current as f64 / limit as f64 * 100.0
        } else {
            0.0
        },
        pids: b.pids_current,
        vmm_rss: vmm_rss(pid),
        vmm_pss: vmm_pss(pid),
        paused: crate::sandbox::pause::is_paused(sb),
        net_rx: b.net_rx_bytes,
        net_tx: b.net_tx_bytes,
    }
}

fn mib(n: u64) -> String {
    format!("{:.1}MiB", n as f64 / f64::from(1 << 20))
}

pub fn run(args: StatsArgs) -> anyhow::Result<i32> {
    let home = super::home()?;
    let targets: Vec<Sandbox> = if args.sandboxes.is_empty() {
        state::list(&home)?
            .into_iter()
            .filter(Sandbox::is_running)
            .collect()
    } else {
        let mut t = Vec::new();
        for n in &args.sandboxes {
            let sb = super::resolve(&home, n)?;
            if !sb.is_running() {
                anyhow::bail!("sandbox {n} is not running");
            }
            t.push(sb);
        }
        t
    };
    let sample = |sb: &Sandbox| {
        if crate::sandbox::pause::is_paused(sb) {
            return Ok(Stats::default());
        }
        control::stats(&vsock_socket_of(&sb.id))
            .map_err(|e| anyhow::anyhow!("{}: {e}", sb.short_id()))
    };
    let mut last: Vec<Stats> = targets.iter().map(sample).collect::<Result<_, _>>()?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now: Vec<Stats> = targets.iter().map(sample).collect::<Result<_, _>>()?;
        let rows: Vec<Row> = targets
            .iter()
            .zip(last.iter().zip(&now))
            .map(|(sb, (a, b))| row(sb, a, b))
            .collect();
        if args.format == Format::Json {
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            if !args.no_stream {
                print!("\x1b[2J\x1b[H");
            }
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let guest = |s: String| if r.paused { "--".to_string() } else { s };
                    vec![
                        r.id[..12].to_string(),
                        r.name.clone(),
                        guest(format!("{:.2}%", r.cpu_percent)),
                        guest(format!("{} / {}", mib(r.mem_usage), mib(r.mem_limit))),
                        guest(format!("{:.2}%", r.mem_percent)),
                        guest(format!(
                            "{} / {}",
                            human_size(r.net_rx),
                            human_size(r.net_tx)
                        )),
                        guest(r.pids.to_string()),
                        mib(r.vmm_rss),
                        mib(r.vmm_pss),
                    ]
                })
                .collect();
            print_table(
                &[
                    "SANDBOX ID",
                    "NAME",
                    "CPU %",
                    "MEM USAGE / LIMIT",
                    "MEM %",
                    "NET I/O",
                    "PIDS",
                    "VMM RSS",
                    "VMM PSS",
                ],
                &table,
            );
        }
        if args.no_stream {
            return Ok(0);
        }
        last = now;
    }
}
