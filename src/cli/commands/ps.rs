//! `brig ps`: sandboxes, as `docker ps` lists containers.

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::cli::fmt::{duration_words, now_secs, parse_rfc3339, print_table};
use crate::sandbox::network::ports::format_ports;
use crate::sandbox::state::{self, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all sandboxes (default: running ones).
    #[arg(short, long)]
    all: bool,
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
    /// Do not truncate ids and commands.
    #[arg(long)]
    no_trunc: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    id: String,
    names: String,
    image: String,
    command: String,
    created_at: String,
    state: Status,
    status: String,
    exit_code: Option<i32>,
    error: Option<String>,
    pid: u32,
    ports: String,
}

/// docker's STATUS column: `Up 3 minutes`, `Exited (0) 2 seconds ago`, `Created`.
fn status_words(st: &state::SandboxState, now: i64) -> String {
    let at = |t: &Option<String>| t.as_deref().and_then(parse_rfc3339).unwrap_or(now);
    match st.status {
        Status::Created => "Created".into(),
        Status::Running if st.paused => {
            format!("Up {} (Paused)", duration_words(now - at(&st.started_at)))
        }
        Status::Running => format!("Up {}", duration_words(now - at(&st.started_at))),
        Status::Exited => {
            let code = st.exit_code.map_or("?".into(), |c| c.to_string());
            let mut s = format!(
                "Exited ({code}) {} ago",
                duration_words(now - at(&st.finished_at))
            );
            if let Some(e) = st.error.as_deref().filter(|e| e.contains("VMM")) {
                s.push_str(&format!(" ({e})"));
            }
            s
        }
    }
}

pub fn run(args: PsArgs) -> anyhow::Result<i32> {
    let home = super::home()?;
    let now = now_secs();
    let mut rows = Vec::new();
    for sb in state::list(&home)? {
        let (Ok(config), Ok(st)) = (sb.config(), sb.current_state()) else {
            continue;
        };
        if !args.all && st.status != Status::Running {
            continue;
        }
        let status = status_words(&st, now);
        rows.push(Row {
            id: config.id.clone(),
            names: config.name.clone(),
            image: config.image.clone(),
            command: config.run.argv.join(" "),
            created_at: config.created.clone(),
            state: st.status,
            status,
            exit_code: st.exit_code,
            error: st.error.clone(),
            pid: st.pid,
            ports: st
                .network
                .as_ref()
                .map(|n| format_ports(&n.ports))
                .unwrap_or_default(),
        });
    }
    rows.reverse(); // newest first, as docker lists them
    if args.quiet {
        for r in &rows {
            println!("{}", if args.no_trunc { &r.id } else { &r.id[..12] });
        }
        return Ok(0);
    }
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cmd = format!("\"{}\"", r.command);
            if !args.no_trunc && cmd.chars().count() > 22 {
                cmd = format!("{}…\"", cmd.chars().take(20).collect::<String>());
            }
            let created = parse_rfc3339(&r.created_at)
                .map_or_else(String::new, |t| format!("{} ago", duration_words(now - t)));
            vec![
                if args.no_trunc {
                    r.id.clone()
                } else {
                    r.id[..12].to_string()
                },
                r.image.clone(),
                cmd,
                created,
                r.status.clone(),
                r.ports.clone(),
                r.names.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "SANDBOX ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "PORTS",
            "NAMES",
        ],
        &table,
    );
    Ok(0)
}
