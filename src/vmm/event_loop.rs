//! The device thread: one event-manager loop that runs every device's event handlers
//! (virtqueue notifications, host-side sockets), until told to stop, or until it fails, which
//! ends the VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::seccomp;
use super::vcpu::{ExitReason, ExitSignal};

/// A device handler as the loop holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Wakes the loop and makes it return.
struct StopHandler {
    evt: EventFd,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopHandler {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stop.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("event loop: cannot watch the stop event: {e:?}");
        }
    }
}

/// The running device thread.
pub struct EventLoop {
    stop_evt: EventFd,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the thread ends (its sender is dropped with it, even on a panic).
    ended: Receiver<()>,
}

/// How long [`EventLoop::stop`] waits before it says that the device thread does not stop.
const STOP_WARN_AFTER: Duration = Duration::from_secs(10);

/// The device thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("device event loop: {0}")]
    Manager(#[from] event_manager::Error),
    #[error("device event loop: {0}")]
    Io(#[from] std::io::Error),
}

impl EventLoop {
    /// Starts the loop with these subscribers. If the loop fails, or a device handler panics
    /// (in builds that unwind; release aborts), the VM ends through `exit` with an error: a VM
    /// whose devices are gone would otherwise look alive until its deadline.
    pub fn start(
        subscribers: Vec<Subscriber>,
        exit: Arc<ExitSignal>,
    ) -> Result<Self, EventLoopError> {
        let mut manager = EventManager::<Subscriber>::new()?;
        let stop_evt = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(Arc::new(Mutex::new(StopHandler {
            evt: stop_evt.try_clone()?,
            stop: stop.clone(),
        })));
        for s in subscribers {
            manager.add_subscriber(s);
        }
        let (ending, ended) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("devices".into())
            .spawn(move || {
                let _ending = ending;
                // Before the first guest request is handled.
                if let Err(e) = seccomp::confine(seccomp::Thread::Devices) {
                    exit.trigger(ExitReason::Error(e.to_string()));
                    return;
                }
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    while !stop.load(Ordering::SeqCst) {
                        manager.run().map_err(|e| format!("{e:?}"))?;
                    }
                    Ok::<(), String>(())
                }));
                let failure = match ran {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => format!("device event loop failed: {e}"),
                    Err(_) => "a device's event handler panicked".to_string(),
                };
                exit.trigger(ExitReason::Error(failure));
            })?;
        Ok(Self {
            stop_evt,
            thread: Some(thread),
            ended,
        })
    }

    /// Stops the loop and waits for the thread.
    pub fn stop(&mut self) {
        let _ = self.stop_evt.write(1);
        if let Some(t) = self.thread.take() {
            if let Err(RecvTimeoutError::Timeout) = self.ended.recv_timeout(STOP_WARN_AFTER) {
                // A handler that never returns (a loop, a blocking call): say so rather than
                // hang silently.
                tracing::warn!(
                    "the device thread has not stopped {STOP_WARN_AFTER:?} after being told to; \
                     still waiting"
                );
            }
            let _ = t.join();
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A device whose handler panics when its eventfd fires.
    struct Faulty(EventFd);

    impl MutEventSubscriber for Faulty {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            panic!("device bug (expected by the test)");
        }
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.0, EventSet::IN)).unwrap();
        }
    }

    fn wait_for(exit: &ExitSignal) -> Option<ExitReason> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(r) = exit.reason() {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    #[test]
    fn a_panicking_device_ends_the_vm() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let exit = Arc::new(ExitSignal::new().unwrap());
        let faulty: Subscriber = Arc::new(Mutex::new(Faulty(evt.try_clone().unwrap())));
        let mut event_loop = EventLoop::start(vec![faulty], exit.clone()).unwrap();
        assert_eq!(exit.reason(), None);
        evt.write(1).unwrap();
        match wait_for(&exit) {
            Some(ExitReason::Error(msg)) => assert!(msg.contains("panicked"), "{msg}"),
            other => panic!("expected an error, got {other:?}"),
        }
        assert!(exit.stopping());
        event_loop.stop();
    }

    #[test]
    fn stopping_is_not_an_error() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut event_loop = EventLoop::start(Vec::new(), exit.clone()).unwrap();
        event_loop.stop();
        assert_eq!(exit.reason(), None);
    }
}
