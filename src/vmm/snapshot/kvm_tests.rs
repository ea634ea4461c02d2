//! Against this host's KVM, without running guest code (so PVM's /dev/kvm serves too): the
//! state of freshly configured vCPUs and of their VM, restored into a second VM, reads back
//! the same (Firecracker's `test_vm_save_restore_state`). Skipped, saying so, where the
//! host has no KVM device at all.

use kvm_bindings::kvm_pit_config;
use kvm_ioctls::{Kvm, VmFd};

use super::vcpu::{self as snap_vcpu, VcpuState};
use super::vm as snap_vm;
use crate::vmm::vcpu;

fn new_vm(kvm: &Kvm) -> VmFd {
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    vm.create_pit2(kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .unwrap();
    vm
}

/// A vCPU's state as JSON, less what moves on by itself (the TSC, and the deadline
/// derived from it).
fn comparable(s: &VcpuState) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap();
    let msrs: Vec<(u32, u64)> = s
        .msrs
        .iter()
        .copied()
        .filter(|(i, _)| *i != 0x10 && *i != 0x6e0)
        .collect();
    v["msrs"] = serde_json::to_value(msrs).unwrap();
    v["tsc_khz"] = serde_json::Value::Null;
    v
}

#[test]
fn vcpu_and_vm_state_survive_a_restore_into_a_new_vm() {
    let Ok(kvm) = Kvm::new() else {
        eprintln!("no /dev/kvm here: skipping");
        return;
    };
    let vm = new_vm(&kvm);
    let fds = vcpu::create(&kvm, &vm, 2, 0x100_0000).unwrap();
    let msrs = snap_vcpu::msr_list(&kvm).unwrap();
    assert!(msrs.contains(&0x10), "the TSC is saved");
    let saved: Vec<VcpuState> = fds
        .iter()
        .map(|fd| snap_vcpu::save(&kvm, fd, &msrs).unwrap())
        .collect();
    // brig's boot MSRs are in the saved state, TSC_DEADLINE (when KVM has it) last.
    assert!(saved[0].msrs.contains(&(0x2ff, 0x806)), "MTRR default type");
    if let Some(pos) = saved[0].msrs.iter().position(|(i, _)| *i == 0x6e0) {
        assert_eq!(pos, saved[0].msrs.len() - 1);
    }
    assert_eq!(saved[0].regs.rip, 0x100_0000);
    let vm_state = snap_vm::save(&vm).unwrap();
    // Through the state file's encoding, as a restore would read it.
    let bytes = super::format::encode(&(&saved, &vm_state)).unwrap();
    let (saved, vm_state): (Vec<VcpuState>, snap_vm::VmState) =
        super::format::decode(&bytes).unwrap();

    let vm2 = new_vm(&kvm);
    let fds2 = vcpu::create_bare(&vm2, 2).unwrap();
    for (fd, s) in fds2.iter().zip(&saved) {
        snap_vcpu::restore(fd, s).unwrap();
    }
    snap_vm::restore(&vm2, &vm_state).unwrap();
    for (i, (fd, s)) in fds2.iter().zip(&saved).enumerate() {
        let again = snap_vcpu::save(&kvm, fd, &msrs).unwrap();
        assert_eq!(comparable(&again), comparable(s), "vCPU {i}");
    }
    let again = snap_vm::save(&vm2).unwrap();
    let json = |s: &snap_vm::VmState| {
        let mut v = serde_json::to_value(s).unwrap();
        v["clock"] = serde_json::Value::Null; // runs on
        v["pit"] = serde_json::Value::Null; // counts on
        v
    };
    assert_eq!(json(&again), json(&vm_state));
    // The clock resumed from the saved value (flags 0: no jump by the host's time).
    assert!(again.clock.clock >= vm_state.clock.clock);
}
