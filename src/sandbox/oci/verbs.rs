//! The verbs that change a container: `create` (the sandbox, its VMM process, the pid
//! file), `start`, `kill`, `delete`; and `list`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::bundle::{Bundle, NetNamespace};
use super::console::{self, Console};
use super::container::{Container, OciState, Status};
use super::hooks;
use super::{keeper, OciError, SUPERVISE_COMMAND};
use crate::sandbox::network::joined::OWN_NAMESPACE;
use crate::sandbox::network::NetworkOptions;
use crate::sandbox::runtime;
use crate::sandbox::scratch;
use crate::sandbox::security::cache::FilterCache;
use crate::sandbox::state::{self, Sandbox, SandboxConfig};

/// How long `delete --force` waits for a killed VMM process to be gone.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// `create`'s arguments.
#[derive(Debug)]
pub struct CreateRequest {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    /// Where the terminal's master goes (`process.terminal`).
    pub console_socket: Option<PathBuf>,
    /// The caller returns before the container ends (`create`, not `run`).
    pub detaching: bool,
}

/// Creates the container: checks the bundle, builds its rootfs image, makes the sandbox,
/// starts its VMM process (with this process's stdio, which become the container's) and
/// writes the pid file. Nothing is left behind when it fails.
pub fn create(req: &CreateRequest) -> Result<OciState, OciError> {
    let container = Container::new(&req.root, &req.id)?;
    std::fs::create_dir_all(&req.root).map_err(OciError::io(req.root.display().to_string()))?;
    match std::fs::create_dir(&container.dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(OciError::Exists(req.id.clone()))
        }
        Err(e) => return Err(OciError::io(container.dir.display().to_string())(e)),
    }
    let mut sandbox = None;
    let made = create_in(req, &container, &mut sandbox);
    if made.is_err() {
        if let Some(s) = sandbox {
            let _ = s.remove();
        }
        let _ = std::fs::remove_dir_all(&container.dir);
    }
    made
}

fn create_in(
    req: &CreateRequest,
    container: &Container,
    made: &mut Option<Sandbox>,
) -> Result<OciState, OciError> {
    let bundle = Bundle::load(&req.bundle)?;
    if super::pod::is_pod_sandbox(&bundle.config.annotations) {
        return super::pod::create(req, container, &bundle);
    }
    let home = crate::image::store::default_home().map_err(|e| OciError::Sandbox(e.to_string()))?;
    let mut run = bundle.run_spec(Some(&FilterCache::at(&home)))?;
    bundle.check_executable()?;
    let terminal = bundle.process().terminal;
    console::check(terminal, req.console_socket.as_deref(), req.detaching)?;
    // With a socket, the terminal is a pty of brig's; without one (`run`), the caller's.
    // The master goes out first, as runc's init sends it early: conmon must take it before
    // `create` exits (it gives up when the exit comes first), containerd takes it after.
    let console = match (terminal, &req.console_socket) {
        (true, Some(socket)) => {
            let c = Console::open(bundle.process().console_rows_cols())?;
            c.send_master(socket)?;
            Some(c)
        }
        _ => None,
    };
    let resources = bundle.resources()?;
    let placed = super::mounts::place(&bundle.config.mounts, &bundle.dir)?;
    let kernel =
        crate::vmm::boot::default_kernel().map_err(|e| OciError::Sandbox(e.to_string()))?;

    let id = runtime::new_id();
    let read_only = bundle.read_only();
    let scratch_path = Sandbox::at(&home, &id).dir.join("scratch.ext4");
    let root = super::rootfs::plan(
        &home,
        &bundle.rootfs,
        bundle
            .config
            .annotations
            .get(super::rootfs::ANNOTATION)
            .map(String::as_str),
        &scratch_path,
        read_only,
    )?;
    run.rootfs = Some(root.spec);
    run.memory_swap = resources.memory_swap;
    run.cpuset_cpus = resources.guest_cpuset();
    if run.hostname.is_empty() {
        if let Some(name) = &placed.etc.hostname {
            run.hostname = name.trim().to_string();
        }
    }
    let namespace = bundle.network_namespace();
    let new_netns = namespace == NetNamespace::New;
    let network = NetworkOptions {
        netns: match namespace {
            NetNamespace::Host => None,
            // The keeper's own, which it makes (see keeper::spawn) and hooks configure.
            NetNamespace::New => Some(PathBuf::from(OWN_NAMESPACE)),
            NetNamespace::Join(path) => Some(path),
        },
        resolv_conf: placed.etc.resolv_conf.clone(),
        hosts: placed.etc.hosts.clone(),
        ..Default::default()
    };
    let (mut volumes, mut guest_mounts) = crate::sandbox::volumes::resolve(&home, &placed.volumes)
        .map_err(|e| OciError::Bundle(e.to_string()))?;
    if let Some(share) = root.share {
        volumes.insert(0, share);
        guest_mounts = super::rootfs::after_root_share(guest_mounts);
    }
    if let Some(r) = run.rootfs.as_mut() {
        r.mounts = guest_mounts;
        r.files = placed.files.clone();
    }
    let config = SandboxConfig {
        name: format!("oci-{}", &id[..12]),
        id: id.clone(),
        image: format!("oci:{}", bundle.dir.display()),
        image_id: String::new(),
        created: state::now_rfc3339(),
        kernel,
        mem_mib: resources.mem_mib,
        cpus: resources.cpus,
        host_cpus: resources.host_cpus.clone(),
        cpuset_cpus: resources.cpuset_cpus.clone(),
        cpuset_mems: String::new(),
        blkio: Default::default(),
        disks: root.disks,
        run,
        stop_signal: "SIGTERM".into(),
        auto_remove: false,
        detached: true,
        network,
        security: Default::default(),
        volumes,
    };
    let sandbox = Sandbox::create(&home, &config).map_err(|e| OciError::Sandbox(e.to_string()))?;
    *made = Some(sandbox);
    if !read_only {
        scratch::create(&home.join("cache"), &scratch_path, scratch::DEFAULT_SIZE)
            .map_err(|e| OciError::Sandbox(e.to_string()))?;
    }
    let fifo = keeper::make_fifo(container)?;
    let netns = if new_netns {
        keeper::Netns::New
    } else {
        keeper::Netns::Keep
    };
    let pid = keeper::spawn(&[SUPERVISE_COMMAND, &id], &fifo, console.as_ref(), netns)?;
    drop(console);
    keeper::finish(req, container, &bundle, pid, id)
}

/// Lets the created container's workload run.
pub fn start(root: &Path, id: &str) -> Result<(), OciError> {
    let c = Container::open(root, id)?;
    let mut state = c.load()?;
    match state.status() {
        Status::Created => {}
        Status::Running | Status::Paused => {
            return Err(OciError::Status(
                "cannot start an already running container".into(),
            ))
        }
        Status::Stopped => {
            return Err(OciError::Status(
                "cannot start a container that has stopped".into(),
            ))
        }
    }
    state.started = true;
    c.save(&state)?;
    let fifo = c.start_fifo();
    let opened = rustix::fs::open(
        &fifo,
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    );
    if let Err(e) = opened {
        state.started = false;
        let _ = c.save(&state);
        return Err(OciError::Status(format!(
            "cannot start container {id}: its VMM process is not waiting ({e})"
        )));
    }
    let fail = |e: OciError| {
        let _ = signal_vmm(&state, libc::SIGKILL);
        Err(e)
    };
    if let Err(e) = hooks::run(
        state.hooks.at_start_container(),
        &state.hook_json("created"),
    ) {
        return fail(e);
    }
    let sent = opened.and_then(|fd| rustix::io::write(&fd, b"s"));
    if let Err(e) = sent {
        return fail(OciError::Status(format!(
            "cannot start container {id}: its VMM process is not waiting ({e})"
        )));
    }
    if let Err(e) = hooks::run(state.hooks.at_poststart(), &state.hook_json("running")) {
        return fail(e);
    }
    Ok(())
}

fn signal_vmm(state: &OciState, sig: i32) -> Result<(), OciError> {
    let pid = rustix::process::Pid::from_raw(state.pid).ok_or(OciError::NotExist)?;
    if sig == 0 {
        return if state.alive() {
            Ok(())
        } else {
            Err(OciError::Status("container not running".into()))
        };
    }
    let sig = rustix::process::Signal::from_named_raw(sig)
        .ok_or_else(|| OciError::Signal(sig.to_string()))?;
    rustix::process::kill_process(pid, sig).map_err(|e| match e {
        rustix::io::Errno::SRCH => OciError::Status("container not running".into()),
        e => OciError::io("kill")(e.into()),
    })
}

/// Sends `sig` to the container: the VMM process relays catchable signals to the workload;
/// SIGKILL ends the VMM, and with it the VM. A stopped container: "container not running",
/// except with `all` (runc exits 0 then).
pub fn kill(root: &Path, id: &str, sig: i32, all: bool) -> Result<(), OciError> {
    let c = Container::open(root, id)?;
    let state = c.load()?;
    if state.status() == Status::Stopped {
        return if all {
            Ok(())
        } else {
            Err(OciError::Status("container not running".into()))
        };
    }
    signal_vmm(&state, sig)
}

/// Pauses a running container (`pause`) or resumes a paused one: its VMM frozen or thawed
/// ([`crate::sandbox::pause`]), the keeper left running.
pub fn pause(root: &Path, id: &str, pause: bool) -> Result<(), OciError> {
    let state = Container::open(root, id)?.load()?;
    let sandbox = match state.status() {
        // A pod's sandbox container has no VM: nothing to freeze.
        Status::Running if pause && state.sandbox_id.is_empty() => return Ok(()),
        Status::Paused if !pause => super::sandbox_of(&state.sandbox_id)?,
        Status::Running if pause => state.vm_started()?,
        Status::Running | Status::Created if !pause => {
            return Err(OciError::Status("container not paused".into()))
        }
        _ => return Err(OciError::Status("container not running".into())),
    };
    let done = if pause {
        crate::sandbox::pause::pause(&sandbox, id)
    } else {
        crate::sandbox::pause::unpause(&sandbox, id)
    };
    done.map_err(|e| OciError::Status(e.to_string()))
}

/// Removes a stopped container (`force`: any; a created one is killed first), with its
/// sandbox and runtime files. A missing one is an error unless `force`.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), OciError> {
    let c = match Container::open(root, id) {
        Ok(c) => c,
        Err(OciError::NotExist) if force => return Ok(()),
        Err(e) => return Err(e),
    };
    let state = match c.load() {
        Ok(s) => s,
        Err(OciError::NotExist) if force => return Ok(()),
        Err(e) => return Err(e),
    };
    match state.status() {
        s @ (Status::Running | Status::Paused) if !force => {
            return Err(OciError::Status(format!(
                "cannot delete container {id} that is not stopped: {}",
                s.as_str()
            )))
        }
        Status::Stopped => {}
        _ => {
            let _ = signal_vmm(&state, libc::SIGKILL);
            let deadline = Instant::now() + KILL_WAIT;
            while state.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if state.alive() {
                return Err(OciError::Status(format!(
                    "container {id}: its VMM process {} did not end",
                    state.pid
                )));
            }
        }
    }
    if let Err(e) = hooks::run(state.hooks.at_delete(), &state.hook_json("stopped")) {
        // As runc: said, and the container goes anyway.
        eprintln!("brig-runc: {e}");
    }
    // A pod sandbox's placeholder has no sandbox (see super::pod).
    let has_vm = !state.sandbox_id.is_empty();
    if let Some(sandbox) = has_vm
        .then(|| super::sandbox_of(&state.sandbox_id))
        .and_then(Result::ok)
    {
        let _ = sandbox.remove();
    }
    if let Some(dir) = &state.cgroup {
        super::cgroup::remove(dir);
    }
    // As `brig rm` does: runtime directories whose VM is gone (a template's build VM whose
    // process was killed mid-build, as `kill` right after `start` does) go too.
    runtime::sweep_stale();
    if has_vm && !runtime::is_live(&state.sandbox_id) {
        let _ = std::fs::remove_dir_all(runtime::dir_of(&state.sandbox_id));
    }
    std::fs::remove_dir_all(&c.dir).map_err(OciError::io(c.dir.display().to_string()))
}

/// runc's `run`: create, start, wait for the container's end (its VMM process is this
/// process's child), delete; returns the workload's exit code (128+N for signal N).
pub fn run(req: &CreateRequest) -> Result<i32, OciError> {
    let state = create(req)?;
    if let Err(e) = start(&req.root, &req.id) {
        let _ = delete(&req.root, &req.id, true);
        return Err(e);
    }
    let pid = rustix::process::Pid::from_raw(state.pid).ok_or(OciError::NotExist)?;
    let waited = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
    let code = match waited {
        Ok(Some((_, status))) => status
            .exit_status()
            .or_else(|| status.terminating_signal().map(|s| 128 + s))
            .unwrap_or(255),
        Ok(None) => 255,
        Err(e) => return Err(OciError::io("waiting for the container")(e.into())),
    };
    delete(&req.root, &req.id, true)?;
    Ok(code)
}

/// Every container under `root`, by id.
pub fn list(root: &Path) -> Vec<OciState> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<OciState> = entries
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_string_lossy().into_owned();
            Container::open(root, &id).ok()?.load().ok()
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}
