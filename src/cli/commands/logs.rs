//! `brig logs`: what a sandbox's main process wrote to stdout and stderr (kept apart).

use std::io::Write;
use std::time::Duration;

use clap::Args;

use crate::cli::fmt::format_rfc3339;
use crate::sandbox::logs::{lines, read_all, Record, Stream};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow the output until the sandbox stops.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines ("all": everything).
    #[arg(short = 'n', long, default_value = "all")]
    tail: String,
    /// Prefix each line with its time (RFC 3339).
    #[arg(short, long)]
    timestamps: bool,
    /// The sandbox (name or id).
    sandbox: String,
}

fn emit(records: &[Record], timestamps: bool) {
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    for r in records {
        let w: &mut dyn Write = if r.stream == Stream::Stdout {
            &mut out
        } else {
            &mut err
        };
        if timestamps {
            let ts = format_rfc3339(
                (r.nanos / 1_000_000_000) as i64,
                (r.nanos % 1_000_000_000) as u32,
            );
            let _ = write!(w, "{ts} ");
        }
        let _ = w.write_all(&r.data);
    }
    let _ = out.flush();
    let _ = err.flush();
}

pub fn run(args: LogsArgs) -> anyhow::Result<i32> {
    let home = super::home()?;
    let sb = super::resolve(&home, &args.sandbox)?;
    let path = sb.log_path();
    let tail: Option<usize> = match args.tail.as_str() {
        "all" => None,
        n => Some(
            n.parse()
                .map_err(|_| anyhow::anyhow!("--tail {n}: not a number"))?,
        ),
    };
    let read = || read_all(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    let records = read()?;
    let all = lines(&records);
    let skip = tail.map_or(0, |n| all.len().saturating_sub(n));
    emit(&all[skip..], args.timestamps);
    if !args.follow {
        return Ok(0);
    }
    // Follow: print what arrives, until the sandbox is gone and nothing more is written.
    let mut seen: usize = records.iter().map(|r| r.data.len()).sum();
    loop {
        let live = sb.is_live();
        std::thread::sleep(Duration::from_millis(100));
        let now = read()?;
        let total: usize = now.iter().map(|r| r.data.len()).sum();
        if total != seen {
            // New records are those past what was printed (rotation keeps the newest).
            let mut new = Vec::new();
            let mut acc = 0usize;
            for r in &now {
                acc += r.data.len();
                if acc > seen {
                    new.push(r.clone());
                }
            }
            if total < seen {
                new = now.clone(); // rotated past us: print what is there
            }
            emit(&lines(&new), args.timestamps);
            seen = total;
        }
        if !live {
            break;
        }
    }
    Ok(0)
}
