//! Rootless networking: `passt` (Debian's package) as a user-mode network stack behind the
//! same virtio-net device. brig makes a Unix socket pair, gives passt one end as its
//! pre-connected socket (`-F 3`), and the device speaks passt's stream of length-prefixed
//! Ethernet frames on the other. passt ends TCP and UDP in host sockets of the user who ran
//! brig, so it needs no privilege; published ports are its own `-t`/`-u` forwards.
//!
//! passt cannot filter: the egress policy is enforced by the VMM on the guest's frames
//! (`devices::virtio::net::filter`). passt maps the gateway address to the host's loopback
//! both ways; that is what makes a published port reachable from the host's 127.0.0.1 (the
//! connection reaches the guest from the gateway address, not from a martian 127.0.0.1),
//! and it is safe only because the VMM's filter drops every frame the guest sends to the
//! gateway but replies from its published ports: a guest never opens a connection to the
//! host's loopback. IPv4 only; passt dies with the VMM: the socket closes (passt quits after
//! its one client, `-F` implies `--one-off`), and PDEATHSIG as well.

use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::net::UnixStream;

use super::pool::LINK_PREFIX;
use super::ports::{BoundPort, PortMapping, Proto};
use super::{NetworkError, Plan, SandboxNetwork, PASST_MTU};
use crate::vmm::PasstBackend;

/// The passt binary.
pub const PASST: &str = "passt";
/// The fd passt finds its socket on.
const PASST_FD: i32 = 3;
/// The fd of the pipe passt writes its PID file into (`-P /proc/self/fd/4`).
const PASST_READY_FD: i32 = 4;
/// How long passt may take to set itself up (its forwards bound, its socket taken).
const PASST_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Starting passt failed.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    #[error("cannot run passt for rootless networking (install the passt package, or use --network none): {0}")]
    Spawn(#[source] io::Error),
    #[error("passt (rootless networking) exited at start: {0}")]
    Exited(String),
    #[error("passt socket pair: {0}")]
    Socket(#[source] io::Error),
}

/// A running passt and the VMM's end of its socket.
#[derive(Debug)]
pub struct Passt {
    child: Child,
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// passt's `-t`/`-u` spec for one mapping: `[ADDR/]HOSTPORT:GUESTPORT`.
fn forward_spec(p: &BoundPort) -> String {
    let addr = if p.host_ip.is_unspecified() {
        String::new()
    } else {
        format!("{}/", p.host_ip)
    };
    format!("{addr}{}:{}", p.host_port, p.guest_port)
}

/// The network of a rootless sandbox: passt on a socket pair, its forwards for the
/// published ports, the VMM's filter for the egress policy.
pub(super) fn setup(plan: Plan<'_>) -> Result<SandboxNetwork, NetworkError> {
    let link = plan.lease.link;
    let ports = reserve_ports(&plan.opts.publish)?;
    let (passt, sock) = start(link.guest, LINK_PREFIX, link.host, PASST_MTU, &ports)?;
    let backend = PasstBackend::new(UnixStream::from(sock))?;
    let mut net = plan.finish(Box::new(backend), ("passt", "passt", PASST_MTU), ports);
    net.passt = Some(passt);
    Ok(net)
}

/// Binds each published port once (and lets go) to resolve ephemeral ports and to report a
/// port in use in docker's words before passt starts.
fn reserve_ports(publish: &[PortMapping]) -> Result<Vec<BoundPort>, NetworkError> {
    if publish.is_empty() {
        return Ok(Vec::new());
    }
    Ok(super::proxy::PortProxy::bind(publish)?.bound())
}

/// Starts passt for a guest at `guest`/`prefix` behind `gateway`, forwarding `ports`; returns
/// it and the VMM's end of the socket.
fn start(
    guest: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    mtu: u16,
    ports: &[BoundPort],
) -> Result<(Passt, OwnedFd), PasstError> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (vmm_end, passt_end) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| PasstError::Socket(e.into()))?;
    // passt writes the guest's frames into its end: a large buffer spares it dropping them
    // while the guest catches up (as libkrun sizes its own end). Best effort.
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&passt_end, 16 << 20);
    // passt writes its PID file once it has set itself up (its forwards bound), in the
    // foreground too, and exits before that when it cannot: a pipe as that file says which,
    // as soon as it is known, where waiting for passt to stay up would cost a fixed delay.
    let (ready_read, ready_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| PasstError::Socket(e.into()))?;
    let mut cmd = Command::new(PASST);
    cmd.args(["-f", "-e", "-q", "-4", "--no-dhcp", "--no-ndp", "--no-ra"])
        .args(["-F", &PASST_FD.to_string()])
        .args(["-P", &format!("/proc/self/fd/{PASST_READY_FD}")])
        .args(["-a", &guest.to_string(), "-n", &prefix.to_string()])
        .args(["-g", &gateway.to_string(), "-m", &mtu.to_string()]);
    for p in ports {
        let flag = match p.proto {
            Proto::Tcp => "-t",
            Proto::Udp => "-u",
        };
        cmd.args([flag, &forward_spec(p)]);
    }
    let (raw, ready_raw) = (passt_end.as_raw_fd(), ready_write.as_raw_fd());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: between fork and exec only async-signal-safe calls: dup2 and prctl.
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in [(raw, PASST_FD), (ready_raw, PASST_READY_FD)] {
                if libc::dup2(from, to) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // The VMM's end closing ends passt too; this covers a passt stuck elsewhere.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(PasstError::Spawn)?;
    drop((passt_end, ready_write));
    if let Err(why) = wait_ready(ready_read) {
        let _ = child.kill();
        let status = child
            .wait()
            .map_or_else(|e| e.to_string(), |s| s.to_string());
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        // passt also complains when it has no syslog to log to: not the reason.
        let line = err
            .lines()
            .rfind(|l| !l.trim().is_empty() && !l.contains("to syslog"))
            .map_or(why, str::to_string);
        return Err(PasstError::Exited(format!("{status}: {line}")));
    }
    drop(child.stderr.take());
    Ok((Passt { child }, vmm_end))
}

/// Waits for passt's PID file, written into the pipe `ready` once passt is set up: `Err`
/// with why not when passt ended first (the pipe's end) or took too long.
fn wait_ready(ready: OwnedFd) -> Result<(), String> {
    use rustix::event::{poll, PollFd, PollFlags};
    let deadline = Instant::now() + PASST_START_TIMEOUT;
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("not set up within {PASST_START_TIMEOUT:?}"));
        }
        let timeout = rustix::time::Timespec::try_from(left).ok();
        let mut fds = [PollFd::new(&ready, PollFlags::IN)];
        match poll(&mut fds, timeout.as_ref()) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
        let mut buf = [0u8; 32];
        match rustix::io::read(&ready, &mut buf) {
            Ok(0) => return Err("no message".into()),
            Ok(n) => {
                said.extend_from_slice(&buf[..n]);
                if said.contains(&b'\n') {
                    return Ok(());
                }
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(format!("reading its PID file: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_specs_follow_passt() {
        let p = |ip: &str, h, g| BoundPort {
            host_ip: ip.parse().unwrap(),
            host_port: h,
            guest_port: g,
            proto: Proto::Tcp,
        };
        assert_eq!(forward_spec(&p("0.0.0.0", 8080, 80)), "8080:80");
        assert_eq!(forward_spec(&p("127.0.0.1", 8081, 80)), "127.0.0.1/8081:80");
    }

    #[test]
    fn readiness_is_the_pid_line_and_an_early_end_is_not() {
        let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        // The PID file written in two pieces, as a slow writer might, by a writer that
        // keeps the pipe open (as passt does) until the wait is over: the line is enough.
        let (r, w) = pipe();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            rustix::io::write(&w, b"12").unwrap();
            std::thread::sleep(Duration::from_millis(20));
            rustix::io::write(&w, b"34\n").unwrap();
            let _ = done_rx.recv();
        });
        assert_eq!(wait_ready(r), Ok(()));
        done_tx.send(()).unwrap();
        writer.join().unwrap();
        // passt exited before writing it: the pipe ends.
        let (r, w) = pipe();
        drop(w);
        assert_eq!(wait_ready(r), Err("no message".to_string()));
        // It wrote part of a line and exited.
        let (r, w) = pipe();
        rustix::io::write(&w, b"99").unwrap();
        drop(w);
        assert_eq!(wait_ready(r), Err("no message".to_string()));
    }
}
