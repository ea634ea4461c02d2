//! CPUID for the guest: what `KVM_GET_SUPPORTED_CPUID` offers, normalised per vCPU.
//!
//! KVM reports the host's features that it can virtualise; the topology in it is the host's.
//! Each vCPU gets its own APIC id and a topology of `count` single-threaded cores in one
//! package, the hypervisor bit is set (so the guest looks for the KVM leaves at 0x4000_0000
//! and uses kvm-clock), the PMU leaf is cleared (no guest performance counters), and the
//! XSAVE leaf is made consistent with the features the other leaves offer (a state component
//! is offered only with its instructions; sizes follow), as hosts do not always agree with
//! themselves there (seen under nested virtualization).
//! Leaf meanings: Intel SDM vol. 2A "CPUID"; AMD APM vol. 3 appendix E.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_FEATURES: u32 = 0x7;
const LEAF_PMU: u32 = 0xa;
const LEAF_XSAVE: u32 = 0xd;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
/// "AuthenticAMD" as EBX, EDX, ECX.
const AMD_VENDOR: [u32; 3] = [0x6874_7541, 0x6974_6e65, 0x444d_4163];

/// The CPUID as KVM returned it lacks what a Linux guest needs.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// KVM offered no leaf 0x4000_0000 with its signature: no kvm-clock for the guest.
    #[error("KVM's supported CPUID has no KVM hypervisor leaf")]
    NoHypervisorLeaf,
    /// Too many vCPUs for the topology encoding.
    #[error("{0} vCPUs is out of range (1..=255)")]
    CpuCount(usize),
}

/// Bits needed to number `count` items (ceil(log2(count))).
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Rewrites `entries` (KVM's supported CPUID) for vCPU `index` of `count`.
pub fn normalize(
    entries: &mut [kvm_cpuid_entry2],
    index: u32,
    count: u32,
) -> Result<(), CpuidError> {
    if count == 0 || count > 255 || index >= count {
        return Err(CpuidError::CpuCount(count as usize));
    }
    let amd = entries
        .iter()
        .find(|e| e.function == LEAF_VENDOR)
        .is_some_and(|e| [e.ebx, e.edx, e.ecx] == AMD_VENDOR);
    let shift = id_bits(count);
    let mut has_kvm_leaf = false;

    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: brand index (7:0), CLFLUSH size in 8-byte units (15:8),
                // logical processors per package (23:16), initial APIC id (31:24).
                e.ebx = (e.ebx & 0xff) | (8 << 8) | (count << 16) | (index << 24);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX 31:26: cores per package - 1; 25:14: threads sharing this cache - 1
                // (one thread per core; the last level is shared by the package).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
            }
            LEAF_PMU => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                // Sub-leaf 0: SMT level (1 thread), 1: core level (`count` cores).
                let (eax, ebx, level_type) = match e.index {
                    0 => (0, 1, 1),
                    1 => (shift, count, 2),
                    _ => (0, 0, 0),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = (level_type << 8) | (e.index & 0xff);
                e.edx = index;
            }
            LEAF_HYPERVISOR => {
                has_kvm_leaf = [e.ebx, e.ecx, e.edx] == KVM_SIGNATURE;
            }
            LEAF_AMD_SIZES if amd => {
                // ECX 7:0: cores - 1; 15:12: APIC id bits for the core id.
                e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | (count - 1);
            }
            LEAF_AMD_TOPOLOGY if amd => {
                e.eax = index; // extended APIC id
                e.ebx = index & 0xff; // core id, one thread per core
                e.ecx = 0; // node 0, one node
                e.edx = 0;
            }
            _ => {}
        }
    }
    if !has_kvm_leaf {
        return Err(CpuidError::NoHypervisorLeaf);
    }
    normalize_xsave(entries);
    Ok(())
}

/// Offers the TSC-deadline mode of the local APIC timer (leaf 1 ECX bit 24), which
/// `KVM_GET_SUPPORTED_CPUID` never reports: KVM emulates it in its in-kernel local APIC when
/// it has `KVM_CAP_TSC_DEADLINE_TIMER`, and only the VMM can say so (Firecracker and QEMU
/// do). Without it a Linux guest arms its timer through the APIC's initial-count register,
/// one trapped MMIO write per timer event, and calibrates the APIC timer at boot.
pub fn offer_tsc_deadline(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries.iter_mut().filter(|e| e.function == LEAF_FEATURES) {
        e.ecx |= ECX_TSC_DEADLINE;
    }
}

/// XCR0 bits whose instructions the other leaves offer.
fn xsave_allowed(entries: &[kvm_cpuid_entry2]) -> u64 {
    let leaf = |f: u32, i: u32| {
        entries
            .iter()
            .find(|e| e.function == f && e.index == i)
            .copied()
    };
    let l1 = leaf(LEAF_FEATURES, 0).unwrap_or_default();
    let l7 = leaf(LEAF_EXT_FEATURES, 0).unwrap_or_default();
    let mut allowed = 0b11; // x87, SSE
    if l1.ecx & (1 << 28) != 0 {
        allowed |= 1 << 2; // AVX: YMM upper halves
    }
    if l7.ebx & (1 << 14) != 0 {
        allowed |= 0b11 << 3; // MPX: BNDREGS, BNDCSR
    }
    if l7.ebx & (1 << 16) != 0 {
        allowed |= 0b111 << 5; // AVX-512: opmask, ZMM_Hi256, Hi16_ZMM
    }
    if l7.ecx & (1 << 3) != 0 {
        allowed |= 1 << 9; // PKU: PKRU
    }
    if l7.edx & (1 << 24) != 0 {
        allowed |= 0b11 << 17; // AMX: XTILECFG, XTILEDATA
    }
    allowed
}

fn normalize_xsave(entries: &mut [kvm_cpuid_entry2]) {
    let allowed = xsave_allowed(entries);
    // Legacy region (512) + XSAVE header (64).
    let mut size = 576;
    let mut offered = 0u64;
    for e in entries
        .iter_mut()
        .filter(|e| e.function == LEAF_XSAVE && (2..64).contains(&e.index))
    {
        if allowed & (1 << e.index) == 0 {
            (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
        } else if e.eax != 0 {
            offered |= 1 << e.index;
            size = size.max(e.eax + e.ebx);
        }
    }
    if let Some(e) = entries
        .iter_mut()
        .find(|e| e.function == LEAF_XSAVE && e.index == 0)
    {
        let keep = (allowed & 0b11) | offered;
        e.eax &= (keep & 0xffff_ffff) as u32;
        e.edx &= (keep >> 32) as u32;
        e.ebx = size;
        e.ecx = size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn sample(amd: bool) -> Vec<kvm_cpuid_entry2> {
        let vendor = if amd {
            [0x10, AMD_VENDOR[0], AMD_VENDOR[2], AMD_VENDOR[1]]
        } else {
            // "GenuineIntel"
            [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]
        };
        vec![
            entry(0, 0, vendor),
            entry(
                1,
                0,
                [0x806f8, 0x2a10_0800 | 0x05, 0x7ffa_3203, 0x1789_fbff],
            ),
            entry(4, 0, [0x1c00_4121, 0, 0, 0]),
            entry(4, 3, [0x1c03_c163, 0, 0, 0]),
            entry(0xa, 0, [0x0830_0805, 0, 0, 0x8603]),
            entry(0xb, 0, [1, 2, 0x100, 42]),
            entry(0xb, 1, [6, 64, 0x201, 42]),
            entry(0xb, 2, [0, 0, 2, 42]),
            entry(
                0x4000_0000,
                0,
                [
                    0x4000_0001,
                    KVM_SIGNATURE[0],
                    KVM_SIGNATURE[1],
                    KVM_SIGNATURE[2],
                ],
            ),
            entry(0x8000_0008, 0, [0x3030, 0, 0x703f, 0]),
            entry(0x8000_001e, 0, [12, 0x0106, 0x0300, 0]),
        ]
    }

    fn get(entries: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn id_bits_is_ceil_log2() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }

    #[test]
    fn leaf1_gets_apic_id_count_and_hypervisor_bit() {
        let mut e = sample(false);
        normalize(&mut e, 2, 4).unwrap();
        let l1 = get(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!((l1.ebx >> 8) & 0xff, 8);
        assert_eq!(l1.ebx & 0xff, 0x05);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);

        let mut e = sample(false);
        normalize(&mut e, 0, 1).unwrap();
        assert_eq!(get(&e, 1, 0).edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaves_describe_count_cores() {
        let mut e = sample(false);
        normalize(&mut e, 1, 2).unwrap();
        let smt = get(&e, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 1));
        let core = get(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (1, 2, 0x201, 1));
        let none = get(&e, 0xb, 2);
        assert_eq!((none.eax, none.ebx, none.ecx), (0, 0, 2));
        let l1d = get(&e, 4, 0);
        assert_eq!((l1d.eax >> 26, (l1d.eax >> 14) & 0xfff), (1, 0));
        assert_eq!(l1d.eax & 0x3fff, 0x0121);
        let l3 = get(&e, 4, 3);
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (1, 1));
    }

    #[test]
    fn tsc_deadline_is_offered_on_leaf_1_only() {
        let mut e = vec![entry(1, 0, [0, 0, 0, 0]), entry(7, 0, [0, 0, 0, 0])];
        offer_tsc_deadline(&mut e);
        assert_eq!(get(&e, 1, 0).ecx, 1 << 24);
        assert_eq!(get(&e, 7, 0).ecx, 0);
    }

    #[test]
    fn xsave_leaf_follows_the_offered_instructions() {
        let mut e = sample(false);
        // XSAVE: x87|SSE|AVX|MPX offered by leaf 0xd; AVX: 256 bytes at 576; MPX: 64+64.
        e.push(entry(0xd, 0, [0x1f, 0x240, 0x440, 0]));
        e.push(entry(0xd, 2, [0x100, 0x240, 0, 0]));
        e.push(entry(0xd, 3, [0x40, 0x3c0, 0, 0]));
        e.push(entry(0xd, 4, [0x40, 0x400, 0, 0]));
        e.push(entry(7, 0, [0, 0, 0, 0])); // no MPX, no AVX-512
                                           // Leaf 1 of the sample has AVX (ECX bit 28).
        normalize(&mut e, 0, 1).unwrap();
        let l = get(&e, 0xd, 0);
        assert_eq!((l.eax, l.ebx, l.ecx), (0x7, 0x340, 0x340));
        assert_eq!(get(&e, 0xd, 3).eax, 0);
        assert_eq!(get(&e, 0xd, 2).eax, 0x100);

        // Without AVX in leaf 1, the YMM state goes too.
        let mut e = sample(false);
        e.push(entry(0xd, 0, [0x7, 0x240, 0x340, 0]));
        e.push(entry(0xd, 2, [0x100, 0x240, 0, 0]));
        for x in e.iter_mut().filter(|x| x.function == 1) {
            x.ecx &= !(1 << 28);
        }
        normalize(&mut e, 0, 1).unwrap();
        let l = get(&e, 0xd, 0);
        assert_eq!((l.eax, l.ebx, l.ecx), (0x3, 0x240, 0x240));
        assert_eq!(get(&e, 0xd, 2).eax, 0);
    }

    #[test]
    fn pmu_is_hidden() {
        let mut e = sample(false);
        normalize(&mut e, 0, 1).unwrap();
        let pmu = get(&e, 0xa, 0);
        assert_eq!((pmu.eax, pmu.ebx, pmu.ecx, pmu.edx), (0, 0, 0, 0));
    }

    #[test]
    fn amd_leaves_follow_count() {
        let mut e = sample(true);
        normalize(&mut e, 3, 4).unwrap();
        let sizes = get(&e, 0x8000_0008, 0);
        assert_eq!(sizes.ecx & 0xff, 3);
        assert_eq!((sizes.ecx >> 12) & 0xf, 2);
        let topo = get(&e, 0x8000_001e, 0);
        assert_eq!((topo.eax, topo.ebx, topo.ecx), (3, 3, 0));
        // On Intel the AMD leaves are left alone.
        let mut e = sample(false);
        normalize(&mut e, 3, 4).unwrap();
        assert_eq!(get(&e, 0x8000_0008, 0).ecx, 0x703f);
    }

    #[test]
    fn rejects_bad_counts_and_missing_kvm_leaf() {
        let mut e = sample(false);
        assert!(normalize(&mut e, 0, 0).is_err());
        assert!(normalize(&mut e, 4, 4).is_err());
        assert!(normalize(&mut e, 0, 256).is_err());
        let mut e: Vec<_> = sample(false)
            .into_iter()
            .filter(|e| e.function != LEAF_HYPERVISOR)
            .collect();
        assert!(matches!(
            normalize(&mut e, 0, 1),
            Err(CpuidError::NoHypervisorLeaf)
        ));
    }
}
