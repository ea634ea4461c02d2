//! `brig pause` / `unpause` and `brig start` (issue 11, part 3): a paused sandbox's
//! workload makes no progress and its memory stays; a stopped sandbox starts again with the
//! files its workload wrote.

use std::path::Path;
use std::time::Duration;

use super::{fixture, json, one_line_error, ticks};
use crate::common::fixture::{check, eventually, process_gone, stderr, stdout};

pub fn pause_unpause_and_start_again() -> Result<(), String> {
    let f = fixture();
    // Counts, and appends one line per run to a file on its overlay.
    let script = "echo run >> /runs; i=0; while :; do i=$((i+1)); echo $i; sleep 0.2; done";
    let sb = f.start("ticker", &[], &["sh", "-c", script])?;
    f.logged("ticker", "3")?;

    let out = f.brig(&["pause", "ticker"]);
    check(
        out.status.success() && stdout(&out) == "ticker\n",
        "pause",
        &out,
    )?;
    let out = f.brig(&["ps"]);
    check(
        stdout(&out)
            .lines()
            .any(|l| l.ends_with(" ticker") && l.contains("(Paused)")),
        "ps: Up ... (Paused)",
        &out,
    )?;
    let out = f.brig(&["inspect", "ticker"]);
    let v = json(&out)?;
    check(
        v[0]["State"]["Status"] == "paused"
            && v[0]["State"]["Paused"] == true
            && v[0]["State"]["Running"] == true,
        "inspect: paused, still running",
        &out,
    )?;
    // What was on its way to the log when it froze has landed after a moment; then nothing.
    std::thread::sleep(Duration::from_millis(500));
    let frozen = ticks("ticker");
    std::thread::sleep(Duration::from_secs(3));
    let later = ticks("ticker");
    if later != frozen {
        return Err(format!(
            "a paused sandbox went on counting: {} lines, then {} three seconds later",
            frozen.len(),
            later.len()
        ));
    }
    let out = f.brig(&["exec", "ticker", "true"]);
    one_line_error(&out, "is paused", "exec into a paused sandbox")?;
    let out = f.brig(&["pause", "ticker"]);
    check(
        out.status.code() == Some(1) && stderr(&out).contains("already paused"),
        "pause of a paused sandbox: docker's error",
        &out,
    )?;
    let out = f.brig(&["stats", "--no-stream", "--format", "json", "ticker"]);
    let rows = json(&out)?;
    check(
        rows[0]["Paused"] == true
            && rows[0]["VmmPss"].as_u64() > Some(0)
            && rows[0]["VmmPss"].as_u64() <= rows[0]["VmmRss"].as_u64(),
        "stats of a paused sandbox: the VMM's memory (PSS within RSS), no guest sample",
        &out,
    )?;

    let out = f.brig(&["unpause", "ticker"]);
    check(out.status.success(), "unpause", &out)?;
    let last = frozen.last().copied().unwrap_or(0);
    eventually(60, "counting goes on after unpause", || {
        ticks("ticker").last().copied().unwrap_or(0) > last + 2
    })?;
    // Memory stayed: the count goes on from where it was, not from 1.
    let after = ticks("ticker");
    let resumed = after.get(frozen.len()).copied();
    check(
        resumed == Some(last + 1),
        &format!("the count resumed at {} (after {last})", last + 1),
        &out,
    )?;
    let out = f.brig(&["exec", "ticker", "cat", "/runs"]);
    check(stdout(&out) == "run\n", "exec after unpause", &out)?;
    let out = f.brig(&["unpause", "ticker"]);
    check(
        out.status.code() == Some(1) && stderr(&out).contains("not paused"),
        "unpause of a running sandbox: docker's error",
        &out,
    )?;

    // A paused sandbox stops (it is resumed to get its signal, as docker does).
    let out = f.brig(&["pause", "ticker"]);
    check(out.status.success(), "pause again", &out)?;
    let out = f.brig(&["stop", "-t", "2", "ticker"]);
    check(out.status.success(), "stop of a paused sandbox", &out)?;
    let out = f.brig(&["inspect", "ticker"]);
    let v = json(&out)?;
    check(
        v[0]["State"]["Status"] == "exited" && v[0]["State"]["Paused"] == false,
        "inspect: exited, not paused",
        &out,
    )?;

    // start: the same workload again, on the overlay it left.
    let out = f.brig(&["start", "ticker"]);
    check(
        out.status.success() && stdout(&out) == "ticker\n",
        "start",
        &out,
    )?;
    let out = f.brig(&["exec", "ticker", "cat", "/runs"]);
    check(
        stdout(&out) == "run\nrun\n",
        "start keeps the overlay: the file has both runs' lines",
        &out,
    )?;
    eventually(60, "the second run counts in the same log", || {
        ticks("ticker").iter().filter(|&&n| n == 2).count() == 2
    })?;
    let out = f.brig(&["start", "ticker"]);
    check(
        out.status.success() && stdout(&out) == "ticker\n",
        "start of a running sandbox: nothing to do",
        &out,
    )?;
    drop(sb);

    // A paused sandbox is removed with rm -f, leaving nothing behind (its frozen cgroup too).
    let doomed = f.start("frozen", &[], &[])?;
    let out = f.brig(&["pause", "frozen"]);
    check(out.status.success(), "pause frozen", &out)?;
    let out = f.brig(&["inspect", "frozen"]);
    let pid = json(&out)?[0]["State"]["Pid"].as_u64().unwrap_or(0) as u32;
    let out = f.brig(&["rm", "-f", "frozen"]);
    check(out.status.success(), "rm -f of a paused sandbox", &out)?;
    eventually(30, "its VMM is gone", || process_gone(pid))?;
    let short = &doomed.id[..12];
    let left: Vec<String> = f
        .leftovers()
        .into_iter()
        .filter(|d| d.contains(short))
        .collect();
    let cgroup = Path::new("/sys/fs/cgroup/brig").join(short);
    if !left.is_empty() || cgroup.exists() {
        return Err(format!(
            "rm -f of a paused sandbox left {left:?} (cgroup there: {})",
            cgroup.exists()
        ));
    }
    let out = f.brig(&["start", "nonesuch"]);
    one_line_error(&out, "no such sandbox", "start of an unknown sandbox")
}
