//! Snapshots of a stopped VM: a state file (vCPUs, VM, devices; see [`format`]) and a memory
//! file, in one directory. [`crate::vmm::RunningVm::snapshot`] writes one,
//! [`crate::vmm::restore`] starts a VM from it. The memory file is mapped `MAP_PRIVATE`, so it
//! is never written through and any number of VMs can be restored from it at once.
//!
//! Design and sources: ../shared/design/snapshot.md.

pub mod format;
pub mod host;
#[cfg(test)]
mod kvm_tests;
pub mod memory;
pub mod vcpu;
pub mod vm;
pub mod workingset;

use std::fs::File;
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
    #[error("cannot save the VM now: {0}")]
    Busy(String),
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
    /// Where it was made: a snapshot is only restored on the same host.
    pub host: host::HostFingerprint,
    pub mem_mib: u64,
    pub regions: Vec<RegionState>,
    /// The memory file's size when it was written.
    pub memory_len: u64,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub serial: SerialSnapshot,
    pub devices: Vec<DeviceState>,
}

/// A new, empty memory file in `dir` under a temporary name (see [`replace_memory_file`]).
pub fn create_memory_file(dir: &Path) -> Result<(File, std::path::PathBuf), SnapshotError> {
    let tmp = dir.join(format!("{MEMORY_FILE}.tmp"));
    let file = File::create(&tmp).map_err(SnapshotError::Write)?;
    Ok((file, tmp))
}

/// Puts the memory file written at `tmp` in place. A snapshot already in `dir` is never
/// written over: its state file goes first (so that no reader pairs it with the new
/// memory), then the new memory file is renamed over the old one, whose pages VMs restored
/// from it keep (a truncated file would fault them).
pub fn replace_memory_file(dir: &Path, tmp: &Path) -> Result<(), SnapshotError> {
    match std::fs::remove_file(dir.join(STATE_FILE)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(SnapshotError::Write(e)),
    }
    std::fs::rename(tmp, dir.join(MEMORY_FILE)).map_err(SnapshotError::Write)
}

/// Writes `snapshot` to `dir/state` (the memory file is already there): through a temporary
/// name and a rename, so that a state file, once present, is whole.
pub fn write_state(dir: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let bytes = format::encode(snapshot)?;
    crate::atomic::write(&dir.join(STATE_FILE), &bytes, 0o644).map_err(SnapshotError::Write)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample(memory_len: u64) -> Snapshot {
        Snapshot {
            host: host::HostFingerprint {
                kernel: "k".into(),
                brig: "b".into(),
                cpuid: "c".into(),
                msrs: "m".into(),
            },
            mem_mib: 32,
            regions: vec![RegionState {
                gpa: 0,
                len: memory_len,
                file_offset: 0,
            }],
            memory_len,
            vcpus: Vec::new(),
            vm: VmState {
                pit: Default::default(),
                clock: Default::default(),
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
            },
            serial: SerialSnapshot {
                baud_divisor_low: 12,
                baud_divisor_high: 0,
                interrupt_enable: 0,
                interrupt_identification: 1,
                line_control: 3,
                line_status: 0x60,
                modem_control: 8,
                modem_status: 0xb0,
                scratch: 0,
                in_buffer: Vec::new(),
            },
            devices: Vec::new(),
        }
    }

    /// A snapshot directory is read back whole, and a truncated memory file or a damaged
    /// state file is refused before anything is mapped.
    /// Saving again into a directory never writes through the memory file a restored VM
    /// maps: the old file keeps its contents (and inode), the new one replaces it.
    #[test]
    fn a_new_snapshot_replaces_the_old_files_without_writing_them() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let (mut f, tmp) = create_memory_file(dir.path()).unwrap();
        f.write_all(&[1u8; 4096]).unwrap();
        replace_memory_file(dir.path(), &tmp).unwrap();
        write_state(dir.path(), &sample(4096)).unwrap();
        let mut old = File::open(dir.path().join(MEMORY_FILE)).unwrap();

        let (mut f, tmp) = create_memory_file(dir.path()).unwrap();
        assert!(
            dir.path().join(STATE_FILE).exists(),
            "still whole while writing"
        );
        f.write_all(&[2u8; 4096]).unwrap();
        replace_memory_file(dir.path(), &tmp).unwrap();
        assert!(
            !dir.path().join(STATE_FILE).exists(),
            "no state for the new memory yet"
        );
        write_state(dir.path(), &sample(4096)).unwrap();

        let mut bytes = Vec::new();
        old.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, vec![1u8; 4096], "the old file is untouched");
        let (_, mut new) = read(dir.path()).unwrap();
        bytes.clear();
        new.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, vec![2u8; 4096]);
    }

    #[test]
    fn a_directory_round_trips_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MEMORY_FILE), vec![0u8; 8192]).unwrap();
        write_state(dir.path(), &sample(8192)).unwrap();
        let (back, _file) = read(dir.path()).unwrap();
        assert_eq!(back.memory_len, 8192);
        assert_eq!(back.serial, sample(8192).serial);
        assert!(!dir.path().join("state.tmp").exists());

        std::fs::write(dir.path().join(MEMORY_FILE), vec![0u8; 4096]).unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("memory file has 4096 bytes"), "{err}");

        let state = dir.path().join(STATE_FILE);
        let mut bytes = std::fs::read(&state).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        std::fs::write(&state, &bytes).unwrap();
        assert!(matches!(read(dir.path()), Err(SnapshotError::Corrupt(_))));
        std::fs::remove_file(&state).unwrap();
        assert!(matches!(read(dir.path()), Err(SnapshotError::Read(..))));
    }
}
