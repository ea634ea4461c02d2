//! Addresses for networked sandboxes: one /30 per sandbox from 10.89.0.0/16, clear of
//! docker's 172.17.0.0/16 and podman's 10.88.0.0/16; the host's side of the link is `.1`,
//! the guest `.2`. A lease is a file `<dir>/<index>` created exclusively and holding the
//! sandbox's id; it is released when the sandbox's network is torn down, and a lease whose
//! sandbox is no longer live (its VMM died before releasing it) is taken back by the next
//! allocation.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The pool: 10.89.0.0/16.
pub const POOL_BASE: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 0);
pub const POOL_PREFIX: u8 = 16;
/// Each sandbox's link.
pub const LINK_PREFIX: u8 = 30;
const SLOTS: u32 = 1 << (32 - POOL_PREFIX - (32 - LINK_PREFIX));

/// Allocating an address failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("network address pool {POOL_BASE}/{POOL_PREFIX} is exhausted ({SLOTS} sandboxes have an address)")]
    Exhausted,
    #[error("network address leases in {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A sandbox's link: the host's and the guest's addresses in one /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub host: Ipv4Addr,
    pub guest: Ipv4Addr,
}

impl Link {
    fn of(index: u32) -> Self {
        let net = u32::from(POOL_BASE) + index * 4;
        Self {
            index,
            host: Ipv4Addr::from(net + 1),
            guest: Ipv4Addr::from(net + 2),
        }
    }
}

/// A held lease; released (its file removed) on drop.
#[derive(Debug)]
pub struct Lease {
    pub link: Link,
    path: PathBuf,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes the first free /30 in `dir` for sandbox `id`; `is_live(id)` says whether the
/// sandbox holding a lease still runs (a dead one's lease is taken back).
pub fn allocate(dir: &Path, id: &str, is_live: &dyn Fn(&str) -> bool) -> Result<Lease, PoolError> {
    let io_err = |source| PoolError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io_err)?;
    // One allocation at a time, so that a stale lease is taken back by one brig only.
    let lock = std::fs::File::create(dir.join("lock")).map_err(io_err)?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err(e.into()))?;
    for index in 0..SLOTS {
        let path = dir.join(index.to_string());
        match std::fs::read_to_string(&path) {
            Ok(holder) if is_live(holder.trim()) => continue,
            // A dead sandbox's lease: taken back.
            Ok(_) => std::fs::remove_file(&path).map_err(io_err)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err)?;
        f.write_all(id.as_bytes()).map_err(io_err)?;
        return Ok(Lease {
            link: Link::of(index),
            path,
        });
    }
    Err(PoolError::Exhausted)
}

/// Removes the leases in `dir` whose sandbox is no longer live (its VMM was killed).
pub fn sweep(dir: &Path, is_live: &dyn Fn(&str) -> bool) {
    let Ok(lock) = std::fs::File::open(dir.join("lock")) else {
        return;
    };
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).is_err() {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.parse::<u32>().is_ok()) {
            let holder = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if !is_live(holder.trim()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_distinct_released_and_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let live = |_: &str| true;
        let a = allocate(dir.path(), "aaaa", &live).unwrap();
        let b = allocate(dir.path(), "bbbb", &live).unwrap();
        assert_eq!(a.link.host, Ipv4Addr::new(10, 89, 0, 1));
        assert_eq!(a.link.guest, Ipv4Addr::new(10, 89, 0, 2));
        assert_eq!(b.link.guest, Ipv4Addr::new(10, 89, 0, 6));
        drop(a);
        let c = allocate(dir.path(), "cccc", &live).unwrap();
        assert_eq!(c.link.index, 0, "a released lease is reused");
        // A lease whose sandbox died is taken back.
        std::mem::forget(c);
        let d = allocate(dir.path(), "dddd", &|id: &str| id != "cccc").unwrap();
        assert_eq!(d.link.index, 0);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("0")).unwrap(),
            "dddd"
        );
        sweep(dir.path(), &|id: &str| id != "dddd");
        assert!(
            !dir.path().join("0").exists(),
            "a dead sandbox's lease is swept"
        );
        assert!(dir.path().join("1").exists());
        assert_eq!(Link::of(SLOTS - 1).guest, Ipv4Addr::new(10, 89, 255, 254));
    }
}
