//! Virtio devices (virtio 1.2 spec, OASIS) on the virtio-mmio transport (§4.2): the
//! [`VirtioDevice`] trait every device model implements, the [`Interrupt`] handle a device and
//! its transport share, and [`MmioSlot`], which says where a device sits for the guest.
//!
//! # Threads
//! A device is shared as `Arc<Mutex<dyn VirtioDevice>>` by two threads: the vCPU threads reach
//! it through [`mmio::MmioTransport`] (register accesses, activation, reset), and the VMM's
//! event-manager thread drives it as an [`event_manager::MutEventSubscriber`] (queue
//! notifications and the device's own backend file descriptors). Neither ever blocks on the
//! guest: every backend fd is nonblocking.
//!
//! # Wiring a device (what the VMM does, once per device)
//! ```text
//! // Vsock::new(guest_cid, &uds_path) | Block::new(&path, read_only, serial, limits) | Rng::new()
//! // | Net::new(NetConfig { mac, mtu }, Box::new(Tap::open("brig%d")?))   (not wired yet)
//! let dev = Arc::new(Mutex::new(Vsock::new(DEFAULT_GUEST_CID, &uds_path)?));
//! let transport = MmioTransport::new(mem.clone(), dev.clone())?;   // coerces to SharedVirtioDevice
//! let slot = MmioSlot { base, gsi };                                 // base: 4 KiB aligned
//! vm.register_irqfd(transport.interrupt_evt(), slot.gsi)?;
//! for (i, evt) in transport.queue_evts().iter().enumerate() {
//!     vm.register_ioevent(evt, &IoEventAddress::Mmio(slot.notify_addr()), i as u32)?;
//! }
//! mmio_bus.insert(Arc::new(Mutex::new(transport)), slot.base, MMIO_SLOT_SIZE)?;
//! event_manager.add_subscriber(dev);   // e.g. EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>
//! cmdline.push(slot.cmdline_fragment());        // "virtio_mmio.device=4K@0x<base>:<gsi>"
//! ```
//! In words: insert the transport on the MMIO bus at `base` with length 0x1000, register its
//! interrupt eventfd as an irqfd on `gsi`, register queue `i`'s eventfd as an ioeventfd at
//! `base + 0x50` with datamatch `i`, add the device to the event manager, and append the
//! command-line fragment. `wiring_tests.rs` does all of this except the two KVM calls.
//! The ioeventfds are an optimisation: when they cannot be registered, QueueNotify writes reach
//! the transport, which writes the same `EventFd` itself, so devices see notifications the same
//! way either way. The irqfd is not optional: it is how a device interrupts the guest.
//!
//! # A hostile guest
//! Everything the guest writes is checked: register values (queue sizes, ring addresses inside
//! guest memory and aligned, state-machine order), descriptor chains (every buffer inside guest
//! memory, chains bounded by the queue size, loops cut off by virtio-queue), and device
//! payloads (vsock headers, block request headers). A bad value fails that one request or sets
//! DEVICE_NEEDS_RESET; it never panics the VMM.

pub mod block;
mod common;
pub mod fs;
mod fs_relay;
#[cfg(test)]
mod fs_tests;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod test_utils;
pub mod vsock;
#[cfg(test)]
mod wiring_tests;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use common::DeviceCommon;

/// VIRTIO_F_VERSION_1 (§6): every brig device is a modern (non-legacy) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// `VIRTIO_F_EVENT_IDX` (virtio 1.2 §2.7.10): the driver and the device each say, by ring
/// index, when they next want a notification, instead of one per buffer.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// The virtio device types brig implements (§5).
pub mod device_type {
    /// virtio-net (§5.1).
    pub const NET: u32 = 1;
    /// virtio-blk (§5.2).
    pub const BLOCK: u32 = 2;
    /// virtio-rng, the entropy device (§5.4).
    pub const RNG: u32 = 4;
    /// virtio-vsock (§5.10).
    pub const VSOCK: u32 = 19;
    /// virtio-fs (§5.11), served by a vhost-user file server.
    pub const FS: u32 = 26;
}

/// Size of the MMIO window of one virtio-mmio device: 4 KiB (registers at 0x000..0x100,
/// device config space from 0x100).
pub const MMIO_SLOT_SIZE: u64 = 0x1000;

/// Offset of the QueueNotify register inside a device's MMIO window; the VMM registers the
/// per-queue ioeventfds at `base + MMIO_NOTIFY_OFFSET` with datamatch = queue index.
pub const MMIO_NOTIFY_OFFSET: u64 = 0x50;

/// Where a virtio-mmio device sits: its MMIO window and the GSI of its interrupt line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    /// Guest-physical base of the device's 4 KiB window.
    pub base: u64,
    /// GSI (IOAPIC pin on x86_64) the device's irqfd is registered on.
    pub gsi: u32,
}

impl MmioSlot {
    /// The kernel command-line fragment announcing the device to Linux's virtio_mmio driver
    /// (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), e.g. `virtio_mmio.device=4K@0xd0000000:5`.
    pub fn cmdline_fragment(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.gsi)
    }

    /// Guest-physical address of the QueueNotify register (for the ioeventfds).
    pub fn notify_addr(&self) -> u64 {
        self.base + MMIO_NOTIFY_OFFSET
    }
}

/// Activating a device failed; the transport then sets DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver activated the device twice without a reset in between.
    #[error("device is already active")]
    AlreadyActive,
    /// The transport handed over a different number of queues than the device has.
    #[error("device expects {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    /// Telling the device's event loop about the activation failed.
    #[error("cannot signal the device's event loop: {0}")]
    Signal(#[source] io::Error),
    /// The device's host backend refused the negotiated settings.
    #[error("cannot configure the device's backend: {0}")]
    Backend(#[source] io::Error),
}

/// A virtio device model, independent of its transport.
///
/// A device supplies its identity (type, queues, features, config space) and its
/// [`DeviceCommon`]; feature acknowledgement, activation and reset have default methods over
/// that common state, which a device overrides only to add its own steps (as vsock does for
/// reset).
///
/// Config-space accessors take offsets relative to the start of the device's config space;
/// they must tolerate any offset and width (the guest chooses them).
pub trait VirtioDevice: event_manager::MutEventSubscriber + Send {
    /// The virtio device type (see [`device_type`]).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers; must include [`VIRTIO_F_VERSION_1`].
    fn features(&self) -> u64;
    /// Reads device config space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The state every device shares (the default methods below work on it).
    fn common_mut(&mut self) -> &mut DeviceCommon;

    /// Writes device config space; by default it is read-only and writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            "virtio: device type {} ignores a {}-byte config write at {offset:#x}",
            self.device_type(),
            data.len()
        );
    }
    /// The driver accepted `features` (a subset of [`Self::features`]) at FEATURES_OK.
    fn ack_features(&mut self, features: u64) {
        self.common_mut().acked_features = features;
    }
    /// The driver set DRIVER_OK: start serving `queues` (validated by the transport, one per
    /// entry of [`Self::queue_max_sizes`]), woken by `queue_evts` (same order), and
    /// interrupting the guest through `interrupt`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.common_mut()
            .activate(mem, queues, queue_evts, interrupt)
    }
    /// Why the device cannot be saved in a VM snapshot now, if it cannot: state it holds
    /// outside guest memory and the saved queues (vsock connections, say), which a restored
    /// VM would not have. Asked with the device thread stopped.
    fn snapshot_blocker(&self) -> Option<String> {
        None
    }
    /// A save is about to record the active queues (the device thread stopped): a device
    /// whose queues something else moves (the kernel's vhost-net) stops it and brings them
    /// up to date. The VM does not run on after a save.
    fn sync_for_save(&mut self) {}
    /// The driver wrote 0 to Status: drop the queues and all in-flight work, back to the state
    /// of a freshly created device (backends such as a vsock listener stay open).
    fn reset(&mut self) {
        self.common_mut().reset();
    }
}

/// A device shared by its transport (vCPU threads) and the event-manager thread.
pub type SharedVirtioDevice = Arc<Mutex<dyn VirtioDevice>>;

/// The interrupt line of one virtio-mmio device: InterruptStatus bits (§4.2.2) plus the
/// `EventFd` the VMM registers as a KVM irqfd. Raising = set the bit, then write the eventfd.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
    /// Someone else (a vhost-user server) writes `evt` for used buffers without setting
    /// the status bit: reads then report a used-ring interrupt.
    external_vring: AtomicBool,
}

impl Interrupt {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            evt: EventFd::new(EFD_NONBLOCK)?,
            external_vring: AtomicBool::new(false),
        })
    }

    /// The eventfd to register as the device's irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// A device put buffers in a used ring.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// The device's config space (or DEVICE_NEEDS_RESET) changed.
    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(err) = self.evt.write(1) {
            // Only EAGAIN at a counter of u64::MAX - 1 can get here: the guest is already
            // being interrupted.
            tracing::warn!("virtio: cannot raise interrupt: {err}");
        }
    }

    /// The current InterruptStatus.
    pub fn status(&self) -> u32 {
        let external = if self.external_vring.load(Ordering::SeqCst) {
            VIRTIO_MMIO_INT_VRING
        } else {
            0
        };
        self.status.load(Ordering::SeqCst) | external
    }

    /// Says whether a process other than brig raises this line for used buffers (vhost-user):
    /// it cannot set the status bit, so while this holds every read reports one, and the
    /// guest's driver looks at its rings on each interrupt.
    pub fn set_external_vring(&self, on: bool) {
        self.external_vring.store(on, Ordering::SeqCst);
    }

    /// The driver acknowledged `bits` (InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets InterruptStatus to a saved value, without interrupting the guest.
    pub fn restore_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// Clears every pending bit (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// Reads `data.len()` bytes of a config space held in `config` at `offset`; bytes past its
/// end read as zero, as do accesses that overflow.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_fragment_names_base_and_gsi() {
        let slot = MmioSlot {
            base: 0xd000_0000,
            gsi: 5,
        };
        assert_eq!(
            slot.cmdline_fragment(),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(slot.notify_addr(), 0xd000_0050);
    }

    #[test]
    fn interrupt_sets_bits_and_writes_eventfd() {
        let irq = Interrupt::new().unwrap();
        irq.signal_used_queue();
        irq.signal_config_change();
        assert_eq!(irq.status(), 3);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        irq.ack(1);
        assert_eq!(irq.status(), 2);
        irq.clear();
        assert_eq!(irq.status(), 0);
        irq.set_external_vring(true);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        irq.set_external_vring(false);
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut b = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut b);
        assert_eq!(b, [3, 4, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
