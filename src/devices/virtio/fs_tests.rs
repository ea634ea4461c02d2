//! The vhost-user path against the real server: virtiofsd (installed by scripts/setup.sh)
//! answers a FUSE_INIT that a "driver" posts on the request queue, through memory it maps
//! from the memfd, a kick eventfd and the irqfd: no KVM needed.
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;
use virtio_queue::QueueT;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::fs::{Fs, FsError};
use super::test_utils::{GuestQueue, MEM_SIZE};
use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

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

/// Starts virtiofsd on a new share in `dir`, listening at the returned socket.
fn spawn_virtiofsd(dir: &Path) -> (std::process::Child, std::path::PathBuf) {
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    let socket = dir.join("fs.sock");
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
    let child = cmd.spawn().unwrap();
    drop(listener);
    (child, socket)
}

/// A FUSE_INIT request (opcode 26): fuse_in_header (40 bytes) + fuse_init_in (64 bytes).
fn fuse_init(unique: u64) -> Vec<u8> {
    let mut req = Vec::new();
    req.extend_from_slice(&104u32.to_le_bytes());
    req.extend_from_slice(&26u32.to_le_bytes());
    req.extend_from_slice(&unique.to_le_bytes());
    req.extend_from_slice(&[0u8; 24]); // nodeid, uid, gid, pid, extlen, padding
    req.extend_from_slice(&7u32.to_le_bytes()); // major
    req.extend_from_slice(&31u32.to_le_bytes()); // minor
    req.extend_from_slice(&[0u8; 56]);
    req
}

/// The used-ring entries of `q` once the server added some (20 s at most).
fn wait_used(q: &mut GuestQueue) -> Vec<(u16, u32)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let used = q.take_used();
        if !used.is_empty() || std::time::Instant::now() > deadline {
            return used;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The FUSE reply at `at`: (error, unique, major).
/// Puts a FUSE_INIT with `unique` at `at` (its reply buffer a page above) on `requests`,
/// kicks, and returns the used entries once the server answered; the first is that chain.
fn send_init(
    mem: &GuestMemoryMmap,
    requests: &mut GuestQueue,
    kick: &EventFd,
    at: u64,
    unique: u64,
) -> Vec<(u16, u32)> {
    mem.write_slice(&fuse_init(unique), GuestAddress(at))
        .unwrap();
    let head = requests.add_chain(&[(at, 104, false), (at + 0x1000, 4096, true)]);
    kick.write(1).unwrap();
    let used = wait_used(requests);
    assert_eq!(used.first().map(|u| u.0), Some(head));
    used
}

/// The two queues' kick eventfds, a clone of the request queue's, and an interrupt.
fn kicks_and_interrupt() -> (Vec<EventFd>, EventFd, Arc<Interrupt>) {
    let kicks: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let kick = kicks[1].try_clone().unwrap();
    (kicks, kick, Arc::new(Interrupt::new().unwrap()))
}

fn reply(mem: &GuestMemoryMmap, at: u64) -> (i32, u64, u32) {
    let mut out = [0u8; 24];
    mem.read_slice(&mut out, GuestAddress(at)).unwrap();
    (
        i32::from_le_bytes(out[4..8].try_into().unwrap()),
        u64::from_le_bytes(out[8..16].try_into().unwrap()),
        u32::from_le_bytes(out[16..20].try_into().unwrap()),
    )
}

#[test]
fn fuse_init_round_trip_through_virtiofsd() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, socket) = spawn_virtiofsd(dir.path());
    let mut fs = Fs::new(&socket, "brig-test").unwrap();
    assert_eq!(fs.device_type(), 26);
    assert!(fs.features() & VIRTIO_F_VERSION_1 != 0);
    assert_eq!(
        fs.features(),
        Fs::placeholder("brig-test").unwrap().features(),
        "a template's placeholder offers what virtiofsd offers (a restore checks it)"
    );
    assert!(
        fs.snapshot_blocker().is_some(),
        "a server's FUSE session cannot be saved"
    );
    let mut tag = [0u8; 10];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag[..9], b"brig-test");
    let mem = shared_memory();
    let hiprio = GuestQueue::new(&mem, 0x1000, 16);
    let mut requests = GuestQueue::new(&mem, 0x4000, 16);
    let (kicks, kick, irq) = kicks_and_interrupt();
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
    let used = send_init(&mem, &mut requests, &kick, 0x10000, 7);
    assert_eq!(used.len(), 1, "virtiofsd answered through the used ring");
    assert_eq!(reply(&mem, 0x11000), (0, 7, 7), "a FUSE_INIT reply");
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

/// A device activated on queues that already moved (a restored VM's) hands the server
/// their positions: it serves the next request, not the ones already answered.
#[test]
fn a_restored_queue_resumes_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, socket) = spawn_virtiofsd(dir.path());
    let mut fs = Fs::new(&socket, "brig-test").unwrap();
    let mem = shared_memory();
    let hiprio = GuestQueue::new(&mem, 0x1000, 16);
    let mut requests = GuestQueue::new(&mem, 0x4000, 16);
    // A request an earlier server answered before the VM was saved.
    mem.write_slice(&fuse_init(5), GuestAddress(0x10000))
        .unwrap();
    requests.add_chain(&[(0x10000, 104, false), (0x11000, 4096, true)]);
    mem.write_obj(1u16, GuestAddress(requests.used + 2))
        .unwrap();
    assert_eq!(requests.take_used().len(), 1);
    let mut queue = requests.queue();
    queue.set_next_avail(1);
    queue.set_next_used(1);
    let (kicks, kick, irq) = kicks_and_interrupt();
    fs.ack_features(fs.features() & !VIRTIO_RING_F_EVENT_IDX);
    fs.activate(mem.clone(), vec![hiprio.queue(), queue], kicks, irq)
        .unwrap();
    fs.run_pending();
    let used = send_init(&mem, &mut requests, &kick, 0x20000, 9);
    assert_eq!(used.len(), 1, "only the new request: {used:?}");
    assert_eq!(reply(&mem, 0x21000), (0, 9, 7));
    assert_eq!(
        reply(&mem, 0x11000),
        (0, 0, 0),
        "the old request is not served again"
    );
    drop(fs);
    let _ = child.wait();
}

/// A template's placeholder: no server, activation hands nothing anywhere, and nothing
/// stops a save.
#[test]
fn a_placeholder_activates_without_a_server() {
    let mut fs = Fs::placeholder("brig-vol0").unwrap();
    assert_eq!(fs.snapshot_blocker(), None);
    let mem = shared_memory();
    let hiprio = GuestQueue::new(&mem, 0x1000, 16);
    let requests = GuestQueue::new(&mem, 0x4000, 16);
    let kicks: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let irq = Arc::new(Interrupt::new().unwrap());
    fs.ack_features(fs.features());
    fs.activate(mem, vec![hiprio.queue(), requests.queue()], kicks, irq)
        .unwrap();
    fs.run_pending();
    assert_eq!(fs.running, 0);
    fs.reset();
    fs.run_pending();
    assert!(matches!(Fs::placeholder(""), Err(FsError::Tag(_))));
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
