//! virtio-rng, the entropy device (virtio 1.2 §5.4): one request queue whose device-writable
//! buffers brig fills from the host kernel's `getrandom(2)`.
//!
//! Each request gets at most [`MAX_REQUEST_BYTES`], however large the guest's buffers are, so
//! a guest cannot make the event thread spend long on one request. A chain whose buffers are
//! not all inside guest memory is returned unused (length 0).

use std::io::Write;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::QueueT;

use super::common::{DeviceCommon, Dispatch};
use super::{device_type, VirtioDevice, VIRTIO_F_VERSION_1};

/// Largest number of random bytes one request gets.
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;
/// Size of the request queue.
const QUEUE_SIZE: u16 = 256;

/// Creating the device failed.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// Its control eventfd could not be created.
    #[error("cannot create the virtio-rng eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// The virtio-rng device.
#[derive(Debug)]
pub struct Rng {
    common: DeviceCommon,
    buf: Vec<u8>,
}

impl Rng {
    pub fn new() -> Result<Self, RngError> {
        Ok(Self {
            common: DeviceCommon::new(1).map_err(RngError::EventFd)?,
            buf: vec![0; MAX_REQUEST_BYTES as usize],
        })
    }

    /// Serves every available request; returns how many chains were used.
    pub fn process_queue(&mut self) -> usize {
        let Some(active) = self.common.active.as_mut() else {
            return 0;
        };
        let mut used = 0;
        let mut notify = false;
        while let Some(chain) = active.queues[0].pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let len = match chain.writer(&active.mem) {
                Ok(mut writer) => {
                    // A chain of 4 GiB or more saturates to u32::MAX, above the cap anyway.
                    let n = u32::try_from(writer.available_bytes())
                        .unwrap_or(u32::MAX)
                        .min(MAX_REQUEST_BYTES);
                    let buf = &mut self.buf[..n as usize];
                    match fill_random(buf) {
                        Ok(()) => writer.write_all(buf).map_or(0, |_| n),
                        Err(err) => {
                            tracing::error!("virtio-rng: getrandom failed: {err}");
                            0
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!("virtio-rng: bad descriptor chain: {err}");
                    0
                }
            };
            notify |= active.add_used(0, head, len);
            used += 1;
        }
        if notify {
            active.interrupt.signal_used_queue();
        }
        used
    }
}

/// Fills `buf` from getrandom(2), retrying on short reads and EINTR.
fn fill_random(mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match rustix::rand::getrandom(&mut *buf, rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => buf = &mut buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _: u64, data: &mut [u8]) {
        // No config space (§5.4.4).
        data.fill(0);
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
    }
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if let Dispatch::Queue(0) = self.common.dispatch(&events, ops) {
            self.process_queue();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{activate, guest_memory, GuestQueue};
    use std::sync::{Arc, Mutex};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn fills_writable_buffers() {
        let mem = guest_memory();
        let mut gq = GuestQueue::new(&mem, 0x1000, 16);
        let mut rng = Rng::new().unwrap();
        let irq = activate(&mut rng, &[&gq]);
        let h1 = gq.add_chain(&[(0x10_0000, 64, true), (0x10_1000, 64, true)]);
        let h2 = gq.add_chain(&[(0x20_0000, 4096, true)]);
        assert_eq!(rng.process_queue(), 2);
        assert_eq!(gq.take_used(), vec![(h1, 128), (h2, 4096)]);
        let mut a = [0u8; 64];
        mem.read_slice(&mut a, GuestAddress(0x10_1000)).unwrap();
        assert_ne!(a, [0u8; 64], "64 random bytes are not all zero");
        assert_eq!(irq.status(), 1);
    }

    #[test]
    fn requests_are_bounded_and_bad_chains_skipped() {
        let mem = guest_memory();
        let mut gq = GuestQueue::new(&mem, 0x1000, 16);
        let mut rng = Rng::new().unwrap();
        activate(&mut rng, &[&gq]);
        let big = gq.add_chain(&[(0x10_0000, 1 << 20, true)]);
        let ro = gq.add_chain(&[(0x10_0000, 64, false)]);
        let outside = gq.add_chain(&[(0xfff_f000, 0x2000, true)]);
        assert_eq!(rng.process_queue(), 3);
        assert_eq!(
            gq.take_used(),
            vec![(big, MAX_REQUEST_BYTES), (ro, 0), (outside, 0)]
        );
    }

    #[test]
    fn inactive_or_reset_device_does_nothing() {
        let mem = guest_memory();
        let mut gq = GuestQueue::new(&mem, 0x1000, 16);
        let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
        gq.add_chain(&[(0x10_0000, 64, true)]);
        assert_eq!(rng.lock().unwrap().process_queue(), 0);
        activate(&mut *rng.lock().unwrap(), &[&gq]);
        rng.lock().unwrap().reset();
        assert!(rng.lock().unwrap().common_mut().active.is_none());
        assert_eq!(rng.lock().unwrap().process_queue(), 0);
        assert!(gq.take_used().is_empty());
    }
}
