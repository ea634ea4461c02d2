//! The baseline side of `brig compare`: the probe in a container of the same image under an
//! OCI runtime (runc or crun: a bundle from `RUNTIME spec`, with docker's default
//! capabilities, seccomp profile and masked paths, as `docker run` gives them; podman: its own
//! defaults and default network, on the unpacked tree with `--rootfs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::hap::{Hap, Profiler};
use super::CompareError;
use crate::sandbox::security::profile::{self, Op, Resolved};
use crate::sandbox::security::{caps, MASKED_PATHS, READONLY_PATHS};

/// The runtime to compare brig with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    Runc,
    Crun,
    Podman,
}

impl Baseline {
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Runc => "runc",
            Baseline::Crun => "crun",
            Baseline::Podman => "podman",
        }
    }
}

/// What a run of the probe gave.
pub struct SideRun {
    pub stdout: String,
    /// From the runtime's start to the probe's first instruction.
    pub start_ms: f64,
    /// Peak host memory the sandbox cost, when measured.
    pub memory_bytes: Option<u64>,
    /// The host kernel functions the run made the host execute.
    pub hap: Hap,
}

/// Profiles `f` when there is a profiler; why not, when there is none.
pub fn profiled<T>(profiler: Result<&Profiler, &str>, f: impl FnOnce() -> T) -> (T, Hap) {
    match profiler {
        Ok(p) => p.profile(f),
        Err(why) => (f(), Hap::unavailable(why)),
    }
}

/// Checks that the baseline runtime is installed.
pub fn check(rt: Baseline) -> Result<(), CompareError> {
    Command::new(rt.name())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|_| ())
        .map_err(|_| CompareError::NoRuntime(rt.name()))
}

/// docker's default seccomp profile, resolved for docker's capabilities, in the OCI format.
fn oci_seccomp() -> Result<Value, CompareError> {
    let r: Resolved = profile::resolve(profile::DEFAULT_PROFILE, caps::mask(caps::DOCKER_DEFAULT))
        .map_err(|e| CompareError::Baseline(e.to_string()))?;
    let action = |a: u32| -> (String, Option<u32>) {
        let (kind, data) = (a & 0xffff_0000, a & 0xffff);
        match kind {
            profile::RET_ALLOW => ("SCMP_ACT_ALLOW".into(), None),
            profile::RET_ERRNO => ("SCMP_ACT_ERRNO".into(), Some(data)),
            profile::RET_TRACE => ("SCMP_ACT_TRACE".into(), Some(data)),
            profile::RET_TRAP => ("SCMP_ACT_TRAP".into(), None),
            profile::RET_LOG => ("SCMP_ACT_LOG".into(), None),
            profile::RET_KILL_PROCESS => ("SCMP_ACT_KILL_PROCESS".into(), None),
            _ => ("SCMP_ACT_KILL".into(), None),
        }
    };
    let calls: Vec<Value> = r
        .rules
        .iter()
        .map(|rule| {
            let (name, errno) = action(rule.action);
            let args: Vec<Value> = rule
                .conds
                .iter()
                .map(|c| {
                    let (op, value, two) = match c.op {
                        Op::Ne => ("SCMP_CMP_NE", c.value, 0),
                        Op::Lt => ("SCMP_CMP_LT", c.value, 0),
                        Op::Le => ("SCMP_CMP_LE", c.value, 0),
                        Op::Eq => ("SCMP_CMP_EQ", c.value, 0),
                        Op::Ge => ("SCMP_CMP_GE", c.value, 0),
                        Op::Gt => ("SCMP_CMP_GT", c.value, 0),
                        Op::MaskedEq(mask) => ("SCMP_CMP_MASKED_EQ", mask, c.value),
                    };
                    json!({"index": c.index, "value": value, "valueTwo": two, "op": op})
                })
                .collect();
            let mut call = json!({"names": rule.names, "action": name, "args": args});
            if let Some(e) = errno {
                call["errnoRet"] = json!(e);
            }
            call
        })
        .collect();
    let (default, errno) = action(r.default);
    let mut arches = vec!["SCMP_ARCH_X86_64"];
    if r.i386 {
        arches.extend(["SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
    }
    let mut s = json!({"defaultAction": default, "architectures": arches, "syscalls": calls});
    if let Some(e) = errno {
        s["defaultErrnoRet"] = json!(e);
    }
    Ok(s)
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<std::process::Output, CompareError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CompareError::Baseline(format!("{what}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(CompareError::Baseline(format!(
            "{what}: {}",
            err.trim().lines().last().unwrap_or("failed")
        )));
    }
    Ok(out)
}

/// Writes `bundle/config.json` for runc or crun: `RUNTIME spec`'s default, with docker's
/// capabilities, seccomp profile and masked paths, the probe as the process.
fn write_config(
    rt: Baseline,
    bundle: &Path,
    argv: &[String],
    cgroup: &str,
    netns: Option<&str>,
) -> Result<(), CompareError> {
    run_tool(
        Command::new(rt.name())
            .args(["spec", "--bundle"])
            .arg(bundle),
        "writing the OCI spec",
    )?;
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| CompareError::Io(path.clone(), e))?;
    let mut spec: Value =
        serde_json::from_str(&text).map_err(|e| CompareError::Baseline(e.to_string()))?;
    let caps: Vec<&str> = caps::DOCKER_DEFAULT.to_vec();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(argv);
    // docker leaves no_new_privs off unless asked (`runc spec` turns it on).
    spec["process"]["noNewPrivileges"] = json!(false);
    spec["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    spec["root"] = json!({"path": "rootfs", "readonly": false});
    spec["linux"]["seccomp"] = oci_seccomp()?;
    spec["linux"]["maskedPaths"] = json!(MASKED_PATHS);
    spec["linux"]["readonlyPaths"] = json!(READONLY_PATHS);
    spec["linux"]["cgroupsPath"] = json!(cgroup);
    if let Some(path) = netns {
        if let Some(list) = spec["linux"]["namespaces"].as_array_mut() {
            for ns in list.iter_mut().filter(|ns| ns["type"] == "network") {
                ns["path"] = json!(path);
            }
        }
    }
    let text =
        serde_json::to_string_pretty(&spec).map_err(|e| CompareError::Baseline(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| CompareError::Io(path, e))
}

/// Runs the probe (`argv`, the probe at `argv[0]` in `bundle/rootfs`) under `rt`, in the
/// network namespace at `netns` (runc and crun; none: one with only `lo`), profiled.
pub fn run(
    rt: Baseline,
    bundle: &Path,
    argv: &[String],
    netns: Option<&str>,
    profiler: Result<&Profiler, &str>,
) -> Result<SideRun, CompareError> {
    let id = format!("brig-compare-{}", std::process::id());
    let cgroup = format!("/{id}");
    if rt != Baseline::Podman {
        write_config(rt, bundle, argv, &cgroup, netns)?;
    }
    let t0 = std::time::SystemTime::now();
    let ((out, memory_bytes), hap) = match rt {
        Baseline::Podman => {
            let (out, hap) = profiled(profiler, || {
                run_tool(
                    Command::new("podman")
                        .args(["run", "--rm", "--rootfs"])
                        .arg(bundle.join("rootfs"))
                        .args(argv),
                    "podman run",
                )
            });
            ((out?, None), hap)
        }
        Baseline::Runc | Baseline::Crun => {
            let root = bundle.join("state");
            let (out, hap) = profiled(profiler, || {
                // crun (1.8) has no --keep: its cgroup goes with the container, unmeasured.
                let keep: &[&str] = if rt == Baseline::Runc {
                    &["run", "--keep", "--bundle"]
                } else {
                    &["run", "--bundle"]
                };
                run_tool(
                    Command::new(rt.name())
                        .arg("--root")
                        .arg(&root)
                        .args(keep)
                        .arg(bundle)
                        .arg(&id),
                    &format!("{} run", rt.name()),
                )
            });
            // runc's cgroup outlives the container (--keep) until delete: its peak memory.
            let peak = std::fs::read_to_string(
                PathBuf::from("/sys/fs/cgroup")
                    .join(&id)
                    .join("memory.peak"),
            )
            .ok()
            .and_then(|s| s.trim().parse().ok());
            let _ = Command::new(rt.name())
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            ((out?, peak), hap)
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let facts = super::facts::parse(&stdout);
    let probe_us: u128 = facts
        .get("probe.started_us")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let t0_us = t0
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    Ok(SideRun {
        stdout,
        start_ms: probe_us.saturating_sub(t0_us) as f64 / 1000.0,
        memory_bytes,
        hap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oci_profile_is_dockers_resolved_for_its_capabilities() {
        let s = oci_seccomp().unwrap();
        assert_eq!(s["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(s["architectures"][0], "SCMP_ARCH_X86_64");
        let allowed = |name: &str| {
            s["syscalls"].as_array().unwrap().iter().any(|c| {
                c["action"] == "SCMP_ACT_ALLOW"
                    && c["names"].as_array().unwrap().iter().any(|n| n == name)
            })
        };
        assert!(allowed("read") && allowed("clone"));
        // CAP_SYS_ADMIN is not docker's: mount and bpf stay refused.
        assert!(!allowed("mount") && !allowed("bpf"));
    }
}
