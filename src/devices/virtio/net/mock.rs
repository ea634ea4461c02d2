//! An in-memory [`Backend`] for tests: frames queued for the guest, frames the guest sent,
//! and switches for would-block and failures. Its fd is an eventfd written once per queued
//! frame, so that an event manager sees an edge for each, as with a TAP.
// Also built for the fuzzing harnesses (feature `fuzzing`), which use only part of it.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::Backend;

/// What the test sees of a [`MockBackend`] after the device took it.
#[derive(Debug, Default)]
pub struct MockState {
    /// Frames (header included) the device will read, in order.
    pub rx: VecDeque<Vec<u8>>,
    /// Frames (header included) the device wrote.
    pub tx: Vec<Vec<u8>>,
    /// How many times the device called `read_frame`.
    pub reads: usize,
    /// While set, writes fail with WouldBlock.
    pub tx_would_block: bool,
    /// While set, writes fail with EINVAL (as a TAP does for a bad vnet header).
    pub tx_fails: bool,
    /// While set, reads fail with EIO.
    pub rx_fails: bool,
    /// The last offload flags set, if any.
    pub offload: Option<u32>,
    /// Whether the backend takes frames as iovecs over guest memory, as a TAP does.
    pub gather: bool,
}

#[derive(Debug)]
pub struct MockBackend {
    state: Arc<Mutex<MockState>>,
    evt: Arc<EventFd>,
}

/// The test's handle on a [`MockBackend`].
#[derive(Clone, Debug)]
pub struct MockHandle {
    pub state: Arc<Mutex<MockState>>,
    evt: Arc<EventFd>,
}

impl MockHandle {
    /// Queues a frame for the device to read and signals the fd.
    pub fn push_rx(&self, frame: Vec<u8>) {
        self.state.lock().unwrap().rx.push_back(frame);
        self.evt.write(1).unwrap();
    }

    /// Signals the fd without a frame, as a socket does when it becomes writable.
    pub fn poke(&self) {
        self.evt.write(1).unwrap();
    }

    /// The frames the device has written, taken.
    pub fn take_tx(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.state.lock().unwrap().tx)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut MockState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}

pub fn mock_backend() -> (MockBackend, MockHandle) {
    let state = Arc::new(Mutex::new(MockState::default()));
    let evt = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    (
        MockBackend {
            state: state.clone(),
            evt: evt.clone(),
        },
        MockHandle { state, evt },
    )
}

impl AsRawFd for MockBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl Backend for MockBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.state.lock().unwrap();
        s.reads += 1;
        if s.rx_fails {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let frame = s.rx.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        // As a TAP does: a frame longer than the buffer is cut.
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    fn takes_iovecs(&self) -> bool {
        self.state.lock().unwrap().gather
    }

    fn write_frame_iov(&mut self, iov: &[libc::iovec]) -> io::Result<()> {
        let mut frame = Vec::new();
        for v in iov {
            // SAFETY: the device passes iovecs over guest memory that stays mapped for the
            // call, each `iov_len` bytes long.
            let part = unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) };
            frame.extend_from_slice(part);
        }
        self.write_frame(&frame)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        if s.tx_would_block {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if s.tx_fails {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        s.tx.push(frame.to_vec());
        Ok(())
    }

    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()> {
        self.state.lock().unwrap().offload = Some(tun_flags);
        Ok(())
    }
}
