//! The Intel MultiProcessor table (MP spec 1.4): how a guest without ACPI learns its CPUs,
//! its IOAPIC and how ISA interrupts are routed. Written into the EBDA, where the kernel's
//! `find_smp_config()` scans for the `_MP_` floating pointer.
//!
//! The structures are built as little-endian bytes (no `unsafe` casts of packed structs).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{addr32, APIC_START, EBDA_START, IOAPIC_START, IRQ_MAX, MPTABLE_START};

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6 in the CPU signature (stepping 0, model 0).
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX features the table claims: FPU and APIC.
const CPU_FEATURES: u32 = 0x001 | 0x200;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;

/// The MP table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Zero vCPUs, or more than fit in the EBDA.
    #[error("{0} vCPUs do not fit in the MP table (1..={max})", max = max_cpus())]
    TooManyCpus(u8),
    /// Guest memory does not cover the EBDA.
    #[error("guest memory does not cover the MP table at {MPTABLE_START:#x}")]
    Write,
}

fn table_len(cpus: usize) -> usize {
    let irqs = IRQ_MAX as usize + 1;
    16 + 44 + 20 * cpus + 8 + 8 + 8 * irqs + 2 * 8
}

/// Most vCPUs whose entries fit between the EBDA start and 640 KiB (37), computed at compile
/// time.
const MAX_CPUS: u8 = {
    let room = 0xa0000 - EBDA_START;
    let fixed = 16 + 44 + 8 + 8 + 8 * (IRQ_MAX as u64 + 1) + 16;
    let cpus = (room - fixed) / 20;
    assert!(cpus <= u8::MAX as u64);
    #[allow(clippy::cast_possible_truncation)] // In range: asserted above.
    let cpus = cpus as u8;
    cpus
};

/// Highest IOAPIC pin, as the one-byte field the table stores it in.
const MAX_PIN: u8 = {
    assert!(IRQ_MAX <= u8::MAX as u32);
    #[allow(clippy::cast_possible_truncation)] // In range: asserted above.
    let pin = IRQ_MAX as u8;
    pin
};

/// Most vCPUs whose entries fit between the EBDA start and 640 KiB.
pub const fn max_cpus() -> u8 {
    MAX_CPUS
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer followed by the configuration table, for `cpus` vCPUs.
pub fn build(cpus: u8) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > max_cpus() {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus; // after the CPUs' APIC ids
    let table_start = const { addr32(MPTABLE_START) + 16 };

    // Entries first: the header needs their count, length and checksum.
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION]);
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.push(flags);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&const { addr32(IOAPIC_START) }.to_le_bytes());
    count += 1;
    // ISA IRQ n → IOAPIC pin n, as KVM's default routing has it.
    for irq in 0..=MAX_PIN {
        entries.extend_from_slice(&[ENTRY_INTSRC, IRQ_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0: ExtINT to the BSP; LINT1: NMI to every local APIC.
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    let base_len =
        u16::try_from(44 + entries.len()).map_err(|_| MptableError::TooManyCpus(cpus))?;
    header.extend_from_slice(&base_len.to_le_bytes());
    header.push(MPC_SPEC);
    header.push(0); // checksum, below
    header.extend_from_slice(b"BRIG    ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&const { addr32(APIC_START) }.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // extended table length, checksum
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(16);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&table_start.to_le_bytes());
    mpf.extend_from_slice(&[1, MPC_SPEC, 0, 0, 0, 0, 0, 0]);
    mpf[10] = checksum(&mpf);

    let mut out = mpf;
    out.extend_from_slice(&table);
    debug_assert_eq!(out.len(), table_len(cpus as usize));
    Ok(out)
}

/// Writes the MP table for `cpus` vCPUs at [`MPTABLE_START`].
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let bytes = build(cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|_| MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_and_table_check_out() {
        for cpus in [1u8, 2, 16, max_cpus()] {
            let t = build(cpus).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "mpf checksum");
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
            assert_eq!(ptr as u64, MPTABLE_START + 16);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]) as usize;
            assert_eq!(count, cpus as usize + 1 + 1 + 24 + 2);
            assert!(usize::try_from(MPTABLE_START).unwrap() + t.len() <= 0xa0000);
        }
    }

    #[test]
    fn processors_are_listed_with_the_bsp_first() {
        let t = build(3).unwrap();
        let cpu = |i: usize| &t[60 + 20 * i..80 + 20 * i];
        assert_eq!(cpu(0)[..4], [ENTRY_PROCESSOR, 0, APIC_VERSION, 3]);
        assert_eq!(cpu(1)[..4], [ENTRY_PROCESSOR, 1, APIC_VERSION, 1]);
        assert_eq!(cpu(2)[1], 2);
        // The IOAPIC comes after the bus entry and takes the next id.
        let ioapic = &t[60 + 60 + 8..60 + 60 + 16];
        assert_eq!(ioapic[..4], [ENTRY_IOAPIC, 3, IOAPIC_VERSION, 1]);
    }

    #[test]
    fn rejects_zero_and_too_many_cpus() {
        assert!(build(0).is_err());
        assert!(build(max_cpus() + 1).is_err());
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(write(&small, 1), Err(MptableError::Write)));
    }
}
