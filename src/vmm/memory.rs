//! Guest RAM: memory mapped by vm-memory and registered with KVM, one slot per region (below
//! the MMIO gap, and above 4 GiB for large VMs).
//!
//! Anonymous private memory, also for a VM with virtio-fs devices: their file servers map
//! only bounce memory of brig's (see `devices::virtio::fs_relay`), never guest RAM.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use std::ffi::c_void;
use std::ptr::null_mut;

use rustix::mm;
use vm_memory::mmap::{MmapRegion, MmapRegionBuilder};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::arch::x86_64::bootparams::ram_regions;

/// Smallest guest RAM brig accepts, in MiB.
pub const MIN_MEM_MIB: u64 = 32;

/// Guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Less than the minimum.
    #[error("--mem {0} MiB is too small (at least {MIN_MEM_MIB} MiB)")]
    TooSmall(u64),
    /// More than the host has.
    #[error("--mem {asked} MiB is more than this host's {host} MiB of memory")]
    TooLarge { asked: u64, host: u64 },
    /// mmap failed.
    #[error("cannot allocate {0} MiB of guest memory: {1}")]
    Allocate(u64, #[source] std::io::Error),
    /// A region just mapped has no host address (cannot happen with mmap'd regions).
    #[error("guest memory region at {0:#x} has no host address: {1}")]
    HostAddress(u64, #[source] vm_memory::GuestMemoryError),
    /// KVM refused a memory slot.
    #[error("cannot register guest memory with KVM: {0}")]
    Register(kvm_ioctls::Error),
}

/// Huge page size. Guest RAM is mapped at a host address congruent to its guest address
/// modulo this: KVM maps guest memory with huge pages only where both line up, and only where
/// the host backs it with a huge page (transparent ones, in anonymous memory). Linux 6.7 and
/// later line up large anonymous mappings by themselves; older kernels, and file mappings
/// (a restored VM's), do not.
pub(crate) const HUGE: usize = 2 << 20;

/// Asks for transparent huge pages behind the guest RAM at `addr` (`MADV_HUGEPAGE`), as
/// QEMU and Cloud Hypervisor do: on a host whose THP setting is `madvise` (Debian's default)
/// anonymous memory gets them only so. Each 4 KiB page the guest touches first is otherwise
/// a nested page fault of its own, where a huge page takes one per 2 MiB and KVM maps it
/// with one entry. A host without THP refuses the advice:
/// nothing changes then.
///
/// # Safety
/// `addr..addr + len` must be a mapping of the caller's; the advice changes no content.
pub(crate) unsafe fn advise_huge(addr: *mut c_void, len: usize) {
    // SAFETY: the caller owns the range; MADV_HUGEPAGE only changes how pages are backed.
    if let Err(e) = unsafe { mm::madvise(addr, len, mm::Advice::LinuxHugepage) } {
        tracing::debug!("MADV_HUGEPAGE on guest memory: {e}");
    }
}

/// An address range reserved (mapped inaccessible) until it is given away with
/// [`Reserved::keep`]; unmapped if dropped before that.
pub(crate) struct Reserved {
    addr: *mut c_void,
    len: usize,
}

impl Reserved {
    /// `len` bytes at an address congruent to `gpa` modulo [`HUGE`].
    pub(crate) fn aligned(len: usize, gpa: u64) -> std::io::Result<Self> {
        let span = len
            .checked_add(HUGE)
            .ok_or(std::io::ErrorKind::OutOfMemory)?;
        // SAFETY: a new inaccessible mapping where the kernel chooses; nothing else changes.
        let raw = unsafe {
            mm::mmap_anonymous(
                null_mut(),
                span,
                mm::ProtFlags::empty(),
                mm::MapFlags::PRIVATE | mm::MapFlags::NORESERVE,
            )
        }?;
        let start = raw as usize;
        let want = (gpa % HUGE as u64) as usize;
        let mut base = start - start % HUGE + want;
        if base < start {
            base += HUGE;
        }
        // `base - start < HUGE`, so `base..base + len` lies inside the span; give back the
        // rest, before and after it.
        for (at, n) in [
            (start, base - start),
            (base + len, start + span - (base + len)),
        ] {
            if n > 0 {
                // SAFETY: `at..at + n` is part of the span mapped above and outside what is
                // kept; nothing refers to it.
                let _ = unsafe { mm::munmap(at as *mut c_void, n) };
            }
        }
        Ok(Self {
            addr: base as *mut c_void,
            len,
        })
    }

    /// Where the range starts.
    pub(crate) fn addr(&self) -> *mut c_void {
        self.addr
    }

    /// The range as a vm-memory region, once the caller has mapped `len` bytes over it with
    /// `flags` (and `file`, if any). It is never unmapped: guest RAM lasts as long as the VMM
    /// process, which runs one VM (vm-memory unmaps only what it mapped itself, and it cannot
    /// be told where to map).
    ///
    /// # Safety
    ///
    /// The whole range must be mapped readable and writable, by the caller, over the
    /// reservation.
    pub(crate) unsafe fn into_region(
        self,
        flags: i32,
        file: Option<FileOffset>,
    ) -> std::io::Result<MmapRegion> {
        let (addr, len) = (self.addr, self.len);
        std::mem::forget(self);
        let mut builder = MmapRegionBuilder::new(len)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags);
        if let Some(fo) = file {
            builder = builder.with_file_offset(fo);
        }
        // SAFETY: `len` bytes are mapped at `addr` (the caller's promise) and stay mapped for
        // the life of the process: the reservation was forgotten, so nothing unmaps them.
        unsafe { builder.with_raw_mmap_pointer(addr.cast()) }
            .build()
            .map_err(std::io::Error::other)
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        // SAFETY: the range is this reservation's own and nothing was handed a pointer to it.
        let _ = unsafe { mm::munmap(self.addr, self.len) };
    }
}

/// One region of guest RAM, `len` bytes at `gpa`: anonymous, lined up for huge pages.
fn map_region(gpa: u64, len: usize) -> std::io::Result<GuestRegionMmap> {
    let reserved = Reserved::aligned(len, gpa)?;
    let rw = mm::ProtFlags::READ | mm::ProtFlags::WRITE;
    // SAFETY: the mapping replaces the reservation, which this function owns and nobody
    // else refers to.
    unsafe {
        mm::mmap_anonymous(
            reserved.addr(),
            len,
            rw,
            mm::MapFlags::PRIVATE | mm::MapFlags::FIXED,
        )
    }?;
    // SAFETY: the whole reservation was mapped just above and nothing refers to it yet.
    unsafe { advise_huge(reserved.addr(), len) };
    // SAFETY: mapped over the whole reservation just above.
    let region = unsafe { reserved.into_region(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, None) }?;
    GuestRegionMmap::new(region, GuestAddress(gpa))
        .ok_or_else(|| std::io::Error::other(format!("bad region at {gpa:#x}")))
}

/// Total memory of the host in MiB, from /proc/meminfo.
fn host_mem_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Checks `mem_mib` against the minimum and the host's memory.
pub fn check_size(mem_mib: u64) -> Result<(), MemoryError> {
    if mem_mib < MIN_MEM_MIB {
        return Err(MemoryError::TooSmall(mem_mib));
    }
    if let Some(host) = host_mem_mib() {
        if mem_mib > host {
            return Err(MemoryError::TooLarge {
                asked: mem_mib,
                host,
            });
        }
    }
    Ok(())
}

/// Maps guest RAM of `mem_mib` MiB (lazily: pages are touched by the guest, not here).
pub fn create(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    check_size(mem_mib)?;
    let mut mapped = Vec::new();
    for (addr, len) in ram_regions(mem_mib << 20) {
        mapped.push(map_region(addr.0, len).map_err(|e| MemoryError::Allocate(mem_mib, e))?);
    }
    GuestMemoryMmap::from_regions(mapped)
        .map_err(|e| MemoryError::Allocate(mem_mib, std::io::Error::other(e.to_string())))
}

/// Registers every region of `mem` with the VM.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host_addr = mem
            .get_host_address(region.start_addr())
            .map_err(|e| MemoryError::HostAddress(region.start_addr().0, e))?;
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM (the VM
        // and its vCPUs are torn down before guest memory is dropped).
        unsafe { vm.set_user_memory_region(desc) }.map_err(MemoryError::Register)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn size_bounds() {
        assert!(matches!(check_size(16), Err(MemoryError::TooSmall(16))));
        assert!(matches!(
            check_size(1 << 40),
            Err(MemoryError::TooLarge { .. })
        ));
        check_size(64).unwrap();
        let mem = create(64).unwrap();
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 64 << 20);
        let host = mem.get_host_address(vm_memory::GuestAddress(0)).unwrap();
        assert_eq!(host as usize % HUGE, 0, "lined up for huge pages");
        vm_memory::Bytes::write_slice(&mem, b"ram", vm_memory::GuestAddress(63 << 20)).unwrap();
    }

    /// Whether this process's mapping holding `addr` is advised for huge pages (`hg` in its
    /// VmFlags in /proc/self/smaps); panics when nothing maps `addr`.
    pub(crate) fn huge_advised_at(addr: u64) -> bool {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| {
                    Some((
                        u64::from_str_radix(a, 16).ok()?,
                        u64::from_str_radix(b, 16).ok()?,
                    ))
                });
            if let Some((a, b)) = range {
                inside = (a..b).contains(&addr);
            } else if inside && line.starts_with("VmFlags:") {
                return line.split_whitespace().any(|f| f == "hg");
            }
        }
        panic!("{addr:#x} is not mapped");
    }

    /// Guest RAM is advised for transparent huge pages (`hg`), where the host has them.
    #[test]
    fn guest_ram_asks_for_huge_pages() {
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists();
        let mem = create(64).unwrap();
        let host = mem.get_host_address(vm_memory::GuestAddress(0)).unwrap() as u64;
        assert_eq!(huge_advised_at(host), thp);
    }
}
