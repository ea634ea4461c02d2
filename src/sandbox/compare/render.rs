//! A comparison as a table (for a terminal), JSON (stable keys) or a self-contained HTML page
//! with an inline SVG bar chart of start time and memory.

use super::facts::PROBES;
use super::Report;

fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    })
}

/// One side's cell of a row: what it saw, the verdict, whether a host resource was reached.
type Cell = (String, String, bool);

/// The rows: (label, one cell per side).
fn rows(r: &Report) -> Vec<(String, Vec<Cell>)> {
    let mut rows = vec![(
        "network (each side's own)".to_string(),
        r.sides
            .iter()
            .map(|s| (s.network.clone(), "as its runtime gives".into(), false))
            .collect(),
    )];
    rows.extend(PROBES.iter().map(|(key, label)| {
        let cells = r
            .sides
            .iter()
            .map(|s| {
                s.probes
                    .get(*key)
                    .map_or(("-".into(), "-".into(), false), |a| {
                        (a.saw.clone(), a.verdict.clone(), a.host_exposed)
                    })
            })
            .collect();
        (label.to_string(), cells)
    }));
    rows.push((
        "start time (runtime to probe)".into(),
        r.sides
            .iter()
            .map(|s| (format!("{:.0} ms", s.start_ms), "measured".into(), false))
            .collect(),
    ));
    rows.push((
        "host kernel functions run (HAP)".into(),
        r.sides
            .iter()
            .map(|s| match (s.hap.functions, s.hap.total) {
                (Some(n), Some(t)) if n != t => {
                    (format!("{n} ({t} with idle)"), s.hap.note.clone(), false)
                }
                (Some(n), _) => (n.to_string(), s.hap.note.clone(), false),
                _ => ("-".into(), s.hap.note.clone(), false),
            })
            .collect(),
    ));
    rows.push((
        "memory (peak, host)".into(),
        r.sides
            .iter()
            .map(|s| (mib(s.memory_bytes), "measured".into(), false))
            .collect(),
    ));
    rows
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// A plain-text table: one row per probe, per side what it saw and the verdict (`!` marks
/// a host resource the workload reached).
pub fn table(r: &Report) -> String {
    let rows = rows(r);
    let mut head = vec!["PROBE".to_string()];
    for s in &r.sides {
        head.push(format!("{} SAW", s.runtime.to_uppercase()));
        head.push(format!("{} VERDICT", s.runtime.to_uppercase()));
    }
    let mut lines = vec![head];
    for (label, cells) in &rows {
        let mut line = vec![label.clone()];
        for (saw, verdict, exposed) in cells {
            line.push(clip(saw, 28));
            let mark = if *exposed { "! " } else { "" };
            line.push(clip(&format!("{mark}{verdict}"), 40));
        }
        lines.push(line);
    }
    let cols = lines[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "image {}; host kernel {}; '!' = a host resource reachable from the workload\n",
        r.image,
        r.host.get("kernel.release").map_or("-", String::as_str)
    ));
    out
}

/// The report as JSON: `image`, `host` (the probe's facts on the host) and `sides`, each with
/// `runtime`, `start_ms`, `memory_bytes`, `probes` (key → `saw`, `verdict`, `host_exposed`)
/// and `facts`.
pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|_| "{}".into()) + "\n"
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Horizontal bars, one group per metric, one bar per side.
fn svg(r: &Report) -> String {
    let metrics: Vec<(&str, Vec<f64>, &str)> = vec![
        (
            "start time",
            r.sides.iter().map(|s| s.start_ms).collect(),
            "ms",
        ),
        (
            "memory",
            r.sides
                .iter()
                .map(|s| s.memory_bytes.unwrap_or(0) as f64 / (1 << 20) as f64)
                .collect(),
            "MiB",
        ),
    ];
    let mut metrics = metrics;
    if r.sides.iter().all(|s| s.hap.functions.is_some()) {
        metrics.push((
            "host kernel functions",
            r.sides
                .iter()
                .map(|s| s.hap.functions.unwrap_or(0) as f64)
                .collect(),
            "",
        ));
    }
    let colors = ["#4e79a7", "#e15759", "#59a14f"];
    let (w, bar, gap) = (640.0, 22.0, 34.0);
    let mut y = 10.0;
    let mut body = String::new();
    for (name, values, unit) in &metrics {
        body.push_str(&format!(
            "<text x=\"0\" y=\"{:.0}\" font-weight=\"bold\">{name}</text>",
            y + 14.0
        ));
        y += 22.0;
        let max = values.iter().copied().fold(0.0_f64, f64::max).max(1e-9);
        for (i, v) in values.iter().enumerate() {
            let len = (v / max) * (w - 260.0);
            body.push_str(&format!(
                "<text x=\"0\" y=\"{:.0}\">{}</text><rect x=\"90\" y=\"{y:.0}\" width=\"{len:.1}\" height=\"{bar}\" fill=\"{}\"/><text x=\"{:.0}\" y=\"{:.0}\">{v:.1} {unit}</text>",
                y + 16.0,
                esc(&r.sides[i].runtime),
                colors[i % colors.len()],
                96.0 + len,
                y + 16.0
            ));
            y += bar + 6.0;
        }
        y += gap - 20.0;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{:.0}\" font-family=\"sans-serif\" font-size=\"13\">{body}</svg>",
        y + 10.0
    )
}

/// A self-contained HTML page: the table and the chart.
pub fn html(r: &Report) -> String {
    let mut t = String::from("<table><tr><th>probe</th>");
    for s in &r.sides {
        t.push_str(&format!(
            "<th>{} saw</th><th>{} verdict</th>",
            esc(&s.runtime),
            esc(&s.runtime)
        ));
    }
    t.push_str("</tr>\n");
    for (label, cells) in rows(r) {
        t.push_str(&format!("<tr><td>{}</td>", esc(&label)));
        for (saw, verdict, exposed) in cells {
            let class = if exposed { "exposed" } else { "held" };
            t.push_str(&format!(
                "<td>{}</td><td class=\"{class}\">{}</td>",
                esc(&saw),
                esc(&verdict)
            ));
        }
        t.push_str("</tr>\n");
    }
    t.push_str("</table>");
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>brig compare {img}</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px}}.exposed{{background:#f8d0d0}}.held{{background:#d8f0d8}}</style></head>\n<body><h1>brig compare: {img}</h1>\n<p>Host kernel {kernel}. Red: a host resource the workload reached; green: the boundary held.</p>\n{t}\n<h2>Start time, memory and host kernel functions</h2>\n{svg}\n</body></html>\n",
        img = esc(&r.image),
        kernel = esc(r.host.get("kernel.release").map_or("-", String::as_str)),
        svg = svg(r),
    )
}

#[cfg(test)]
mod tests {
    use super::super::facts::{judge, parse};
    use super::super::Side;
    use super::*;

    fn report() -> Report {
        let host = parse("kernel.release\t6.1\nkernel.boot_id\th\ncaps.eff\t1ff\n");
        let side = |name: &str, text: &str, ms: f64| {
            let facts = parse(text);
            Side {
                runtime: name.into(),
                start_ms: ms,
                memory_bytes: Some(4 << 20),
                network: "veth".into(),
                hap: super::super::hap::Hap::unavailable("test"),
                probes: judge(&facts, &host),
                facts,
            }
        };
        Report {
            image: "img<&>".into(),
            sides: vec![
                side("runc", "kernel.release\t6.1\nkernel.boot_id\th\n", 100.0),
                side("brig", "kernel.release\t6.12\nkernel.boot_id\tg\n", 300.0),
            ],
            host,
        }
    }

    #[test]
    fn table_has_a_row_per_probe_and_marks_the_host_kernel() {
        let t = table(&report());
        assert_eq!(t.lines().count(), 1 + 1 + PROBES.len() + 3 + 1);
        let kernel = t.lines().nth(2).unwrap();
        assert!(kernel.contains("! host's kernel") && kernel.ends_with("own guest kernel"));
    }

    #[test]
    fn json_keeps_its_keys() {
        let v: serde_json::Value = serde_json::from_str(&json(&report())).unwrap();
        assert_eq!(v["sides"][1]["runtime"], "brig");
        assert_eq!(
            v["sides"][1]["probes"]["kernel"]["verdict"],
            "own guest kernel"
        );
        assert_eq!(v["sides"][0]["probes"]["kernel"]["host_exposed"], true);
        assert_eq!(v["sides"][0]["memory_bytes"], 4 << 20);
        assert_eq!(v["host"]["kernel.release"], "6.1");
    }

    #[test]
    fn html_is_escaped_and_has_a_chart() {
        let h = html(&report());
        assert!(h.contains("img&lt;&amp;&gt;") && !h.contains("img<&>"));
        assert!(h.contains("<svg") && h.matches("<rect").count() == 4);
        assert!(h.contains("<td class=\"exposed\">host's kernel</td>"));
    }
}
