//! The boot GDT: null, 64-bit code, data and TSS descriptors, and their `kvm_segment` forms.
//!
//! The kernel's 64-bit entry expects flat segments in long mode; it loads its own GDT soon
//! after. Layout of a descriptor: Intel SDM vol. 3, 3.4.5 "Segment Descriptors".

use kvm_bindings::kvm_segment;

/// Packs a descriptor from its access/flags word, base and limit.
/// `flags` holds access byte (bits 0-7) and the flags nibble (bits 12-15).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, code (long mode, present, ring 0), data, TSS.
pub fn boot_gdt() -> [u64; 4] {
    [
        gdt_entry(0, 0, 0),
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

fn bit(entry: u64, n: u32) -> u8 {
    ((entry >> n) & 1) as u8
}

/// The `kvm_segment` KVM needs for the descriptor at `index` of the GDT.
pub fn segment_from_entry(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    // The limit is 20 bits (the mask says so to the cast): at most 0xffff_ffff once scaled
    // to 4 KiB pages below.
    let raw_limit = (((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) & 0xf_ffff) as u32;
    let granularity = bit(entry, 55);
    // With 4 KiB granularity the limit counts pages.
    let limit = if granularity == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(entry, 47);
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: granularity,
        avl: bit(entry, 52),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_flat_long_mode_ring0() {
        let gdt = boot_gdt();
        assert_eq!(gdt[0], 0);
        // The values every x86 VMM writes for these descriptors.
        assert_eq!(gdt[1], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[2], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt[3], 0x008f_8b00_0000_ffff);
        let cs = segment_from_entry(gdt[1], 1);
        assert_eq!(cs.selector, 0x08);
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.dpl, cs.s),
            (1, 0, 1, 1, 0, 1)
        );
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let gdt = boot_gdt();
        let ds = segment_from_entry(gdt[2], 2);
        assert_eq!(ds.selector, 0x10);
        assert_eq!((ds.l, ds.db, ds.type_), (0, 1, 0x3));
        let tss = segment_from_entry(gdt[3], 3);
        assert_eq!(tss.selector, 0x18);
        assert_eq!((tss.s, tss.type_, tss.g), (0, 0xb, 1));
        assert_eq!(tss.limit, 0xffff_ffff);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0xabcde);
        let s = segment_from_entry(e, 5);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.g, 0);
        let null = segment_from_entry(0, 0);
        assert_eq!(null.unusable, 1);
    }
}
