//! The VM-wide KVM state: the PIT, the guest's kvmclock, and the in-kernel irqchips (both
//! PICs and the IOAPIC). Restored after the vCPUs and before the devices (a device restored
//! first could raise an interrupt that SET_IRQCHIP would then overwrite).

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::SnapshotError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(|e| SnapshotError::kvm("KVM_GET_IRQCHIP", e))?;
    Ok(chip)
}

/// Saves the VM's state; every vCPU must be stopped.
pub fn save(vm: &VmFd) -> Result<VmState, SnapshotError> {
    Ok(VmState {
        pit: vm
            .get_pit2()
            .map_err(|e| SnapshotError::kvm("KVM_GET_PIT2", e))?,
        clock: vm
            .get_clock()
            .map_err(|e| SnapshotError::kvm("KVM_GET_CLOCK", e))?,
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
    })
}

/// The clock as it is restored: with flags 0, so that the guest's monotonic clock resumes
/// where it stopped. Passing KVM_GET_CLOCK's flags back would turn on KVM_CLOCK_REALTIME,
/// which advances kvmclock by the host's time since the save: every restore of an old
/// template would see its uptime jump. The wall clock is set by the guest agent instead.
fn clock_for_restore(saved: &kvm_clock_data) -> kvm_clock_data {
    kvm_clock_data {
        clock: saved.clock,
        flags: 0,
        ..Default::default()
    }
}

/// Restores the VM's state (the irqchip and PIT already created).
pub fn restore(vm: &VmFd, state: &VmState) -> Result<(), SnapshotError> {
    let k = SnapshotError::kvm;
    vm.set_pit2(&state.pit).map_err(|e| k("KVM_SET_PIT2", e))?;
    vm.set_clock(&clock_for_restore(&state.clock))
        .map_err(|e| k("KVM_SET_CLOCK", e))?;
    for (chip, id) in [
        (&state.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&state.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&state.ioapic, KVM_IRQCHIP_IOAPIC),
    ] {
        if chip.chip_id != id {
            return Err(SnapshotError::Corrupt(format!(
                "irqchip {} saved as chip {id}",
                chip.chip_id
            )));
        }
        vm.set_irqchip(chip).map_err(|e| k("KVM_SET_IRQCHIP", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_restored_without_realtime() {
        let saved = kvm_clock_data {
            clock: 123_456_789,
            flags: kvm_bindings::KVM_CLOCK_REALTIME | kvm_bindings::KVM_CLOCK_TSC_STABLE,
            realtime: 42,
            ..Default::default()
        };
        let c = clock_for_restore(&saved);
        assert_eq!((c.clock, c.flags, c.realtime), (123_456_789, 0, 0));
    }
}
