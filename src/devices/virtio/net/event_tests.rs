//! The device in an event manager, as the VMM will run it: queue kicks through their
//! eventfds and the backend's fd registered edge-triggered. Checks that no frame waits for
//! an edge that already came: an RX frame that found no buffer goes out on the RX kick,
//! and a TX frame that would block goes out when the backend's fd next wakes up writable.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mock::mock_backend;
use super::tests::{frame, DATA};
use super::{Backend, Net, NetConfig};
use crate::devices::virtio::test_utils::{guest_memory, GuestQueue};
use crate::devices::virtio::{Interrupt, VirtioDevice};

pub(super) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A device over `backend` as the VMM runs it: every feature acked, activated with `rxq` and
/// `txq`, registered in an event manager.
pub(super) struct Wired {
    pub dev: Arc<Mutex<Net>>,
    pub em: EventManager<Subscriber>,
    /// The queues' kick eventfds (RX, TX).
    pub kicks: Vec<EventFd>,
    pub irq: Arc<Interrupt>,
}

pub(super) fn wire_up(
    mem: &GuestMemoryMmap,
    rxq: &GuestQueue,
    txq: &GuestQueue,
    backend: Box<dyn Backend>,
) -> Wired {
    let dev = Arc::new(Mutex::new(Net::new(NetConfig::default(), backend).unwrap()));
    let mut em: EventManager<Subscriber> = EventManager::new().unwrap();
    let sub: Subscriber = dev.clone();
    em.add_subscriber(sub);
    let kicks: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let irq = Arc::new(Interrupt::new().unwrap());
    {
        let mut d = dev.lock().unwrap();
        let all = d.features();
        d.ack_features(all);
        let evts = kicks.iter().map(|e| e.try_clone().unwrap()).collect();
        d.activate(
            mem.clone(),
            vec![rxq.queue(), txq.queue()],
            evts,
            irq.clone(),
        )
        .unwrap();
    }
    Wired {
        dev,
        em,
        kicks,
        irq,
    }
}

/// Lets the event manager handle whatever is ready, a few rounds.
fn settle(em: &mut EventManager<Subscriber>) {
    for _ in 0..4 {
        em.run_with_timeout(10).unwrap();
    }
}

#[test]
fn kicks_and_backend_readiness_through_an_event_manager() {
    let mem = guest_memory();
    let mut rxq = GuestQueue::new(&mem, 0x1_0000, 16);
    let mut txq = GuestQueue::new(&mem, 0x2_0000, 16);
    let (backend, wire) = mock_backend();
    let Wired {
        mut em, kicks, irq, ..
    } = wire_up(&mem, &rxq, &txq, Box::new(backend));
    settle(&mut em);

    // A frame arrives before the guest posted any RX buffer: its edge passes, the frame
    // stays in the backend.
    let f = frame(80, 1);
    wire.push_rx(f.clone());
    settle(&mut em);
    assert_eq!(wire.with(|s| s.reads), 0);
    // The guest posts one and kicks RX: no new backend edge is needed.
    let head = rxq.add_chain(&[(DATA, 2000, true)]);
    kicks[0].write(1).unwrap();
    settle(&mut em);
    assert_eq!(rxq.take_used(), vec![(head, 80)]);
    assert_eq!(irq.eventfd().read().unwrap(), 1);

    // A TX frame the backend cannot take now stays on the ring...
    wire.with(|s| s.tx_would_block = true);
    let t = frame(90, 2);
    mem.write_slice(&t, GuestAddress(DATA + 0x1000)).unwrap();
    let head = txq.add_chain(&[(DATA + 0x1000, 90, false)]);
    kicks[1].write(1).unwrap();
    settle(&mut em);
    assert!(wire.take_tx().is_empty());
    assert!(txq.take_used().is_empty());
    // ... and goes once the backend's fd wakes up writable (the device now waits for OUT).
    wire.with(|s| s.tx_would_block = false);
    wire.poke();
    settle(&mut em);
    assert_eq!(wire.take_tx(), vec![t]);
    assert_eq!(txq.take_used(), vec![(head, 0)]);
}
