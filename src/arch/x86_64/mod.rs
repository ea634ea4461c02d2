//! x86_64 guest setup: memory layout, boot parameters, page tables, GDT, CPUID, MSRs and the
//! MP table. Pure functions over guest memory and KVM structures, unit-tested without a VM.

pub mod bootparams;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
