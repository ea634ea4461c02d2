//! Guest memory in a snapshot: written once to a file (regions one after another, all-zero
//! pages left as holes), and mapped back copy-on-write (`MAP_PRIVATE`): pages load from the
//! page cache on first touch, shared by every VM restored from the same file, and the guest's
//! writes go to private copies, never to the file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use super::SnapshotError;

/// What is copied from guest memory at a time.
const CHUNK: usize = 1 << 20;
/// The unit of holes in the memory file.
const PAGE: usize = 4096;

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

/// Maps `file` as guest memory with `layout`, copy-on-write.
pub fn map_private(file: File, layout: &[RegionState]) -> Result<GuestMemoryMmap, SnapshotError> {
    let file_len = file
        .metadata()
        .map_err(|e| SnapshotError::Read("memory file".into(), e))?
        .len();
    let file = Arc::new(file);
    let mut regions = Vec::with_capacity(layout.len());
    for r in layout {
        // A mapping past the end of the file would fault (SIGBUS) when the guest touches it.
        let end = r.file_offset.checked_add(r.len);
        if end.is_none_or(|e| e > file_len) {
            return Err(SnapshotError::Corrupt(format!(
                "the memory file ({file_len} bytes) is shorter than its layout says"
            )));
        }
        let len = usize::try_from(r.len)
            .map_err(|_| SnapshotError::Corrupt("region too large".into()))?;
        let region = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::from_arc(file.clone(), r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| SnapshotError::Memory(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(r.gpa))
            .ok_or_else(|| SnapshotError::Corrupt(format!("bad region at {:#x}", r.gpa)))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| SnapshotError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
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
