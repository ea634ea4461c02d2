//! A container's VMM process (`brig oci __supervise SANDBOX`): the pid in the pid file. It
//! takes the sandbox's runtime directory (the lock that marks the VM alive), tells `create`
//! it is ready, waits for `start` on the container's FIFO, then runs the sandbox in the
//! foreground: the workload's stdout and stderr go to this process's (the caller's) fds 1
//! and 2, drained before it exits, and catchable signals sent to it reach the workload.
//! With a terminal, its stdio is the console's slave (see [`super::console`]).
//! Its exit status is the workload's (128+N for signal N). As root, the VMM is its jailed
//! child ([`crate::sandbox::jailed`]), and this process the keeper.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::OciError;
use crate::sandbox::jailed::{supervise_jailed, JailedRun};
use crate::sandbox::outcome::EXIT_BRIG_ERROR;
use crate::sandbox::runtime::RuntimeDir;
use crate::sandbox::state::Sandbox;
use crate::sandbox::supervisor::{supervise, Mode};

/// Runs the container's sandbox `sandbox_id`; returns the exit code.
pub fn run(sandbox_id: &str, start_fifo: &Path, ready_fd: RawFd) -> i32 {
    // SAFETY: `create` handed this descriptor down for this process alone; nothing else here
    // owns it.
    let ready = unsafe { OwnedFd::from_raw_fd(ready_fd) };
    let _ = rustix::io::fcntl_setfd(&ready, rustix::io::FdFlags::CLOEXEC);
    let mut ready = std::fs::File::from(ready);
    // Hold no directory of the caller's (the bundle's rootfs is unmounted after delete).
    let _ = rustix::process::chdir("/");
    let prepared = prepare(sandbox_id, start_fifo);
    let (sandbox, runtime, mut fifo) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(ready, "err {}", e.to_string().replace('\n', " "));
            return EXIT_BRIG_ERROR;
        }
    };
    let _ = ready.write_all(b"ok\n");
    drop(ready);
    // One byte from `start`; nothing else writes to the FIFO (this process holds a write end
    // too, so the read never sees end-of-file).
    let mut byte = [0u8; 1];
    if fifo.read_exact(&mut byte).is_err() {
        return EXIT_BRIG_ERROR;
    }
    drop(fifo);
    // The workload's stderr is this process's: a failure to start it is said there once.
    let mut said = false;
    let mut report = |r: Result<(), crate::sandbox::outcome::Failure>| {
        if let Err(f) = r {
            eprintln!("brig-runc: {}", f.message);
            said = true;
        }
    };
    // Fd 0 is the container's stdin, as under runc: relayed to the workload (a caller
    // without -i gives /dev/null, which reads as its end at once). With a terminal (this
    // process's stdio is then its pty's slave, and its controlling terminal) SIGWINCH
    // becomes a resize.
    let mode = Mode::Foreground {
        stdin: true,
        console: false,
    };
    // Jailed as brig run's VMM is; this process stays the keeper, in the cgroup the caller
    // chose (linux.cgroupsPath), where the VMM stays too.
    let verdict = if crate::sandbox::jail::enabled() {
        let how = JailedRun {
            mode,
            timeout: None,
            timings: None,
            own_cgroup: false,
        };
        supervise_jailed(&sandbox, &runtime, how, &mut report).map(|end| end.verdict)
    } else {
        supervise(&sandbox, &runtime, mode, None, &mut report).map(|ended| ended.verdict)
    };
    drop(runtime);
    match verdict {
        Ok(verdict) => verdict.unwrap_or_else(|f| f.code),
        Err(e) => {
            if !said {
                eprintln!("brig-runc: {e}");
            }
            EXIT_BRIG_ERROR
        }
    }
}

fn prepare(
    sandbox_id: &str,
    start_fifo: &Path,
) -> Result<(Sandbox, RuntimeDir, std::fs::File), OciError> {
    let sandbox = super::sandbox_of(sandbox_id)?;
    let runtime = RuntimeDir::create(sandbox_id).map_err(OciError::io("runtime directory"))?;
    // Read and write: the open does not wait for a writer, and `start`'s non-blocking open
    // for writing succeeds as soon as this process is ready.
    let fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(start_fifo)
        .map_err(OciError::io(start_fifo.display().to_string()))?;
    Ok((sandbox, runtime, fifo))
}
