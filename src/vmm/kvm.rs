//! Opening `/dev/kvm`, and refusing hypervisors brig cannot use, each with a one-line reason.

use std::io;
use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};

/// The KVM device; `BRIG_KVM_DEVICE` overrides it.
pub fn device_path() -> String {
    std::env::var("BRIG_KVM_DEVICE").unwrap_or_else(|_| "/dev/kvm".into())
}

/// Where the PVM module shows up in sysfs; `BRIG_PVM_MODULE_PATH` overrides it (for tests).
fn pvm_module_path() -> PathBuf {
    std::env::var_os("BRIG_PVM_MODULE_PATH")
        .map(Into::into)
        .unwrap_or_else(|| "/sys/module/kvm_pvm".into())
}

/// The KVM device is missing, unusable, or not a hypervisor brig can run guests on.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// No KVM device at all.
    #[error("{0} does not exist: KVM is not available on this host (load kvm-intel or kvm-amd, or enable nested virtualization for this VM)")]
    Missing(String),
    /// The device exists but we may not open it.
    #[error("permission denied opening {0} (run as root or add your user to the 'kvm' group)")]
    PermissionDenied(String),
    /// Opening the device failed otherwise, or it is not KVM.
    #[error("cannot use {0} as KVM: {1}")]
    Open(String, #[source] io::Error),
    /// The host's KVM is PVM, which cannot run guest user space.
    #[error("this host's /dev/kvm is PVM (kvm_pvm), a software hypervisor under which guest user space cannot run; run brig through scripts/with-kvm (nested hardware-style KVM) or on a host with hardware KVM")]
    Pvm,
    /// A capability brig needs is missing.
    #[error("KVM on this host lacks {0}, which brig needs")]
    MissingCap(&'static str),
}

/// True when the host's KVM is the PVM software hypervisor.
pub fn is_pvm() -> bool {
    Path::new(&pvm_module_path()).exists()
}

/// Opens the KVM device and checks that brig can run guests on it.
pub fn open() -> Result<Kvm, KvmError> {
    if is_pvm() && std::env::var_os("BRIG_ALLOW_PVM").is_none() {
        return Err(KvmError::Pvm);
    }
    let path = device_path();
    let cpath = std::ffi::CString::new(path.clone())
        .map_err(|_| KvmError::Open(path.clone(), io::ErrorKind::InvalidInput.into()))?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::Missing(path.clone()),
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied(path.clone()),
        errno => KvmError::Open(path.clone(), io::Error::from_raw_os_error(errno)),
    })?;
    // Opening by path does not prove this is KVM: its API version does (KVM_API_VERSION 12).
    if kvm.get_api_version() != 12 {
        return Err(KvmError::Open(
            path,
            io::Error::other("not a KVM device (KVM_GET_API_VERSION failed)"),
        ));
    }
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
