//! Saving a running VM: to a snapshot directory (a template, `brig boot --snapshot`), or
//! into files opened beforehand (a checkpoint of a jailed VMM, which sees no directory by
//! path once it runs: see [`SnapshotFiles`]).

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{snapshot, vcpu, RunningVm, VmmError};

/// The files a checkpoint is written into, opened before the VMM enters its jail: the
/// memory file (empty), the state file (empty; written last), and /proc/self/pagemap when
/// it could be opened (without it every page of guest memory is read, touched or not).
#[derive(Debug)]
pub struct SnapshotFiles {
    pub memory: File,
    pub state: File,
    pub pagemap: Option<File>,
}

impl SnapshotFiles {
    /// Opens `pagemap` for these files (before the jail: it has no /proc).
    pub fn new(memory: File, state: File) -> Self {
        Self {
            memory,
            state,
            pagemap: File::open("/proc/self/pagemap").ok(),
        }
    }
}

impl RunningVm {
    /// Why the VM could not be saved now (a device holds state a snapshot cannot carry, such
    /// as an open vsock connection), or `None`. Looked at without stopping the VM, so a
    /// caller can wait for it to become `None` before [`RunningVm::snapshot`].
    pub fn snapshot_blocker(&self) -> Option<String> {
        self.transports.iter().find_map(|(_, t)| {
            t.lock()
                .unwrap_or_else(|p| p.into_inner())
                .snapshot_blocker()
        })
    }

    /// Waits until nothing blocks a save ([`RunningVm::snapshot_blocker`]: the VM's last
    /// connections closing), or says what still does at `deadline`.
    pub fn wait_until_saveable(&self, deadline: std::time::Instant) -> Result<(), String> {
        while let Some(why) = self.snapshot_blocker() {
            if std::time::Instant::now() >= deadline {
                return Err(format!("the VM did not become idle: {why}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    /// Stops the VM and saves it to the directory `dir` (created if needed): its memory
    /// (`memory`, all-zero pages left as holes) and its vCPU, VM and device state (`state`,
    /// written last, so that a directory with a state file holds a whole snapshot). The VM
    /// does not resume; [`super::restore`] starts a new one from the snapshot.
    pub fn snapshot(self, dir: &std::path::Path) -> Result<(), VmmError> {
        std::fs::create_dir_all(dir).map_err(snapshot::SnapshotError::Write)?;
        let (mem_file, mem_tmp) = snapshot::create_memory_file(dir)?;
        let pagemap = File::open("/proc/self/pagemap").ok();
        let state = self.save(&mem_file, pagemap.as_ref())?;
        snapshot::replace_memory_file(dir, &mem_tmp)?;
        snapshot::write_state(dir, &state)?;
        Ok(())
    }

    /// As [`RunningVm::snapshot`], into `files`: the caller gives them their names (the
    /// state file is written last and synced, so one that is not empty is whole).
    pub fn snapshot_into(self, files: &SnapshotFiles) -> Result<(), VmmError> {
        let state = self.save(&files.memory, files.pagemap.as_ref())?;
        let bytes = snapshot::format::encode(&state)?;
        let write = |f: &File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.write_all_at(&bytes, 0)?;
            f.sync_all()
        };
        write(&files.state).map_err(snapshot::SnapshotError::Write)?;
        Ok(())
    }

    /// Stops the VM, writes its memory to `memory` (empty) and returns its state.
    ///
    /// Order (Firecracker's): vCPUs stopped with their last exit completed, the device thread
    /// stopped, then devices, vCPUs and the VM saved.
    fn save(
        mut self,
        memory: &File,
        pagemap: Option<&File>,
    ) -> Result<snapshot::Snapshot, VmmError> {
        if let Some(reason) = self.exit.reason() {
            return Err(snapshot::SnapshotError::Ended(format!("{reason:?}")).into());
        }
        let fds = vcpu::pause_all(std::mem::take(&mut self.vcpus), &self.exit)
            .map_err(snapshot::SnapshotError::from)?;
        self.event_loop.stop();
        if let Some(why) = self.snapshot_blocker() {
            return Err(snapshot::SnapshotError::Busy(why).into());
        }
        let serial = self.serial.lock().unwrap_or_else(|p| p.into_inner()).save();
        let devices = self
            .transports
            .iter()
            .map(|(slot, t)| snapshot::DeviceState {
                base: slot.base,
                gsi: slot.gsi,
                transport: t.lock().unwrap_or_else(|p| p.into_inner()).save(),
            })
            .collect();
        let msrs = snapshot::vcpu::msr_list(&self.kvm)?;
        let vcpus = fds
            .iter()
            .map(|fd| snapshot::vcpu::save(&self.kvm, fd, &msrs))
            .collect::<Result<Vec<_>, _>>()?;
        let vm = snapshot::vm::save(&self.vm)?;
        let regions = snapshot::memory::dump(&self.mem, memory, pagemap)?;
        let memory_len = regions.iter().map(|r| r.len).sum();
        Ok(snapshot::Snapshot {
            host: snapshot::host::fingerprint(&self.kvm)?,
            mem_mib: self.mem_mib,
            regions,
            memory_len,
            vcpus,
            vm,
            serial,
            devices,
        })
    }
}
