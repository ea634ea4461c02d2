//! Sandboxes: the runtime files of a VM and the host side of the guest agent's protocol.

pub mod agent;
pub mod runtime;
pub mod signals;
