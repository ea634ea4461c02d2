//! Wiring virtio devices into a VM: each gets a 4 KiB MMIO window in the MMIO gap, an IOAPIC
//! pin (irqfd), one ioeventfd per queue, a place in the device event loop, and a
//! `virtio_mmio.device=` entry on the kernel command line.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;

use super::event_loop::Subscriber;
use crate::arch::x86_64::layout::{IRQ_MAX, MMIO_DEVICE_SIZE, VIRTIO_IRQ_START, VIRTIO_MMIO_START};
use crate::devices::bus::Bus;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::{Backend, Net, NetConfig, VhostNet};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{MmioSlot, SharedVirtioDevice, VirtioDevice, MMIO_SLOT_SIZE};

pub use crate::devices::rate_limiter::IoLimits;
pub use crate::devices::virtio::net::filter::{
    Cidr, EgressPolicy, EgressRule, EgressRuleError, Proto as FilterProto, ALWAYS_DENIED,
};
pub use crate::devices::virtio::net::passt::{
    Passt as PasstBackend, PasstError as PasstBackendError,
};
pub use crate::devices::virtio::net::tap::{Tap, TapError};
pub use crate::devices::virtio::net::Backend as NetBackend;
pub use crate::devices::virtio::net::NullBackend;
pub use crate::devices::virtio::vsock::DEFAULT_GUEST_CID;

/// A vsock device whose host side is a Unix socket.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context id (3 or more; brig uses [`DEFAULT_GUEST_CID`]).
    pub cid: u64,
    /// Host Unix socket; guest-initiated connections to port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// A disk backed by a host file.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Serial number the guest sees (`/sys/block/vdX/serial`).
    pub serial: String,
    /// Rate limits the device enforces on the guest's I/O.
    pub limits: IoLimits,
}

/// A shared directory (virtio-fs): the vhost-user socket of its file server, already
/// listening, and the tag the guest mounts it by.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// `None`: a template's placeholder, with no server (see [`Fs::placeholder`]).
    pub socket: Option<PathBuf>,
    pub tag: String,
}

impl FsConfig {
    /// The same share without a server, for a template of its VM.
    pub fn placeholder(&self) -> Self {
        Self {
            socket: None,
            tag: self.tag.clone(),
        }
    }
}

/// A network device (virtio-net) and the host side it is wired to.
pub struct NetDeviceConfig {
    /// The wire: a TAP ([`Tap`]) as root.
    pub backend: Box<dyn Backend>,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The MTU the guest is told to use.
    pub mtu: u16,
    /// What the guest may send, checked on every frame (`None`: anything).
    pub egress: Option<EgressPolicy>,
    /// Let the kernel's vhost-net move the frames (a TAP backend only, `BRIG_VHOST_NET=on`):
    /// the VMM then neither copies nor checks them, and `egress` is left to the host's
    /// nftables (see [`VhostNet`]). Where `/dev/vhost-net` cannot be opened the VMM moves
    /// them itself.
    pub vhost: bool,
}

impl NetDeviceConfig {
    /// The same device with no wire (a template's: see [`NullBackend`]).
    pub fn unwired(&self) -> std::io::Result<Self> {
        Self::without_wire(self.mac, self.mtu)
    }

    /// A device with `mac` and `mtu` and no wire (see [`NullBackend`]).
    pub fn without_wire(mac: [u8; 6], mtu: u16) -> std::io::Result<Self> {
        Ok(Self {
            backend: Box::new(NullBackend::new()?),
            mac,
            mtu,
            egress: None,
            vhost: false,
        })
    }
}

impl std::fmt::Debug for NetDeviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDeviceConfig")
            .field("backend", &self.backend)
            .field("mac", &format_args!("{:02x?}", self.mac))
            .field("mtu", &self.mtu)
            .field("egress", &self.egress)
            .field("vhost", &self.vhost)
            .finish()
    }
}

/// A device could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// Creating the device model failed.
    #[error(transparent)]
    Block(#[from] crate::devices::virtio::block::BlockError),
    #[error(transparent)]
    Vsock(#[from] crate::devices::virtio::vsock::VsockError),
    #[error(transparent)]
    Rng(#[from] crate::devices::virtio::rng::RngError),
    #[error(transparent)]
    Net(#[from] crate::devices::virtio::net::NetError),
    #[error(transparent)]
    Fs(#[from] crate::devices::virtio::fs::FsError),
    /// The network backend's fd could not be duplicated for vhost-net.
    #[error("cannot hand the TAP to vhost-net: {0}")]
    NetBackend(#[from] std::io::Error),
    /// Out of IOAPIC pins.
    #[error("too many virtio devices (at most {})", IRQ_MAX - VIRTIO_IRQ_START + 1)]
    TooMany,
    /// The transport could not be made, KVM refused its irqfd, or the bus its window.
    #[error("attaching virtio device: {0}")]
    Attach(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One device of the plan.
#[derive(Debug, Clone)]
pub enum DeviceKind {
    Disk(DiskConfig),
    Vsock(VsockConfig),
    Rng,
    /// The network device, whose backend [`attach_all`] is given separately (it is an open
    /// host resource, not a plan).
    Net,
    /// A shared directory.
    Fs(FsConfig),
}

impl DeviceKind {
    /// The virtio device type (virtio 1.2 §5).
    pub fn device_type(&self) -> u32 {
        use crate::devices::virtio::device_type;
        match self {
            Self::Disk(_) => device_type::BLOCK,
            Self::Vsock(_) => device_type::VSOCK,
            Self::Rng => device_type::RNG,
            Self::Net => device_type::NET,
            Self::Fs(_) => device_type::FS,
        }
    }
}

/// Where each device will sit; known before anything is created, so the command line can be
/// checked first.
#[derive(Debug, Clone)]
pub struct Plan {
    pub devices: Vec<(MmioSlot, DeviceKind)>,
}

impl Plan {
    /// Disks first (in order: /dev/vda, /dev/vdb, ...), then vsock, then an entropy source,
    /// then the network device when there is one, then the shared directories.
    pub fn new(
        disks: &[DiskConfig],
        vsock: Option<&VsockConfig>,
        net: bool,
        fs: &[FsConfig],
    ) -> Result<Self, VirtioError> {
        let kinds = disks
            .iter()
            .cloned()
            .map(DeviceKind::Disk)
            .chain(vsock.cloned().map(DeviceKind::Vsock))
            .chain(std::iter::once(DeviceKind::Rng))
            .chain(net.then_some(DeviceKind::Net))
            .chain(fs.iter().cloned().map(DeviceKind::Fs));
        let mut devices = Vec::new();
        for (index, kind) in kinds.enumerate() {
            let gsi = VIRTIO_IRQ_START + index as u32;
            if gsi > IRQ_MAX {
                return Err(VirtioError::TooMany);
            }
            let base = VIRTIO_MMIO_START + index as u64 * MMIO_DEVICE_SIZE;
            devices.push((MmioSlot { base, gsi }, kind));
        }
        Ok(Self { devices })
    }

    /// The kernel command line entries announcing the devices.
    pub fn cmdline(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|(slot, _)| slot.cmdline_fragment())
            .collect()
    }
}

/// What attaching produced: the device threads' event subscribers, and each device's
/// transport (for snapshots).
#[derive(Default)]
pub struct Attached {
    pub subscribers: Vec<Subscriber>,
    pub transports: Vec<(MmioSlot, Arc<Mutex<MmioTransport>>)>,
}

impl Attached {
    fn attach<D: VirtioDevice + 'static>(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        mmio: &mut Bus,
        slot: MmioSlot,
        device: D,
    ) -> Result<(), VirtioError> {
        let device = Arc::new(Mutex::new(device));
        let shared: SharedVirtioDevice = device.clone();
        let transport =
            MmioTransport::new(mem.clone(), shared).map_err(|e| VirtioError::Attach(e.into()))?;
        vm.register_irqfd(transport.interrupt_evt(), slot.gsi)
            .map_err(|e| VirtioError::Attach(e.into()))?;
        for (queue, evt) in transport.queue_evts().iter().enumerate() {
            // Without an ioeventfd the transport signals the same eventfd itself.
            if let Err(e) =
                vm.register_ioevent(evt, &IoEventAddress::Mmio(slot.notify_addr()), queue as u32)
            {
                tracing::debug!(
                    "ioeventfd for queue {queue} at {:#x}: {e}",
                    slot.notify_addr()
                );
            }
        }
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(transport.clone(), slot.base, MMIO_SLOT_SIZE)
            .map_err(|e| VirtioError::Attach(e.into()))?;
        self.subscribers.push(device);
        self.transports.push((slot, transport));
        Ok(())
    }
}

/// Creates and attaches every device of `plan`; `net` is the network device's backend when
/// the plan has one.
pub fn attach_all(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    plan: &Plan,
    mut net: Option<NetDeviceConfig>,
) -> Result<Attached, VirtioError> {
    let mut attached = Attached::default();
    for (slot, kind) in &plan.devices {
        match kind {
            DeviceKind::Disk(d) => {
                let dev = Block::new(&d.path, d.read_only, &d.serial, d.limits)?;
                attached.attach(vm, mem, mmio, *slot, dev)?;
            }
            DeviceKind::Vsock(v) => {
                let dev = Vsock::new(v.cid, &v.uds_path)?;
                attached.attach(vm, mem, mmio, *slot, dev)?;
            }
            DeviceKind::Rng => {
                let dev = Rng::new()?;
                attached.attach(vm, mem, mmio, *slot, dev)?;
            }
            DeviceKind::Net => {
                let Some(n) = net.take() else {
                    return Err(VirtioError::Attach(
                        "no backend for the network device".into(),
                    ));
                };
                let config = NetConfig {
                    mac: Some(n.mac),
                    mtu: Some(n.mtu),
                };
                if n.vhost {
                    match VhostNet::new(config, n.backend.try_clone()?, mem) {
                        Ok(dev) => {
                            attached.attach(vm, mem, mmio, *slot, dev)?;
                            continue;
                        }
                        Err(err) => {
                            tracing::warn!("virtio-net: {err}; the VMM moves the frames itself")
                        }
                    }
                }
                let mut dev = Net::new(config, n.backend)?;
                dev.set_egress(n.egress);
                attached.attach(vm, mem, mmio, *slot, dev)?;
            }
            DeviceKind::Fs(f) => {
                let dev = match &f.socket {
                    Some(socket) => Fs::new(socket, &f.tag)?,
                    None => Fs::placeholder(&f.tag)?,
                };
                attached.attach(vm, mem, mmio, *slot, dev)?;
            }
        }
    }
    Ok(attached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_puts_disks_first_and_bounds_the_count() {
        let disk = |n: &str| DiskConfig {
            path: n.into(),
            read_only: true,
            serial: n.into(),
            limits: IoLimits::default(),
        };
        let vsock = VsockConfig {
            cid: 3,
            uds_path: "/run/x".into(),
        };
        let plan = Plan::new(&[disk("a"), disk("b")], Some(&vsock), true, &[]).unwrap();
        assert_eq!(
            plan.cmdline(),
            vec![
                "virtio_mmio.device=4K@0xd0000000:5",
                "virtio_mmio.device=4K@0xd0001000:6",
                "virtio_mmio.device=4K@0xd0002000:7",
                "virtio_mmio.device=4K@0xd0003000:8",
                "virtio_mmio.device=4K@0xd0004000:9",
            ]
        );
        assert!(matches!(plan.devices[2].1, DeviceKind::Vsock(_)));
        assert!(matches!(plan.devices[3].1, DeviceKind::Rng));
        assert!(matches!(plan.devices[4].1, DeviceKind::Net));
        // GSIs 5..=23: 19 devices at most.
        let many: Vec<_> = (0..19).map(|i| disk(&i.to_string())).collect();
        assert!(matches!(
            Plan::new(&many, None, false, &[]),
            Err(VirtioError::TooMany)
        ));
        assert!(Plan::new(&many[..18], Some(&vsock), false, &[]).is_err());
        assert!(Plan::new(&many[..18], None, false, &[]).is_ok());
        assert!(Plan::new(&many[..17], Some(&vsock), false, &[]).is_ok());
    }
}
