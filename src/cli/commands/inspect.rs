//! `brig inspect NAME...`: a sandbox's config, state, VMM pid, sockets, exit code and times,
//! or an image's manifest digest, config, layers and rootfs path, as a JSON array (as
//! `docker inspect` prints). Sandboxes are looked up first, as docker looks up containers.

use clap::Args;

use crate::image::{display_name, Store};

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Sandbox (name or id) or image (name, ID or digest).
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub fn run(args: InspectArgs) -> anyhow::Result<i32> {
    let store = Store::open_default()?;
    let mut out = Vec::new();
    for image in &args.images {
        if let Ok(sb) = crate::sandbox::state::resolve(store.home(), image) {
            out.push(sandbox_json(&sb)?);
            continue;
        }
        let found = store.lookup(image)?;
        let Some(first) = found.first() else {
            anyhow::bail!("no such sandbox or image: {image}");
        };
        let rec = store.record(&first.manifest)?;
        let all = crate::image::names::load(&store)?;
        let digests: Vec<String> = all
            .iter()
            .filter(|n| n.manifest == rec.manifest_digest && !n.repository.is_empty())
            .map(|n| {
                let mut n = n.clone();
                n.tag = None;
                display_name(&n)
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let size = std::fs::metadata(&rec.rootfs_path).map(|m| m.len()).ok();
        out.push(serde_json::json!({
            "Id": rec.config_digest,
            "RepoTags": rec.names.iter().filter(|n| !n.contains('@')).collect::<Vec<_>>(),
            "RepoDigests": digests,
            "ManifestDigest": rec.manifest_digest,
            "IndexDigest": first.index,
            "Created": rec.created,
            "Os": rec.platform.os,
            "Architecture": rec.platform.architecture,
            "Variant": rec.platform.variant,
            "Config": rec.config,
            "Layers": rec.layers,
            "RootfsPath": rec.rootfs_path,
            "RootfsSize": size,
        }));
    }
    let text = serde_json::to_string_pretty(&out)?;
    println!("{text}");
    Ok(0)
}

fn sandbox_json(sb: &crate::sandbox::state::Sandbox) -> anyhow::Result<serde_json::Value> {
    let config = sb.config()?;
    let state = sb.current_state()?;
    let runtime = crate::sandbox::runtime::dir_of(&sb.id);
    // Live but not running: a brig cp maintenance VM has the stopped sandbox's disks open.
    let live = sb.is_live() && state.status == crate::sandbox::state::Status::Running;
    Ok(serde_json::json!({
        "Id": config.id,
        "Name": config.name,
        "Image": config.image,
        "ImageId": config.image_id,
        "Created": config.created,
        "State": {
            "Status": if live && state.paused { serde_json::json!("paused") } else { serde_json::json!(state.status) },
            "Running": live,
            "Paused": live && state.paused,
            "Pid": if live { state.pid } else { 0 },
            "ExitCode": state.exit_code,
            "Error": state.error,
            "StartedAt": state.started_at,
            "FinishedAt": state.finished_at,
            // How its VM came to run: "boot", "template" (restored) or "snapshot".
            "StartPath": state.start_path,
        },
        // As /proc shows the VMM now: its threads' seccomp filters, capabilities, uid, root,
        // jail.
        "VmmConfinement": if live {
            crate::sandbox::confinement::of_vmm(state.pid, &runtime)
        } else {
            None
        },
        "Config": {
            "Cmd": config.run.argv,
            "Env": config.run.env,
            "WorkingDir": config.run.cwd,
            "User": config.run.user,
            "Hostname": config.run.hostname,
            "Tty": config.run.tty,
            "OpenStdin": config.run.stdin,
            "StopSignal": config.stop_signal,
        },
        "HostConfig": {
            "Kernel": config.kernel,
            "MemoryMiB": config.mem_mib,
            "MemoryLimit": config.run.memory_limit,
            "PidsLimit": config.run.pids_limit,
            "Cpus": config.cpus,
            "CpusetCpus": config.cpuset_cpus,
            "CpusetMems": config.cpuset_mems,
            "Memory": config.run.memory_limit,
            "MemorySwap": config.run.memory_swap,
            "BlkioDeviceReadBps": config.blkio.read_bps,
            "BlkioDeviceWriteBps": config.blkio.write_bps,
            "BlkioDeviceReadIOps": config.blkio.read_iops,
            "BlkioDeviceWriteIOps": config.blkio.write_iops,
            "AutoRemove": config.auto_remove,
            "ReadonlyRootfs": config.run.rootfs.as_ref().is_some_and(|r| r.read_only),
            "NetworkMode": config.network.mode,
            "PortBindings": config.network.publish,
            "Dns": config.network.dns,
            "DnsSearch": config.network.dns_search,
            "DnsOptions": config.network.dns_options,
            "ExtraHosts": config.network.add_hosts.iter().map(|(n, ip)| format!("{n}:{ip}")).collect::<Vec<_>>(),
            "EgressAllow": config.network.egress_allow,
            "CapAdd": config.security.cap_add,
            "CapDrop": config.security.cap_drop,
            "Privileged": config.security.privileged,
            "SecurityOpt": config.security.security_opt,
        },
        "NetworkSettings": if live { state.network.clone() } else { None },
        "Disks": config.disks,
        "Mounts": config.volumes.iter().map(mount_json).collect::<Vec<_>>(),
        "StateDir": sb.dir,
        "LogPath": sb.log_path(),
        "ConsolePath": sb.console_path(),
        "RuntimeDir": if live { Some(&runtime) } else { None },
        "VsockSocket": if live { Some(runtime.join("vsock.sock")) } else { None },
    }))
}

/// One entry of docker's `Mounts`.
fn mount_json(m: &crate::sandbox::volumes::ResolvedMount) -> serde_json::Value {
    use crate::sandbox::volumes::Source;
    let (kind, name) = match &m.mount.source {
        Source::Bind { .. } => ("bind", None),
        Source::Volume { name, .. } => ("volume", Some(name.clone())),
        Source::Tmpfs { .. } => ("tmpfs", None),
    };
    serde_json::json!({
        "Type": kind,
        "Name": name,
        "Source": m.host,
        "Destination": m.mount.target,
        "RW": !m.mount.read_only,
        "Mode": if m.mount.read_only { "ro" } else { "rw" },
        "Ownership": m.mount.ownership,
    })
}
