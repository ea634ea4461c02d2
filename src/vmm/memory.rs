//! Guest RAM: anonymous memory mapped by vm-memory and registered with KVM, one slot per
//! region (below the MMIO gap, and above 4 GiB for large VMs).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

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

/// Maps guest RAM of `mem_mib` MiB (lazily: pages are touched by the guest, not here).
pub fn create(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    check_size(mem_mib)?;
    GuestMemoryMmap::from_ranges(&ram_regions(mem_mib << 20))
        .map_err(|e| MemoryError::Allocate(mem_mib, e))
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
        let mem = create(64).unwrap();
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 64 << 20);
    }
}
