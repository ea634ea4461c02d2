//! virtio-vsock under a hostile driver and hostile host peers: packets with any header
//! (wrong CIDs, unknown ops, lengths that lie), chains of any shape, and host sockets that
//! connect, write, read and vanish at random.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use vm_memory::{Bytes, GuestAddress};

use super::{Guest, HEADERS};
use crate::devices::virtio::test_utils::{activate, guest_memory};
use crate::devices::virtio::vsock::packet::{Header, HOST_CID, TYPE_STREAM};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;

const CID: u64 = 3;
/// The port of the one host listener (guest-initiated connections to it succeed).
const LISTEN_PORT: u32 = 52;
/// Host sockets the harness keeps open at most.
const MAX_PEERS: usize = 8;

/// Drives a virtio-vsock device with the guest and host peers `data` describes. Checks: no
/// panic, and that the device keeps serving its Unix socket.
pub fn virtio_vsock(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("v.sock");
    let listener = UnixListener::bind(format!("{}_{LISTEN_PORT}", path.display()))
        .expect("the port listener binds");
    listener
        .set_nonblocking(true)
        .expect("the listener is nonblocking");
    let mem = guest_memory();
    let mut g = Guest::new(data, &mem, 3);
    let mut dev = Vsock::new(CID, &path).expect("a vsock device");
    activate(&mut dev, &g.queues.iter().collect::<Vec<_>>());
    let mut peers: Vec<UnixStream> = Vec::new();
    g.drive(8, |g, action| match action {
        // A packet header (and payload) where the guest's buffers point.
        0 => {
            let hdr = header(g);
            let mut raw = hdr.to_bytes().to_vec();
            let n = usize::from(g.byte());
            raw.extend_from_slice(g.u.bytes(n).unwrap_or(&[]));
            let at = HEADERS + 16 * g.below(64);
            let _ = mem.write_slice(&raw, GuestAddress(at));
        }
        1 => dev.process_tx(),
        2 => dev.process_rx(),
        3 => dev.process_backend(),
        // A host peer: a connection to the device's socket with a CONNECT line (or
        // garbage), or one the device opened to the port listener.
        4 if peers.len() < MAX_PEERS => {
            if g.byte() & 1 == 0 {
                if let Ok(mut s) = UnixStream::connect(&path) {
                    let _ = s.set_nonblocking(true);
                    let line = match g.below(3) {
                        0 => {
                            let n = usize::from(g.byte() % 32);
                            g.u.bytes(n).unwrap_or(&[]).to_vec()
                        }
                        _ => format!("CONNECT {}\n", g.u16() % 64 + 1000).into_bytes(),
                    };
                    let _ = s.write_all(&line);
                    peers.push(s);
                }
            } else if let Ok((s, _)) = listener.accept() {
                let _ = s.set_nonblocking(true);
                peers.push(s);
            }
        }
        5 if !peers.is_empty() => {
            let i = g.index(peers.len());
            let n = usize::from(g.byte());
            let bytes = g.u.bytes(n).unwrap_or(&[]).to_vec();
            let _ = peers[i].write(&bytes);
        }
        6 if !peers.is_empty() => {
            let i = g.index(peers.len());
            if g.byte() & 1 == 0 {
                let mut buf = [0u8; 4096];
                let _ = peers[i].read(&mut buf);
            } else {
                peers.swap_remove(i);
            }
        }
        7 => {
            dev.reset();
            activate(&mut dev, &g.queues.iter().collect::<Vec<_>>());
        }
        _ => {}
    });
    dev.process_tx();
    dev.process_backend();
    // The device still accepts host connections.
    drop(peers);
    UnixStream::connect(&path).expect("the vsock socket still accepts connections");
}

/// A header as a hostile guest writes it: mostly plausible, every field sometimes garbage.
fn header(g: &mut Guest) -> Header {
    let pick = |g: &mut Guest, good: u64| if g.below(8) == 0 { g.u64() } else { good };
    let src_cid = pick(g, CID);
    let dst_cid = pick(g, HOST_CID);
    let type_ = if g.below(8) == 0 {
        g.u16()
    } else {
        TYPE_STREAM
    };
    let op = g.u16() % 9;
    let len = match g.below(4) {
        0 => g.u32(),
        _ => u32::from(g.byte()),
    };
    Header {
        src_cid,
        dst_cid,
        src_port: g.u32() % 4 + 1024,
        dst_port: if g.byte() & 1 == 0 {
            LISTEN_PORT
        } else {
            g.u32() % 4 + 1000
        },
        len,
        type_,
        op,
        flags: g.u32() % 4,
        buf_alloc: if g.byte() & 1 == 0 { 1 << 16 } else { g.u32() },
        fwd_cnt: g.u32(),
    }
}
