//! Runtime files of a running VM (the vsock socket and its per-port listeners), kept apart
//! from persistent state as docker keeps /run/docker apart from /var/lib/docker:
//! `$BRIG_RUNTIME_DIR`, else `/run/brig` as root, else `$XDG_RUNTIME_DIR/brig`, else
//! `/tmp/brig-<uid>`. Unix sockets cannot live on every file system (not on 9p), hence a
//! runtime directory of their own. The directory is removed when the VM ends.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// The base runtime directory for this user.
pub fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BRIG_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/brig");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("brig"),
        None => PathBuf::from(format!("/tmp/brig-{}", uid.as_raw())),
    }
}

/// A VM's runtime directory; removed (with everything in it) on drop. While it exists, its
/// `lock` file is held (flock), which tells other brig processes the VM is alive.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    lock: std::fs::File,
}

fn try_lock(file: &std::fs::File) -> bool {
    use rustix::fs::{flock, FlockOperation};
    flock(file, FlockOperation::NonBlockingLockExclusive).is_ok()
}

/// The runtime directory of sandbox `id` (named by its short id: socket paths must stay
/// short).
pub fn dir_of(id: &str) -> PathBuf {
    base_dir().join(&id[..id.len().min(12)])
}

/// Whether the VM `id` is alive: its runtime directory's lock is held by a process.
pub fn is_live(id: &str) -> bool {
    match std::fs::File::open(dir_of(id).join("lock")) {
        Ok(f) => !try_lock(&f),
        Err(_) => false,
    }
}

/// The pid of the process that holds the live VM `id`'s lock (its VMM: `brig __supervise`,
/// a foreground `brig run`, or a `brig cp` maintenance VM); `None` when the VM is not live.
pub fn pid_of(id: &str) -> Option<u32> {
    let pid = std::fs::read_to_string(dir_of(id).join("pid")).ok()?;
    let pid = pid.trim().parse().ok()?;
    // Read before checking the lock, so that a pid its holder wrote is not returned after the
    // holder let go. It can still go stale (and be reused) once returned: to signal the
    // process, pin it with `holder_pidfd`.
    is_live(id).then_some(pid)
}

/// A pidfd for the process that holds the live VM `id`'s lock: unlike a pid, it cannot come
/// to name another process, so a signal sent through it reaches that process or none
/// (`ESRCH` once it is gone). `None` when the VM is not live, or its holder changed meanwhile.
///
/// The pid is read and the lock seen held both before and after the pidfd is opened. The
/// pid file is written by each holder with its own pid, and a holder that still holds the
/// lock is alive, so the process pinned is the one the file names. The one exception is the
/// hand-over from `brig run -d` to its `__supervise` child: the lock is shared, and if the
/// parent is killed before the child records its pid, the file names a dead process for that
/// moment (whose pid would have to be reused within it to pin a wrong one).
pub fn holder_pidfd(id: &str) -> Option<OwnedFd> {
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    let pid = pid_of(id)?;
    let pidfd = pidfd_open(
        Pid::from_raw(i32::try_from(pid).ok()?)?,
        PidfdFlags::empty(),
    )
    .ok()?;
    (pid_of(id) == Some(pid)).then_some(pidfd)
}

/// Records this process as the lock holder ([`crate::atomic`]).
fn write_pid(dir: &std::path::Path) -> io::Result<()> {
    let pid = format!("{}\n", std::process::id());
    crate::atomic::write(&dir.join("pid"), pid.as_bytes(), 0o644)
}

/// Where networked sandboxes' address leases live (beside the runtime directories: gone
/// at reboot, as the sandboxes are).
pub fn leases_dir() -> PathBuf {
    base_dir().join("leases")
}

/// The vsock socket of the live VM `id` (host-initiated connections: `CONNECT <port>`).
pub fn vsock_socket_of(id: &str) -> PathBuf {
    dir_of(id).join("vsock.sock")
}

/// Removes runtime directories and address leases whose VM is gone (its brig was killed
/// before cleaning up).
pub fn sweep_stale() {
    super::network::pool::sweep(&leases_dir(), &is_live);
    let Ok(entries) = std::fs::read_dir(base_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Only sandboxes' directories (12 hex digits), not the address leases beside them.
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.len() != 12 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let stale = match std::fs::File::open(path.join("lock")) {
            Ok(f) => try_lock(&f),
            // A directory without a lock is mid-creation or not ours: leave it alone unless old.
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 60)),
        };
        if stale && path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
            // A jailed VMM's cgroup, left when its keeper was killed.
            super::jail::cgroup::remove_stale(&name);
        }
    }
}

impl RuntimeDir {
    /// Creates the runtime directory of sandbox `id` (mode 0700) and locks it.
    pub fn create(id: &str) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let base = base_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&base)?;
        let path = dir_of(id);
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        // Locked before it gets its name, so that no one ever sees an unlocked `lock`.
        let tmp = path.join("lock.tmp");
        let lock = std::fs::File::create(&tmp)?;
        if !try_lock(&lock) {
            return Err(io::Error::other(
                "runtime directory is locked by another process",
            ));
        }
        let dir = Self { path, lock };
        write_pid(&dir.path)?;
        std::fs::rename(&tmp, dir.path.join("lock"))?;
        Ok(dir)
    }

    /// Takes over the runtime directory of `id` whose lock another brig process created and
    /// handed down as the open descriptor `lock_fd` (the lock goes with the descriptor).
    pub fn adopt(id: &str, lock_fd: std::os::fd::RawFd) -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: `__supervise` is started with this descriptor open and owned by nobody else
        // in the new process.
        let lock = unsafe { std::fs::File::from_raw_fd(lock_fd) };
        // It crossed exec with close-on-exec cleared; set it again, so that the lock does not
        // leak into this process's children (mkfs), which would keep the VM looking live, its
        // pid file naming a dead process, after the VMM died.
        rustix::io::fcntl_setfd(&lock, rustix::io::FdFlags::CLOEXEC)?;
        let path = dir_of(id);
        if !path.join("lock").exists() {
            return Err(io::Error::other(
                "the runtime directory to adopt is missing",
            ));
        }
        write_pid(&path)?;
        Ok(Self { path, lock })
    }

    /// The lock's descriptor, to hand down to a `__supervise` process.
    pub fn lock_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.lock.as_raw_fd()
    }

    /// Gives up the directory without removing it (a child process now owns it).
    pub fn release(self) {
        std::mem::forget(self);
    }

    /// The VM's vsock Unix socket (host-initiated connections: `CONNECT <port>`).
    /// The directory itself (sockets of the sandbox's servers live here).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn vsock_socket(&self) -> PathBuf {
        self.path.join("vsock.sock")
    }

    /// Where guest-initiated connections to host port `port` arrive.
    pub fn vsock_listener(&self, port: u32) -> PathBuf {
        self.path.join(format!("vsock.sock_{port}"))
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A fresh sandbox id: 64 hex digits, as docker's (the first 12 are the short id).
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    let filled = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    if filled.ok() != Some(bytes.len()) {
        // Fall back to time and pid: unique enough for a sandbox on one host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let mix = (t as u64).rotate_left(i as u32 * 17) ^ (u64::from(std::process::id()) << 32);
            chunk.copy_from_slice(&mix.to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_dir_is_private_and_removed() {
        let base = tempfile::tempdir().unwrap();
        std::env::set_var("BRIG_RUNTIME_DIR", base.path());
        let id = new_id();
        assert_eq!(id.len(), 64);
        let path = {
            let dir = RuntimeDir::create(&id).unwrap();
            use std::os::unix::fs::PermissionsExt;
            let path = dir.vsock_socket().parent().unwrap().to_path_buf();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
            assert!(dir.vsock_listener(1024).ends_with("vsock.sock_1024"));
            assert!(is_live(&id));
            assert_eq!(pid_of(&id), Some(std::process::id()));
            let pidfd = holder_pidfd(&id).expect("a pidfd for this process");
            rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::CONT).unwrap();
            sweep_stale();
            assert!(path.exists(), "a live VM's directory stays");
            path
        };
        assert!(!path.exists());
        assert!(!is_live(&id));
        assert_eq!(pid_of(&id), None);
        assert!(holder_pidfd(&id).is_none());
        // A directory whose lock nobody holds is swept.
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("lock"), "").unwrap();
        sweep_stale();
        assert!(!path.exists());
        assert!(RuntimeDir::create(&id).is_ok());
    }
}
