//! vCPUs: creation, the architectural state they start with, and one thread each running
//! `KVM_RUN` and dispatching port-I/O and MMIO exits to the buses.
//!
//! Every exit brig does not handle ends the VM with [`ExitReason::Error`] naming it.
//!
//! Stopping ([`stop_all`]): the VM's [`ExitSignal`] sets a stop flag, which threads check
//! before every `KVM_RUN`; the stopper then sets each vCPU's `kvm_run.immediate_exit` and
//! kicks its thread with a real-time signal, as Firecracker does.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    CpuId, Msrs, KVM_EXIT_EXCEPTION, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_UNKNOWN,
    KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::x86_64::{cpuid, msr, regs};
use crate::devices::bus::Bus;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset itself (i8042 reset line: its reboot, or `panic=-1` after a panic; or
    /// a KVM reset system event).
    Reset,
    /// The guest triple-faulted or asked KVM to shut it down (a KVM shutdown system event).
    Shutdown,
    /// The VMM stopped it (teardown, timeout).
    Stopped,
    /// A vCPU failed, or got an exit brig does not handle (named in the message).
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
    /// A vCPU thread panicked, so its vCPU cannot be saved.
    #[error("vCPU {0}: its thread panicked")]
    Lost(u8),
}

/// Signal used to kick vCPU threads out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler; its only effect is interrupting KVM_RUN with EINTR. A
/// kick that lands just before `KVM_RUN` is not lost: `immediate_exit` is set before it.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Creates and configures `count` vCPUs; vCPU 0 starts at `entry` in long mode.
pub fn create(kvm: &Kvm, vm: &VmFd, count: u8, entry: u64) -> Result<Vec<VcpuFd>, VcpuError> {
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
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
        if tsc_deadline {
            cpuid::offer_tsc_deadline(cpuid.as_mut_slice());
        }
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

/// Creates `count` vCPUs with no state of brig's (for a restore, which sets all of it).
pub fn create_bare(vm: &VmFd, count: u8) -> Result<Vec<VcpuFd>, VcpuError> {
    (0..count)
        .map(|index| {
            vm.create_vcpu(u64::from(index))
                .map_err(|source| VcpuError::Kvm {
                    index,
                    what: "KVM_CREATE_VCPU",
                    source,
                })
        })
        .collect()
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

/// A running vCPU thread and what it takes to stop it.
pub struct VcpuHandle {
    index: u8,
    /// Gives the vCPU back when it ends (for a snapshot of a paused VM).
    thread: JoinHandle<VcpuFd>,
    /// Disconnected when the thread ends (its sender is dropped with it, even on a panic).
    ended: Receiver<()>,
    /// The same vCPU opened a second time (a dup of its fd, with its own mapping of the shared
    /// `kvm_run` page): the stopper sets `immediate_exit` through it. Only the stopper writes
    /// that byte, so the thread's own mapping is never written by two threads.
    kick: VcpuFd,
}

/// Starts the thread of vCPU `index`.
pub fn spawn(
    index: u8,
    mut fd: VcpuFd,
    vm: &VmFd,
    shared: VcpuShared,
) -> Result<VcpuHandle, VcpuError> {
    let kick = reopen(vm, &fd).map_err(|source| VcpuError::Kvm {
        index,
        what: "opening the vCPU a second time (dup, mmap kvm_run)",
        source,
    })?;
    let (ending, ended) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            let _ending = ending;
            run(index, &mut fd, &shared);
            fd
        })
        .map_err(VcpuError::Thread)?;
    Ok(VcpuHandle {
        index,
        thread,
        ended,
        kick,
    })
}

/// A second `VcpuFd` for the same vCPU (as Firecracker's `copy_kvm_vcpu_fd`).
fn reopen(vm: &VmFd, fd: &VcpuFd) -> Result<VcpuFd, kvm_ioctls::Error> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor `fd` owns and keeps open; the result is
    // checked.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(kvm_ioctls::Error::last());
    }
    // SAFETY: `dup` is a fresh descriptor of a vCPU of `vm`, owned by nothing else; the
    // returned VcpuFd takes it over (and closes it on failure).
    unsafe { vm.create_vcpu_from_rawfd(dup) }
}

/// What the loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Back into the guest.
    Run,
    /// The VM ends, for this reason.
    End(ExitReason),
}

/// Dispatches one exit. Every exit brig does not expect ends the VM with an error naming it:
/// re-entering the guest after one would at best spin at 100% CPU with the VM looking alive.
fn handle_exit(index: u8, exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus) -> Next {
    let fail = |what: String| Next::End(ExitReason::Error(format!("vCPU {index}: {what}")));
    match exit {
        VcpuExit::IoIn(port, data) => {
            pio.read(u64::from(port), data);
            Next::Run
        }
        VcpuExit::IoOut(port, data) => {
            pio.write(u64::from(port), data);
            Next::Run
        }
        VcpuExit::MmioRead(addr, data) => {
            mmio.read(addr, data);
            Next::Run
        }
        VcpuExit::MmioWrite(addr, data) => {
            mmio.write(addr, data);
            Next::Run
        }
        // x86 reports a triple fault this way (a guest that crashed hard, or the last resort of
        // its reboot code); a clean reboot goes through the i8042 (`reboot=k`).
        VcpuExit::Shutdown => Next::End(ExitReason::Shutdown),
        // The guest's own end, as Firecracker distinguishes it; any other type (a crash report,
        // a suspend, an SEV termination) is not something a brig guest asks for.
        VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => Next::End(ExitReason::Shutdown),
        VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => Next::End(ExitReason::Reset),
        VcpuExit::SystemEvent(kind, data) => fail(format!(
            "unexpected KVM system event type {kind} (data {data:x?})"
        )),
        // With the in-kernel irqchip KVM waits out HLT itself and never returns it: one here
        // means the local APIC is not in the kernel, a VMM bug. Re-entering would spin.
        VcpuExit::Hlt => fail("unexpected HLT exit (is the in-kernel irqchip missing?)".into()),
        VcpuExit::FailEntry(reason, cpu) => fail(format!(
            "KVM entry failed (hardware reason {reason:#x}, cpu {cpu})"
        )),
        VcpuExit::InternalError => fail("KVM internal error".into()),
        other => fail(format!("unhandled KVM exit {other:?}")),
    }
}

/// Details KVM left in `kvm_run` about an exit that ends the VM, for the error message.
fn exit_details(fd: &mut VcpuFd) -> String {
    let run = fd.get_kvm_run();
    let what = match run.exit_reason {
        // SAFETY: the exit reason says which member of the union KVM filled in.
        KVM_EXIT_UNKNOWN => format!("hardware exit reason {:#x}", unsafe {
            run.__bindgen_anon_1.hw.hardware_exit_reason
        }),
        KVM_EXIT_INTERNAL_ERROR => {
            // SAFETY: as above.
            let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
            let name = match suberror {
                KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
                KVM_INTERNAL_ERROR_SIMUL_EX => "simultaneous exceptions",
                KVM_INTERNAL_ERROR_DELIVERY_EV => "failure while delivering an event",
                KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
                _ => "unknown",
            };
            format!("suberror {suberror}: {name}")
        }
        KVM_EXIT_EXCEPTION => {
            // SAFETY: as above.
            let ex = unsafe { run.__bindgen_anon_1.ex };
            format!(
                "exception {}, error code {:#x}",
                ex.exception, ex.error_code
            )
        }
        _ => String::new(),
    };
    let rip = fd
        .get_regs()
        .map_or_else(|_| String::new(), |r| format!("rip {:#x}", r.rip));
    match (what.is_empty(), rip.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!(" ({what})"),
        (true, false) => format!(" ({rip})"),
        (false, false) => format!(" ({what}, {rip})"),
    }
}

fn run(index: u8, fd: &mut VcpuFd, shared: &VcpuShared) {
    let exit = &shared.exit;
    // From here on this thread runs guest code: confine it before the first KVM_RUN.
    if let Err(e) = super::seccomp::confine(super::seccomp::Thread::Vcpu) {
        exit.trigger(ExitReason::Error(format!("vCPU {index}: {e}")));
        return;
    }
    // In builds that unwind (tests, debug; release aborts on panic), a panic in an exit
    // handler would otherwise end this thread alone and leave the guest without this vCPU.
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_loop(index, fd, shared)));
    if let Err(payload) = outcome {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        exit.trigger(ExitReason::Error(format!(
            "vCPU {index}: panicked in an exit handler: {what}"
        )));
    }
}

fn run_loop(index: u8, fd: &mut VcpuFd, shared: &VcpuShared) {
    let exit = &shared.exit;
    while !exit.stopping() {
        if index == 0 {
            shared.first_entry.get_or_init(Instant::now);
        }
        let next = match fd.run() {
            Ok(e) => handle_exit(index, e, &shared.pio, &shared.mmio),
            // Kicked (or `immediate_exit` is set: both mean "stopping", checked above), or
            // another signal landed on this thread: go round.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Run,
            Err(e) => Next::End(ExitReason::Error(format!("vCPU {index}: KVM_RUN: {e}"))),
        };
        match next {
            Next::Run => {}
            Next::End(ExitReason::Error(msg)) => {
                // Reported by whoever waits for the VM (nothing is written here: a stalled
                // stderr must not keep this thread from being joined).
                exit.trigger(ExitReason::Error(format!("{msg}{}", exit_details(fd))));
                return;
            }
            Next::End(reason) => {
                tracing::debug!("vcpu{index}: the guest ended: {reason:?}");
                exit.trigger(reason);
                return;
            }
        }
    }
}

/// How long [`stop_all`] waits before it says that a vCPU does not stop (it takes
/// milliseconds, even under nested emulation).
const STOP_WARN_AFTER: Duration = Duration::from_secs(10);

/// Stops vCPU threads and joins them.
///
/// No kick can be lost: the stop flag is set first, then each vCPU's `immediate_exit`, then
/// the signal. A thread inside `KVM_RUN` is interrupted by the signal (EINTR); one about to
/// enter it finds `immediate_exit` set and gets EINTR at once; either way it then sees the
/// flag. `immediate_exit` is never cleared: a VM that stops does not resume.
pub fn stop_all(vcpus: Vec<VcpuHandle>, exit: &ExitSignal) {
    let _ = stop_and_join(vcpus, exit);
}

/// Stops the vCPU threads as [`stop_all`] does and gives back the vCPUs, each with its last
/// port-I/O or MMIO access completed (KVM's api.rst: the state is consistent only once
/// userspace has re-entered `KVM_RUN` after such an exit; with `immediate_exit` set that
/// entry returns EINTR without running guest code). For a snapshot: the VM does not resume.
pub fn pause_all(vcpus: Vec<VcpuHandle>, exit: &ExitSignal) -> Result<Vec<VcpuFd>, VcpuError> {
    let mut fds = Vec::with_capacity(vcpus.len());
    for (index, fd) in stop_and_join(vcpus, exit).into_iter().enumerate() {
        let Some(mut fd) = fd else {
            return Err(VcpuError::Lost(index as u8));
        };
        fd.set_kvm_immediate_exit(1);
        match fd.run() {
            Err(e) if e.errno() == libc::EINTR => {}
            Err(source) => {
                return Err(VcpuError::Kvm {
                    index: index as u8,
                    what: "KVM_RUN (completing the last exit)",
                    source,
                })
            }
            Ok(_) => {
                return Err(VcpuError::Kvm {
                    index: index as u8,
                    what: "KVM_RUN returned an exit despite immediate_exit",
                    source: kvm_ioctls::Error::new(libc::EBUSY),
                })
            }
        }
        fds.push(fd);
    }
    Ok(fds)
}

/// Stops the vCPU threads from running the guest, as [`stop_all`] does, without waiting for
/// them: for a process that exits next, which ends them anyway.
pub fn kick_all(vcpus: &mut [VcpuHandle], exit: &ExitSignal) {
    exit.trigger(ExitReason::Stopped);
    for v in vcpus.iter_mut() {
        v.kick.set_kvm_immediate_exit(1);
    }
    // The byte is read by the kernel on the vCPU's entry, not through a Rust reference; make
    // sure the stores are done before the signals go out.
    fence(Ordering::SeqCst);
    for v in vcpus.iter() {
        if !v.thread.is_finished() {
            if let Err(e) = v.thread.kill(kick_signal()) {
                tracing::warn!("kicking vCPU {}: {e}", v.index);
            }
        }
    }
}

fn stop_and_join(mut vcpus: Vec<VcpuHandle>, exit: &ExitSignal) -> Vec<Option<VcpuFd>> {
    kick_all(&mut vcpus, exit);
    let deadline = Instant::now() + STOP_WARN_AFTER;
    let mut fds = Vec::with_capacity(vcpus.len());
    for v in vcpus {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(RecvTimeoutError::Timeout) = v.ended.recv_timeout(left) {
            // A thread outside KVM_RUN that does not come back (blocked in a device): say so
            // rather than hang silently.
            tracing::warn!(
                "vCPU {} has not stopped {STOP_WARN_AFTER:?} after its kick; still waiting",
                v.index
            );
        }
        fds.push(v.thread.join().ok());
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;

    struct Port(Vec<u8>);

    impl BusDevice for Port {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(0x42);
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    fn error_of(next: Next) -> String {
        match next {
            Next::End(ExitReason::Error(msg)) => msg,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn io_goes_to_the_buses_and_the_guest_runs_on() {
        let port = Arc::new(Mutex::new(Port(Vec::new())));
        let mut pio = Bus::new();
        pio.insert(port.clone(), 0x3f8, 8).unwrap();
        let mmio = Bus::new();
        assert_eq!(
            handle_exit(0, VcpuExit::IoOut(0x3f8, &[7]), &pio, &mmio),
            Next::Run
        );
        assert_eq!(port.lock().unwrap().0, vec![7]);
        let mut data = [0u8; 1];
        assert_eq!(
            handle_exit(0, VcpuExit::IoIn(0x3f9, &mut data), &pio, &mmio),
            Next::Run
        );
        assert_eq!(data, [0x42]);
        // Nothing at that address: reads see all ones, the guest goes on.
        let mut data = [0u8; 4];
        assert_eq!(
            handle_exit(0, VcpuExit::MmioRead(0xd000_0000, &mut data), &pio, &mmio),
            Next::Run
        );
        assert_eq!(data, [0xff; 4]);
    }

    #[test]
    fn the_guest_ends_cleanly_only_by_shutdown_or_reset() {
        let (pio, mmio) = (Bus::new(), Bus::new());
        let end = |exit| handle_exit(1, exit, &pio, &mmio);
        assert_eq!(
            end(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[])),
            Next::End(ExitReason::Shutdown)
        );
        assert_eq!(
            end(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[0])),
            Next::End(ExitReason::Reset)
        );
        assert_eq!(end(VcpuExit::Shutdown), Next::End(ExitReason::Shutdown));
        let crash = error_of(end(VcpuExit::SystemEvent(
            kvm_bindings::KVM_SYSTEM_EVENT_CRASH,
            &[0x10],
        )));
        assert!(
            crash.starts_with("vCPU 1: unexpected KVM system event type 3"),
            "{crash}"
        );
    }

    /// Exits that used to be logged at debug level and re-entered (a silent spin) end the VM.
    #[test]
    fn unexpected_exits_end_the_vm_naming_the_exit() {
        let (pio, mmio) = (Bus::new(), Bus::new());
        let end = |exit| error_of(handle_exit(0, exit, &pio, &mmio));
        assert!(end(VcpuExit::Unknown).contains("unhandled KVM exit Unknown"));
        assert!(end(VcpuExit::Exception).contains("unhandled KVM exit Exception"));
        assert!(end(VcpuExit::IrqWindowOpen).contains("IrqWindowOpen"));
        assert!(end(VcpuExit::Debug(Default::default())).contains("unhandled KVM exit Debug"));
        assert!(end(VcpuExit::Hlt).contains("unexpected HLT exit"));
        assert!(end(VcpuExit::InternalError).contains("KVM internal error"));
        assert!(end(VcpuExit::FailEntry(0x80000021, 1)).contains("entry failed"));
    }

    /// The stopper's `immediate_exit`, set through the second mapping, reaches the vCPU's own
    /// `KVM_RUN`: a kick that comes before the thread enters it is not lost.
    #[test]
    fn immediate_exit_through_the_second_mapping_stops_kvm_run() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("no /dev/kvm here: skipping");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let mut kick = reopen(&vm, &vcpu).unwrap();
        kick.set_kvm_immediate_exit(1);
        let err = vcpu.run().map(|_| ()).unwrap_err();
        assert_eq!(err.errno(), libc::EINTR);
        assert_eq!(vcpu.get_kvm_run().immediate_exit, 1);
    }
}
