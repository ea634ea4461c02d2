//! Putting a Linux guest in memory: the `vmlinux` ELF (linux-loader), the initrd at the top of
//! low RAM, the command line, the zero page, the MP table and the boot page tables/GDT.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::arch::x86_64::{bootparams, mptable, regs};

/// Command line every brig guest boots with; user additions come after it.
///
/// `reboot=k` resets through the i8042 (the VMM's "VM done"); `panic=-1` reboots at once on a
/// panic; `quiet` keeps the serial console (a VM exit per byte) nearly silent;
/// `io_delay=none` avoids port-0x80 exits; `no_timer_check`/`tsc=reliable` skip checks a
/// paravirtualised clock does not need. `dhash_entries`/`ihash_entries` size the dentry and
/// inode hash tables for a sandbox rather than for the guest's RAM (1 GiB would get 128 Ki
/// buckets, 1 MiB each): every run adds dentries and inodes (its mounts, its hostname, its
/// paths) to buckets that move from run to run, and in a restored guest each new page of a
/// table it writes is a copy-on-write of the template's memory, two or three VM exits. In
/// 128 KiB tables those writes fall in the pages the template's working set already copies
/// ahead: a restored `brig run --network none IMG true` took 408 nested page faults before,
/// 275 after. Lookups stay short: 16 Ki buckets hold a build tree's dentries in chains of a
/// few entries.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 quiet io_delay=none no_timer_check tsc=reliable \
     dhash_entries=16384 ihash_entries=16384";

/// Where `kernels/build.sh` leaves the guest kernel brig boots by default.
fn kernel_cache_path() -> std::path::PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| "/root/.cache".into());
    cache.join("brig/kernels/current/vmlinux")
}

/// The guest kernel `kernels/build.sh` builds for the current sources, or `BRIG_KERNEL`.
pub fn default_kernel() -> Result<std::path::PathBuf, BootError> {
    if let Some(k) = std::env::var_os("BRIG_KERNEL") {
        return Ok(k.into());
    }
    let path = kernel_cache_path();
    if path.exists() {
        Ok(path)
    } else {
        Err(BootError::NoKernel(path))
    }
}

/// The guest could not be put in memory.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// No kernel was given and none is built.
    #[error("no guest kernel at {} (build it with kernels/build.sh, or pass --kernel)", .0.display())]
    NoKernel(std::path::PathBuf),
    /// The kernel file cannot be opened.
    #[error("kernel {path}: {source}")]
    KernelFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel is not an x86_64 ELF vmlinux, or does not fit.
    #[error("kernel {path} is not a loadable x86_64 ELF vmlinux ({reason}); brig boots the uncompressed vmlinux, not a bzImage")]
    KernelLoad { path: String, reason: String },
    /// Kernel + initrd need more memory than the VM has.
    #[error("{mem_mib} MiB of guest memory cannot hold the kernel ({kernel_mib} MiB) and the initramfs ({initrd_mib} MiB) with room to run; raise --mem")]
    NoRoom {
        mem_mib: u64,
        kernel_mib: u64,
        initrd_mib: u64,
    },
    /// The command line is too long or has bad characters.
    #[error("kernel command line: {0} (at most {max} bytes)", max = CMDLINE_MAX_SIZE - 1)]
    Cmdline(String),
    /// Writing a boot structure failed.
    #[error("{0}")]
    Setup(String),
}

/// Where the kernel was loaded: its 64-bit entry point and the end of its image.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: u64,
    pub end: u64,
}

/// Checks that `path` is an x86_64 ELF executable (before any VM exists).
pub fn check_kernel(path: &Path) -> Result<(), BootError> {
    use std::io::Read;
    let shown = path.display().to_string();
    let mut header = [0u8; 20];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|source| BootError::KernelFile {
            path: shown.clone(),
            source,
        })?;
    let bad = |reason: &str| BootError::KernelLoad {
        path: shown.clone(),
        reason: reason.into(),
    };
    if &header[..4] != b"\x7fELF" {
        return Err(bad("no ELF header"));
    }
    if header[4] != 2 {
        return Err(bad("not a 64-bit ELF"));
    }
    // e_machine at offset 18, little-endian: EM_X86_64 = 62.
    if u16::from_le_bytes([header[18], header[19]]) != 62 {
        return Err(bad("not an x86_64 ELF"));
    }
    Ok(())
}

/// Loads the ELF `vmlinux` at `path` into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::KernelFile {
        path: shown.clone(),
        source,
    })?;
    let result = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
        BootError::KernelLoad {
            path: shown.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(LoadedKernel {
        entry: result.kernel_load.0,
        end: result.kernel_end,
    })
}

/// Builds the command line: the base, the devices' entries, then the user's additions.
pub fn build_cmdline(devices: &[String], extra: &str) -> Result<Cmdline, BootError> {
    let mut cmdline =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    let err = |e: linux_loader::cmdline::Error| match e {
        linux_loader::cmdline::Error::TooLarge => BootError::Cmdline("too long".into()),
        other => BootError::Cmdline(other.to_string()),
    };
    cmdline.insert_str(BASE_CMDLINE).map_err(err)?;
    for d in devices {
        cmdline.insert_str(d).map_err(err)?;
    }
    let extra = extra.trim();
    if !extra.is_empty() {
        cmdline.insert_str(extra).map_err(err)?;
    }
    Ok(cmdline)
}

/// Headroom the guest needs beyond kernel image and initrd to get to its init.
const MIN_FREE: u64 = 16 << 20;

/// Writes initrd, command line, zero page, MP table, GDT and page tables.
pub fn setup_boot(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    initrd: &[u8],
    cmdline: &Cmdline,
    cpus: u8,
) -> Result<(), BootError> {
    let no_room = || BootError::NoRoom {
        mem_mib: mem_size >> 20,
        kernel_mib: (kernel.end - HIMEM_START).div_ceil(1 << 20),
        initrd_mib: (initrd.len() as u64).div_ceil(1 << 20),
    };
    // The unpacked initramfs needs as much room again as the archive.
    let needed = kernel.end + 2 * initrd.len() as u64 + MIN_FREE;
    if needed > bootparams::low_ram_end(mem_size) {
        return Err(no_room());
    }
    let initrd_addr = bootparams::initrd_address(mem_size, initrd.len() as u64, kernel.end)
        .ok_or_else(no_room)?;
    mem.write_slice(initrd, GuestAddress(initrd_addr))
        .map_err(|e| BootError::Setup(format!("writing the initrd: {e}")))?;

    let cmdline_str = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline_str.as_bytes_with_nul().len();
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;

    let params = bootparams::build(
        mem_size,
        cmdline_len,
        Some((initrd_addr, initrd.len() as u64)),
    )
    .map_err(|e| BootError::Setup(e.to_string()))?;
    bootparams::write(mem, &params).map_err(|e| BootError::Setup(e.to_string()))?;
    mptable::write(mem, cpus).map_err(|e| BootError::Setup(e.to_string()))?;
    regs::write_gdt_idt(mem).map_err(|e| BootError::Setup(e.to_string()))?;
    regs::write_page_tables(mem).map_err(|e| BootError::Setup(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_has_base_devices_and_extra() {
        let c = build_cmdline(
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
            " loglevel=7 ",
        )
        .unwrap();
        let s = c.as_cstring().unwrap().into_string().unwrap();
        assert!(s.starts_with(BASE_CMDLINE));
        assert!(s.ends_with("virtio_mmio.device=4K@0xd0000000:5 loglevel=7"));
    }

    #[test]
    fn cmdline_too_long_is_an_error() {
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            build_cmdline(&[], &long),
            Err(BootError::Cmdline(_))
        ));
        assert!(matches!(
            build_cmdline(&[], "a\nb"),
            Err(BootError::Cmdline(_))
        ));
    }

    #[test]
    fn not_an_elf_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("bzImage");
        std::fs::write(&bogus, vec![0x4d; 4096]).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let err = load_kernel(&mem, &bogus).unwrap_err();
        assert!(matches!(err, BootError::KernelLoad { .. }), "{err}");
        let err = load_kernel(&mem, &dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, BootError::KernelFile { .. }));
        assert!(matches!(
            check_kernel(&bogus),
            Err(BootError::KernelLoad { .. })
        ));
        assert!(matches!(
            check_kernel(&dir.path().join("missing")),
            Err(BootError::KernelFile { .. })
        ));
        // A 32-bit ELF and a non-x86 one.
        let mut elf = b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x03\0".to_vec();
        std::fs::write(&bogus, &elf).unwrap();
        assert!(check_kernel(&bogus)
            .unwrap_err()
            .to_string()
            .contains("64-bit"));
        elf[4] = 2;
        elf[18] = 183; // aarch64
        std::fs::write(&bogus, &elf).unwrap();
        assert!(check_kernel(&bogus)
            .unwrap_err()
            .to_string()
            .contains("x86_64"));
        elf[18] = 62;
        std::fs::write(&bogus, &elf).unwrap();
        check_kernel(&bogus).unwrap();
    }
}
