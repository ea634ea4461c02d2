//! Sandboxes: the runtime files of a VM and the host side of the guest agent's protocol.

pub mod agent;
pub mod control;
pub mod copy;
pub mod launch;
pub mod logs;
pub mod maintenance;
pub mod runtime;
pub mod scratch;
pub mod signals;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod tty;
