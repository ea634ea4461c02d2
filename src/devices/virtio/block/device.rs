//! The virtio-blk device model (virtio 1.2 §5.2): one request queue, a config space with the
//! capacity and the maximum number of data segments, and a host file as the disk.
//!
//! Requests run synchronously on the event-manager thread, one chain at a time. A disk with
//! [`IoLimits`] has a [`RateLimiter`]: a request that does not fit its budget goes back on the
//! available ring, and the device takes nothing more from the queue until the limiter's
//! timer (one more event source of the device) fires.

use std::fs::OpenOptions;
use std::path::Path;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
};
use virtio_queue::{QueueOwnedT, QueueT};

use super::request::{execute, peek_io, Disk, BOUNCE_SIZE, SECTOR_SIZE};
use crate::devices::rate_limiter::{IoLimits, RateLimiter};
use crate::devices::virtio::common::{DeviceCommon, Dispatch, DEVICE_DATA_BASE};
use crate::devices::virtio::{device_type, read_config_bytes, VirtioDevice, VIRTIO_F_VERSION_1};

/// Size of the request queue.
const QUEUE_SIZE: u16 = 256;
/// Most data segments per request: the queue size less the header and status descriptors.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Event data of the rate limiter's timer.
const LIMITER_DATA: u32 = DEVICE_DATA_BASE;

/// Creating the block device failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file could not be opened or examined.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The device's eventfd could not be created.
    #[error("cannot create the virtio-blk eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The rate limiter's timerfd could not be created.
    #[error("cannot create the virtio-blk rate limiter: {0}")]
    RateLimiter(#[source] std::io::Error),
}

/// A virtio-blk device backed by a host file.
#[derive(Debug)]
pub struct Block {
    common: DeviceCommon,
    disk: Disk,
    config: [u8; 16],
    bounce: Vec<u8>,
    limiter: Option<RateLimiter>,
}

impl Block {
    /// A disk backed by the file at `path`: its capacity is the file's size in whole 512-byte
    /// sectors. `read_only` opens it O_RDONLY and offers VIRTIO_BLK_F_RO; `serial` (at most 20
    /// bytes are used) answers GET_ID, which Linux shows as /sys/block/vdX/serial. `limits`
    /// caps the guest's reads and writes (bytes and requests per second).
    pub fn new(
        path: &Path,
        read_only: bool,
        serial: &str,
        limits: IoLimits,
    ) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        let capacity = size / SECTOR_SIZE;
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        // struct virtio_blk_config: le64 capacity; le32 size_max; le32 seg_max; ... (§5.2.4)
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&capacity.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Self {
            common: DeviceCommon::new(1).map_err(BlockError::EventFd)?,
            disk: Disk {
                file,
                read_only,
                capacity,
                serial: id,
            },
            config,
            bounce: vec![0; BOUNCE_SIZE],
            limiter: if limits.is_unlimited() {
                None
            } else {
                Some(RateLimiter::new(limits).map_err(BlockError::RateLimiter)?)
            },
        })
    }

    /// Serves every available request, or as many as the rate limiter allows.
    pub fn process_queue(&mut self) {
        let Self {
            common,
            disk,
            bounce,
            limiter,
            ..
        } = self;
        let Some(active) = common.active.as_mut() else {
            return;
        };
        if limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
            return;
        }
        let mut notify = false;
        while let Some(chain) = active.queues[0].pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let io = chain
                .clone()
                .reader(&active.mem)
                .and_then(|r| chain.writer(&active.mem).map(|w| (r, w)));
            let len = match io {
                // Without a writable byte there is nowhere to put the status.
                Ok((mut reader, mut writer)) if writer.available_bytes() > 0 => {
                    let over_budget = match (limiter.as_mut(), peek_io(&reader, &writer)) {
                        (Some(l), Some((dir, bytes))) => !l.consume(dir, bytes),
                        _ => false,
                    };
                    if over_budget {
                        // Back on the ring; the limiter's timer resumes the queue.
                        active.queues[0].go_to_previous_position();
                        break;
                    }
                    execute(disk, &mut reader, &mut writer, bounce)
                }
                Ok(_) => {
                    tracing::debug!("virtio-blk: request without a status byte");
                    0
                }
                Err(err) => {
                    tracing::debug!("virtio-blk: bad descriptor chain: {err}");
                    0
                }
            };
            notify |= active.add_used(0, head, len);
        }
        if notify {
            active.interrupt.signal_used_queue();
        }
    }
}

impl Block {
    /// The rate limiter's timer fired: serve what waits on the queue.
    pub fn on_limiter_timer(&mut self) {
        if let Some(limiter) = self.limiter.as_mut() {
            limiter.on_timer();
        }
        self.process_queue();
    }

    /// Whether requests wait for the rate limiter's timer.
    #[cfg(test)]
    pub fn rate_limited(&self) -> bool {
        self.limiter.as_ref().is_some_and(RateLimiter::is_blocked)
    }

    /// Blocks until the rate limiter's timer fires (tests stand in for the event manager).
    #[cfg(test)]
    pub fn wait_for_limiter_timer(&self) {
        let limiter = self.limiter.as_ref().expect("a rate-limited disk");
        let fd = limiter.timer_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        assert_eq!(rustix::event::poll(&mut fds, Some(&timeout)).unwrap(), 1);
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX;
        if self.disk.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
        if let Some(limiter) = &self.limiter {
            DeviceCommon::add_device_fd(ops, &limiter.timer_fd(), LIMITER_DATA, EventSet::IN);
        }
    }
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.common.dispatch(&events, ops) {
            Dispatch::Queue(0) => self.process_queue(),
            Dispatch::Device(LIMITER_DATA) => self.on_limiter_timer(),
            _ => {}
        }
    }
}
