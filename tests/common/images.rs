//! Test images for the tests that run workloads: busybox-based images built here, and a
//! Debian image from `debootstrap --variant=minbase` (cached as a tarball, since it takes a
//! minute and a mirror), all as OCI layouts that `brig import` loads.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::layout::{descriptor, Layer, Layout};

/// Applets linked to busybox in the test images.
const APPLETS: &[&str] = &[
    "sh",
    "ls",
    "cat",
    "echo",
    "id",
    "sort",
    "sleep",
    "true",
    "false",
    "env",
    "pwd",
    "stty",
    "nproc",
    "head",
    "tail",
    "dd",
    "sha256sum",
    "touch",
    "mkdir",
    "rm",
    "grep",
    "wc",
    "kill",
    "seq",
    "yes",
    "tee",
    "ps",
    "hostname",
    "whoami",
    "test",
    "[",
    "printf",
    "mount",
    "uname",
    "wget",
    "nc",
    "httpd",
    "ip",
    "nslookup",
    "ifconfig",
    "route",
    "timeout",
];

/// Where test images are cached: `${XDG_CACHE_HOME:-$HOME/.cache}/brig/test-images`.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache")
        });
    base.join("brig/test-images")
}

/// Where this test binary keeps its OCI layouts: `layouts-<binary>` in [`cache_dir`], one
/// directory per binary, since scripts/test.sh runs binaries side by side and some rebuild
/// their layouts at start ([`fresh_busybox_layouts`]).
pub fn layouts_dir() -> PathBuf {
    cache_dir().join(format!("layouts-{}", binary_name()))
}

/// This test binary's name without cargo's hash (`network` for `network-0868f97245344c22`).
pub fn binary_name() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe.file_stem().unwrap_or_default().to_string_lossy();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
        _ => stem.into_owned(),
    }
}

/// Fresh `bb` and `bb-entry` layouts in [`layouts_dir`] (see [`busybox_layouts`]).
pub fn fresh_busybox_layouts() {
    for name in ["bb", "bb-entry"] {
        let _ = std::fs::remove_dir_all(layouts_dir().join(name));
    }
    busybox_layouts(&layouts_dir());
}

/// busybox-static with its applets, /etc/passwd and /etc/group (root, nobody, app:1000).
pub fn busybox_layer() -> Layer {
    let mut l = Layer::new().busybox();
    for applet in APPLETS {
        if !["sh", "ls", "cat", "echo"].contains(applet) {
            l = l.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    l.dir("etc", 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n",
            0o644,
        )
        .file("etc/group", b"root:x:0:\nnogroup:x:65534:\napp:x:1000:\n", 0o644)
        .dir("root", 0o700)
}

/// Builds the busybox test images, one OCI layout each (tag `latest`) under `dir`:
/// - `bb`: Cmd `sh -c 'echo default'`, Env PATH and FOO=image;
/// - `bb-entry`: Entrypoint `/bin/echo entry`, Cmd `default-arg`, WorkingDir /work, User app.
pub fn busybox_layouts(dir: &Path) {
    Layout::new(dir.join("bb")).add(
        "latest",
        vec![busybox_layer()],
        serde_json::json!({
            "Cmd": ["sh", "-c", "echo default"],
            "Env": ["PATH=/bin", "FOO=image"],
        }),
    );
    Layout::new(dir.join("bb-entry")).add(
        "latest",
        vec![busybox_layer(), Layer::new().dir("work", 0o755)],
        serde_json::json!({
            "Entrypoint": ["/bin/echo", "entry"],
            "Cmd": ["default-arg"],
            "Env": ["PATH=/bin"],
            "WorkingDir": "/work",
            "User": "app",
        }),
    );
}

/// The Debian minbase root file system as an uncompressed tarball, made once with debootstrap.
pub fn debian_tarball() -> PathBuf {
    let cache = cache_dir();
    let tarball = cache.join("debian-bookworm-minbase.tar");
    if tarball.exists() {
        return tarball;
    }
    std::fs::create_dir_all(&cache).unwrap();
    // Test binaries run side by side (scripts/test.sh): one debootstrap, the others wait.
    let lock = std::fs::File::create(cache.join(".debian.lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    if tarball.exists() {
        return tarball;
    }
    let root = cache.join(format!("debootstrap.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&root)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("debootstrap (Debian package debootstrap) is needed for the Debian test image");
    assert!(
        out.status.success(),
        "debootstrap failed: {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
    );
    // Package caches are not part of an image.
    for junk in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("rm -rf {}/{junk}/*", root.display()))
            .status();
    }
    let tmp = cache.join(format!("debian.{}.tar", std::process::id()));
    let status = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(&root)
        .args(["-cf"])
        .arg(&tmp)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar of the debootstrap tree failed");
    std::fs::rename(&tmp, &tarball).unwrap();
    let _ = std::fs::remove_dir_all(&root);
    tarball
}

/// An OCI layout with the Debian image tagged `latest`, one uncompressed layer.
pub fn debian_layout(dir: &Path) -> PathBuf {
    let tar = std::fs::read(debian_tarball()).unwrap();
    let mut layout = Layout::new(dir.to_path_buf());
    let layer = layout.put(&tar);
    let cfg = serde_json::json!({
        "created": "2024-01-02T03:04:05Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["bash"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.clone()]},
    });
    let cfg = serde_json::to_vec(&cfg).unwrap();
    layout.put(&cfg);
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &cfg),
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer,
            "size": tar.len(),
        }],
    });
    let m = serde_json::to_vec(&m).unwrap();
    layout.put(&m);
    layout.tag(
        descriptor("application/vnd.oci.image.manifest.v1+json", &m),
        "debian",
    );
    dir.to_path_buf()
}
