//! vCPUs: creation, the architectural state they start with, and one thread each running
//! `KVM_RUN` and dispatching port-I/O and MMIO exits to the buses.
//!
//! Stopping: the VM's [`ExitSignal`] sets a stop flag; threads check it after every exit and
//! are kicked out of `KVM_RUN` by a real-time signal until they notice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::{CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::x86_64::{cpuid, msr, regs};
use crate::devices::bus::Bus;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset itself (i8042 reset line: its reboot, or `panic=-1` after a panic).
    Reset,
    /// The guest triple-faulted or asked KVM to shut it down.
    Shutdown,
    /// The VMM stopped it (teardown, timeout).
    Stopped,
    /// A vCPU failed.
    Error(String),
}

/// How a VM's end is announced: the first reason wins, an eventfd wakes whoever waits.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    stop: AtomicBool,
    evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            stop: AtomicBool::new(false),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` (unless one is already recorded), tells vCPUs to stop, wakes waiters.
    pub fn trigger(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Readable once the VM is ending.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// A vCPU could not be created or configured.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM call failed.
    #[error("vCPU {index}: {what}: {source}")]
    Kvm {
        index: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The CPUID KVM offers cannot be used.
    #[error("vCPU CPUID: {0}")]
    Cpuid(#[from] cpuid::CpuidError),
    /// Starting the thread failed.
    #[error("starting vCPU thread: {0}")]
    Thread(std::io::Error),
}

/// Signal used to kick vCPU threads out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler; its only effect is interrupting KVM_RUN with EINTR.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Creates and configures `count` vCPUs; vCPU 0 starts at `entry` in long mode.
pub fn create(kvm: &Kvm, vm: &VmFd, count: u8, entry: u64) -> Result<Vec<VcpuFd>, VcpuError> {
    let base_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VcpuError::Kvm {
            index: 0,
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    let msrs = Msrs::from_entries(&msr::boot_msr_entries()).map_err(|_| VcpuError::Kvm {
        index: 0,
        what: "building MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let mut vcpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        let kvm_err = |what| {
            move |source| VcpuError::Kvm {
                index,
                what,
                source,
            }
        };
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;

        let mut cpuid: CpuId = base_cpuid.clone();
        cpuid::normalize(cpuid.as_mut_slice(), u32::from(index), u32::from(count))?;
        fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;

        let written = fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if written != msrs.as_slice().len() {
            return Err(VcpuError::Kvm {
                index,
                what: "KVM_SET_MSRS (not every MSR accepted)",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
        let lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
        fd.set_lapic(&regs::configure_lint(lapic))
            .map_err(kvm_err("KVM_SET_LAPIC"))?;
        fd.set_fpu(&regs::boot_fpu())
            .map_err(kvm_err("KVM_SET_FPU"))?;

        // Application processors wait for INIT/SIPI from the boot CPU; only it gets a state.
        if index == 0 {
            let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
            fd.set_sregs(&regs::long_mode_sregs(sregs))
                .map_err(kvm_err("KVM_SET_SREGS"))?;
            fd.set_regs(&regs::boot_regs(entry))
                .map_err(kvm_err("KVM_SET_REGS"))?;
        }
        vcpus.push(fd);
    }
    Ok(vcpus)
}

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuShared {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    /// When vCPU 0 first entered the guest (the kernel's entry).
    pub first_entry: Arc<OnceLock<Instant>>,
}

/// Starts the thread of vCPU `index`.
pub fn spawn(index: u8, mut fd: VcpuFd, shared: VcpuShared) -> Result<JoinHandle<()>, VcpuError> {
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || run(index, &mut fd, &shared))
        .map_err(VcpuError::Thread)
}

fn run(index: u8, fd: &mut VcpuFd, shared: &VcpuShared) {
    let exit = &shared.exit;
    // From here on this thread runs guest code: confine it before the first KVM_RUN.
    if super::seccomp::enabled() {
        if let Err(e) = super::seccomp::apply_vcpu_filter() {
            exit.trigger(ExitReason::Error(format!("vCPU {index}: {e}")));
            return;
        }
    }
    while !exit.stopping() {
        if index == 0 {
            shared.first_entry.get_or_init(Instant::now);
        }
        match fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                shared.pio.read(u64::from(port), data);
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                shared.pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                shared.mmio.read(addr, data);
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                shared.mmio.write(addr, data);
            }
            Ok(VcpuExit::Shutdown) | Ok(VcpuExit::SystemEvent(..)) | Ok(VcpuExit::Hlt) => {
                exit.trigger(ExitReason::Shutdown);
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => exit.trigger(ExitReason::Error(format!(
                "vCPU {index}: KVM entry failed (hardware reason {reason:#x}, cpu {cpu})"
            ))),
            Ok(VcpuExit::InternalError) => exit.trigger(ExitReason::Error(format!(
                "vCPU {index}: KVM internal error (emulation failure)"
            ))),
            Ok(other) => {
                tracing::debug!("vcpu{index}: unhandled exit {other:?}");
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => exit.trigger(ExitReason::Error(format!("vCPU {index}: KVM_RUN: {e}"))),
        }
    }
}

/// Stops vCPU threads: kicks them out of KVM_RUN until each has returned, then joins.
pub fn stop_all(threads: Vec<JoinHandle<()>>, exit: &ExitSignal) {
    exit.trigger(ExitReason::Stopped);
    for t in threads {
        // A kick can land just before the thread re-enters KVM_RUN; repeat until it is out.
        while !t.is_finished() {
            let _ = t.kill(kick_signal());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = t.join();
    }
}
