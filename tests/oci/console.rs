//! `process.terminal` through `--console-socket`, as containerd's shim and conmon drive it:
//! the test listens, `create` (and `exec --detach`) send the pty master there, and the
//! workload's terminal in the guest is a TTY of the size set on the master, resized when the
//! master is.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use rustix::termios::{tcsetwinsize, Winsize};

use super::procs;
use super::{base, bundle, reap, runc, runc_out, state};
use crate::common::fixture::check;

/// Accepts one connection on `listener` and returns the descriptor it carries, checking the
/// data is runc's (`/dev/ptmx`).
fn receive_master(listener: &UnixListener) -> Result<OwnedFd, String> {
    let (conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let mut buf = [0u8; 256];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &conn,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| format!("recvmsg: {e}"))?;
    let name = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
    if name != "/dev/ptmx" {
        return Err(format!("the console message says {name:?}, not /dev/ptmx"));
    }
    let mut master = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = m {
            master = fds.next();
        }
    }
    master.ok_or_else(|| "no descriptor on the console socket".into())
}

fn resize(master: &OwnedFd, rows: u16, cols: u16) -> Result<(), String> {
    let ws = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    tcsetwinsize(master, ws).map_err(|e| format!("TIOCSWINSZ: {e}"))
}

/// Reads the master into `seen` until `done(seen)`; Err at the end of the terminal (EIO once
/// every slave is closed).
fn read_until(master: &OwnedFd, seen: &mut String, done: impl Fn(&str) -> bool) -> bool {
    let mut buf = [0u8; 1024];
    while !done(seen) {
        match rustix::io::read(master, &mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    true
}

/// The `stty size` answers in the output, in order.
fn sizes(seen: &str) -> Vec<String> {
    seen.split(['\r', '\n'])
        .filter(|l| {
            let parts: Vec<_> = l.split(' ').collect();
            parts.len() == 2 && parts.iter().all(|p| p.parse::<u16>().is_ok())
        })
        .map(str::to_string)
        .collect()
}

pub fn tty_through_the_console_socket() -> Result<(), String> {
    let script = "tty; stty size; while read x; do stty size; [ \"$x\" = q ] && exit 4; done";
    let b = bundle("c5", &["sh", "-c", script]);
    let path = b.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = serde_json::json!(true);
    std::fs::write(&path, config.to_string()).unwrap();
    let sock = base().join("tmp/c5.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(|e| format!("bind: {e}"))?;
    let out = runc_out(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
        "c5",
    ]);
    check(out.status.success(), "create --console-socket", &out)?;
    let master = receive_master(&listener)?;
    let pid = state("c5")?["pid"].as_i64().unwrap_or(0) as i32;
    resize(&master, 40, 100)?;
    let start = runc_out(&["start", "c5"]);
    check(start.status.success(), "start", &start)?;
    let mut seen = String::new();
    if !read_until(&master, &mut seen, |s| !sizes(s).is_empty()) {
        return Err(format!("no size from the terminal: {seen:?}"));
    }
    if !seen.contains("/dev/pts/") || sizes(&seen)[0] != "40 100" {
        return Err(format!(
            "the guest's stdio is not a 40x100 terminal: {seen:?}"
        ));
    }
    // A resize on the master reaches the guest's terminal: each line typed asks again (the
    // resize and the line travel separately, so the first answer may predate it).
    resize(&master, 50, 120)?;
    let mut resized = false;
    for _ in 0..20 {
        let n = sizes(&seen).len();
        rustix::io::write(&master, b"\n").map_err(|e| format!("write: {e}"))?;
        if !read_until(&master, &mut seen, |s| sizes(s).len() > n) {
            return Err(format!("the terminal ended: {seen:?}"));
        }
        if sizes(&seen).last().is_some_and(|s| s == "50 120") {
            resized = true;
            break;
        }
    }
    if !resized {
        return Err(format!("the resize did not reach the guest: {seen:?}"));
    }
    exec_with_a_terminal(&listener, &sock)?;
    rustix::io::write(&master, b"q\n").map_err(|e| format!("write: {e}"))?;
    read_until(&master, &mut seen, |_| false);
    let code = reap(pid)?;
    if code != 4 {
        return Err(format!("the VMM process exited {code}, not 4: {seen:?}"));
    }
    let del = runc_out(&["delete", "c5"]);
    check(del.status.success(), "delete", &del)?;
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

/// `exec --detach --console-socket --tty` in the running container c5: the proxy's pid
/// exits with the process's status, its output read through the master it sent.
fn exec_with_a_terminal(listener: &UnixListener, sock: &Path) -> Result<(), String> {
    let pid_file = base().join("tmp/c5-exec.pid");
    let out = procs::output(&mut runc(&[
        "exec",
        "--detach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
        "--tty",
        "c5",
        "sh",
        "-c",
        "tty; exit 6",
    ]));
    check(out.status.success(), "exec --console-socket", &out)?;
    let master = receive_master(listener)?;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .map_err(|e| format!("exec pid file: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("exec pid file: {e}"))?;
    let mut seen = String::new();
    read_until(&master, &mut seen, |_| false);
    let code = reap(pid)?;
    if code != 6 || !seen.contains("/dev/pts/") {
        return Err(format!(
            "exec with a terminal: exit {code}, output {seen:?}"
        ));
    }
    Ok(())
}
