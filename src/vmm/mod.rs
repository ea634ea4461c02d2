//! The virtual machine: KVM, guest memory, vCPU threads and the device event loop.
//!
//! [`start`] turns a [`VmConfig`] into a running VM in one readable sequence (as Firecracker's
//! builder does): open KVM, map memory, create the in-kernel irqchip and PIT, load the
//! kernel and initrd, wire the devices, create the vCPUs, start the device thread and the
//! vCPU threads. [`RunningVm`] waits for the VM's end and tears it down.

pub mod boot;
pub mod event_loop;
pub mod initramfs;
pub mod kvm;
pub mod memory;
mod save;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod virtio;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{KVM_TSS_ADDRESS, SERIAL_IRQ};
use crate::arch::x86_64::mptable;
use crate::devices::bus::Bus;
use crate::devices::i8042::{ResetLine, I8042, I8042_PORT, I8042_PORTS};
use crate::devices::serial::{SerialConsole, SerialSnapshot, COM1_PORT, UART_PORTS};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::MmioSlot;

pub use crate::devices::serial::ConsoleLog;
pub use save::SnapshotFiles;
pub use snapshot::workingset::Prefaulted;
pub use vcpu::{ExitReason, ExitSignal};
pub use virtio::{
    Cidr, DiskConfig, EgressPolicy, EgressRule, EgressRuleError, FilterProto, FsConfig, IoLimits,
    NetBackend, NetDeviceConfig, PasstBackend, PasstBackendError, Tap, TapError, VsockConfig,
    ALWAYS_DENIED, DEFAULT_GUEST_CID,
};

/// A wait longer than any deadline a caller can express.
const MAX_WAIT: rustix::event::Timespec = rustix::event::Timespec {
    tv_sec: i64::MAX,
    tv_nsec: 0,
};

/// The most vCPUs a brig VM can have (the MP table's limit).
pub fn max_cpus() -> u8 {
    mptable::max_cpus()
}

/// How long tearing a VM down waits for its console echo to be written out.
const CONSOLE_DRAIN: Duration = Duration::from_secs(1);

/// What to boot.
#[derive(Debug)]
pub struct VmConfig {
    /// Uncompressed ELF `vmlinux`.
    pub kernel: PathBuf,
    /// The initramfs (cpio) the kernel unpacks as its root.
    pub initrd: initramfs::Initrd,
    /// Appended to the kernel command line.
    pub cmdline_extra: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Host CPUs every thread of the VMM process runs on (`--cpuset-cpus`); empty: any.
    pub host_cpus: Vec<usize>,
    /// Where the guest console's output goes.
    pub console: ConsoleLog,
    /// Disks, in the order the guest sees them (/dev/vda, ...).
    pub disks: Vec<DiskConfig>,
    /// The vsock device, when the host talks to the guest agent.
    pub vsock: Option<VsockConfig>,
    /// The network device (`None`: the guest has only `lo`).
    pub net: Option<NetDeviceConfig>,
    /// Shared directories (virtio-fs), each relayed to its file server through bounce queues.
    pub fs: Vec<FsConfig>,
}

/// The VM could not be started.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Kvm(#[from] kvm::KvmError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error(transparent)]
    EventLoop(#[from] event_loop::EventLoopError),
    #[error(transparent)]
    Virtio(#[from] virtio::VirtioError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    /// vCPU count out of range.
    #[error("--cpus {0} is out of range (1..={1})")]
    Cpus(u8, u8),
    /// Pinning the VMM process to `--cpuset-cpus` failed.
    #[error("pinning the VMM to host CPUs {cpus}: {source}")]
    Affinity {
        cpus: String,
        #[source]
        source: std::io::Error,
    },
    /// A KVM VM-level call, or setting up a legacy device, failed.
    #[error("{what}: {source}")]
    VmSetup {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A running VM. Dropping it stops it.
pub struct RunningVm {
    ready: Instant,
    exit: Arc<ExitSignal>,
    vcpus: Vec<vcpu::VcpuHandle>,
    event_loop: event_loop::EventLoop,
    first_entry: Arc<OnceLock<Instant>>,
    console: ConsoleLog,
    serial: Arc<Mutex<SerialConsole>>,
    transports: Vec<(MmioSlot, Arc<Mutex<MmioTransport>>)>,
    mem_mib: u64,
    // Kept alive for as long as vCPUs may touch them; dropped after the threads are joined.
    vm: VmFd,
    mem: GuestMemoryMmap,
    kvm: Kvm,
    prefaulted: Prefaulted,
}

fn setup_err<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl Fn(E) -> VmmError {
    move |e| VmmError::VmSetup {
        what,
        source: Box::new(e),
    }
}

/// Builds and starts the VM described by `config`. The config is consumed so that the
/// initramfs, once copied into guest memory, does not stay resident for the VM's life.
pub fn start(mut config: VmConfig) -> Result<RunningVm, VmmError> {
    let t0 = Instant::now();
    let phase = |what: &str| tracing::debug!("vmm start: {what} at {:?}", t0.elapsed());
    // Everything the user gave is checked before KVM is touched.
    check_config(&config)?;
    boot::check_kernel(&config.kernel)?;
    let plan = virtio::Plan::new(
        &config.disks,
        config.vsock.as_ref(),
        config.net.is_some(),
        &config.fs,
    )?;
    let cmdline = boot::build_cmdline(&plan.cmdline(), &config.cmdline_extra)?;

    let (kvm, vm) = create_vm(&config)?;
    let mem = memory::create(config.mem_mib)?;
    memory::register(&vm, &mem)?;
    phase("vm and memory");

    let mut mmio = Bus::new();
    let devices = virtio::attach_all(&vm, &mem, &mut mmio, &plan, config.net.take())?;

    phase("virtio devices");
    let kernel = boot::load_kernel(&mem, &config.kernel)?;
    phase("kernel loaded");
    boot::setup_boot(
        &mem,
        config.mem_mib << 20,
        &kernel,
        &config.initrd.bytes()?,
        &cmdline,
        config.cpus,
    )?;

    let exit = Arc::new(ExitSignal::new().map_err(setup_err("exit event"))?);
    let (pio, serial) = legacy_devices(&vm, &exit, &config.console, None)?;
    phase("boot structures and legacy devices");
    let vcpu_fds = vcpu::create(&kvm, &vm, config.cpus, kernel.entry)?;
    phase("vcpus created");
    launch(Parts {
        kvm,
        vm,
        mem,
        mem_mib: config.mem_mib,
        vcpu_fds,
        pio,
        mmio,
        devices,
        serial,
        exit,
        console: config.console,
        prefaulted: Prefaulted::default(),
    })
}

/// Starts the VM saved in the snapshot directory `dir` (see [`snapshot`]), with `config`'s
/// devices: they must sit where the saved ones did, and the memory size and vCPU count must
/// be the saved ones. The kernel and initramfs of `config` are not used: the guest is
/// already in memory.
pub fn restore(mut config: VmConfig, dir: &std::path::Path) -> Result<RunningVm, VmmError> {
    let t0 = Instant::now();
    let phase = |what: &str| tracing::debug!("vmm restore: {what} at {:?}", t0.elapsed());
    check_config(&config)?;
    let (saved, mem_file) = snapshot::read(dir)?;
    phase("state read");
    let plan = virtio::Plan::new(
        &config.disks,
        config.vsock.as_ref(),
        config.net.is_some(),
        &config.fs,
    )?;
    check_fit(&config, &plan, &saved)?;

    let (kvm, vm) = create_vm(&config)?;
    snapshot::host::check(&saved.host, &snapshot::host::fingerprint(&kvm)?)?;
    // Copy-on-write, also with virtio-fs devices: their file servers map only bounce
    // memory of brig's (see `devices::virtio::fs_relay`), never guest memory.
    let mem = snapshot::memory::map_private(mem_file, &saved.regions)?;
    memory::register(&vm, &mem)?;
    phase("vm and memory");
    let mut mmio = Bus::new();
    let devices = virtio::attach_all(&vm, &mem, &mut mmio, &plan, config.net.take())?;
    let vcpu_fds = vcpu::create_bare(&vm, config.cpus)?;
    for (fd, state) in vcpu_fds.iter().zip(&saved.vcpus) {
        snapshot::vcpu::restore(fd, state)?;
    }
    snapshot::vm::restore(&vm, &saved.vm)?;
    phase("kvm state");
    let prefaulted = vcpu_fds
        .first()
        .map(|fd| prefault_working_set(dir, &kvm, fd, &mem, &saved.regions))
        .unwrap_or_default();
    phase("working set");
    for ((_, transport), state) in devices.transports.iter().zip(&saved.devices) {
        transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore(&state.transport)
            .map_err(|e| snapshot::SnapshotError::Incompatible(e.to_string()))?;
    }
    // A disk may be backed by another file than when the VM was saved (a template's
    // placeholders): its capacity is the new file's, and the driver re-reads it on a
    // config-change interrupt (virtio_blk's `virtblk_config_changed`).
    for (_, transport) in &devices.transports {
        let mut t = transport.lock().unwrap_or_else(|p| p.into_inner());
        if t.device_type() == crate::devices::virtio::device_type::BLOCK {
            t.config_changed();
        }
    }
    let exit = Arc::new(ExitSignal::new().map_err(setup_err("exit event"))?);
    let (pio, serial) = legacy_devices(&vm, &exit, &config.console, Some(&saved.serial))?;
    phase("devices");
    launch(Parts {
        kvm,
        vm,
        mem,
        mem_mib: config.mem_mib,
        vcpu_fds,
        pio,
        mmio,
        devices,
        serial,
        exit,
        console: config.console,
        prefaulted,
    })
}

/// Maps the snapshot's working set in `dir` into the guest ahead of its vCPUs, when it has
/// one that fits (see [`snapshot::workingset`]); a bad one is removed and skipped: it only
/// ever saves time.
fn prefault_working_set(
    dir: &std::path::Path,
    kvm: &Kvm,
    vcpu: &kvm_ioctls::VcpuFd,
    mem: &GuestMemoryMmap,
    layout: &[snapshot::RegionState],
) -> Prefaulted {
    use snapshot::workingset::{self, WorkingSet};
    let set = match WorkingSet::load(dir) {
        None => return Prefaulted::default(),
        Some(set) => set.and_then(|s| s.check(layout).map(|()| s)),
    };
    match set {
        Ok(set) => workingset::prefault(vcpu, mem, layout, &set, workingset::kvm_can_prefault(kvm)),
        Err(e) => {
            // Gone, the next run that restores this snapshot records it again.
            tracing::warn!("not using the snapshot's working set: {e}");
            let _ = std::fs::remove_file(dir.join(workingset::WORKING_SET_FILE));
            Prefaulted::default()
        }
    }
}

/// Whether a snapshot fits the VM `config` and `plan` describe.
fn check_fit(
    config: &VmConfig,
    plan: &virtio::Plan,
    saved: &snapshot::Snapshot,
) -> Result<(), snapshot::SnapshotError> {
    let unfit = |what: String| Err(snapshot::SnapshotError::Incompatible(what));
    if saved.mem_mib != config.mem_mib {
        return unfit(format!(
            "{} MiB of memory, not {}",
            saved.mem_mib, config.mem_mib
        ));
    }
    if saved.vcpus.len() != usize::from(config.cpus) {
        return unfit(format!("{} vCPUs, not {}", saved.vcpus.len(), config.cpus));
    }
    // Checked before any device is made: a virtio-fs device, once made, has taken its file
    // server's only connection.
    let slots: Vec<(u64, u32, u32)> = plan
        .devices
        .iter()
        .map(|(s, kind)| (s.base, s.gsi, kind.device_type()))
        .collect();
    let saved_slots: Vec<(u64, u32, u32)> = saved
        .devices
        .iter()
        .map(|d| (d.base, d.gsi, d.transport.device_type))
        .collect();
    if slots != saved_slots {
        return unfit(format!(
            "devices (address, pin, type) {saved_slots:x?}, this VM's {slots:x?}"
        ));
    }
    Ok(())
}

fn check_config(config: &VmConfig) -> Result<(), VmmError> {
    if config.cpus == 0 || config.cpus > mptable::max_cpus() {
        return Err(VmmError::Cpus(config.cpus, mptable::max_cpus()));
    }
    memory::check_size(config.mem_mib)?;
    Ok(())
}

/// Pins the process, opens KVM and creates the VM with its TSS, irqchip and PIT.
fn create_vm(config: &VmConfig) -> Result<(Kvm, VmFd), VmmError> {
    // Before any VMM thread is started: they inherit the mask.
    pin_process(&config.host_cpus)?;
    let kvm = kvm::open()?;
    let max_cpus = mptable::max_cpus().min(kvm.get_max_vcpus().min(255) as u8);
    if config.cpus > max_cpus {
        return Err(VmmError::Cpus(config.cpus, max_cpus));
    }
    let vm = kvm.create_vm().map_err(setup_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(setup_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(setup_err("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(setup_err("KVM_CREATE_PIT2"))?;
    Ok((kvm, vm))
}

/// The serial console (in its saved state, if any) and the i8042 on a new port bus.
fn legacy_devices(
    vm: &VmFd,
    exit: &Arc<ExitSignal>,
    console: &ConsoleLog,
    saved_serial: Option<&SerialSnapshot>,
) -> Result<(Bus, Arc<Mutex<SerialConsole>>), VmmError> {
    let mut pio = Bus::new();
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(setup_err("serial irq"))?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(setup_err("KVM_IRQFD (serial)"))?;
    let serial = match saved_serial {
        None => SerialConsole::new(serial_irq, console.clone()),
        Some(s) => SerialConsole::from_state(serial_irq, console.clone(), s)
            .map_err(setup_err("serial state"))?,
    };
    let serial = Arc::new(Mutex::new(serial));
    pio.insert(serial.clone(), COM1_PORT, UART_PORTS)
        .map_err(setup_err("serial"))?;
    let reset_exit = exit.clone();
    let i8042 = I8042::new(ResetLine::new(move || {
        reset_exit.trigger(ExitReason::Reset)
    }));
    pio.insert(Arc::new(Mutex::new(i8042)), I8042_PORT, I8042_PORTS)
        .map_err(setup_err("i8042"))?;
    Ok((pio, serial))
}

/// A VM whose memory, devices and vCPUs are ready to run.
struct Parts {
    kvm: Kvm,
    vm: VmFd,
    mem: GuestMemoryMmap,
    mem_mib: u64,
    vcpu_fds: Vec<kvm_ioctls::VcpuFd>,
    pio: Bus,
    mmio: Bus,
    devices: virtio::Attached,
    serial: Arc<Mutex<SerialConsole>>,
    exit: Arc<ExitSignal>,
    console: ConsoleLog,
    /// What a restore mapped ahead of the vCPUs.
    prefaulted: Prefaulted,
}

/// What [`confine_next_vm`] was given: run once, by the next VM this process starts.
type BeforeThreads = Box<dyn FnOnce() -> std::io::Result<()> + Send>;

static BEFORE_THREADS: Mutex<Option<BeforeThreads>> = Mutex::new(None);

/// Has the next VM this process starts (or restores) call `confine` once everything it opens
/// is open (KVM, memory, disks, sockets, the kernel read) and before it starts any thread
/// (the console echo included): the moment for a process to jail itself (namespaces,
/// another root, another uid), which Linux applies per thread. An error stops the start.
pub fn confine_next_vm(confine: BeforeThreads) {
    *BEFORE_THREADS.lock().unwrap_or_else(|p| p.into_inner()) = Some(confine);
}

/// Starts the device thread and the vCPU threads.
fn launch(p: Parts) -> Result<RunningVm, VmmError> {
    let confine = BEFORE_THREADS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(confine) = confine {
        confine().map_err(setup_err("confining the VMM"))?;
    }
    p.console.start_echo();
    vcpu::install_kick_handler().map_err(setup_err("vCPU kick signal"))?;
    if seccomp::enabled() {
        seccomp::install_sigsys_handler().map_err(setup_err("seccomp"))?;
    }
    let event_loop = event_loop::EventLoop::start(p.devices.subscribers, p.exit.clone())?;
    // A restored device replays what the pause may have swallowed (nothing for a fresh one).
    for (_, t) in &p.devices.transports {
        t.lock().unwrap_or_else(|e| e.into_inner()).kick();
    }

    let shared = vcpu::VcpuShared {
        pio: Arc::new(p.pio),
        mmio: Arc::new(p.mmio),
        exit: p.exit.clone(),
        first_entry: Arc::new(OnceLock::new()),
    };
    let first_entry = shared.first_entry.clone();
    let ready = Instant::now();
    let mut vcpus = Vec::new();
    for (index, fd) in p.vcpu_fds.into_iter().enumerate() {
        match vcpu::spawn(index as u8, fd, &p.vm, shared.clone()) {
            Ok(t) => vcpus.push(t),
            Err(e) => {
                vcpu::stop_all(vcpus, &p.exit);
                return Err(e.into());
            }
        }
    }
    Ok(RunningVm {
        ready,
        exit: p.exit,
        vcpus,
        event_loop,
        first_entry,
        console: p.console,
        serial: p.serial,
        transports: p.devices.transports,
        mem_mib: p.mem_mib,
        vm: p.vm,
        mem: p.mem,
        kvm: p.kvm,
        prefaulted: p.prefaulted,
    })
}

/// Pins every thread of this process to the host CPUs `cpus` (nothing when empty); threads
/// started later inherit the mask from their creator. A thread that ends meanwhile is no
/// longer there to pin.
fn pin_process(cpus: &[usize]) -> Result<(), VmmError> {
    if cpus.is_empty() {
        return Ok(());
    }
    let err = |source: std::io::Error| VmmError::Affinity {
        cpus: format!("{cpus:?}"),
        source,
    };
    let mut set = rustix::thread::CpuSet::new();
    for &c in cpus {
        if c >= rustix::thread::CpuSet::MAX_CPU {
            return Err(err(std::io::Error::from(std::io::ErrorKind::InvalidInput)));
        }
        set.set(c);
    }
    // The calling thread first, so that a thread it starts while the others are pinned
    // already has the mask.
    rustix::thread::sched_setaffinity(None, &set).map_err(|e| err(e.into()))?;
    let tasks = std::fs::read_dir("/proc/self/task").map_err(err)?;
    for task in tasks.flatten() {
        let tid = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok());
        let Some(pid) = tid.and_then(rustix::process::Pid::from_raw) else {
            continue;
        };
        match rustix::thread::sched_setaffinity(Some(pid), &set) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => return Err(err(e.into())),
        }
    }
    Ok(())
}

impl RunningVm {
    /// Why the VM ended, once it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.reason()
    }

    /// File descriptor that becomes readable when the VM ends (for poll loops).
    pub fn exit_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the eventfd belongs to `self.exit`, which `self` keeps alive, so the
        // descriptor stays open for as long as the borrow lasts.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.exit.eventfd().as_raw_fd()) }
    }

    /// When everything was set up, just before the vCPUs started.
    pub fn ready_at(&self) -> Instant {
        self.ready
    }

    /// What a restore mapped into the guest ahead of its vCPUs (nothing for a boot).
    pub fn prefaulted(&self) -> Prefaulted {
        self.prefaulted
    }

    /// When the boot vCPU first entered the guest (the kernel's 64-bit entry).
    pub fn kernel_entry(&self) -> Option<Instant> {
        self.first_entry.get().copied()
    }

    /// Waits up to `timeout` (forever if `None`) for the VM to end.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitReason> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(r) = self.exit_reason() {
                return Some(r);
            }
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    Some(rustix::event::Timespec::try_from(left).unwrap_or(MAX_WAIT))
                }
            };
            let exit_fd = self.exit_fd();
            let mut fds = [rustix::event::PollFd::new(
                &exit_fd,
                rustix::event::PollFlags::IN,
            )];
            // Woken, interrupted or timed out: the loop looks at the reason and the clock.
            let _ = rustix::event::poll(&mut fds, timeout.as_ref());
        }
    }

    /// Stops the VM (if still running), joins its threads, and says why it ended.
    pub fn shutdown(mut self) -> ExitReason {
        self.teardown();
        self.exit.reason().unwrap_or(ExitReason::Stopped)
    }

    /// Stops the vCPUs and says why the VM ended, as [`Self::shutdown`] does, but leaves the
    /// threads, guest memory and KVM descriptors to the process's exit, which must come next
    /// (nothing is dropped: a vCPU thread that has not seen its kick yet still finds guest
    /// memory mapped). Joining threads that the exit ends anyway costs a VMM process that is
    /// done tens of milliseconds under nested emulation, on every run.
    pub fn abandon(mut self) -> ExitReason {
        vcpu::kick_all(&mut self.vcpus, &self.exit);
        self.console.drain(CONSOLE_DRAIN);
        let reason = self.exit.reason().unwrap_or(ExitReason::Stopped);
        std::mem::forget(self);
        reason
    }

    fn teardown(&mut self) {
        vcpu::stop_all(std::mem::take(&mut self.vcpus), &self.exit);
        self.event_loop.stop();
        // The console's last lines (a panic, say) reach the host before the caller reports on
        // the VM; a host side that reads nothing costs at most this wait.
        self.console.drain(CONSOLE_DRAIN);
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.teardown();
    }
}
