//! `config.json`'s hooks (runtime-spec config.md#posix-platform-hooks), run on the host as
//! runc runs them: each program with its own `args` and `env` only, the container's state
//! JSON on its stdin, killed after its `timeout`. Where runc runs `createContainer` and
//! `startContainer` inside the container's namespaces, brig runs them on the host too: the
//! container is a VM, with no namespace of the host's to enter (Kata does the same).
//!
//! When: `prestart`, `createRuntime` and `createContainer` at `create`, once the container's
//! pid exists (a failure fails `create`); `startContainer` and `poststart` at `start` (a
//! failure kills the container and fails `start`); `poststop` at `delete` (a failure is only
//! said). docker configures a container's network from its prestart hook, in the network
//! namespace of that pid.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::OciError;

/// A hook's output kept for its error message.
const OUTPUT_MAX: u64 = 4096;

/// One hook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hook {
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Seconds; none: no limit.
    pub timeout: Option<u64>,
}

/// `config.json`'s `hooks`, kept in the container's state for `start` and `delete`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Hooks {
    pub prestart: Vec<Hook>,
    pub create_runtime: Vec<Hook>,
    pub create_container: Vec<Hook>,
    pub start_container: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

impl Hooks {
    /// Whether there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// `create`'s hooks, in runc's order.
    pub fn at_create(&self) -> impl Iterator<Item = (&'static str, &Hook)> {
        named("prestart", &self.prestart)
            .chain(named("createRuntime", &self.create_runtime))
            .chain(named("createContainer", &self.create_container))
    }

    /// `start`'s hooks before the workload runs.
    pub fn at_start_container(&self) -> impl Iterator<Item = (&'static str, &Hook)> {
        named("startContainer", &self.start_container)
    }

    /// `start`'s hooks once it runs.
    pub fn at_poststart(&self) -> impl Iterator<Item = (&'static str, &Hook)> {
        named("poststart", &self.poststart)
    }

    pub fn at_delete(&self) -> impl Iterator<Item = (&'static str, &Hook)> {
        named("poststop", &self.poststop)
    }
}

fn named<'a>(
    kind: &'static str,
    hooks: &'a [Hook],
) -> impl Iterator<Item = (&'static str, &'a Hook)> {
    hooks.iter().map(move |h| (kind, h))
}

/// Runs `hooks` in order with `state` (the container's state JSON) on their stdin; the
/// first failure ends the run: "error running KIND hook #N: WHY".
pub fn run<'a>(
    hooks: impl Iterator<Item = (&'static str, &'a Hook)>,
    state: &str,
) -> Result<(), OciError> {
    let mut count = std::collections::HashMap::new();
    for (kind, hook) in hooks {
        let n = count.entry(kind).or_insert(0usize);
        run_one(hook, state)
            .map_err(|why| OciError::Hook(format!("error running {kind} hook #{n}: {why}")))?;
        *n += 1;
    }
    Ok(())
}

/// Runs one hook; the reason it failed, with what it wrote.
fn run_one(hook: &Hook, state: &str) -> Result<(), String> {
    let mut cmd = Command::new(&hook.path);
    if let Some((arg0, rest)) = hook.args.split_first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
        cmd.args(rest);
    }
    cmd.env_clear();
    for e in &hook.env {
        match e.split_once('=') {
            Some((k, v)) => cmd.env(k, v),
            None => cmd.env(e, ""),
        };
    }
    // Output goes to a memory file, not a pipe: a hook that writes much, or leaves a
    // daemon holding its stdout, cannot block brig.
    let out = rustix::fs::memfd_create("brig-hook-output", rustix::fs::MemfdFlags::CLOEXEC)
        .map(std::fs::File::from)
        .map_err(|e| format!("memfd: {e}"))?;
    let out_err = out.try_clone().map_err(|e| e.to_string())?;
    let out_out = out.try_clone().map_err(|e| e.to_string())?;
    cmd.current_dir("/")
        .stdin(Stdio::piped())
        .stdout(out_out)
        .stderr(out_err);
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", hook.path))?;
    drop(cmd);
    // A hook that does not read its stdin must not block us: the state is small (one pipe
    // buffer), and a closed pipe is ignored as runc ignores it.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(state.as_bytes());
    }
    let output = || {
        let mut text = String::new();
        let mut file = &out;
        let _ = std::io::Seek::rewind(&mut file);
        let _ = file.take(OUTPUT_MAX).read_to_string(&mut text);
        text.trim().to_string()
    };
    let deadline = hook
        .timeout
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t));
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(format!("{status}, output: {}", output()));
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("timeout".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The state JSON a hook reads: runtime-spec's state, with `status` and the container's pid.
pub fn state_json(
    id: &str,
    status: &str,
    pid: i32,
    bundle: &std::path::Path,
    annotations: &std::collections::BTreeMap<String, String>,
) -> String {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": annotations,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(script: &str, timeout: Option<u64>) -> Hook {
        Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["WHO=hook".into()],
            timeout,
        }
    }

    #[test]
    fn a_hook_reads_the_state_and_its_own_env_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let h = hook(
            &format!(
                "cat >{0}; echo \"$WHO ${{HOME:-none}}\" >>{0}",
                out.display()
            ),
            None,
        );
        let hooks = Hooks {
            prestart: vec![h],
            ..Default::default()
        };
        run(hooks.at_create(), r#"{"pid":7}"#).unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        assert_eq!(got, "{\"pid\":7}hook none\n");
    }

    #[test]
    fn failures_and_timeouts_are_named_in_runcs_words() {
        let hooks = Hooks {
            poststart: vec![hook("true", None), hook("echo nope >&2; exit 3", None)],
            ..Default::default()
        };
        let e = run(hooks.at_poststart(), "{}").unwrap_err().to_string();
        assert!(e.starts_with("error running poststart hook #1: "), "{e}");
        assert!(e.contains("nope"), "{e}");
        let hooks = Hooks {
            poststop: vec![hook("sleep 5", Some(1))],
            ..Default::default()
        };
        let t = Instant::now();
        let e = run(hooks.at_delete(), "{}").unwrap_err().to_string();
        assert!(e.ends_with("hook #0: timeout"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(4));
    }
}
