//! A TAP device as a [`Backend`]: `/dev/net/tun` opened nonblocking, attached with TUNSETIFF
//! to a TAP interface with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, and TUNSETVNETHDRSZ 12 so that
//! every read and write carries the `virtio_net_hdr_v1` the guest uses (the kernel's default
//! is the 10-byte legacy header). Offloads are switched on with TUNSETOFFLOAD when the guest
//! acks them. Creating a TAP needs CAP_NET_ADMIN (or a persistent TAP owned by the caller).

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Backend, VNET_HDR_LEN};

/// The TUN/TAP clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// Opening or configuring the TAP failed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name does not fit an interface name (1 to 15 bytes, no NUL or `/`).
    #[error("invalid TAP interface name {0:?}: 1 to 15 bytes without NUL or '/'")]
    InvalidName(String),
    /// The clone device could not be opened (missing, or no permission).
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// TUNSETIFF failed: not a TUN device, no CAP_NET_ADMIN, or the name is taken by
    /// another kind of interface.
    #[error("cannot create TAP interface {name}: {source}")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    /// TUNSETVNETHDRSZ failed.
    #[error("cannot set the TAP's vnet header size to {VNET_HDR_LEN}: {0}")]
    VnetHdrSize(#[source] io::Error),
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates (or attaches to) the TAP interface `name`; a `%d` in it lets the kernel pick
    /// a number, and [`Tap::name`] says which.
    pub fn open(name: &str) -> Result<Self, TapError> {
        Self::open_at(Path::new(TUN_PATH), name)
    }

    /// [`Tap::open`] with another clone device path (tests).
    pub fn open_at(tun_path: &Path, name: &str) -> Result<Self, TapError> {
        let invalid = || TapError::InvalidName(name.to_owned());
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || name.bytes().any(|b| b == 0 || b == b'/')
        {
            return Err(invalid());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(tun_path)
            .map_err(|source| TapError::Open {
                path: tun_path.to_owned(),
                source,
            })?;

        // SAFETY: ifreq is plain old data (arrays, integers, a union of them): all zeroes is
        // a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = libc::c_char::from_ne_bytes([src]);
        }
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        ifr.ifr_ifru.ifru_flags = libc::c_short::try_from(flags).map_err(|_| invalid())?;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `ifr` is, for the
        // duration of the call; the fd is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            return Err(TapError::SetIff {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        // The kernel wrote back the interface's real name, NUL-terminated (name < IFNAMSIZ).
        let raw: Vec<u8> = ifr.ifr_name.iter().map(|c| c.to_ne_bytes()[0]).collect();
        let name = CStr::from_bytes_until_nul(&raw)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|_| name.to_owned());

        let hdr_len = libc::c_int::try_from(VNET_HDR_LEN).map_err(|_| invalid())?;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, valid for the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if rc < 0 {
            return Err(TapError::VnetHdrSize(io::Error::last_os_error()));
        }
        Ok(Self { file, name })
    }

    /// The interface's name, as the kernel chose it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Backend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One read is one frame; the kernel truncates a frame longer than `buf`, which cannot
        // happen with MAX_BUFFER_LEN (the TAP's GSO frames stop at 64 KiB).
        loop {
            match self.file.read(buf) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        // One write is one frame, taken whole or refused.
        loop {
            match self.file.write(frame) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
                Ok(n) if n == frame.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "TAP took {n} of {} bytes",
                        frame.len()
                    )))
                }
            }
        }
    }

    fn takes_iovecs(&self) -> bool {
        true
    }

    fn try_clone(&self) -> io::Result<Box<dyn Backend>> {
        Ok(Box::new(Tap {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        }))
    }

    fn write_frame_iov(&mut self, iov: &[libc::iovec]) -> io::Result<()> {
        let len: usize = iov.iter().map(|v| v.iov_len).sum();
        let count = libc::c_int::try_from(iov.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        loop {
            // SAFETY: each iovec points at `iov_len` bytes of guest memory that the caller
            // keeps mapped for the call; writev only reads them.
            let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), count) };
            match usize::try_from(n) {
                Ok(n) if n == len => return Ok(()),
                Ok(n) => return Err(io::Error::other(format!("TAP took {n} of {len} bytes"))),
                Err(_) => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
    }

    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()> {
        let arg = libc::c_ulong::from(tun_flags);
        // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is passed.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD, arg) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_clone_device_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tap::open_at(&dir.path().join("tun"), "brig0").unwrap_err();
        assert!(
            matches!(&err, TapError::Open { source, .. }
            if source.kind() == io::ErrorKind::NotFound),
            "{err}"
        );
    }

    #[test]
    fn bad_names_are_refused_before_opening() {
        let long = "x".repeat(libc::IFNAMSIZ);
        for name in ["", "a/b", "a\0b", long.as_str()] {
            let err = Tap::open_at(Path::new("/nonexistent"), name).unwrap_err();
            assert!(matches!(err, TapError::InvalidName(_)), "{name:?}: {err}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_tun_device_fails_tunsetiff() {
        // /dev/null opens for anyone and answers every ioctl with ENOTTY: no TAP is created.
        let err = Tap::open_at(Path::new("/dev/null"), "brig0").unwrap_err();
        assert!(
            matches!(&err, TapError::SetIff { source, .. }
            if source.raw_os_error() == Some(libc::ENOTTY)),
            "{err}"
        );
    }
}
