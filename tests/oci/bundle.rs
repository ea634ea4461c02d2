//! The rest of a bundle in the VM, driven directly: a pod's network namespace joined (the
//! guest takes over its interface and reaches a peer namespace through it), bind and tmpfs
//! mounts, the caller's /etc/hosts, hooks at create, start and delete with the state on
//! their stdin, the capability bounding set, the umask, CPUs from the quota, and the pids
//! limit.

use std::path::Path;
use std::process::Command;

use crate::common::fixture::{check, stderr, stdout};
use crate::common::procs;
use crate::{base, bundle, cleaning, create, leftovers, reap, runc_out, state};

/// The pod's namespace (the container joins it) and its peer's, with a veth between.
const POD: &str = "brig-oci-pod";
const PEER: &str = "brig-oci-peer";
const POD_ADDR: &str = "10.203.7.2";
const PEER_ADDR: &str = "10.203.7.1";

fn sh(script: &str) -> Result<(), String> {
    let out = procs::output(Command::new("sh").args(["-ec", script]));
    check(out.status.success(), script, &out)
}

/// The two namespaces, wired as a CNI plugin would wire a pod, and an HTTP server in the
/// peer's.
fn make_namespaces(www: &Path) -> Result<(), String> {
    std::fs::create_dir_all(www).map_err(|e| e.to_string())?;
    std::fs::write(www.join("hello.txt"), "hello from the peer\n").map_err(|e| e.to_string())?;
    sh(&format!(
        "ip netns del {POD} 2>/dev/null || true; ip netns del {PEER} 2>/dev/null || true
        ip netns add {POD}; ip netns add {PEER}
        ip link add brigoci0 type veth peer name brigoci1
        ip link set brigoci0 netns {POD}; ip link set brigoci1 netns {PEER}
        ip -n {POD} link set brigoci0 name eth0
        ip -n {POD} addr add {POD_ADDR}/24 dev eth0; ip -n {PEER} addr add {PEER_ADDR}/24 dev brigoci1
        ip -n {POD} link set lo up; ip -n {POD} link set eth0 up
        ip -n {PEER} link set lo up; ip -n {PEER} link set brigoci1 up
        ip -n {POD} route add default via {PEER_ADDR}
        ip netns exec {PEER} busybox httpd -p {PEER_ADDR}:8080 -h {}",
        www.display()
    ))
}

fn remove_namespaces() {
    let _ = sh(&format!(
        "pkill -f 'busybox httpd -p {PEER_ADDR}:8080' || true
        ip netns del {POD} 2>/dev/null || true; ip netns del {PEER} 2>/dev/null || true"
    ));
}

pub fn bundle_network_mounts_hooks_and_limits() -> Result<(), String> {
    let r = cleaning(&["b1"], in_a_pod);
    remove_namespaces();
    r
}

fn in_a_pod() -> Result<(), String> {
    let dir = base().join("pod");
    let _ = std::fs::remove_dir_all(&dir);
    make_namespaces(&dir.join("www"))?;
    let share = dir.join("share");
    std::fs::create_dir_all(&share).map_err(|e| e.to_string())?;
    std::fs::write(share.join("from-host"), "host wrote this\n").map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("hosts"),
        format!("127.0.0.1 localhost\n{PEER_ADDR} peerhost\n"),
    )
    .map_err(|e| e.to_string())?;
    let script = "wget -q -O - http://peerhost:8080/hello.txt
        cat /data/from-host; echo guest wrote this > /data/from-guest
        grep CapBnd /proc/self/status; echo cpus $(nproc)
        echo pids $(cat /sys/fs/cgroup/workload/pids.max)
        ip -4 addr show eth0
        mount | grep ' /scratch ' && echo scratch-ok
        echo umask $(umask)";
    let b = bundle("b1", &["sh", "-c", script]);
    for applet in ["wget", "grep", "nproc", "ip", "mount"] {
        let _ = std::os::unix::fs::symlink("busybox", b.join("rootfs/bin").join(applet));
    }
    let hook = |name: &str| {
        serde_json::json!({"path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/hook-{name}", dir.display())]})
    };
    let path = b.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    for ns in config["linux"]["namespaces"]
        .as_array_mut()
        .ok_or("namespaces")?
    {
        if ns["type"] == "network" {
            ns["path"] = serde_json::json!(format!("/run/netns/{POD}"));
        }
    }
    let mounts = config["mounts"].as_array_mut().ok_or("mounts")?;
    mounts.push(serde_json::json!({"destination": "/data", "type": "bind",
        "source": share, "options": ["rbind", "rw"]}));
    mounts.push(
        serde_json::json!({"destination": "/scratch", "type": "tmpfs",
        "source": "tmpfs", "options": ["nosuid", "size=1m", "mode=1777"]}),
    );
    mounts.push(
        serde_json::json!({"destination": "/etc/hosts", "type": "bind",
        "source": dir.join("hosts"), "options": ["rbind", "ro"]}),
    );
    config["hooks"] = serde_json::json!({"prestart": [hook("prestart")],
        "poststart": [hook("poststart")], "poststop": [hook("poststop")]});
    config["process"]["user"]["umask"] = serde_json::json!(0o027);
    config["process"]["capabilities"] =
        serde_json::json!({"bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"]});
    config["linux"]["resources"] = serde_json::json!({"cpu": {"quota": 200000, "period": 100000},
        "pids": {"limit": 64}});
    std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;

    let (ok, err) = create("b1", &b, None);
    if !ok {
        return Err(format!("create: {err}"));
    }
    let pid = state("b1")?["pid"].as_i64().unwrap_or(0) as i32;
    let prestart = std::fs::read_to_string(dir.join("hook-prestart")).unwrap_or_default();
    let hook_state: serde_json::Value = serde_json::from_str(&prestart)
        .map_err(|e| format!("prestart hook's stdin {prestart:?}: {e}"))?;
    if hook_state["pid"] != pid || hook_state["id"] != "b1" {
        return Err(format!(
            "prestart hook's state {hook_state}, container pid {pid}"
        ));
    }
    let start = runc_out(&["start", "b1"]);
    check(start.status.success(), "start", &start)?;
    let code = reap(pid)?;
    let out = std::fs::read_to_string(b.join("stdout")).unwrap_or_default();
    let err = std::fs::read_to_string(b.join("stderr")).unwrap_or_default();
    let report = || format!("exit {code}\nstdout:\n{out}\nstderr:\n{err}");
    // CAP_CHOWN (0), CAP_KILL (5), CAP_NET_RAW (13).
    let expected = [
        "hello from the peer",
        "host wrote this",
        "CapBnd:\t0000000000002021",
        "cpus 2",
        "pids 64",
        &format!("inet {POD_ADDR}/24"),
        "scratch-ok",
        "umask 0027",
    ];
    if code != 0 || expected.iter().any(|e| !out.contains(e)) {
        return Err(format!("expected {expected:?} in\n{}", report()));
    }
    let written = std::fs::read_to_string(share.join("from-guest")).unwrap_or_default();
    if written != "guest wrote this\n" {
        return Err(format!("the bind mount: the host reads {written:?}"));
    }
    if !dir.join("hook-poststart").exists() {
        return Err("the poststart hook did not run".into());
    }
    let del = runc_out(&["delete", "b1"]);
    check(del.status.success(), "delete", &del)?;
    let poststop = std::fs::read_to_string(dir.join("hook-poststop")).unwrap_or_default();
    if !poststop.contains("\"stopped\"") {
        return Err(format!("poststop hook's state: {poststop:?}"));
    }
    // The pod's interface is its own again: no redirect, no TAP left in its namespace.
    let links = procs::output(Command::new("ip").args(["-n", POD, "-o", "link"]));
    let qdiscs = procs::output(Command::new("tc").args(["-n", POD, "qdisc", "show"]));
    let names: Vec<String> = stdout(&links)
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
        })
        .collect();
    if names != ["lo", "eth0"] || stdout(&qdiscs).contains("ingress") {
        return Err(format!(
            "left in the pod's namespace: {}{}{}",
            stdout(&links),
            stdout(&qdiscs),
            stderr(&qdiscs)
        ));
    }
    let left = leftovers();
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}"));
    }
    Ok(())
}

/// `io.brig.rootfs=virtiofs`: the bundle's directory is the guest's lower layer, shared, no
/// erofs built; writes go to the scratch disk, not into the caller's directory.
pub fn rootfs_over_virtiofs() -> Result<(), String> {
    cleaning(&["v1"], over_virtiofs)
}

fn over_virtiofs() -> Result<(), String> {
    let b = bundle(
        "v1",
        &[
            "sh",
            "-c",
            "cat /marker; echo guest > /written; cat /written; exit 6",
        ],
    );
    std::fs::write(b.join("rootfs/marker"), "from the host's directory\n")
        .map_err(|e| e.to_string())?;
    let path = b.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    config["annotations"] = serde_json::json!({"io.brig.rootfs": "virtiofs"});
    std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
    let erofs_before = erofs_images();
    let out = runc_out(&["run", "--bundle", b.to_str().unwrap_or_default(), "v1"]);
    check(
        out.status.code() == Some(6) && stdout(&out) == "from the host's directory\nguest\n",
        "run over virtio-fs: the directory's file, a write, exit 6",
        &out,
    )?;
    if b.join("rootfs/written").exists() {
        return Err("the guest's write reached the caller's directory".into());
    }
    if erofs_images() != erofs_before {
        return Err("an erofs image was built for a virtio-fs root".into());
    }
    let left = leftovers();
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}"));
    }
    Ok(())
}

fn erofs_images() -> usize {
    std::fs::read_dir(base().join("home/oci/rootfs"))
        .map(|d| d.count())
        .unwrap_or(0)
}
