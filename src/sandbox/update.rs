//! Changing a sandbox's limits while it lives (`brig update`, `brig-runc update`): the
//! workload cgroup's memory, swap and pids limits in the guest, and the sandbox's config, so
//! that a sandbox not running yet (an OCI container between create and start) starts with
//! them. The VM's own memory is fixed when it is created: a limit above it is refused.

use brig_protocol::ResourceUpdate;

use super::control;
use super::runtime::vsock_socket_of;
use super::state::{Sandbox, StateError};

/// The limits to change; `None` leaves one as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes; 0: no limit.
    pub memory: Option<u64>,
    /// docker's MemorySwap (memory plus swap in bytes; -1: unlimited swap).
    pub memory_swap: Option<i64>,
    /// 0: no limit.
    pub pids: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Refused(String),
    #[error("changing the running sandbox's limits: {0}")]
    Control(#[from] control::ControlError),
}

/// Applies `limits` to `sandbox`.
pub fn update(sandbox: &Sandbox, limits: &Limits) -> Result<(), UpdateError> {
    let mut config = sandbox.config()?;
    let vm_bytes = config.mem_mib << 20;
    if let Some(m) = limits.memory {
        if m > vm_bytes {
            return Err(UpdateError::Refused(format!(
                "a memory limit of {m} bytes is more than the VM has ({} MiB): a VM's memory is fixed when it is created",
                config.mem_mib
            )));
        }
        if m > 0 && m < super::resources::MIN_MEMORY {
            return Err(UpdateError::Refused(
                "Minimum memory limit allowed is 6MB".into(),
            ));
        }
    }
    let run = &mut config.run;
    let mut update = ResourceUpdate::default();
    let word = |v: u64| {
        if v == 0 {
            "max".to_string()
        } else {
            v.to_string()
        }
    };
    if let Some(m) = limits.memory {
        run.memory_limit = m;
        update.memory_max = Some(word(m));
    }
    if let Some(s) = limits.memory_swap {
        if s > 0 && (s as u64) < run.memory_limit {
            return Err(UpdateError::Refused(
                "Minimum memoryswap limit should be larger than memory limit, see usage".into(),
            ));
        }
        run.memory_swap = s;
    }
    // Only when asked (the guest ignores it when its kernel has no swap).
    if limits.memory_swap.is_some() {
        update.memory_swap_max = run.swap_max();
    }
    if let Some(p) = limits.pids {
        run.pids_limit = p;
        update.pids_max = Some(word(p));
    }
    sandbox.write_config(&config)?;
    if sandbox.is_running() {
        control::update(&vsock_socket_of(&sandbox.id), &update)?;
    }
    Ok(())
}
