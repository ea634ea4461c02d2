//! Exec sessions in flight.
//!
//! When the main workload ends, every other process is killed and the VM resets. An exec
//! whose process had already finished (or was just killed) must still get its exit status to
//! the host first: a `brig exec` that ran to completion is never reported as a lost
//! connection. Each exec holds a [`Session`] from its request until its status is sent; the
//! main thread waits, bounded, for none to be left before it resets the VM.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

static COUNT: Mutex<usize> = Mutex::new(0);
static CHANGED: Condvar = Condvar::new();

/// One exec in flight; dropping it (status sent, or the session failed) ends it.
pub struct Session(());

impl Session {
    pub fn begin() -> Session {
        *COUNT.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Session(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut n = COUNT.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        CHANGED.notify_all();
    }
}

/// Whether an exec is in flight.
pub fn busy() -> bool {
    *COUNT.lock().unwrap_or_else(|p| p.into_inner()) > 0
}

/// Waits until no exec is in flight or `limit` has passed; true when none is left.
pub fn wait_idle(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut n = COUNT.lock().unwrap_or_else(|p| p.into_inner());
    while *n > 0 {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        n = CHANGED
            .wait_timeout(n, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_sessions_to_end_and_is_bounded() {
        assert!(wait_idle(Duration::ZERO));
        let s = Session::begin();
        assert!(!wait_idle(Duration::from_millis(20)));
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(s);
        });
        assert!(wait_idle(Duration::from_secs(5)));
        t.join().unwrap();
    }
}
