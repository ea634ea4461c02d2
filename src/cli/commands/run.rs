//! `brig run`: run an OCI image in its own microVM, with docker's flags and exit codes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{ArgAction, Args, ValueEnum};

use crate::image::{self, PullOptions};
use crate::sandbox::lifecycle::{self, CreateOptions};
use crate::sandbox::network::{NetworkFlags, NetworkOptions};
use crate::sandbox::resources::{ResourceFlags, Resources};
use crate::sandbox::security::{cache::FilterCache, SecurityFlags};
use crate::sandbox::spec::RunOptions;
use crate::sandbox::state;
use anyhow::Context;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    Missing,
    Always,
    Never,
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// Keep stdin open and forward it to the workload.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Remove the sandbox's state when it ends.
    #[arg(long)]
    rm: bool,
    /// Run in the background and print the sandbox's id.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Name of the sandbox (default: a generated one).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Override the image's Entrypoint ("" clears it).
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to copy the host's).
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the sandbox.
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// User (name or uid, optionally :group or :gid).
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Additional groups to join.
    #[arg(long = "group-add", value_name = "GROUP")]
    group_add: Vec<String>,
    /// Host name of the sandbox (default: its id).
    #[arg(short = 'h', long, value_name = "NAME")]
    hostname: Option<String>,
    /// Memory limit (e.g. 512m, 2g): the workload's cgroup limit; guest RAM gets 64 MiB more.
    #[arg(short = 'm', long, value_name = "BYTES")]
    memory: Option<String>,
    /// Memory plus swap limit (-1: unlimited swap); default: twice -m.
    #[arg(long = "memory-swap", value_name = "BYTES", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// Number of CPUs (vCPUs; fractions round up).
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// Host CPUs the VM runs on (0-3, 0,1); one vCPU per CPU unless --cpus says otherwise.
    #[arg(long = "cpuset-cpus", value_name = "LIST")]
    cpuset_cpus: Option<String>,
    /// Memory nodes (the guest has one: 0).
    #[arg(long = "cpuset-mems", value_name = "LIST")]
    cpuset_mems: Option<String>,
    /// Limit read rate from a disk (DEV: /dev/vda, /dev/vdb or a host block device), e.g.
    /// /dev/vda:10mb.
    #[arg(long = "device-read-bps", value_name = "DEV:RATE")]
    device_read_bps: Vec<String>,
    /// Limit write rate to a disk, e.g. /dev/vdb:1mb.
    #[arg(long = "device-write-bps", value_name = "DEV:RATE")]
    device_write_bps: Vec<String>,
    /// Limit read operations per second from a disk.
    #[arg(long = "device-read-iops", value_name = "DEV:N")]
    device_read_iops: Vec<String>,
    /// Limit write operations per second to a disk.
    #[arg(long = "device-write-iops", value_name = "DEV:N")]
    device_write_iops: Vec<String>,
    /// Limit on the number of processes (-1: unlimited).
    #[arg(long = "pids-limit", value_name = "N", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// Network: "bridge" (the default: NAT, the host and other sandboxes unreachable) or
    /// "none" (only lo).
    #[arg(long, alias = "net", value_name = "NETWORK")]
    network: Option<String>,
    /// Publish a sandbox port on the host: [IP:][HOSTPORT:]PORT[/tcp|/udp].
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOSTPORT:PORT")]
    publish: Vec<String>,
    /// Name server for the sandbox (default: the host's).
    #[arg(long, value_name = "IP")]
    dns: Vec<String>,
    /// DNS search domain.
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    dns_search: Vec<String>,
    /// DNS resolver option (resolv.conf "options").
    #[arg(long = "dns-option", value_name = "OPTION")]
    dns_option: Vec<String>,
    /// Add a line to /etc/hosts (NAME:IP).
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_host: Vec<String>,
    /// Allow outgoing traffic only to these destinations (repeatable; DNS servers given
    /// with --dns are allowed on port 53).
    #[arg(long = "egress-allow", value_name = "CIDR[:PORT[-PORT]]")]
    egress_allow: Vec<String>,
    /// Add a Linux capability to docker's default set (NAME, CAP_NAME or ALL).
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a Linux capability from docker's default set (NAME, CAP_NAME or ALL).
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// Every capability, no seccomp filter, no masked /proc paths.
    #[arg(long)]
    privileged: bool,
    /// seccomp=unconfined|PROFILE.json, no-new-privileges[=true|false],
    /// systempaths=unconfined.
    #[arg(long = "security-opt", value_name = "OPT")]
    security_opt: Vec<String>,
    /// The uid the sandbox's VMM runs as, in its jail (as root; default: one of brig's
    /// jail range, from the sandbox id).
    #[arg(long = "jail-uid", value_name = "UID", value_parser = clap::value_parser!(u32).range(1..=4_294_967_294))]
    jail_uid: Option<u32>,
    /// The gid the sandbox's VMM runs as, in its jail (default: the jail uid).
    #[arg(long = "jail-gid", value_name = "GID", value_parser = clap::value_parser!(u32).range(1..=4_294_967_294))]
    jail_gid: Option<u32>,
    /// Share a host path or a named volume: [SRC:]DST[:ro|rw,passthrough]
    #[arg(short = 'v', long = "volume", value_name = "[SRC:]DST[:OPTS]")]
    volume: Vec<String>,
    /// Attach a mount: type=bind|volume|tmpfs,source=..,target=..[,readonly]
    #[arg(long, value_name = "SPEC")]
    mount: Vec<String>,
    /// Mount a tmpfs in the sandbox: DST[:size=..,mode=..]
    #[arg(long, value_name = "DST[:OPTS]")]
    tmpfs: Vec<String>,
    /// Mount the root file system read-only (no overlay).
    #[arg(long = "read-only")]
    read_only: bool,
    /// Resource limit (name=soft[:hard]), e.g. nofile=1024:2048.
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    ulimit: Vec<String>,
    /// Kill the sandbox and exit 124 after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Guest kernel to boot (default: the one kernels/build.sh built).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Platform of the image to pull (os/arch[/variant]).
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    /// When to pull the image.
    #[arg(long, value_enum, default_value = "missing")]
    pull: PullPolicy,
    #[command(flatten)]
    insecure: super::pull::InsecureRegistryArgs,
    /// Suppress pull progress.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Print the start path and phases with their times on stderr (also BRIG_TIMINGS=1).
    #[arg(long)]
    timings: bool,
    /// Boot the guest kernel instead of restoring a template (also BRIG_TEMPLATES=off).
    #[arg(long)]
    cold: bool,
    /// Copy the guest console (kernel messages) to stderr.
    #[arg(long)]
    console: bool,
    /// The image.
    #[arg(value_name = "IMAGE")]
    image: String,
    /// Command and arguments (default: the image's Entrypoint and Cmd).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

fn resolve_image(args: &RunArgs, store: &image::Store) -> anyhow::Result<image::ImageRecord> {
    let mut opts = PullOptions::default();
    if let Some(p) = &args.platform {
        opts.platform =
            Some(image::Platform::parse(p).map_err(|e| anyhow::anyhow!("--platform: {e}"))?);
    }
    opts.insecure_registries
        .extend(args.insecure.insecure_registry.iter().cloned());
    let progress = image::Progress::new(args.quiet);
    match args.pull {
        PullPolicy::Never => store.resolve_local(&args.image, &opts)?.ok_or_else(|| {
            anyhow::anyhow!("image {} is not present locally (--pull never)", args.image)
        }),
        PullPolicy::Always => store
            .pull_record(&args.image, &opts, &progress)
            .map_err(anyhow::Error::from),
        PullPolicy::Missing => store
            .resolve_or_pull(&args.image, &opts, &progress)
            .map_err(anyhow::Error::from),
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    let t0 = Instant::now();
    if args.cold {
        // Read where the VM starts: in this process, or in the detached VMM process it starts.
        std::env::set_var("BRIG_TEMPLATES", "off");
    }
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => crate::cli::default_kernel()?,
    };
    let resources = Resources::from_flags(&ResourceFlags {
        memory: args.memory.clone(),
        memory_swap: args.memory_swap.clone(),
        cpus: args.cpus,
        cpuset_cpus: args.cpuset_cpus.clone(),
        cpuset_mems: args.cpuset_mems.clone(),
        device_read_bps: args.device_read_bps.clone(),
        device_write_bps: args.device_write_bps.clone(),
        device_read_iops: args.device_read_iops.clone(),
        device_write_iops: args.device_write_iops.clone(),
    })?;
    let network = NetworkOptions::parse(&NetworkFlags {
        network: args.network.clone(),
        publish: args.publish.clone(),
        dns: args.dns.clone(),
        dns_search: args.dns_search.clone(),
        dns_options: args.dns_option.clone(),
        add_hosts: args.add_host.clone(),
        egress_allow: args.egress_allow.clone(),
    })?;
    let security = SecurityFlags {
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        privileged: args.privileged,
        security_opt: args.security_opt.clone(),
        jail_uid: args.jail_uid,
        jail_gid: args.jail_gid,
    };
    let confinement = security.resolve()?;
    let volumes = crate::sandbox::volumes::spec::parse_all(&args.volume, &args.mount, &args.tmpfs)?;
    if args.detach && args.interactive {
        // docker allows -d with -i/-t only to attach later; brig has no attach (yet).
        anyhow::bail!("-d cannot be combined with -i (brig has no attach yet); use brig exec -it");
    }
    crate::sandbox::tty::check_interactive(args.tty, args.interactive)?;
    let mut env_files = Vec::new();
    for f in &args.env_file {
        let text = std::fs::read_to_string(f).context(format!("--env-file {}", f.display()))?;
        env_files.push((f.clone(), text));
    }

    // A host that cannot run the VM says so before anything is pulled.
    crate::vmm::kvm::open()?;
    let store = image::Store::open_default()?;
    // Compiled after the KVM check: the filter cache writes under brig's home.
    let security_spec = confinement.spec(&FilterCache::at(store.home()))?;
    state::sweep_stale(store.home());
    let record = resolve_image(&args, &store)?;

    let run = RunOptions {
        entrypoint: args.entrypoint.clone(),
        env: args.env.clone(),
        env_files,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        group_add: args.group_add.clone(),
        hostname: args.hostname.clone(),
        command: args.command.clone(),
        tty: args.tty,
        interactive: args.interactive,
        ulimits: args.ulimit.clone(),
        memory_limit: resources.memory_limit,
        memory_swap: resources.memory_swap,
        cpuset_cpus: resources.guest_cpuset(),
        cpuset_mems: resources.cpuset_mems.clone(),
        pids_limit: args
            .pids_limit
            .filter(|p| *p > 0)
            .map_or(0, |p| p.unsigned_abs()),
        security: Some(security_spec),
    };
    let created = lifecycle::create(
        store.home(),
        CreateOptions {
            image: args.image.clone(),
            record: &record,
            run,
            kernel,
            resources,
            read_only: args.read_only,
            name: args.name.clone(),
            auto_remove: args.rm,
            detached: args.detach,
            network,
            security,
            volumes,
        },
    )?;
    let timeout = args.timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
    if args.detach {
        let id = created.sandbox.id.clone();
        created.detach(timeout)?;
        println!("{id}");
        return Ok(0);
    }
    let timings =
        (args.timings || std::env::var("BRIG_TIMINGS").is_ok_and(|v| v == "1")).then_some(t0);
    Ok(created.run(args.interactive, args.console, timeout, timings)??)
}

/// `brig __supervise ID`'s arguments (given by `brig run -d`, never by a user).
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    id: String,
    #[arg(long)]
    lock_fd: i32,
    #[arg(long)]
    ready_fd: i32,
    #[arg(long)]
    timeout: Option<f64>,
}

/// `brig __supervise ID`: the VMM process of a detached sandbox.
pub fn supervise(args: SuperviseArgs) -> anyhow::Result<i32> {
    let timeout = args.timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
    Ok(lifecycle::supervise_detached(
        &args.id,
        args.lock_fd,
        args.ready_fd,
        timeout,
    )?)
}
