//! Volumes end to end: `-v` host directories shared live over virtio-fs both ways, `:ro`
//! held on the host side, escape attempts, device nodes and setuid files, ownership, named
//! volumes (`brig volume`, copy-up, in use), `--tmpfs`, a single-file `-v`, bad input, and no
//! file server left however a sandbox ends.
//! Needs KVM: runs under scripts/with-kvm where this host has none usable (see
//! common/kvm.rs), and as root there. Shared directories live on a tmpfs (/dev/shm) in L1.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::fixture::{check, eventually, pids_whose_cmdline, stderr, stdout, Fixture};
use common::images;
use common::kvm::{run_tests_with, trial, Limits};

/// The owner of the shared directories, as a CI user's checkout would be.
const OWNER: u32 = 1000;

use images::layouts_dir;

fn prepare() {
    images::fresh_busybox_layouts();
}

fn fixture() -> &'static Fixture {
    Fixture::shared("vol", &[("bb", layouts_dir().join("bb"))])
}

fn setup() {
    fixture();
}

impl Fixture {
    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["run", "--rm", "--network", "none", "--timeout", "600"];
        all.extend_from_slice(args);
        self.brig(&all)
    }
}

/// A fresh directory on L1's tmpfs owned by [`OWNER`], with a marker file beside it (outside
/// the share) that no guest may read.
fn share(name: &str) -> (PathBuf, PathBuf) {
    let base = Path::new("/dev/shm").join(format!("brig-vol-{name}"));
    let _ = std::fs::remove_dir_all(&base);
    let dir = base.join("share");
    std::fs::create_dir_all(&dir).unwrap();
    let marker = base.join("secret");
    std::fs::write(&marker, "HOST-SECRET\n").unwrap();
    std::os::unix::fs::chown(&dir, Some(OWNER), Some(OWNER)).unwrap();
    (dir, marker)
}

fn setuid_root(meta: &std::fs::Metadata) -> bool {
    meta.uid() == 0 && meta.permissions().mode() & 0o4000 != 0
}

/// The virtiofsd processes serving this fixture's sandboxes.
fn servers() -> Vec<u32> {
    let runtime = fixture().runtime.display().to_string();
    pids_whose_cmdline(|c| c.contains("virtiofsd") && c.contains(&runtime))
}

fn live_sharing_both_ways() -> Result<(), String> {
    let f = fixture();
    let (dir, _) = share("live");
    let vol = format!("{}:/data", dir.display());
    let out = f.brig(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "live",
        "-v",
        &vol,
        "bb",
        "sleep",
        "600",
    ]);
    check(out.status.success(), "run -d -v", &out)?;
    let result = (|| {
        let out = f.brig(&["inspect", "live"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        check(
            v[0]["State"]["StartPath"] == "template",
            "a sandbox with a volume is restored from a template",
            &out,
        )?;
        // Host to guest while both run.
        std::fs::write(dir.join("from-host"), "hello from the host\n").unwrap();
        let out = f.brig(&["exec", "live", "cat", "/data/from-host"]);
        check(
            stdout(&out) == "hello from the host\n",
            "a host write is seen in the guest",
            &out,
        )?;
        // Guest to host: files, modes, mtimes, links, renames, a large sparse file.
        let script = "set -e; cd /data
            echo from-guest > g.txt; chmod 640 g.txt; touch -d '2001-02-03 04:05:06' g.txt
            mkdir -p d/e; echo x > d/e/f; mv d/e/f d/e/renamed
            ln -s g.txt sym; ln g.txt hard
            truncate -s 5G big; echo tail >> big; sync big
            stat -c '%u %a' g.txt";
        let out = f.brig(&["exec", "live", "sh", "-c", script]);
        check(out.status.success(), "guest writes", &out)?;
        let g = dir.join("g.txt");
        let meta = std::fs::metadata(&g).map_err(|e| e.to_string())?;
        let want = (
            "from-guest\n".to_string(),
            0o640,
            OWNER,
            981_173_106,
            PathBuf::from("g.txt"),
        );
        let got = (
            std::fs::read_to_string(&g).unwrap_or_default(),
            meta.mode() & 0o7777,
            meta.uid(),
            meta.mtime(),
            std::fs::read_link(dir.join("sym")).unwrap_or_default(),
        );
        if got != want {
            return Err(format!("on the host: {got:?}, want {want:?}"));
        }
        let hard = std::fs::metadata(dir.join("hard")).map_err(|e| e.to_string())?;
        let big = std::fs::metadata(dir.join("big")).map_err(|e| e.to_string())?;
        if hard.ino() != meta.ino()
            || !dir.join("d/e/renamed").is_file()
            || dir.join("d/e/f").exists()
            || big.len() != (5 << 30) + 5
            || big.blocks() > 64
        {
            return Err(format!(
                "links/rename/sparse: hard ino {} vs {}, big {} bytes in {} blocks",
                hard.ino(),
                meta.ino(),
                big.len(),
                big.blocks()
            ));
        }
        // Files the guest's root made belong to the directory's owner on the host.
        check(
            stdout(&out) == format!("{OWNER} 640\n"),
            "the guest sees the owner's uid too",
            &out,
        )
    })();
    let rm = f.brig(&["rm", "-f", "live"]);
    result?;
    check(rm.status.success(), "rm -f", &rm)?;
    eventually(30, "no file server after rm -f", || servers().is_empty())
}

fn read_only_escapes_devices_and_setuid() -> Result<(), String> {
    let f = fixture();
    let (dir, marker) = share("esc");
    // Planted by the host: a symlink to / and a directory the host will move away.
    std::os::unix::fs::symlink("/", dir.join("escape")).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::os::unix::fs::chown(dir.join("sub"), Some(OWNER), Some(OWNER)).unwrap();
    let ro = format!("{}:/data:ro", dir.display());
    let out = f.run(&[
        "-v",
        &ro,
        "bb",
        "sh",
        "-c",
        "touch /data/x 2>&1; echo rc=$?; cat /data/escape/dev/shm/*/secret 2>&1; cat /data/../../dev/shm/brig-vol-esc/secret 2>&1; true",
    ]);
    let text = stdout(&out);
    check(
        out.status.success()
            && text.contains("Read-only file system")
            && text.contains("rc=1")
            && !text.contains("HOST-SECRET"),
        ":ro is EROFS for root; a symlink to / and .. resolve in the guest",
        &out,
    )?;
    check(
        !dir.join("x").exists(),
        "nothing was written through :ro",
        &out,
    )?;

    // A directory the guest holds open is moved out of the share by the host; `..` from it
    // must not reach the host's files.
    let rw = format!("{}:/data", dir.display());
    let out = f.brig(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "esc",
        "-v",
        &rw,
        "bb",
        "sh",
        "-c",
        "cd /data/sub && touch ready && sleep 600",
    ]);
    check(out.status.success(), "run -d", &out)?;
    let result = (|| -> Result<(), String> {
        eventually(60, "the guest is in /data/sub", || {
            dir.join("sub/ready").exists()
        })?;
        let outside = marker.parent().unwrap().join("moved");
        std::fs::rename(dir.join("sub"), &outside).map_err(|e| e.to_string())?;
        let out = f.brig(&[
            "exec",
            "esc",
            "sh",
            "-c",
            "cat /proc/$(pidof sleep)/cwd/../secret /proc/$(pidof sleep)/cwd/../../secret 2>&1; true",
        ]);
        check(
            !stdout(&out).contains("HOST-SECRET"),
            "`..` from a directory moved out of the share",
            &out,
        )?;
        // Device nodes and setuid files made by the guest's root.
        let out = f.brig(&[
            "exec",
            "esc",
            "sh",
            "-c",
            "mknod /data/blk b 8 0; echo blk=$?; mknod /data/chr c 1 3; echo chr=$?;
             cp /bin/busybox /data/suid && chmod 4755 /data/suid; echo suid=$?",
        ]);
        let meta = std::fs::metadata(dir.join("suid")).map_err(|e| e.to_string())?;
        let devices = ["blk", "chr"].iter().any(|n| {
            std::fs::symlink_metadata(dir.join(n)).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_block_device() || m.file_type().is_char_device()
            })
        });
        check(
            !devices && !setuid_root(&meta),
            "no device node, no setuid-root file on the host",
            &out,
        )?;
        Ok(())
    })();
    let rm = f.brig(&["rm", "-f", "esc"]);
    result?;
    check(rm.status.success(), "rm -f", &rm)
}

fn named_volumes_tmpfs_and_single_file() -> Result<(), String> {
    let f = fixture();
    let out = f.brig(&["volume", "create", "vtest"]);
    check(stdout(&out) == "vtest\n", "volume create", &out)?;
    // A new volume gets the image's content at its mount point (copy-up): /etc has passwd.
    let out = f.run(&[
        "-v",
        "fresh:/etc",
        "bb",
        "sh",
        "-c",
        "ls /etc/passwd && echo kept > /etc/mine",
    ]);
    check(
        out.status.success(),
        "copy-up into a new named volume",
        &out,
    )?;
    let fresh = f.home.join("volumes/fresh/_data");
    check(
        fresh.join("passwd").is_file() && fresh.join("mine").is_file(),
        "the volume holds the image's /etc and the guest's file",
        &out,
    )?;
    // Two sandboxes share one volume.
    let out = f.brig(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "v1",
        "-v",
        "vtest:/v",
        "bb",
        "sh",
        "-c",
        "echo one > /v/from-v1; sleep 600",
    ]);
    check(out.status.success(), "run -d with a named volume", &out)?;
    let result = (|| {
        let out = f.brig(&["volume", "rm", "vtest"]);
        check(
            out.status.code() == Some(125) && stderr(&out).contains("in use"),
            "a volume in use is not removed",
            &out,
        )?;
        let out = f.run(&[
            "-v",
            "vtest:/w",
            "bb",
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do [ -f /w/from-v1 ] && break; sleep 1; done; cat /w/from-v1",
        ]);
        check(
            stdout(&out) == "one\n",
            "a second sandbox sees the first's write",
            &out,
        )
    })();
    let rm = f.brig(&["rm", "-f", "v1"]);
    result?;
    check(rm.status.success(), "rm -f v1", &rm)?;
    let out = f.brig(&["volume", "ls", "-q"]);
    check(
        stdout(&out).lines().any(|l| l == "vtest") && stdout(&out).lines().any(|l| l == "fresh"),
        "volume ls",
        &out,
    )?;
    let out = f.brig(&["volume", "rm", "vtest", "fresh"]);
    check(out.status.success(), "volume rm once unused", &out)?;

    // --tmpfs, and a single file shared without its siblings.
    let (dir, _) = share("file");
    std::fs::write(dir.join("one.conf"), "just-this\n").unwrap();
    std::fs::write(dir.join("sibling"), "not-this\n").unwrap();
    let file = format!("{}:/etc/one.conf:ro", dir.join("one.conf").display());
    let out = f.run(&[
        "--tmpfs",
        "/scratch:size=1m",
        "-v",
        &file,
        "bb",
        "sh",
        "-c",
        "cat /etc/one.conf; grep ' /scratch ' /proc/mounts | cut -d' ' -f3; \
         ls /etc | grep -c sibling; grep one.conf /proc/mounts | wc -l",
    ]);
    check(
        stdout(&out) == "just-this\ntmpfs\n0\n1\n",
        "a tmpfs and a single-file share",
        &out,
    )
}

fn bad_input_is_one_line() -> Result<(), String> {
    let f = fixture();
    let before = f.leftovers();
    let missing = "type=bind,source=/dev/shm/brig-no-such-dir,target=/x";
    for (args, needle) in [
        (vec!["--mount", missing], "does not exist"),
        (vec!["-v", "/dev/shm:rel"], "must be absolute"),
        (vec!["-v", "/dev/shm:/x:rw,ro"], "contradict"),
        (vec!["-v", "./here:/x"], "must be absolute"),
        (vec!["-v", "a/b:/x"], "must be absolute"),
        (
            vec![
                "-v", "/a:/1", "-v", "/a:/2", "-v", "/a:/3", "-v", "/a:/4", "-v", "/a:/5", "-v",
                "/a:/6", "-v", "/a:/7", "-v", "/a:/8", "-v", "/a:/9",
            ],
            "too many volumes",
        ),
    ] {
        let mut all = args.clone();
        all.extend(["bb", "true"]);
        let out = f.run(&all);
        let err = stderr(&out);
        check(
            out.status.code() == Some(125)
                && err.contains(needle)
                && err.trim().lines().count() == 1,
            &format!("{args:?}: one line and 125"),
            &out,
        )?;
    }
    if f.leftovers() != before || !servers().is_empty() {
        return Err(format!("left behind: {:?}", f.leftovers()));
    }
    Ok(())
}

/// A run with shares restores a template made with as many (and no file server), wired to
/// its own servers: both shares work, `:ro` holds; `--cold` boots the same run; `brig
/// template ls` counts the template's shares.
fn shares_restore_from_a_template() -> Result<(), String> {
    let f = fixture();
    let (a, _) = share("tpl-a");
    let (b, _) = share("tpl-b");
    std::fs::write(a.join("in"), "from the host\n").unwrap();
    let va = format!("{}:/a:ro", a.display());
    let vb = format!("{}:/b", b.display());
    let script = "cat /a/in; echo out > /b/out; touch /a/x 2>&1; true";
    for cold in [false, true] {
        let mut args = vec!["--timings", "-v", &va, "-v", &vb];
        if cold {
            args.push("--cold");
        }
        args.extend(["bb", "sh", "-c", script]);
        let out = f.run(&args);
        let what = if cold { "--cold" } else { "restored" };
        check(
            out.status.success() && stdout(&out).starts_with("from the host\n"),
            &format!("{what}: the read-only share"),
            &out,
        )?;
        check(
            stdout(&out).contains("Read-only file system"),
            &format!("{what}: :ro holds"),
            &out,
        )?;
        let path = if cold {
            "path           cold boot"
        } else {
            "path           restored from a template"
        };
        check(
            stderr(&out).contains(path),
            &format!("{what}: {path}"),
            &out,
        )?;
        // The agent's own steps, as it reported them in Started.
        for step in ["image mounted", "volumes mounted", "spawned"] {
            check(
                stderr(&out).lines().any(|l| {
                    l.trim_start().starts_with(&format!("agent: {step}")) && l.ends_with(" ms")
                }),
                &format!("{what}: --timings shows the agent's step {step}"),
                &out,
            )?;
        }
        let wrote = std::fs::read_to_string(b.join("out")).unwrap_or_default();
        check(
            wrote == "out\n",
            &format!("{what}: the guest's write"),
            &out,
        )?;
        std::fs::remove_file(b.join("out")).map_err(|e| e.to_string())?;
    }
    let out = f.brig(&["template", "ls"]);
    check(
        stdout(&out)
            .lines()
            .any(|l| l.split_whitespace().nth(5) == Some("2")),
        "template ls: a template with 2 volumes",
        &out,
    )
}

fn no_file_server_is_left() -> Result<(), String> {
    let f = fixture();
    let (dir, _) = share("end");
    let vol = format!("{}:/data", dir.display());
    // --rm (the foreground VMM ends), then kill -9 of a detached sandbox's VMM.
    let out = f.run(&["-v", &vol, "bb", "sh", "-c", "echo ok > /data/ok"]);
    check(
        out.status.success() && dir.join("ok").exists(),
        "run --rm -v",
        &out,
    )?;
    eventually(30, "no file server after --rm", || servers().is_empty())?;
    let out = f.brig(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "k9",
        "-v",
        &vol,
        "bb",
        "sleep",
        "600",
    ]);
    check(out.status.success(), "run -d", &out)?;
    check(
        !servers().is_empty(),
        "a running sandbox has its server",
        &out,
    )?;
    let inspect = f.brig(&["inspect", "k9"]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap_or_default();
    let pid = v[0]["State"]["Pid"].as_u64().unwrap_or(0).to_string();
    let kill = std::process::Command::new("kill")
        .args(["-9", &pid])
        .output()
        .map_err(|e| e.to_string())?;
    check(kill.status.success(), "kill -9 of the VMM", &inspect)?;
    eventually(30, "no file server after kill -9 of the VMM", || {
        servers().is_empty()
    })?;
    let rm = f.brig(&["rm", "-f", "k9"]);
    check(rm.status.success(), "rm", &rm)
}

/// brig run by `nobody` (uid 65534), with its own store and a readable copy of the kernel:
/// its file server runs in a user namespace of its own.
fn rootless_run_shares_a_directory() -> Result<(), String> {
    let f = fixture();
    let base = PathBuf::from("/dev/shm/brig-vol-rootless");
    let _ = std::fs::remove_dir_all(&base);
    for d in ["home", "run", "share"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    let info = f.brig(&["info"]);
    let kernel = stdout(&info)
        .lines()
        .find_map(|l| l.strip_prefix("kernel:"))
        .map(|k| k.trim().to_string())
        .ok_or("brig info names no kernel")?;
    std::fs::copy(&kernel, base.join("vmlinux")).map_err(|e| e.to_string())?;
    let layout = layouts_dir().join("bb");
    let setup = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cp -r {} {b}/bb && chown -R 65534:65534 {b} && chgrp kvm /dev/kvm && chmod 660 /dev/kvm",
            layout.display(),
            b = base.display()
        ))
        .output()
        .map_err(|e| e.to_string())?;
    check(setup.status.success(), "rootless setup", &setup)?;
    // A user in the kvm group (/dev/kvm root:kvm 0660), as the issue puts it.
    let nobody = |args: &[&str]| {
        let brig = common::kvm::brig_cmd(&[]);
        let mut c = std::process::Command::new("setpriv");
        c.args([
            "--reuid", "65534", "--regid", "65534", "--groups", "kvm", "--",
        ])
        .arg(brig.get_program())
        .args(args)
        .env("HOME", &base)
        .env("BRIG_HOME", base.join("home"))
        .env("BRIG_RUNTIME_DIR", base.join("run"))
        .env("XDG_RUNTIME_DIR", &base)
        .env("BRIG_KERNEL", base.join("vmlinux"))
        .stdin(std::process::Stdio::null());
        common::procs::output(common::procs::mark(&mut c))
    };
    let out = nobody(&["import", "-q", base.join("bb").to_str().unwrap(), "bb"]);
    check(out.status.success(), "rootless import", &out)?;
    std::fs::write(base.join("share/in"), "from-host\n").unwrap();
    std::os::unix::fs::chown(base.join("share/in"), Some(65534), Some(65534)).unwrap();
    let vol = format!("{}:/data", base.join("share").display());
    let out = nobody(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--timeout",
        "600",
        "-v",
        &vol,
        "bb",
        "sh",
        "-c",
        "cat /data/in && echo made > /data/out",
    ]);
    check(
        out.status.success() && stdout(&out) == "from-host\n",
        "a rootless sandbox reads the share",
        &out,
    )?;
    let meta = std::fs::metadata(base.join("share/out")).map_err(|e| e.to_string())?;
    check(
        meta.uid() == 65534,
        "the guest's file belongs to the rootless user on the host",
        &out,
    )?;
    // The rootless VMM is jailed in a user namespace of its own, as the calling user.
    let out = nobody(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "rl",
        "-v",
        &vol,
        "bb",
        "sleep",
        "1000",
    ]);
    check(out.status.success(), "rootless run -d", &out)?;
    let out = nobody(&["inspect", "rl"]);
    let _ = nobody(&["rm", "-f", "rl"]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("inspect: {e}"))?;
    let c = &v[0]["VmmConfinement"];
    let jail = &c["Jail"];
    let jailed = ["user", "pid", "mnt", "ipc", "uts", "net"]
        .iter()
        .all(|ns| {
            jail["Namespaces"]
                .as_array()
                .is_some_and(|a| a.contains(&(*ns).into()))
        })
        && jail["Uid"] == 65534
        && c["HostRoot"] == false
        && c["SeccompThreads"] == c["Threads"]
        && c["NoNewPrivsThreads"] == c["Threads"]
        && c["CapEff"] == "0000000000000000";
    if jailed {
        Ok(())
    } else {
        Err(format!(
            "the rootless VMM is not jailed in a user namespace: VmmConfinement {c}; stderr {:?}",
            stderr(&out)
        ))
    }
}

fn main() {
    run_tests_with(
        Limits::secs(300, 1200),
        prepare,
        setup,
        vec![
            trial("live_sharing_both_ways", live_sharing_both_ways),
            trial(
                "read_only_escapes_devices_and_setuid",
                read_only_escapes_devices_and_setuid,
            ),
            trial(
                "named_volumes_tmpfs_and_single_file",
                named_volumes_tmpfs_and_single_file,
            ),
            trial("bad_input_is_one_line", bad_input_is_one_line),
            trial(
                "shares_restore_from_a_template",
                shares_restore_from_a_template,
            ),
            trial("no_file_server_is_left", no_file_server_is_left),
            trial(
                "rootless_run_shares_a_directory",
                rootless_run_shares_a_directory,
            ),
        ],
    )
}
