//! A maintenance VM: a stopped sandbox's own disks booted without its workload, so that
//! `brig cp` can read (and write) the files of a sandbox whose state was kept.
//!
//! The guest agent, given a Run with no command, mounts the root file system as for the
//! workload, answers `Started { pid: 0 }` and then serves requests (Stat, CopyOut, CopyIn)
//! on the main connection until the host closes it; then it syncs and resets the VM. The
//! maintenance VM holds the sandbox's runtime lock for its whole life, so that no two of them
//! (or a sandbox and one) ever share the scratch disk, and `brig rm -f` can end it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use brig_protocol::{read_message, write_message, Message, RunSpec, AGENT_PORT, PROTOCOL_VERSION};

use super::agent::{self, SessionEnd};
use super::runtime::{self, RuntimeDir};
use super::state::{Sandbox, StateError};
use crate::devices::serial::ConsoleLog;
use crate::vmm::initramfs::Initramfs;
use crate::vmm::{self, DiskConfig, RunningVm, VmConfig, VsockConfig};

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
    /// The runtime directory, the initramfs, or the VM.
    #[error("starting a VM on the sandbox's disks: {0}")]
    Start(String),
    /// The guest did not get as far as serving requests.
    #[error("the sandbox's file system could not be mounted: {0}")]
    Guest(String),
}

/// A running maintenance VM and its agent connection.
pub struct MaintenanceVm {
    conn: UnixStream,
    vm: Option<RunningVm>,
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
        let mut fds = [
            libc::pollfd {
                fd: vm_exit.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if fds[0].revents != 0 {
            let _ = conn.shutdown(std::net::Shutdown::Both);
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
                MaintenanceError::Start(format!("runtime directory: {e}"))
            }
        })?;
        let start = |e: String| MaintenanceError::Start(e);
        let listener = UnixListener::bind(runtime.vsock_listener(AGENT_PORT))
            .map_err(|e| start(format!("runtime directory: {e}")))?;
        let initrd = Initramfs::with_init()
            .to_bytes()
            .map_err(|e| start(format!("initramfs: {e}")))?;
        let console = ConsoleLog::default();
        let vm = vmm::start(VmConfig {
            kernel: config.kernel.clone(),
            initrd,
            cmdline_extra: String::new(),
            mem_mib: config.mem_mib,
            cpus: config.cpus,
            console: console.clone(),
            disks: config.disks.iter().map(DiskConfig::from).collect(),
            vsock: Some(VsockConfig {
                cid: vmm::DEFAULT_GUEST_CID,
                uds_path: runtime.vsock_socket(),
            }),
        })
        .map_err(|e| start(e.to_string()))?;
        let deadline = Some(Instant::now() + BOOT_DEADLINE);
        let conn = match agent::accept(&listener, vm.exit_fd(), deadline) {
            Ok(c) => c,
            Err(end) => {
                let why = match end {
                    SessionEnd::TimedOut => "the guest did not connect in time".to_string(),
                    SessionEnd::Broken(m) => m,
                    _ => console
                        .panic_line()
                        .or_else(|| console.last_line())
                        .unwrap_or_else(|| "the VM ended".into()),
                };
                vm.shutdown();
                return Err(MaintenanceError::Guest(why));
            }
        };
        let setup = || -> io::Result<(OwnedFd, JoinHandle<()>)> {
            // SAFETY: dup of the VM's exit eventfd, which is open for the VM's life.
            let exit = unsafe { libc::dup(vm.exit_fd()) };
            if exit < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: dup returned a fresh descriptor that we now own.
            let exit = unsafe { OwnedFd::from_raw_fd(exit) };
            let (stop_r, stop_w) = pipe()?;
            Ok((stop_w, watch(exit, stop_r, conn.try_clone()?)))
        };
        let (stop, watcher) = match setup() {
            Ok(s) => s,
            Err(e) => {
                vm.shutdown();
                return Err(start(e.to_string()));
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
        let clean = self
            .vm
            .as_ref()
            .is_some_and(|vm| vm.wait(Some(SHUTDOWN_GRACE)).is_some());
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
