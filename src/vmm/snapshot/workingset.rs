//! A template's working set: the pages of its memory file that a restored run had touched by
//! the time its workload started. The first run restored from a template records it (its
//! keeper reads the VMM's page map: [`WorkingSet::record`]); every later restore maps those
//! pages into the guest before the vCPUs run ([`prefault`]).
//!
//! Without it, each page a restored guest touches first costs a nested page fault: a VM exit,
//! a host page fault on the copy-on-write mapping of the memory file, and for a page it
//! writes a second exit for the copy. Counted in one `brig run --network none bb true`
//! restored from a template (`perf stat -e kvm:kvm_page_fault`): 3420 of its 3981 exits.
//! With the working set, the pages it wrote are copied ahead (`MADV_POPULATE_WRITE`) and all
//! of them are entered into KVM's page tables with `KVM_PRE_FAULT_MEMORY` (Linux 6.10), with
//! no exit; where KVM lacks that, the host's page tables are filled (`MADV_POPULATE_READ`),
//! which leaves the exits but makes each one cheaper. (Firecracker's and E2B's answer to the
//! same cost is a userfaultfd handler that prefetches a recorded set; this is its in-kernel
//! form, without a second process.)
//!
//! The file is versioned and checksummed like a state file ([`super::format`]), and every
//! range is checked against the snapshot's memory layout before it is used: a bad one is
//! ignored and the restore goes on without it (it only ever costs speed).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{format, RegionState, SnapshotError};

/// The working set in a snapshot directory (absent until a restored run recorded it).
pub const WORKING_SET_FILE: &str = "workingset";
const PAGE: u64 = 4096;
/// The most ranges a working set may hold (a few hundred is usual).
const MAX_RANGES: usize = 1 << 16;
/// Page map entries read at a time.
const PAGEMAP_CHUNK: u64 = 1 << 16;
/// Pagemap entries: present, and mapping a file page (set) or a private copy (clear).
const PM_PRESENT: u64 = 1 << 63;
const PM_FILE: u64 = 1 << 61;
/// `KVM_CAP_PRE_FAULT_MEMORY` and `KVM_PRE_FAULT_MEMORY`
/// (`_IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory)`, 64 bytes).
const KVM_CAP_PRE_FAULT_MEMORY: libc::c_ulong = 236;
const KVM_PRE_FAULT_MEMORY: libc::c_ulong = 0xc040_aed5;

/// Consecutive pages of the memory file, and whether the run wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// Offset in the memory file (page-aligned).
    pub offset: u64,
    /// Length in bytes (whole pages).
    pub len: u64,
    /// Whether the guest wrote them (the run held private copies).
    pub written: bool,
}

/// The pages a restored run touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingSet {
    pub ranges: Vec<Range>,
}

/// What [`prefault`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefaulted {
    /// Pages entered into the guest's page tables (`KVM_PRE_FAULT_MEMORY`).
    pub mapped: u64,
    /// Pages only entered into the host's (the fallback).
    pub populated: u64,
}

impl WorkingSet {
    /// Its size in pages.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.len / PAGE).sum()
    }

    /// Writes it into the snapshot directory `dir`, atomically (a new file, then renamed).
    pub fn save(&self, dir: &Path) -> Result<(), SnapshotError> {
        let bytes = format::encode(self)?;
        crate::atomic::write(&dir.join(WORKING_SET_FILE), &bytes, 0o644)
            .map_err(SnapshotError::Write)
    }

    /// The working set saved in `dir`: `None` when there is none.
    pub fn load(dir: &Path) -> Option<Result<Self, SnapshotError>> {
        let path = dir.join(WORKING_SET_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Some(format::decode(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(SnapshotError::Read(WORKING_SET_FILE.into(), e))),
        }
    }

    /// Checks every range against `layout` (page-aligned, inside one region's part of the
    /// memory file), and their number.
    pub fn check(&self, layout: &[RegionState]) -> Result<(), SnapshotError> {
        if self.ranges.len() > MAX_RANGES {
            return Err(SnapshotError::Corrupt(
                "the working set has too many ranges".into(),
            ));
        }
        for r in &self.ranges {
            let fits = r.offset % PAGE == 0
                && r.len % PAGE == 0
                && r.len > 0
                && region_of(layout, r).is_some();
            if !fits {
                return Err(SnapshotError::Corrupt(format!(
                    "working set range {:#x}+{:#x} is outside the memory file's layout",
                    r.offset, r.len
                )));
            }
        }
        Ok(())
    }

    /// The pages of `memory` (a snapshot's memory file, laid out as `layout`) that process
    /// `pid` has mapped now, from its `/proc/PID/maps` and `/proc/PID/pagemap` (present pages,
    /// and which are private copies). Two kinds of mapping hold them: the memory file's own
    /// (found by device and inode), and the anonymous mappings that stand for the file's long
    /// holes inside a region's mapping (see [`super::memory`]; their pages are the guest's
    /// first writes there, taken as written). Without the last, every page a restored guest takes from
    /// its free memory on the way to its workload cost an exit on every restore.
    pub fn record(pid: u32, memory: &Path, layout: &[RegionState]) -> io::Result<Self> {
        let meta = std::fs::metadata(memory)?;
        let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let lines: Vec<MapsLine> = maps.lines().filter_map(parse_maps_line).collect();
        let the_file = |m: &MapsLine| m.dev == (major, minor) && m.inode == meta.ino();
        // Where each region's mapping starts, as the file's own mappings place it.
        let mut bases: Vec<(u64, RegionState)> = Vec::new();
        for m in lines.iter().filter(|m| the_file(m)) {
            let Some(g) = layout
                .iter()
                .find(|g| m.offset >= g.file_offset && m.offset - g.file_offset < g.len)
            else {
                continue;
            };
            if let Some(base) = m.start.checked_sub(m.offset - g.file_offset) {
                if !bases.contains(&(base, *g)) {
                    bases.push((base, *g));
                }
            }
        }
        let mut pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
        let mut set = Self::default();
        for m in &lines {
            let (start, end, offset, written_all) = if the_file(m) {
                (m.start, m.end, m.offset, false)
            } else if m.inode == 0 && m.path.is_empty() {
                // An anonymous mapping inside a region's: a hole of the file.
                let Some((base, g)) = bases
                    .iter()
                    .find(|(base, g)| m.start >= *base && m.start - base < g.len)
                else {
                    continue;
                };
                let end = m.end.min(base + g.len);
                (m.start, end, g.file_offset + (m.start - base), true)
            } else {
                continue;
            };
            // In chunks: a large guest's page map is 2 MiB per GiB.
            let pages = (end - start) / PAGE;
            let mut entries = vec![0u8; (PAGEMAP_CHUNK * 8) as usize];
            pagemap.seek(SeekFrom::Start(start / PAGE * 8))?;
            let mut page = 0;
            while page < pages {
                let n = (pages - page).min(PAGEMAP_CHUNK);
                let chunk = &mut entries[..(n * 8) as usize];
                pagemap.read_exact(chunk)?;
                for (i, e) in chunk.chunks_exact(8).enumerate() {
                    let e = u64::from_le_bytes(e.try_into().unwrap_or_default());
                    if e & PM_PRESENT != 0 {
                        let written = written_all || e & PM_FILE == 0;
                        set.push(offset + (page + i as u64) * PAGE, written);
                    }
                }
                page += n;
            }
        }
        Ok(set)
    }

    /// Adds the page at `offset`, merged into the last range when it continues it.
    fn push(&mut self, offset: u64, written: bool) {
        if let Some(last) = self.ranges.last_mut() {
            if last.offset + last.len == offset && last.written == written {
                last.len += PAGE;
                return;
            }
        }
        self.ranges.push(Range {
            offset,
            len: PAGE,
            written,
        });
    }
}

/// The region of `layout` whose part of the memory file holds all of `r`.
fn region_of<'a>(layout: &'a [RegionState], r: &Range) -> Option<&'a RegionState> {
    let end = r.offset.checked_add(r.len)?;
    layout
        .iter()
        .find(|g| r.offset >= g.file_offset && end <= g.file_offset.saturating_add(g.len))
}

/// One line of /proc/PID/maps: its addresses, file offset, device and inode.
#[derive(Debug, PartialEq, Eq)]
struct MapsLine {
    start: u64,
    end: u64,
    offset: u64,
    dev: (u32, u32),
    inode: u64,
    /// The mapped file's path as the kernel shows it ("" for an anonymous mapping).
    path: String,
}

fn parse_maps_line(line: &str) -> Option<MapsLine> {
    let mut f = line.split_whitespace();
    let (start, end) = f.next()?.split_once('-')?;
    let _perms = f.next()?;
    let offset = f.next()?;
    let (major, minor) = f.next()?.split_once(':')?;
    let inode = f.next()?;
    let path = f.collect::<Vec<_>>().join(" ");
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    let m = MapsLine {
        start: hex(start)?,
        end: hex(end)?,
        offset: hex(offset)?,
        dev: (
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        ),
        inode: inode.parse().ok()?,
        path,
    };
    (m.end > m.start && m.start % PAGE == 0 && m.end % PAGE == 0).then_some(m)
}

/// Whether KVM can map guest memory ahead of the vCPUs (`KVM_PRE_FAULT_MEMORY`).
pub fn kvm_can_prefault(kvm: &kvm_ioctls::Kvm) -> bool {
    kvm.check_extension_raw(KVM_CAP_PRE_FAULT_MEMORY) > 0
}

/// Maps `set`'s pages (checked against `layout` with [`WorkingSet::check`]) into the guest
/// whose memory is `mem`, through `vcpu` (its state restored, not yet run); `kvm_prefault`:
/// whether KVM has `KVM_PRE_FAULT_MEMORY`. Stops at the first failure: this only saves time.
///
/// Ranges that follow each other in guest memory are entered with one `KVM_PRE_FAULT_MEMORY`,
/// written or not (their private copies are made first): a template's few hundred ranges
/// are about a hundred runs, and each call is a system call and a walk of KVM's tables.
pub fn prefault(
    vcpu: &kvm_ioctls::VcpuFd,
    mem: &GuestMemoryMmap,
    layout: &[RegionState],
    set: &WorkingSet,
    kvm_prefault: bool,
) -> Prefaulted {
    let mut done = Prefaulted::default();
    // The run of guest memory not yet entered into KVM's tables: (gpa, len).
    let mut run: Option<(u64, u64)> = None;
    let enter = |run: (u64, u64), done: &mut Prefaulted| {
        let ok = pre_fault_memory(vcpu, run.0, run.1).is_ok();
        if ok {
            done.mapped += run.1 / PAGE;
        }
        ok
    };
    for r in &set.ranges {
        let Some(region) = region_of(layout, r) else {
            break;
        };
        let gpa = region.gpa + (r.offset - region.file_offset);
        let Ok(host) = mem.get_host_address(GuestAddress(gpa)) else {
            break;
        };
        let Ok(len) = usize::try_from(r.len) else {
            break;
        };
        // The private copies the run made, made now; then read access to everything.
        if r.written && madvise(host, len, libc::MADV_POPULATE_WRITE).is_err() {
            break;
        }
        if kvm_prefault {
            match &mut run {
                Some((start, n)) if *start + *n == gpa => *n += r.len,
                _ => {
                    if let Some(prev) = run.replace((gpa, r.len)) {
                        if !enter(prev, &mut done) {
                            run = None;
                            break;
                        }
                    }
                }
            }
        } else {
            if !r.written && madvise(host, len, libc::MADV_POPULATE_READ).is_err() {
                break;
            }
            done.populated += r.len / PAGE;
        }
    }
    if let Some(last) = run {
        enter(last, &mut done);
    }
    done
}

fn madvise(host: *mut u8, len: usize, advice: libc::c_int) -> io::Result<()> {
    // SAFETY: `host..host+len` lies inside one guest memory mapping (the range was checked
    // against the layout and translated by vm-memory); populating it only faults pages in.
    if unsafe { libc::madvise(host.cast(), len, advice) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `struct kvm_pre_fault_memory`.
#[repr(C)]
struct KvmPreFaultMemory {
    gpa: u64,
    size: u64,
    flags: u64,
    padding: [u64; 5],
}

/// `KVM_PRE_FAULT_MEMORY` over `gpa..gpa+len`, resumed while KVM reports partial progress.
fn pre_fault_memory(vcpu: &kvm_ioctls::VcpuFd, gpa: u64, len: u64) -> io::Result<()> {
    let mut range = KvmPreFaultMemory {
        gpa,
        size: len,
        flags: 0,
        padding: [0; 5],
    };
    loop {
        // SAFETY: KVM reads and updates `range`, a live struct of the size the ioctl number
        // encodes; the vCPU fd is valid for the call.
        let ret = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_PRE_FAULT_MEMORY, &mut range) };
        if ret == 0 || range.size == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::snapshot::memory::tests::dumped_with_data;

    fn layout() -> Vec<RegionState> {
        vec![
            RegionState {
                gpa: 0,
                len: 16 * PAGE,
                file_offset: 0,
            },
            RegionState {
                gpa: 1 << 32,
                len: 16 * PAGE,
                file_offset: 16 * PAGE,
            },
        ]
    }

    #[test]
    fn pages_merge_into_ranges_by_kind() {
        let mut s = WorkingSet::default();
        for (page, written) in [(0, false), (1, false), (2, true), (3, true), (5, true)] {
            s.push(page * PAGE, written);
        }
        let r = |o: u64, n: u64, w: bool| Range {
            offset: o * PAGE,
            len: n * PAGE,
            written: w,
        };
        assert_eq!(s.ranges, vec![r(0, 2, false), r(2, 2, true), r(5, 1, true)]);
        assert_eq!(s.pages(), 5);
        assert!(s.check(&layout()).is_ok());
    }

    #[test]
    fn ranges_outside_the_layout_or_unaligned_are_refused() {
        let bad = |offset, len| WorkingSet {
            ranges: vec![Range {
                offset,
                len,
                written: false,
            }],
        };
        for (offset, len) in [
            (1, PAGE),                   // unaligned
            (0, PAGE + 1),               // not whole pages
            (0, 0),                      // empty
            (15 * PAGE, 2 * PAGE),       // straddles two regions
            (32 * PAGE, PAGE),           // past the file
            (u64::MAX - PAGE + 1, PAGE), // overflows
        ] {
            assert!(
                bad(offset, len).check(&layout()).is_err(),
                "{offset:#x}+{len:#x}"
            );
        }
        let many = WorkingSet {
            ranges: vec![
                Range {
                    offset: 0,
                    len: PAGE,
                    written: false
                };
                MAX_RANGES + 1
            ],
        };
        assert!(many.check(&layout()).is_err());
    }

    #[test]
    fn saved_sets_load_back_and_damaged_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(WorkingSet::load(dir.path()).is_none());
        let mut s = WorkingSet::default();
        s.push(3 * PAGE, true);
        s.save(dir.path()).unwrap();
        assert_eq!(WorkingSet::load(dir.path()).unwrap().unwrap(), s);
        let path = dir.path().join(WORKING_SET_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(WorkingSet::load(dir.path()).unwrap().is_err());
        // Nothing but the file itself is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(WORKING_SET_FILE)]);
    }

    #[test]
    fn maps_lines_parse() {
        let line = "7f3a00000000-7f3a00004000 rw-p 00010000 00:2f 1234   /run/x/memory";
        assert_eq!(
            parse_maps_line(line),
            Some(MapsLine {
                start: 0x7f3a_0000_0000,
                end: 0x7f3a_0000_4000,
                offset: 0x10000,
                dev: (0, 0x2f),
                inode: 1234,
                path: "/run/x/memory".into(),
            })
        );
        assert_eq!(parse_maps_line("garbage"), None);
        assert_eq!(parse_maps_line("10-5 r--p 0 00:00 0"), None);
    }

    /// This process's own private file mapping: pages read are recorded as file pages, pages
    /// written as private copies, pages never touched not at all.
    #[test]
    fn record_reads_a_live_mapping() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let file = File::create_new(&path).unwrap();
        file.write_all_at(&[1u8; 8 * PAGE as usize], 0).unwrap();
        let file = File::open(&path).unwrap();
        let len = 8 * PAGE as usize;
        // SAFETY: a fresh private mapping of the file, unmapped at the end of the test.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p.cast::<u8>();
        // SAFETY: pages 1 and 2 are read, page 5 written, all inside the mapping.
        unsafe {
            assert_eq!(std::ptr::read_volatile(base.add(PAGE as usize)), 1);
            assert_eq!(std::ptr::read_volatile(base.add(2 * PAGE as usize)), 1);
            std::ptr::write_volatile(base.add(5 * PAGE as usize), 9);
        }
        let layout = [RegionState {
            gpa: 0,
            len: 8 * PAGE,
            file_offset: 0,
        }];
        let set = WorkingSet::record(std::process::id(), &path, &layout).unwrap();
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, len) };
        let r = |o: u64, n: u64, w: bool| Range {
            offset: o * PAGE,
            len: n * PAGE,
            written: w,
        };
        // (Fault-around may map more of the file's cached pages around the ones read.)
        assert!(set.ranges.contains(&r(5, 1, true)), "{set:?}");
        let read: Vec<_> = set.ranges.iter().filter(|r| !r.written).collect();
        assert!(
            read.iter()
                .any(|x| x.offset <= PAGE && x.offset + x.len >= 3 * PAGE),
            "{set:?}"
        );
    }

    /// A restored VM's memory as `map_private` lays it out (the file, its long holes
    /// anonymous): a page written in a hole is recorded at its file offset, as written, beside
    /// the file's pages read; untouched pages of the hole are not.
    #[test]
    fn record_finds_pages_taken_from_holes() {
        use vm_memory::Bytes;
        let mib = 1 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 * mib)]).unwrap();
        let (_dir, path, layout) = dumped_with_data(&mem, &[3 * PAGE]);
        let restored =
            super::super::memory::map_private(File::open(&path).unwrap(), &layout).unwrap();
        let mut b = [0u8; 4];
        restored.read_slice(&mut b, GuestAddress(3 * PAGE)).unwrap();
        assert_eq!(&b, b"data");
        // 9 MiB in: inside the hole that follows the data, mapped anonymous.
        let hole_page = (9 * mib as u64) / PAGE;
        restored
            .write_slice(b"new", GuestAddress(hole_page * PAGE))
            .unwrap();
        let set = WorkingSet::record(std::process::id(), &path, &layout).unwrap();
        let base = layout[0].file_offset;
        let find = |page: u64| {
            set.ranges.iter().find(|r| {
                r.offset <= base + page * PAGE && base + (page + 1) * PAGE <= r.offset + r.len
            })
        };
        assert!(find(3).is_some_and(|r| !r.written), "{set:?}");
        assert!(find(hole_page).is_some_and(|r| r.written), "{set:?}");
        // (A transparent huge page may back the whole 2 MiB around the page written.)
        assert!(find(hole_page + 1024).is_none(), "{set:?}");
        assert!(set.ranges.iter().all(|r| region_of(&layout, r).is_some()));
    }
}
