//! Reaping, pid 1's duty, shared with the threads that spawn processes.
//!
//! Every child (and every orphan the kernel re-parents to init) is reaped here; a thread
//! that spawned a process registers its pid and receives that process's wait status.
//!
//! `std::process::Command::spawn` waits for its child itself when exec fails, so reaping
//! must not steal that child: spawns hold [`spawn_guard`] (a read lock); the reaper first
//! waits for an exited child without reaping it (`waitid(WNOWAIT)`), then takes the write
//! lock, so any spawn in progress has finished (and reaped its own failure), and only then
//! reaps everything that has exited.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

static SPAWN: RwLock<()> = RwLock::new(());
static TABLE: Mutex<Table> = Mutex::new(Table {
    waiting: None,
    early: VecDeque::new(),
});

/// Statuses of pids reaped before anyone registered them; registration follows a spawn
/// within microseconds, so a short memory is enough.
const EARLY_MAX: usize = 1024;

struct Table {
    waiting: Option<HashMap<i32, Sender<i32>>>,
    early: VecDeque<(i32, i32)>,
}

/// Held while spawning a process.
pub fn spawn_guard() -> RwLockReadGuard<'static, ()> {
    SPAWN.read().unwrap_or_else(|p| p.into_inner())
}

/// The wait status of `pid` will arrive on the returned channel.
pub fn register(pid: i32) -> Receiver<i32> {
    let (tx, rx) = channel();
    let mut t = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = t.early.iter().position(|(p, _)| *p == pid) {
        let (_, status) = t.early.remove(i).unwrap_or_default();
        let _ = tx.send(status);
    } else {
        t.waiting.get_or_insert_with(HashMap::new).insert(pid, tx);
    }
    rx
}

fn dispatch(pid: i32, status: i32) {
    let mut t = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = t.waiting.as_mut().and_then(|w| w.remove(&pid)) {
        let _ = tx.send(status);
    } else {
        if t.early.len() >= EARLY_MAX {
            t.early.pop_front();
        }
        t.early.push_back((pid, status));
    }
}

/// Blocks until a child has exited, reaps every exited child and returns them.
/// `None` when there are no children at all.
fn reap_some() -> Option<Vec<(i32, i32)>> {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: info is valid for writing; WNOWAIT leaves the child a zombie.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
    let _exclusive = SPAWN.write().unwrap_or_else(|p| p.into_inner());
    let mut reaped = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: status is a valid int to write.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
        reaped.push((pid, status));
    }
    Some(reaped)
}

/// Reaps (and dispatches) until `pid` has exited; returns its status, `None` if it never
/// shows up (no children left).
pub fn reap_until(pid: i32) -> Option<i32> {
    loop {
        for (p, status) in reap_some()? {
            if p == pid {
                return Some(status);
            }
            dispatch(p, status);
        }
    }
}

/// Reaps (and dispatches) until no child is left.
pub fn reap_all() {
    while let Some(batch) = reap_some() {
        for (p, status) in batch {
            dispatch(p, status);
        }
    }
}

/// The workload's wait status as the protocol reports it.
pub fn exit_status(status: i32, uptime_ns: u64) -> brig_protocol::ExitStatus {
    if libc::WIFSIGNALED(status) {
        brig_protocol::ExitStatus {
            code: None,
            signal: Some(libc::WTERMSIG(status)),
            uptime_ns,
        }
    } else {
        brig_protocol::ExitStatus {
            code: Some(libc::WEXITSTATUS(status)),
            signal: None,
            uptime_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_statuses_reach_late_registrations() {
        dispatch(424242, 7 << 8);
        let rx = register(424242);
        assert_eq!(rx.recv().unwrap(), 7 << 8);
        let rx = register(434343);
        dispatch(434343, 9);
        assert_eq!(rx.recv().unwrap(), 9);
        let s = exit_status(9, 1);
        assert_eq!((s.code, s.signal), (None, Some(9)));
        let s = exit_status(3 << 8, 1);
        assert_eq!((s.code, s.signal), (Some(3), None));
    }
}
