//! virtio-net with the host kernel's vhost-net moving the frames: the same device as
//! [`super::Net`] to the guest (features, config space, queue sizes, so that a VM saved with
//! one restores with the other), but its queues are handed to `/dev/vhost-net`, which reads
//! and writes them and the TAP in the kernel. Kicks go from KVM's ioeventfds straight to the
//! vhost worker and its interrupts straight to KVM's irqfd: no frame, kick or interrupt
//! passes through brig, which saves the two copies and the system calls per frame that the
//! userspace device costs (Cloud Hypervisor's, QEMU's and Kata's fast path).
//!
//! # What changes for a hostile guest
//! The rings are parsed by the host kernel's vhost code instead of brig's ([`super::frame`]):
//! a bad chain stops that queue (the kernel logs it and signals the error eventfd, which the
//! device logs), never another VM: but it is host kernel code that the guest now reaches,
//! which Firecracker avoids for that reason. The VMM's frame filter ([`super::filter`]) does
//! not see the frames: the sandbox's nftables table is the one enforcement of the egress
//! policy, as for a container. So brig uses it only when asked (`BRIG_VHOST_NET=on`).
//!
//! # Order (QEMU's `vhost_dev_start`, Cloud Hypervisor's `vhost_kernel`)
//! At creation (before the VMM is confined): open `/dev/vhost-net`, `SET_OWNER` (the kernel
//! worker joins this process), `GET_FEATURES`. At activation, on the device thread:
//! `SET_FEATURES` (the ring features the guest acked), `SET_MEM_TABLE`, then per queue
//! `SET_VRING_{NUM,ADDR,BASE,CALL,KICK,ERR}` and `NET_SET_BACKEND` (the TAP). The TAP's
//! offloads follow the acked features, as for the userspace device. At a reset or before a
//! save, `NET_SET_BACKEND(-1)` and `GET_VRING_BASE` stop the queues; the positions the kernel
//! reached are put back in the queues a save records.

use std::fs::File;
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as KernNet;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::device::{config_space, tun_offload, CONFIG_LEN, QUEUE_SIZE};
use super::{Backend, NetConfig, NetError};
use crate::devices::virtio::common::{Active, DeviceCommon, Dispatch, DEVICE_DATA_BASE};
use crate::devices::virtio::{
    device_type, read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Ring features the kernel implements and brig passes on when the guest acks them (the
/// offloads are the TAP's business, not vhost's).
const RING_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
/// Event data of the control eventfd (activations and resets for the device thread).
const CONTROL_DATA: u32 = DEVICE_DATA_BASE;
/// Event data of the kernel's ring-error eventfd.
const ERROR_DATA: u32 = DEVICE_DATA_BASE + 1;

/// Making the device failed.
#[derive(Debug, thiserror::Error)]
pub enum VhostNetError {
    #[error("cannot open /dev/vhost-net: {0}")]
    Open(#[source] vhost::Error),
    #[error("vhost-net {what}: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-net lacks {0}")]
    Unsupported(&'static str),
    #[error(transparent)]
    Config(#[from] NetError),
    #[error("cannot set up vhost-net: {0}")]
    Io(#[from] std::io::Error),
}

/// What the driver asked for, done on the device thread (the vCPU threads that see the
/// Status writes are confined to KVM's calls).
enum Pending {
    Start { kicks: Vec<EventFd> },
    Stop,
}

/// A virtio-net device whose queues the kernel's vhost-net serves.
pub struct VhostNet {
    common: DeviceCommon,
    kern: KernNet<Arc<GuestMemoryMmap>>,
    /// The TAP, for its offloads (the kernel reads and writes it through `tap_file`).
    backend: Box<dyn Backend>,
    tap_file: File,
    /// What the kernel offers.
    kern_features: u64,
    features: u64,
    config: [u8; CONFIG_LEN],
    /// Queues handed to the kernel (stopped at a reset or a save).
    running: usize,
    pending: Vec<Pending>,
    control: EventFd,
    error: EventFd,
}

impl std::fmt::Debug for VhostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostNet")
            .field("backend", &self.backend)
            .field("kern_features", &format_args!("{:#x}", self.kern_features))
            .field("running", &self.running)
            .finish()
    }
}

impl VhostNet {
    /// A device with `config` whose frames the kernel moves to and from `backend`'s fd (a
    /// TAP opened with IFF_VNET_HDR and a 12-byte header); `mem` is the VM's memory.
    pub fn new(
        config: NetConfig,
        backend: Box<dyn Backend>,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, VhostNetError> {
        let (features, space) = config_space(config)?;
        let kern = KernNet::new(Arc::new(mem.clone())).map_err(VhostNetError::Open)?;
        let setup = |what| move |source| VhostNetError::Setup { what, source };
        kern.set_owner().map_err(setup("SET_OWNER"))?;
        let kern_features = kern.get_features().map_err(setup("GET_FEATURES"))?;
        if kern_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(VhostNetError::Unsupported("VIRTIO_F_VERSION_1"));
        }
        // The kernel keeps its own reference to the TAP's file; this one is for the ioctl.
        let dup = rustix::io::fcntl_dupfd_cloexec(
            // SAFETY: the backend owns this fd and outlives the borrow.
            unsafe { BorrowedFd::borrow_raw(backend.as_raw_fd()) },
            0,
        )
        .map_err(std::io::Error::from)?;
        let tap_file = File::from(dup);
        Ok(Self {
            common: DeviceCommon::new(2).map_err(NetError::EventFd)?,
            kern,
            backend,
            tap_file,
            kern_features,
            features,
            config: space,
            running: 0,
            pending: Vec::new(),
            control: EventFd::new(libc::EFD_NONBLOCK)?,
            error: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Hands the active queues to the kernel at their current positions (a restored
    /// device's are where its guest left them).
    fn start(&mut self, kicks: &[EventFd]) -> Result<(), vhost::Error> {
        let Some(active) = self.common.active.as_ref() else {
            return Ok(());
        };
        let (mem, queues, interrupt) = (&active.mem, &active.queues, &active.interrupt);
        let acked = kernel_features(self.common.acked_features, self.kern_features);
        self.kern.set_features(acked)?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()?;
        self.kern.set_mem_table(&regions)?;
        for (i, (queue, kick)) in queues.iter().zip(kicks).enumerate() {
            self.kern.set_vring_num(i, queue.size())?;
            let addrs = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: queue.desc_table(),
                used_ring_addr: queue.used_ring(),
                avail_ring_addr: queue.avail_ring(),
                log_addr: None,
            };
            self.kern.set_vring_addr(i, &addrs)?;
            self.kern.set_vring_base(i, queue.next_avail())?;
            self.kern.set_vring_call(i, interrupt.eventfd())?;
            self.kern.set_vring_kick(i, kick)?;
            self.kern.set_vring_err(i, &self.error)?;
            self.running = i + 1;
            self.kern.set_backend(i, Some(&self.tap_file))?;
        }
        Ok(())
    }

    /// Takes the queues back from the kernel and records where it left them in the active
    /// queues (what a save writes): the next chain to take is the kernel's, the used index
    /// is the one in guest memory, which the kernel wrote last.
    fn stop(&mut self) {
        let running = std::mem::take(&mut self.running);
        for i in 0..running {
            if let Err(err) = self.kern.set_backend(i, None) {
                tracing::warn!("virtio-net: vhost-net: detaching queue {i}: {err}");
            }
            let base = match self.kern.get_vring_base(i) {
                Ok(base) => base,
                Err(err) => {
                    tracing::warn!("virtio-net: vhost-net: stopping queue {i}: {err}");
                    continue;
                }
            };
            if let Some(Active { mem, queues, .. }) = self.common.active.as_mut() {
                let queue = &mut queues[i];
                // The kernel's index is a free-running u16 carried in a u32.
                queue.set_next_avail((base & 0xffff) as u16);
                match queue.used_idx(mem, Ordering::Acquire) {
                    Ok(used) => queue.set_next_used(used.0),
                    Err(err) => tracing::warn!("virtio-net: reading queue {i}'s used index: {err}"),
                }
            }
        }
    }

    /// Does what the driver asked for, in order (on the device thread).
    fn run_pending(&mut self) {
        for op in std::mem::take(&mut self.pending) {
            match op {
                Pending::Start { kicks } => {
                    if let Err(err) = self.start(&kicks) {
                        tracing::error!("virtio-net: handing the queues to vhost-net: {err}");
                        self.stop();
                    }
                }
                Pending::Stop => self.stop(),
            }
        }
    }
}

/// The ring features of `acked` that go to a kernel offering `offered`.
pub(super) fn kernel_features(acked: u64, offered: u64) -> u64 {
    acked & RING_FEATURES & offered
}

impl VirtioDevice for VhostNet {
    fn device_type(&self) -> u32 {
        device_type::NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if self.common.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        self.common.check_counts(queues.len(), queue_evts.len())?;
        let offload = tun_offload(self.common.acked_features);
        self.backend
            .set_offload(offload)
            .map_err(ActivateError::Backend)?;
        // A kick before the kernel has the rings keeps its count in the eventfd.
        self.common.activate_external(mem, queues, interrupt);
        self.pending.push(Pending::Start { kicks: queue_evts });
        self.control.write(1).map_err(ActivateError::Signal)
    }
    fn sync_for_save(&mut self) {
        // The device thread is stopped when a save asks: stop the kernel's queues here.
        self.run_pending();
        self.stop();
    }
    fn reset(&mut self) {
        self.pending.push(Pending::Stop);
        if let Err(err) = self.control.write(1) {
            tracing::error!("virtio-net: cannot signal a reset: {err}");
        }
        self.common.reset();
    }
}

impl MutEventSubscriber for VhostNet {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
        DeviceCommon::add_device_fd(ops, &self.control, CONTROL_DATA, EventSet::IN);
        DeviceCommon::add_device_fd(ops, &self.error, ERROR_DATA, EventSet::IN);
    }
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.common.dispatch(&events, ops) {
            Dispatch::Device(CONTROL_DATA) => {
                let _ = self.control.read();
                self.run_pending();
            }
            Dispatch::Device(ERROR_DATA) => {
                let _ = self.error.read();
                tracing::warn!("virtio-net: vhost-net stopped a queue the guest broke");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::net::device::Net;
    use crate::devices::virtio::net::NullBackend;
    use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_MAC};

    #[test]
    fn only_ring_features_go_to_the_kernel() {
        let acked = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_MAC;
        let kernel = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 1 << 27;
        assert_eq!(
            kernel_features(acked, kernel),
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
        );
        // A kernel without EVENT_IDX gets none.
        assert_eq!(
            kernel_features(acked, VIRTIO_F_VERSION_1),
            VIRTIO_F_VERSION_1
        );
    }

    #[test]
    fn offers_what_the_userspace_device_offers() {
        // A template's device (userspace, no wire) and a restored sandbox's (vhost-net)
        // must agree on what the guest negotiated: same features, config space, queues.
        let config = NetConfig {
            mac: Some([0x02, 0, 0, 0, 0, 9]),
            mtu: Some(1500),
        };
        let user = Net::new(config, Box::new(NullBackend::new().unwrap())).unwrap();
        let (features, space) = config_space(config).unwrap();
        assert_eq!(user.features(), features);
        let mut read = [0u8; CONFIG_LEN];
        user.read_config(0, &mut read);
        assert_eq!(read, space);
        assert_eq!(user.queue_max_sizes(), &[QUEUE_SIZE; 2]);
    }
}
