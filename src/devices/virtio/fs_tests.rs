//! The vhost-user path against the real server: virtiofsd (installed by scripts/setup.sh)
//! answers a FUSE_INIT that a "driver" posts on the request queue, through brig's bounce
//! queues (what the event thread does is called directly): no KVM needed. And the bounce
//! queues against a hostile guest and a misbehaving server, played by the test.
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::fs::{Fs, FsError};
use super::test_utils::{guest_memory, GuestQueue};
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

/// The used-ring entries of `q` once the server answered (20 s at most), its replies taken
/// back as the event thread does when the server's call eventfd fires.
fn wait_used(fs: &mut Fs, q: &mut GuestQueue) -> Vec<(u16, u32)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        fs.relay(1, true);
        let used = q.take_used();
        if !used.is_empty() || std::time::Instant::now() > deadline {
            return used;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Puts a FUSE_INIT with `unique` at `at` (its reply buffer a page above) on `requests`,
/// has the device take it (as on the guest's notification), and returns the used entries
/// once the server answered; the first is that chain.
fn send_init(
    fs: &mut Fs,
    mem: &GuestMemoryMmap,
    requests: &mut GuestQueue,
    at: u64,
    unique: u64,
) -> Vec<(u16, u32)> {
    mem.write_slice(&fuse_init(unique), GuestAddress(at))
        .unwrap();
    let head = requests.add_chain(&[(at, 104, false), (at + 0x1000, 4096, true)]);
    fs.relay(1, false);
    let used = wait_used(fs, requests);
    assert_eq!(used.first().map(|u| u.0), Some(head));
    used
}

/// The two queues' notify eventfds and an interrupt.
fn kicks_and_interrupt() -> (Vec<EventFd>, Arc<Interrupt>) {
    let kicks: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    (kicks, Arc::new(Interrupt::new().unwrap()))
}

/// The FUSE reply at `at`: (error, unique, major).
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
        "a template's placeholder offers the same features (a restore checks them)"
    );
    assert!(
        fs.snapshot_blocker().is_some(),
        "a server's FUSE session cannot be saved"
    );
    let mut tag = [0u8; 10];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag[..9], b"brig-test");
    // Private guest memory: the server never maps it.
    let mem = guest_memory();
    let hiprio = GuestQueue::new(&mem, 0x1000, 16);
    let mut requests = GuestQueue::new(&mem, 0x4000, 16);
    let (kicks, irq) = kicks_and_interrupt();
    fs.ack_features(fs.features());
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
    let used = send_init(&mut fs, &mem, &mut requests, 0x10000, 7);
    assert_eq!(
        used,
        vec![(0, 80)],
        "virtiofsd's reply: fuse_out_header + fuse_init_out"
    );
    assert_eq!(reply(&mem, 0x11000), (0, 7, 7), "a FUSE_INIT reply");
    assert!(
        irq.eventfd().read().unwrap() >= 1,
        "the guest was interrupted"
    );
    assert_eq!(
        irq.status() & virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING,
        virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING,
        "InterruptStatus shows the used-ring interrupt"
    );
    // Requests go on, through the same slots.
    for unique in 8..20 {
        let used = send_init(&mut fs, &mem, &mut requests, 0x10000, unique);
        assert_eq!(used.len(), 1);
        assert_eq!(reply(&mem, 0x11000), (0, unique, 7));
    }
    fs.reset();
    fs.run_pending();
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
    let mem = guest_memory();
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
    let (kicks, irq) = kicks_and_interrupt();
    fs.ack_features(fs.features() & !VIRTIO_RING_F_EVENT_IDX);
    fs.activate(mem.clone(), vec![hiprio.queue(), queue], kicks, irq)
        .unwrap();
    fs.run_pending();
    let used = send_init(&mut fs, &mem, &mut requests, 0x20000, 9);
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
    let mem = guest_memory();
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
