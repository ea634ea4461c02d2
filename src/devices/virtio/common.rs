//! State every virtio device model shares (virtio 1.2 §2, §3.1): the negotiated features, the
//! queues and memory handed over at DRIVER_OK, and the glue to the event manager.
//!
//! Activation happens on a vCPU thread (a Status write), but the queue notify `EventFd`s must
//! be registered with the event manager from its own thread. So `activate` keeps the fds and
//! writes a private control `EventFd`; the event thread sees it and registers them. They stay
//! registered for the device's lifetime: the transport keeps the same eventfds across resets,
//! so a later activation needs no new registration, and notifications arriving while the
//! device is inactive are drained and dropped.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateError, Interrupt, VIRTIO_RING_F_EVENT_IDX};

/// Event data of the control eventfd.
const CONTROL_DATA: u32 = 0;
/// Event data of queue `i`'s notify eventfd is `QUEUE_DATA_BASE + i`.
const QUEUE_DATA_BASE: u32 = 1;
/// Devices use event data from here on for their own backend fds.
pub const DEVICE_DATA_BASE: u32 = 0x100;

/// What the driver handed over at DRIVER_OK.
#[derive(Debug)]
pub struct Active {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<Interrupt>,
}

impl Active {
    /// Puts a chain on queue `q`'s used ring, returning whether the guest wants an interrupt.
    /// A used ring the device cannot write is the guest's own problem: logged and dropped.
    pub fn add_used(&mut self, q: usize, head: u16, len: u32) -> bool {
        let queue = &mut self.queues[q];
        if let Err(err) = queue.add_used(&self.mem, head, len) {
            tracing::warn!("virtio: cannot add to used ring of queue {q}: {err}");
            return false;
        }
        queue.needs_notification(&self.mem).unwrap_or(true)
    }

    /// Asks the guest not to notify queue `q` while the device works through it (with
    /// EVENT_IDX the guest stops notifying by itself after one notification).
    pub fn disable_notification(&mut self, q: usize) {
        if let Err(err) = self.queues[q].disable_notification(&self.mem) {
            tracing::warn!("virtio: cannot disable notifications of queue {q}: {err}");
        }
    }

    /// Asks the guest to notify queue `q` when it posts the next chain, and returns whether
    /// chains were posted since the device last looked: then the device must go on, as no
    /// notification will come for those. An unwritable ring reads as nothing posted.
    pub fn enable_notification(&mut self, q: usize) -> bool {
        match self.queues[q].enable_notification(&self.mem) {
            Ok(more) => more,
            Err(err) => {
                tracing::warn!("virtio: cannot enable notifications of queue {q}: {err}");
                false
            }
        }
    }
}

/// What an event from the event manager was about, once the common part is handled.
#[derive(Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// Nothing left for the device to do.
    Handled,
    /// Queue `i` was notified and the device is active.
    Queue(usize),
    /// One of the device's own fds (its `data`, at or above [`DEVICE_DATA_BASE`]).
    Device(u32),
}

/// The part of a device that is the same for every device type.
#[derive(Debug)]
pub struct DeviceCommon {
    pub acked_features: u64,
    pub active: Option<Active>,
    queue_count: usize,
    control_evt: EventFd,
    /// Notify eventfds waiting to be registered by the event thread.
    pending_evts: Vec<EventFd>,
    /// Notify eventfds registered with the event manager (kept open while registered).
    registered_evts: Vec<EventFd>,
}

impl DeviceCommon {
    pub fn new(queue_count: usize) -> std::io::Result<Self> {
        Ok(Self {
            acked_features: 0,
            active: None,
            queue_count,
            control_evt: EventFd::new(EFD_NONBLOCK)?,
            pending_evts: Vec::new(),
            registered_evts: Vec::new(),
        })
    }

    /// Records an activation and wakes the event thread to register the queue eventfds.
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        self.check_counts(queues.len(), queue_evts.len())?;
        if self.registered_evts.is_empty() {
            self.pending_evts = queue_evts;
        }
        self.control_evt.write(1).map_err(ActivateError::Signal)?;
        self.keep_active(mem, queues, interrupt);
        Ok(())
    }

    /// Records an activation whose queues another party serves (a vhost-user server, the
    /// kernel's vhost-net): their kick eventfds are that party's and are never registered
    /// with the event loop, and it raises `interrupt` without setting InterruptStatus, so
    /// every read reports a used-ring interrupt while the device is active. The queues kept
    /// are where the other party starts from, and what a save records.
    pub fn activate_external(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) {
        interrupt.set_external_vring(true);
        self.keep_active(mem, queues, interrupt);
    }

    /// The queues handed over, with event indices as negotiated.
    fn keep_active(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>, interrupt: Arc<Interrupt>) {
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = queues;
        for queue in &mut queues {
            queue.set_event_idx(event_idx);
        }
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
    }

    /// Checks that the transport handed over one queue and one notify eventfd per queue of
    /// the device (also for devices that activate without [`Self::activate`]).
    pub fn check_counts(&self, queues: usize, queue_evts: usize) -> Result<(), ActivateError> {
        for got in [queues, queue_evts] {
            if got != self.queue_count {
                return Err(ActivateError::QueueCount {
                    expected: self.queue_count,
                    got,
                });
            }
        }
        Ok(())
    }

    /// Back to the pre-activation state (an external server's interrupt no longer reported).
    pub fn reset(&mut self) {
        if let Some(active) = self.active.take() {
            active.interrupt.set_external_vring(false);
        }
        self.acked_features = 0;
    }

    /// Registers the control eventfd; call from `MutEventSubscriber::init`.
    pub fn init(&self, ops: &mut EventOps) {
        let ev = Events::with_data(&self.control_evt, CONTROL_DATA, EventSet::IN);
        if let Err(err) = ops.add(ev) {
            tracing::error!("virtio: cannot register control eventfd: {err}");
        }
    }

    /// Handles the control and queue eventfds; call first from `MutEventSubscriber::process`.
    pub fn dispatch(&mut self, events: &Events, ops: &mut EventOps) -> Dispatch {
        let data = events.data();
        if data >= DEVICE_DATA_BASE {
            return Dispatch::Device(data);
        }
        if data == CONTROL_DATA {
            let _ = self.control_evt.read();
            for (data, evt) in (QUEUE_DATA_BASE..).zip(std::mem::take(&mut self.pending_evts)) {
                if let Err(err) = ops.add(Events::with_data(&evt, data, EventSet::IN)) {
                    let i = data - QUEUE_DATA_BASE;
                    tracing::error!("virtio: cannot register queue {i} eventfd: {err}");
                }
                self.registered_evts.push(evt);
            }
            return Dispatch::Handled;
        }
        let i = (data - QUEUE_DATA_BASE) as usize;
        let Some(evt) = self.registered_evts.get(i) else {
            return Dispatch::Handled;
        };
        // Drain the counter: one wake-up covers every notification so far.
        let _ = evt.read();
        if self.active.is_some() {
            Dispatch::Queue(i)
        } else {
            Dispatch::Handled
        }
    }

    /// Registers `fd` as one of the device's own event sources.
    pub fn add_device_fd(
        ops: &mut EventOps,
        fd: &impl std::os::fd::AsRawFd,
        data: u32,
        set: EventSet,
    ) {
        if let Err(err) = ops.add(Events::with_data(fd, data, set)) {
            tracing::error!("virtio: cannot register device fd: {err}");
        }
    }
}
