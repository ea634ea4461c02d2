//! Snapshots of a stopped VM: a state file (vCPUs, VM, devices; see [`format`]) and a memory
//! file, in one directory. [`crate::vmm::RunningVm::snapshot`] writes one,
//! [`crate::vmm::restore`] starts a VM from it. The memory file is mapped `MAP_PRIVATE`, so it
//! is never written through and any number of VMs can be restored from it at once.
//!
//! Design and sources: ../shared/design/snapshot.md.

pub mod format;
pub mod memory;
pub mod vcpu;
pub mod vm;

use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::devices::serial::SerialSnapshot;
use crate::devices::virtio::mmio::TransportState;

pub use memory::RegionState;
pub use vcpu::VcpuState;
pub use vm::VmState;

/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// A snapshot could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot: {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
    #[error("snapshot format version {found} is not this brig's ({supported})")]
    Version { found: u32, supported: u32 },
    #[error("snapshot does not fit this VM or host: {0}")]
    Incompatible(String),
    #[error("snapshot not supported here: {0}")]
    Unsupported(&'static str),
    #[error("snapshot: guest memory: {0}")]
    Memory(String),
    #[error("writing snapshot: {0}")]
    Write(#[source] std::io::Error),
    #[error("reading snapshot {0}: {1}")]
    Read(String, #[source] std::io::Error),
    #[error("the VM ended before it could be saved: {0}")]
    Ended(String),
    #[error("snapshot: {0}")]
    Vcpu(#[from] crate::vmm::vcpu::VcpuError),
}

impl SnapshotError {
    pub(crate) fn kvm(what: &'static str, source: kvm_ioctls::Error) -> Self {
        Self::Kvm { what, source }
    }
}

/// One virtio device: where it sits and its transport's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceState {
    pub base: u64,
    pub gsi: u32,
    pub transport: TransportState,
}

/// Everything in a state file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub mem_mib: u64,
    pub regions: Vec<RegionState>,
    /// The memory file's size when it was written.
    pub memory_len: u64,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub serial: SerialSnapshot,
    pub devices: Vec<DeviceState>,
}

/// Writes `snapshot` to `dir/state` (the memory file is already there): through a temporary
/// name and a rename, so that a state file, once present, is whole.
pub fn write_state(dir: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let bytes = format::encode(snapshot)?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(SnapshotError::Write)?;
    f.write_all(&bytes).map_err(SnapshotError::Write)?;
    f.sync_all().map_err(SnapshotError::Write)?;
    std::fs::rename(&tmp, dir.join(STATE_FILE)).map_err(SnapshotError::Write)
}

/// Reads and checks `dir`'s state file, and opens its memory file (read-only: it is mapped
/// copy-on-write).
pub fn read(dir: &Path) -> Result<(Snapshot, File), SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&state_path)
        .map_err(|e| SnapshotError::Read(state_path.display().to_string(), e))?;
    let snapshot: Snapshot = format::decode(&bytes)?;
    let mem_path = dir.join(MEMORY_FILE);
    let file = File::open(&mem_path)
        .map_err(|e| SnapshotError::Read(mem_path.display().to_string(), e))?;
    let len = file
        .metadata()
        .map_err(|e| SnapshotError::Read(mem_path.display().to_string(), e))?
        .len();
    if len != snapshot.memory_len {
        return Err(SnapshotError::Corrupt(format!(
            "the memory file has {len} bytes, the state says {}",
            snapshot.memory_len
        )));
    }
    Ok((snapshot, file))
}
