//! x86_64 guest setup: boot parameters, page tables, GDT, CPUID, MSRs, MP table.
