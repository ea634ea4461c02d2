//! Guest memory in a snapshot: written once to a file (regions one after another, all-zero
//! pages left as holes), and mapped back copy-on-write (`MAP_PRIVATE`): pages load from the
//! page cache on first touch, shared by every VM restored from the same file, and the guest's
//! writes go to private copies, never to the file.
//!
//! Two things make that memory as fast as a cold-booted VM's. It is mapped at a host address
//! lined up with its guest address for huge pages ([`crate::vmm::memory::HUGE`]), and each
//! long run of holes (memory the guest had not used when it was saved: most of a fresh
//! template's RAM) is mapped as anonymous memory, which transparent huge pages can back, where
//! a file page is copied 4 KiB at a time. Without them, a restored guest writing 64 MiB of
//! fresh memory took 3.0-4.1 s against 0.3-0.5 s cold-booted (nested KVM, host THP `always`;
//! 17.8k KVM page faults against 1.1k); with them, 0.31 s.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use rustix::mm;

use serde::{Deserialize, Serialize};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use super::SnapshotError;
use crate::vmm::memory::Reserved;

/// What is copied from guest memory at a time.
const CHUNK: usize = 1 << 20;
/// The unit of holes in the memory file.
const PAGE: usize = 4096;
/// Holes at least this long are mapped anonymous (see the module comment): one huge page, so
/// that every such mapping can hold one; shorter ones are not worth a mapping of their own.
const ANON_HOLE_MIN: u64 = 2 << 20;

/// Where one guest RAM region lives in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    pub gpa: u64,
    pub len: u64,
    pub file_offset: u64,
}

/// Writes every region of `mem` to `file` (which must be empty), returning the layout.
/// Pages the guest never touched (neither present nor swapped, says /proc/self/pagemap) are
/// not even read: a 1 GiB guest that used 40 MiB costs 40 MiB of reading.
/// `pagemap` is this process's /proc/self/pagemap (`None`: every page is read).
pub fn dump(
    mem: &GuestMemoryMmap,
    file: &File,
    pagemap: Option<&File>,
) -> Result<Vec<RegionState>, SnapshotError> {
    let mut layout = Vec::new();
    let mut offset = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let mut entries = vec![0u8; CHUNK / PAGE * 8];
    for region in mem.iter() {
        let (gpa, len) = (region.start_addr().0, region.len());
        file.set_len(offset + len).map_err(SnapshotError::Write)?;
        let host = mem
            .get_host_address(GuestAddress(gpa))
            .map_err(|e| SnapshotError::Memory(e.to_string()))? as u64;
        // Memory mapped from a file (a VM restored from a template or a checkpoint): a page
        // it never touched is not in the page table, yet holds the file's data.
        let backing = region.file_offset().map(|fo| (fo.file(), fo.start()));
        let mut done = 0u64;
        while done < len {
            let n = CHUNK.min((len - done) as usize);
            let touched = pagemap.is_none_or(|pm| any_touched(pm, host + done, n, &mut entries))
                || backing.is_some_and(|(f, at)| has_data(f, at + done, n as u64));
            if !touched {
                done += n as u64;
                continue;
            }
            mem.read_slice(&mut buf[..n], GuestAddress(gpa + done))
                .map_err(|e| SnapshotError::Memory(e.to_string()))?;
            write_nonzero(file, &buf[..n], offset + done)?;
            done += n as u64;
        }
        layout.push(RegionState {
            gpa,
            len,
            file_offset: offset,
        });
        offset += len;
    }
    file.sync_all().map_err(SnapshotError::Write)?;
    Ok(layout)
}

/// Whether any page of the `len` bytes at host address `addr` was ever touched: present or
/// swapped out (bits 63 and 62 of its /proc/self/pagemap entry). Unsure means yes.
fn any_touched(pagemap: &File, addr: u64, len: usize, entries: &mut [u8]) -> bool {
    let pages = len.div_ceil(PAGE);
    let buf = &mut entries[..pages * 8];
    if pagemap.read_exact_at(buf, addr / PAGE as u64 * 8).is_err() {
        return true;
    }
    buf.chunks_exact(8).any(|e| {
        let entry = u64::from_le_bytes(e.try_into().unwrap_or([0xff; 8]));
        entry & (3 << 62) != 0
    })
}

/// Whether `file` holds data (not a hole) in the `len` bytes at `at`. Unsure means yes.
fn has_data(file: &File, at: u64, len: u64) -> bool {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(at)) {
        Ok(next) => next < at + len,
        // No data from `at` to the end.
        Err(rustix::io::Errno::NXIO) => false,
        Err(_) => true,
    }
}

/// Writes the runs of non-zero pages of `data` at `at`, leaving holes for zero pages.
fn write_nonzero(file: &File, data: &[u8], at: u64) -> Result<(), SnapshotError> {
    static ZERO: [u8; PAGE] = [0; PAGE];
    // Slice equality is a memcmp, fast even in a debug build.
    let zero = |p: &[u8]| p == &ZERO[..p.len()];
    let pages: Vec<&[u8]> = data.chunks(PAGE).collect();
    let mut i = 0;
    while i < pages.len() {
        if zero(pages[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < pages.len() && !zero(pages[i]) {
            i += 1;
        }
        let from = start * PAGE;
        let to = (i * PAGE).min(data.len());
        file.write_all_at(&data[from..to], at + from as u64)
            .map_err(SnapshotError::Write)?;
    }
    Ok(())
}

/// The runs of holes at least `min` bytes long in `file` between `start` and `end`, as
/// page-aligned `(from, to)` offsets: the gaps between [`data_runs`]. A file system that
/// cannot tell holes has none.
fn holes(file: &File, start: u64, end: u64, min: u64) -> Vec<(u64, u64)> {
    let page = PAGE as u64;
    let mut out = Vec::new();
    let mut at = start;
    // The gap before each run of data, and the one after the last (up to `end`).
    for (data, hole) in data_runs(file, start, end).into_iter().chain([(end, end)]) {
        let (from, to) = (at.next_multiple_of(page), data / page * page);
        if to > from && to - from >= min {
            out.push((from, to));
        }
        at = hole;
    }
    out
}

/// Maps region `r` of `file`: copy-on-write, at a host address lined up with its guest
/// address, its long holes anonymous (see the module comment).
///
/// The mapping is never unmapped: a restored VM's memory lasts as long as its VMM process,
/// which runs that one VM (vm-memory unmaps only what it mapped itself, and it cannot be told
/// where to map).
fn map_region(file: &Arc<File>, r: &RegionState) -> Result<GuestRegionMmap, SnapshotError> {
    let len =
        usize::try_from(r.len).map_err(|_| SnapshotError::Corrupt("region too large".into()))?;
    let map_err = |what: &str, e: rustix::io::Errno| SnapshotError::Memory(format!("{what}: {e}"));
    let reserved = Reserved::aligned(len, r.gpa)
        .map_err(|e| SnapshotError::Memory(format!("reserving {len} bytes: {e}")))?;
    let rw = mm::ProtFlags::READ | mm::ProtFlags::WRITE;
    let fixed = mm::MapFlags::PRIVATE | mm::MapFlags::FIXED | mm::MapFlags::NORESERVE;
    // SAFETY: the mapping replaces the reservation, which this function owns and nobody else
    // refers to; the caller checked that the file holds `len` bytes at `file_offset`.
    unsafe { mm::mmap(reserved.addr(), len, rw, fixed, file.as_fd(), r.file_offset) }
        .map_err(|e| map_err("mapping the memory file", e))?;
    for (from, to) in holes(file, r.file_offset, r.file_offset + r.len, ANON_HOLE_MIN) {
        let at = (from - r.file_offset) as usize;
        // SAFETY: `at..at + (to - from)` lies inside the mapping just made, which nothing has
        // read or written yet; its pages are holes of the file, all zero, and so are the
        // anonymous pages that replace them.
        unsafe {
            mm::mmap_anonymous(
                reserved.addr().cast::<u8>().add(at).cast(),
                (to - from) as usize,
                rw,
                fixed,
            )
        }
        .map_err(|e| map_err("mapping a hole of the memory file", e))?;
        // SAFETY: the anonymous mapping just made, which nothing refers to yet.
        unsafe {
            crate::vmm::memory::advise_huge(
                reserved.addr().cast::<u8>().add(at).cast(),
                (to - from) as usize,
            )
        };
    }
    let fo = FileOffset::from_arc(file.clone(), r.file_offset);
    // SAFETY: the file and the holes are mapped over the whole reservation just above.
    let region = unsafe { reserved.into_region(libc::MAP_PRIVATE | libc::MAP_NORESERVE, Some(fo)) }
        .map_err(|e| SnapshotError::Memory(e.to_string()))?;
    GuestRegionMmap::new(region, GuestAddress(r.gpa))
        .ok_or_else(|| SnapshotError::Corrupt(format!("bad region at {:#x}", r.gpa)))
}

/// The runs of data (not holes) in `file` between `start` and `end`. A file system that
/// cannot tell holes has one run: all of it.
fn data_runs(file: &File, start: u64, end: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom};
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let data = match seek(file, SeekFrom::Data(at)) {
            Ok(data) if data < end => data,
            Ok(_) | Err(rustix::io::Errno::NXIO) => break,
            Err(_) => {
                out.push((at, end));
                break;
            }
        };
        let hole = seek(file, SeekFrom::Hole(data)).map_or(end, |h| h.min(end));
        out.push((data, hole));
        at = hole;
    }
    out
}

/// The length of `file`, once checked to hold every region of `layout`: a mapping past its
/// end would fault (SIGBUS) when the guest touches it.
fn check_layout(file: &File, layout: &[RegionState]) -> Result<u64, SnapshotError> {
    let file_len = file
        .metadata()
        .map_err(|e| SnapshotError::Read("memory file".into(), e))?
        .len();
    for r in layout {
        let end = r.file_offset.checked_add(r.len);
        if end.is_none_or(|e| e > file_len) {
            return Err(SnapshotError::Corrupt(format!(
                "the memory file ({file_len} bytes) is shorter than its layout says"
            )));
        }
    }
    Ok(file_len)
}

/// Maps `file` as guest memory with `layout` (see [`map_region`]).
pub fn map_private(file: File, layout: &[RegionState]) -> Result<GuestMemoryMmap, SnapshotError> {
    check_layout(&file, layout)?;
    let file = Arc::new(file);
    let mut regions = Vec::with_capacity(layout.len());
    for r in layout {
        regions.push(map_region(&file, r)?);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| SnapshotError::Corrupt(e.to_string()))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::vmm::memory::tests::huge_advised_at;
    use crate::vmm::memory::HUGE;
    use std::io::Read;

    /// Chunks the guest never touched are skipped (never read, so never faulted in), and
    /// the touched ones still land where they belong.
    #[test]
    fn untouched_chunks_are_skipped_and_touched_ones_kept() {
        let len = 3 * CHUNK;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)]).unwrap();
        let at = GuestAddress((CHUNK + 5 * PAGE + 7) as u64);
        mem.write_slice(b"middle", at).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let pagemap = File::open("/proc/self/pagemap").ok();
        let layout = dump(&mem, &File::create(&path).unwrap(), pagemap.as_ref()).unwrap();
        let pm = File::open("/proc/self/pagemap").unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        let mut entries = vec![0u8; CHUNK / PAGE * 8];
        assert!(
            !any_touched(&pm, host, CHUNK, &mut entries),
            "the dump did not fault in the first chunk"
        );
        assert!(any_touched(&pm, host + CHUNK as u64, CHUNK, &mut entries));
        let restored = map_private(File::open(&path).unwrap(), &layout).unwrap();
        let mut b = [0u8; 6];
        restored.read_slice(&mut b, at).unwrap();
        assert_eq!(&b, b"middle");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len as u64);
    }

    /// `mem` with "data" written at each of `data_at`, dumped into a memory file in a new
    /// directory (kept alive by the caller): the directory, the file and its layout.
    pub(in crate::vmm::snapshot) fn dumped_with_data(
        mem: &GuestMemoryMmap,
        data_at: &[u64],
    ) -> (tempfile::TempDir, std::path::PathBuf, Vec<RegionState>) {
        for &at in data_at {
            mem.write_slice(b"data", GuestAddress(at)).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let layout = dump(mem, &File::create(&path).unwrap(), None).unwrap();
        (dir, path, layout)
    }

    /// The inode of the mapping holding `addr` in /proc/self/maps (0: anonymous).
    fn inode_at(addr: u64) -> u64 {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (a, b) = f[0].split_once('-').unwrap();
            let (a, b) = (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            );
            if (a..b).contains(&addr) {
                return f[4].parse().unwrap();
            }
        }
        panic!("{addr:#x} is not mapped");
    }

    /// A long hole is mapped anonymous, short ones and data stay file-backed, and the guest
    /// sees the same bytes either way.
    #[test]
    fn long_holes_are_mapped_anonymous() {
        let mib = 1u64 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 12 << 20)]).unwrap();
        // Data at 0, a 3 MiB + 1 page hole, data at 3 MiB + 2 pages, a 1 MiB hole (short),
        // data at 4.5 MiB, then a hole to the end.
        let data_at = [0, 3 * mib + 2 * PAGE as u64, 4 * mib + mib / 2];
        let (dir, path, layout) = dumped_with_data(&mem, &data_at);
        let file = File::open(&path).unwrap();
        let found = holes(&file, 0, 12 * mib, ANON_HOLE_MIN);
        assert_eq!(
            found,
            vec![
                (PAGE as u64, 3 * mib + 2 * PAGE as u64),
                (4 * mib + mib / 2 + PAGE as u64, 12 * mib)
            ]
        );
        assert_eq!(holes(&file, mib, 2 * mib, 0), vec![(mib, 2 * mib)]);

        let restored = map_private(file, &layout).unwrap();
        let host = restored.get_host_address(GuestAddress(0)).unwrap() as u64;
        assert_eq!(host % HUGE as u64, 0, "lined up for huge pages");
        let file_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert_eq!(inode_at(host), file_inode);
        assert_eq!(
            inode_at(host + 2 * mib),
            0,
            "the first long hole is anonymous"
        );
        assert_eq!(inode_at(host + 4 * mib), file_inode, "a short hole stays");
        assert_eq!(inode_at(host + 10 * mib), 0, "the last hole is anonymous");
        // The holes ask for transparent huge pages (where the host has them); the file's
        // copy-on-write pages are 4 KiB whatever is asked.
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists();
        assert_eq!(huge_advised_at(host + 2 * mib), thp);
        assert_eq!(huge_advised_at(host + 10 * mib), thp);
        assert!(!huge_advised_at(host));
        for at in data_at {
            let mut b = [0u8; 4];
            restored.read_slice(&mut b, GuestAddress(at)).unwrap();
            assert_eq!(&b, b"data");
        }
        let mut b = vec![1u8; 2 * mib as usize];
        restored.read_slice(&mut b, GuestAddress(mib)).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        restored
            .write_slice(b"guest write", GuestAddress(2 * mib))
            .unwrap();
        let pagemap = File::open("/proc/self/pagemap").ok();
        let again = dir.path().join("again");
        dump(&restored, &File::create(&again).unwrap(), pagemap.as_ref()).unwrap();
        let bytes = std::fs::read(&again).unwrap();
        assert_eq!(&bytes[2 << 20..(2 << 20) + 11], b"guest write");
        assert_eq!(
            &bytes[data_at[2] as usize..data_at[2] as usize + 4],
            b"data"
        );
    }

    #[test]
    fn dump_then_map_private_round_trips_and_never_writes_the_file() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 8 * PAGE),
            (GuestAddress(0x10_0000), 4 * PAGE),
        ])
        .unwrap();
        mem.write_slice(b"first", GuestAddress(PAGE as u64 * 3))
            .unwrap();
        mem.write_slice(b"second", GuestAddress(0x10_0000 + 5))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let file = File::create(&path).unwrap();
        let layout = dump(&mem, &file, None).unwrap();
        assert_eq!(layout.len(), 2);
        assert_eq!(layout[1].file_offset, 8 * PAGE as u64);
        let mut before = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut before).unwrap();
        assert_eq!(before.len(), 12 * PAGE);
        let second = Reserved::aligned(4 * PAGE, 0x10_0000).unwrap();
        assert_eq!(
            second.addr() as usize % HUGE,
            0x10_0000,
            "congruent with its guest address"
        );
        // Zero pages are holes.
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap());
        assert!(blocks * 512 < 12 * PAGE as u64, "{blocks} blocks");

        let restored = map_private(File::open(&path).unwrap(), &layout).unwrap();
        let mut b = [0u8; 6];
        restored
            .read_slice(&mut b[..5], GuestAddress(PAGE as u64 * 3))
            .unwrap();
        assert_eq!(&b[..5], b"first");
        restored
            .read_slice(&mut b, GuestAddress(0x10_0005))
            .unwrap();
        assert_eq!(&b, b"second");
        restored
            .write_slice(b"guest write", GuestAddress(0))
            .unwrap();
        let mut after = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut after).unwrap();
        assert_eq!(before, after, "the file is never written through");

        // Saved again (a checkpoint of a restored VM): what the guest wrote, and the file's
        // data in pages this process never touched (not present, yet not zero).
        let pagemap = File::open("/proc/self/pagemap").ok();
        let resave = |mem: &GuestMemoryMmap, name: &str| {
            let again = dir.path().join(name);
            let layout2 = dump(mem, &File::create(&again).unwrap(), pagemap.as_ref()).unwrap();
            assert_eq!(layout2, layout);
            let mut bytes = Vec::new();
            File::open(&again).unwrap().read_to_end(&mut bytes).unwrap();
            bytes
        };
        let untouched = map_private(File::open(&path).unwrap(), &layout).unwrap();
        assert_eq!(resave(&untouched, "untouched"), before);
        let mut expected = before.clone();
        expected[..11].copy_from_slice(b"guest write");
        assert_eq!(resave(&restored, "written"), expected);

        // A layout that needs more than the file has is refused, not mapped.
        let mut long = layout.clone();
        long[1].len = 64 * PAGE as u64;
        assert!(matches!(
            map_private(File::open(&path).unwrap(), &long),
            Err(SnapshotError::Corrupt(_))
        ));
    }
}
