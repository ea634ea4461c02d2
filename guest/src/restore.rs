//! Templates: the agent's part in being saved once and restored many times.
//!
//! While a template is made, the host answers Hello with Freeze: the agent brings the
//! network interface up unconfigured (if the VM has one: its receive buffers are then part
//! of the template), listens on [`RESTORE_PORT`], says Done, closes its connection (a saved VM must hold none) and waits.
//! Each VM restored from the template is then reached on that port with a Restore message,
//! and before anything else runs the agent makes this copy unique and fit for its disks:
//! host entropy credited to the RNG and the CRNG reseeded (RNDADDENTROPY, RNDRESEEDCRNG:
//! Firecracker's `random-for-clones.md`), the wall clock set from the host's, and the disks'
//! new capacities awaited (the VMM swapped their backing files and raised a config-change
//! interrupt) with their buffer caches dropped (BLKFLSBUF). Design: ../shared/design/snapshot.md.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use brig_protocol::{read_message, DiskSize, Message, RestoreSpec, RESTORE_PORT};

use crate::exec::{send, HostWriter};
use crate::sys::check;
use crate::vsock;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])` (linux/random.h).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)` (linux/random.h).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// `BLKFLSBUF`: `_IO(0x12, 97)` (linux/fs.h).
const BLKFLSBUF: libc::c_ulong = 0x1261;
/// The most seed bytes taken (random.c credits at most a pool's worth anyway).
const MAX_SEED: usize = 512;
/// How long a disk may take to show its new size (the driver's config work runs async).
const DISK_WAIT: Duration = Duration::from_secs(5);

/// Freeze: listens on [`RESTORE_PORT`], acknowledges on `writer`, closes the connection
/// (`writer` and `reader` are its two halves), and returns the first connection of a
/// restored copy, already made unique by its Restore message.
pub fn freeze(writer: HostWriter, reader: File) -> Result<File, String> {
    crate::net::template_link_up()?;
    let listener =
        vsock::listen(RESTORE_PORT).map_err(|e| format!("listening on {RESTORE_PORT}: {e}"))?;
    send(&writer, &Message::Done { error: None }).map_err(|e| format!("freeze: {e}"))?;
    drop(reader);
    drop(writer);
    await_restore(&listener)
}

/// Waits on `listener` (bound to [`RESTORE_PORT`]) for a restored copy's first connection,
/// makes the copy unique and fit for its disks and network, and returns the connection.
pub fn await_restore(listener: &File) -> Result<File, String> {
    loop {
        let mut conn = vsock::accept(listener).map_err(|e| format!("restore accept: {e}"))?;
        match read_message(&mut conn) {
            Ok(Some(Message::Restore(spec))) => {
                apply(&spec)?;
                return Ok(conn);
            }
            // A connection that is not a restore (none should come) is ignored.
            Ok(_) | Err(_) => continue,
        }
    }
}

/// Makes this copy of the VM unique, waits for its disks, and gives its interface the
/// network it now has (a checkpoint's: see [`RestoreSpec::network`]).
fn apply(spec: &RestoreSpec) -> Result<(), String> {
    reseed(&spec.seed).map_err(|e| format!("reseeding the RNG: {e}"))?;
    set_clock(spec.realtime_ns).map_err(|e| format!("setting the clock: {e}"))?;
    for disk in &spec.disks {
        attach(disk)?;
    }
    if let Some(network) = &spec.network {
        crate::net::apply(network).map_err(|e| format!("network: {e}"))?;
    }
    Ok(())
}

/// Mixes `seed` into the input pool, credited, and reseeds the CRNG from it.
fn reseed(seed: &[u8]) -> io::Result<()> {
    let seed = &seed[..seed.len().min(MAX_SEED)];
    if seed.is_empty() {
        return Err(io::Error::other("no seed"));
    }
    let random = OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    // Room for the u32 words the kernel reads (it copies buf_size bytes).
    info.resize(8 + seed.len().div_ceil(4) * 4, 0);
    // SAFETY: `info` is a rand_pool_info whose buffer holds buf_size bytes; the kernel only
    // reads from it during the call.
    check(unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) })?;
    // SAFETY: an ioctl without argument on an open descriptor.
    check(unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) })?;
    Ok(())
}

fn set_clock(realtime_ns: u64) -> io::Result<()> {
    if realtime_ns == 0 {
        return Err(io::Error::other("no time given"));
    }
    let ts = libc::timespec {
        tv_sec: (realtime_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (realtime_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: ts is a valid timespec that outlives the call.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(|_| ())
}

/// A disk name the host may give: `vd` and one letter.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 3 && b.starts_with(b"vd") && b[2].is_ascii_lowercase()
}

/// Waits until the disk shows `sectors`, then drops whatever its buffer cache holds.
fn attach(disk: &DiskSize) -> Result<(), String> {
    if !valid_name(&disk.name) {
        return Err(format!("not a disk name: {:?}", disk.name));
    }
    let size_path = format!("/sys/block/{}/size", disk.name);
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        let seen = std::fs::read_to_string(&size_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if seen == Some(disk.sectors) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "/dev/{} has {seen:?} sectors, not the {} attached",
                disk.name, disk.sectors
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let dev = File::open(format!("/dev/{}", disk.name))
        .map_err(|e| format!("/dev/{}: {e}", disk.name))?;
    // SAFETY: an ioctl without argument on an open block device.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), BLKFLSBUF) })
        .map_err(|e| format!("BLKFLSBUF /dev/{}: {e}", disk.name))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_virtio_disk_names_are_taken() {
        assert!(valid_name("vda") && valid_name("vdz"));
        for bad in ["", "vd", "sda", "vdA", "vda1", "../x", "vd/"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
