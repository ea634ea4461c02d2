//! Spawning the workload and relaying its stdio over the host connection.
//!
//! stdout and stderr are pipes (or, with a TTY, one pseudo-terminal) read by one thread
//! each; a third thread reads the host's frames (stdin, signals, resizes). The caller, pid 1,
//! reaps: it waits for every child and reports the workload's own status.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use brig_protocol::{read_message, write_message, ExecErrorKind, Message, RunSpec, MAX_DATA};

use crate::confine::Confinement;
use crate::sys::check;
use crate::user::Identity;

/// Default PATH, as docker sets it when the image has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The connection to the host, shared by the threads that write frames.
pub type HostWriter = Arc<Mutex<File>>;

pub fn send(writer: &HostWriter, msg: &Message) -> io::Result<()> {
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    write_message(&mut *w, msg)
}

/// A running workload and the threads relaying its output.
pub struct Workload {
    pub pid: i32,
    outputs: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Waits until every output stream reached EOF and was sent to the host.
    pub fn finish_output(self) {
        for t in self.outputs {
            let _ = t.join();
        }
    }
}

/// A failure before the workload ran, with the exit-code class the host maps it to.
pub struct SpawnError {
    pub kind: ExecErrorKind,
    pub message: String,
}

impl SpawnError {
    pub fn setup(message: impl Into<String>) -> Self {
        Self {
            kind: ExecErrorKind::Setup,
            message: message.into(),
        }
    }
}

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        "as" => libc::RLIMIT_AS,
        _ => return None,
    })
}

/// Opens a pseudo-terminal pair of the given size: (master, slave).
fn open_pty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: master/slave are valid out-pointers; name and termios may be null; ws is valid.
    check(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    })?;
    // SAFETY: openpty returned two fresh descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

fn set_winsize(fd: i32, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: fd is the pty master; ws is a valid winsize.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

fn relay_output(mut src: File, writer: HostWriter, stderr: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_DATA];
        loop {
            match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let data = buf[..n].to_vec();
                    let msg = if stderr {
                        Message::Stderr(data)
                    } else {
                        Message::Stdout(data)
                    };
                    if send(&writer, &msg).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EIO: the pty's last slave closed.
                Err(_) => break,
            }
        }
    })
}

/// Relays the host's frames to the workload until the host closes the connection.
fn relay_input(mut conn: File, stdin: Option<File>, pid: i32, pty_master: Option<i32>) {
    std::thread::spawn(move || {
        let mut stdin = stdin;
        while let Ok(Some(msg)) = read_message(&mut conn) {
            match msg {
                Message::Stdin(data) if data.is_empty() => {
                    match (&mut stdin, pty_master) {
                        // With a TTY, end of input is the terminal's EOF character.
                        (Some(t), Some(_)) => {
                            let _ = t.write_all(&[4]);
                        }
                        _ => stdin = None,
                    }
                }
                Message::Stdin(data) => {
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(&data).is_err() {
                            stdin = None;
                        }
                    }
                }
                Message::Signal(sig) => {
                    let _ = crate::sys::kill(pid, sig);
                }
                Message::Resize { rows, cols } => {
                    if let Some(fd) = pty_master {
                        set_winsize(fd, rows, cols);
                    }
                }
                _ => {}
            }
        }
    });
}

/// Finds `program` the way execvp does with the workload's PATH; errors say what docker says.
fn find_program(program: &str, path: &str) -> Result<String, SpawnError> {
    use std::os::unix::fs::PermissionsExt;
    let check_file = |p: &str| -> Result<(), SpawnError> {
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
            Ok(_) => Err(SpawnError {
                kind: ExecErrorKind::NotExecutable,
                message: format!("exec {program}: permission denied"),
            }),
            Err(_) => Err(SpawnError {
                kind: ExecErrorKind::NotFound,
                message: format!("exec {program}: no such file or directory"),
            }),
        }
    };
    if program.contains('/') {
        check_file(program)?;
        return Ok(program.to_string());
    }
    let mut denied = None;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = format!("{dir}/{program}");
        match check_file(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind == ExecErrorKind::NotExecutable => denied = Some(e),
            Err(_) => {}
        }
    }
    Err(denied.unwrap_or(SpawnError {
        kind: ExecErrorKind::NotFound,
        message: format!("exec: \"{program}\": executable file not found in $PATH"),
    }))
}

fn classify(program: &str, e: &io::Error) -> SpawnError {
    let kind = match e.raw_os_error() {
        Some(libc::ENOENT) => ExecErrorKind::NotFound,
        Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) | Some(libc::ETXTBSY) => {
            ExecErrorKind::NotExecutable
        }
        _ => ExecErrorKind::Setup,
    };
    SpawnError {
        kind,
        message: format!("exec {program}: {e}"),
    }
}

/// Spawns the workload as described by `spec`, running as `id` with `env`. Its stdio is
/// relayed over `conn` (frames from the host) and `writer` (frames to the host).
/// `cgroup_procs` is an open `cgroup.procs` the child joins before exec. `mark` is called
/// with the name of each step done ("program found", then "forked, exec'd"), for
/// `--timings`.
pub fn spawn(
    spec: &RunSpec,
    id: &Identity,
    env: Vec<(String, String)>,
    conn: File,
    writer: HostWriter,
    cgroup_procs: Option<File>,
    mark: &mut dyn FnMut(&str),
) -> Result<Workload, SpawnError> {
    let program = spec
        .argv
        .first()
        .ok_or_else(|| SpawnError::setup("no command given"))?;
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let resolved = find_program(program, path)?;
    mark("program found");
    let mut cmd = Command::new(&resolved);
    cmd.arg0(program)
        .args(&spec.argv[1..])
        .env_clear()
        .envs(env)
        .current_dir(&spec.cwd);

    let mut rlimits = Vec::new();
    for r in &spec.rlimits {
        let res = rlimit_resource(&r.resource)
            .ok_or_else(|| SpawnError::setup(format!("unknown ulimit {:?}", r.resource)))?;
        rlimits.push((res, r.soft, r.hard));
    }
    let (uid, gid) = (id.uid, id.gid);
    let groups: Vec<libc::gid_t> = id.groups.clone();
    let tty = spec.tty;
    let umask = spec.umask.map(|m| (m & 0o777) as libc::mode_t);
    let cgroup_fd = cgroup_procs.as_ref().map(|f| f.as_raw_fd());
    let confinement = spec.security.as_ref().map(Confinement::new);

    let pty = if tty {
        Some(
            open_pty(spec.rows, spec.cols)
                .map_err(|e| SpawnError::setup(format!("allocating a TTY: {e}")))?,
        )
    } else {
        None
    };
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| SpawnError::setup(format!("dup: {e}")))
    };
    match &pty {
        Some((_, slave)) => {
            cmd.stdin(Stdio::from(dup(slave)?))
                .stdout(Stdio::from(dup(slave)?))
                .stderr(Stdio::from(dup(slave)?));
        }
        None => {
            cmd.stdin(if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        }
    }

    // SAFETY: the closure runs in the forked child before exec and only makes system calls
    // on values prepared above (no allocation, no locks); the confinement comes last, in
    // runc's order, so that the seccomp filter sees only exec after it.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::setsid())?;
            if tty {
                check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            }
            if let Some(m) = umask {
                libc::umask(m);
            }
            if let Some(fd) = cgroup_fd {
                if libc::write(fd, b"0".as_ptr().cast(), 1) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (res, soft, hard) in &rlimits {
                let lim = libc::rlimit {
                    rlim_cur: *soft,
                    rlim_max: *hard,
                };
                check(libc::setrlimit(*res, &lim))?;
            }
            if let Some(c) = &confinement {
                c.before_ids()?;
            }
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            if let Some(c) = &confinement {
                c.after_ids(uid)?;
            }
            Ok(())
        });
    }

    let mut child = cmd.spawn().map_err(|e| classify(program, &e))?;
    mark("forked, exec'd");
    drop(cgroup_procs);
    let pid = child.id() as i32;
    let mut outputs = Vec::new();
    let (stdin, master_fd) = match pty {
        Some((master, slave)) => {
            drop(slave);
            let master_fd = master.as_raw_fd();
            let reader = File::from(dup(&master)?);
            outputs.push(relay_output(reader, writer.clone(), false));
            // The master stays open for as long as the input relay holds it.
            (Some(File::from(master)), Some(master_fd))
        }
        None => {
            if let Some(out) = child.stdout.take() {
                outputs.push(relay_output(
                    File::from(OwnedFd::from(out)),
                    writer.clone(),
                    false,
                ));
            }
            if let Some(err) = child.stderr.take() {
                outputs.push(relay_output(
                    File::from(OwnedFd::from(err)),
                    writer.clone(),
                    true,
                ));
            }
            (
                child.stdin.take().map(|s| File::from(OwnedFd::from(s))),
                None,
            )
        }
    };
    relay_input(conn, stdin, pid, master_fd);
    Ok(Workload { pid, outputs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_lookup_follows_path() {
        assert_eq!(
            find_program("sh", "/nonexistent:/bin").ok().unwrap(),
            "/bin/sh"
        );
        let e = find_program("definitely-not-here", "/bin").err().unwrap();
        assert_eq!(e.kind, ExecErrorKind::NotFound);
        assert!(e.message.contains("executable file not found in $PATH"));
        let e = find_program("/etc/passwd", "/bin").err().unwrap();
        assert_eq!(e.kind, ExecErrorKind::NotExecutable);
        let e = find_program("/bin", "/bin").err().unwrap();
        assert_eq!(e.kind, ExecErrorKind::NotExecutable);
        let e = find_program("/no/such/file", "/bin").err().unwrap();
        assert_eq!(e.kind, ExecErrorKind::NotFound);
    }

    #[test]
    fn ulimit_names() {
        assert_eq!(rlimit_resource("nofile"), Some(libc::RLIMIT_NOFILE));
        assert_eq!(rlimit_resource("bogus"), None);
    }
}
