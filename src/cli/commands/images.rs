//! `brig images`: list local images (table, or `--format json`).

use std::collections::BTreeMap;

use clap::{Args, ValueEnum};

use crate::cli::CliError;
use crate::image::{names, Store};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Print image IDs only.
    #[arg(short, long)]
    pub quiet: bool,
}

/// One row of the listing.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    repository: String,
    tag: String,
    #[serde(rename = "ID")]
    id: String,
    digest: String,
    created_at: String,
    created_since: String,
    size: u64,
    rootfs: String,
}

pub fn run(args: ImagesArgs) -> Result<i32, CliError> {
    let store = Store::open_default()?;
    let mut entries = names::load(&store)?;
    entries.sort_by(|a, b| b.added.cmp(&a.added).then(a.repository.cmp(&b.repository)));
    let mut sizes: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut rows = Vec::new();
    let now = now_secs();
    for n in &entries {
        let (size, created) = sizes
            .entry(n.manifest.hex().to_string())
            .or_insert_with(|| match store.record(&n.manifest) {
                Ok(r) => {
                    let size = std::fs::metadata(&r.rootfs_path)
                        .map(|m| m.len())
                        .unwrap_or_else(|_| r.layers.iter().map(|l| l.size).sum());
                    (size, r.created.unwrap_or_default())
                }
                Err(_) => (0, String::new()),
            })
            .clone();
        let repository = if n.repository.is_empty() {
            "<none>".to_string()
        } else {
            crate::image::Reference::parse(&n.repository)
                .map(|r| r.familiar_name())
                .unwrap_or_else(|_| n.repository.clone())
        };
        rows.push(Row {
            repository,
            tag: n.tag.clone().unwrap_or_else(|| "<none>".into()),
            id: n.config.to_string(),
            digest: n
                .index
                .clone()
                .unwrap_or_else(|| n.manifest.clone())
                .to_string(),
            created_since: parse_rfc3339(&created)
                .map(|t| since(now, t))
                .unwrap_or_else(|| "N/A".into()),
            created_at: created,
            size,
            rootfs: store.rootfs_path(&n.manifest).display().to_string(),
        });
    }
    if args.quiet {
        let mut seen = std::collections::HashSet::new();
        for r in &rows {
            if seen.insert(r.id.clone()) {
                println!("{}", &r.id[7..19]);
            }
        }
        return Ok(0);
    }
    match args.format {
        Format::Json => {
            let text =
                serde_json::to_string_pretty(&rows).map_err(|e| CliError::new(e.to_string()))?;
            println!("{text}");
        }
        Format::Table => {
            let table: Vec<[String; 5]> = rows
                .iter()
                .map(|r| {
                    [
                        r.repository.clone(),
                        r.tag.clone(),
                        r.id[7..19].to_string(),
                        r.created_since.clone(),
                        human_size(r.size),
                    ]
                })
                .collect();
            let header = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"].map(String::from);
            let mut widths = header.clone().map(|h| h.len());
            for row in &table {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.chars().count());
                }
            }
            for row in std::iter::once(&header).chain(table.iter()) {
                let mut line = String::new();
                for (i, (c, w)) in row.iter().zip(widths).enumerate() {
                    if i + 1 == row.len() {
                        line.push_str(c);
                    } else {
                        line.push_str(&format!("{c:<w$}   "));
                    }
                }
                println!("{}", line.trim_end());
            }
        }
    }
    Ok(0)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Sizes as docker prints them (decimal units): `4.26MB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{:.3}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + UNITS[u]
    }
}

/// "3 days ago", as docker prints ages.
fn since(now: i64, t: i64) -> String {
    let d = (now - t).max(0);
    let (n, unit) = match d {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (d / 60, "minute"),
        3600..=86399 => (d / 3600, "hour"),
        86400..=1209599 => (d / 86400, "day"),
        1209600..=5183999 => (d / 604800, "week"),
        5184000..=63071999 => (d / 2592000, "month"),
        _ => (d / 31536000, "year"),
    };
    if n == 1 {
        let article = if unit == "hour" { "An" } else { "A" };
        format!("{article} {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2024-05-01T10:00:00.123Z`, `+02:00`).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" | "" => 0,
        r if r.len() == 6 && (r.starts_with('+') || r.starts_with('-')) => {
            let sign = if r.starts_with('-') { -1 } else { 1 };
            sign * (r.get(1..3)?.parse::<i64>().ok()? * 3600
                + r.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + sec - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_docker() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_260_000), "4.26MB");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00.5Z"), Some(1_704_067_200));
        assert_eq!(
            parse_rfc3339("2024-01-01T02:00:00+02:00"),
            Some(1_704_067_200)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(since(100_000, 100_000 - 3 * 86400), "3 days ago");
    }
}
