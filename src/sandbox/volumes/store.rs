//! Named volumes: directories under `$BRIG_HOME/volumes/<name>/_data` (docker's layout), each
//! with a `volume.json` beside it. A volume is in use while any sandbox's config names it
//! (running or not, as docker counts); one in use cannot be removed.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::{check_volume_name, Source};
use crate::sandbox::state;

/// What `volume.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    /// RFC 3339.
    pub created: String,
    /// Made for `-v /path` without a name; removed with its sandbox under `--rm`.
    #[serde(default)]
    pub anonymous: bool,
}

/// A volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Name(#[from] super::spec::SpecError),
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("volume {name} is in use by sandbox {sandboxes}")]
    InUse { name: String, sandboxes: String },
    #[error("volume store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The volumes of the store at `home`.
pub struct Volumes {
    root: PathBuf,
}

impl Volumes {
    pub fn new(home: &Path) -> Self {
        Self {
            root: home.join("volumes"),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The directory a volume's content lives in.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir(name).join("_data")
    }

    /// Creates `name` unless it exists; returns its info and whether it is new.
    pub fn ensure(&self, name: &str, anonymous: bool) -> Result<(VolumeInfo, bool), StoreError> {
        check_volume_name(name)?;
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        // Only brig reads the store: a host user must not reach a guest's setuid files.
        let _ = fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700));
        let dir = self.dir(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return self.inspect(name).map(|i| (i, false));
            }
            Err(e) => return Err(io_err(&dir)(e)),
        }
        let info = VolumeInfo {
            name: name.into(),
            created: state::now_rfc3339(),
            anonymous,
        };
        let made = (|| {
            fs::create_dir(self.data_dir(name))?;
            fs::set_permissions(self.data_dir(name), fs::Permissions::from_mode(0o755))?;
            let json = serde_json::to_vec_pretty(&info)?;
            crate::atomic::write(&dir.join("volume.json"), &json, 0o644)
        })();
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&dir);
            return Err(io_err(&dir)(e));
        }
        Ok((info, true))
    }

    /// A volume's info.
    pub fn inspect(&self, name: &str) -> Result<VolumeInfo, StoreError> {
        check_volume_name(name)?;
        let path = self.dir(name).join("volume.json");
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| io_err(&path)(e.into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(name.into())),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let mut out: Vec<VolumeInfo> = entries
            .flatten()
            .filter_map(|e| self.inspect(&e.file_name().to_string_lossy()).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes `name`; refused while a sandbox of `home` uses it, unless `force`.
    pub fn remove(&self, home: &Path, name: &str, force: bool) -> Result<(), StoreError> {
        self.inspect(name)?;
        if !force {
            let users = users_of(home, name);
            if !users.is_empty() {
                return Err(StoreError::InUse {
                    name: name.into(),
                    sandboxes: users.join(", "),
                });
            }
        }
        let dir = self.dir(name);
        fs::remove_dir_all(&dir).map_err(io_err(&dir))
    }

    /// Removes every volume no sandbox uses (`all`: named ones too, else only anonymous
    /// ones, as docker's `volume prune`); returns their names.
    pub fn prune(&self, home: &Path, all: bool) -> Result<Vec<String>, StoreError> {
        let mut removed = Vec::new();
        for v in self.list()? {
            if (all || v.anonymous) && users_of(home, &v.name).is_empty() {
                self.remove(home, &v.name, true)?;
                removed.push(v.name);
            }
        }
        Ok(removed)
    }
}

/// The names of the sandboxes whose config mounts volume `name`.
pub fn users_of(home: &Path, name: &str) -> Vec<String> {
    let Ok(sandboxes) = state::list(home) else {
        return Vec::new();
    };
    sandboxes
        .iter()
        .filter_map(|s| s.config().ok())
        .filter(|c| {
            c.volumes
                .iter()
                .any(|m| matches!(&m.mount.source, Source::Volume { name: n, .. } if n == name))
        })
        .map(|c| c.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let home = tempfile::tempdir().unwrap();
        let vols = Volumes::new(home.path());
        let (info, new) = vols.ensure("data", false).unwrap();
        assert!(new && info.name == "data" && !info.anonymous);
        assert!(vols.data_dir("data").is_dir());
        let (_, new) = vols.ensure("data", false).unwrap();
        assert!(!new, "a second ensure finds it");
        vols.ensure("anon01", true).unwrap();
        let names: Vec<_> = vols.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["anon01", "data"]);
        assert_eq!(vols.prune(home.path(), false).unwrap(), ["anon01"]);
        assert!(matches!(
            vols.inspect("anon01"),
            Err(StoreError::NotFound(_))
        ));
        vols.remove(home.path(), "data", false).unwrap();
        assert!(vols.list().unwrap().is_empty());
        assert!(matches!(
            vols.remove(home.path(), "data", false),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            vols.ensure("a/b", false),
            Err(StoreError::Name(_))
        ));
        assert!(matches!(vols.inspect("../x"), Err(StoreError::Name(_))));
    }
}
