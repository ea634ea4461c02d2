//! The TCP side of the proxy: one thread accepts on every TCP listener; each connection is
//! two copy threads, one per direction, with half-close passed on.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};

use super::{poll, Limits, COPY_THREAD_STACK};
use crate::vmm::seccomp;

/// A copy thread's buffer: Go's io.Copy size, as docker-proxy copies. At the connection cap,
/// 64 MiB per published port.
const COPY_BUFFER: usize = 32 << 10;
/// The pause after an accept error that is no client's doing (out of file descriptors), so
/// that a listener that stays readable does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The connections being copied, so that stopping can shut them down.
#[derive(Debug, Default)]
pub(super) struct Connections {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    stopped: bool,
    next: u64,
    /// Clones of each connection's client and guest streams.
    open: HashMap<u64, [TcpStream; 2]>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a connection; `None` (and both shut down) once the proxy is stopping.
    fn register(&self, client: &TcpStream, guest: &TcpStream) -> Option<u64> {
        let streams = [client.try_clone().ok()?, guest.try_clone().ok()?];
        let mut registry = self.lock();
        if registry.stopped {
            abort(client, guest);
            return None;
        }
        let id = registry.next;
        registry.next += 1;
        registry.open.insert(id, streams);
        Some(id)
    }

    fn remove(&self, id: u64) {
        self.lock().open.remove(&id);
    }

    /// Shuts down every open connection, and any that registers later.
    pub(super) fn stop(&self) {
        let mut registry = self.lock();
        registry.stopped = true;
        for [client, guest] in std::mem::take(&mut registry.open).values() {
            abort(client, guest);
        }
    }
}

/// The accepting thread's state.
pub(super) struct Acceptor {
    /// Each listener with the guest address it forwards to.
    pub listeners: Vec<(TcpListener, SocketAddr)>,
    /// The stop pipe's read end: readable or hung up means stop.
    pub stop: Arc<OwnedFd>,
    pub connections: Arc<Connections>,
    pub limits: Limits,
}

impl Acceptor {
    /// Accepts on every listener until stopped; the listeners are closed on return.
    pub fn run(self) {
        if let Err(e) = seccomp::confine(seccomp::Thread::Proxy) {
            tracing::error!("port proxy: {e}; not forwarding");
            return;
        }
        let counts: Vec<Arc<AtomicUsize>> = self.listeners.iter().map(|_| Arc::default()).collect();
        loop {
            let mut fds: Vec<PollFd<'_>> = self
                .listeners
                .iter()
                .map(|(l, _)| PollFd::new(l, PollFlags::IN))
                .collect();
            fds.push(PollFd::new(&*self.stop, PollFlags::IN));
            if let Err(e) = poll(&mut fds, None) {
                tracing::warn!("port proxy: polling the TCP listeners: {e}");
                return;
            }
            let (stop, listeners) = fds.split_last().expect("the stop pipe is polled");
            if !stop.revents().is_empty() {
                return;
            }
            let ready: Vec<usize> = (0..listeners.len())
                .filter(|&i| !listeners[i].revents().is_empty())
                .collect();
            drop(fds);
            for i in ready {
                self.accept_all(i, &counts[i]);
            }
        }
    }

    /// Accepts what listener `i` has pending.
    fn accept_all(&self, i: usize, count: &Arc<AtomicUsize>) {
        let (listener, guest) = &self.listeners[i];
        loop {
            let client = match listener.accept() {
                Ok((client, _)) => client,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    tracing::warn!("port proxy: accepting on {:?}: {e}", listener.local_addr());
                    std::thread::sleep(ACCEPT_BACKOFF);
                    return;
                }
            };
            if count.load(Ordering::Acquire) >= self.limits.max_tcp {
                tracing::debug!(
                    "port proxy: {} connections to {guest}, refusing",
                    self.limits.max_tcp
                );
                continue;
            }
            count.fetch_add(1, Ordering::AcqRel);
            let slot = Slot(Arc::clone(count));
            let connections = Arc::clone(&self.connections);
            let (guest, timeout) = (*guest, self.limits.connect_timeout);
            let spawned = std::thread::Builder::new()
                .name("proxy-tcp".into())
                .stack_size(COPY_THREAD_STACK)
                .spawn(move || serve(client, guest, timeout, &connections, slot));
            if let Err(e) = spawned {
                // The closure, with the client and the slot, is dropped: the client is closed.
                tracing::warn!("port proxy: no thread for a connection to {guest}: {e}");
            }
        }
    }
}

/// A connection's place under its listener's cap, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection: connects to the guest, then copies both ways until both are done.
fn serve(
    client: TcpStream,
    guest: SocketAddr,
    timeout: Duration,
    connections: &Connections,
    _slot: Slot,
) {
    // Accepted from a nonblocking listener; the copies block.
    if client.set_nonblocking(false).is_err() {
        return;
    }
    let upstream = match TcpStream::connect_timeout(&guest, timeout) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("port proxy: connecting to {guest}: {e}");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let Some(id) = connections.register(&client, &upstream) else {
        return;
    };
    let back = match (client.try_clone(), upstream.try_clone()) {
        (Ok(c), Ok(u)) => std::thread::Builder::new()
            .name("proxy-tcp".into())
            .stack_size(COPY_THREAD_STACK)
            .spawn(move || copy(&u, &c))
            .ok(),
        _ => None,
    };
    if back.is_some() {
        copy(&client, &upstream);
    } else {
        abort(&client, &upstream);
    }
    if let Some(back) = back {
        let _ = back.join();
    }
    connections.remove(id);
}

/// Copies `from` to `to` until EOF, then half-closes `to`; on an error either way, shuts
/// down both (which also ends the other direction's copy).
fn copy(mut from: &TcpStream, mut to: &TcpStream) {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    abort(from, to);
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                abort(from, to);
                return;
            }
        }
    }
}

/// Ends a connection both ways on both sides.
fn abort(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}
