//! Guest RAM: memory mapped by vm-memory and registered with KVM, one slot per region (below
//! the MMIO gap, and above 4 GiB for large VMs).
//!
//! Anonymous private memory by default. A VM with a virtio-fs device gets its RAM from a
//! memfd mapped shared instead, because its file server (another process) maps guest memory
//! to read the queues and the buffers; shared mappings cost a little on page faults
//! (Firecracker measured up to 24%), so only those VMs pay it.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{FileOffset, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

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
    Allocate(u64, #[source] vm_memory::mmap::FromRangesError),
    /// The memfd for shared guest memory could not be made.
    #[error("cannot create {0} MiB of shareable guest memory: {1}")]
    Memfd(u64, #[source] std::io::Error),
    /// A region just mapped has no host address (cannot happen with mmap'd regions).
    #[error("guest memory region at {0:#x} has no host address: {1}")]
    HostAddress(u64, #[source] vm_memory::GuestMemoryError),
    /// KVM refused a memory slot.
    #[error("cannot register guest memory with KVM: {0}")]
    Register(kvm_ioctls::Error),
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

/// Maps guest RAM of `mem_mib` MiB (lazily: pages are touched by the guest, not here);
/// `shared`: from a memfd another process can map (see the module comment).
pub fn create(mem_mib: u64, shared: bool) -> Result<GuestMemoryMmap, MemoryError> {
    check_size(mem_mib)?;
    let regions = ram_regions(mem_mib << 20);
    if !shared {
        return GuestMemoryMmap::from_ranges(&regions)
            .map_err(|e| MemoryError::Allocate(mem_mib, e));
    }
    let memfd_err = |e: std::io::Error| MemoryError::Memfd(mem_mib, e);
    let fd = rustix::fs::memfd_create(
        "brig-guest-ram",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| memfd_err(e.into()))?;
    let file = std::fs::File::from(fd);
    file.set_len(mem_mib << 20).map_err(memfd_err)?;
    // Regions lie back to back in the file, in guest-address order.
    let mut offset = 0u64;
    let mut ranges = Vec::with_capacity(regions.len());
    for &(addr, len) in &regions {
        let f = file.try_clone().map_err(memfd_err)?;
        ranges.push((addr, len, Some(FileOffset::new(f, offset))));
        offset += len as u64;
    }
    GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(|e| MemoryError::Allocate(mem_mib, e))
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
mod tests {
    use super::*;

    #[test]
    fn size_bounds() {
        assert!(matches!(check_size(16), Err(MemoryError::TooSmall(16))));
        assert!(matches!(
            check_size(1 << 40),
            Err(MemoryError::TooLarge { .. })
        ));
        check_size(64).unwrap();
        let mem = create(64, false).unwrap();
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 64 << 20);
    }

    #[test]
    fn shared_memory_is_one_memfd_seen_by_another_mapping() {
        use std::os::unix::fs::FileExt;
        use vm_memory::{Bytes, GuestAddress};
        let mem = create(64, true).unwrap();
        let region = mem.iter().next().unwrap();
        let fo = region
            .file_offset()
            .expect("shared regions are file-backed");
        assert_eq!(fo.start(), 0);
        mem.write_slice(b"brig", GuestAddress(0x1000)).unwrap();
        // What the guest wrote is in the file (what a vhost-user server maps).
        let mut buf = [0u8; 4];
        fo.file().read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(&buf, b"brig");
    }
}
