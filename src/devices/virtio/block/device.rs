//! The virtio-blk device model (virtio 1.2 §5.2): one request queue, a config space with the
//! capacity and the maximum number of data segments, and a host file as the disk.
//!
//! Requests run synchronously on the event-manager thread, one chain at a time.

use std::fs::OpenOptions;
use std::path::Path;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
};
use virtio_queue::QueueT;

use super::request::{execute, Disk, BOUNCE_SIZE, SECTOR_SIZE};
use crate::devices::virtio::common::{DeviceCommon, Dispatch};
use crate::devices::virtio::{device_type, read_config_bytes, VirtioDevice, VIRTIO_F_VERSION_1};

/// Size of the request queue.
const QUEUE_SIZE: u16 = 256;
/// Most data segments per request: the queue size less the header and status descriptors.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

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
}

/// A virtio-blk device backed by a host file.
#[derive(Debug)]
pub struct Block {
    common: DeviceCommon,
    disk: Disk,
    config: [u8; 16],
    bounce: Vec<u8>,
}

impl Block {
    /// A disk backed by the file at `path`: its capacity is the file's size in whole 512-byte
    /// sectors. `read_only` opens it O_RDONLY and offers VIRTIO_BLK_F_RO; `serial` (at most 20
    /// bytes are used) answers GET_ID, which Linux shows as /sys/block/vdX/serial.
    pub fn new(path: &Path, read_only: bool, serial: &str) -> Result<Self, BlockError> {
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
        })
    }

    /// Serves every available request.
    pub fn process_queue(&mut self) {
        let Self {
            common,
            disk,
            bounce,
            ..
        } = self;
        let Some(active) = common.active.as_mut() else {
            return;
        };
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
    }
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if let Dispatch::Queue(0) = self.common.dispatch(&events, ops) {
            self.process_queue();
        }
    }
}
