//! Checkpoints of running sandboxes (`brig checkpoint create|ls|rm`, `brig start
//! --checkpoint`), as docker's checkpoint CLI names them and as E2B pauses a sandbox: its
//! memory, vCPU and device state and its scratch disk, saved while the workload runs, and a
//! later start that goes on from there.
//!
//! How: each detached run that can be checkpointed gets two empty files,
//! `checkpoints/.pending/{memory,state}`, which its keeper opens before the VMM starts (a
//! jailed VMM sees no directory once it runs). `create` asks the guest agent to park the main
//! session ([`brig_protocol::Message::Checkpoint`]); the VMM, told so on that session, waits
//! until the VM holds no connection, saves the VM into the two files and stops. `create`
//! then checks the state file, copies the scratch disk beside it and names the directory.
//! `start --checkpoint` copies the scratch disk back and leaves the name in
//! `checkpoints/.resume` for the keeper, whose VMM restores the VM instead of booting it
//! and reaches the agent with a Restore: new entropy, the host's clock, the disks and the
//! network the sandbox now has. No RunSpec goes out: the workload runs already.
//!
//! On disk: `$BRIG_HOME/sandboxes/<id>/checkpoints/<name>/{memory,state,scratch.ext4,
//! checkpoint.json}`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::state::{now_rfc3339, Sandbox, SandboxConfig, StateError};
use crate::vmm::snapshot;

const DIR: &str = "checkpoints";
const PENDING: &str = ".pending";
const RESUME: &str = ".resume";
const META: &str = "checkpoint.json";
const SCRATCH: &str = "scratch.ext4";
/// How long the VMM may take to save the VM and stop (nested emulation included).
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);

/// A checkpoint could not be made, found or used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("invalid checkpoint name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-]* are allowed")]
    BadName(String),
    #[error("checkpoint {checkpoint} of sandbox {sandbox} already exists")]
    Exists { sandbox: String, checkpoint: String },
    #[error("sandbox {sandbox} has no checkpoint {checkpoint}")]
    Missing { sandbox: String, checkpoint: String },
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} is paused, unpause the container before checkpointing")]
    Paused(String),
    #[error("cannot checkpoint sandbox {sandbox}: {why}")]
    NotEligible { sandbox: String, why: String },
    #[error("checkpoint {checkpoint} was made by brig {made_by}, this is brig {this}")]
    Foreign {
        checkpoint: String,
        made_by: String,
        this: String,
    },
    #[error("checkpoint of sandbox {sandbox}: {why}")]
    Failed { sandbox: String, why: String },
    #[error("checkpoint store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What `checkpoint.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub name: String,
    pub created: String,
    /// The brig that made it (a checkpoint holds this brig's device state).
    pub brig_version: String,
}

/// Why `config`'s sandbox cannot be checkpointed, if it cannot.
pub fn refusal(config: &SandboxConfig) -> Option<&'static str> {
    if !config.detached {
        Some("it does not run detached (-d)")
    } else if config.auto_remove {
        Some("it is removed when it stops (--rm)")
    } else if config.run.tty {
        Some("it has a terminal (-t)")
    } else if config.run.stdin {
        Some("it has an open stdin (-i)")
    } else if !config.volumes.is_empty() {
        Some("it has volumes (virtio-fs)")
    } else if scratch_of(config).is_none() {
        Some("it has no scratch disk (--read-only)")
    } else {
        None
    }
}

/// The sandbox's scratch disk (its one writable disk).
fn scratch_of(config: &SandboxConfig) -> Option<&Path> {
    config
        .disks
        .iter()
        .find(|d| !d.read_only)
        .map(|d| d.path.as_path())
}

fn dir_of(sandbox: &Sandbox) -> PathBuf {
    sandbox.dir.join(DIR)
}

/// A checkpoint name as docker allows them (also a safe file name).
fn check_name(name: &str) -> Result<(), CheckpointError> {
    let ok = name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CheckpointError::BadName(name.to_string()))
    }
}

/// The files a run of `sandbox` (with `config`) saves a checkpoint into, made empty now:
/// `None` when it cannot have one. Called by its keeper before the VMM starts.
pub fn pending_files(sandbox: &Sandbox, config: &SandboxConfig) -> Option<(File, File)> {
    if refusal(config).is_some() {
        return None;
    }
    let pending = dir_of(sandbox).join(PENDING);
    let _ = std::fs::remove_dir_all(&pending);
    std::fs::create_dir_all(&pending).ok()?;
    let create = |name: &str| File::create(pending.join(name)).ok();
    Some((
        create(snapshot::MEMORY_FILE)?,
        create(snapshot::STATE_FILE)?,
    ))
}

/// The checkpoint `brig start --checkpoint` asked this start of `sandbox` to resume (the
/// request is taken: a later start boots as usual).
pub fn take_resume(sandbox: &Sandbox) -> Option<PathBuf> {
    let marker = dir_of(sandbox).join(RESUME);
    let name = std::fs::read_to_string(&marker).ok()?;
    let _ = std::fs::remove_file(&marker);
    let name = name.trim();
    check_name(name).ok()?;
    Some(dir_of(sandbox).join(name))
}

/// Checkpoints the running `sandbox` (the user's `name` for it) as `checkpoint`, which stops
/// it.
pub fn create(sandbox: &Sandbox, name: &str, checkpoint: &str) -> Result<(), CheckpointError> {
    check_name(checkpoint)?;
    let failed = |why: String| CheckpointError::Failed {
        sandbox: name.to_string(),
        why,
    };
    let target = dir_of(sandbox).join(checkpoint);
    if target.exists() {
        return Err(CheckpointError::Exists {
            sandbox: name.to_string(),
            checkpoint: checkpoint.to_string(),
        });
    }
    let config = sandbox.config()?;
    if let Some(why) = refusal(&config) {
        return Err(CheckpointError::NotEligible {
            sandbox: name.to_string(),
            why: why.to_string(),
        });
    }
    if !sandbox.is_running() {
        return Err(CheckpointError::NotRunning(name.to_string()));
    }
    if super::pause::is_paused(sandbox) {
        return Err(CheckpointError::Paused(name.to_string()));
    }
    let pending = dir_of(sandbox).join(PENDING);
    if !pending.join(snapshot::STATE_FILE).is_file() {
        return Err(CheckpointError::NotEligible {
            sandbox: name.to_string(),
            why: "it was started by a brig without checkpoints; restart it first".into(),
        });
    }
    let socket = super::runtime::vsock_socket_of(sandbox.short_id());
    super::control::checkpoint(&socket).map_err(|e| failed(e.to_string()))?;
    // The VMM saves the VM and stops; its keeper records the end and lets go of the lock.
    if !sandbox.wait_gone(SAVE_TIMEOUT) {
        return Err(failed("the VMM did not stop after saving".into()));
    }
    if let Err(e) = snapshot::read(&pending) {
        let why = sandbox
            .state()
            .ok()
            .and_then(|s| s.error)
            .unwrap_or_else(|| e.to_string());
        return Err(failed(format!("the VM was not saved: {why}")));
    }
    let scratch = scratch_of(&config).ok_or_else(|| failed("no scratch disk".into()))?;
    super::scratch::sparse_copy(scratch, &pending.join(SCRATCH))
        .map_err(|e| failed(format!("copying the scratch disk: {e}")))?;
    let meta = Meta {
        name: checkpoint.to_string(),
        created: now_rfc3339(),
        brig_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let meta_path = pending.join(META);
    std::fs::write(
        &meta_path,
        serde_json::to_vec_pretty(&meta).unwrap_or_default(),
    )
    .map_err(io_err(&meta_path))?;
    std::fs::rename(&pending, &target).map_err(io_err(&target))
}

/// Readies the stopped `sandbox` to resume `checkpoint` on its next start: its scratch disk
/// as the checkpoint saved it, and the request for its keeper.
pub fn prepare_resume(
    sandbox: &Sandbox,
    name: &str,
    checkpoint: &str,
) -> Result<(), CheckpointError> {
    check_name(checkpoint)?;
    let dir = dir_of(sandbox).join(checkpoint);
    let meta = read_meta(&dir).ok_or_else(|| CheckpointError::Missing {
        sandbox: name.to_string(),
        checkpoint: checkpoint.to_string(),
    })?;
    let this = env!("CARGO_PKG_VERSION");
    if meta.brig_version != this {
        return Err(CheckpointError::Foreign {
            checkpoint: checkpoint.to_string(),
            made_by: meta.brig_version,
            this: this.to_string(),
        });
    }
    // The state is checked now (a damaged one fails here, in one line), and again by the VMM.
    snapshot::read(&dir).map_err(|e| CheckpointError::Failed {
        sandbox: name.to_string(),
        why: format!("checkpoint {checkpoint}: {e}"),
    })?;
    let config = sandbox.config()?;
    if let Some(scratch) = scratch_of(&config) {
        // A copy beside it, renamed over it: the checkpoint's own copy stays as it was.
        let tmp = scratch.with_extension("resume");
        let _ = std::fs::remove_file(&tmp);
        super::scratch::sparse_copy(&dir.join(SCRATCH), &tmp)
            .map_err(|e| e.to_string())
            .and_then(|()| std::fs::rename(&tmp, scratch).map_err(|e| e.to_string()))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                CheckpointError::Failed {
                    sandbox: name.to_string(),
                    why: format!("restoring the scratch disk: {e}"),
                }
            })?;
    }
    let marker = dir_of(sandbox).join(RESUME);
    std::fs::write(&marker, checkpoint).map_err(io_err(&marker))
}

/// Withdraws what [`prepare_resume`] asked of the next start (that start did not happen).
pub fn cancel_resume(sandbox: &Sandbox) {
    let _ = std::fs::remove_file(dir_of(sandbox).join(RESUME));
}

fn read_meta(dir: &Path) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()
}

/// The checkpoints of `sandbox`, oldest first.
pub fn list(sandbox: &Sandbox) -> Vec<Meta> {
    let mut out: Vec<Meta> = std::fs::read_dir(dir_of(sandbox))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| read_meta(&e.path()))
        .collect();
    out.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
    out
}

/// Removes checkpoint `checkpoint` of `sandbox`.
pub fn remove(sandbox: &Sandbox, name: &str, checkpoint: &str) -> Result<(), CheckpointError> {
    check_name(checkpoint)?;
    let dir = dir_of(sandbox).join(checkpoint);
    if read_meta(&dir).is_none() {
        return Err(CheckpointError::Missing {
            sandbox: name.to_string(),
            checkpoint: checkpoint.to_string(),
        });
    }
    std::fs::remove_dir_all(&dir).map_err(io_err(&dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_docker_s() {
        for good in ["c1", "ckpt-1", "A.b_c", "9"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".pending", "-x", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
