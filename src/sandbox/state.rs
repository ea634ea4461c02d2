//! Persistent per-sandbox state under `$BRIG_HOME/sandboxes/<id>/`: for now the scratch disk
//! of a running sandbox, removed when it ends (`--rm`), or by the next brig run if this one
//! was killed first.

use std::io;
use std::path::{Path, PathBuf};

use super::runtime;

const AUTOREMOVE: &str = "autoremove";

/// A sandbox's state directory; removed on drop.
#[derive(Debug)]
pub struct SandboxDir {
    path: PathBuf,
}

impl SandboxDir {
    /// Creates `<home>/sandboxes/<id>/`, marked for removal when the sandbox ends.
    pub fn create(home: &Path, id: &str) -> io::Result<Self> {
        let path = home.join("sandboxes").join(id);
        std::fs::create_dir_all(home.join("sandboxes"))?;
        std::fs::create_dir(&path)?;
        std::fs::write(path.join(AUTOREMOVE), "")?;
        Ok(Self { path })
    }

    /// Where the scratch disk lives.
    pub fn scratch_path(&self) -> PathBuf {
        self.path.join("scratch.ext4")
    }
}

impl Drop for SandboxDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes what sandboxes killed before their cleanup left behind: runtime directories
/// without a live VM, and auto-removed state directories whose VM is gone.
pub fn sweep_stale(home: &Path) {
    runtime::sweep_stale();
    let Ok(entries) = std::fs::read_dir(home.join("sandboxes")) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        // A sandbox's runtime directory (and its lock) exists before its state directory,
        // so a state directory without a live lock belongs to a VM that is gone.
        if path.join(AUTOREMOVE).exists() && !runtime::is_live(&id) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
