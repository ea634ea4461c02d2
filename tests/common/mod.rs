//! Helpers of the integration tests, one module per concern:
//! - image tests: [`env`] (a private `BRIG_HOME` and brig's one-line errors), [`layout`]
//!   (crafted layers, OCI layouts), [`registry`] (a real `docker-registry` and one that
//!   misbehaves on purpose), [`tree`] (trees compared, umoci as the reference);
//! - tests that boot microVMs: [`kvm`] (the harness: nested KVM, deadlines), [`fixture`]
//!   (a private store with test images), [`procs`] (brig processes watched and reported),
//!   [`pty`] (a terminal), [`images`] (the test images).
//!
//! Each test binary compiles this tree anew (`mod common;`) and uses a part of it, so each
//! module is `#[allow(dead_code)]` where it is declared: what one binary leaves unused,
//! another uses. Nothing inside the modules is allowed to be dead.

use std::process::Command;

use sha2::{Digest as _, Sha256};

#[allow(dead_code)] // used by some test binaries only (see above)
pub mod env;
#[allow(dead_code)]
pub mod fixture;
#[allow(dead_code)]
pub mod images;
#[allow(dead_code)]
pub mod kvm;
#[allow(dead_code)]
pub mod layout;
#[allow(dead_code)]
pub mod outside;
#[allow(dead_code)]
pub mod procs;
#[allow(dead_code)]
pub mod pty;
#[allow(dead_code)]
pub mod registry;
#[allow(dead_code)]
pub mod tree;

// The image tests' helpers, as `common::*` (unused in the binaries that boot microVMs).
#[allow(unused_imports)]
pub use {env::*, layout::*, registry::*, tree::*};

#[allow(dead_code)]
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs a tool to success; returns its stdout.
#[allow(dead_code)]
pub fn run_tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
