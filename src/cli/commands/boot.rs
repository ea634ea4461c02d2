//! `brig boot`: boot the guest kernel with brig's init and run one command.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use crate::cli::{CliError, Context};
use crate::devices::serial::ConsoleLog;
use crate::initramfs::Initramfs;
use crate::vmm::{self, ExitReason, VmConfig};

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
    /// Give up (exit 125) when the guest has not finished after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Print boot phase timings on stderr.
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
    let config = VmConfig {
        kernel,
        initrd,
        cmdline_extra: args.cmdline.clone(),
        mem_mib: args.mem,
        cpus: args.cpus,
        console: console.clone(),
    };
    let vm = vmm::start(&config).map_err(|e| CliError::new(e.to_string()))?;
    let ready = Instant::now();
    let reason = vm.wait(args.timeout.map(Duration::from_secs_f64));
    let Some(reason) = reason else {
        vm.shutdown();
        return Err(CliError::new(format!(
            "the guest did not finish within --timeout {}s{}",
            args.timeout.unwrap_or_default(),
            console
                .last_line()
                .map(|l| format!(" (last console line: {l})"))
                .unwrap_or_default()
        )));
    };
    let entry = vm.kernel_entry();
    vm.shutdown();
    if args.timings {
        eprintln!("vmm ready: {:?}", ready - t0);
        if let Some(e) = entry {
            eprintln!("kernel entry: {:?}", e - t0);
        }
        eprintln!("vm gone: {:?}", t0.elapsed());
    }
    match reason {
        ExitReason::Error(e) => Err(CliError::new(e)),
        _ => match console.panic_line() {
            Some(p) => Err(CliError::new(format!("the guest kernel panicked: {p}"))),
            None => Ok(0),
        },
    }
}
