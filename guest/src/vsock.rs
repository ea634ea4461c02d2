//! AF_VSOCK streams as `File`s (read/write through std): a connection to the host, and a
//! listener for the host's connections.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

use crate::sys::check;

fn socket() -> io::Result<File> {
    // SAFETY: plain system call; the result is checked.
    let fd =
        check(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// Connects to `port` on `cid` (the host is CID 2).
pub fn connect(cid: u32, port: u32) -> io::Result<File> {
    let file = socket()?;
    let addr = address(cid, port);
    // SAFETY: addr is a valid sockaddr_vm and the length passed is its size.
    check(unsafe {
        libc::connect(
            file.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    })?;
    Ok(file)
}

/// A listening socket on `port` for connections from the host.
pub fn listen(port: u32) -> io::Result<File> {
    let file = socket()?;
    let addr = address(libc::VMADDR_CID_ANY, port);
    // SAFETY: addr is a valid sockaddr_vm and the length passed is its size.
    check(unsafe {
        libc::bind(
            file.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    })?;
    // SAFETY: listen on a bound socket.
    check(unsafe { libc::listen(file.as_raw_fd(), 16) })?;
    Ok(file)
}

/// Accepts one connection on a listening socket.
pub fn accept(listener: &File) -> io::Result<File> {
    loop {
        // SAFETY: null address pointers are allowed; the result is checked.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a fresh descriptor we now own.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
