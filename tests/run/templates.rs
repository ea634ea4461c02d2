//! Templates: `brig run` restores a saved, booted guest instead of booting one. Runs here use
//! `--network none` unless they test the network device's template.

use std::path::PathBuf;
use std::process::Output;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::fixture::{check, eventually, sha256_of, stderr, stdout};
use crate::common::procs;
use crate::fixture;

const TEMPLATE_PATH: &str = "path           restored from a template";
/// What `--timings` adds when a restore mapped the template's working set ahead of the vCPUs.
const WORKING_SET_USED: &str = "pages of its working set";

/// `brig run --rm --network none ARGS` with BRIG_TIMINGS=1 (the path taken is on stderr).
fn run(args: &[&str]) -> Output {
    let mut all = vec!["run", "--rm", "--timeout", "600", "--network", "none"];
    all.extend_from_slice(args);
    procs::output(fixture().cmd(&all).env("BRIG_TIMINGS", "1"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The template directories of the fixture's store.
fn templates() -> Vec<PathBuf> {
    let store = fixture().home.join("templates");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(store)
        .map(|e| e.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.retain(|d| {
        d.join("state").is_file() && !d.file_name().unwrap().to_string_lossy().starts_with('.')
    });
    dirs
}

/// Two sandboxes restored from one template are different machines: their RNG output and
/// UUIDs differ, their clocks are the host's (not the template's, saved seconds before), and
/// the template's memory file is never written.
pub fn restored_guests_are_unique_and_on_time() -> Result<(), String> {
    // A small guest (its memory file is hashed under emulation): a template of its own.
    let small = ["-m", "64m", "bb"];
    let probe = "cat /proc/sys/kernel/random/uuid; head -c 16 /dev/urandom | od -An -tx1; date +%s";
    let out = run(&[&small[..], &["true"]].concat());
    check(
        out.status.success(),
        "the first run (makes the template)",
        &out,
    )?;
    let memory = templates()
        .into_iter()
        .map(|d| d.join("memory"))
        .find(|m| {
            std::fs::metadata(m).is_ok_and(|m| m.len() == 128 << 20) // 64 MiB + 64 MiB
        })
        .ok_or("no 128 MiB template was made")?;
    let before = sha256_of(&memory)?;
    let dir = memory.parent().ok_or("no template directory")?;
    check(
        dir.join("workingset").is_file(),
        "the first run, restored from the template it made, recorded its working set",
        &out,
    )?;
    // Time for the template's own clock to fall visibly behind the host's.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let mut seen = Vec::new();
    for round in 1..=2 {
        let host_before = now_secs();
        let out = run(&[&small[..], &["sh", "-c", probe]].concat());
        let host_after = now_secs();
        check(out.status.success(), "a probe run", &out)?;
        check(
            stderr(&out).contains(TEMPLATE_PATH),
            &format!("run {round} restored the template"),
            &out,
        )?;
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        check(lines.len() == 3, "uuid, random bytes, date", &out)?;
        let guest: u64 = lines[2].trim().parse().map_err(|e| format!("date: {e}"))?;
        check(
            guest + 2 >= host_before && guest <= host_after + 2,
            &format!("guest clock {guest} within 2 s of the host's [{host_before}, {host_after}]"),
            &out,
        )?;
        seen.push((lines[0].to_string(), lines[1].to_string()));
        // The first run's restore recorded which pages it touched; later ones map them ahead.
        check(
            stderr(&out).contains(WORKING_SET_USED),
            &format!("run {round} mapped the template's working set ahead"),
            &out,
        )?;
    }
    if seen[0].0 == seen[1].0 || seen[0].1 == seen[1].1 {
        return Err(format!("two restored guests repeated each other: {seen:?}"));
    }
    let after = sha256_of(&memory)?;
    if before != after {
        return Err(format!(
            "the template's memory changed: {before} -> {after}"
        ));
    }
    Ok(())
}

/// The same workload gives the same output and exit code restored and cold-booted: the
/// image, the scratch overlay, the user, the environment and the disks' sizes.
pub fn cold_and_restored_runs_agree() -> Result<(), String> {
    let script = "id; echo $PATH $HOME; ls /; echo written > /tmp/f; cat /tmp/f; \
                  cat /sys/block/vda/size /sys/block/vdb/size; cat /proc/cpuinfo | grep -c ^processor; \
                  exit 5";
    let restored = run(&["-e", "X=1", "bb", "sh", "-c", script]);
    let cold = run(&["--cold", "-e", "X=1", "bb", "sh", "-c", script]);
    check(
        stderr(&restored).contains(TEMPLATE_PATH),
        "the default path restores a template",
        &restored,
    )?;
    check(
        stderr(&cold).contains("path           cold boot (templates are off)"),
        "--cold boots",
        &cold,
    )?;
    for out in [&restored, &cold] {
        check(
            out.status.code() == Some(5),
            "the workload's exit code",
            out,
        )?;
        check(
            stdout(out).contains("written\n"),
            "the overlay is writable",
            out,
        )?;
    }
    if stdout(&restored) != stdout(&cold) {
        return Err(format!(
            "restored and cold runs differ:\n--- restored\n{}--- cold\n{}",
            stdout(&restored),
            stdout(&cold)
        ));
    }
    // A run with a network device (the default bridge) restores a template made with the
    // device unwired; its guest gets the sandbox's own MAC address, not the template's.
    let out = procs::output(
        fixture()
            .cmd(&["run", "--rm", "bb", "cat", "/sys/class/net/eth0/address"])
            .env("BRIG_TIMINGS", "1"),
    );
    let mac = stdout(&out).trim().to_string();
    check(
        out.status.success()
            && stderr(&out).contains(TEMPLATE_PATH)
            && mac.len() == 17
            && mac != "02:00:00:00:00:01",
        "a networked run restores a template, with a MAC address of its own",
        &out,
    )?;
    // A run with a volume restores a template too (one made with a virtio-fs device, mapped
    // copy-on-write: the file server sees only the device's bounce buffers), and sees the
    // share.
    let dir = PathBuf::from("/run/brig-run-templates-volume");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("f"), "shared\n").map_err(|e| e.to_string())?;
    let volume = format!("{}:/data", dir.display());
    let _ = run(&["-v", &volume, "bb", "true"]); // makes the template, if none yet
    let out = run(&["-v", &volume, "bb", "cat", "/data/f"]);
    let _ = std::fs::remove_dir_all(&dir);
    check(
        out.status.success() && stdout(&out) == "shared\n" && stderr(&out).contains(TEMPLATE_PATH),
        "a run with a volume restores a template and sees the share",
        &out,
    )
}

/// Flips one bit in the middle of the file at `path` (damage its checksum catches).
fn flip_a_bit(path: &std::path::Path) -> Result<(), String> {
    let mut bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    std::fs::write(path, &bytes).map_err(|e| e.to_string())
}

/// `out`, a run that printed "still runs" after a template it should have restored failed:
/// it succeeded, by booting cold, and one line (saying `why`) told so.
fn still_ran_cold(out: &Output, why: &str) -> Result<(), String> {
    check(
        out.status.success() && stdout(out) == "still runs\n",
        "the run succeeds",
        out,
    )?;
    let err = stderr(out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("brig:")).collect();
    check(
        warnings.len() == 1 && warnings[0].contains(why),
        "one line says why the template was not used",
        out,
    )?;
    check(
        err.contains("cold boot (restoring the template failed"),
        "the run booted cold",
        out,
    )
}

/// A damaged template is reported in one line, the run still succeeds by booting cold, and
/// the next run makes the template again and restores it.
pub fn a_damaged_template_is_rebuilt() -> Result<(), String> {
    let out = run(&["bb", "true"]);
    check(
        out.status.success(),
        "a run that makes or finds the template",
        &out,
    )?;
    for dir in templates() {
        flip_a_bit(&dir.join("state"))?;
    }
    let out = run(&["bb", "echo", "still runs"]);
    still_ran_cold(&out, "snapshot is corrupt: checksum mismatch")?;
    let out = run(&["bb", "true"]);
    check(
        out.status.success() && stderr(&out).contains(TEMPLATE_PATH),
        "the next run makes the template again and restores it",
        &out,
    )?;
    // A damaged working set costs only speed: the run restores without it, silently, and
    // records it again for the next.
    let out = run(&["bb", "true"]);
    check(
        out.status.success(),
        "a run that records the working set",
        &out,
    )?;
    let mut damaged = 0;
    for dir in templates() {
        let set = dir.join("workingset");
        if set.is_file() {
            flip_a_bit(&set)?;
            damaged += 1;
        }
    }
    if damaged == 0 {
        return Err("no template has a working set after two restored runs".into());
    }
    let out = run(&["bb", "echo", "still runs"]);
    check(
        out.status.success()
            && stdout(&out) == "still runs\n"
            && stderr(&out).contains(TEMPLATE_PATH)
            && !stderr(&out).contains(WORKING_SET_USED)
            && !stderr(&out).lines().any(|l| l.starts_with("brig:")),
        "a run with a damaged working set restores without it, saying nothing",
        &out,
    )?;
    let out = run(&["bb", "true"]);
    check(
        out.status.success() && stderr(&out).contains(WORKING_SET_USED),
        "the working set was recorded again and the next run uses it",
        &out,
    )
}

/// Zeroes `len` bytes of `path` from `offset` on.
fn zero_range(path: &std::path::Path, offset: u64, len: usize) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all_at(&vec![0u8; len], offset)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A template that passes every check but whose guest does not come back (its kernel's
/// memory zeroed here: a bad disk, a bug) costs the run a cold boot, not the run: brig
/// starts over with the sandbox's host side made anew (the jailed VMM's sockets, and the
/// file server of a shared directory, which serves one VM only), says so in one line,
/// discards the template, and the next run makes it again and restores it.
pub fn a_template_whose_guest_dies_is_rebuilt() -> Result<(), String> {
    let share = PathBuf::from("/dev/shm/brig-tpl-dies");
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(&share).map_err(|e| e.to_string())?;
    // Guest files in a root-owned share belong to nobody on the host: let nobody write.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| e.to_string())?;
    let vol = format!("{}:/data", share.display());
    // The first run makes the template, or finds one (which an earlier case may have
    // damaged: that run then boots cold and discards it); the second restores it.
    let out = run(&["-v", &vol, "bb", "true"]);
    check(out.status.success(), "a run with a volume", &out)?;
    let out = run(&["-v", &vol, "bb", "true"]);
    check(
        out.status.success() && stderr(&out).contains(TEMPLATE_PATH),
        "a run with a volume restores its template",
        &out,
    )?;
    // The templates with a shared directory: this shape's.
    let with_share: Vec<PathBuf> = templates()
        .into_iter()
        .filter(|d| {
            std::fs::read_to_string(d.join("key.json")).is_ok_and(|k| k.contains("brig-vol0"))
        })
        .collect();
    if with_share.is_empty() {
        return Err("no template with a shared directory was made".into());
    }
    for dir in &with_share {
        // The guest kernel lies at 16 MiB of guest memory, the memory file's first region.
        zero_range(&dir.join("memory"), 16 << 20, 32 << 20)?;
    }
    let out = run(&[
        "-v",
        &vol,
        "bb",
        "sh",
        "-c",
        "echo written > /data/f; echo still runs",
    ]);
    still_ran_cold(&out, "restoring the template failed")?;
    check(
        std::fs::read_to_string(share.join("f")).is_ok_and(|t| t == "written\n"),
        "the cold boot's guest wrote through the volume to the host",
        &out,
    )?;
    check(
        with_share.iter().all(|d| !d.join("memory").exists()),
        "the template was discarded",
        &out,
    )?;
    let out = run(&["-v", &vol, "bb", "cat", "/data/f"]);
    check(
        out.status.success() && stdout(&out) == "written\n" && stderr(&out).contains(TEMPLATE_PATH),
        "the next run makes the template again and restores it",
        &out,
    )?;
    let _ = std::fs::remove_dir_all(&share);
    Ok(())
}

/// A detached sandbox restores the template too, with its VMM jailed: `inspect` says so,
/// `exec` and `logs` work in it, and `rm -f` leaves nothing behind.
pub fn detached_jailed_sandboxes_restore_templates() -> Result<(), String> {
    let f = fixture();
    let out = run(&["bb", "true"]);
    check(out.status.success(), "a run that makes the template", &out)?;
    let out = f.brig(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "tpl-detached",
        "bb",
        "sh",
        "-c",
        "echo up; sleep 1000",
    ]);
    check(out.status.success(), "run -d", &out)?;
    let id = stdout(&out).trim().to_string();
    let result = (|| {
        eventually(120, "the workload logs", || {
            stdout(&f.brig(&["logs", "tpl-detached"])) == "up\n"
        })?;
        let out = f.brig(&["inspect", "tpl-detached"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("inspect: {e}"))?;
        check(
            v[0]["State"]["StartPath"] == "template",
            "inspect: State.StartPath is template",
            &out,
        )?;
        check(
            v[0]["VmmConfinement"]["Jail"]["Namespaces"]
                .as_array()
                .is_some_and(|a| a.contains(&"pid".into())),
            "inspect: the VMM is jailed",
            &out,
        )?;
        let out = f.brig(&["exec", "tpl-detached", "sh", "-c", "echo in; exit 4"]);
        check(
            out.status.code() == Some(4) && stdout(&out) == "in\n",
            "exec into the restored sandbox",
            &out,
        )
    })();
    let out = f.brig(&["rm", "-f", "tpl-detached"]);
    result?;
    check(out.status.success(), "rm -f", &out)?;
    let left: Vec<String> = f
        .leftovers()
        .into_iter()
        .filter(|d| d.contains(&id[..12.min(id.len())]))
        .collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("rm -f left {left:?}"))
    }
}
