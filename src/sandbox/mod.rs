//! Sandboxes: a workload in a microVM of its own, from creation to removal.
//!
//! - lifecycle: [`lifecycle::create`] a sandbox from an image, run it in the foreground or
//!   detached ([`lifecycle::supervise_detached`] is the detached VMM process), and the
//!   supervisor that keeps its state, logs and console up to date while it runs.
//! - the VM: [`vm`] (the one VM-start path), [`launch`] (a workload from boot to teardown),
//!   [`maintenance`] (a stopped sandbox's disks booted for `brig cp`), and [`outcome`]
//!   (docker's exit codes for how a run ended).
//! - the guest agent's protocol: [`agent`] (the session), [`exec`] (one more process in a
//!   running sandbox), [`control`] (requests to a running sandbox), [`copy`] (`brig cp`'s
//!   tar streams).
//! - on disk: [`state`] (config and state files), [`runtime`] (the runtime directory and its
//!   lock), [`logs`], [`scratch`] (the overlay disk), [`spec`] (image config + flags),
//!   [`resources`] (docker's resource flags: memory, CPUs, blkio throttles).
//! - [`templates`]: VMs saved at "agent ready" and restored per run instead of booting.
//! - [`compare`]: `brig compare`, the same probe under another runtime and under brig.
//! - [`pause`]: a running sandbox's VMM frozen and thawed (`brig pause`, `unpause`).
//! - [`confinement`]: how a live sandbox's VMM is confined on the host (for `brig inspect`).
//! - [`oci`]: `brig-runc`, brig as an OCI runtime in runc's dialect (containerd, podman).
//! - [`network`]: `-p` and the userland proxy that publishes guest ports on the host.
//! - the host terminal: [`tty`] (raw mode, size, the session's [`tty::HostTerminal`]),
//!   [`signals`].

pub mod agent;
pub mod checkpoint;
pub mod compare;
pub mod confinement;
pub mod control;
pub mod copy;
pub mod exec;
pub mod jail;
pub mod jailed;
pub mod jailed_boot;
mod jailed_vm;
pub mod launch;
pub mod lifecycle;
pub mod logs;
pub mod maintenance;
pub mod network;
pub mod oci;
pub mod outcome;
pub mod pause;
pub mod resources;
pub mod runtime;
pub mod scratch;
pub mod security;
pub mod signals;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod templates;
pub mod tty;
pub mod update;
pub mod vm;
pub mod volumes;
