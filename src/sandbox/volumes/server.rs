//! One file server (virtiofsd, the Rust one) per shared directory, started before the VM and
//! gone with it.
//!
//! Defence in depth around the server, whatever the guest's kernel sends it:
//! - It sees the share through a bind mount made in a mount namespace of its own, `nodev`
//!   and `nosuid` (and read-only for `:ro`), so no request can make it open a host device
//!   node the guest made (CVE-2020-35517) or honour a setuid bit; submounts of the host
//!   directory are not shared (the bind is not recursive).
//! - virtiofsd then sandboxes itself: `--sandbox namespace` (pivot_root into the share, new
//!   mount, PID and network namespaces), `--seccomp kill`, `--inode-file-handles=never` (no
//!   `open_by_handle_at`, which could open any inode of the file system), `--readonly` for
//!   `:ro`.
//! - Guest uids: by default every uid the guest uses is squashed to the share's owner on the
//!   host (`--translate-uid squash-guest`), and to nobody (65534) when that owner is root, so
//!   a guest never creates a root-owned (or setuid-root) file on the host; `:passthrough`
//!   keeps docker's pass-through.
//! - `PR_SET_PDEATHSIG`: the server dies with the VMM process, however that ends, and
//!   [`Server`]'s drop kills and reaps it when the sandbox ends normally.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::spec::Ownership;

/// The uid/gid guest files get in a root-owned share.
const NOBODY: u32 = 65534;

/// A server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "volumes need virtiofsd (the Rust one, 1.10 or later): run scripts/setup.sh, \
         or install it with `cargo install virtiofsd` and set BRIG_VIRTIOFSD"
    )]
    Missing,
    #[error("volume {path}: {source}")]
    Source {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("starting virtiofsd for {path}: {source}")]
    Spawn {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// What to serve.
#[derive(Debug, Clone)]
pub struct Share {
    /// The host directory, or a single file.
    pub source: PathBuf,
    pub read_only: bool,
    pub ownership: Ownership,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// Its vhost-user socket.
    pub socket: PathBuf,
    staging: PathBuf,
}

/// The virtiofsd binary: `$BRIG_VIRTIOFSD`, or the first found of `virtiofsd` in PATH and
/// the places packages and scripts/setup.sh put it.
pub fn binary() -> Result<PathBuf, ServerError> {
    if let Some(p) = std::env::var_os("BRIG_VIRTIOFSD").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let fixed = [
        "/usr/local/libexec/virtiofsd",
        "/usr/libexec/virtiofsd",
        "/usr/local/bin/virtiofsd",
    ];
    std::env::split_paths(&path)
        .map(|d| d.join("virtiofsd"))
        .chain(fixed.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or(ServerError::Missing)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// The `--translate-uid/gid` arguments for `ownership` of a share owned by `uid:gid`; for a
/// rootless server (in a user namespace where it is 0, the user outside) every guest id
/// becomes that 0: the user's own files.
pub fn translation(ownership: Ownership, uid: u32, gid: u32, rootless: bool) -> Vec<String> {
    match ownership {
        Ownership::Passthrough if !rootless => Vec::new(),
        _ => {
            let (uid, gid) = if rootless {
                (0, 0)
            } else if uid == 0 {
                (NOBODY, NOBODY)
            } else {
                (uid, gid)
            };
            vec![
                format!("--translate-uid=squash-guest:0:{uid}:4294967295"),
                format!("--translate-gid=squash-guest:0:{gid}:4294967295"),
            ]
        }
    }
}

impl Server {
    /// Starts a server for `share`; its socket and staging mount point are named after
    /// `index` in `dir` (the sandbox's runtime directory), its log goes to `log`.
    pub fn start(share: &Share, dir: &Path, index: usize, log: &Path) -> Result<Self, ServerError> {
        let path = share.source.display().to_string();
        let src_err = |source| ServerError::Source {
            path: path.clone(),
            source,
        };
        let meta = fs::metadata(&share.source).map_err(src_err)?;
        let is_file = meta.is_file();
        if !is_file && !meta.is_dir() {
            return Err(src_err(io::Error::other(
                "is neither a directory nor a regular file",
            )));
        }
        let exe = binary()?;
        let socket = dir.join(format!("fs{index}.sock"));
        let staging = dir.join(format!("fs{index}"));
        let _ = fs::remove_file(&socket);
        fs::create_dir_all(&staging).map_err(src_err)?;
        let file = is_file.then(|| {
            share
                .source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into())
        });
        // A directory owns what is made in it; a single file's directory owns the file.
        let owner = if is_file {
            fs::metadata(share.source.parent().unwrap_or(Path::new("/"))).map_err(src_err)?
        } else {
            meta
        };

        // brig listens, virtiofsd accepts (--fd): the VMM can connect at once, with no wait
        // for the server to come up and no window in which the socket exists unlistened.
        let listener = UnixListener::bind(&socket).map_err(src_err)?;
        let listen_fd = listener.as_raw_fd();
        // Rootless: the server gets a user namespace in which it is root (the user outside),
        // which is what lets it make its own mount namespace and sandbox itself.
        let rootless = !rustix::process::geteuid().is_root();
        let uid_map = format!("0 {} 1\n", rustix::process::geteuid().as_raw());
        let gid_map = format!("0 {} 1\n", rustix::process::getegid().as_raw());
        let mut cmd = Command::new(&exe);
        cmd.arg(format!("--shared-dir={}", staging.display()))
            .arg(format!("--fd={listen_fd}"))
            .args([
                "--sandbox=namespace",
                "--seccomp=kill",
                "--inode-file-handles=never",
                "--cache=auto",
                "--log-level=error",
                // No device nodes: a guest mknod of a block or char device fails.
                "--modcaps=-mknod",
            ])
            .args(translation(
                share.ownership,
                owner.uid(),
                owner.gid(),
                rootless,
            ));
        if share.read_only {
            cmd.arg("--readonly");
        }
        let log = fs::File::create(log).map_err(src_err)?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);

        let c_src = cpath(&share.source).map_err(src_err)?;
        let c_staging = cpath(&staging).map_err(src_err)?;
        let c_file = match &file {
            Some(name) => Some(cpath(&staging.join(name)).map_err(src_err)?),
            None => None,
        };
        let c_root = c"/";
        let c_tmpfs = c"tmpfs";
        let read_only = share.read_only;
        // SAFETY: between fork and exec only system calls on strings made before the fork:
        // no allocation, no locks.
        unsafe {
            cmd.pre_exec(move || {
                let check = |r: libc::c_int| {
                    if r < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
                // The listening socket crosses exec.
                check(libc::fcntl(listen_fd, libc::F_SETFD, 0))?;
                if rootless {
                    check(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS))?;
                    for (file, text) in [
                        (c"/proc/self/setgroups", "deny".as_bytes()),
                        (c"/proc/self/uid_map", uid_map.as_bytes()),
                        (c"/proc/self/gid_map", gid_map.as_bytes()),
                    ] {
                        let fd = libc::open(file.as_ptr(), libc::O_WRONLY);
                        check(fd)?;
                        let n = libc::write(fd, text.as_ptr().cast(), text.len());
                        libc::close(fd);
                        if n != text.len() as isize {
                            return Err(io::Error::last_os_error());
                        }
                    }
                } else {
                    check(libc::unshare(libc::CLONE_NEWNS))?;
                }
                // Nothing mounted here reaches the host's namespace.
                check(libc::mount(
                    std::ptr::null(),
                    c_root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                let null: *const libc::c_char = std::ptr::null();
                let no_data: *const libc::c_void = std::ptr::null();
                let target = match &c_file {
                    None => c_staging.as_ptr(),
                    Some(f) => {
                        // A single file: a tmpfs holding only an empty file to bind it onto,
                        // so that its siblings stay out of the guest's reach.
                        check(libc::mount(
                            c_tmpfs.as_ptr(),
                            c_staging.as_ptr(),
                            c_tmpfs.as_ptr(),
                            libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOEXEC,
                            no_data,
                        ))?;
                        let fd = libc::open(f.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
                        check(fd)?;
                        libc::close(fd);
                        f.as_ptr()
                    }
                };
                check(libc::mount(
                    c_src.as_ptr(),
                    target,
                    null,
                    libc::MS_BIND,
                    no_data,
                ))?;
                let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NODEV | libc::MS_NOSUID;
                if read_only {
                    flags |= libc::MS_RDONLY;
                }
                check(libc::mount(null, target, null, flags, no_data))
            });
        }
        let child = cmd.spawn().map_err(|source| ServerError::Spawn {
            path: path.clone(),
            source,
        })?;
        drop(listener);
        Ok(Server {
            child: Some(child),
            socket,
            staging,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(&self.socket);
        let _ = fs::remove_dir(&self.staging);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_translation() {
        assert!(translation(Ownership::Passthrough, 1000, 1000, false).is_empty());
        assert_eq!(
            translation(Ownership::Owner, 1000, 100, false),
            [
                "--translate-uid=squash-guest:0:1000:4294967295",
                "--translate-gid=squash-guest:0:100:4294967295"
            ]
        );
        // A root-owned share never gets root-owned guest files.
        assert!(translation(Ownership::Owner, 0, 0, false)[0].contains(":65534:"));
        // Rootless: the server's own 0, the user outside.
        assert!(translation(Ownership::Passthrough, 1000, 1000, true)[0].contains(":0:0:"));
    }
}
