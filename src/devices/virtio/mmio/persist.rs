//! Saving and restoring a virtio-mmio transport and its device's queues, for VM snapshots.
//!
//! The transport keeps the queues as the driver configured them; the live positions
//! (`next_avail`, `next_used`) are in the device's own copies, handed over at DRIVER_OK. Both
//! are saved. Restoring an active device goes through the device's ordinary `ack_features` and
//! `activate`, with queues built from the saved state and re-validated against guest memory:
//! a state file is input like any other.

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET};
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::MmioTransport;
#[cfg(doc)]
use crate::devices::virtio::VirtioDevice;

/// A virtqueue's state (virtio-queue's `QueueState`, which has no serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(q: QueueSnapshot) -> Self {
        Self {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
        }
    }
}

/// Everything a transport and its device's common part hold that the guest can see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub device_features: u64,
    pub device_features_sel: u32,
    pub driver_features: u64,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub status: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    /// The queues as the driver configured them.
    pub queues: Vec<QueueSnapshot>,
    /// What the device acknowledged at FEATURES_OK.
    pub acked_features: u64,
    /// The device's live queues, when it is active.
    pub active_queues: Option<Vec<QueueSnapshot>>,
}

/// A saved transport does not fit the device it is restored onto, or is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("saved device type {saved} is not this device's type {actual}")]
    DeviceType { saved: u32, actual: u32 },
    #[error("saved device features {saved:#x} are not this device's {actual:#x}")]
    Features { saved: u64, actual: u64 },
    #[error("saved queue layout does not match the device's ({saved} queues, {actual} expected)")]
    Queues { saved: usize, actual: usize },
    #[error("saved queue {index} is invalid: {reason}")]
    Queue { index: usize, reason: String },
    #[error("saved acknowledged features {0:#x} were not offered")]
    Acked(u64),
    #[error("an active device without its queues")]
    NoActiveQueues,
    #[error("cannot re-activate the device: {0}")]
    Activate(String),
}

impl MmioTransport {
    /// The transport's state and its device's queues.
    pub fn save(&self) -> TransportState {
        let (acked_features, active_queues) = {
            let mut d = self.device();
            d.sync_for_save();
            let common = d.common_mut();
            let active = common
                .active
                .as_ref()
                .map(|a| a.queues.iter().map(|q| q.state().into()).collect());
            (common.acked_features, active)
        };
        TransportState {
            device_type: self.device_type,
            device_features: self.device_features,
            device_features_sel: self.device_features_sel,
            driver_features: self.driver_features,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
            acked_features,
            active_queues,
        }
    }

    /// Puts a fresh transport (and its fresh device) in the saved state. An active device is
    /// activated again with its saved queue positions; call [`Self::kick`] once the device
    /// thread runs.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), RestoreError> {
        if state.device_type != self.device_type {
            return Err(RestoreError::DeviceType {
                saved: state.device_type,
                actual: self.device_type,
            });
        }
        if state.device_features != self.device_features {
            return Err(RestoreError::Features {
                saved: state.device_features,
                actual: self.device_features,
            });
        }
        if state.acked_features & !self.device_features != 0 {
            return Err(RestoreError::Acked(state.acked_features));
        }
        let queues = self.queues_from(&state.queues, false)?;
        let active = state.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && state.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0;
        let live = match (&state.active_queues, active) {
            (Some(saved), true) => Some(self.queues_from(saved, true)?),
            (None, true) => return Err(RestoreError::NoActiveQueues),
            (_, false) => None,
        };
        self.queues = queues;
        self.device_features_sel = state.device_features_sel;
        self.driver_features = state.driver_features;
        self.driver_features_sel = state.driver_features_sel;
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        self.config_generation = state.config_generation;
        self.interrupt.restore_status(state.interrupt_status);
        if let Some(live) = live {
            let evts = self
                .queue_evts
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| RestoreError::Activate(e.to_string()))?;
            let (mem, interrupt) = (self.mem.clone(), self.interrupt.clone());
            let mut d = self.device();
            d.ack_features(state.acked_features);
            d.activate(mem, live, evts, interrupt)
                .map_err(|e| RestoreError::Activate(e.to_string()))?;
        } else if state.status & super::S_FEATURES_OK == super::S_FEATURES_OK {
            self.device().ack_features(state.acked_features);
        }
        Ok(())
    }

    /// Why the device cannot be saved now, if it cannot ([`VirtioDevice::snapshot_blocker`]).
    pub fn snapshot_blocker(&self) -> Option<String> {
        self.device().snapshot_blocker()
    }

    /// The virtio device type behind this transport.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// The device's config space changed under the driver (a disk's new backing): the
    /// generation moves on and, for an active device, a config-change interrupt is raised
    /// (virtio 1.2 §2.5.1, §4.2.2).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.interrupt.signal_config_change();
        }
    }

    /// Replays what a pause may have swallowed: every queue of an active device is notified,
    /// and a pending interrupt is raised again (irqfd injection is asynchronous, so it may not
    /// be in the saved irqchip). Spurious notifications and interrupts are harmless.
    pub fn kick(&self) {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            return;
        }
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = evt.write(1) {
                tracing::warn!("virtio-mmio: cannot kick queue {i}: {e}");
            }
        }
        if self.interrupt.status() != 0 {
            if let Err(e) = self.interrupt.eventfd().write(1) {
                tracing::warn!("virtio-mmio: cannot re-raise the interrupt: {e}");
            }
        }
    }

    /// Queues built from saved states, checked against the device's maximum sizes and, for
    /// live queues, against guest memory.
    fn queues_from(&self, saved: &[QueueSnapshot], live: bool) -> Result<Vec<Queue>, RestoreError> {
        if saved.len() != self.queues.len() {
            return Err(RestoreError::Queues {
                saved: saved.len(),
                actual: self.queues.len(),
            });
        }
        let mut out = Vec::with_capacity(saved.len());
        for (index, (s, fresh)) in saved.iter().zip(&self.queues).enumerate() {
            let bad = |reason: String| RestoreError::Queue { index, reason };
            if s.max_size != fresh.max_size() {
                return Err(bad(format!(
                    "maximum size {} is not the device's {}",
                    s.max_size,
                    fresh.max_size()
                )));
            }
            let q = Queue::try_from(QueueState::from(*s)).map_err(|e| bad(e.to_string()))?;
            if live && !q.is_valid(&self.mem) {
                return Err(bad("its rings are not inside guest memory".into()));
            }
            out.push(q);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
