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
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{MmioSlot, SharedVirtioDevice, VirtioDevice, MMIO_SLOT_SIZE};

/// A vsock device whose host side is a Unix socket.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
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
}

/// A device could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// Creating the device model failed.
    #[error("{0}")]
    Device(String),
    /// Out of IOAPIC pins.
    #[error("too many virtio devices (at most {})", IRQ_MAX - VIRTIO_IRQ_START + 1)]
    TooMany,
    /// KVM refused an irqfd or ioeventfd, or the bus a window.
    #[error("attaching virtio device: {0}")]
    Attach(String),
}

/// What attaching produced: command-line entries and event-loop subscribers.
#[derive(Default)]
pub struct Attached {
    pub cmdline: Vec<String>,
    pub subscribers: Vec<Subscriber>,
    next: u32,
}

impl Attached {
    fn attach<D: VirtioDevice + 'static>(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        mmio: &mut Bus,
        device: D,
    ) -> Result<(), VirtioError> {
        let index = self.next;
        let gsi = VIRTIO_IRQ_START + index;
        if gsi > IRQ_MAX {
            return Err(VirtioError::TooMany);
        }
        self.next += 1;
        let slot = MmioSlot {
            base: VIRTIO_MMIO_START + u64::from(index) * MMIO_DEVICE_SIZE,
            gsi,
        };
        let device = Arc::new(Mutex::new(device));
        let shared: SharedVirtioDevice = device.clone();
        let err = |e: &dyn std::fmt::Display| VirtioError::Attach(e.to_string());
        let transport = MmioTransport::new(mem.clone(), shared).map_err(|e| err(&e))?;
        vm.register_irqfd(transport.interrupt_evt(), slot.gsi)
            .map_err(|e| err(&e))?;
        for (queue, evt) in transport.queue_evts().iter().enumerate() {
            // Without an ioeventfd the transport signals the same eventfd itself.
            if let Err(e) = vm.register_ioevent(evt, &IoEventAddress::Mmio(slot.notify_addr()), queue as u32) {
                tracing::debug!("ioeventfd for queue {queue} at {:#x}: {e}", slot.notify_addr());
            }
        }
        mmio.insert(Arc::new(Mutex::new(transport)), slot.base, MMIO_SLOT_SIZE)
            .map_err(|e| err(&e))?;
        self.cmdline.push(slot.cmdline_fragment());
        self.subscribers.push(device);
        Ok(())
    }
}

/// Attaches disks (in order: /dev/vda, /dev/vdb, ...), the vsock device and an entropy source.
pub fn attach_all(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    disks: &[DiskConfig],
    vsock: Option<&VsockConfig>,
) -> Result<Attached, VirtioError> {
    let mut attached = Attached::default();
    for disk in disks {
        let dev = Block::new(&disk.path, disk.read_only, &disk.serial)
            .map_err(|e| VirtioError::Device(e.to_string()))?;
        attached.attach(vm, mem, mmio, dev)?;
    }
    if let Some(v) = vsock {
        let dev = Vsock::new(v.cid, &v.uds_path).map_err(|e| VirtioError::Device(e.to_string()))?;
        attached.attach(vm, mem, mmio, dev)?;
    }
    let rng = Rng::new().map_err(|e| VirtioError::Device(e.to_string()))?;
    attached.attach(vm, mem, mmio, rng)?;
    Ok(attached)
}
