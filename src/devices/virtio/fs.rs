//! virtio-fs (virtio 1.2 §5.11) as a vhost-user frontend: the guest's FUSE requests are
//! served by a separate file server process (virtiofsd), through bounce queues of brig's
//! (see [`super::fs_relay`]): the server maps only those, never guest memory.
//!
//! Why a separate server and not FUSE in the VMM: the process that opens host files is then
//! not the one that parses the guest's MMIO and other devices, it sandboxes itself (pivot_root
//! into the share, seccomp, capabilities dropped), and it is upstream's (Red Hat, Kata, Cloud
//! Hypervisor) well-reviewed code. Why bounce queues and not the server on guest memory (as
//! QEMU and Cloud Hypervisor do): guest memory then stays the VMM's own, so a sandbox with
//! shares is restored from its template copy-on-write like any other, and the server sees
//! nothing of the guest but its requests.
//!
//! The protocol (vhost-user, as Cloud Hypervisor's `vu_common_ctrl`): at creation
//! SET_OWNER, GET_FEATURES and the protocol features; after DRIVER_OK (on the device thread:
//! the vCPU threads that see the Status write never talk to the server) SET_FEATURES, SET_MEM_TABLE
//! (the bounce memory) and, per queue, SET_VRING_{NUM,ADDR,BASE,CALL,KICK,ENABLE} for its
//! bounce ring. The guest's notifications and the server's come to the event thread, which
//! moves requests one way and replies the other ([`Relay::post`], [`Relay::complete`]).
//!
//! Config space (§5.11.4): `tag[36]` (the name the guest mounts) and `num_request_queues`.
//!
//! A template's device ([`Fs::placeholder`]) has no server: its guest probes it (the driver
//! sets it up and registers the tag) but mounts nothing, so no FUSE request is ever posted.
//! Both offer the same features ([`OFFERED`]), so that a restored VM finds the same device
//! wired to the sandbox's own server; the guest's queues go on from their saved positions,
//! the bounce rings start empty.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::common::{DeviceCommon, Dispatch, DEVICE_DATA_BASE};
use super::fs_relay::{Relay, RING};
use super::{
    device_type, read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// The largest tag the config space holds (§5.11.4), without a terminating NUL.
pub const MAX_TAG_LEN: usize = 36;
/// Request queues offered to the guest (besides the high-priority queue).
const REQUEST_QUEUES: u32 = 1;
/// All its queues: the high-priority queue, then the request queues.
const QUEUES: usize = 1 + REQUEST_QUEUES as usize;
/// Size of each queue (virtiofsd's and libvhost-user's maximum).
const QUEUE_SIZE: u16 = 1024;
/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30): a vhost-user bit, never offered to the guest.
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
/// `VIRTIO_RING_F_INDIRECT_DESC`: `virtio-queue` walks indirect tables.
const INDIRECT_DESC: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// What the guest is offered (brig serves its queues, whatever the server's rings do).
const OFFERED: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | INDIRECT_DESC;
/// Event data of the server connection (hang-up: the server died).
const SOCKET_DATA: u32 = DEVICE_DATA_BASE;
/// Event data of the eventfd that hands activations and resets to the event thread.
const CONTROL_DATA: u32 = DEVICE_DATA_BASE + 1;
/// Event data of queue `i`'s call eventfd (the server used requests) is `CALL_DATA + i`.
const CALL_DATA: u32 = DEVICE_DATA_BASE + 2;

/// What the driver asked for, done on the event thread: the vCPU threads that see the
/// Status writes are confined to KVM's calls and never talk to the server themselves.
enum Pending {
    /// Hand the bounce rings to the server.
    Start,
    Stop,
}

/// Creating or activating the device failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag does not fit the config space, or is empty.
    #[error("virtio-fs tag {0:?} must be 1 to {MAX_TAG_LEN} bytes")]
    Tag(String),
    /// The vhost-user handshake with the file server failed.
    #[error("file server at {path}: {what}: {source}")]
    Backend {
        path: String,
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    /// The server lacks something brig needs.
    #[error("file server at {path}: {what}")]
    Unsupported { path: String, what: &'static str },
    /// The control eventfd or the bounce memory could not be created.
    #[error("cannot create the virtio-fs eventfd or bounce memory: {0}")]
    EventFd(#[source] std::io::Error),
}

/// A virtio-fs device relaying to a vhost-user file server.
pub struct Fs {
    common: DeviceCommon,
    /// The server and the bounce queues to it; `None` for a template's placeholder.
    frontend: Option<(Frontend, Relay)>,
    /// The vhost-user protocol bit when the server offers it (then its rings are enabled
    /// and disabled explicitly), else 0.
    vhost_features: u64,
    config: [u8; MAX_TAG_LEN + 4],
    queue_sizes: [u16; QUEUES],
    /// Queues handed to the server (for GET_VRING_BASE at reset).
    pub(super) running: usize,
    pending: Vec<Pending>,
    pub(super) control: EventFd,
    socket: String,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("socket", &self.socket)
            .field(
                "vhost_features",
                &format_args!("{:#x}", self.vhost_features),
            )
            .field("running", &self.running)
            .finish()
    }
}

impl Fs {
    /// Connects to the server listening at `socket` and names the share `tag` for the guest.
    pub fn new(socket: &Path, tag: &str) -> Result<Self, FsError> {
        check_tag(tag)?;
        let path = socket.display().to_string();
        let err = |what: &'static str| {
            let path = path.clone();
            move |source| FsError::Backend { path, what, source }
        };
        let mut frontend = Frontend::connect(socket, QUEUES as u64).map_err(err("connect"))?;
        frontend.set_owner().map_err(err("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(err("GET_FEATURES"))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::Unsupported {
                path,
                what: "no VIRTIO_F_VERSION_1",
            });
        }
        if backend_features & PROTOCOL_FEATURES_BIT != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(err("GET_PROTOCOL_FEATURES"))?;
            let wanted = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
            frontend
                .set_protocol_features(offered & wanted)
                .map_err(err("SET_PROTOCOL_FEATURES"))?;
            if offered.contains(VhostUserProtocolFeatures::MQ) {
                let n = frontend.get_queue_num().map_err(err("GET_QUEUE_NUM"))?;
                if n < QUEUES as u64 {
                    return Err(FsError::Unsupported {
                        path,
                        what: "fewer queues than virtio-fs needs",
                    });
                }
            }
        }
        let relay = Relay::new(QUEUES).map_err(FsError::EventFd)?;
        let vhost_features = backend_features & PROTOCOL_FEATURES_BIT;
        Self::with(Some((frontend, relay)), vhost_features, tag, path)
    }

    /// A template's device named `tag`, with no server (see the module comment): it offers
    /// what a wired device offers, and its guest never posts a request to it.
    pub fn placeholder(tag: &str) -> Result<Self, FsError> {
        check_tag(tag)?;
        Self::with(None, 0, tag, "(no file server)".into())
    }

    fn with(
        frontend: Option<(Frontend, Relay)>,
        vhost_features: u64,
        tag: &str,
        socket: String,
    ) -> Result<Self, FsError> {
        let mut config = [0u8; MAX_TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[MAX_TAG_LEN..].copy_from_slice(&REQUEST_QUEUES.to_le_bytes());
        Ok(Self {
            common: DeviceCommon::new(QUEUES).map_err(FsError::EventFd)?,
            frontend,
            vhost_features,
            config,
            queue_sizes: [QUEUE_SIZE; QUEUES],
            running: 0,
            pending: Vec::new(),
            control: EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)?,
            socket,
        })
    }

    /// Hands the bounce rings to the server. A placeholder has no server to hand them to,
    /// and a device reset since its activation has none to hand.
    fn start(&mut self) -> Result<(), vhost::Error> {
        let (Some((frontend, relay)), Some(_)) =
            (self.frontend.as_mut(), self.common.active.as_ref())
        else {
            return Ok(());
        };
        let vhost_features = self.vhost_features;
        frontend.set_features(VIRTIO_F_VERSION_1 | vhost_features)?;
        let regions = relay
            .memory()
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()?;
        frontend.set_mem_table(&regions)?;
        let host = |addr: u64| {
            relay
                .memory()
                .get_host_address(GuestAddress(addr))
                .map(|p| p as u64)
                .map_err(|_| vhost::Error::InvalidGuestMemory)
        };
        for i in 0..QUEUES {
            let (desc, avail, used) = relay.ring(i);
            frontend.set_vring_num(i, RING)?;
            let addrs = VringConfigData {
                queue_max_size: RING,
                queue_size: RING,
                flags: 0,
                desc_table_addr: host(desc)?,
                used_ring_addr: host(used)?,
                avail_ring_addr: host(avail)?,
                log_addr: None,
            };
            frontend.set_vring_addr(i, &addrs)?;
            frontend.set_vring_base(i, 0)?;
            let (kick, call) = relay.eventfds(i);
            frontend.set_vring_call(i, call)?;
            frontend.set_vring_kick(i, kick)?;
            self.running = i + 1;
            if vhost_features != 0 {
                frontend.set_vring_enable(i, true)?;
            }
        }
        Ok(())
    }

    /// Takes the queues back from the server (GET_VRING_BASE stops a ring).
    fn stop(&mut self) {
        let vhost_features = self.vhost_features;
        let running = std::mem::take(&mut self.running);
        let Some((frontend, relay)) = self.frontend.as_mut() else {
            return;
        };
        for i in 0..running {
            if vhost_features != 0 {
                let _ = frontend.set_vring_enable(i, false);
            }
            if let Err(err) = frontend.get_vring_base(i) {
                tracing::warn!("virtio-fs {}: stopping queue {i}: {err}", self.socket);
            }
        }
        relay.reset();
    }

    /// Moves requests of queue `q` to the server, and its replies back (on the event thread).
    pub(super) fn relay(&mut self, q: usize, replies: bool) {
        let Some((_, relay)) = self.frontend.as_mut() else {
            return;
        };
        let Some(active) = self.common.active.as_mut() else {
            // Reset: nothing to take back, and the server's word must not stay pending.
            let _ = relay.eventfds(q).1.read();
            return;
        };
        let mut notify = false;
        if replies {
            notify |= relay.complete(q, active);
        }
        // Slots freed by replies take the requests that waited for one.
        notify |= relay.post(q, active);
        if notify {
            active.interrupt.signal_used_queue();
        }
    }
}

/// A tag fits the config space (§5.11.4).
fn check_tag(tag: &str) -> Result<(), FsError> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.contains('\0') {
        return Err(FsError::Tag(tag.into()));
    }
    Ok(())
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
    fn snapshot_blocker(&self) -> Option<String> {
        // The server's side of the FUSE session (open files, inode numbers) is not saved.
        self.frontend.as_ref().map(|_| {
            format!(
                "virtio-fs: the file server at {} cannot be saved",
                self.socket
            )
        })
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        // Requests the guest posts before the server has the rings wait in them: the server
        // looks at its kick eventfd, which keeps its count, once it has it. The server's
        // FUSE session is not saved, so a wired device is never saved (see
        // `snapshot_blocker`); a placeholder's queues never move.
        self.common.activate(mem, queues, queue_evts, interrupt)?;
        self.pending.push(Pending::Start);
        self.control.write(1).map_err(ActivateError::Signal)
    }
    fn reset(&mut self) {
        self.pending.push(Pending::Stop);
        if let Err(err) = self.control.write(1) {
            tracing::error!("virtio-fs {}: cannot signal a reset: {err}", self.socket);
        }
        self.common.reset();
    }
}

impl Fs {
    /// Does what the driver asked for, in order (on the event thread).
    pub(super) fn run_pending(&mut self) {
        for op in std::mem::take(&mut self.pending) {
            match op {
                Pending::Start => {
                    if let Err(err) = self.start() {
                        tracing::error!(
                            "virtio-fs: handing the queues to the file server at {}: {err}",
                            self.socket
                        );
                        self.stop();
                    }
                }
                Pending::Stop => self.stop(),
            }
        }
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
        DeviceCommon::add_device_fd(ops, &self.control, CONTROL_DATA, EventSet::IN);
        // The server closing its end means every later FUSE request would hang the guest.
        if let Some((frontend, relay)) = &self.frontend {
            DeviceCommon::add_device_fd(
                ops,
                &frontend.as_raw_fd(),
                SOCKET_DATA,
                EventSet::HANG_UP | EventSet::ERROR,
            );
            for (i, data) in (0..QUEUES).zip(CALL_DATA..) {
                DeviceCommon::add_device_fd(ops, relay.eventfds(i).1, data, EventSet::IN);
            }
        }
    }
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.common.dispatch(&events, ops) {
            Dispatch::Device(CONTROL_DATA) => {
                let _ = self.control.read();
                self.run_pending();
            }
            Dispatch::Queue(q) => self.relay(q, false),
            Dispatch::Device(d) if d >= CALL_DATA && ((d - CALL_DATA) as usize) < QUEUES => {
                self.relay((d - CALL_DATA) as usize, true);
            }
            Dispatch::Device(SOCKET_DATA) => {
                tracing::error!(
                    "virtio-fs: the file server at {} went away; the share no longer answers",
                    self.socket
                );
                let _ = ops.remove(events);
            }
            _ => {}
        }
    }
}
