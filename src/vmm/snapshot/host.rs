//! What a snapshot depends on in the host: its kernel (KVM's behaviour), the CPU features
//! KVM offers (the guest saw them and may use them), the MSRs KVM saves, and brig's version.
//! A snapshot made elsewhere is refused before any of its state reaches KVM.

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::SnapshotError;

/// The host a snapshot was made on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFingerprint {
    /// `uname -r`.
    pub kernel: String,
    /// brig's version.
    pub brig: String,
    /// SHA-256 of KVM_GET_SUPPORTED_CPUID's entries.
    pub cpuid: String,
    /// SHA-256 of KVM_GET_MSR_INDEX_LIST.
    pub msrs: String,
}

/// This host's fingerprint.
pub fn fingerprint(kvm: &Kvm) -> Result<HostFingerprint, SnapshotError> {
    // uname, not /proc/sys/kernel/osrelease: a jailed VMM saving a checkpoint has no /proc.
    let kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .trim()
        .to_string();
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| SnapshotError::kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    let mut h = Sha256::new();
    for e in cpuid.as_slice() {
        for v in cpu_independent([e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx]) {
            h.update(v.to_le_bytes());
        }
    }
    let cpuid = format!("{:x}", h.finalize());
    let msrs = kvm
        .get_msr_index_list()
        .map_err(|e| SnapshotError::kvm("KVM_GET_MSR_INDEX_LIST", e))?;
    let mut h = Sha256::new();
    for i in msrs.as_slice() {
        h.update(i.to_le_bytes());
    }
    Ok(HostFingerprint {
        kernel,
        brig: env!("CARGO_PKG_VERSION").to_string(),
        cpuid,
        msrs: format!("{:x}", h.finalize()),
    })
}

/// A KVM_GET_SUPPORTED_CPUID entry (function, index, flags, eax, ebx, ecx, edx) without
/// what differs between the host's CPUs: KVM passes on the APIC id of the CPU the caller
/// runs on (leaf 1 EBX[31:24]; the x2APIC id in EDX of leaves 0xB and 0x1F; AMD's extended
/// APIC, core and node ids in leaf 0x8000001E). Hashed as they are, a template made on one
/// CPU of a multi-core host would read as made on another host from the next CPU (seen on
/// this 2-CPU machine and in a 2-vCPU nested VM).
fn cpu_independent(mut e: [u32; 7]) -> [u32; 7] {
    match e[0] {
        0x1 => e[4] &= 0x00FF_FFFF,
        0xB | 0x1F => e[6] = 0,
        0x8000_001E => {
            e[3] = 0;
            e[4] &= !0xFF;
            e[5] &= !0xFF;
        }
        _ => {}
    }
    e
}

/// Refuses a snapshot made on another host, naming what differs.
pub fn check(saved: &HostFingerprint, here: &HostFingerprint) -> Result<(), SnapshotError> {
    let mut diff = Vec::new();
    if saved.kernel != here.kernel {
        diff.push(format!(
            "host kernel {} (here {})",
            saved.kernel, here.kernel
        ));
    }
    if saved.brig != here.brig {
        diff.push(format!("brig {} (here {})", saved.brig, here.brig));
    }
    if saved.cpuid != here.cpuid {
        diff.push("other CPU features".to_string());
    }
    if saved.msrs != here.msrs {
        diff.push("other KVM MSRs".to_string());
    }
    if diff.is_empty() {
        Ok(())
    } else {
        Err(SnapshotError::Incompatible(format!(
            "made on another host: {}",
            diff.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HostFingerprint {
        HostFingerprint {
            kernel: "6.12.0".into(),
            brig: "0.1.0".into(),
            cpuid: "ab".into(),
            msrs: "cd".into(),
        }
    }

    #[test]
    fn a_foreign_snapshot_is_refused_naming_the_difference() {
        check(&sample(), &sample()).unwrap();
        let mut other = sample();
        other.kernel = "6.1.0".into();
        other.cpuid = "ef".into();
        let err = check(&sample(), &other).unwrap_err().to_string();
        assert!(err.contains("host kernel 6.12.0 (here 6.1.0)"), "{err}");
        assert!(err.contains("other CPU features"), "{err}");
        assert!(!err.contains("MSRs"), "{err}");
    }

    /// Where this host has a KVM device (PVM too: these calls do not run a guest), the
    /// fingerprint is stable.
    #[test]
    fn the_fingerprint_is_stable() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("no /dev/kvm here: skipping");
            return;
        };
        let a = fingerprint(&kvm).unwrap();
        assert_eq!(a, fingerprint(&kvm).unwrap());
        assert_eq!(a.cpuid.len(), 64);
        // The same from every CPU this process may run on.
        let cpus = rustix::thread::sched_getaffinity(None).unwrap();
        for cpu in (0..64).filter(|&c| cpus.is_set(c)) {
            let mut one = rustix::thread::CpuSet::new();
            one.set(cpu);
            rustix::thread::sched_setaffinity(None, &one).unwrap();
            assert_eq!(a, fingerprint(&kvm).unwrap(), "on CPU {cpu}");
        }
        rustix::thread::sched_setaffinity(None, &cpus).unwrap();
    }

    #[test]
    fn apic_ids_are_left_out() {
        let leaf1 = [1, 0, 0, 0xc06f2, 0x0102_0800, 0x8120_2000, 0x0f8b_fbff];
        assert_eq!(
            cpu_independent(leaf1),
            [1, 0, 0, 0xc06f2, 0x0002_0800, 0x8120_2000, 0x0f8b_fbff]
        );
        assert_eq!(cpu_independent([0xB, 0, 1, 1, 2, 0x100, 1])[6], 0);
        let other = [7, 0, 1, 2, 3, 4, 5];
        assert_eq!(cpu_independent(other), other);
    }
}
