//! An AF_VSOCK stream to the host, as a `File` (read/write through std).

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use crate::sys::check;

/// Connects to `port` on the host (CID 2).
pub fn connect(cid: u32, port: u32) -> io::Result<File> {
    // SAFETY: plain system call; the result is checked.
    let fd =
        check(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: addr is a valid sockaddr_vm and the length passed is its size.
    let ret = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    check(ret)?;
    Ok(file)
}
