//! `brig version` and `brig info`.

use crate::vmm::kvm;

pub fn version() -> anyhow::Result<i32> {
    println!("brig {}", env!("CARGO_PKG_VERSION"));
    println!("protocol {}", brig_protocol::PROTOCOL_VERSION);
    println!(
        "guest init {} bytes (embedded)",
        crate::vmm::initramfs::GUEST_INIT.len()
    );
    Ok(0)
}

/// What kind of KVM this host offers, in words.
fn kvm_kind() -> String {
    if kvm::is_pvm() {
        return "PVM (kvm_pvm): a software hypervisor; guest user space cannot run here, use scripts/with-kvm".into();
    }
    match kvm::open() {
        Ok(k) => format!(
            "{} (API {}, up to {} vCPUs)",
            kvm::device_path(),
            k.get_api_version(),
            k.get_max_vcpus()
        ),
        Err(e) => format!("unusable: {e}"),
    }
}

pub fn info() -> anyhow::Result<i32> {
    let kernel = crate::cli::default_kernel()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| e.to_string());
    let home = crate::image::store::default_home()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| e.to_string());
    println!("brig:          {}", env!("CARGO_PKG_VERSION"));
    println!("kvm:           {}", kvm_kind());
    println!("kernel:        {kernel}");
    println!("store:         {home}");
    println!(
        "runtime:       {}",
        crate::sandbox::runtime::base_dir().display()
    );
    println!(
        "network:       {}",
        crate::sandbox::network::backend_words()
    );
    println!(
        "limits:        vCPUs 1..={}, memory >= {} MiB (guest), scratch disk {} GiB sparse",
        crate::vmm::max_cpus(),
        crate::vmm::memory::MIN_MEM_MIB,
        crate::sandbox::scratch::DEFAULT_SIZE >> 30
    );
    Ok(0)
}
