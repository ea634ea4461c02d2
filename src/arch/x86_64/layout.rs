//! Guest-physical memory layout of a brig microVM (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)               0x0000_0520  IDT (empty)
//! 0x0000_7000  zero page (boot_params)       0x0000_8ff0  boot stack pointer
//! 0x0000_9000  PML4  0x0000_a000 PDPT  0x0000_b000 PD  (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (in the EBDA: the kernel scans it for the MP floating pointer)
//! 0x0010_0000  high memory: kernel (loaded where its ELF says, 16 MiB for 6.12), then RAM;
//!              the initrd sits at the top of RAM below the MMIO gap
//! 0xd000_0000  MMIO gap (768 MiB): virtio-mmio devices, one 4 KiB page each; IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 4 GiB, when the VM has more than 3.25 GiB
//! ```

// brig runs on 64-bit hosts only (KVM on x86_64): a u64 size or address always fits usize.
const _: () = assert!(usize::BITS == u64::BITS);

/// `addr` as a 32-bit guest-physical address, for boot structures with 32-bit fields. Meant
/// for consts (`const { addr32(X) }`): an address at or above 4 GiB then fails the build
/// instead of being truncated.
pub const fn addr32(addr: u64) -> u32 {
    assert!(addr <= u32::MAX as u64, "address at or above 4 GiB");
    #[allow(clippy::cast_possible_truncation)] // In range: asserted above.
    let low = addr as u32;
    low
}

/// Global descriptor table, 4 entries of 8 bytes.
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table (a single empty entry: the kernel installs its own at once).
pub const IDT_START: u64 = 0x520;
/// The zero page: `struct boot_params` the kernel reads its setup from (RSI at entry).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the boot page tables.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory: 512 entries of 2 MiB pages = the first 1 GiB, identity-mapped.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line (NUL-terminated).
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line the x86_64 kernel accepts (COMMAND_LINE_SIZE), NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area: RAM below it is usable, the MP table lives in it.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP floating pointer and configuration table.
pub const MPTABLE_START: u64 = EBDA_START;
/// First byte of high memory (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap: no RAM between here and 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 1 << 32;
/// First virtio-mmio device; each takes [`MMIO_DEVICE_SIZE`] bytes after the previous one.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio device's register window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// IOAPIC registers (fixed by the in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS needs three pages of guest-physical space that is not RAM.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Legacy IRQ of the COM1 UART.
pub const SERIAL_IRQ: u32 = 4;
/// First IRQ (GSI) handed to virtio-mmio devices; the IOAPIC has 24 pins.
pub const VIRTIO_IRQ_START: u32 = 5;
/// Last usable IOAPIC pin.
pub const IRQ_MAX: u32 = 23;
