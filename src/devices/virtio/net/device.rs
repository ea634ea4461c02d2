//! The virtio-net device model (virtio 1.2 §5.1): queue 0 receives (host → guest), queue 1
//! transmits, the config space holds the MAC address and MTU, and a [`Backend`] is the wire.
//!
//! Both directions run on the event-manager thread. TX: on a TX kick, each chain is checked,
//! copied into a buffer, checked against the egress policy if there is one
//! ([`Net::set_egress`]: a frame it drops is returned as if sent, a firewall's drop) and
//! written to the backend, then returned with length 0; a write that would block puts the
//! chain back and waits for the backend's fd to become writable, and so does a backend that
//! still holds part of a frame it took ([`Backend::flush`]). RX: while the backend may hold
//! a frame ([`Net::rx_ready`]) and the guest has posted a chain, one frame is read into a
//! buffer and copied into the chain. A read error other than would-block ends reading for
//! good ([`Net::rx_failed`]): the backend's fd is no longer watched for input, so a broken
//! stream costs no more wakeups.

use std::io;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::filter::{EgressPolicy, Verdict};
use super::frame::{read_tx, rx_writer, tx_iovecs, write_rx};
use super::{Backend, MAX_BUFFER_LEN, VNET_HDR_LEN};
use crate::devices::virtio::common::{DeviceCommon, Dispatch, DEVICE_DATA_BASE};
use crate::devices::virtio::{
    device_type, read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Size of each queue.
pub(super) const QUEUE_SIZE: u16 = 256;
pub(super) const RXQ: usize = 0;
pub(super) const TXQ: usize = 1;
/// Event data of the backend's fd.
pub(super) const BACKEND_DATA: u32 = DEVICE_DATA_BASE;
/// The smallest MTU the spec allows a device to report (§5.1.4.1: 68, IPv4's minimum).
const MIN_MTU: u16 = 68;
/// `struct virtio_net_config` up to `mtu`: `u8 mac[6]`, le16 status, le16 max_virtqueue_pairs,
/// le16 mtu (§5.1.4).
pub(super) const CONFIG_LEN: usize = 12;

/// The offloads offered, both directions, always (the TAP and the guest kernel do the work).
const OFFLOAD_FEATURES: u64 = 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_UFO
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_HOST_UFO;

/// The guest-visible settings of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// The MAC address; without one the guest makes up a random one.
    pub mac: Option<[u8; 6]>,
    /// The MTU the guest should use; without one it uses 1500.
    pub mtu: Option<u16>,
}

/// Creating the net device failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A multicast or all-zero MAC address cannot be a NIC's own.
    #[error("invalid MAC address {0:02x?}: multicast or all zeroes")]
    InvalidMac([u8; 6]),
    /// The MTU is below IPv4's minimum.
    #[error("invalid MTU {0}: it must be at least {MIN_MTU}")]
    InvalidMtu(u16),
    /// The device's eventfd could not be created.
    #[error("cannot create the virtio-net eventfd: {0}")]
    EventFd(#[source] io::Error),
}

/// What happened to frames so far (for tests now, metrics later).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to the backend.
    pub tx_frames: u64,
    /// Bytes of the frames handed to the backend, vnet headers excluded.
    pub tx_bytes: u64,
    /// TX chains dropped: malformed, or refused by the backend.
    pub tx_dropped: u64,
    /// TX frames the egress policy dropped.
    pub tx_filtered: u64,
    /// Frames put into RX chains.
    pub rx_frames: u64,
    /// Bytes of the frames put into RX chains, vnet headers excluded.
    pub rx_bytes: u64,
    /// Backend frames dropped: longer than the chain or shorter than the header.
    pub rx_dropped: u64,
    /// RX chains returned unused because they were malformed.
    pub rx_bad_chains: u64,
}

/// A virtio-net device over a host [`Backend`].
#[derive(Debug)]
pub struct Net {
    common: DeviceCommon,
    backend: Box<dyn Backend>,
    features: u64,
    config: [u8; CONFIG_LEN],
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// Whether the backend may hold a frame. Its fd is edge-triggered, so a readiness event
    /// comes once per arrival: this is set by the event (and at activation) and cleared only
    /// when a read would block. Stopping early for want of RX chains leaves it set, and the
    /// guest's next RX kick reads on.
    rx_ready: bool,
    /// Whether the device waits for the backend to become writable: a TX chain it would
    /// not take, or the rest of a frame it took.
    tx_blocked: bool,
    /// Whether reading the backend failed for good (see [`Backend::read_frame`]).
    rx_failed: bool,
    /// What the guest may send; `None`: everything.
    egress: Option<EgressPolicy>,
    /// The events the backend's fd is registered for now.
    interest: EventSet,
    stats: NetStats,
}

impl Net {
    /// A device with `config` in front of `backend`.
    pub fn new(config: NetConfig, backend: Box<dyn Backend>) -> Result<Self, NetError> {
        let (features, space) = config_space(config)?;
        Ok(Self {
            common: DeviceCommon::new(2).map_err(NetError::EventFd)?,
            backend,
            features,
            config: space,
            rx_buf: vec![0; MAX_BUFFER_LEN],
            tx_buf: vec![0; MAX_BUFFER_LEN],
            rx_ready: true,
            tx_blocked: false,
            rx_failed: false,
            egress: None,
            interest: backend_interest(false, false),
            stats: NetStats::default(),
        })
    }

    /// Counters of what happened to frames so far.
    #[cfg(test)]
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Whether the device will read the backend when it next can.
    #[cfg(test)]
    pub fn rx_ready(&self) -> bool {
        self.rx_ready && !self.rx_failed
    }

    /// Whether reading the backend failed for good: nothing more reaches the guest (passt
    /// out of step, or a TAP gone). Logged once when it happens; the VMM may poll this to
    /// report a dead link.
    #[cfg(test)]
    pub fn rx_failed(&self) -> bool {
        self.rx_failed
    }

    /// Checks every TX frame from now on against `policy` (`None`: none).
    pub fn set_egress(&mut self, policy: Option<EgressPolicy>) {
        self.egress = policy;
    }

    /// Sends every frame the guest has posted on the TX queue, until the backend would block.
    pub fn process_tx(&mut self) {
        let Self {
            common,
            backend,
            tx_buf,
            tx_blocked,
            egress,
            stats,
            ..
        } = self;
        let Some(active) = common.active.as_mut() else {
            return;
        };
        *tx_blocked = false;
        let mut notify = false;
        // Without a policy to check, a backend that can takes each frame straight from
        // guest memory: one copy less per frame.
        let gather = egress.is_none() && backend.takes_iovecs();
        let mut iov = Vec::new();
        'ring: loop {
            active.disable_notification(TXQ);
            let mut popped = false;
            while let Some(chain) = active.queues[TXQ].pop_descriptor_chain(&active.mem) {
                popped = true;
                let head = chain.head_index();
                let sent = if gather {
                    tx_iovecs(chain, &active.mem, &mut iov)
                        .map(|len| (len, Some(backend.write_frame_iov(&iov))))
                } else {
                    read_tx(chain, &active.mem, tx_buf).map(|len| {
                        let pass = !filtered(egress.as_ref(), &tx_buf[VNET_HDR_LEN..len]);
                        (len, pass.then(|| backend.write_frame(&tx_buf[..len])))
                    })
                };
                // The iovecs point into guest memory: none outlives its frame.
                iov.clear();
                match sent {
                    Ok((_, None)) => stats.tx_filtered += 1,
                    Ok((len, Some(Ok(())))) => {
                        stats.tx_frames += 1;
                        stats.tx_bytes += (len - VNET_HDR_LEN) as u64;
                    }
                    Ok((_, Some(Err(err)))) if err.kind() == io::ErrorKind::WouldBlock => {
                        // Back on the ring; the backend's OUT event resumes the queue, so
                        // the guest's notifications stay off meanwhile.
                        active.queues[TXQ].go_to_previous_position();
                        *tx_blocked = true;
                        break 'ring;
                    }
                    Ok((_, Some(Err(err)))) => {
                        tracing::debug!("virtio-net: backend refused a frame: {err}");
                        stats.tx_dropped += 1;
                    }
                    Err(err) => {
                        tracing::debug!("virtio-net: dropping TX chain: {err}");
                        stats.tx_dropped += 1;
                    }
                }
                notify |= active.add_used(TXQ, head, 0);
            }
            // The ring is empty: the guest's next chain must notify, unless it posted one
            // since the last look. A ring that says it holds chains but yields none (an
            // avail index out of range) is not looked at again until the next notification.
            if !active.enable_notification(TXQ) || !popped {
                break;
            }
        }
        if !*tx_blocked {
            // The queue is empty: what is left of a frame the backend took goes now, or
            // once its fd is writable.
            match backend.flush() {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => *tx_blocked = true,
                Err(err) => tracing::debug!("virtio-net: backend cannot finish a frame: {err}"),
            }
        }
        if notify {
            active.interrupt.signal_used_queue();
        }
    }

    /// Moves frames from the backend into the guest's RX chains while both exist.
    pub fn process_rx(&mut self) {
        let Self {
            common,
            backend,
            rx_buf,
            rx_ready,
            rx_failed,
            stats,
            ..
        } = self;
        let Some(active) = common.active.as_mut() else {
            return;
        };
        let mut notify = false;
        let mut rechecked = false;
        while *rx_ready && !*rx_failed {
            // No chain: back-pressure. Frames stay in the backend until the guest posts a
            // chain and notifies, unless it posted one since the last look; once, so that a
            // ring that claims chains but yields none cannot keep the device spinning.
            let Some(chain) = active.queues[RXQ].pop_descriptor_chain(&active.mem) else {
                if !rechecked && active.enable_notification(RXQ) {
                    rechecked = true;
                    continue;
                }
                // The frames wait, but off the backend's fd when it keeps them itself.
                if let Err(err) = backend.prefetch() {
                    tracing::debug!("virtio-net: reading ahead: {err}");
                }
                break;
            };
            rechecked = false;
            let head = chain.head_index();
            let len = match rx_writer(chain, &active.mem) {
                Err(err) => {
                    tracing::debug!("virtio-net: returning bad RX chain: {err}");
                    stats.rx_bad_chains += 1;
                    0
                }
                Ok(mut writer) => {
                    let n = match backend.read_frame(rx_buf) {
                        Ok(0) => None,
                        Ok(n) => Some(n),
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => None,
                        Err(err) => {
                            tracing::error!(
                                "virtio-net: cannot read from the backend, \
                                 no more frames for the guest: {err}"
                            );
                            *rx_failed = true;
                            None
                        }
                    };
                    let Some(n) = n else {
                        // Nothing (more) to read until the next readiness event; the chain
                        // goes back for the next frame.
                        *rx_ready = false;
                        active.queues[RXQ].go_to_previous_position();
                        break;
                    };
                    match write_rx(&mut writer, &mut rx_buf[..n.min(MAX_BUFFER_LEN)]) {
                        Ok(len) => {
                            stats.rx_frames += 1;
                            stats.rx_bytes += u64::from(len).saturating_sub(VNET_HDR_LEN as u64);
                            len
                        }
                        Err(err) => {
                            tracing::debug!("virtio-net: dropping RX frame: {err}");
                            stats.rx_dropped += 1;
                            0
                        }
                    }
                }
            };
            notify |= active.add_used(RXQ, head, len);
        }
        if notify {
            active.interrupt.signal_used_queue();
        }
    }

    /// The backend's fd reported `events`.
    pub fn process_backend(&mut self, events: EventSet) {
        if events.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) && !self.rx_failed
        {
            self.rx_ready = true;
            self.process_rx();
        }
        if events.contains(EventSet::OUT) && self.tx_blocked {
            self.process_tx();
        }
    }

    /// Registers the backend's fd for what the device waits for now: IN unless reading
    /// failed for good, and OUT while a TX frame waits for room.
    fn update_interest(&mut self, ops: &mut EventOps) {
        let want = backend_interest(self.tx_blocked, self.rx_failed);
        if want == self.interest {
            return;
        }
        let fd = self.backend.as_raw_fd();
        match ops.modify(Events::with_data_raw(fd, BACKEND_DATA, want)) {
            Ok(()) => self.interest = want,
            Err(err) => tracing::error!("virtio-net: cannot update backend events: {err}"),
        }
    }
}

/// The features a net device with `config` offers, and its config space: the same for
/// [`Net`] and [`super::vhost::VhostNet`], so that a VM saved with one restores with the other.
pub(super) fn config_space(config: NetConfig) -> Result<(u64, [u8; CONFIG_LEN]), NetError> {
    let mut features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | OFFLOAD_FEATURES;
    let mut space = [0u8; CONFIG_LEN];
    if let Some(mac) = config.mac {
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(NetError::InvalidMac(mac));
        }
        space[..6].copy_from_slice(&mac);
        features |= 1 << VIRTIO_NET_F_MAC;
    }
    // STATUS is not offered (the link is always up), but the field is there either way.
    let link_up = u16::try_from(VIRTIO_NET_S_LINK_UP).unwrap_or(1);
    space[6..8].copy_from_slice(&link_up.to_le_bytes());
    space[8..10].copy_from_slice(&1u16.to_le_bytes());
    if let Some(mtu) = config.mtu {
        if mtu < MIN_MTU {
            return Err(NetError::InvalidMtu(mtu));
        }
        space[10..12].copy_from_slice(&mtu.to_le_bytes());
        features |= 1 << VIRTIO_NET_F_MTU;
    }
    Ok((features, space))
}

/// The event set of the backend's fd: IN unless `rx_failed`, OUT while `tx_blocked`.
fn backend_interest(tx_blocked: bool, rx_failed: bool) -> EventSet {
    let mut set = EventSet::EDGE_TRIGGERED;
    if !rx_failed {
        set |= EventSet::IN;
    }
    if tx_blocked {
        set |= EventSet::OUT;
    }
    set
}

/// Whether `policy` drops `frame` (an Ethernet frame, no vnet header).
fn filtered(policy: Option<&EgressPolicy>, frame: &[u8]) -> bool {
    match policy.map(|p| p.check(frame)) {
        None | Some(Verdict::Pass) => false,
        Some(Verdict::Drop(reason)) => {
            tracing::debug!("virtio-net: egress policy drops a frame: {reason:?}");
            true
        }
    }
}

/// The TAP offloads (`TUN_F_*`) that match the acked GUEST_ features: what the host may send.
pub(super) fn tun_offload(acked: u64) -> u32 {
    [
        (VIRTIO_NET_F_GUEST_CSUM, libc::TUN_F_CSUM),
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
    ]
    .iter()
    .filter(|&&(bit, _)| acked & (1 << bit) != 0)
    .fold(0, |flags, &(_, tun)| flags | tun)
}

impl VirtioDevice for Net {
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
        let offload = tun_offload(self.common.acked_features);
        self.backend
            .set_offload(offload)
            .map_err(ActivateError::Backend)?;
        self.common.activate(mem, queues, queue_evts, interrupt)?;
        // Frames may have arrived, and their events gone, while the device was inactive.
        self.rx_ready = true;
        self.tx_blocked = false;
        Ok(())
    }
    fn reset(&mut self) {
        self.common.reset();
        self.tx_blocked = false;
        self.rx_ready = true;
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
        let fd = self.backend.as_raw_fd();
        if let Err(err) = ops.add(Events::with_data_raw(fd, BACKEND_DATA, self.interest)) {
            tracing::error!("virtio-net: cannot register the backend's fd: {err}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.common.dispatch(&events, ops) {
            Dispatch::Queue(RXQ) => self.process_rx(),
            Dispatch::Queue(TXQ) => self.process_tx(),
            Dispatch::Device(BACKEND_DATA) => self.process_backend(events.event_set()),
            Dispatch::Queue(_) | Dispatch::Device(_) | Dispatch::Handled => {}
        }
        self.update_interest(ops);
    }
}
