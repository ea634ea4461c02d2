//! The one way a sandbox's VM starts, whatever runs in it (a workload for `brig run`, a
//! command for `brig boot`, nothing for a maintenance VM): brig's initramfs, the sandbox's
//! disks, a vsock device whose guest-initiated connections land in the runtime directory,
//! and the guest agent's connection.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use brig_protocol::AGENT_PORT;

use super::agent::{self, SessionEnd};
use super::runtime::RuntimeDir;
use super::state::SandboxConfig;
use crate::vmm::initramfs::{InitramfsError, Initrd};
use crate::vmm::{
    self, ConsoleLog, DiskConfig, RunningVm, VmConfig, VsockConfig, DEFAULT_GUEST_CID,
};

/// The VM could not be started.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The runtime directory's vsock listener.
    #[error("runtime directory: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    #[error(transparent)]
    Vmm(#[from] vmm::VmmError),
    /// The guest never reached the point at which it was to be saved.
    #[error("no snapshot: {0}")]
    NotReached(String),
}

/// The VM of a sandbox created with `config`, its console going to `console`.
pub fn config_of(config: &SandboxConfig, console: ConsoleLog) -> Result<VmConfig, VmError> {
    Ok(VmConfig {
        kernel: config.kernel.clone(),
        initrd: Initrd::Guest,
        cmdline_extra: String::new(),
        mem_mib: config.mem_mib,
        cpus: config.cpus,
        host_cpus: config.host_cpus.clone(),
        console,
        disks: config.disks.iter().map(DiskConfig::from).collect(),
        vsock: None,
        net: None,
        fs: Vec::new(),
    })
}

/// A running VM whose guest agent will connect to the host.
pub struct AgentVm {
    pub vm: RunningVm,
    listener: UnixListener,
}

/// Starts `config` with a vsock device in `runtime`, listening for the guest agent.
pub fn start(config: VmConfig, runtime: &RuntimeDir) -> Result<AgentVm, VmError> {
    start_from(config, runtime, None)
}

/// As [`start`], or, with `snapshot`, restores the VM saved in that directory instead of
/// booting (see [`snapshot_when`]).
pub fn start_from(
    mut config: VmConfig,
    runtime: &RuntimeDir,
    snapshot: Option<&Path>,
) -> Result<AgentVm, VmError> {
    let listener = listen_for_agent(&mut config, runtime).map_err(VmError::Runtime)?;
    let vm = match snapshot {
        Some(dir) => vmm::restore(config, dir)?,
        None => vmm::start(config)?,
    };
    Ok(AgentVm { vm, listener })
}

/// Gives `config` its vsock device, whose guest-initiated connections land in `runtime`, and
/// listens there for the guest agent's.
pub fn listen_for_agent(
    config: &mut VmConfig,
    runtime: &RuntimeDir,
) -> std::io::Result<UnixListener> {
    let listener = UnixListener::bind(runtime.vsock_listener(AGENT_PORT))?;
    config.vsock = Some(VsockConfig {
        cid: DEFAULT_GUEST_CID,
        uds_path: runtime.vsock_socket(),
    });
    Ok(listener)
}

/// How often [`snapshot_when`] looks at the console.
const CONSOLE_POLL: Duration = Duration::from_millis(20);

/// Boots `config` (with the vsock device [`start`] adds), waits until the guest console has
/// shown `marker`, then saves the VM to `dir`; the VM does not go on. A developer's and the
/// tests' way to snapshot a guest at a point of its choosing.
pub fn snapshot_when(
    config: VmConfig,
    runtime: &RuntimeDir,
    marker: &str,
    dir: &Path,
    deadline: Instant,
) -> Result<(), VmError> {
    let console = config.console.clone();
    let agent_vm = start(config, runtime)?;
    while !console.tail().contains(marker) {
        if let Some(reason) = agent_vm.vm.exit_reason() {
            return Err(VmError::NotReached(format!(
                "the VM ended ({reason:?}) before its console showed {marker:?}"
            )));
        }
        if Instant::now() >= deadline {
            return Err(VmError::NotReached(format!(
                "the console did not show {marker:?} in time"
            )));
        }
        std::thread::sleep(CONSOLE_POLL);
    }
    agent_vm.vm.snapshot(dir)?;
    Ok(())
}

impl AgentVm {
    /// Waits for the guest agent to connect; `Err(end)` if the VM ends or time runs out.
    pub fn accept(&self, deadline: Option<Instant>) -> Result<UnixStream, SessionEnd> {
        agent::accept(&self.listener, self.vm.exit_fd(), deadline)
    }

    /// The VM, and the listener its guest agent connects to.
    pub fn into_parts(self) -> (RunningVm, UnixListener) {
        (self.vm, self.listener)
    }
}
