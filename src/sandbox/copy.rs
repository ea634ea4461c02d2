//! The host side of `brig cp`: tar streams to and from the guest agent, with docker's rules
//! for where things land.
//!
//! A running sandbox is reached over a fresh connection to the agent per request; a stopped
//! one (its state kept) through a [`MaintenanceVm`] booted on its disks. Either way a path in
//! the sandbox is first looked up (Stat), then copied: CopyOut streams a tar of it, CopyIn
//! unpacks a tar into a directory of it.
//!
//! What comes out of a sandbox is hostile. It is unpacked by the image code's [`Unpacker`]
//! ([`Policy::Copy`]: every path walked with `openat(O_NOFOLLOW)` from a fresh staging
//! directory next to the destination, no absolute paths, no `..`, no writes through symlinks,
//! bounded in bytes and entries; no owners, devices, xattrs or setuid bits), and only then
//! renamed into place. Nothing is ever written through a symlink on the host below the
//! destination the user named.
//!
//! Docker's rules (`docker cp`): copying into an existing directory puts the item inside it;
//! otherwise the destination is created (or, for a file, replaced) with that name; a source
//! ending in `/.` copies a directory's contents rather than the directory; a destination
//! ending in `/` must be a directory.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use brig_protocol::{
    read_message, write_message, ChunkWriter, FileKind, Message, PathInfo, EXEC_PORT,
};

use super::control::{self, ControlError};
use super::maintenance::{MaintenanceError, MaintenanceVm};
use super::runtime::vsock_socket_of;
use super::state::Sandbox;
use crate::image::layer::{DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES};
use crate::image::unpack::Limits;

/// A copy failed; the message is the one line the user reads.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CopyError(pub String);

impl CopyError {
    fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

impl From<ControlError> for CopyError {
    fn from(e: ControlError) -> Self {
        Self(e.to_string())
    }
}

impl From<MaintenanceError> for CopyError {
    fn from(e: MaintenanceError) -> Self {
        Self(e.to_string())
    }
}

fn io_err(what: &Path) -> impl Fn(io::Error) -> CopyError + '_ {
    move |e| CopyError(format!("{}: {e}", what.display()))
}

/// How much a copy out of a sandbox may unpack on the host: `BRIG_MAX_COPY_BYTES`
/// (uncompressed bytes, default 64 GiB) and `BRIG_MAX_COPY_ENTRIES` (default 4,000,000).
pub fn limits() -> Limits {
    let get = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(d)
    };
    Limits {
        max_bytes: get("BRIG_MAX_COPY_BYTES", DEFAULT_MAX_BYTES),
        max_entries: get("BRIG_MAX_COPY_ENTRIES", DEFAULT_MAX_ENTRIES),
    }
}

/// A path in the sandbox as the user wrote it (relative to its root, as docker reads it),
/// cleaned lexically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPath {
    /// Absolute, without `.`, `..` or repeated slashes.
    pub path: String,
    /// Written with a trailing `/` (or `/.`): must be a directory.
    pub dir: bool,
    /// Written with a trailing `/.`: a directory's contents rather than the directory.
    pub contents: bool,
}

impl SandboxPath {
    /// Cleans `raw`; a `..` that would climb above the sandbox's root is an error.
    pub fn parse(raw: &str) -> Result<Self, CopyError> {
        if raw.is_empty() {
            return Err(CopyError::new("empty path in the sandbox"));
        }
        if raw.contains('\0') {
            return Err(CopyError::new("a path in the sandbox cannot contain NUL"));
        }
        let mut parts: Vec<&str> = Vec::new();
        for c in raw.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(CopyError(format!("{raw}: the path is outside the sandbox")));
                    }
                }
                c => parts.push(c),
            }
        }
        let contents = raw.ends_with("/.") || raw == ".";
        Ok(Self {
            path: format!("/{}", parts.join("/")),
            dir: contents || raw.ends_with('/'),
            contents,
        })
    }

    /// The last component; `None` for the root.
    pub fn name(&self) -> Option<&str> {
        self.path.rsplit('/').next().filter(|n| !n.is_empty())
    }

    /// The directory the path is in (`/` for the root itself).
    pub fn parent(&self) -> String {
        match self.path.rfind('/') {
            Some(0) | None => "/".into(),
            Some(i) => self.path[..i].to_string(),
        }
    }
}

/// The way to a sandbox's agent for the length of one `brig cp`.
pub enum Channel {
    /// A running sandbox: a new connection to the agent per request.
    Running(PathBuf),
    /// A stopped sandbox: a maintenance VM on its disks, one connection for everything.
    Stopped(Box<MaintenanceVm>),
}

/// Reads the tar stream the agent sends in Stdout frames, up to its Done.
struct GuestTar<'a> {
    conn: &'a mut UnixStream,
    buf: Vec<u8>,
    pos: usize,
    /// `Some(Ok)` once Done arrived; `Some(Err)` when the guest or the connection failed.
    end: Option<Result<(), String>>,
}

impl GuestTar<'_> {
    fn fill(&mut self) {
        while self.pos == self.buf.len() && self.end.is_none() {
            self.end = match read_message(self.conn) {
                Ok(Some(Message::Stdout(data))) => {
                    self.buf = data;
                    self.pos = 0;
                    None
                }
                Ok(Some(Message::Done { error: None })) => Some(Ok(())),
                Ok(Some(Message::Done { error: Some(e) })) => Some(Err(e)),
                Ok(Some(other)) => Some(Err(format!(
                    "the guest agent sent an unexpected frame: {other:?}"
                ))),
                Ok(None) => Some(Err(
                    "the guest agent closed the connection in the middle of the copy".into(),
                )),
                Err(e) => Some(Err(format!("the guest agent: {e}"))),
            };
        }
    }

    /// Reads what is left up to Done (a tar reader stops at the end-of-archive blocks);
    /// a guest that keeps sending past `max` bytes is cut off.
    fn finish(&mut self, max: usize) -> Result<(), String> {
        let mut left = max;
        loop {
            self.pos = self.buf.len();
            self.fill();
            match &self.end {
                Some(r) => return r.clone(),
                None if self.buf.len() > left => {
                    return Err("the guest agent sent more than the archive".into())
                }
                None => left -= self.buf.len(),
            }
        }
    }
}

impl Read for GuestTar<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.fill();
        if self.pos == self.buf.len() {
            return match &self.end {
                Some(Err(e)) => Err(io::Error::other(e.clone())),
                _ => Ok(0),
            };
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads the agent's Done.
fn read_done(conn: &mut UnixStream) -> Result<(), CopyError> {
    match read_message(conn) {
        Ok(Some(Message::Done { error: None })) => Ok(()),
        Ok(Some(Message::Done { error: Some(e) })) => Err(CopyError(e)),
        Ok(Some(other)) => Err(CopyError(format!("the guest agent answered {other:?}"))),
        Ok(None) => Err(CopyError::new(
            "the guest agent closed the connection without answering",
        )),
        Err(e) => Err(CopyError(format!("the guest agent: {e}"))),
    }
}

impl Channel {
    /// Opens the way to `sandbox`: its agent when it runs, else a maintenance VM.
    pub fn open(sandbox: &Sandbox) -> Result<Self, CopyError> {
        if super::pause::is_paused(sandbox) {
            return Err(CopyError(format!(
                "sandbox {} is paused, unpause it before copying",
                sandbox.short_id()
            )));
        }
        if sandbox.is_running() {
            return Ok(Self::Running(vsock_socket_of(&sandbox.id)));
        }
        Ok(Self::Stopped(Box::new(MaintenanceVm::boot(sandbox)?)))
    }

    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut UnixStream) -> Result<T, CopyError>,
    ) -> Result<T, CopyError> {
        match self {
            Self::Running(socket) => {
                let mut conn = control::connect(socket, EXEC_PORT, Duration::from_secs(10))?;
                control::expect_hello(&mut conn)?;
                f(&mut conn)
            }
            Self::Stopped(vm) => f(vm.conn()),
        }
    }

    /// Looks `path` up in the sandbox.
    pub fn stat(&mut self, path: &str) -> Result<PathInfo, CopyError> {
        self.with(|conn| {
            write_message(conn, &Message::Stat { path: path.into() })
                .map_err(|e| CopyError(format!("the guest agent: {e}")))?;
            match read_message(conn) {
                Ok(Some(Message::PathInfo(info))) => Ok(info),
                Ok(Some(Message::Done { error: Some(e) })) => Err(CopyError(e)),
                Ok(other) => Err(CopyError(format!("the guest agent answered {other:?}"))),
                Err(e) => Err(CopyError(format!("the guest agent: {e}"))),
            }
        })
    }

    /// Has the agent send `path` as a tar stream, which `sink` reads (the whole of it, or
    /// it fails).
    pub fn copy_out(
        &mut self,
        path: &str,
        sink: impl FnOnce(&mut dyn Read) -> Result<(), CopyError>,
    ) -> Result<(), CopyError> {
        self.with(|conn| {
            write_message(conn, &Message::CopyOut { path: path.into() })
                .map_err(|e| CopyError(format!("the guest agent: {e}")))?;
            let mut tar = GuestTar {
                conn,
                buf: Vec::new(),
                pos: 0,
                end: None,
            };
            let result = sink(&mut tar);
            // The guest's own error says more than what the reader made of it.
            if let Some(Err(e)) = &tar.end {
                return Err(CopyError(e.clone()));
            }
            result?;
            tar.finish(1 << 20).map_err(CopyError)
        })
    }

    /// Sends the tar stream `source` writes, for the agent to unpack into the directory
    /// `dir` of the sandbox.
    pub fn copy_in(
        &mut self,
        dir: &str,
        source: impl FnOnce(&mut dyn Write) -> Result<(), CopyError>,
    ) -> Result<(), CopyError> {
        self.with(|conn| {
            write_message(conn, &Message::CopyIn { path: dir.into() })
                .map_err(|e| CopyError(format!("the guest agent: {e}")))?;
            let sent = {
                let mut w = ChunkWriter::new(|chunk| write_message(conn, &Message::Stdin(chunk)));
                source(&mut w).and_then(|_| w.flush().map_err(|e| CopyError(e.to_string())))
            }
            .and_then(|_| {
                write_message(conn, &Message::Stdin(Vec::new()))
                    .map_err(|e| CopyError(e.to_string()))
            });
            // When the guest stopped reading, its Done says why.
            let done = read_done(conn);
            match (sent, done) {
                (_, Err(e)) => Err(e),
                (Err(e), Ok(())) => Err(e),
                (Ok(()), Ok(())) => Ok(()),
            }
        })
    }

    /// Ends the session (a maintenance VM syncs the sandbox's disks and ends).
    pub fn finish(self) -> Result<(), CopyError> {
        match self {
            Self::Running(_) => Ok(()),
            Self::Stopped(vm) => vm.finish().map_err(CopyError::from),
        }
    }
}

pub use place::{host_path_flags, plan_in, plan_out, receive, send_tree};

/// Runs `f` over a channel to `sandbox`, then ends the channel; `f`'s error comes first.
fn session<T>(
    sandbox: &Sandbox,
    f: impl FnOnce(&mut Channel) -> Result<T, CopyError>,
) -> Result<T, CopyError> {
    let mut chan = Channel::open(sandbox)?;
    let result = f(&mut chan);
    let finished = chan.finish();
    let value = result?;
    finished.map(|_| value)
}

/// `brig cp NAME:SRC DEST`: `src` of the sandbox (called `label` in messages) to the host
/// path `dest` (`-`: a tar stream on stdout).
pub fn copy_from(
    sandbox: &Sandbox,
    label: &str,
    src: &SandboxPath,
    dest: &str,
) -> Result<(), CopyError> {
    let (dest_slash, _) = host_path_flags(dest);
    let dest_path = Path::new(dest);
    // What can be checked on the host is checked before any VM is started.
    if dest != "-" && !dest_path.exists() && !place::parent_of(dest_path).is_dir() {
        return Err(CopyError(format!(
            "{}: no such directory",
            place::parent_of(dest_path).display()
        )));
    }
    if src.name().is_none() {
        return Err(CopyError::new(
            "copying the whole root of a sandbox is not supported; name a directory",
        ));
    }
    session(sandbox, |chan| {
        let info = chan.stat(&src.path)?;
        if info.kind == FileKind::Missing {
            return Err(CopyError(format!(
                "no such file or directory in sandbox {label}: {}",
                src.path
            )));
        }
        if dest == "-" {
            if src.dir && info.kind != FileKind::Directory {
                return Err(CopyError(format!(
                    "{}: not a directory in the sandbox",
                    src.path
                )));
            }
            let mut out = io::stdout().lock();
            return chan.copy_out(&src.path, |tar| {
                io::copy(tar, &mut out)
                    .and_then(|_| out.flush())
                    .map(|_| ())
                    .map_err(|e| CopyError(format!("stdout: {e}")))
            });
        }
        let (landing, stage_in) = plan_out(src, info.kind, dest_path, dest_slash)?;
        let name = src.name().unwrap_or_default();
        chan.copy_out(&src.path, |tar| receive(tar, name, &stage_in, &landing))
    })
}

/// `brig cp SRC NAME:DEST`: the host path `src` (`-`: a tar stream on stdin) into the
/// sandbox at `dest`.
pub fn copy_to(sandbox: &Sandbox, src: &str, dest: &SandboxPath) -> Result<(), CopyError> {
    if src == "-" {
        return session(sandbox, |chan| {
            if chan.stat(&dest.path)?.kind != FileKind::Directory {
                return Err(CopyError(format!(
                    "{}: the destination of a tar stream must be a directory in the sandbox",
                    dest.path
                )));
            }
            chan.copy_in(&dest.path, |w| {
                io::copy(&mut io::stdin().lock(), w)
                    .map(|_| ())
                    .map_err(|e| CopyError(format!("stdin: {e}")))
            })
        });
    }
    let (src_slash, contents) = host_path_flags(src);
    let src_path = Path::new(src);
    let meta = if src_slash {
        std::fs::metadata(src_path)
    } else {
        std::fs::symlink_metadata(src_path)
    };
    let meta = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CopyError(format!("no such file or directory: {src}")))
        }
        Err(e) => return Err(io_err(src_path)(e)),
    };
    if src_slash && !meta.is_dir() {
        return Err(CopyError(format!("{src}: not a directory")));
    }
    session(sandbox, |chan| {
        let kind = chan.stat(&dest.path)?.kind;
        let plan = plan_in(src_path, meta.is_dir(), contents, dest, kind, |p| {
            chan.stat(p).map(|i| i.kind)
        })?;
        chan.copy_in(&plan.dir, |w| {
            send_tree(w, src_path, plan.name.as_deref())
                .map_err(|e| CopyError(format!("{src}: {e}")))
        })
    })
}

mod place;

#[cfg(test)]
mod tests;
