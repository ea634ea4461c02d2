//! A maintenance VM: a stopped sandbox's own disks booted without its workload, so that
//! `brig cp` can read (and write) the files of a sandbox whose state was kept.
//!
//! The guest agent, given a Run with no command, mounts the root file system as for the
//! workload, answers `Started { pid: 0 }` and then serves requests (Stat, CopyOut, CopyIn)
//! on the main connection until the host closes it; then it syncs and resets the VM. The
//! maintenance VM holds the sandbox's runtime lock for its whole life, so that no two of them
//! (or a sandbox and one) ever share the scratch disk, and `brig rm -f` can end it. Its VMM
//! is jailed as a sandbox's is ([`super::jailed_vm`]), where jails are on: `brig cp` stays
//! on the host side, reading and writing the host's files.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use brig_protocol::{read_message, write_message, Message, RunSpec, PROTOCOL_VERSION};

use super::agent::{self, SessionEnd};
use super::jail;
use super::jailed_vm::{self, JailedVm};
use super::outcome::Failure;
use super::runtime::{self, RuntimeDir};
use super::state::{Sandbox, StateError};
use super::vm::{self, VmError};
use crate::vmm::{ConsoleLog, ExitReason, RunningVm};

/// How long the guest may take to boot and mount the sandbox's root.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// How long the guest may take to sync its disks and reset once the host is done.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// The maintenance VM could not be started or did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error(transparent)]
    State(#[from] StateError),
    /// Another process holds the sandbox (it runs, or another `brig cp` uses it).
    #[error("sandbox {0} is in use (running, or another brig cp is copying from it)")]
    Busy(String),
    /// The runtime directory or its lock.
    #[error("runtime directory: {0}")]
    Runtime(#[source] io::Error),
    /// The VM did not start.
    #[error("starting a VM on the sandbox's disks: {0}")]
    Start(#[from] VmError),
    /// The connection watcher could not be set up.
    #[error("watching the maintenance VM: {0}")]
    Watch(#[source] io::Error),
    /// Its jailed VMM did not start.
    #[error("starting a jailed VM on the sandbox's disks: {0}")]
    Jailed(#[source] io::Error),
    /// The guest did not get as far as serving requests.
    #[error("the sandbox's file system could not be mounted: {0}")]
    Guest(String),
}

/// The VM: run by this process, or by a jailed child.
enum Vm {
    Here(RunningVm),
    Jailed(JailedVm),
}

impl Vm {
    fn exit_fd(&self) -> BorrowedFd<'_> {
        match self {
            Vm::Here(vm) => vm.exit_fd(),
            Vm::Jailed(vm) => vm.exit_fd(),
        }
    }

    /// Whether it ended by itself within `timeout`.
    fn wait(&self, timeout: Duration) -> bool {
        match self {
            Vm::Here(vm) => vm.wait(Some(timeout)).is_some(),
            Vm::Jailed(vm) => vm.wait(timeout),
        }
    }

    /// Ends it: why it had ended, where this process ran it.
    fn shutdown(self) -> ExitReason {
        match self {
            Vm::Here(vm) => vm.shutdown(),
            Vm::Jailed(mut vm) => {
                vm.kill();
                ExitReason::Stopped
            }
        }
    }
}

/// A running maintenance VM and its agent connection.
pub struct MaintenanceVm {
    conn: UnixStream,
    vm: Option<Vm>,
    console: ConsoleLog,
    /// Ends the watcher thread (written at teardown).
    stop: Option<OwnedFd>,
    watcher: Option<JoinHandle<()>>,
    _runtime: RuntimeDir,
}

impl std::fmt::Debug for MaintenanceVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaintenanceVm")
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Shuts `conn` down when the VM ends (or `stop` becomes readable), so that nothing blocks
/// forever on a connection whose guest is gone.
fn watch(vm_exit: OwnedFd, stop: OwnedFd, conn: UnixStream) -> JoinHandle<()> {
    std::thread::spawn(move || loop {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds = [
            PollFd::new(&vm_exit, PollFlags::IN),
            PollFd::new(&stop, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Err(rustix::io::Errno::INTR) => continue,
            Ok(_) if !fds[0].revents().is_empty() => {
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
            _ => {}
        }
        return;
    })
}

impl MaintenanceVm {
    /// Boots a VM on `sandbox`'s disks and waits until its root file system is mounted.
    pub fn boot(sandbox: &Sandbox) -> Result<Self, MaintenanceError> {
        let config = sandbox.config()?;
        let busy = || MaintenanceError::Busy(sandbox.short_id().to_string());
        if sandbox.is_live() {
            return Err(busy());
        }
        // A VMM killed from outside leaves its runtime directory behind.
        runtime::sweep_stale();
        let runtime = RuntimeDir::create(&sandbox.id).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                busy()
            } else {
                MaintenanceError::Runtime(e)
            }
        })?;
        let console = ConsoleLog::default();
        let vm_config = vm::config_of(&config, console.clone())?;
        let (vm, listener) = if jail::enabled() {
            let (vm, listener) = jailed_vm::start(
                vm_config,
                &runtime,
                (&config.id, sandbox.short_id()),
                (config.security.jail_uid, config.security.jail_gid),
                console.clone(),
            )
            .map_err(MaintenanceError::Jailed)?;
            (Vm::Jailed(vm), listener)
        } else {
            let (vm, listener) = vm::start(vm_config, &runtime)?.into_parts();
            (Vm::Here(vm), listener)
        };
        let accepted = agent::accept(
            &listener,
            vm.exit_fd(),
            Some(Instant::now() + BOOT_DEADLINE),
        );
        let conn = match accepted {
            Ok(c) => c,
            Err(end) => {
                let reason = vm.shutdown();
                let why = match end {
                    SessionEnd::TimedOut => "the guest did not connect in time".to_string(),
                    SessionEnd::Broken(m) => m,
                    _ => Failure::vm_died(&console, &reason).message,
                };
                return Err(MaintenanceError::Guest(why));
            }
        };
        let setup = || -> io::Result<(OwnedFd, JoinHandle<()>)> {
            let exit = vm.exit_fd().try_clone_to_owned()?;
            let (stop_r, stop_w) = pipe()?;
            Ok((stop_w, watch(exit, stop_r, conn.try_clone()?)))
        };
        let (stop, watcher) = match setup() {
            Ok(s) => s,
            Err(e) => {
                vm.shutdown();
                return Err(MaintenanceError::Watch(e));
            }
        };
        let mut this = Self {
            conn,
            vm: Some(vm),
            console,
            stop: Some(stop),
            watcher: Some(watcher),
            _runtime: runtime,
        };
        // The sandbox's own root, as root, with no workload.
        let spec = RunSpec {
            argv: Vec::new(),
            env: Vec::new(),
            cwd: "/".into(),
            hostname: config.run.hostname.clone(),
            rootfs: config.run.rootfs.clone(),
            ..Default::default()
        };
        this.handshake(spec)?;
        Ok(this)
    }

    fn guest_error(&self, what: String) -> MaintenanceError {
        let why = self
            .console
            .panic_line()
            .map_or(what, |p| format!("the guest kernel panicked: {p}"));
        MaintenanceError::Guest(why)
    }

    fn handshake(&mut self, spec: RunSpec) -> Result<(), MaintenanceError> {
        match read_message(&mut self.conn) {
            Ok(Some(Message::Hello { version, .. })) if version == PROTOCOL_VERSION => {}
            Ok(Some(Message::Hello { version, .. })) => {
                return Err(self.guest_error(format!(
                    "the guest agent speaks protocol {version}, this brig speaks {PROTOCOL_VERSION}"
                )))
            }
            Ok(other) => return Err(self.guest_error(format!("expected hello, got {other:?}"))),
            Err(e) => return Err(self.guest_error(e.to_string())),
        }
        write_message(&mut self.conn, &Message::Run(Box::new(spec)))
            .map_err(|e| self.guest_error(e.to_string()))?;
        match read_message(&mut self.conn) {
            Ok(Some(Message::Started { .. })) => Ok(()),
            Ok(Some(Message::ExecFailed { message, .. })) => Err(self.guest_error(message)),
            Ok(Some(other)) => Err(self.guest_error(format!("unexpected answer {other:?}"))),
            Ok(None) => Err(self.guest_error("the guest agent closed the connection".into())),
            Err(e) => Err(self.guest_error(e.to_string())),
        }
    }

    /// The agent's connection; each request on it is answered before the next is sent.
    pub fn conn(&mut self) -> &mut UnixStream {
        &mut self.conn
    }

    /// Ends the session: the guest syncs its disks and resets. Errs when it did not end by
    /// itself (then writes may not have reached the scratch disk).
    pub fn finish(mut self) -> Result<(), MaintenanceError> {
        let _ = self.conn.shutdown(std::net::Shutdown::Write);
        let clean = self.vm.as_ref().is_some_and(|vm| vm.wait(SHUTDOWN_GRACE));
        self.teardown();
        if clean {
            Ok(())
        } else {
            Err(MaintenanceError::Guest(
                "the VM did not shut down by itself; changes may not have been written".into(),
            ))
        }
    }

    fn teardown(&mut self) {
        drop(self.stop.take());
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        if let Some(vm) = self.vm.take() {
            vm.shutdown();
        }
    }
}

impl Drop for MaintenanceVm {
    fn drop(&mut self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        self.teardown();
    }
}
