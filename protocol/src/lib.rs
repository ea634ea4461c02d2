//! The host-guest protocol of brig.
//!
//! One vsock stream per process carries length-prefixed frames. The guest agent connects to
//! the host on [`AGENT_PORT`] and says [`Message::Hello`]; the host answers with
//! [`Message::Run`]; then stdin flows host → guest and stdout/stderr guest → host until the
//! guest sends [`Message::Exit`] (or [`Message::ExecFailed`] when the command never started).
//!
//! Further connections, opened by the host to [`EXEC_PORT`], follow the same pattern: the
//! agent says Hello, the host sends one request (Run for `exec`, Kill, StatsRequest, Stat,
//! CopyOut, CopyIn) and the agent answers it.
//!
//! Wire format of a frame: `len: u32 LE | kind: u8 | payload (len - 1 bytes)`. Data frames
//! (stdin, stdout, stderr) carry raw bytes; control frames carry JSON. A frame longer than
//! [`MAX_FRAME`] is rejected before anything is allocated for it, so a hostile peer cannot make
//! the other side buffer without bound.
#![forbid(unsafe_code)]

mod chunks;
mod codec;
#[doc(hidden)]
pub mod fuzzing;
mod messages;
mod packed;

pub use chunks::ChunkWriter;
pub use codec::{encode, read_message, write_message, DecodeError, Decoder};
pub use messages::{
    format_mac, parse_mac, DiskSize, ExecErrorKind, ExitStatus, FileKind, FileSpec, Message,
    MountSpec, NetworkSpec, PathInfo, ResourceUpdate, RestoreSpec, Rlimit, RootfsSpec, RunSpec,
    SecuritySpec, Stats,
};

/// Version of this protocol; the host refuses a guest that speaks another one.
pub const PROTOCOL_VERSION: u32 = 1;

/// vsock port the host listens on for the guest agent's control connection.
pub const AGENT_PORT: u32 = 1024;

/// vsock port the guest agent listens on for the host's further connections (exec, signals,
/// stats, copies), each starting with the agent's Hello and then one request.
pub const EXEC_PORT: u32 = 1025;

/// vsock port the guest agent of a template listens on: after a restore, the host connects
/// there and sends [`Message::Restore`], then the session goes on as after a boot's Hello.
pub const RESTORE_PORT: u32 = 1026;

/// vsock context id of the host (VMADDR_CID_HOST in `linux/vm_sockets.h`).
pub const HOST_CID: u64 = 2;

/// Largest frame (kind byte + payload) either side accepts.
pub const MAX_FRAME: usize = 1 << 20;

/// Largest data payload a sender puts in one stdin/stdout/stderr frame.
pub const MAX_DATA: usize = 64 * 1024;
