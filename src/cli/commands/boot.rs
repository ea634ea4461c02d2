//! `brig boot`: boot the guest kernel with brig's init and run one command in it, with no
//! image: the command and the files it needs come from the host (`--add`).

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use brig_protocol::{RunSpec, AGENT_PORT};
use clap::Args;

use crate::cli::{CliError, Context};
use crate::devices::serial::ConsoleLog;
use crate::initramfs::Initramfs;
use crate::sandbox::agent::{self, Relay, SessionEnd, SessionTimes};
use crate::sandbox::runtime::{new_id, RuntimeDir};
use crate::sandbox::signals::{SignalPipe, FORWARDED};
use crate::vmm::{self, VmConfig, VsockConfig};

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Guest kernel (uncompressed ELF vmlinux); default: the one kernels/build.sh built.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Copy a host file into the initramfs (HOST or HOST:GUEST), e.g. /bin/busybox:/bin/sh.
    #[arg(long = "add", value_name = "HOST[:GUEST]")]
    pub add: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub mem: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u8,
    /// Extra kernel command line parameters.
    #[arg(long, default_value = "", value_name = "EXTRA")]
    pub cmdline: String,
    /// Give up (exit 125) when the command has not finished after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Print the boot phases and their times on stderr.
    #[arg(long)]
    pub timings: bool,
    /// Copy the guest console (kernel messages) to stderr.
    #[arg(long)]
    pub console: bool,
    /// Command to run in the guest, and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Splits `HOST[:GUEST]`; GUEST defaults to HOST's path.
fn parse_add(spec: &str) -> (PathBuf, String) {
    match spec.split_once(':') {
        Some((host, guest)) if !guest.is_empty() => (PathBuf::from(host), guest.to_string()),
        _ => {
            let host = spec.trim_end_matches(':');
            (PathBuf::from(host), host.to_string())
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:>9.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn run(args: BootArgs) -> Result<i32, CliError> {
    let t0 = Instant::now();
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => crate::cli::default_kernel()?,
    };
    let mut fs = Initramfs::with_init();
    for spec in &args.add {
        let (host, guest) = parse_add(spec);
        fs.add_file(&host, &guest).context("--add")?;
    }
    let initrd = fs.to_bytes().context("initramfs")?;
    let console = if args.console {
        ConsoleLog::with_echo(Box::new(std::io::stderr()))
    } else {
        ConsoleLog::default()
    };

    let runtime = RuntimeDir::create(&new_id()).context("runtime directory")?;
    let listener_path = runtime.vsock_listener(AGENT_PORT);
    let listener = UnixListener::bind(&listener_path).context(listener_path.display())?;
    let config = VmConfig {
        kernel,
        initrd,
        cmdline_extra: args.cmdline.clone(),
        mem_mib: args.mem,
        cpus: args.cpus,
        console: console.clone(),
        disks: Vec::new(),
        vsock: Some(VsockConfig {
            cid: 3,
            uds_path: runtime.vsock_socket(),
        }),
    };
    let vm = vmm::start(&config).map_err(|e| CliError::new(e.to_string()))?;
    let ready = Instant::now();
    let deadline = args
        .timeout
        .map(|t| ready + Duration::from_secs_f64(t.max(0.0)));

    // Ctrl-C and friends go to the command, as `docker run` proxies them.
    let forwarded: Vec<i32> = FORWARDED
        .iter()
        .copied()
        .filter(|s| *s != libc::SIGWINCH)
        .collect();
    let signals = SignalPipe::install(&forwarded).context("installing signal handlers")?;
    let spec = RunSpec {
        argv: args.command.clone(),
        cwd: "/".into(),
        ..Default::default()
    };
    let mut times = SessionTimes::default();
    let end = match agent::accept(&listener, vm.exit_fd(), deadline) {
        Ok(conn) => {
            let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
            let relay = Relay {
                stdin: None,
                stdout: &mut out,
                stderr: &mut err,
                signals: Some(&signals),
                winsize: None,
            };
            agent::run_session(conn, spec, relay, vm.exit_fd(), deadline, &mut times)
        }
        Err(end) => end,
    };
    drop(signals);
    // After its status, the guest resets itself; give it a moment, then stop it regardless.
    if matches!(end, SessionEnd::Exited(_) | SessionEnd::ExecFailed { .. }) {
        vm.wait(Some(agent::VM_EXIT_GRACE));
    }
    let entry = vm.kernel_entry();
    let reason = vm.shutdown();
    let gone = Instant::now();
    drop(runtime);

    if args.timings {
        eprintln!("brig timings (host clock since brig started):");
        eprintln!("  vmm ready      {}", ms(ready - t0));
        if let Some(e) = entry {
            eprintln!("  kernel entry   {}", ms(e - t0));
        }
        if let Some(h) = times.hello {
            eprintln!(
                "  init started   {}  (guest uptime {:.1} ms)",
                ms(h - t0),
                times.hello_uptime_ns as f64 / 1e6
            );
        }
        if let Some(x) = times.exited {
            eprintln!("  command exited {}", ms(x - t0));
        }
        eprintln!("  vm gone        {}", ms(gone - t0));
    }

    match end {
        SessionEnd::Exited(status) => Ok(status.shell_code()),
        SessionEnd::ExecFailed { kind, message } => Err(crate::cli::exec_error(kind, message)),
        SessionEnd::TimedOut => Err(CliError::new(format!(
            "the guest did not finish within --timeout {}s",
            args.timeout.unwrap_or_default()
        ))),
        SessionEnd::VmEnded => Err(crate::cli::vm_died(&console, &reason)),
        SessionEnd::Broken(msg) => Err(CliError::new(msg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_specs() {
        assert_eq!(
            parse_add("/bin/busybox:/bin/sh"),
            (PathBuf::from("/bin/busybox"), "/bin/sh".to_string())
        );
        assert_eq!(
            parse_add("/bin/busybox"),
            (PathBuf::from("/bin/busybox"), "/bin/busybox".to_string())
        );
        assert_eq!(
            parse_add("/bin/busybox:"),
            (PathBuf::from("/bin/busybox"), "/bin/busybox".to_string())
        );
    }
}
