//! The virtio-vsock device model (virtio 1.2 §5.10): three queues (RX, TX, event), a config
//! space holding the guest's CID, and the glue between the queues and the [`Muxer`].
//!
//! TX: every chain the guest posts is parsed and validated ([`super::packet`]) and handed to
//! the muxer, then returned with length 0. RX: while the muxer has packets for the guest and
//! the guest has posted buffers, one packet goes into each buffer. The event queue's buffers
//! are left for a future TRANSPORT_RESET (snapshot restore).

use std::path::Path;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{QueueOwnedT, QueueT};

use super::muxer::{Muxer, MuxerError};
use super::packet::{read_tx_packet, rx_payload_room, write_rx_packet, MAX_PAYLOAD};
use crate::devices::virtio::common::{DeviceCommon, Dispatch, DEVICE_DATA_BASE};
use crate::devices::virtio::{device_type, read_config_bytes, VirtioDevice, VIRTIO_F_VERSION_1};

/// The guest CID of every brig VM (each VM has its own vsock device and Unix socket).
pub const DEFAULT_GUEST_CID: u64 = 3;
/// Size of each of the three queues.
const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
/// Event data of the muxer's epoll fd.
const MUXER_DATA: u32 = DEVICE_DATA_BASE;

/// Creating the vsock device failed.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0-2 are reserved (hypervisor, local, host) and u32::MAX means "any".
    #[error("invalid guest CID {0}: it must be at least 3 and below 2^32 - 1")]
    InvalidCid(u64),
    /// The host-side backend could not be set up.
    #[error(transparent)]
    Backend(#[from] MuxerError),
    /// The device's eventfd could not be created.
    #[error("cannot create the virtio-vsock eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// The virtio-vsock device of one VM.
#[derive(Debug)]
pub struct Vsock {
    common: DeviceCommon,
    guest_cid: u64,
    muxer: Muxer,
    tx_payload: Vec<u8>,
    rx_payload: Vec<u8>,
}

impl Vsock {
    /// A vsock device for a guest with CID `guest_cid`, listening for host-initiated
    /// connections on the Unix socket `uds_path` (which must not exist yet; it is removed when
    /// the device is dropped).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if guest_cid < 3 || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        Ok(Self {
            common: DeviceCommon::new(3).map_err(VsockError::EventFd)?,
            guest_cid,
            muxer: Muxer::new(uds_path, guest_cid)?,
            tx_payload: Vec::with_capacity(MAX_PAYLOAD),
            rx_payload: vec![0; MAX_PAYLOAD],
        })
    }

    /// The host-side backend.
    #[cfg(test)]
    pub(super) fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    /// Handles every packet the guest has posted on the TX queue.
    pub fn process_tx(&mut self) {
        let Self {
            common,
            muxer,
            tx_payload,
            guest_cid,
            ..
        } = self;
        let Some(active) = common.active.as_mut() else {
            return;
        };
        let mut notify = false;
        while let Some(chain) = active.queues[TXQ].pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let parsed = chain
                .reader(&active.mem)
                .map_err(|_| super::packet::PacketError::BadChain)
                .and_then(|mut reader| read_tx_packet(&mut reader, *guest_cid, tx_payload));
            match parsed.map(|hdr| (hdr, hdr.check_type_op())) {
                Ok((hdr, Ok(()))) => muxer.send_pkt(&hdr, tx_payload),
                Ok((hdr, Err(err))) => {
                    tracing::debug!("vsock: rejecting guest packet: {err}");
                    muxer.reject(&hdr);
                }
                Err(err) => tracing::debug!("vsock: dropping guest packet: {err}"),
            }
            notify |= active.add_used(TXQ, head, 0);
        }
        if notify {
            active.interrupt.signal_used_queue();
        }
    }

    /// Moves packets from the muxer into the guest's RX buffers while both exist.
    pub fn process_rx(&mut self) {
        let Self {
            common,
            muxer,
            rx_payload,
            ..
        } = self;
        let Some(active) = common.active.as_mut() else {
            return;
        };
        let mut notify = false;
        while muxer.has_pending_rx() {
            let Some(chain) = active.queues[RXQ].pop_descriptor_chain(&active.mem) else {
                break;
            };
            let head = chain.head_index();
            let mut writer = match chain.writer(&active.mem) {
                Ok(w) => w,
                Err(err) => {
                    tracing::debug!("vsock: bad RX chain: {err}");
                    notify |= active.add_used(RXQ, head, 0);
                    continue;
                }
            };
            let Some(room) = rx_payload_room(&writer) else {
                tracing::debug!("vsock: RX buffer smaller than a header");
                notify |= active.add_used(RXQ, head, 0);
                continue;
            };
            match muxer.recv_pkt(&mut rx_payload[..room]) {
                Some((hdr, n)) => {
                    let len = write_rx_packet(&mut writer, &hdr, &rx_payload[..n]).unwrap_or(0);
                    notify |= active.add_used(RXQ, head, len);
                }
                None if room == 0 => {
                    // Only data waits and the buffer has no room for any: it is useless (Linux
                    // posts 4 KiB buffers), so return it empty rather than block the queue.
                    tracing::debug!("vsock: RX buffer with no room for data");
                    notify |= active.add_used(RXQ, head, 0);
                }
                None => {
                    // Nothing to send after all: give the buffer back for later.
                    active.queues[RXQ].go_to_previous_position();
                    break;
                }
            }
        }
        if notify {
            active.interrupt.signal_used_queue();
        }
    }

    /// Handles the backend's events, then delivers what they produced.
    pub fn process_backend(&mut self) {
        self.muxer.process_events();
        self.process_rx();
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }
    /// Connections live in the host's muxer and its sockets: a snapshot would restore a
    /// guest whose sockets are connected to nothing (Firecracker resets them with a
    /// TRANSPORT_RESET event instead; brig saves only guests with none).
    fn snapshot_blocker(&self) -> Option<String> {
        let n = self.muxer.connection_count();
        if n > 0 {
            Some(format!("the guest has {n} open vsock connection(s)"))
        } else if self.muxer.has_pending_rx() {
            Some("vsock packets wait to be delivered to the guest".to_string())
        } else {
            None
        }
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; } (§5.10.4)
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
    fn reset(&mut self) {
        self.common.reset();
        self.muxer.reset();
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
        DeviceCommon::add_device_fd(ops, &self.muxer, MUXER_DATA, EventSet::IN);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.common.dispatch(&events, ops) {
            Dispatch::Queue(RXQ) => self.process_rx(),
            Dispatch::Queue(TXQ) => {
                self.process_tx();
                self.process_rx();
            }
            Dispatch::Queue(EVQ) | Dispatch::Queue(_) | Dispatch::Handled => {}
            Dispatch::Device(MUXER_DATA) => self.process_backend(),
            Dispatch::Device(_) => {}
        }
    }
}
