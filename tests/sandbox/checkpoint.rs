//! `brig checkpoint create|ls|rm` and `brig start --checkpoint` (issue 11, part 3): a
//! running sandbox saved to disk and resumed where it was.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{fixture, json, one_line_error, ticks};
use crate::common::fixture::{check, eventually, stdout};

/// The body of `GET /` on the host's port `port`, or why not.
fn http_get(port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    Ok(reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string())
}

/// Waits until `name` has logged more than `saved` numbers, then checks they are one count,
/// 1, 2, ..., on from where it was after `what`: nothing lost, nothing repeated, no restart.
fn goes_on(name: &str, saved: usize, what: &str) -> Result<(), String> {
    eventually(120, &format!("the count goes on after {what}"), || {
        ticks(name).len() > saved + 3
    })?;
    let after = ticks(name);
    let expected: Vec<u64> = (1..=after.len() as u64).collect();
    if after != expected {
        return Err(format!(
            "after {what} the count is not the saved one going on (saved {saved}): {after:?}"
        ));
    }
    Ok(())
}

pub fn checkpoint_and_resume_a_counter() -> Result<(), String> {
    let f = fixture();
    // Counts, once: a restart would log "run" twice and count from 1 again. A web server
    // on a published port serves a page made once, at the start.
    let script =
        "echo run >> /runs; mkdir -p /www; cat /proc/sys/kernel/random/uuid > /www/index.html; \
                  httpd -p 80 -h /www; i=0; while :; do i=$((i+1)); echo $i; sleep 0.2; done";
    let sb = f.start("counter", &["-p", "18087:80"], &["sh", "-c", script])?;
    f.logged("counter", "3")?;
    let page = http_get(18087)?;
    if page.trim().len() != 36 {
        return Err(format!("the published port served {page:?}, not a UUID"));
    }
    let out = f.brig(&["exec", "counter", "sh", "-c", "echo kept > /kept"]);
    check(out.status.success(), "a file on the overlay", &out)?;

    let out = f.brig(&["checkpoint", "create", "counter", "c1"]);
    check(
        out.status.success() && stdout(&out) == "c1\n",
        "checkpoint create",
        &out,
    )?;
    let out = f.brig(&["inspect", "counter"]);
    check(
        json(&out)?[0]["State"]["Status"] == "exited",
        "a checkpointed sandbox has stopped",
        &out,
    )?;
    let saved = ticks("counter");
    let out = f.brig(&["checkpoint", "ls", "counter"]);
    check(
        stdout(&out).lines().any(|l| l == "c1"),
        "checkpoint ls lists it",
        &out,
    )?;
    let out = f.brig(&["checkpoint", "create", "counter", "c2"]);
    one_line_error(&out, "is not running", "checkpoint of a stopped sandbox")?;
    // The host's clock moves on while the checkpoint waits.
    std::thread::sleep(Duration::from_secs(3));

    let out = f.brig(&["start", "--checkpoint", "c1", "counter"]);
    check(
        out.status.success() && stdout(&out) == "counter\n",
        "start --checkpoint",
        &out,
    )?;
    goes_on("counter", saved.len(), "the resume")?;
    // The network is the sandbox's again (a new TAP, its address given back to the guest),
    // and the server in the guest is the one that was saved.
    let again = http_get(18087)?;
    if again != page {
        return Err(format!(
            "after the resume the published port served {again:?}, not {page:?}"
        ));
    }
    let out = f.brig(&["exec", "counter", "cat", "/runs", "/kept"]);
    check(
        stdout(&out) == "run\nkept\n",
        "the workload did not start again, and the overlay's files are there",
        &out,
    )?;
    let out = f.brig(&["exec", "counter", "date", "+%s"]);
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let guest: u64 = stdout(&out).trim().parse().unwrap_or(0);
    check(
        guest.abs_diff(host) <= 2,
        &format!("the guest's clock is the host's ({host})"),
        &out,
    )?;
    let out = f.brig(&["inspect", "counter"]);
    let v = json(&out)?;
    check(
        v[0]["State"]["Status"] == "running" && v[0]["State"]["StartPath"] == "checkpoint",
        "inspect: running, resumed from a checkpoint",
        &out,
    )?;
    // --leave-running: saved, and going on from there at once.
    let before = ticks("counter").len();
    let out = f.brig(&["checkpoint", "create", "--leave-running", "counter", "c2"]);
    check(
        out.status.success() && stdout(&out) == "c2\n",
        "checkpoint create --leave-running",
        &out,
    )?;
    let out = f.brig(&["inspect", "counter"]);
    check(
        json(&out)?[0]["State"]["Status"] == "running",
        "--leave-running: still running",
        &out,
    )?;
    goes_on("counter", before, "--leave-running")?;
    let out = f.brig(&["checkpoint", "ls", "counter"]);
    check(
        stdout(&out) == "CHECKPOINT NAME\nc1\nc2\n",
        "checkpoint ls lists both, oldest first",
        &out,
    )?;
    let out = f.brig(&["stop", "-t", "1", "counter"]);
    check(out.status.success(), "stop of a resumed sandbox", &out)?;

    // Bad input: one line and 125 each.
    let out = f.brig(&["start", "--checkpoint", "nosuch", "counter"]);
    one_line_error(&out, "has no checkpoint nosuch", "an unknown checkpoint")?;
    let out = f.brig(&["checkpoint", "create", "counter", "../x"]);
    one_line_error(&out, "invalid checkpoint name", "a bad checkpoint name")?;
    let meta = f
        .home
        .join("sandboxes")
        .join(&sb.id)
        .join("checkpoints/c1/checkpoint.json");
    let text = std::fs::read_to_string(&meta).map_err(|e| format!("{meta:?}: {e}"))?;
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    v["brig_version"] = "0.0.0-elsewhere".into();
    std::fs::write(&meta, v.to_string()).map_err(|e| e.to_string())?;
    let out = f.brig(&["start", "--checkpoint", "c1", "counter"]);
    one_line_error(
        &out,
        "made by brig 0.0.0-elsewhere",
        "a checkpoint of another brig",
    )?;
    for c in ["c1", "c2"] {
        let out = f.brig(&["checkpoint", "rm", "counter", c]);
        check(out.status.success(), "checkpoint rm", &out)?;
    }
    let out = f.brig(&["checkpoint", "ls", "counter"]);
    check(
        stdout(&out) == "CHECKPOINT NAME\n",
        "checkpoint ls after rm",
        &out,
    )?;
    drop(sb);
    Ok(())
}
