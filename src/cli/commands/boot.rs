//! `brig boot`: boot the guest kernel with brig's init and run one command in it, with no
//! image: the command and the files it needs come from the host (`--add`). Or, with
//! `--initrd`, boot an initramfs of the user's with no agent, as Firecracker and QEMU boot
//! one: the VM runs until its guest resets or shuts itself down.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use brig_protocol::RunSpec;
use clap::Args;

use crate::sandbox::jailed_boot::BootSpec;
use crate::sandbox::launch::Launch;
use crate::sandbox::runtime::{new_id, RuntimeDir};
use crate::vmm::initramfs::{Initramfs, Initrd};
use crate::vmm::{ConsoleLog, VmConfig};
use anyhow::Context;

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
    /// Developer aid: once the guest console shows this text, save the VM to
    /// --snapshot-to and exit 0 (the command does not finish).
    #[arg(long, value_name = "TEXT", requires = "snapshot_to", hide = true)]
    pub snapshot_when: Option<String>,
    /// Directory the VM is saved to (with --snapshot-when).
    #[arg(long, value_name = "DIR", requires = "snapshot_when", hide = true)]
    pub snapshot_to: Option<PathBuf>,
    /// Developer aid: start from the VM saved in DIR instead of booting (same --mem and
    /// --cpus as when it was saved).
    #[arg(long, value_name = "DIR", conflicts_with = "snapshot_to", hide = true)]
    pub restore_from: Option<PathBuf>,
    /// Boot this initramfs (a newc cpio archive, as Firecracker's and QEMU's -initrd take)
    /// instead of brig's init: no agent and no command; exit 0 when the guest resets or
    /// shuts itself down, 125 when its kernel panics or the VM fails.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["add", "command", "snapshot_when", "restore_from"])]
    pub initrd: Option<PathBuf>,
    /// Command to run in the guest, and its arguments.
    #[arg(last = true, required_unless_present = "initrd", value_name = "CMD")]
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

pub fn run(args: BootArgs) -> anyhow::Result<i32> {
    let t0 = Instant::now();
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => crate::cli::default_kernel()?,
    };
    let initrd = match &args.initrd {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("--initrd {}", path.display()))?
        }
        None => {
            let mut fs = Initramfs::with_init();
            for spec in &args.add {
                let (host, guest) = parse_add(spec);
                fs.add_file(&host, &guest).context("--add")?;
            }
            fs.to_bytes().context("initramfs")?
        }
    };
    // The VMM is jailed (a child of this process) unless it saves a snapshot to a host
    // directory; a jailed VMM must start its console thread after it has entered the jail.
    let jailed = crate::sandbox::jail::enabled() && args.snapshot_when.is_none();
    let console = if args.console && jailed {
        ConsoleLog::with_deferred_echo(
            Box::new(std::io::stderr()),
            crate::vmm::seccomp::confine_console,
        )
    } else if args.console {
        ConsoleLog::with_confined_echo(
            Box::new(std::io::stderr()),
            crate::vmm::seccomp::confine_console,
        )
    } else {
        ConsoleLog::default()
    };
    let runtime = RuntimeDir::create(&new_id()).context("runtime directory")?;
    let timeout = args.timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
    let vm = VmConfig {
        kernel,
        initrd: Initrd::Archive(initrd),
        cmdline_extra: args.cmdline.clone(),
        mem_mib: args.mem,
        cpus: args.cpus,
        host_cpus: Vec::new(),
        console,
        disks: Vec::new(),
        vsock: None,
        net: None,
        fs: Vec::new(),
    };
    if let (Some(marker), Some(dir)) = (&args.snapshot_when, &args.snapshot_to) {
        let deadline = Instant::now() + timeout.unwrap_or(Duration::from_secs(300));
        crate::sandbox::vm::snapshot_when(vm, &runtime, marker, dir, deadline)?;
        return Ok(0);
    }
    let spec = if args.initrd.is_some() {
        BootSpec::Bare {
            vm: Box::new(vm),
            timeout,
        }
    } else {
        BootSpec::Agent(Box::new(Launch {
            vm,
            run: RunSpec {
                argv: args.command.clone(),
                cwd: "/".into(),
                ..Default::default()
            },
            stdin: false,
            timeout,
            restore_from: args.restore_from.clone(),
            template: None,
            resume: None,
            checkpoint: None,
            then_exit: false,
        }))
    };
    let timings = args.timings.then_some(t0);
    if jailed {
        let code =
            crate::sandbox::jailed_boot::run(spec, &runtime, timings).context("jailing the VMM")?;
        return Ok(code);
    }
    Ok(crate::sandbox::jailed_boot::boot_here(
        spec, &runtime, timings,
    )??)
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
