//! Kubernetes' path: containerd 1.6's CRI plugin with a `brig` runtime handler (the runc
//! shim, `BinaryName` = brig-runc), driven over its socket as kubelet would, with the CRI v1
//! client of the k8s-cri crate (no kubelet or crictl is packaged here). A pod network from
//! CNI's bridge plugin; the pod's sandbox container is brig's placeholder (no VM) and the
//! app container a brig VM in the pod's network namespace.

use std::path::{Path, PathBuf};
use std::process::Command;

use cri::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1 as cri;

use crate::callers::{archive, brig_vmms, http_get, spawn_containerd, CTR_IMPORT};
use crate::common::fixture::{check, eventually, pids_whose_cmdline};
use crate::common::procs;
use crate::{base, leftovers, runc_path, with_env};

/// The pod's subnet, on CNI's bridge `brigcri0` in L1.
const SUBNET: &str = "10.99.0.0/24";

fn dir() -> PathBuf {
    base().join("cri")
}

/// containerd with the CRI plugin, brig as runtime handler `brig`, the native snapshotter
/// (no overlayfs in L1), CNI's bridge; the busybox image imported as the app's and the pause
/// image (brig never runs the pause image's program).
fn start_containerd() -> Result<std::process::Child, String> {
    let d = dir();
    for sub in ["net.d", "logs"] {
        std::fs::create_dir_all(d.join(sub)).map_err(|e| e.to_string())?;
    }
    std::fs::write(
        d.join("net.d/10-brig.conflist"),
        format!(
            r#"{{"cniVersion":"0.4.0","name":"brig-pods","plugins":[{{"type":"bridge","bridge":"brigcri0","isGateway":true,"ipMasq":false,
            "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{SUBNET}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}}]}}"#
        ),
    )
    .map_err(|e| e.to_string())?;
    let config = d.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/c.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:brig"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "brig"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.brig]
      runtime_type = "io.containerd.runc.v2"
      privileged_without_host_devices = true
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.brig.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/net.d"
"#,
            d = d.display(),
            runc = runc_path().display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = spawn_containerd(&d, &config)?;
    let sock = d.join("c.sock");
    let ctr = |args: &[&str]| {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&sock).args(["-n", "k8s.io"]).args(args);
        with_env(&mut c);
        c
    };
    let import = procs::output(ctr(&CTR_IMPORT).arg(archive()));
    check(
        import.status.success(),
        "ctr -n k8s.io images import",
        &import,
    )?;
    let tag = procs::output(&mut ctr(&[
        "images",
        "tag",
        "localhost/bb:latest",
        "localhost/pause:brig",
    ]));
    check(
        tag.status.success(),
        "ctr images tag (the pause image)",
        &tag,
    )?;
    Ok(child)
}

async fn client(sock: &Path) -> Result<RuntimeServiceClient<tonic::transport::Channel>, String> {
    let sock = sock.to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(sock).await?,
                ))
            }
        }))
        .await
        .map_err(|e| format!("connecting to the CRI socket: {e}"))?;
    Ok(RuntimeServiceClient::new(channel))
}

fn status_error(what: &str) -> impl Fn(tonic::Status) -> String + '_ {
    move |s| format!("{what}: {}", s.message())
}

pub fn cri_pod_with_a_brig_container() -> Result<(), String> {
    let mut containerd = start_containerd()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = rt.block_on(pod()).map_err(|e| {
        let log = std::fs::read_to_string(dir().join("log")).unwrap_or_default();
        let cri: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("level=error") || l.contains("level=warn"))
            .collect();
        format!("{e}\ncontainerd's errors and warnings:\n{}", cri.join("\n"))
    });
    let _ = containerd.kill();
    let _ = containerd.wait();
    // The shim of a pod that failed half-way outlives containerd: end it, and the pod's VMs.
    for pid in pids_whose_cmdline(|c| c.contains("containerd-shim") && c.contains("k8s.io")) {
        // SAFETY: kill on a pid just read from /proc.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    result?;
    let left = leftovers();
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}"));
    }
    Ok(())
}

async fn pod() -> Result<(), String> {
    let mut c = client(&dir().join("c.sock")).await?;
    let version = c
        .version(cri::VersionRequest::default())
        .await
        .map_err(status_error("Version"))?
        .into_inner();
    if version.runtime_api_version != "v1" {
        return Err(format!("CRI version: {version:?}"));
    }
    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "brig-test-uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web-pod".into(),
        log_directory: dir().join("logs").display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let pod_id = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: "brig".into(),
        })
        .await
        .map_err(status_error("RunPodSandbox"))?
        .into_inner()
        .pod_sandbox_id;
    let result = in_the_pod(&mut c, &pod_id, &pod_config).await;
    let stop = c
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .map_err(status_error("StopPodSandbox"));
    let remove = c
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .map_err(status_error("RemovePodSandbox"));
    result?;
    stop?;
    remove?;
    eventually(30, "no VMM process left", || brig_vmms().is_empty())
}

async fn in_the_pod(
    c: &mut RuntimeServiceClient<tonic::transport::Channel>,
    pod_id: &str,
    pod_config: &cri::PodSandboxConfig,
) -> Result<(), String> {
    // The sandbox container is a placeholder: no VM yet.
    if !brig_vmms().is_empty() {
        return Err(format!("a VM for the pod sandbox: {:?}", brig_vmms()));
    }
    let status = c
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: false,
        })
        .await
        .map_err(status_error("PodSandboxStatus"))?
        .into_inner();
    let ip = status
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    if !ip.starts_with("10.99.0.") {
        return Err(format!("the pod's address from CNI: {ip:?}"));
    }
    let container_id = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: "localhost/bb:latest".into(),
                    ..Default::default()
                }),
                command: vec!["sh".into(), "-c".into()],
                args: vec![
                    "mkdir -p /www && echo served-by-brig > /www/index.html && echo app-started && exec httpd -f -p 8080 -h /www".into(),
                ],
                envs: vec![cri::KeyValue {
                    key: "GREETING".into(),
                    value: "from-cri".into(),
                }],
                log_path: "app.log".into(),
                linux: Some(cri::LinuxContainerConfig::default()),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .map_err(status_error("CreateContainer"))?
        .into_inner()
        .container_id;
    c.start_container(cri::StartContainerRequest {
        container_id: container_id.clone(),
    })
    .await
    .map_err(status_error("StartContainer"))?;
    let exec = c
        .exec_sync(cri::ExecSyncRequest {
            container_id: container_id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo $GREETING; hostname; ip -4 addr show eth0; exit 3".into(),
            ],
            timeout: 120,
        })
        .await
        .map_err(status_error("ExecSync"))?
        .into_inner();
    let out = String::from_utf8_lossy(&exec.stdout).into_owned();
    if exec.exit_code != 3
        || !out.contains("from-cri\n")
        || !out.contains("web-pod\n")
        || !out.contains(&format!("inet {ip}/24"))
    {
        return Err(format!(
            "ExecSync: exit {}, stdout {out:?}, stderr {:?}",
            exec.exit_code,
            String::from_utf8_lossy(&exec.stderr)
        ));
    }
    let sandboxes: Vec<String> = std::fs::read_dir(base().join("home/sandboxes"))
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if sandboxes.len() != 1 {
        return Err(format!(
            "one VM for the pod's app container, not {sandboxes:?}"
        ));
    }
    let mut body = String::new();
    eventually(
        60,
        "HTTP from the app container over the pod network",
        || {
            body = http_get(&format!("{ip}:8080")).unwrap_or_default();
            body.contains("served-by-brig")
        },
    )
    .map_err(|e| format!("{e}: last answer {body:?}"))?;
    // The container's log, in CRI's format, from its stdout.
    let log = dir().join("logs/app.log");
    let mut text = String::new();
    eventually(30, "the container's log", || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().any(|l| l.contains(" stdout F app-started"))
    })
    .map_err(|e| format!("{e}: {text:?}"))?;
    c.stop_container(cri::StopContainerRequest {
        container_id: container_id.clone(),
        timeout: 10,
    })
    .await
    .map_err(status_error("StopContainer"))?;
    c.remove_container(cri::RemoveContainerRequest {
        container_id: container_id.clone(),
    })
    .await
    .map_err(status_error("RemoveContainer"))?;
    Ok(())
}
