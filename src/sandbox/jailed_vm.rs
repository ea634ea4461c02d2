//! A VM whose VMM is a jailed child of this process ([`super::jail`]), for a caller that
//! keeps doing host work while the VM runs: `brig cp`'s maintenance VM reads and writes the
//! host's files while its guest serves the sandbox's disks. This process binds the agent's
//! vsock listener and talks to the agent; the child only runs the VM. The child's console
//! comes back over a pipe into this process's [`ConsoleLog`]; its start is reported on
//! another (`ok`, or `err MESSAGE`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::thread::JoinHandle;
use std::time::Duration;

use super::jail;
use super::runtime::RuntimeDir;
use crate::vmm::{self, seccomp, ConsoleLog, VmConfig};

/// A VM run by a jailed child process.
#[derive(Debug)]
pub struct JailedVm {
    pid: libc::pid_t,
    /// Readable once the child has ended.
    pidfd: OwnedFd,
    console: Option<JoinHandle<()>>,
    reaped: bool,
    /// Its cgroup, removed once it is reaped.
    cgroup: Option<jail::cgroup::Cgroup>,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Starts `config` in a jailed child (as [`jail::prepare`] makes it for sandbox
/// `sandbox_id`, with `ids` asked for) with a cgroup of its own (sandbox `short_id`'s, where
/// cgroup v2 allows), its vsock device's guest-initiated connections landing in `runtime`;
/// the console goes to `console`. Returns once the VM runs, with the listener the guest
/// agent connects to.
pub fn start(
    mut config: VmConfig,
    runtime: &RuntimeDir,
    (sandbox_id, short_id): (&str, &str),
    ids: (Option<u32>, Option<u32>),
    console: ConsoleLog,
) -> io::Result<(JailedVm, UnixListener)> {
    let listener = super::vm::listen_for_agent(&mut config, runtime)?;
    let jail = jail::prepare(runtime.path(), sandbox_id, ids.0, ids.1)?;
    let mut cgroup = jail::cgroup::create(short_id, (config.mem_mib + jail::OVERHEAD_MIB) << 20)?;
    let (status_r, status_w) = pipe()?;
    let (console_r, console_w) = pipe()?;
    let report = |r: io::Result<libc::pid_t>| {
        if let Err(e) = r {
            let _ = rustix::io::write(&status_w, format!("err {e}\n").as_bytes());
        }
    };
    // SAFETY: the child goes on with Rust code as `vmm_child`, which ends by `exit`; this
    // process's other threads hold no lock it takes (glibc's fork leaves malloc usable).
    let pid = unsafe { jail::fork_vmm(&jail, cgroup.as_mut(), &report) }?;
    if pid == 0 {
        drop((status_r, console_r));
        vmm_child(config, jail, cgroup.as_ref(), status_w, console_w);
    }
    drop((status_w, console_w));
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).ok_or_else(|| io::Error::other("no pid"))?,
        rustix::process::PidfdFlags::empty(),
    )?;
    let mut console = console;
    let relay = std::thread::Builder::new()
        .name("console-relay".into())
        .spawn(move || {
            let _ = io::copy(&mut File::from(console_r), &mut console);
        })?;
    let mut vm = JailedVm {
        pid,
        pidfd,
        console: Some(relay),
        reaped: false,
        cgroup,
    };
    let mut line = String::new();
    let _ = BufReader::new(File::from(status_r)).read_line(&mut line);
    match line.trim_end().split_once(' ') {
        _ if line == "ok\n" => Ok((vm, listener)),
        Some(("err", why)) => {
            vm.kill();
            Err(io::Error::other(why.to_string()))
        }
        _ => {
            vm.kill();
            Err(io::Error::other(
                "the VMM process ended before its VM started",
            ))
        }
    }
}

/// The child: closes what it inherited, has the VM jail it before its threads start, runs
/// the VM to its end. Never returns.
fn vmm_child(
    mut config: VmConfig,
    jail: jail::Jail,
    cgroup: Option<&jail::cgroup::Cgroup>,
    status: OwnedFd,
    console: OwnedFd,
) -> ! {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let mut status = File::from(status);
    let code = match (|| {
        jail::close_inherited(&[status.as_raw_fd(), console.as_raw_fd()])?;
        if let Some(c) = cgroup {
            c.join()?;
        }
        config.console =
            ConsoleLog::with_deferred_echo(Box::new(File::from(console)), seccomp::confine_console);
        let events = status.as_raw_fd();
        vmm::confine_next_vm(Box::new(move || jail::enter(&jail, events)));
        let vm = vmm::start(config).map_err(io::Error::other)?;
        // From here on this thread only waits for the VM's end, as a run's main thread does.
        if let Err(e) = seccomp::confine(seccomp::Thread::Main) {
            drop(vm.shutdown());
            return Err(io::Error::other(e));
        }
        Ok(vm)
    })() {
        Ok(vm) => {
            let _ = status.write_all(b"ok\n");
            vm.wait(None);
            drop(vm.shutdown());
            0
        }
        Err(e) => {
            let _ = writeln!(status, "err {}", e.to_string().replace('\n', " "));
            super::outcome::EXIT_BRIG_ERROR
        }
    };
    std::process::exit(code)
}

impl JailedVm {
    /// Readable once the VM (its process) has ended.
    pub fn exit_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Waits up to `timeout` for the VM to end by itself: whether it did.
    pub fn wait(&self, timeout: Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
            let left = rustix::time::Timespec::try_from(left).unwrap_or_default();
            match poll(&mut fds, Some(&left)) {
                Ok(n) if n > 0 => return true,
                Ok(_) => return false,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return false,
            }
        }
    }

    /// Ends the VM (SIGKILL to its process if it still runs), reaps it, and collects the
    /// rest of its console.
    pub fn kill(&mut self) {
        if !self.reaped {
            let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
            jail::reap(self.pid);
            self.reaped = true;
            if let Some(c) = self.cgroup.take() {
                c.remove();
            }
        }
        if let Some(relay) = self.console.take() {
            let _ = relay.join();
        }
    }
}

impl Drop for JailedVm {
    fn drop(&mut self) {
        self.kill();
    }
}
