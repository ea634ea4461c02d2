//! Entering the jail: the system calls, in order, in the VMM process while it is still
//! single-threaded and root, its VM built.

use std::io;

use rustix::fs::{Gid, Uid};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use super::Jail;

pub(super) fn step(what: &'static str) -> impl Fn(rustix::io::Errno) -> io::Error {
    move |e| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// Lets the jailed uid connect to the runtime directory's listening sockets, which the VMM
/// bound as root: those where the guest's vsock connections arrive (`vsock.sock_PORT`), and
/// its own for host-initiated ones (`vsock.sock`), through which a VMM restored from a
/// template reaches the agent again.
fn hand_over_sockets(jail: &Jail, uid: Uid, gid: Gid) -> io::Result<()> {
    for entry in std::fs::read_dir(&jail.runtime)?.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("vsock.sock")
        {
            rustix::fs::chown(entry.path(), Some(uid), Some(gid)).map_err(step("chown"))?;
        }
    }
    Ok(())
}

/// Mounts the jail's root (an empty tmpfs with the runtime directory inside, read-only) and
/// pivots into it, in a mount namespace of its own.
fn pivot(jail: &Jail) -> io::Result<()> {
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(step("making / private"))?;
    let locked = MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC;
    rustix::mount::mount(
        "brig-jail",
        &jail.root,
        "tmpfs",
        locked,
        c"mode=0755,size=64k,nr_inodes=64",
    )
    .map_err(step("mounting the jail's tmpfs"))?;
    let relative = jail.runtime.strip_prefix("/").unwrap_or(&jail.runtime);
    let inside = jail.root.join(relative);
    std::fs::DirBuilder::new().recursive(true).create(&inside)?;
    rustix::mount::mount_bind(&jail.runtime, &inside).map_err(step("binding the runtime dir"))?;
    rustix::mount::mount_remount(&inside, MountFlags::BIND | MountFlags::RDONLY | locked, "")
        .map_err(step("making the runtime dir read-only"))?;
    rustix::process::chdir(&jail.root).map_err(step("chdir"))?;
    rustix::process::pivot_root(".", ".").map_err(step("pivot_root"))?;
    // The old root is stacked under the new one: detach it.
    rustix::mount::unmount(".", UnmountFlags::DETACH).map_err(step("detaching the old root"))?;
    rustix::process::chdir("/").map_err(step("chdir /"))?;
    rustix::mount::mount_remount("/", MountFlags::BIND | MountFlags::RDONLY | locked, "")
        .map_err(step("making the root read-only"))?;
    Ok(())
}

/// Whether the keeper still reads the events pipe whose write end is `events`: a pipe with
/// no reader polls as an error. (The VMM is pid 1 of its own PID namespace, where its
/// parent's pid reads as 0.)
fn keeper_alive(events: std::os::fd::BorrowedFd<'_>) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(&events, PollFlags::OUT)];
    match poll(&mut fds, Some(&rustix::time::Timespec::default())) {
        Ok(_) => !fds[0]
            .revents()
            .intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL),
        Err(_) => false,
    }
}

/// Enters `jail`; `events` is the write end of the pipe the VMM tells its keeper its events
/// on, open for the whole life of the process (the VMM ends with its keeper, which it sees
/// gone when that pipe has no reader left). The calling process must be single-threaded
/// and root, or for a user namespace's jail, the user the jail is for (namespaces, ids and
/// `no_new_privs` are per thread; threads started later inherit them) and root.
pub fn enter(jail: &Jail, events: std::os::fd::RawFd) -> io::Result<()> {
    use rustix::thread::UnshareFlags;
    let (uid, gid) = (Uid::from_raw(jail.uid), Gid::from_raw(jail.gid));
    // (A user namespace's jail is entered from inside one already: see `spawn`.)
    if !jail.user_ns {
        hand_over_sockets(jail, uid, gid)?;
    }
    // SAFETY: no FILES flag: the descriptor table stays shared, so no thread can see
    // descriptors of a table other than its own (and there is one thread).
    unsafe {
        rustix::thread::unshare_unsafe(
            UnshareFlags::NEWNS
                | UnshareFlags::NEWIPC
                | UnshareFlags::NEWUTS
                | UnshareFlags::NEWNET,
        )
    }
    .map_err(step("unshare"))?;
    pivot(jail)?;
    if !jail.user_ns {
        rustix::thread::set_thread_groups(&[]).map_err(step("setgroups"))?;
        rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(step("setresgid"))?;
        rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(step("setresuid"))?;
    }
    // (In a user namespace the capabilities it holds there go with the seccomp step, which
    // drops every capability of every thread.)
    // A change of uid cleared the parent-death signal: set it again, then make sure the
    // keeper did not end meanwhile.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(step("PR_SET_PDEATHSIG"))?;
    // SAFETY: open for the whole life of the process (this function's contract).
    let events = unsafe { std::os::fd::BorrowedFd::borrow_raw(events) };
    if !keeper_alive(events) {
        return Err(io::Error::other("the sandbox's keeper process ended"));
    }
    rustix::thread::set_no_new_privs(true).map_err(step("no_new_privs"))?;
    Ok(())
}
