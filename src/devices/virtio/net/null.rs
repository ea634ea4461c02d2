//! A [`Backend`] with no wire: nothing ever arrives (its fd, an eventfd, is never written)
//! and what the guest sends is dropped. A template's VM has it in place of the network it
//! does not have yet: the guest's driver probes the same device, and a restore attaches the
//! sandbox's own TAP or passt socket.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::Backend;

/// See the module's comment.
#[derive(Debug)]
pub struct NullBackend {
    never: EventFd,
}

impl NullBackend {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            never: EventFd::new(EFD_NONBLOCK)?,
        })
    }
}

impl AsRawFd for NullBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.never.as_raw_fd()
    }
}

impl Backend for NullBackend {
    fn read_frame(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn write_frame(&mut self, _frame: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn set_offload(&mut self, _tun_flags: u32) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_arrives_and_everything_is_taken() {
        let mut b = NullBackend::new().unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            b.read_frame(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        b.write_frame(&[0u8; 60]).unwrap();
        b.set_offload(0).unwrap();
    }
}
