//! Bottomley's "horizontal attack profile": how many distinct host kernel functions a
//! sandbox makes the host execute. Measured with ftrace's function profiler
//! (`CONFIG_FUNCTION_PROFILER`, tracefs at /sys/kernel/tracing): enabled around one side's
//! run, then the functions with hits in `trace_stat/function<CPU>` are counted. The profiler
//! sees the whole host, so what an idle host runs in the same time (measured first, for as
//! long) is not counted: the figure is what the run added.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TRACEFS: &str = "/sys/kernel/tracing";

/// A profile of one run: the distinct functions, or why none was taken.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hap {
    /// Distinct host kernel functions run during the side's run and not while idle.
    pub functions: Option<usize>,
    /// All distinct functions during the run (idle ones included).
    pub total: Option<usize>,
    /// "measured" or "unavailable: <reason>".
    pub note: String,
}

impl Hap {
    pub fn unavailable(reason: &str) -> Self {
        Self {
            functions: None,
            total: None,
            note: format!("unavailable: {reason}"),
        }
    }
}

/// The profiler, when this host has one brig may use.
pub struct Profiler {
    dir: PathBuf,
}

impl Profiler {
    /// The profiler, or why there is none.
    pub fn open() -> Result<Self, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("ftrace needs root (rootless brig)".into());
        }
        let dir = PathBuf::from(TRACEFS);
        if !dir.join("trace_stat").exists() {
            return Err(format!("tracefs is not mounted at {TRACEFS}"));
        }
        if !dir.join("function_profile_enabled").exists() {
            return Err(
                "the host kernel has no function profiler (CONFIG_FUNCTION_PROFILER)".into(),
            );
        }
        let p = Self { dir };
        p.set(false)?;
        Ok(p)
    }

    fn set(&self, on: bool) -> Result<(), String> {
        let f = self.dir.join("function_profile_enabled");
        std::fs::write(&f, if on { "1" } else { "0" }).map_err(|e| format!("{}: {e}", f.display()))
    }

    /// Enabling resets the counts; disabling keeps them for reading.
    fn window<T>(&self, f: impl FnOnce() -> T) -> Result<(T, BTreeSet<String>), String> {
        self.set(true)?;
        let out = f();
        self.set(false)?;
        Ok((out, functions(&self.dir.join("trace_stat"))?))
    }

    /// The functions an idle host runs in `d`.
    pub fn idle(&self, d: Duration) -> Result<BTreeSet<String>, String> {
        Ok(self.window(|| std::thread::sleep(d))?.1)
    }

    /// Runs `f` profiled; its result, the profile against `idle` (taken for as long as the
    /// run took, when `idle` is `None`).
    pub fn profile<T>(&self, f: impl FnOnce() -> T, idle: Option<&BTreeSet<String>>) -> (T, Hap) {
        let t0 = Instant::now();
        self.set(true).ok();
        let out = f();
        let elapsed = t0.elapsed();
        let _ = self.set(false);
        let run = match functions(&self.dir.join("trace_stat")) {
            Ok(run) => run,
            Err(e) => return (out, Hap::unavailable(&e)),
        };
        let idle_owned;
        let idle = match idle {
            Some(i) => i,
            None => match self.idle(elapsed) {
                Ok(i) => {
                    idle_owned = i;
                    &idle_owned
                }
                Err(e) => return (out, Hap::unavailable(&e)),
            },
        };
        let hap = Hap {
            functions: Some(run.difference(idle).count()),
            total: Some(run.len()),
            note: "measured".into(),
        };
        (out, hap)
    }
}

/// Names of the functions with hits in every `function<CPU>` file of `dir`.
fn functions(dir: &Path) -> Result<BTreeSet<String>, String> {
    let mut set = BTreeSet::new();
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with("function") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        set.extend(parse(&text));
    }
    Ok(set)
}

/// One `trace_stat/function<CPU>` file: a header, a rule, then `NAME HITS ...` rows.
fn parse(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines().filter_map(|l| {
        let mut f = l.split_whitespace();
        let (name, hits) = (f.next()?, f.next()?);
        let hits: u64 = hits.parse().ok()?;
        (hits > 0).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_with_hits_are_functions_headers_are_not() {
        let text = "  Function                               Hit    Time            Avg             s^2\n  --------                               ---    ----            ---             ---\n  kvm_vcpu_ioctl                         120    9.1 us          0.07 us         0.01 us\n  schedule                               3    1.0 us\n";
        let v: Vec<String> = parse(text).collect();
        assert_eq!(v, ["kvm_vcpu_ioctl", "schedule"]);
    }
}
