//! `brig login [REGISTRY]`: check credentials against a registry and store them in
//! `~/.docker/config.json` (or `$DOCKER_CONFIG/config.json`), as `docker login` does.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;

use crate::cli::commands::pull::InsecureRegistryArgs;
use crate::image::auth::{self, Credentials};
use crate::image::reference::DEFAULT_REGISTRY;
use crate::image::registry::Client;
use anyhow::Context;

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name.
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password (visible to other users in the process list: prefer --password-stdin).
    #[arg(short, long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub insecure: InsecureRegistryArgs,
    /// Registry host[:port] (default: Docker Hub).
    pub registry: Option<String>,
}

fn prompt(label: &str) -> anyhow::Result<String> {
    eprint!("{label}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading stdin")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Reads a password from the terminal without echo.
fn prompt_hidden(label: &str) -> anyhow::Result<String> {
    use rustix::termios::{self, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        let _ = termios::tcsetattr(&stdin, OptionalActions::Now, &quiet);
    }
    let r = prompt(label);
    if let Some(t) = &saved {
        let _ = termios::tcsetattr(&stdin, OptionalActions::Now, t);
        eprintln!();
    }
    r
}

pub fn run(args: LoginArgs) -> anyhow::Result<i32> {
    let registry = args
        .registry
        .unwrap_or_else(|| DEFAULT_REGISTRY.to_string());
    let registry = registry
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let registry = match registry.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "index.docker.io/v1" => {
            DEFAULT_REGISTRY.to_string()
        }
        _ => registry,
    };
    if registry.is_empty() || registry.contains('/') {
        anyhow::bail!("invalid registry {registry:?}");
    }
    let interactive = std::io::stdin().is_terminal();
    let username = match args.username {
        Some(u) => u,
        None if interactive && !args.password_stdin => prompt("Username: ")?,
        None => anyhow::bail!("login: --username is required"),
    };
    let password = if args.password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut s)
            .context("reading password from stdin")?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else if let Some(p) = args.password {
        p
    } else if interactive {
        prompt_hidden("Password: ")?
    } else {
        anyhow::bail!("login: no password given (use --password-stdin)");
    };
    if username.is_empty() || password.is_empty() {
        anyhow::bail!("login: user name and password must not be empty");
    }
    let creds = Credentials { username, password };
    let client = Client::new(
        &registry,
        "brig-login-check",
        &args.insecure.insecure_registry,
    )?
    .with_credentials(creds.clone());
    client
        .ping()
        .map_err(|e| anyhow::anyhow!("login to {registry} failed: {e}"))?;
    let path = auth::store(&registry, &creds)?;
    eprintln!("Credentials stored in {}", path.display());
    println!("Login Succeeded");
    Ok(0)
}
