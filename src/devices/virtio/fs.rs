//! virtio-fs (virtio 1.2 §5.11) as a vhost-user frontend: the guest's FUSE requests are
//! served by a separate file server process (virtiofsd) that maps guest memory itself and
//! reads the queues directly; brig only relays the setup.
//!
//! Why a separate server and not FUSE in the VMM: the process that opens host files is then
//! not the one that parses the guest's MMIO and other devices, it sandboxes itself (pivot_root
//! into the share, seccomp, capabilities dropped), and it is upstream's (Red Hat, Kata, Cloud
//! Hypervisor) well-reviewed code. The price is guest memory that the server can map: a
//! memfd, shared, for VMs that have a virtio-fs device (see `vmm::memory`).
//!
//! The protocol (vhost-user, as Cloud Hypervisor's `vu_common_ctrl`): at creation
//! SET_OWNER, GET_FEATURES and the protocol features; after DRIVER_OK (on the device thread:
//! the vCPU threads that see the Status write never talk to the server) SET_FEATURES, SET_MEM_TABLE
//! and, per queue, SET_VRING_{NUM,ADDR,BASE,CALL,KICK,ENABLE}; the kick eventfd is the queue's
//! ioeventfd and the call eventfd the device's irqfd, so queue traffic never passes through
//! brig. Because the server raises the irqfd without setting InterruptStatus, the device's
//! [`Interrupt`] reports a used-ring interrupt whenever it is read while the device is active
//! (as Firecracker's transport does for vhost-user devices).
//!
//! Config space (§5.11.4): `tag[36]` (the name the guest mounts) and `num_request_queues`.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::common::{DeviceCommon, Dispatch, DEVICE_DATA_BASE};
use super::{
    device_type, read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// The largest tag the config space holds (§5.11.4), without a terminating NUL.
pub const MAX_TAG_LEN: usize = 36;
/// Request queues offered to the guest (besides the high-priority queue).
const REQUEST_QUEUES: u32 = 1;
/// Size of each queue (virtiofsd's and libvhost-user's maximum).
const QUEUE_SIZE: u16 = 1024;
/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30): a vhost-user bit, never offered to the guest.
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
/// `VIRTIO_RING_F_INDIRECT_DESC`: the server reads indirect tables itself.
const INDIRECT_DESC: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// Ring features brig passes through when the server offers them.
const PASSED_THROUGH: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | INDIRECT_DESC;
/// Event data of the server connection (hang-up: the server died).
const SOCKET_DATA: u32 = DEVICE_DATA_BASE;
/// Event data of the eventfd that hands activations and resets to the event thread.
const CONTROL_DATA: u32 = DEVICE_DATA_BASE + 1;

/// What the driver asked for, done on the event thread: the vCPU threads that see the
/// Status writes are confined to KVM's calls and never talk to the server themselves.
enum Pending {
    Start {
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        kicks: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
    },
    Stop,
}

/// Creating or activating the device failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag does not fit the config space, or is empty.
    #[error("virtio-fs tag {0:?} must be 1 to {MAX_TAG_LEN} bytes")]
    Tag(String),
    /// The vhost-user handshake with the file server failed.
    #[error("file server at {path}: {what}: {source}")]
    Backend {
        path: String,
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    /// The server lacks something brig needs.
    #[error("file server at {path}: {what}")]
    Unsupported { path: String, what: &'static str },
    /// The control eventfd could not be created.
    #[error("cannot create the virtio-fs eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// A virtio-fs device relaying to a vhost-user file server.
pub struct Fs {
    common: DeviceCommon,
    frontend: Frontend,
    /// What the server offers (virtio features plus the vhost-user protocol bit).
    backend_features: u64,
    config: [u8; MAX_TAG_LEN + 4],
    queue_sizes: [u16; 1 + REQUEST_QUEUES as usize],
    interrupt: Option<Arc<Interrupt>>,
    /// Queues handed to the server (for GET_VRING_BASE at reset).
    running: usize,
    pending: Vec<Pending>,
    control: EventFd,
    socket: String,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("socket", &self.socket)
            .field(
                "backend_features",
                &format_args!("{:#x}", self.backend_features),
            )
            .field("running", &self.running)
            .finish()
    }
}

impl Fs {
    /// Connects to the server listening at `socket` and names the share `tag` for the guest.
    pub fn new(socket: &Path, tag: &str) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.contains('\0') {
            return Err(FsError::Tag(tag.into()));
        }
        let path = socket.display().to_string();
        let err = |what: &'static str| {
            let path = path.clone();
            move |source| FsError::Backend { path, what, source }
        };
        let queues = 1 + REQUEST_QUEUES as usize;
        let mut frontend = Frontend::connect(socket, queues as u64).map_err(err("connect"))?;
        frontend.set_owner().map_err(err("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(err("GET_FEATURES"))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::Unsupported {
                path,
                what: "no VIRTIO_F_VERSION_1",
            });
        }
        if backend_features & PROTOCOL_FEATURES_BIT != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(err("GET_PROTOCOL_FEATURES"))?;
            let wanted = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
            frontend
                .set_protocol_features(offered & wanted)
                .map_err(err("SET_PROTOCOL_FEATURES"))?;
            if offered.contains(VhostUserProtocolFeatures::MQ) {
                let n = frontend.get_queue_num().map_err(err("GET_QUEUE_NUM"))?;
                if n < queues as u64 {
                    return Err(FsError::Unsupported {
                        path,
                        what: "fewer queues than virtio-fs needs",
                    });
                }
            }
        }
        let mut config = [0u8; MAX_TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[MAX_TAG_LEN..].copy_from_slice(&REQUEST_QUEUES.to_le_bytes());
        Ok(Self {
            common: DeviceCommon::new(queues).map_err(FsError::EventFd)?,
            frontend,
            backend_features,
            config,
            queue_sizes: [QUEUE_SIZE; 1 + REQUEST_QUEUES as usize],
            interrupt: None,
            running: 0,
            pending: Vec::new(),
            control: EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)?,
            socket: path,
        })
    }

    /// Hands the queues to the server.
    fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        queue_evts: &[EventFd],
        interrupt: &Interrupt,
    ) -> Result<(), vhost::Error> {
        let vhost_features = self.backend_features & PROTOCOL_FEATURES_BIT;
        self.frontend
            .set_features(self.common.acked_features | vhost_features)?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend.set_mem_table(&regions)?;
        let host = |addr: u64| {
            mem.get_host_address(GuestAddress(addr))
                .map(|p| p as u64)
                .map_err(|_| vhost::Error::InvalidGuestMemory)
        };
        for (i, (queue, kick)) in queues.iter().zip(queue_evts).enumerate() {
            self.frontend.set_vring_num(i, queue.size())?;
            let addrs = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host(queue.desc_table())?,
                used_ring_addr: host(queue.used_ring())?,
                avail_ring_addr: host(queue.avail_ring())?,
                log_addr: None,
            };
            self.frontend.set_vring_addr(i, &addrs)?;
            self.frontend.set_vring_base(i, 0)?;
            self.frontend.set_vring_call(i, interrupt.eventfd())?;
            self.frontend.set_vring_kick(i, kick)?;
            self.running = i + 1;
            if vhost_features != 0 {
                self.frontend.set_vring_enable(i, true)?;
            }
        }
        Ok(())
    }

    /// Takes the queues back from the server (GET_VRING_BASE stops a ring).
    fn stop(&mut self) {
        let vhost_features = self.backend_features & PROTOCOL_FEATURES_BIT;
        for i in 0..std::mem::take(&mut self.running) {
            if vhost_features != 0 {
                let _ = self.frontend.set_vring_enable(i, false);
            }
            if let Err(err) = self.frontend.get_vring_base(i) {
                tracing::warn!("virtio-fs {}: stopping queue {i}: {err}", self.socket);
            }
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        self.backend_features & PASSED_THROUGH
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if self.interrupt.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        self.common.check_counts(queues.len(), queue_evts.len())?;
        // The guest may kick before the server has the rings: a kick eventfd keeps its
        // count, and the server looks at it once it has it.
        interrupt.set_external_vring(true);
        self.interrupt = Some(interrupt.clone());
        self.pending.push(Pending::Start {
            mem,
            queues,
            kicks: queue_evts,
            interrupt,
        });
        self.control.write(1).map_err(ActivateError::Signal)
    }
    fn reset(&mut self) {
        if let Some(irq) = self.interrupt.take() {
            irq.set_external_vring(false);
        }
        self.pending.push(Pending::Stop);
        if let Err(err) = self.control.write(1) {
            tracing::error!("virtio-fs {}: cannot signal a reset: {err}", self.socket);
        }
        self.common.reset();
    }
}

impl Fs {
    /// Does what the driver asked for, in order (on the event thread).
    fn run_pending(&mut self) {
        for op in std::mem::take(&mut self.pending) {
            match op {
                Pending::Start {
                    mem,
                    queues,
                    kicks,
                    interrupt,
                } => {
                    if let Err(err) = self.start(&mem, &queues, &kicks, &interrupt) {
                        tracing::error!(
                            "virtio-fs: handing the queues to the file server at {}: {err}",
                            self.socket
                        );
                        self.stop();
                    }
                }
                Pending::Stop => self.stop(),
            }
        }
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
        DeviceCommon::add_device_fd(ops, &self.control, CONTROL_DATA, EventSet::IN);
        // The server closing its end means every later FUSE request would hang the guest.
        DeviceCommon::add_device_fd(
            ops,
            &self.frontend.as_raw_fd(),
            SOCKET_DATA,
            EventSet::HANG_UP | EventSet::ERROR,
        );
    }
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.common.dispatch(&events, ops) {
            Dispatch::Device(CONTROL_DATA) => {
                let _ = self.control.read();
                self.run_pending();
            }
            Dispatch::Device(SOCKET_DATA) => {
                tracing::error!(
                    "virtio-fs: the file server at {} went away; the share no longer answers",
                    self.socket
                );
                let _ = ops.remove(events);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! The vhost-user path against the real server: virtiofsd (installed by scripts/setup.sh)
    //! answers a FUSE_INIT that a "driver" posts on the request queue, through memory it maps
    //! from the memfd, a kick eventfd and the irqfd: no KVM needed.
    use super::*;
    use crate::devices::virtio::test_utils::{GuestQueue, MEM_SIZE};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    use std::os::unix::process::CommandExt;
    use vm_memory::{Bytes, FileOffset};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn virtiofsd() -> std::path::PathBuf {
        let found = std::env::var_os("BRIG_VIRTIOFSD")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                    .map(|d| d.join("virtiofsd"))
                    .find(|p| p.is_file())
            });
        found.expect("virtiofsd is not installed: run scripts/setup.sh")
    }

    fn shared_memory() -> GuestMemoryMmap {
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let file = std::fs::File::from(fd);
        file.set_len(MEM_SIZE as u64).unwrap();
        GuestMemoryMmap::from_ranges_with_files(&[(
            GuestAddress(0),
            MEM_SIZE,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap()
    }

    #[test]
    fn fuse_init_round_trip_through_virtiofsd() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        let socket = dir.path().join("fs.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let fd = listener.as_raw_fd();
        let mut cmd = std::process::Command::new(virtiofsd());
        cmd.arg(format!("--shared-dir={}", share.display()))
            .arg(format!("--fd={fd}"))
            .args([
                "--sandbox=none",
                "--log-level=error",
                "--no-announce-submounts",
            ]);
        // SAFETY: only fcntl between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        drop(listener);

        let mut fs = Fs::new(&socket, "brig-test").unwrap();
        assert_eq!(fs.device_type(), 26);
        assert!(fs.features() & VIRTIO_F_VERSION_1 != 0);
        let mut tag = [0u8; 10];
        fs.read_config(0, &mut tag);
        assert_eq!(&tag[..9], b"brig-test");
        let mem = shared_memory();
        let hiprio = GuestQueue::new(&mem, 0x1000, 16);
        let mut requests = GuestQueue::new(&mem, 0x4000, 16);
        let kicks: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let kick = kicks[1].try_clone().unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        fs.ack_features(fs.features() & !VIRTIO_RING_F_EVENT_IDX);
        fs.activate(
            mem.clone(),
            vec![hiprio.queue(), requests.queue()],
            kicks,
            irq.clone(),
        )
        .unwrap();
        // What the event thread does when the control eventfd fires.
        assert_eq!(fs.control.read().unwrap(), 1);
        fs.run_pending();
        // FUSE_INIT (opcode 26): fuse_in_header (40 bytes) + fuse_init_in (64 bytes).
        let mut req = Vec::new();
        req.extend_from_slice(&104u32.to_le_bytes());
        req.extend_from_slice(&26u32.to_le_bytes());
        req.extend_from_slice(&7u64.to_le_bytes()); // unique
        req.extend_from_slice(&[0u8; 24]); // nodeid, uid, gid, pid, extlen, padding
        req.extend_from_slice(&7u32.to_le_bytes()); // major
        req.extend_from_slice(&31u32.to_le_bytes()); // minor
        req.extend_from_slice(&[0u8; 56]);
        mem.write_slice(&req, GuestAddress(0x10000)).unwrap();
        let head = requests.add_chain(&[(0x10000, 104, false), (0x11000, 4096, true)]);
        kick.write(1).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let used = loop {
            let used = requests.take_used();
            if !used.is_empty() || std::time::Instant::now() > deadline {
                break used;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(used.len(), 1, "virtiofsd answered through the used ring");
        assert_eq!(used[0].0, head);
        let mut out = [0u8; 24];
        mem.read_slice(&mut out, GuestAddress(0x11000)).unwrap();
        let error = i32::from_le_bytes(out[4..8].try_into().unwrap());
        let unique = u64::from_le_bytes(out[8..16].try_into().unwrap());
        let major = u32::from_le_bytes(out[16..20].try_into().unwrap());
        assert_eq!((error, unique, major), (0, 7, 7), "a FUSE_INIT reply");
        assert!(
            irq.eventfd().read().unwrap() >= 1,
            "the server raised the irqfd"
        );
        assert_eq!(
            irq.status() & virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING,
            virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING,
            "InterruptStatus shows a used-ring interrupt while a vhost-user server runs"
        );
        fs.reset();
        fs.run_pending();
        assert_eq!(irq.status(), 0);
        drop(fs);
        // The server ends with its frontend's connection.
        let status = child.wait().unwrap();
        assert!(status.success() || status.code().is_some(), "{status}");
    }

    #[test]
    fn tags_must_fit() {
        let e = Fs::new(std::path::Path::new("/nonexistent"), &"x".repeat(37)).unwrap_err();
        assert!(matches!(e, FsError::Tag(_)));
        assert!(matches!(
            Fs::new(std::path::Path::new("/nonexistent"), ""),
            Err(FsError::Tag(_))
        ));
    }
}
