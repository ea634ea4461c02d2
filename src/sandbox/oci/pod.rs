//! Kubernetes pods through containerd's CRI and the runc shim: the pod's sandbox ("pause")
//! container gets no VM. Its process is a placeholder that holds the pod's network namespace
//! (CRI's pinned one, entered at create) and waits for a signal; its pid is the one CRI
//! gives the pod's app containers as their namespaces (`/proc/PID/ns/net`), and each app
//! container is a brig VM that joins that namespace and takes over its interface
//! (see `network::joined`). One app container per pod at a time: two VMs cannot both take
//! over the pod's interface, and the second one's create says so.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::bundle::{Bundle, NetNamespace};
use super::container::{Container, OciState};
use super::keeper::{self, Netns};
use super::verbs::CreateRequest;
use super::OciError;

/// The hidden subcommand (after `oci`) that is a pod sandbox's placeholder.
pub const PLACEHOLDER_COMMAND: &str = "__pod-sandbox";

/// Whether the bundle is a pod's sandbox container: containerd's CRI annotation, or CRI-O's.
pub fn is_pod_sandbox(annotations: &BTreeMap<String, String>) -> bool {
    let says = |key: &str| annotations.get(key).is_some_and(|v| v == "sandbox");
    says("io.kubernetes.cri.container-type") || says("io.kubernetes.cri-o.ContainerType")
}

/// `create` of a pod sandbox: the placeholder, in the pod's network namespace.
pub fn create(
    req: &CreateRequest,
    container: &Container,
    bundle: &Bundle,
) -> Result<OciState, OciError> {
    let netns = match bundle.network_namespace() {
        NetNamespace::Host => Netns::Keep,
        NetNamespace::New => Netns::New,
        NetNamespace::Join(path) => Netns::Enter(
            std::fs::File::open(&path)
                .map_err(OciError::io(path.display().to_string()))?
                .into(),
        ),
    };
    let fifo = keeper::make_fifo(container)?;
    let pid = keeper::spawn(&[PLACEHOLDER_COMMAND], &fifo, None, netns)?;
    keeper::finish(req, container, bundle, pid, String::new())
}

/// The placeholder: ready at once, started by `start`'s byte, then waits for SIGTERM,
/// SIGINT or SIGHUP and exits 0 (as Kubernetes' pause does); SIGKILL ends it too.
pub fn run(start_fifo: &Path, ready_fd: RawFd) -> i32 {
    // SAFETY: `create` handed this descriptor down for this process alone.
    let ready = unsafe { OwnedFd::from_raw_fd(ready_fd) };
    let _ = rustix::io::fcntl_setfd(&ready, rustix::io::FdFlags::CLOEXEC);
    let _ = rustix::process::chdir("/");
    // The signals are blocked before `create` hears "ok", so none is lost in between.
    // SAFETY: a sigset_t filled by sigemptyset/sigaddset; sigprocmask only reads it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(start_fifo);
    let mut ready = std::fs::File::from(ready);
    let mut fifo = match fifo {
        Ok(f) => {
            let _ = ready.write_all(b"ok\n");
            f
        }
        Err(e) => {
            let _ = writeln!(ready, "err {}: {e}", start_fifo.display());
            return 1;
        }
    };
    drop(ready);
    let mut byte = [0u8; 1];
    let _ = fifo.read_exact(&mut byte);
    drop(fifo);
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is a valid signal set and `sig` a valid out-pointer for the call.
    while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
    0
}
