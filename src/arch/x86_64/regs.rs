//! Long-mode entry state of the boot vCPU: identity page tables, GDT/IDT, control registers,
//! general registers and FPU; plus the local APIC's LINT pins.
//!
//! The kernel's 64-bit entry (`startup_64`) expects paging on, a flat code segment, and
//! `boot_params` in RSI (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol").

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{boot_gdt, segment_from_entry};
use super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Page table entry flags: present, writable; PS marks a 2 MiB page in a PD entry.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_PS: u64 = 0x80;

/// Writing the boot tables to guest memory failed (guest memory too small for them).
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A boot table does not fit in guest memory.
    #[error("cannot write the boot {0} to guest memory")]
    WriteTable(&'static str),
}

/// Writes PML4 → PDPT → PD mapping the first 1 GiB with 2 MiB pages, identity.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let err = |_| RegsError::WriteTable("page tables");
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))
        .map_err(err)?;
    mem.write_obj(PDE_START | PTE_PRESENT_RW, GuestAddress(PDPTE_START))
        .map_err(err)?;
    for i in 0..512u64 {
        mem.write_obj(
            (i << 21) | PDE_PS | PTE_PRESENT_RW,
            GuestAddress(PDE_START + i * 8),
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Writes the boot GDT and an empty IDT.
pub fn write_gdt_idt(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in boot_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + i as u64 * 8))
            .map_err(|_| RegsError::WriteTable("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|_| RegsError::WriteTable("IDT"))?;
    Ok(())
}

/// Special registers for long mode with the boot GDT and page tables, starting from what
/// KVM reports for a fresh vCPU.
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let gdt = boot_gdt();
    let code = segment_from_entry(gdt[1], 1);
    let data = segment_from_entry(gdt[2], 2);
    let tss = segment_from_entry(gdt[3], 3);

    sregs.gdt.base = GDT_START;
    #[allow(clippy::cast_possible_truncation)] // 4 entries of 8 bytes: the limit is 31.
    let gdt_limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.gdt.limit = gdt_limit;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;

    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers at the kernel's 64-bit entry.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// FPU state after reset (x87 control word and MXCSR defaults).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    // The registers are C chars (i8): reinterpret each byte, bit for bit.
    u32::from_le_bytes(std::array::from_fn(|i| {
        lapic.regs[offset + i].to_ne_bytes()[0]
    }))
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = i8::from_ne_bytes([*b]);
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires LINT0 to ExtINT (the PIC) and LINT1 to NMI, as a PC's BIOS leaves them.
pub fn configure_lint(mut lapic: kvm_lapic_state) -> kvm_lapic_state {
    let lvt0 = get_reg(&lapic, APIC_LVT0);
    set_reg(
        &mut lapic,
        APIC_LVT0,
        set_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = get_reg(&lapic, APIC_LVT1);
    set_reg(
        &mut lapic,
        APIC_LVT1,
        set_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    lapic
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let m = mem();
        write_page_tables(&m).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpte: u64 = m.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpte, PDE_START | 3);
        for i in [0u64, 1, 8, 511] {
            let pde: u64 = m.read_obj(GuestAddress(PDE_START + i * 8)).unwrap();
            assert_eq!(pde, (i << 21) | 0x83, "PD entry {i}");
        }
    }

    #[test]
    fn tables_need_memory() {
        let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(write_page_tables(&tiny).is_err());
        write_gdt_idt(&tiny).unwrap();
        let entry: u64 = tiny.read_obj(GuestAddress(GDT_START + 8)).unwrap();
        assert_eq!(entry, boot_gdt()[1]);
    }

    #[test]
    fn sregs_enter_long_mode_with_paging() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.selector, s.cs.l), (0x8, 1));
        assert_eq!(s.ss.selector, 0x10);
        assert_eq!(s.tr.selector, 0x18);
        assert_eq!((s.gdt.base, s.gdt.limit), (GDT_START, 31));
    }

    #[test]
    fn regs_point_at_entry_and_zero_page() {
        let r = boot_regs(0x100_0000);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, 0x7000, 0x8ff0, 2)
        );
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }

    #[test]
    fn lint_pins_get_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_reg(&mut lapic, APIC_LVT0, 0x0001_0700);
        let l = configure_lint(lapic);
        assert_eq!(get_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_reg(&l, APIC_LVT1) & 0x700, 0x400);
        let l = configure_lint(kvm_lapic_state::default());
        assert_eq!(get_reg(&l, APIC_LVT0), 0x700);
    }
}
