//! One vCPU's architectural state, saved and restored in the order Firecracker and Cloud
//! Hypervisor use (see ../shared/design/snapshot.md §1):
//! save MP_STATE first (reading it runs `kvm_apic_accept_events`, which changes the LAPIC),
//! then regs, sregs, xsave, xcrs, debugregs, lapic, TSC frequency, CPUID, MSRs, and the
//! vCPU events last; restore CPUID, MP_STATE, regs, sregs, xsave, xcrs, debugregs, LAPIC (after
//! sregs, which carry the APIC base; before the MSRs, because TSC_DEADLINE only restores on a
//! configured LAPIC), the MSRs with TSC_DEADLINE in a last chunk of its own (KVM reads the
//! guest TSC when it is written), then the vCPU events (SET_REGS clears pending exceptions),
//! and KVMCLOCK_CTRL so that the guest's watchdog does not count the pause.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// MSR_IA32_TSC.
const MSR_TSC: u32 = 0x10;
/// MSR_IA32_TSC_DEADLINE.
const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// The size of the legacy `kvm_xsave` area; larger XSAVE states (AMX) need KVM_GET_XSAVE2.
const XSAVE_LEGACY_SIZE: i32 = 4096;
/// TSC frequencies further apart than this (QEMU's and Firecracker's tolerance) make a
/// restored guest's clock drift: such a snapshot is refused rather than rescaled.
const TSC_TOLERANCE_PPM: u64 = 250;

/// The MSRs worth saving (Firecracker's `SERIALIZABLE_MSR_RANGES`, plus the MTRRs and PAT,
/// which brig sets at boot): architectural state a Linux guest relies on. Everything else in
/// KVM's index list (PMU, VMX capability MSRs, ...) is left out.
const SAVED_MSR_RANGES: &[(u32, u32)] = &[
    (0x10, 0x12),               // TSC, KVM's old wall clock and system time
    (0x1b, 0x1b),               // APIC base
    (0x3b, 0x3b),               // TSC_ADJUST
    (0x48, 0x48),               // SPEC_CTRL
    (0x122, 0x122),             // TSX_CTRL
    (0x140, 0x140),             // MISC_FEATURES_ENABLES
    (0x174, 0x176),             // SYSENTER_CS/ESP/EIP
    (0x179, 0x17a),             // MCG_CAP, MCG_STATUS (not MCG_CTL)
    (0x1a0, 0x1a0),             // MISC_ENABLE
    (0x1d9, 0x1d9),             // DEBUGCTL
    (0x200, 0x2ff),             // MTRRs, PAT, MTRR_DEF_TYPE
    (0x400, 0x47f),             // machine-check banks
    (0x6e0, 0x6e0),             // TSC_DEADLINE (moved last)
    (0x800, 0xbff),             // x2APIC
    (0xda0, 0xda0),             // XSS
    (0xc000_0080, 0xc000_0084), // EFER, STAR, LSTAR, CSTAR, SYSCALL_MASK
    (0xc000_0100, 0xc000_0103), // FS/GS/KERNEL_GS base, TSC_AUX
    (0xc001_0015, 0xc001_0015), // K7_HWCR
    (0x4b56_4d00, 0x4b56_4dff), // KVM paravirtual MSRs (kvmclock, async PF, steal time, PV EOI)
];

/// One vCPU's state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: CpuId,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub tsc_khz: Option<u32>,
    /// (index, value), in restore order: TSC_DEADLINE is last.
    pub msrs: Vec<(u32, u64)>,
    pub vcpu_events: kvm_vcpu_events,
}

/// MSRs KVM handles but does not list in KVM_GET_MSR_INDEX_LIST (QEMU saves them by CPUID
/// feature): the MTRRs brig sets at boot (variable ranges, fixed ranges, default type) and
/// PAT. Those a vCPU cannot read drop out when read.
const UNLISTED_MSRS: &[u32] = &[
    0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x20a, 0x20b, 0x20c,
    0x20d, 0x20e, 0x20f, 0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e,
    0x26f, 0x277, 0x2ff,
];

/// The indices of the MSRs to save: KVM's list, filtered by [`SAVED_MSR_RANGES`], and
/// [`UNLISTED_MSRS`].
pub fn msr_list(kvm: &Kvm) -> Result<Vec<u32>, SnapshotError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(|e| SnapshotError::kvm("KVM_GET_MSR_INDEX_LIST", e))?;
    let mut all = list.as_slice().to_vec();
    all.extend_from_slice(UNLISTED_MSRS);
    Ok(filter_msrs(&all))
}

fn filter_msrs(list: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = list
        .iter()
        .copied()
        .filter(|i| SAVED_MSR_RANGES.iter().any(|(a, b)| (a..=b).contains(&i)))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Reads `indices`; an MSR KVM refuses to read for this vCPU is dropped (with a note), as
/// Cloud Hypervisor does: what KVM lists is not always readable (x2APIC MSRs outside x2APIC
/// mode, say).
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, SnapshotError> {
    let mut out = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(KVM_MAX_MSR_ENTRIES) {
        let mut pending: Vec<u32> = chunk.to_vec();
        while !pending.is_empty() {
            let entries: Vec<kvm_msr_entry> = pending
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries)
                .map_err(|_| SnapshotError::Corrupt("too many MSRs".into()))?;
            let n = fd
                .get_msrs(&mut msrs)
                .map_err(|e| SnapshotError::kvm("KVM_GET_MSRS", e))?;
            out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
            if n < pending.len() {
                tracing::debug!("snapshot: MSR {:#x} cannot be read; not saved", pending[n]);
                pending.drain(..=n);
            } else {
                pending.clear();
            }
        }
    }
    Ok(out)
}

/// Puts TSC_DEADLINE last; a zero deadline becomes the saved TSC (Firecracker's
/// `fix_zero_tsc_deadline_msr`: a vCPU was seen never to get a timer interrupt again after
/// restoring a zero).
fn order_msrs(mut msrs: Vec<(u32, u64)>) -> Vec<(u32, u64)> {
    let tsc = msrs.iter().find(|(i, _)| *i == MSR_TSC).map(|(_, v)| *v);
    let mut deadline: Vec<(u32, u64)> = Vec::new();
    msrs.retain(|&(i, v)| {
        if i == MSR_TSC_DEADLINE {
            deadline.push((i, if v == 0 { tsc.unwrap_or(0) } else { v }));
            false
        } else {
            true
        }
    });
    msrs.extend(deadline);
    msrs
}

/// Saves the state of a vCPU that is not running.
pub fn save(kvm: &Kvm, fd: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, SnapshotError> {
    if kvm.check_extension_int(Cap::Xsave2) > XSAVE_LEGACY_SIZE {
        return Err(SnapshotError::Unsupported(
            "this CPU's XSAVE state is larger than 4 KiB (AMX); brig saves the legacy area only",
        ));
    }
    let k = SnapshotError::kvm;
    let mp_state = fd.get_mp_state().map_err(|e| k("KVM_GET_MP_STATE", e))?;
    let regs = fd.get_regs().map_err(|e| k("KVM_GET_REGS", e))?;
    let sregs = fd.get_sregs().map_err(|e| k("KVM_GET_SREGS", e))?;
    let xsave = fd.get_xsave().map_err(|e| k("KVM_GET_XSAVE", e))?;
    let xcrs = fd.get_xcrs().map_err(|e| k("KVM_GET_XCRS", e))?;
    let debug_regs = fd.get_debug_regs().map_err(|e| k("KVM_GET_DEBUGREGS", e))?;
    let lapic = fd.get_lapic().map_err(|e| k("KVM_GET_LAPIC", e))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| k("KVM_GET_CPUID2", e))?;
    let msrs = order_msrs(read_msrs(fd, msr_indices)?);
    let vcpu_events = fd
        .get_vcpu_events()
        .map_err(|e| k("KVM_GET_VCPU_EVENTS", e))?;
    Ok(VcpuState {
        cpuid,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        tsc_khz,
        msrs,
        vcpu_events,
    })
}

/// Whether a guest saved at `saved` kHz may run at `now` kHz without rescaling.
fn tsc_compatible(saved: Option<u32>, now: Option<u32>) -> bool {
    match (saved, now) {
        (Some(s), Some(n)) => {
            let (s, n) = (u64::from(s), u64::from(n));
            s.abs_diff(n) * 1_000_000 <= s * TSC_TOLERANCE_PPM
        }
        _ => true,
    }
}

/// Restores `state` onto a freshly created vCPU.
pub fn restore(fd: &VcpuFd, state: &VcpuState) -> Result<(), SnapshotError> {
    let now = fd.get_tsc_khz().ok();
    if !tsc_compatible(state.tsc_khz, now) {
        return Err(SnapshotError::Incompatible(format!(
            "the TSC runs at {now:?} kHz here, the snapshot's at {:?} kHz",
            state.tsc_khz
        )));
    }
    let k = SnapshotError::kvm;
    fd.set_cpuid2(&state.cpuid)
        .map_err(|e| k("KVM_SET_CPUID2", e))?;
    fd.set_mp_state(state.mp_state)
        .map_err(|e| k("KVM_SET_MP_STATE", e))?;
    fd.set_regs(&state.regs).map_err(|e| k("KVM_SET_REGS", e))?;
    fd.set_sregs(&state.sregs)
        .map_err(|e| k("KVM_SET_SREGS", e))?;
    // SAFETY: `state.xsave` is a whole legacy `kvm_xsave` (4 KiB), and [`save`] refuses hosts
    // whose XSAVE state is larger, so KVM reads nothing past it.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(|e| k("KVM_SET_XSAVE", e))?;
    fd.set_xcrs(&state.xcrs).map_err(|e| k("KVM_SET_XCRS", e))?;
    fd.set_debug_regs(&state.debug_regs)
        .map_err(|e| k("KVM_SET_DEBUGREGS", e))?;
    fd.set_lapic(&state.lapic)
        .map_err(|e| k("KVM_SET_LAPIC", e))?;
    // TSC_DEADLINE (last in `state.msrs`) goes in a chunk of its own, after the TSC.
    let split = state
        .msrs
        .iter()
        .position(|(i, _)| *i == MSR_TSC_DEADLINE)
        .unwrap_or(state.msrs.len());
    let (main, deferred) = state.msrs.split_at(split);
    for chunk in main
        .chunks(KVM_MAX_MSR_ENTRIES)
        .chain(deferred.chunks(KVM_MAX_MSR_ENTRIES))
    {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries)
            .map_err(|_| SnapshotError::Corrupt("too many MSRs".into()))?;
        let n = fd.set_msrs(&msrs).map_err(|e| k("KVM_SET_MSRS", e))?;
        if n < chunk.len() {
            return Err(SnapshotError::Incompatible(format!(
                "KVM refused to restore MSR {:#x}",
                chunk[n].0
            )));
        }
    }
    fd.set_vcpu_events(&state.vcpu_events)
        .map_err(|e| k("KVM_SET_VCPU_EVENTS", e))?;
    // EINVAL when the guest does not use kvmclock: nothing to tell it then.
    if let Err(e) = fd.kvmclock_ctrl() {
        tracing::debug!("KVM_KVMCLOCK_CTRL: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_filter_keeps_architectural_state_only() {
        let list = [
            0x10,
            0xc1,
            0x6e0,
            0x1b,
            0x17b,
            0x4b56_4d01,
            0x10,
            0x480,
            0x2ff,
        ];
        assert_eq!(
            filter_msrs(&list),
            vec![0x10, 0x1b, 0x2ff, 0x6e0, 0x4b56_4d01],
            "PMU (0xc1), MCG_CTL (0x17b) and VMX (0x480) are left out"
        );
    }

    #[test]
    fn tsc_deadline_goes_last_and_a_zero_one_becomes_the_tsc() {
        let msrs = vec![(0x6e0, 0), (0x10, 12345), (0x1b, 0xfee0_0900)];
        assert_eq!(
            order_msrs(msrs),
            vec![(0x10, 12345), (0x1b, 0xfee0_0900), (0x6e0, 12345)]
        );
        let msrs = vec![(0x10, 5), (0x6e0, 99), (0x1b, 1)];
        assert_eq!(order_msrs(msrs).last(), Some(&(0x6e0, 99)));
    }

    #[test]
    fn tsc_tolerance_is_250_ppm() {
        assert!(tsc_compatible(Some(2_000_000), Some(2_000_500)));
        assert!(!tsc_compatible(Some(2_000_000), Some(2_000_501)));
        assert!(tsc_compatible(None, Some(1)));
    }
}
