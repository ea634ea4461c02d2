//! The one way a sandbox's VM starts, whatever runs in it (a workload for `brig run`, a
//! command for `brig boot`, nothing for a maintenance VM): brig's initramfs, the sandbox's
//! disks, a vsock device whose guest-initiated connections land in the runtime directory,
//! and the guest agent's connection.

use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use brig_protocol::AGENT_PORT;

use super::agent::{self, SessionEnd};
use super::runtime::RuntimeDir;
use super::state::SandboxConfig;
use crate::vmm::initramfs::{Initramfs, InitramfsError};
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
}

/// The VM of a sandbox created with `config`, its console going to `console`.
pub fn config_of(config: &SandboxConfig, console: ConsoleLog) -> Result<VmConfig, VmError> {
    Ok(VmConfig {
        kernel: config.kernel.clone(),
        initrd: Initramfs::with_init().to_bytes()?,
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
pub fn start(mut config: VmConfig, runtime: &RuntimeDir) -> Result<AgentVm, VmError> {
    let listener =
        UnixListener::bind(runtime.vsock_listener(AGENT_PORT)).map_err(VmError::Runtime)?;
    config.vsock = Some(VsockConfig {
        cid: DEFAULT_GUEST_CID,
        uds_path: runtime.vsock_socket(),
    });
    let vm = vmm::start(config)?;
    Ok(AgentVm { vm, listener })
}

impl AgentVm {
    /// Waits for the guest agent to connect; `Err(end)` if the VM ends or time runs out.
    pub fn accept(&self, deadline: Option<Instant>) -> Result<UnixStream, SessionEnd> {
        agent::accept(&self.listener, self.vm.exit_fd(), deadline)
    }
}
