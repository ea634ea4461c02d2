//! Composing the workload's RunSpec from the image config and `brig run`'s options, with
//! docker's rules: Entrypoint + Cmd (and their overrides), Env then `--env-file` then `-e`,
//! WorkingDir, User, and docker's size suffixes for `-m`.

use std::collections::HashMap;
use std::path::PathBuf;

use brig_protocol::{Rlimit, RunSpec, SecuritySpec};

use crate::image::ImageConfig;

/// `brig run`'s options that shape the workload.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// `--entrypoint`: `Some("")` clears the image's entrypoint.
    pub entrypoint: Option<String>,
    /// `-e`: `KEY=VALUE`, or `KEY` to copy the host's value.
    pub env: Vec<String>,
    /// `--env-file` contents, already read: (file name, text).
    pub env_files: Vec<(PathBuf, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub group_add: Vec<String>,
    pub hostname: Option<String>,
    /// COMMAND and ARGs after the image.
    pub command: Vec<String>,
    pub tty: bool,
    pub interactive: bool,
    /// `--ulimit name=soft[:hard]`.
    pub ulimits: Vec<String>,
    pub memory_limit: u64,
    /// docker's MemorySwap (see `RunSpec::memory_swap`).
    pub memory_swap: i64,
    pub pids_limit: u64,
    /// The workload cgroup's cpuset, in guest CPU numbers ("" leaves it).
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    /// The workload's confinement (see `security::SecurityFlags::spec`).
    pub security: Option<SecuritySpec>,
}

/// Parses docker's `-m` values: a number with an optional b/k/m/g/t suffix (binary units).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    // "1gb" and "4096b" are accepted as docker accepts them.
    let body = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, mult) = match body.char_indices().last() {
        Some((i, 'k')) => (&body[..i], 1u64 << 10),
        Some((i, 'm')) => (&body[..i], 1 << 20),
        Some((i, 'g')) => (&body[..i], 1 << 30),
        Some((i, 't')) => (&body[..i], 1 << 40),
        _ => (body, 1),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. 512m, 2g)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("invalid size {s:?}"));
    }
    Ok((value * mult as f64) as u64)
}

/// Parses one env-file (docker's format: `KEY=VALUE` or `KEY`, `#` comments, no quoting).
fn parse_env_file(
    name: &std::path::Path,
    text: &str,
    host: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split_once('=').map_or(line, |(k, _)| k);
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!(
                "--env-file {}: line {}: invalid variable name {key:?}",
                name.display(),
                n + 1
            ));
        }
        if line.contains('=') {
            out.push(line.to_string());
        } else if let Some(v) = host(key) {
            out.push(format!("{key}={v}"));
        }
    }
    Ok(out)
}

/// Merges `KEY=VALUE` lists, later ones winning, keeping first-seen order.
fn merge_env(lists: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    for kv in lists {
        let key = kv
            .split_once('=')
            .map_or(kv.as_str(), |(k, _)| k)
            .to_string();
        if !values.contains_key(&key) {
            order.push(key.clone());
        }
        values.insert(key, kv);
    }
    order
        .into_iter()
        .filter_map(|k| values.remove(&k))
        .collect()
}

fn parse_ulimit(s: &str) -> Result<Rlimit, String> {
    let (name, vals) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid --ulimit {s:?} (name=soft[:hard])"))?;
    let num = |v: &str| -> Result<u64, String> {
        if v == "-1" || v == "unlimited" {
            Ok(u64::MAX)
        } else {
            v.parse()
                .map_err(|_| format!("invalid --ulimit value {v:?}"))
        }
    };
    let (soft, hard) = match vals.split_once(':') {
        Some((s, h)) => (num(s)?, num(h)?),
        None => (num(vals)?, num(vals)?),
    };
    if soft > hard {
        return Err(format!("--ulimit {name}: soft limit above hard limit"));
    }
    Ok(Rlimit {
        resource: name.to_string(),
        soft,
        hard,
    })
}

/// The RunSpec for `image` with `opts`; `host_env` looks up the host's variables.
pub fn compose(
    image: &ImageConfig,
    opts: &RunOptions,
    default_hostname: &str,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Result<RunSpec, String> {
    // Entrypoint + Cmd, as docker composes them.
    let (entrypoint, cmd): (Vec<String>, Vec<String>) = match &opts.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), opts.command.clone()),
        Some(e) => (vec![e.clone()], opts.command.clone()),
        None if !opts.command.is_empty() => (image.entrypoint.clone(), opts.command.clone()),
        None => (image.entrypoint.clone(), image.cmd.clone()),
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err("no command specified: the image has no Entrypoint or Cmd, give one after the image name".into());
    }

    let mut env = image.env.clone();
    for (name, text) in &opts.env_files {
        env.extend(parse_env_file(name, text, host_env)?);
    }
    for e in &opts.env {
        if e.contains('=') {
            if e.starts_with('=') {
                return Err(format!("invalid environment variable {e:?}"));
            }
            env.push(e.clone());
        } else if let Some(v) = host_env(e) {
            env.push(format!("{e}={v}"));
        }
    }
    let rlimits = opts
        .ulimits
        .iter()
        .map(|u| parse_ulimit(u))
        .collect::<Result<Vec<_>, _>>()?;

    let cwd = opts
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| {
            if image.working_dir.is_empty() {
                "/".into()
            } else {
                image.working_dir.clone()
            }
        });
    if !cwd.starts_with('/') {
        return Err(format!(
            "the working directory {cwd:?} is not an absolute path"
        ));
    }
    Ok(RunSpec {
        argv,
        env: merge_env(env),
        cwd,
        user: opts.user.clone().unwrap_or_else(|| image.user.clone()),
        groups: opts.group_add.clone(),
        tty: opts.tty,
        stdin: opts.interactive,
        rlimits,
        hostname: opts
            .hostname
            .clone()
            .unwrap_or_else(|| default_hostname.to_string()),
        memory_limit: opts.memory_limit,
        memory_swap: opts.memory_swap,
        pids_limit: opts.pids_limit,
        cpuset_cpus: opts.cpuset_cpus.clone(),
        cpuset_mems: opts.cpuset_mems.clone(),
        security: opts.security.clone(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into(), "args".into()],
            env: vec!["PATH=/img/bin".into(), "A=image".into()],
            working_dir: "/app".into(),
            user: "app".into(),
            ..Default::default()
        }
    }

    fn no_host(_: &str) -> Option<String> {
        None
    }

    fn compose_with(opts: RunOptions) -> Result<RunSpec, String> {
        compose(&image(), &opts, "abc123", &|k| {
            (k == "HOSTVAR").then(|| "fromhost".to_string())
        })
    }

    #[test]
    fn entrypoint_and_cmd_follow_docker() {
        let s = compose_with(RunOptions::default()).unwrap();
        assert_eq!(s.argv, ["/entry", "default", "args"]);
        let s = compose_with(RunOptions {
            command: vec!["x".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.argv, ["/entry", "x"]);
        let s = compose_with(RunOptions {
            entrypoint: Some("/bin/sh".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.argv, ["/bin/sh"], "--entrypoint drops the image's Cmd");
        let s = compose_with(RunOptions {
            entrypoint: Some(String::new()),
            command: vec!["ls".into(), "-l".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.argv, ["ls", "-l"]);
        let empty = ImageConfig::default();
        assert!(compose(&empty, &RunOptions::default(), "h", &no_host)
            .unwrap_err()
            .contains("no command"));
    }

    #[test]
    fn env_layers_and_host_copies() {
        let s = compose_with(RunOptions {
            env: vec![
                "A=cli".into(),
                "HOSTVAR".into(),
                "MISSING".into(),
                "B=1=2".into(),
            ],
            env_files: vec![("f".into(), "# comment\n\nA=file\nC=file\nHOSTVAR\n".into())],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s.env,
            [
                "PATH=/img/bin",
                "A=cli",
                "C=file",
                "HOSTVAR=fromhost",
                "B=1=2"
            ]
        );
    }

    #[test]
    fn malformed_env_is_an_error() {
        let bad = RunOptions {
            env_files: vec![("f".into(), "GOOD=1\nBAD KEY=1\n".into())],
            ..Default::default()
        };
        let e = compose_with(bad).unwrap_err();
        assert!(e.contains("line 2") && e.contains("BAD KEY"), "{e}");
        assert!(compose_with(RunOptions {
            env: vec!["=x".into()],
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn workdir_user_hostname_and_limits() {
        let s = compose_with(RunOptions::default()).unwrap();
        assert_eq!(
            (s.cwd.as_str(), s.user.as_str(), s.hostname.as_str()),
            ("/app", "app", "abc123")
        );
        let s = compose_with(RunOptions {
            workdir: Some("/w".into()),
            user: Some("1000:1000".into()),
            hostname: Some("box".into()),
            ulimits: vec!["nofile=1024:2048".into(), "core=0".into()],
            tty: true,
            interactive: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (s.cwd.as_str(), s.user.as_str(), s.hostname.as_str()),
            ("/w", "1000:1000", "box")
        );
        assert_eq!(
            s.rlimits[0],
            Rlimit {
                resource: "nofile".into(),
                soft: 1024,
                hard: 2048
            }
        );
        assert_eq!((s.rlimits[1].soft, s.rlimits[1].hard), (0, 0));
        assert!(s.tty && s.stdin);
        assert!(compose_with(RunOptions {
            workdir: Some("rel".into()),
            ..Default::default()
        })
        .is_err());
        assert!(compose_with(RunOptions {
            ulimits: vec!["nofile=10:5".into()],
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn docker_sizes() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1gb").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("4096b").unwrap(), 4096);
        assert_eq!(parse_bytes("64k").unwrap(), 64 << 10);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1m").is_err());
        assert!(parse_bytes("").is_err());
    }
}
