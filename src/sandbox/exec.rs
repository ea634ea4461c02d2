//! `exec`: one more process in a running sandbox, over a new vsock connection to its agent,
//! with `run`'s stdio, TTY and exit-code behaviour.

use std::time::Duration;

use brig_protocol::{RunSpec, EXEC_PORT};
use rustix::stdio;

use super::agent::{self, Relay, SessionEnd, SessionTimes};
use super::control::{self, ControlError};
use super::outcome::Failure;
use super::runtime::vsock_socket_of;
use super::security;
use super::state::{Sandbox, StateError};
use super::tty::{self, terminal_size, HostTerminal};

/// How long to wait for a running sandbox's agent to accept the connection.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// What to run, docker's `exec` flags.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub command: Vec<String>,
    /// `-e`: `KEY=VALUE`, or `KEY` to copy the host's value.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub interactive: bool,
    /// `--privileged`: every capability and no seccomp filter for this process.
    pub privileged: bool,
    /// Supplementary groups instead of the sandbox's (an OCI process's `additionalGids`).
    pub groups: Option<Vec<String>>,
}

/// The process could not be run (its own failures come back as [`Failure`]s).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// docker's words.
    #[error("sandbox {0} is paused, unpause the sandbox before exec")]
    Paused(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}: {1}")]
    Connect(String, #[source] ControlError),
    #[error("installing signal handlers: {0}")]
    Terminal(#[source] std::io::Error),
    /// The process did not start, or did not end with a status of its own.
    #[error("{0}")]
    Failed(#[from] Failure),
}

/// The exec'd process's RunSpec: the sandbox's environment, user and directory, overridden.
pub fn exec_spec(base: &RunSpec, opts: &ExecOptions) -> RunSpec {
    let mut env = base.env.clone();
    for e in &opts.env {
        let kv = if e.contains('=') {
            e.clone()
        } else {
            match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            }
        };
        let key = kv
            .split_once('=')
            .map_or(kv.as_str(), |(k, _)| k)
            .to_string();
        env.retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
        env.push(kv);
    }
    RunSpec {
        argv: opts.command.clone(),
        env,
        cwd: opts.workdir.clone().unwrap_or_else(|| base.cwd.clone()),
        user: opts.user.clone().unwrap_or_else(|| base.user.clone()),
        groups: opts.groups.clone().unwrap_or_else(|| base.groups.clone()),
        tty: opts.tty,
        stdin: opts.interactive,
        rlimits: base.rlimits.clone(),
        // docker exec: the container's confinement, or all capabilities with --privileged.
        security: base.security.as_ref().map(|s| {
            if opts.privileged {
                security::privileged_exec(s)
            } else {
                s.clone()
            }
        }),
        ..Default::default()
    }
}

/// Runs `opts` in the running sandbox `sb` (which the user called `name`) with brig's
/// stdio; returns the process's exit code (128+N for signal N).
pub fn exec(sb: &Sandbox, name: &str, opts: &ExecOptions) -> Result<i32, ExecError> {
    if !sb.is_running() {
        return Err(ExecError::NotRunning(name.to_string()));
    }
    if super::pause::is_paused(sb) {
        return Err(ExecError::Paused(name.to_string()));
    }
    tty::check_interactive(opts.tty, opts.interactive)?;
    let config = sb.config()?;
    let mut spec = exec_spec(&config.run, opts);
    if opts.tty {
        if let Some((rows, cols)) = terminal_size() {
            spec.rows = rows;
            spec.cols = cols;
        }
    }
    let conn = control::connect(&vsock_socket_of(&sb.id), EXEC_PORT, CONNECT_WAIT)
        .map_err(|e| ExecError::Connect(name.to_string(), e))?;
    let terminal =
        HostTerminal::attach(opts.tty, opts.interactive, true).map_err(ExecError::Terminal)?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let relay = Relay {
        stdin: opts.interactive.then(stdio::stdin),
        stdout: &mut out,
        stderr: &mut err,
        signals: Some(&terminal.signals),
        winsize: opts
            .tty
            .then_some(&terminal_size as &dyn Fn() -> Option<(u16, u16)>),
        on_started: None,
    };
    let mut times = SessionTimes::default();
    // No VM exit event here: the connection closing is how a stopped sandbox shows.
    let end = agent::run_session(conn, spec, relay, None, None, &mut times);
    drop(terminal);
    let failure = match end {
        SessionEnd::Exited(status) => return Ok(status.shell_code()),
        SessionEnd::ExecFailed { kind, message } => Failure::exec(kind, message),
        SessionEnd::Broken(msg) => Failure::brig(format!("{name}: {msg} (did the sandbox stop?)")),
        SessionEnd::VmEnded | SessionEnd::TimedOut | SessionEnd::Parked => {
            Failure::brig(format!("sandbox {name} stopped"))
        }
    };
    Err(failure.into())
}
