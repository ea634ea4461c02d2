//! `brig exec`: one more process in a running sandbox, over a new vsock connection, with
//! `run`'s stdio, TTY and exit-code behaviour.

use clap::Args;
use rustix::process::Signal;
use rustix::{stdio, termios};

use brig_protocol::{RunSpec, EXEC_PORT};

use crate::sandbox::agent::{self, Relay, SessionEnd, SessionTimes};
use crate::sandbox::control;
use crate::sandbox::outcome::Failure;
use crate::sandbox::runtime::vsock_socket_of;
use crate::sandbox::signals::{SignalPipe, FORWARDED};
use crate::sandbox::tty;

#[derive(Debug, Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Keep stdin open and forward it.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to copy the host's).
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Working directory (default: the sandbox's).
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// User (default: the sandbox's).
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// The sandbox (name or id).
    sandbox: String,
    /// Command and arguments.
    #[arg(required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// The exec'd process's RunSpec: the sandbox's environment, user and directory, overridden.
fn exec_spec(base: &RunSpec, args: &ExecArgs) -> RunSpec {
    let mut env = base.env.clone();
    for e in &args.env {
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
        argv: args.command.clone(),
        env,
        cwd: args.workdir.clone().unwrap_or_else(|| base.cwd.clone()),
        user: args.user.clone().unwrap_or_else(|| base.user.clone()),
        groups: base.groups.clone(),
        tty: args.tty,
        stdin: args.interactive,
        rlimits: base.rlimits.clone(),
        ..Default::default()
    }
}

pub fn run(args: ExecArgs) -> anyhow::Result<i32> {
    let home = super::home()?;
    let sb = super::resolve(&home, &args.sandbox)?;
    if !sb.is_running() {
        anyhow::bail!("sandbox {} is not running", args.sandbox);
    }
    if args.tty && args.interactive && !termios::isatty(stdio::stdin()) {
        anyhow::bail!("the input device is not a TTY (drop -t, or run from a terminal)",);
    }
    let config = sb.config()?;
    let mut spec = exec_spec(&config.run, &args);
    let winsize = || tty::winsize(stdio::stdout()).or_else(|| tty::winsize(stdio::stdin()));
    if args.tty {
        if let Some((rows, cols)) = winsize() {
            spec.rows = rows;
            spec.cols = cols;
        }
    }
    let conn = control::connect(
        &vsock_socket_of(&sb.id),
        EXEC_PORT,
        std::time::Duration::from_secs(10),
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", args.sandbox))?;
    let mut relayed: Vec<i32> = FORWARDED.to_vec();
    if !args.tty {
        relayed.retain(|s| *s != Signal::WINCH.as_raw());
    }
    let signals = SignalPipe::install(&relayed)?;
    let raw = if args.tty && args.interactive {
        tty::RawMode::new(stdio::stdin())
    } else {
        None
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let relay = Relay {
        stdin: args.interactive.then(stdio::stdin),
        stdout: &mut out,
        stderr: &mut err,
        signals: Some(&signals),
        winsize: args
            .tty
            .then_some(&winsize as &dyn Fn() -> Option<(u16, u16)>),
        on_started: None,
    };
    let mut times = SessionTimes::default();
    // No VM exit event here: the connection closing is how a stopped sandbox shows.
    let end = agent::run_session(conn, spec, relay, None, None, &mut times);
    drop(raw);
    drop(signals);
    match end {
        SessionEnd::Exited(status) => Ok(status.shell_code()),
        SessionEnd::ExecFailed { kind, message } => Err(Failure::exec(kind, message).into()),
        SessionEnd::Broken(msg) => Err(anyhow::anyhow!(
            "{}: {msg} (did the sandbox stop?)",
            args.sandbox
        )),
        SessionEnd::VmEnded | SessionEnd::TimedOut => {
            Err(anyhow::anyhow!("sandbox {} stopped", args.sandbox))
        }
    }
}
