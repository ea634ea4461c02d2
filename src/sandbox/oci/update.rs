//! runc's `update`: a container's memory, swap and pids limits, from runtime-spec's
//! `LinuxResources` JSON (`--resources`, what containerd's shim passes for `docker update`
//! and CRI's UpdateContainerResources) or runc's flags, which win. They reach the workload
//! cgroup in the guest (see [`crate::sandbox::update`]); CPU and block I/O values are left
//! alone: the VM's vCPUs were fixed when it was created.

use std::path::Path;

use super::bundle::Resources;
use super::container::{Container, Status};
use super::OciError;
use crate::sandbox::update::{self, Limits};

/// runc's flags (`--memory`, `--memory-swap`, `--pids-limit`).
#[derive(Debug, Default)]
pub struct Flags {
    pub memory: Option<String>,
    pub memory_swap: Option<String>,
    pub pids_limit: Option<i64>,
}

fn bytes(flag: &str, v: &str) -> Result<i64, OciError> {
    if v == "-1" {
        return Ok(-1);
    }
    crate::sandbox::resources::ram_in_bytes(v)
        .and_then(|b| i64::try_from(b).ok())
        .ok_or_else(|| OciError::Bundle(format!("invalid value for {flag}: {v:?}")))
}

/// The limits `json` and `flags` ask for.
pub fn limits(json: Option<&str>, flags: &Flags) -> Result<Limits, OciError> {
    let r: Resources = match json {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| OciError::Bundle(format!("resources: {e}")))?
        }
        None => Resources::default(),
    };
    let memory = match &flags.memory {
        Some(m) => Some(bytes("--memory", m)?),
        None => r.memory.as_ref().and_then(|m| m.limit),
    };
    let swap = match &flags.memory_swap {
        Some(s) => Some(bytes("--memory-swap", s)?),
        None => r.memory.as_ref().and_then(|m| m.swap),
    };
    let pids = flags.pids_limit.or(r.pids.as_ref().map(|p| p.limit));
    // -1 and 0 both mean "no limit" for memory and pids, as in runc.
    let unlimited = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Limits {
        memory: memory.map(unlimited),
        memory_swap: swap,
        pids: pids.map(unlimited),
    })
}

/// Changes container `id`'s limits.
pub fn update(root: &Path, id: &str, json: Option<&str>, flags: &Flags) -> Result<(), OciError> {
    let state = Container::open(root, id)?.load()?;
    if state.status() == Status::Stopped {
        return Err(OciError::Status(format!(
            "cannot update container {id}: it is stopped"
        )));
    }
    let limits = limits(json, flags)?;
    if state.sandbox_id.is_empty() {
        // A pod's sandbox placeholder runs nothing to limit.
        return Ok(());
    }
    let sandbox = super::sandbox_of(&state.sandbox_id)?;
    update::update(&sandbox, &limits).map_err(|e| OciError::Sandbox(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_resources_json() {
        let json = r#"{"memory":{"limit":134217728,"swap":268435456},"pids":{"limit":20},"cpu":{"shares":1024}}"#;
        let l = limits(Some(json), &Flags::default()).unwrap();
        assert_eq!(l.memory, Some(128 << 20));
        assert_eq!(l.memory_swap, Some(256 << 20));
        assert_eq!(l.pids, Some(20));
        let flags = Flags {
            memory: Some("64m".into()),
            memory_swap: Some("-1".into()),
            pids_limit: Some(-1),
        };
        let l = limits(Some(json), &flags).unwrap();
        assert_eq!(l.memory, Some(64 << 20));
        assert_eq!(l.memory_swap, Some(-1));
        assert_eq!(l.pids, Some(0));
        assert_eq!(limits(None, &Flags::default()).unwrap(), Limits::default());
        assert!(limits(Some("{"), &Flags::default()).is_err());
    }
}
