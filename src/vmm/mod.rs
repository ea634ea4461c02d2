//! The virtual machine: KVM, guest memory, vCPU threads and the device event loop.
