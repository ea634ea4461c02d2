//! Opening `/dev/kvm`, and refusing hypervisors brig cannot use, each with a one-line reason.

use std::io;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// `/dev/kvm` is missing, unusable, or not a hypervisor brig can run guests on.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// No /dev/kvm at all.
    #[error("/dev/kvm does not exist: KVM is not available on this host (load kvm-intel or kvm-amd, or enable nested virtualization for this VM)")]
    Missing,
    /// /dev/kvm exists but we may not open it.
    #[error(
        "permission denied opening /dev/kvm (run as root or add your user to the 'kvm' group)"
    )]
    PermissionDenied,
    /// Opening /dev/kvm failed otherwise.
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] io::Error),
    /// The host's KVM is PVM, which cannot run guest user space.
    #[error("this host's /dev/kvm is PVM (kvm_pvm), a software hypervisor under which guest user space cannot run; run brig through scripts/with-kvm (nested hardware-style KVM) or on a host with hardware KVM")]
    Pvm,
    /// A capability brig needs is missing.
    #[error("KVM on this host lacks {0}, which brig needs")]
    MissingCap(&'static str),
}

/// True when the host's KVM is the PVM software hypervisor.
pub fn is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Opens /dev/kvm and checks that brig can run guests on it.
pub fn open() -> Result<Kvm, KvmError> {
    if is_pvm() && std::env::var_os("BRIG_ALLOW_PVM").is_none() {
        return Err(KvmError::Pvm);
    }
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::Missing,
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
        _ => KvmError::Open(io::Error::from_raw_os_error(e.errno())),
    })?;
    for (cap, name) in [
        (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
        (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
        (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
        (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
        (Cap::UserMemory, "user memory regions (KVM_CAP_USER_MEMORY)"),
        (Cap::ExtCpuid, "KVM_GET_SUPPORTED_CPUID"),
        (Cap::SetTssAddr, "KVM_SET_TSS_ADDR"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(kvm)
}
