//! The zero page (`struct boot_params`) for the Linux 64-bit boot protocol: the setup header
//! fields a boot loader fills (command line, initrd) and the e820 memory map.
//! Documentation/arch/x86/boot.rst and zero-page.rst.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    addr32, CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, ZERO_PAGE_START,
};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// The zero page could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// More e820 entries than the zero page holds.
    #[error("too many e820 entries")]
    E820Full,
    /// The command line is longer than the setup header can say.
    #[error("kernel command line of {0} bytes is too long")]
    CmdlineTooLong(usize),
    /// Guest memory does not hold the zero page.
    #[error("cannot write the zero page to guest memory")]
    Write,
}

/// Guest RAM regions for `mem_size` bytes of RAM: below the MMIO gap, then above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if mem_size > MMIO_GAP_START {
        #[allow(clippy::cast_possible_truncation)] // usize is 64 bits (asserted in layout.rs).
        let high = (mem_size - MMIO_GAP_START) as usize;
        regions.push((GuestAddress(MMIO_GAP_END), high));
    }
    regions
}

/// Highest guest-physical address + 1 of RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// The e820 map: `(address, size, type)` of every usable RAM range.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, EBDA_START, E820_RAM)];
    let low_end = low_ram_end(mem_size);
    if low_end > HIMEM_START {
        map.push((HIMEM_START, low_end - HIMEM_START, E820_RAM));
    }
    if mem_size > MMIO_GAP_START {
        map.push((MMIO_GAP_END, mem_size - MMIO_GAP_START, E820_RAM));
    }
    map
}

/// Where the initrd goes: page-aligned, at the top of RAM below the MMIO gap.
/// `None` when it does not fit above `lowest`.
pub fn initrd_address(mem_size: u64, initrd_size: u64, lowest: u64) -> Option<u64> {
    let top = low_ram_end(mem_size);
    let addr = top.checked_sub(initrd_size)? & !0xfff;
    (addr >= lowest).then_some(addr)
}

/// Builds the zero page.
pub fn build(
    mem_size: u64,
    cmdline_size: usize,
    initrd: Option<(u64, u64)>,
) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = const { addr32(CMDLINE_START) };
    params.hdr.cmdline_size =
        u32::try_from(cmdline_size).map_err(|_| BootParamsError::CmdlineTooLong(cmdline_size))?;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some((addr, size)) = initrd {
        // The low 32 bits here, the high ones in the ext_ fields.
        params.hdr.ramdisk_image = (addr & 0xffff_ffff) as u32;
        params.hdr.ramdisk_size = (size & 0xffff_ffff) as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    let map = e820_map(mem_size);
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::E820Full);
    }
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = u8::try_from(map.len()).map_err(|_| BootParamsError::E820Full)?;
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_START`].
pub fn write(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootParamsError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| BootParamsError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_vm_has_low_ram_only() {
        assert_eq!(
            e820_map(128 * MIB),
            vec![
                (0, EBDA_START, E820_RAM),
                (HIMEM_START, 128 * MIB - HIMEM_START, E820_RAM)
            ]
        );
        assert_eq!(
            ram_regions(128 * MIB),
            vec![(GuestAddress(0), usize::try_from(128 * MIB).unwrap())]
        );
    }

    #[test]
    fn large_vm_skips_the_mmio_gap() {
        let size = 4096 * MIB;
        let map = e820_map(size);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[1],
            (HIMEM_START, MMIO_GAP_START - HIMEM_START, E820_RAM)
        );
        assert_eq!(map[2], (1 << 32, size - MMIO_GAP_START, E820_RAM));
        let regions = ram_regions(size);
        assert_eq!(
            regions[1],
            (
                GuestAddress(1 << 32),
                usize::try_from(size - MMIO_GAP_START).unwrap()
            )
        );
        let total: usize = regions.iter().map(|r| r.1).sum();
        assert_eq!(total as u64, size);
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram() {
        assert_eq!(
            initrd_address(128 * MIB, 0x1800, 0),
            Some(128 * MIB - 0x2000)
        );
        assert_eq!(
            initrd_address(8192 * MIB, 4096, 0),
            Some(MMIO_GAP_START - 4096)
        );
        assert_eq!(initrd_address(64 * MIB, 60 * MIB, 16 * MIB), None);
        assert_eq!(initrd_address(MIB, 2 * MIB, 0), None);
    }

    #[test]
    fn zero_page_fields() {
        let p = build(256 * MIB, 100, Some((0x0f00_0000, 0x1234))).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr } as u64, CMDLINE_START);
        assert_eq!({ p.hdr.cmdline_size }, 100);
        assert_eq!(
            ({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size }),
            (0x0f00_0000, 0x1234)
        );
        assert_eq!(p.e820_entries, 2);
        let e = p.e820_table[1];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.r#type }),
            (HIMEM_START, 255 * MIB, E820_RAM)
        );

        let mem = GuestMemoryMmap::from_ranges(&ram_regions(MIB)).unwrap();
        write(&mem, &p).unwrap();
        let back: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ back.hdr.ramdisk_size }, 0x1234);
    }
}
