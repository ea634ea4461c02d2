//! Tests of the passt backend against the other end of a `UnixStream::pair()`, which plays
//! passt: framing both ways, frames cut anywhere, bad lengths, a full socket, a peer that
//! goes away; then the backend under the virtio-net device, driven by hand and through an
//! event manager.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::thread;
use std::time::Duration;

use event_manager::EventSet;
use rustix::event::{poll, PollFd, PollFlags};
use vm_memory::{Bytes, GuestAddress};

use super::event_tests::{wire_up, Wired};
use super::passt::{Passt, PasstError, PASST_MAX_FRAME_LEN, RX_QUEUE_MAX};
use super::tests::{frame, DATA};
use super::{Backend, Net, NetConfig, MAX_BUFFER_LEN, MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::devices::virtio::test_utils::{activate, guest_memory, GuestQueue};

/// A backend and the peer standing for passt.
fn pair() -> (Passt, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (Passt::new(ours).unwrap(), theirs)
}

/// An Ethernet frame of `len` bytes with recognisable contents.
fn eth(len: usize, seed: u8) -> Vec<u8> {
    frame(len + VNET_HDR_LEN, seed).split_off(VNET_HDR_LEN)
}

/// `eth` as it goes on the wire: its length, big-endian, then the frame.
fn wire(eth: &[u8]) -> Vec<u8> {
    let mut w = u32::try_from(eth.len()).unwrap().to_be_bytes().to_vec();
    w.extend(eth);
    w
}

/// `eth` as the device writes it: behind a header with NEEDS_CSUM set.
fn with_hdr(eth: &[u8]) -> Vec<u8> {
    let mut f = vec![1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0];
    f.extend(eth);
    f
}

/// `eth` as the backend hands it to the device: behind a zeroed header.
fn as_read(eth: &[u8]) -> Vec<u8> {
    let mut f = vec![0; VNET_HDR_LEN];
    f.extend(eth);
    f
}

fn read(p: &mut Passt) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; MAX_BUFFER_LEN];
    let n = p.read_frame(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn kind<T: std::fmt::Debug>(r: io::Result<T>) -> io::ErrorKind {
    r.unwrap_err().kind()
}

/// Reads exactly `n` bytes as passt would (blocking, with the pair's timeout).
fn take(peer: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    peer.read_exact(&mut v).unwrap();
    v
}

/// Whether nothing waits on `peer`.
fn nothing_on(peer: &UnixStream) -> bool {
    peer.set_nonblocking(true).unwrap();
    let r = (&*peer).read(&mut [0u8; 1]);
    peer.set_nonblocking(false).unwrap();
    matches!(r, Err(err) if err.kind() == io::ErrorKind::WouldBlock)
}

/// Waits until `sock` is ready for `flags`.
fn wait(sock: &UnixStream, flags: PollFlags) {
    let mut fds = [PollFd::new(sock, flags)];
    let timeout = rustix::event::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    assert_eq!(poll(&mut fds, Some(&timeout)).unwrap(), 1, "not ready");
}

fn writable(sock: &UnixStream) {
    wait(sock, PollFlags::OUT);
}

#[test]
fn only_a_stream_socket_is_taken_and_its_send_buffer_grows() {
    let (dgram, _) = UnixDatagram::pair().unwrap();
    let err = Passt::new(UnixStream::from(OwnedFd::from(dgram))).unwrap_err();
    assert!(matches!(err, PasstError::NotStream(_)), "{err}");

    let (ours, _peer) = UnixStream::pair().unwrap();
    let probe = ours.try_clone().unwrap();
    let before = rustix::net::sockopt::socket_send_buffer_size(&probe).unwrap();
    let _p = Passt::new(ours).unwrap();
    let after = rustix::net::sockopt::socket_send_buffer_size(&probe).unwrap();
    // Capped by net.core.wmem_max, which is the default size unless raised.
    assert!(after > before, "{before} -> {after}");
}

#[test]
fn whole_frames_both_ways() {
    let (mut p, mut peer) = pair();
    assert_eq!(kind(read(&mut p)), io::ErrorKind::WouldBlock);
    let down = eth(60, 1);
    peer.write_all(&wire(&down)).unwrap();
    assert_eq!(read(&mut p).unwrap(), as_read(&down));
    assert_eq!(kind(read(&mut p)), io::ErrorKind::WouldBlock);

    // The header goes, whatever it says (offloads are passt's to ignore).
    let up = eth(1514, 2);
    p.write_frame(&with_hdr(&up)).unwrap();
    assert_eq!(take(&mut peer, 4 + 1514), wire(&up));
    assert_eq!(p.tx_pending(), 0);
    p.flush().unwrap();
    assert!(nothing_on(&peer));
    // Offloads are accepted and change nothing.
    p.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4).unwrap();
}

#[test]
fn a_frame_written_a_byte_at_a_time() {
    let (mut p, mut peer) = pair();
    let f = eth(100, 3);
    let bytes = wire(&f);
    for (i, b) in bytes.iter().enumerate() {
        assert_eq!(kind(read(&mut p)), io::ErrorKind::WouldBlock, "at byte {i}");
        peer.write_all(&[*b]).unwrap();
    }
    assert_eq!(read(&mut p).unwrap(), as_read(&f));
    assert_eq!(kind(read(&mut p)), io::ErrorKind::WouldBlock);
}

#[test]
fn several_frames_in_one_read_and_one_cut_in_two() {
    let (mut p, mut peer) = pair();
    let frames: Vec<Vec<u8>> = (0..4)
        .map(|i| eth(60 + 500 * i, u8::try_from(i).unwrap()))
        .collect();
    let mut bytes: Vec<u8> = frames.iter().flat_map(|f| wire(f)).collect();
    let rest = bytes.split_off(bytes.len() - 300);
    peer.write_all(&bytes).unwrap();
    for f in &frames[..3] {
        assert_eq!(read(&mut p).unwrap(), as_read(f));
    }
    assert_eq!(kind(read(&mut p)), io::ErrorKind::WouldBlock);
    peer.write_all(&rest).unwrap();
    assert_eq!(read(&mut p).unwrap(), as_read(&frames[3]));
}

#[test]
fn many_large_frames_cross_the_reassembly_buffer() {
    // Frames of all sizes, written from a thread as fast as the socket takes them, come out
    // whole and in order however the reads cut the stream.
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let probe = ours.try_clone().unwrap();
    let mut p = Passt::new(ours).unwrap();
    let frames: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            eth(
                [MAX_FRAME_LEN, 14, 9000, 65_000, 1500][i % 5],
                u8::try_from(i).unwrap(),
            )
        })
        .collect();
    let bytes: Vec<u8> = frames.iter().flat_map(|f| wire(f)).collect();
    let writer = thread::spawn(move || peer.write_all(&bytes).unwrap());
    for f in &frames {
        loop {
            match read(&mut p) {
                Ok(got) => break assert_eq!(got, as_read(f)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    wait(&probe, PollFlags::IN);
                }
                Err(err) => panic!("{err}"),
            }
        }
    }
    writer.join().unwrap();
}

#[test]
fn bad_lengths_end_reading_for_good() {
    let past = u32::try_from(MAX_FRAME_LEN + 1).unwrap();
    for bad in [0, 13, past, u32::MAX] {
        let (mut p, mut peer) = pair();
        let good = eth(60, 1);
        peer.write_all(&wire(&good)).unwrap();
        peer.write_all(&bad.to_be_bytes()).unwrap();
        peer.write_all(&wire(&good)).unwrap();
        assert_eq!(read(&mut p).unwrap(), as_read(&good));
        let err = read(&mut p).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad}");
        assert!(err.to_string().contains(&bad.to_string()), "{err}");
        // The frame after it cannot be trusted: the stream is out of step.
        assert_eq!(kind(read(&mut p)), io::ErrorKind::InvalidData);
    }
    // The bounds themselves are frames.
    let (mut p, mut peer) = pair();
    for len in [14, MAX_FRAME_LEN] {
        let f = eth(len, 7);
        peer.write_all(&wire(&f)).unwrap();
        assert_eq!(read(&mut p).unwrap(), as_read(&f));
    }
}

#[test]
fn the_peer_going_away() {
    let (mut p, peer) = pair();
    drop(peer);
    assert_eq!(
        read(&mut p).unwrap().len(),
        0,
        "end of stream reads as nothing"
    );
    assert_eq!(read(&mut p).unwrap().len(), 0);
    assert_eq!(
        kind(p.write_frame(&with_hdr(&eth(60, 1)))),
        io::ErrorKind::BrokenPipe
    );

    let (mut p, mut peer) = pair();
    peer.write_all(&wire(&eth(60, 1))[..30]).unwrap();
    drop(peer);
    assert_eq!(kind(read(&mut p)), io::ErrorKind::UnexpectedEof);
    assert_eq!(kind(read(&mut p)), io::ErrorKind::UnexpectedEof);
}

#[test]
fn frames_passt_would_not_take_are_refused_whole() {
    let (mut p, peer) = pair();
    for eth_len in [0, 13, PASST_MAX_FRAME_LEN + 1] {
        let f = with_hdr(&vec![0xab; eth_len]);
        assert_eq!(
            kind(p.write_frame(&f)),
            io::ErrorKind::InvalidInput,
            "{eth_len}"
        );
    }
    assert_eq!(kind(p.write_frame(&[0; 5])), io::ErrorKind::InvalidInput);
    assert!(nothing_on(&peer));
}

#[test]
fn a_partial_write_is_finished_and_no_frame_is_cut() {
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let probe = ours.try_clone().unwrap();
    let mut p = Passt::with_send_buffer(ours, 4096).unwrap();
    let (a, b) = (eth(60_000, 1), eth(30_000, 2));
    // The socket takes a few KiB of `a`: the frame is taken, the rest kept.
    p.write_frame(&with_hdr(&a)).unwrap();
    let left = p.tx_pending();
    assert!(left > 0 && left < 4 + a.len(), "{left}");
    assert_eq!(kind(p.flush()), io::ErrorKind::WouldBlock);
    // Nothing of `b` goes while `a` is unfinished.
    assert_eq!(
        kind(p.write_frame(&with_hdr(&b))),
        io::ErrorKind::WouldBlock
    );
    assert_eq!(p.tx_pending(), left);

    let expect = [wire(&a), wire(&b)].concat();
    let n = expect.len();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = thread::spawn(move || take(&mut peer, n));
    loop {
        match p.flush() {
            Ok(()) => break,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => writable(&probe),
            Err(err) => panic!("{err}"),
        }
    }
    loop {
        match p.write_frame(&with_hdr(&b)) {
            Ok(()) => break,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => writable(&probe),
            Err(err) => panic!("{err}"),
        }
    }
    while let Err(err) = p.flush() {
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        writable(&probe);
    }
    let got = reader.join().unwrap();
    assert_eq!(got, expect);
}

/// Writes `frames` to `peer` without blocking until the socket is full; how many went.
fn fill(peer: &mut UnixStream, frames: &[Vec<u8>]) -> usize {
    peer.set_nonblocking(true).unwrap();
    let mut sent = 0;
    for f in frames {
        let w = wire(f);
        match peer.write(&w) {
            Ok(n) if n == w.len() => sent += 1,
            Ok(n) => {
                // Part of a frame went: the rest must follow, or the stream is out of step.
                peer.set_nonblocking(false).unwrap();
                peer.write_all(&w[n..]).unwrap();
                sent += 1;
                break;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) => panic!("{err}"),
        }
    }
    peer.set_nonblocking(false).unwrap();
    sent
}

#[test]
fn reading_ahead_empties_the_socket_and_keeps_the_frames_in_order() {
    let (mut p, mut peer) = pair();
    let frames: Vec<Vec<u8>> = (0..4000u32)
        .map(|i| eth(1514, i.to_le_bytes()[0]))
        .collect();
    let first = fill(&mut peer, &frames);
    assert!(first < frames.len(), "the socket filled up");
    p.prefetch().unwrap();
    // The socket has room again: passt's next sends succeed.
    let more = fill(&mut peer, &frames[first..]);
    assert!(more > 0, "room after reading ahead");
    for (i, f) in frames[..first + more].iter().enumerate() {
        assert_eq!(read(&mut p).unwrap(), as_read(f), "frame {i}");
    }
    assert_eq!(kind(read(&mut p)), io::ErrorKind::WouldBlock);
}

#[test]
fn reading_ahead_stops_at_its_limit_and_everything_still_arrives() {
    let (mut p, peer) = pair();
    // More than the limit, from a writer that blocks when the socket is full.
    let frames: Vec<Vec<u8>> = (0..200u8).map(|i| eth(60_000, i)).collect();
    let total: usize = frames.iter().map(|f| f.len() + 4).sum();
    assert!(total > RX_QUEUE_MAX + (1 << 20));
    let sent = frames.clone();
    let writer = thread::spawn(move || {
        let mut peer = peer;
        for f in &sent {
            peer.write_all(&wire(f)).unwrap();
        }
        peer
    });
    // Read ahead until nothing more comes in: at the limit, with the writer blocked.
    let mut last = usize::MAX;
    loop {
        p.prefetch().unwrap();
        let now = p.rx_buffered();
        if now == last && now >= RX_QUEUE_MAX {
            break;
        }
        last = now;
        thread::sleep(Duration::from_millis(20));
    }
    assert!(last < RX_QUEUE_MAX + MAX_FRAME_LEN + 4, "{last} buffered");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for (i, f) in frames.iter().enumerate() {
        let got = loop {
            match read(&mut p) {
                Ok(got) => break got,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "frame {i} never came");
                    thread::sleep(Duration::from_millis(5));
                }
                Err(err) => panic!("frame {i}: {err}"),
            }
        };
        assert_eq!(got, as_read(f), "frame {i}");
    }
    drop(writer.join().unwrap());
}

#[test]
fn under_the_device_a_frame_each_way() {
    let mem = guest_memory();
    let mut rxq = GuestQueue::new(&mem, 0x1_0000, 16);
    let mut txq = GuestQueue::new(&mem, 0x2_0000, 16);
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut dev = Net::new(NetConfig::default(), Box::new(Passt::new(ours).unwrap())).unwrap();
    activate(&mut dev, &[&rxq, &txq]);

    let up = eth(1000, 4);
    mem.write_slice(&with_hdr(&up), GuestAddress(DATA)).unwrap();
    let head = txq.add_chain(&[(DATA, 12, false), (DATA + 12, 1000, false)]);
    dev.process_tx();
    assert_eq!(txq.take_used(), vec![(head, 0)]);
    assert_eq!(take(&mut peer, 1004), wire(&up));

    let down = eth(700, 5);
    peer.write_all(&wire(&down)).unwrap();
    let head = rxq.add_chain(&[(DATA + 0x1000, 1526, true)]);
    dev.process_backend(EventSet::IN);
    assert_eq!(rxq.take_used(), vec![(head, 712)]);
    let mut got = vec![0; 712];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    let mut expect = as_read(&down);
    expect[10] = 1; // num_buffers
    assert_eq!(got, expect);

    let stats = dev.stats();
    assert_eq!((stats.tx_frames, stats.tx_bytes), (1, 1000));
    assert_eq!((stats.rx_frames, stats.rx_bytes), (1, 700));
}

#[test]
fn under_the_device_frames_without_a_guest_buffer_leave_the_socket() {
    let mem = guest_memory();
    let rxq = GuestQueue::new(&mem, 0x1_0000, 16);
    let txq = GuestQueue::new(&mem, 0x2_0000, 16);
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut dev = Net::new(NetConfig::default(), Box::new(Passt::new(ours).unwrap())).unwrap();
    activate(&mut dev, &[&rxq, &txq]);
    let frames: Vec<Vec<u8>> = (0..4000u32)
        .map(|i| eth(1514, i.to_le_bytes()[0]))
        .collect();
    let first = fill(&mut peer, &frames);
    assert!(first < frames.len(), "the socket filled up");
    // The guest posted no buffer: the frames wait in the backend, not in passt's way.
    dev.process_backend(EventSet::IN);
    assert!(
        fill(&mut peer, &frames[first..]) > 0,
        "room after the device looked"
    );
    assert_eq!(dev.stats().rx_frames, 0);
}

#[test]
fn under_the_device_a_broken_stream_stops_reading() {
    let mem = guest_memory();
    let mut rxq = GuestQueue::new(&mem, 0x1_0000, 16);
    let txq = GuestQueue::new(&mem, 0x2_0000, 16);
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut dev = Net::new(NetConfig::default(), Box::new(Passt::new(ours).unwrap())).unwrap();
    activate(&mut dev, &[&rxq, &txq]);
    let good = eth(60, 1);
    peer.write_all(&wire(&good)).unwrap();
    peer.write_all(&0u32.to_be_bytes()).unwrap();
    let h1 = rxq.add_chain(&[(DATA, 2000, true)]);
    let _h2 = rxq.add_chain(&[(DATA + 0x1000, 2000, true)]);
    dev.process_backend(EventSet::IN);
    assert_eq!(
        rxq.take_used(),
        vec![(h1, 72)],
        "the frame before still arrives"
    );
    assert!(dev.rx_failed());
    assert!(!dev.rx_ready());
    // Later readiness and kicks read nothing; the guest's buffer stays posted.
    peer.write_all(&wire(&good)).unwrap();
    dev.process_backend(EventSet::IN);
    dev.process_rx();
    assert!(rxq.take_used().is_empty());
    assert_eq!(dev.stats().rx_frames, 1);
}

#[test]
fn in_an_event_manager_the_rest_of_a_frame_goes_when_the_socket_drains() {
    // A single frame, the last on the queue, that the socket takes only part of: the device
    // must wait for the socket to be writable and finish it, with no further TX kick.
    let mem = guest_memory();
    let rxq = GuestQueue::new(&mem, 0x1_0000, 16);
    let mut txq = GuestQueue::new(&mem, 0x2_0000, 16);
    let (ours, mut peer) = UnixStream::pair().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let backend = Passt::with_send_buffer(ours, 4096).unwrap();
    let Wired {
        dev, mut em, kicks, ..
    } = wire_up(&mem, &rxq, &txq, Box::new(backend));
    em.run_with_timeout(10).unwrap();

    let big = eth(60_000, 9);
    mem.write_slice(&with_hdr(&big), GuestAddress(DATA))
        .unwrap();
    let head = txq.add_chain(&[(
        DATA,
        u32::try_from(VNET_HDR_LEN + big.len()).unwrap(),
        false,
    )]);
    kicks[1].write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(
        txq.take_used(),
        vec![(head, 0)],
        "taken, though not all sent"
    );

    let expect = wire(&big);
    let reader = thread::spawn(move || take(&mut peer, expect.len()));
    for _ in 0..1000 {
        if reader.is_finished() {
            break;
        }
        em.run_with_timeout(10).unwrap();
    }
    assert_eq!(reader.join().unwrap(), wire(&big));
    assert_eq!(dev.lock().unwrap().stats().tx_frames, 1);
}
