//! The initramfs brig writes for every VM: a cpio (newc) archive with the guest init.
