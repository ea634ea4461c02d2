//! The virtio-mmio transport, modern interface (version 2) only: virtio 1.2 §4.2.2 (register
//! layout) and §3.1 (device initialization), as a [`BusDevice`] at a 4 KiB MMIO window.
//!
//! Every value the guest writes is validated: registers are 32 bits wide (other widths are
//! ignored), queue settings are accepted only between FEATURES_OK and DRIVER_OK, queue sizes
//! must be powers of two no larger than the device's maximum, ring addresses must be aligned
//! (virtio-queue checks) and inside guest memory (checked at DRIVER_OK), Status may only move
//! ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK (or to FAILED, or back to 0 = reset), and
//! FEATURES_OK is refused for features the device did not offer or without VERSION_1. A bad
//! queue configuration at DRIVER_OK sets DEVICE_NEEDS_RESET instead of activating the device.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;

/// "virt" in little endian (§4.2.2).
const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern virtio-mmio interface.
const MMIO_VERSION: u32 = 2;
/// brig's vendor id: none registered, as Firecracker does.
const VENDOR_ID: u32 = 0;

/// The Status values of the initialization sequence, each the previous plus one bit.
const S_ACKNOWLEDGED: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const S_DRIVER: u32 = S_ACKNOWLEDGED | VIRTIO_CONFIG_S_DRIVER;
const S_FEATURES_OK: u32 = S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
const S_DRIVER_OK: u32 = S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK;

/// Creating a transport failed.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// An eventfd (interrupt or queue notify) could not be created.
    #[error("cannot create an eventfd for the virtio-mmio transport: {0}")]
    EventFd(#[source] std::io::Error),
    /// The device declared a queue size virtio cannot have.
    #[error("device queue {index} has invalid maximum size {size}")]
    QueueSize { index: usize, size: u16 },
}

/// One virtio-mmio device window: registers, queue configuration, and the device behind it.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_type: u32,
    device_features: u64,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// A transport for `device` over guest memory `mem`.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Self, MmioError> {
        let (device_type, device_features, sizes) = {
            let d = device.lock().unwrap_or_else(|p| p.into_inner());
            (d.device_type(), d.features(), d.queue_max_sizes().to_vec())
        };
        let queues = sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                Queue::new(size).map_err(|_| MmioError::QueueSize { index, size })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let queue_evts = sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(MmioError::EventFd)?;
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new().map_err(MmioError::EventFd)?),
            queues,
            queue_evts,
            device_type,
            device_features,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
        })
    }

    /// The eventfd to register as a KVM irqfd on the device's GSI.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.interrupt.eventfd()
    }

    /// One notify eventfd per queue, in queue order: register each as a KVM ioeventfd at
    /// `base + 0x50` with datamatch = its index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only while the driver sets queues up (§3.1.1 step 7).
    fn queue_setup_allowed(&self) -> bool {
        self.status == S_FEATURES_OK
    }

    fn reset(&mut self) {
        self.device().reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.clear();
        self.device_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.status = 0;
    }

    fn needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.signal_config_change();
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        if self.status & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET) != 0 {
            // Only a reset gets out of these.
            return;
        }
        // The driver writes back what it read plus one new bit, in order (§3.1.1).
        match (self.status, value) {
            (0, S_ACKNOWLEDGED) | (S_ACKNOWLEDGED, S_DRIVER) => self.status = value,
            (S_DRIVER, S_FEATURES_OK) => {
                let unknown = self.driver_features & !self.device_features;
                if unknown != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                    // FEATURES_OK stays clear: the driver reads it back and gives up.
                    tracing::warn!(
                        "virtio-mmio: refusing driver features {:#x} (offered {:#x})",
                        self.driver_features,
                        self.device_features
                    );
                    return;
                }
                let features = self.driver_features;
                self.device().ack_features(features);
                self.status = value;
            }
            (S_FEATURES_OK, S_DRIVER_OK) => self.activate(),
            _ => tracing::warn!(
                "virtio-mmio: ignoring Status {value:#x} in state {:#x}",
                self.status
            ),
        }
    }

    fn activate(&mut self) {
        self.status |= VIRTIO_CONFIG_S_DRIVER_OK;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            if !q.is_valid(&self.mem) {
                tracing::warn!("virtio-mmio: queue {i} is not ready or not valid");
                self.needs_reset();
                return;
            }
            // Queue is not Clone; the state round trip is its documented copy.
            match Queue::try_from(q.state()) {
                Ok(copy) => queues.push(copy),
                Err(err) => {
                    tracing::warn!("virtio-mmio: queue {i}: {err}");
                    self.needs_reset();
                    return;
                }
            }
        }
        let evts = match self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(evts) => evts,
            Err(err) => {
                tracing::error!("virtio-mmio: cannot clone queue eventfds: {err}");
                self.needs_reset();
                return;
            }
        };
        let mem = self.mem.clone();
        let interrupt = self.interrupt.clone();
        let result = self.device().activate(mem, queues, evts, interrupt);
        if let Err(err) = result {
            tracing::error!("virtio-mmio: activating device failed: {err}");
            self.needs_reset();
        }
    }

    fn read_register(&self, offset: u32) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            reg::VIRTIO_MMIO_VERSION => MMIO_VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.device_type,
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => (self.device_features & 0xffff_ffff) as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            reg::VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: their length reads as all ones (§4.2.2).
            reg::VIRTIO_MMIO_SHM_LEN_LOW | reg::VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            reg::VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => {
                if self.status != S_DRIVER {
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => {
                // Only reached when the ioeventfd is not registered: forward it the same way.
                if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
                    return;
                }
                if let Some(evt) = self.queue_evts.get(value as usize) {
                    if let Err(err) = evt.write(1) {
                        tracing::warn!("virtio-mmio: cannot notify queue {value}: {err}");
                    }
                }
            }
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            reg::VIRTIO_MMIO_STATUS => self.write_status(value),
            reg::VIRTIO_MMIO_QUEUE_NUM
            | reg::VIRTIO_MMIO_QUEUE_READY
            | reg::VIRTIO_MMIO_QUEUE_DESC_LOW
            | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | reg::VIRTIO_MMIO_QUEUE_USED_LOW
            | reg::VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_register(offset, value),
            _ => tracing::debug!("virtio-mmio: ignoring write of {value:#x} at {offset:#x}"),
        }
    }

    fn write_queue_register(&mut self, offset: u32, value: u32) {
        if !self.queue_setup_allowed() {
            tracing::warn!("virtio-mmio: queue register write at {offset:#x} outside setup");
            return;
        }
        let Some(q) = self.selected_queue() else {
            return;
        };
        // virtio-queue checks sizes (power of two, <= max) and ring alignment, and keeps the
        // old value when the new one is invalid.
        match offset {
            reg::VIRTIO_MMIO_QUEUE_NUM => match u16::try_from(value) {
                Ok(size) => {
                    if let Err(err) = q.try_set_size(size) {
                        tracing::warn!("virtio-mmio: bad queue size {value}: {err}");
                    }
                }
                Err(_) => tracing::warn!("virtio-mmio: bad queue size {value}"),
            },
            reg::VIRTIO_MMIO_QUEUE_READY => q.set_ready(value == 1),
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
            reg::VIRTIO_MMIO_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(value), None),
            reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(value)),
            reg::VIRTIO_MMIO_QUEUE_USED_LOW => q.set_used_ring_address(Some(value), None),
            reg::VIRTIO_MMIO_QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let config = u64::from(reg::VIRTIO_MMIO_CONFIG);
        if offset >= config {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device().read_config(offset - config, data);
            } else {
                data.fill(0);
            }
            return;
        }
        let Ok(offset) = u32::try_from(offset) else {
            data.fill(0);
            return;
        };
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0);
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let config = u64::from(reg::VIRTIO_MMIO_CONFIG);
        if offset >= config {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device().write_config(offset - config, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::warn!(
                "virtio-mmio: ignoring {}-byte write at {offset:#x}",
                data.len()
            );
            return;
        };
        let Ok(offset) = u32::try_from(offset) else {
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

mod persist;
#[cfg(test)]
mod tests;

pub use persist::TransportState;
