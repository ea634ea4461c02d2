//! Bottomley's "horizontal attack profile": how many distinct host kernel functions a
//! sandbox makes the host execute, from ftrace (tracefs at /sys/kernel/tracing), by one of
//! two methods:
//! - the function profiler (`CONFIG_FUNCTION_PROFILER`), enabled around one side's run; it
//!   sees the whole host, so what an idle host runs in as long a window (measured right
//!   after) is not counted;
//! - without it, the function tracer limited to this process and what it starts
//!   (`set_ftrace_pid` and the `function-fork` option: the runtime and its container, or
//!   the VMM's threads), the distinct functions read from the trace buffer. The buffer does
//!   not overwrite: once full, later events are lost and the count is a lower bound (said).

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
    /// How it was measured, or "unavailable: <reason>".
    pub note: String,
}

impl Hap {
    pub fn unavailable(reason: &str) -> Self {
        let note = if reason.starts_with("not measured") {
            reason.to_string()
        } else {
            format!("unavailable: {reason}")
        };
        Self {
            functions: None,
            total: None,
            note,
        }
    }
}

/// How the functions are counted.
enum Method {
    Profiler,
    Tracer,
}

/// The profiler, when this host has one brig may use.
pub struct Profiler {
    dir: PathBuf,
    method: Method,
}

/// The trace buffer per CPU, in KiB, for the tracer.
const BUFFER_KB: &str = "16384";

impl Profiler {
    /// The profiler, or why there is none.
    pub fn open() -> Result<Self, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("ftrace needs root (rootless brig)".into());
        }
        let dir = PathBuf::from(TRACEFS);
        if !dir.join("available_tracers").exists() {
            return Err(format!("tracefs is not mounted at {TRACEFS}"));
        }
        let method = if dir.join("function_profile_enabled").exists() {
            Method::Profiler
        } else if std::fs::read_to_string(dir.join("available_tracers"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|t| t == "function")
        {
            Method::Tracer
        } else {
            return Err(
                "the host kernel has neither ftrace's function profiler nor its function tracer"
                    .into(),
            );
        };
        let p = Self { dir, method };
        match p.method {
            Method::Profiler => p.write("function_profile_enabled", "0")?,
            Method::Tracer => p.write("tracing_on", "0")?,
        }
        Ok(p)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let f = self.dir.join(file);
        std::fs::write(&f, value).map_err(|e| format!("{}: {e}", f.display()))
    }

    /// The functions an idle host runs in `d` (profiler only).
    fn idle(&self, d: Duration) -> Result<BTreeSet<String>, String> {
        self.write("function_profile_enabled", "1")?;
        std::thread::sleep(d);
        self.write("function_profile_enabled", "0")?;
        functions(&self.dir.join("trace_stat"))
    }

    /// Runs `f` profiled; its result and the profile.
    pub fn profile<T>(&self, f: impl FnOnce() -> T) -> (T, Hap) {
        match self.method {
            Method::Profiler => self.with_profiler(f),
            Method::Tracer => self.with_tracer(f),
        }
    }

    fn with_profiler<T>(&self, f: impl FnOnce() -> T) -> (T, Hap) {
        let t0 = Instant::now();
        // Enabling resets the counts; disabling keeps them for reading.
        let on = self.write("function_profile_enabled", "1");
        let out = f();
        let elapsed = t0.elapsed();
        let _ = self.write("function_profile_enabled", "0");
        if let Err(e) = on {
            return (out, Hap::unavailable(&e));
        }
        let run = match functions(&self.dir.join("trace_stat")) {
            Ok(run) => run,
            Err(e) => return (out, Hap::unavailable(&e)),
        };
        let idle = match self.idle(elapsed) {
            Ok(i) => i,
            Err(e) => return (out, Hap::unavailable(&e)),
        };
        let hap = Hap {
            functions: Some(run.difference(&idle).count()),
            total: Some(run.len()),
            note: "function profiler, less idle".into(),
        };
        (out, hap)
    }

    fn tracer_setup(&self) -> Result<(), String> {
        self.write("tracing_on", "0")?;
        self.write("current_tracer", "nop")?;
        self.write("buffer_size_kb", BUFFER_KB)?;
        self.write("options/overwrite", "0")?;
        self.write("options/function-fork", "1")?;
        self.write("set_ftrace_pid", &std::process::id().to_string())?;
        // Truncating `trace` empties the buffer.
        self.write("trace", "")?;
        self.write("current_tracer", "function")?;
        self.write("tracing_on", "1")
    }

    fn tracer_reset(&self) {
        let _ = self.write("tracing_on", "0");
        let _ = self.write("current_tracer", "nop");
        let _ = self.write("set_ftrace_pid", "");
        let _ = self.write("options/function-fork", "0");
        let _ = self.write("options/overwrite", "1");
    }

    fn with_tracer<T>(&self, f: impl FnOnce() -> T) -> (T, Hap) {
        let on = self.tracer_setup();
        let out = f();
        let _ = self.write("tracing_on", "0");
        let hap = match on.and_then(|()| self.traced()) {
            Ok((set, lost)) => Hap {
                functions: Some(set.len()),
                total: Some(set.len()),
                note: if lost > 0 {
                    format!("function tracer; a lower bound: {lost} events lost")
                } else {
                    "function tracer".into()
                },
            },
            Err(e) => Hap::unavailable(&e),
        };
        self.tracer_reset();
        let _ = self.write("trace", "");
        let _ = self.write("buffer_size_kb", "1408");
        (out, hap)
    }

    /// The distinct functions in the trace buffer, and how many events did not fit.
    fn traced(&self) -> Result<(BTreeSet<String>, u64), String> {
        use std::io::BufRead;
        let path = self.dir.join("trace");
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // Line by line: the buffer's text is far larger than the set (and would otherwise
        // count in the memory row).
        let mut set = BTreeSet::new();
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            // `TASK-PID [CPU] FLAGS TIMESTAMP: FUNCTION <-PARENT`
            if line.starts_with('#') {
                continue;
            }
            if let Some((_, rest)) = line.split_once(": ") {
                if let Some(f) = rest.split_whitespace().next() {
                    if !set.contains(f) {
                        set.insert(f.to_string());
                    }
                }
            }
        }
        let mut lost = 0;
        for cpu in std::fs::read_dir(self.dir.join("per_cpu"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let stats = std::fs::read_to_string(cpu.path().join("stats")).unwrap_or_default();
            lost += stats
                .lines()
                .filter(|l| l.starts_with("overrun:") || l.starts_with("dropped events:"))
                .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
        Ok((set, lost))
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
