//! How a workload's run ends, in docker's exit codes: the workload's own status (128+N for
//! signal N), 124 when `--timeout` killed it, 125 for brig's own errors, 126 when the command
//! is not executable and 127 when it is not found. This is domain policy: `brig run`,
//! `brig boot`, `brig exec` and the detached supervisor all judge an end the same way.

use std::time::Duration;

use brig_protocol::ExecErrorKind;

use super::agent::SessionEnd;
use crate::vmm::{ConsoleLog, ExitReason};

/// `--timeout` killed the sandbox (as coreutils' timeout).
pub const EXIT_TIMEOUT: i32 = 124;
/// brig's own errors (as docker's 125).
pub const EXIT_BRIG_ERROR: i32 = 125;
/// The command could not be executed (docker's 126).
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// The command was not found (docker's 127).
pub const EXIT_NOT_FOUND: i32 = 127;

/// A run that did not end with the workload's own status: the code to leave with, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    /// One of brig's own errors (125).
    pub fn brig(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_BRIG_ERROR,
            message: message.into(),
        }
    }

    /// The workload could not be started: 127 not found, 126 not executable, else 125.
    pub fn exec(kind: ExecErrorKind, message: impl Into<String>) -> Self {
        let code = match kind {
            ExecErrorKind::NotFound => EXIT_NOT_FOUND,
            ExecErrorKind::NotExecutable => EXIT_NOT_EXECUTABLE,
            ExecErrorKind::Setup => EXIT_BRIG_ERROR,
        };
        Self {
            code,
            message: message.into(),
        }
    }

    /// The VM ended before its workload reported: the kernel's panic line when there is one,
    /// else why the VM stopped and the last thing the console said.
    pub fn vm_died(console: &ConsoleLog, reason: &ExitReason) -> Self {
        if let Some(panic) = console.panic_line() {
            return Self::brig(format!("the guest kernel panicked: {panic}"));
        }
        let why = match reason {
            ExitReason::Error(e) => e.clone(),
            ExitReason::Shutdown => "the guest shut down (triple fault)".into(),
            _ => "the VM ended before the command finished".into(),
        };
        match console.last_line() {
            Some(line) => Self::brig(format!("{why} (last console line: {line})")),
            None => Self::brig(why),
        }
    }
}

/// What `--timeout` means for a run.
#[derive(Debug, Clone, Copy)]
pub enum TimeoutPolicy {
    /// `brig run --timeout`: the sandbox is killed and brig exits 124.
    Kill(Duration),
    /// `brig boot --timeout`: giving up on a guest is one of brig's errors (125).
    GiveUp(Duration),
}

impl TimeoutPolicy {
    /// How long the workload may run.
    pub fn after(self) -> Duration {
        match self {
            TimeoutPolicy::Kill(d) | TimeoutPolicy::GiveUp(d) => d,
        }
    }
}

/// The exit code of a session that ended as `end` in a VM that stopped for `reason`.
pub fn judge(
    end: &SessionEnd,
    console: &ConsoleLog,
    reason: &ExitReason,
    timeout: Option<TimeoutPolicy>,
) -> Result<i32, Failure> {
    match end {
        SessionEnd::Exited(status) => Ok(status.shell_code()),
        SessionEnd::ExecFailed { kind, message } => Err(Failure::exec(*kind, message.clone())),
        SessionEnd::TimedOut => Err(match timeout {
            Some(TimeoutPolicy::GiveUp(t)) => Failure::brig(format!(
                "the guest did not finish within --timeout {}s",
                t.as_secs_f64()
            )),
            Some(TimeoutPolicy::Kill(t)) => Failure {
                code: EXIT_TIMEOUT,
                message: format!(
                    "the sandbox did not finish within --timeout {}s and was killed",
                    t.as_secs_f64()
                ),
            },
            None => Failure::brig("the sandbox timed out"),
        }),
        SessionEnd::VmEnded => Err(Failure::vm_died(console, reason)),
        SessionEnd::Broken(msg) => Err(Failure::brig(msg.clone())),
        // Checkpointed: the workload did not end, its sandbox stopped as docker's does.
        SessionEnd::Parked => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brig_protocol::ExitStatus;

    fn console_saying(lines: &str) -> ConsoleLog {
        use std::io::Write;
        let mut console = ConsoleLog::default();
        console.write_all(lines.as_bytes()).unwrap();
        console
    }

    #[test]
    fn workload_status_is_the_code() {
        let end = SessionEnd::Exited(ExitStatus {
            code: None,
            signal: Some(9),
            uptime_ns: 0,
        });
        let c = ConsoleLog::default();
        assert_eq!(judge(&end, &c, &ExitReason::Reset, None), Ok(137));
    }

    #[test]
    fn exec_failures_follow_docker() {
        let c = ConsoleLog::default();
        let code = |kind| {
            let end = SessionEnd::ExecFailed {
                kind,
                message: "x".into(),
            };
            judge(&end, &c, &ExitReason::Reset, None).unwrap_err().code
        };
        assert_eq!(code(ExecErrorKind::NotFound), 127);
        assert_eq!(code(ExecErrorKind::NotExecutable), 126);
        assert_eq!(code(ExecErrorKind::Setup), 125);
    }

    #[test]
    fn timeouts_by_policy() {
        let c = ConsoleLog::default();
        let t = Duration::from_secs(5);
        let kill = judge(
            &SessionEnd::TimedOut,
            &c,
            &ExitReason::Stopped,
            Some(TimeoutPolicy::Kill(t)),
        )
        .unwrap_err();
        assert_eq!(kill.code, 124);
        assert!(kill.message.contains("--timeout 5s and was killed"));
        let give_up = judge(
            &SessionEnd::TimedOut,
            &c,
            &ExitReason::Stopped,
            Some(TimeoutPolicy::GiveUp(t)),
        )
        .unwrap_err();
        assert_eq!(give_up.code, 125);
        assert_eq!(
            give_up.message,
            "the guest did not finish within --timeout 5s"
        );
    }

    #[test]
    fn a_dead_vm_is_explained_by_its_console() {
        let c = console_saying("booting\nKernel panic - not syncing: VFS: oops\n");
        let f = judge(&SessionEnd::VmEnded, &c, &ExitReason::Reset, None).unwrap_err();
        assert_eq!(f.code, 125);
        assert!(f.message.starts_with("the guest kernel panicked: "), "{f}");
        let c = console_saying("last words\n");
        let f = Failure::vm_died(&c, &ExitReason::Error("vCPU 0: boom".into()));
        assert_eq!(f.message, "vCPU 0: boom (last console line: last words)");
    }
}
