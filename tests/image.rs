//! Image tests with real components: Debian's docker-registry, skopeo pushing layouts the
//! tests build, umoci as the reference unpacker, mkfs.erofs/fsck.erofs, and the real brig
//! binary with a private BRIG_HOME. No KVM needed.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn config() -> serde_json::Value {
    json!({
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hi"],
        "Env": ["PATH=/bin", "A=b"],
        "WorkingDir": "/data",
        "User": "1000:1000",
        "ExposedPorts": {"80/tcp": {}},
        "Volumes": {"/vol": {}},
        "Labels": {"org.example": "yes"},
        "StopSignal": "SIGTERM"
    })
}

/// Three layers exercising whiteouts, an opaque dir, hard links, symlinks, special modes,
/// owners, device nodes, FIFOs, xattrs and replacement of one file type by another.
fn rich_layers(last: Compression) -> Vec<Layer> {
    use tar::EntryType as T;
    let l1 = Layer::new()
        .busybox()
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .dir("data", 0o750)
        .file("data/a", b"first a", 0o644)
        .file("data/b", b"gone soon", 0o600)
        .hardlink("data/hl", "data/a")
        .symlink("data/sl", "a")
        .symlink("data/abs", "/etc/passwd")
        .dir("opq", 0o755)
        .file("opq/old1", b"old1", 0o644)
        .dir("opq/sub", 0o700)
        .file("opq/sub/old3", b"old3", 0o644)
        .dir("tmp", 0o1777)
        .file("bin/suid", b"#!/bin/sh\n", 0o4755)
        .file("bin/sgid", b"#!/bin/sh\n", 0o2755)
        .raw(T::Directory, "home", None, b"", 0o755, 0, 0, &[])
        .raw(T::Directory, "home/user", None, b"", 0o700, 1000, 1000, &[])
        .file_owned("home/user/file", b"mine", 0o640, 1000, 1000)
        .raw(
            T::Regular,
            "big-uid",
            None,
            b"x",
            0o644,
            0,
            0,
            &[("uid", b"3000000"), ("gid", b"3000001")],
        )
        .raw(
            T::Regular,
            "xattr",
            None,
            b"x",
            0o644,
            0,
            0,
            &[("SCHILY.xattr.user.brig", b"yes")],
        )
        .dir("dev", 0o755)
        .raw(T::Char, "dev/null", None, b"", 0o666, 0, 0, &[])
        .raw(T::Fifo, "data/fifo", None, b"", 0o644, 0, 0, &[]);
    let l2 = Layer::new()
        .whiteout("data", "b")
        .opaque("opq")
        .file("opq/new", b"new", 0o644)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
            0o644,
        )
        .file("data/a", b"second a", 0o644)
        .dir("data/sl", 0o755)
        .file("data/sl/inside", b"was a symlink", 0o644);
    let l3 = Layer::new()
        .compression(last)
        .whiteout("home", "user")
        .file("added", b"top layer", 0o644)
        .hardlink("added-link", "added")
        .symlink("etc/motd", "/data/a");
    vec![l1, l2, l3]
}

/// Pulls `image` and compares its rootfs with umoci's unpacking of `layout:tag`.
fn check_against_umoci(env: &Env, image: &str, layout: &Path, tag: &str) {
    let ours = env.extract_rootfs(image, &env.path(&format!("ours-{tag}")));
    let theirs = umoci_unpack(layout, tag, &env.path(&format!("umoci-{tag}")));
    assert_same_tree(&ours, &theirs);
}

#[test]
fn pull_multilayer_image_matches_umoci() {
    let env = Env::new();
    let reg = Registry::start(None);
    let mut layout = Layout::new(env.path("layout"));
    layout.add("rich", rich_layers(Compression::None), config());
    let image = format!("{}/test/rich:v1", reg.host());
    push(&layout.dir, "rich", &image, None);

    let out = env.ok(&["pull", &image]);
    assert!(out.contains("Status: Downloaded newer image"), "{out}");
    assert!(out
        .trim_end()
        .ends_with(&format!("{}/test/rich:v1", reg.host())));
    env.assert_store_consistent();
    check_against_umoci(&env, &image, &layout.dir, "rich");

    // Semantics checked directly as well as against umoci.
    let t = tree(&env.path("ours-rich"));
    assert!(!t.contains_key("data/b"), "whiteout");
    assert!(
        !t.contains_key("opq/old1") && !t.contains_key("opq/sub"),
        "opaque dir"
    );
    assert!(t["opq/new"].starts_with("file:"));
    assert!(!t.contains_key("home/user"), "whited-out directory");
    assert!(t["tmp"].contains("mode=1777"), "{}", t["tmp"]);
    assert!(t["bin/suid"].contains("mode=4755"));
    assert!(t["bin/sgid"].contains("mode=2755"));
    assert!(
        t["big-uid"].contains("owner=3000000:3000001"),
        "{}",
        t["big-uid"]
    );
    assert!(t["data/abs"].starts_with("link->/etc/passwd"));
    assert_eq!(fs::read(env.path("ours-rich/data/hl")).unwrap(), b"first a");
    assert_eq!(fs::read(env.path("ours-rich/data/a")).unwrap(), b"second a");
    assert!(t["data/fifo"].starts_with("fifo"));
    if !LOSSY_EXTRACT.load(std::sync::atomic::Ordering::Relaxed) {
        let mut buf = [0u8; 16];
        let n =
            rustix::fs::getxattr(env.path("ours-rich/xattr"), "user.brig", &mut buf[..]).unwrap();
        assert_eq!(&buf[..n], b"yes", "xattr kept");
    }

    // Pulling again downloads nothing.
    let again = env.ok(&["pull", &image]);
    assert!(again.contains("Image is up to date"), "{again}");

    // inspect: config fields for `brig run`.
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", &image])).unwrap();
    let c = &v[0]["Config"];
    assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(c["Cmd"], json!(["echo hi"]));
    assert_eq!(c["Env"], json!(["PATH=/bin", "A=b"]));
    assert_eq!(c["WorkingDir"], "/data");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["ExposedPorts"], json!(["80/tcp"]));
    assert_eq!(c["Volumes"], json!(["/vol"]));
    assert_eq!(c["Labels"]["org.example"], "yes");
    assert_eq!(c["StopSignal"], "SIGTERM");
    assert_eq!(v[0]["Layers"].as_array().unwrap().len(), 3);
    assert!(Path::new(v[0]["RootfsPath"].as_str().unwrap()).is_file());
    let manifest = v[0]["ManifestDigest"].as_str().unwrap();
    assert!(v[0]["RootfsPath"].as_str().unwrap().ends_with(&format!(
        "rootfs/{}.erofs",
        manifest.trim_start_matches("sha256:")
    )));

    // images: table and JSON.
    let table = env.ok(&["images"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for col in ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(header.contains(col), "{header}");
    }
    let row = lines.next().unwrap();
    assert!(row.contains("test/rich") && row.contains("v1"), "{row}");
    let id = v[0]["Id"].as_str().unwrap();
    assert!(row.contains(&id[7..19]), "{row}");
    let j: serde_json::Value =
        serde_json::from_str(&env.ok(&["images", "--format", "json"])).unwrap();
    assert_eq!(j[0]["Tag"], "v1");
    assert_eq!(j[0]["ID"], id);
    assert!(j[0]["Size"].as_u64().unwrap() > 1_000_000);
    // inspect by short ID works too.
    env.ok(&["inspect", &id[7..19]]);
}

/// Tags in `layout` an index of two busybox images, amd64 and arm64, each with `/arch`
/// naming its architecture; returns the index digest.
fn multi_arch(layout: &mut Layout, tag: &str) -> String {
    let platforms = ["amd64", "arm64"].map(|arch| {
        let layer = Layer::new().busybox().file("arch", arch.as_bytes(), 0o644);
        (arch, layout.image(vec![layer], arch, config()).0)
    });
    layout.add_index(tag, platforms.into())
}

#[test]
fn pull_multiplatform_index_resolves_platform() {
    let env = Env::new();
    let reg = Registry::start(None);
    let mut layout = Layout::new(env.path("layout"));
    let index = multi_arch(&mut layout, "multi");
    let image = format!("{}/test/multi:latest", reg.host());
    push(&layout.dir, "multi", &image, None);

    let out = env.ok(&["pull", &image]);
    assert!(out.contains(&format!("Digest: {index}")), "{out}");
    let root = env.extract_rootfs(&image, &env.path("amd"));
    assert_eq!(fs::read(root.join("arch")).unwrap(), b"amd64");

    let env2 = Env::new();
    env2.ok(&["pull", "--platform", "linux/arm64", &image]);
    let root = env2.extract_rootfs(&image, &env2.path("arm"));
    assert_eq!(fs::read(root.join("arch")).unwrap(), b"arm64");
    let v: serde_json::Value = serde_json::from_str(&env2.ok(&["inspect", &image])).unwrap();
    assert_eq!(v[0]["Architecture"], "arm64");

    // By digest, too.
    let env3 = Env::new();
    env3.ok(&["pull", &format!("{}/test/multi@{index}", reg.host())]);
    assert_eq!(env3.rootfs_count(), 1);

    // A platform the index lacks, and a malformed one.
    let env4 = Env::new();
    env4.fails(
        &["pull", "--platform", "linux/s390x", &image],
        "no image for platform linux/s390x",
    );
    env4.fails(&["pull", "--platform", "linux", &image], "invalid platform");
    assert_eq!(env4.rootfs_count(), 0);
}

#[test]
fn pull_docker_schema2_manifest_and_list() {
    let env = Env::new();
    let reg = Registry::start(None);
    let mut layout = Layout::new(env.path("layout"));
    multi_arch(&mut layout, "list");
    layout.add(
        "single",
        vec![Layer::new().busybox().file("one", b"1", 0o644)],
        config(),
    );
    let list = format!("{}/test/docker:list", reg.host());
    let single = format!("{}/test/docker:single", reg.host());
    push_as(&layout.dir, "list", &list, None, Some("v2s2"));
    push_as(&layout.dir, "single", &single, None, Some("v2s2"));
    env.ok(&["pull", "--platform", "linux/arm64", &list]);
    env.ok(&["pull", &single]);
    for (image, kind) in [
        (&list, "manifest.list.v2+json"),
        (&single, "manifest.v2+json"),
    ] {
        let bytes = fetch_manifest(&reg.host(), image.rsplit_once(':').unwrap().1);
        assert!(
            bytes.contains(kind),
            "{image} was not pushed as Docker {kind}: {bytes}"
        );
    }
    let root = env.extract_rootfs(&list, &env.path("list"));
    assert_eq!(fs::read(root.join("arch")).unwrap(), b"arm64");
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", &single])).unwrap();
    assert!(v[0]["Layers"][0]["media_type"]
        .as_str()
        .unwrap()
        .starts_with("application/vnd.docker.image.rootfs"));
    check_against_umoci(&env, &single, &layout.dir, "single");
}

/// The manifest the registry serves for `test/docker:TAG`, with docker media types accepted.
fn fetch_manifest(host: &str, tag: &str) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{host}/test/docker:{tag}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pull_zstd_layer_matches_umoci() {
    let env = Env::new();
    let reg = Registry::start(None);
    let layers = |c| {
        vec![
            Layer::new().busybox().compression(c),
            Layer::new()
                .compression(c)
                .dir("z", 0o755)
                .file("z/file", b"zstd!", 0o600)
                .whiteout("bin", "ls"),
        ]
    };
    let mut layout = Layout::new(env.path("layout"));
    layout.add("zstd", layers(Compression::Zstd), config());
    // umoci 0.4.7 reads no zstd: it unpacks the same tars gzip-compressed.
    let mut twin = Layout::new(env.path("twin"));
    twin.add("zstd", layers(Compression::Gzip), config());
    let image = format!("{}/test/zstd:1", reg.host());
    push(&layout.dir, "zstd", &image, None);
    env.ok(&["pull", &image]);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", &image])).unwrap();
    assert!(v[0]["Layers"][1]["media_type"]
        .as_str()
        .unwrap()
        .ends_with("+zstd"));
    check_against_umoci(&env, &image, &twin.dir, "zstd");
}

#[test]
fn load_docker_archive_matches_umoci() {
    let env = Env::new();
    let mut layout = Layout::new(env.path("layout"));
    layout.add("rich", rich_layers(Compression::Gzip), config());
    let archive = env.path("image.tar");
    run_tool(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:rich", layout.dir.display()))
            .arg(format!(
                "docker-archive:{}:example.com/saved/rich:v2",
                archive.display()
            )),
    );
    let out = env.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(
        out.contains("Loaded image: example.com/saved/rich:v2"),
        "{out}"
    );
    env.assert_store_consistent();
    check_against_umoci(&env, "example.com/saved/rich:v2", &layout.dir, "rich");

    // A corrupted layer inside the archive is refused.
    let bad = env.path("bad.tar");
    corrupt_docker_archive(&archive, &bad);
    let env2 = Env::new();
    env2.fails(&["load", "-i", bad.to_str().unwrap()], "does not match");
    env2.fails(
        &["load", "-i", env.path("missing.tar").to_str().unwrap()],
        "no such file",
    );
    env2.fails(&["load", "-i", "/etc/passwd"], "tar");
    assert_eq!(env2.rootfs_count(), 0);
}

/// Rewrites a docker-archive with one byte of its largest layer changed.
fn corrupt_docker_archive(src: &Path, dst: &Path) {
    let mut a = tar::Archive::new(fs::File::open(src).unwrap());
    let mut entries: Vec<(tar::Header, Vec<u8>)> = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        entries.push((e.header().clone(), data));
    }
    let biggest = (0..entries.len())
        .max_by_key(|i| entries[*i].1.len())
        .unwrap();
    let n = entries[biggest].1.len();
    entries[biggest].1[n - 2000] ^= 0xff;
    let mut b = tar::Builder::new(fs::File::create(dst).unwrap());
    for (h, d) in entries {
        b.append(&h, &d[..]).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn import_oci_layout_and_oci_archive() {
    let env = Env::new();
    let mut layout = Layout::new(env.path("layout"));
    layout.add("rich", rich_layers(Compression::Zstd), config());
    let mut twin = Layout::new(env.path("twin"));
    twin.add("rich", rich_layers(Compression::Gzip), config());
    let out = env.ok(&["import", layout.dir.to_str().unwrap()]);
    assert!(out.contains("Loaded image: localhost/layout:rich"), "{out}");
    check_against_umoci(&env, "localhost/layout:rich", &twin.dir, "rich");

    let archive = env.path("img.oci.tar");
    run_tool(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:rich", layout.dir.display()))
            .arg(format!("oci-archive:{}:rich", archive.display())),
    );
    let env2 = Env::new();
    let out = env2.ok(&["import", archive.to_str().unwrap(), "myorg/imported:1.0"]);
    assert!(out.contains("Loaded image: myorg/imported:1.0"), "{out}");
    let a = env.extract_rootfs("localhost/layout:rich", &env.path("x1"));
    let b = env2.extract_rootfs("myorg/imported:1.0", &env2.path("x2"));
    assert_same_tree(&b, &a);
    env2.fails(
        &["import", env.path("nope").to_str().unwrap()],
        "no such file",
    );
    env2.fails(
        &["import", env.path("layout/blobs").to_str().unwrap()],
        "index.json",
    );
}

#[test]
fn pull_resumes_after_interrupted_pull() {
    let env = Env::new();
    let mut layout = Layout::new(env.path("layout"));
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let layer = Layer::new()
        .compression(Compression::None)
        .file("big", &big, 0o644);
    layout.add("big", vec![Layer::new().busybox(), layer], config());
    let fake = FakeRegistry::start(
        &layout.dir,
        FakeOptions {
            truncate_blobs_at: Some(1_000_000),
            ..Default::default()
        },
    );
    let image = format!("{}/test/big:big", fake.host());

    // 1. The connection drops mid-blob: a clear error, nothing under a final name.
    env.fails(&["pull", &image], "truncated download");
    env.assert_store_consistent();
    assert_eq!(env.rootfs_count(), 0);
    let partials: Vec<_> = fs::read_dir(env.home().join("tmp/partial"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        !partials.is_empty(),
        "a partial download is kept for resuming"
    );

    // 2. Interrupted by a signal while downloading slowly.
    fake.options.lock().unwrap().truncate_blobs_at = None;
    fake.options.lock().unwrap().throttle_ms = 20;
    let env2 = Env::new();
    let mut child = env2
        .cmd()
        .args(["pull", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let size: u64 = fs::read_dir(env2.home().join("tmp/partial"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        if size > 300_000 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    env2.assert_store_consistent();
    assert_eq!(env2.rootfs_count(), 0);

    // 3. Pulling again resumes both with Range requests and completes.
    fake.options.lock().unwrap().throttle_ms = 0;
    fake.requests.lock().unwrap().clear();
    env.ok(&["pull", &image]);
    env2.ok(&["pull", &image]);
    let reqs = fake.requests.lock().unwrap().clone();
    let resumed = reqs
        .iter()
        .filter(|r| r.contains("/blobs/") && !r.ends_with("range=0"))
        .count();
    assert!(resumed >= 2, "expected resumed blob requests, got {reqs:?}");
    for e in [&env, &env2] {
        e.assert_store_consistent();
        let root = e.extract_rootfs(&image, &e.path("x"));
        assert_eq!(fs::read(root.join("big")).unwrap(), big);
        assert!(fs::read_dir(e.home().join("tmp/partial"))
            .unwrap()
            .next()
            .is_none());
    }
}

#[test]
fn concurrent_pulls_end_with_one_correct_store() {
    let env = Env::new();
    let reg = Registry::start(None);
    let mut layout = Layout::new(env.path("layout"));
    let noise: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(40503) >> 7) as u8)
        .collect();
    layout.add(
        "c",
        vec![
            Layer::new().busybox(),
            Layer::new().file("noise", &noise, 0o644),
            Layer::new().file("x", b"x", 0o644),
        ],
        config(),
    );
    let image = format!("{}/test/conc:c", reg.host());
    push(&layout.dir, "c", &image, None);
    let children: Vec<_> = (0..3)
        .map(|_| {
            env.cmd()
                .args(["pull", "-q", &image])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    env.assert_store_consistent();
    assert_eq!(env.rootfs_count(), 1);
    let j: serde_json::Value =
        serde_json::from_str(&env.ok(&["images", "--format", "json"])).unwrap();
    assert_eq!(j.as_array().unwrap().len(), 1);
    // 3 layers + config + manifest.
    assert_eq!(
        fs::read_dir(env.home().join("blobs/sha256"))
            .unwrap()
            .count(),
        5
    );
    let leftovers: Vec<_> = fs::read_dir(env.home().join("tmp"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "partial")
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    check_against_umoci(&env, &image, &layout.dir, "c");
}

#[test]
fn registry_errors_fail_cleanly() {
    let env = Env::new();
    let reg = Registry::start(None);
    let mut layout = Layout::new(env.path("layout"));
    layout.add(
        "ok",
        vec![
            Layer::new().busybox(),
            Layer::new().file("f", &[7u8; 100_000], 0o644),
        ],
        config(),
    );
    let image = format!("{}/test/errs:ok", reg.host());
    push(&layout.dir, "ok", &image, None);

    // Unknown repository and unknown tag (404).
    env.fails(
        &["pull", &format!("{}/test/nothing:here", reg.host())],
        "not found",
    );
    env.fails(
        &["pull", &format!("{}/test/errs:missing", reg.host())],
        "not found",
    );
    // Unreachable registry.
    let dead = free_port();
    env.fails(&["pull", &format!("127.0.0.1:{dead}/x/y:z")], "unreachable");
    // Malformed references.
    for bad in ["UPPER/case", "x@sha256:1234", "a//b", "x:", "x/-y"] {
        env.fails(&["pull", bad], "invalid reference format");
    }
    // Unknown image names locally.
    env.fails(&["inspect", "never/pulled"], "no such image");
    env.fails(&["rmi", "never/pulled"], "no such image");
    assert_eq!(env.rootfs_count(), 0);

    // A blob whose content does not match its digest.
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.dir.join("index.json")).unwrap()).unwrap();
    let mdigest = v["manifests"][0]["digest"].as_str().unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &fs::read(layout.dir.join("blobs/sha256").join(&mdigest[7..])).unwrap(),
    )
    .unwrap();
    let layer = m["layers"][1]["digest"].as_str().unwrap();
    let file = reg.blob_file(layer);
    let mut data = fs::read(&file).unwrap();
    let n = data.len();
    data[n / 2] ^= 0xff;
    fs::write(&file, &data).unwrap();
    env.fails(&["pull", &image], "digest mismatch");
    env.assert_store_consistent();
    assert_eq!(env.rootfs_count(), 0);
    assert!(!env.home().join("blobs/sha256").join(&layer[7..]).exists());
    // A blob the registry serves short (its file truncated).
    fs::write(&file, &data[..n / 2]).unwrap();
    let out = env.brig(&["pull", &image]);
    assert_bad(&out, "", "short blob");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("truncated") || err.contains("size mismatch"),
        "{err}"
    );
    env.assert_store_consistent();
}

#[test]
fn unsupported_media_type_is_refused() {
    let env = Env::new();
    let mut layout = Layout::new(env.path("layout"));
    layout.add(
        "weird",
        vec![Layer::new()
            .file("f", b"x", 0o644)
            .media_type("application/vnd.example.weird")],
        config(),
    );
    let fake = FakeRegistry::start(&layout.dir, FakeOptions::default());
    env.fails(
        &["pull", &format!("{}/x/weird:weird", fake.host())],
        "unsupported media type",
    );
    assert_eq!(env.rootfs_count(), 0);
}

#[test]
fn auth_basic_htpasswd_and_login() {
    let env = Env::new();
    let reg = Registry::start(Some(("alice", "s3cret")));
    let mut layout = Layout::new(env.path("layout"));
    layout.add("a", vec![Layer::new().busybox()], config());
    let image = format!("{}/private/img:a", reg.host());
    push(&layout.dir, "a", &image, Some("alice:s3cret"));

    env.fails(&["pull", &image], "authentication required");
    // Wrong password: login refuses and stores nothing.
    let out = env
        .cmd()
        .args(["login", "-u", "alice", "--password-stdin", &reg.host()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"wrong\n").unwrap();
            c.wait_with_output().unwrap()
        })
        .unwrap();
    assert_bad(&out, "login", "bad login");
    assert!(!env.path("docker/config.json").exists());
    // Wrong credentials in config.json: access denied.
    use base64::Engine as _;
    let bad = base64::engine::general_purpose::STANDARD.encode("alice:wrong");
    fs::write(
        env.path("docker/config.json"),
        json!({"auths": {reg.host(): {"auth": bad}}}).to_string(),
    )
    .unwrap();
    env.fails(&["pull", &image], "denied");
    // Right password.
    let out = env.ok(&["login", "-u", "alice", "-p", "s3cret", &reg.host()]);
    assert!(out.contains("Login Succeeded"));
    let cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(env.path("docker/config.json")).unwrap()).unwrap();
    let stored = cfg["auths"][reg.host()]["auth"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(stored)
            .unwrap(),
        b"alice:s3cret"
    );
    env.ok(&["pull", &image]);
    env.assert_store_consistent();

    // A credential helper named in credHelpers wins over a wrong `auths` entry: brig runs
    // `docker-credential-NAME get`, writes the registry to its stdin and reads JSON back.
    let bin = env.path("bin");
    fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-brigtest");
    let asked = env.path("helper-asked");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\ncat > {}\necho '{{\"Username\":\"alice\",\"Secret\":\"s3cret\"}}'\n",
            asked.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        env.path("docker/config.json"),
        json!({"auths": {reg.host(): {"auth": bad}}, "credHelpers": {reg.host(): "brigtest"}})
            .to_string(),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = env
        .cmd()
        .env("PATH", path)
        .args(["pull", &image])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_to_string(&asked).unwrap(), reg.host());
}

#[test]
fn auth_bearer_token_flow() {
    let env = Env::new();
    let mut layout = Layout::new(env.path("layout"));
    layout.add("t", vec![Layer::new().busybox()], config());
    let fake = FakeRegistry::start(
        &layout.dir,
        FakeOptions {
            bearer: true,
            ..Default::default()
        },
    );
    env.ok(&["pull", &format!("{}/x/tok:t", fake.host())]);
    let reqs = fake.requests.lock().unwrap().clone();
    assert!(reqs.iter().any(|r| r.starts_with("/token?")), "{reqs:?}");
    assert!(
        reqs.iter().any(|r| r.contains("scope=repository")),
        "{reqs:?}"
    );
}

/// Builds a one-image layout of `layers`, imports it, and returns the output.
fn import_layers(env: &Env, layers: Vec<Layer>) -> std::process::Output {
    let mut layout = Layout::new(env.path("evil-layout"));
    layout.add("evil", layers, config());
    env.brig(&["import", layout.dir.to_str().unwrap(), "evil/image:1"])
}

fn canary(env: &Env) -> std::path::PathBuf {
    let dir = env.path("canary");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("secret"), b"untouched").unwrap();
    dir
}

fn assert_canary(dir: &Path) {
    assert_eq!(
        fs::read(dir.join("secret")).unwrap(),
        b"untouched",
        "canary changed"
    );
    let names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names.len(),
        1,
        "files appeared next to the canary: {names:?}"
    );
}

#[test]
fn malicious_layers_leave_host_untouched() {
    use tar::EntryType as T;
    type Case = (&'static str, Box<dyn Fn(&str) -> Vec<Layer>>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "symlinked parent",
            Box::new(|c: &str| {
                vec![
                    Layer::new().symlink("a", c),
                    Layer::new().file("a/secret", b"pwned", 0o644),
                ]
            }),
            "through a symlink",
        ),
        (
            "symlinked parent, same layer",
            Box::new(|c: &str| vec![Layer::new().symlink("a", c).file("a/new", b"pwned", 0o644)]),
            "through a symlink",
        ),
        (
            "relative symlink chain",
            Box::new(|_c: &str| {
                vec![Layer::new()
                    .dir("d", 0o755)
                    .symlink("d/up", "../../../../../../../../..")
                    .file("d/up/tmp/pwned", b"x", 0o644)]
            }),
            "through a symlink",
        ),
        (
            "dot-dot",
            Box::new(|c: &str| {
                let depth = "../".repeat(12);
                vec![Layer::new().file(
                    &format!("{depth}{}", &c[1..])
                        .replace("canary", "canary/secret")
                        .replace("secret/secret", "secret"),
                    b"pwned",
                    0o644,
                )]
            }),
            "contains `..`",
        ),
        (
            "absolute path",
            Box::new(|c: &str| vec![Layer::new().file(&format!("{c}/secret"), b"pwned", 0o644)]),
            "absolute path",
        ),
        (
            "hard link out",
            Box::new(|c: &str| vec![Layer::new().hardlink("evil", &format!("{c}/secret"))]),
            "absolute path",
        ),
        (
            "whiteout escape",
            Box::new(|_c: &str| {
                vec![Layer::new().raw(T::Regular, "../.wh.canary", None, b"", 0o644, 0, 0, &[])]
            }),
            "contains `..`",
        ),
    ];
    for (name, layers, needle) in cases {
        let env = Env::new();
        let c = canary(&env);
        let out = import_layers(&env, layers(c.to_str().unwrap()));
        assert_bad(&out, needle, name);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("malicious layer"),
            "{name}"
        );
        assert_canary(&c);
        assert_eq!(env.rootfs_count(), 0, "{name}");
        let stage: Vec<_> = fs::read_dir(env.home().join("tmp"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "partial")
            .collect();
        assert!(stage.is_empty(), "{name}: staging left behind");
    }

    // A symlink as the final component is replaced, never written through.
    let env = Env::new();
    let c = canary(&env);
    let target = format!("{}/secret", c.display());
    let out = import_layers(
        &env,
        vec![
            Layer::new().symlink("x", &target),
            Layer::new().file("x", b"replaced", 0o644),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_canary(&c);
    let root = env.extract_rootfs("evil/image:1", &env.path("x"));
    assert_eq!(fs::read(root.join("x")).unwrap(), b"replaced");
}

#[test]
fn tar_bombs_hit_the_limits() {
    let env = Env::new();
    let zeros = vec![0u8; 4_000_000];
    let mut layout = Layout::new(env.path("bomb"));
    layout.add(
        "bomb",
        vec![Layer::new().file("zeros", &zeros, 0o644)],
        config(),
    );
    let out = env
        .cmd()
        .env("BRIG_MAX_LAYER_BYTES", "1000000")
        .args(["import", layout.dir.to_str().unwrap(), "bomb:1"])
        .output()
        .unwrap();
    assert_bad(
        &out,
        "exceeds the limit of 1000000 uncompressed bytes",
        "byte bomb",
    );
    let mut many = Layer::new();
    for i in 0..200 {
        many = many.file(&format!("f{i}"), b"", 0o644);
    }
    let mut layout = Layout::new(env.path("many"));
    layout.add("many", vec![many], config());
    let out = env
        .cmd()
        .env("BRIG_MAX_LAYER_ENTRIES", "100")
        .args(["import", layout.dir.to_str().unwrap(), "many:1"])
        .output()
        .unwrap();
    assert_bad(&out, "exceeds the limit of 100 entries", "entry bomb");
    assert_eq!(env.rootfs_count(), 0);
    // Within the default limits the same layers are fine.
    env.ok(&["import", layout.dir.to_str().unwrap(), "many:1"]);
}

#[test]
fn disk_full_leaves_nothing_half_written() {
    let env = Env::new();
    let home = env.path("small");
    fs::create_dir_all(&home).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&home)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("skipping: cannot mount a small tmpfs here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(home.clone());
    let reg = Registry::start(None);
    let mut layout = Layout::new(env.path("layout"));
    let noise: Vec<u8> = (0..2_500_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    layout.add(
        "full",
        vec![
            Layer::new().busybox(),
            Layer::new()
                .compression(Compression::None)
                .file("noise", &noise, 0o644),
        ],
        config(),
    );
    let image = format!("{}/test/full:full", reg.host());
    push(&layout.dir, "full", &image, None);
    let out = env
        .cmd()
        .env("BRIG_HOME", &home)
        .args(["pull", &image])
        .output()
        .unwrap();
    assert_bad(&out, "no space left", "disk full");
    for e in fs::read_dir(home.join("blobs/sha256")).unwrap().flatten() {
        let data = fs::read(e.path()).unwrap();
        assert_eq!(
            sha256_hex(&data),
            e.file_name().to_string_lossy(),
            "incomplete blob under its final name"
        );
    }
    assert_eq!(fs::read_dir(home.join("rootfs")).unwrap().count(), 0);
}

#[test]
fn rmi_and_prune_free_space() {
    let env = Env::new();
    let reg = Registry::start(None);
    let mut layout = Layout::new(env.path("layout"));
    layout.add(
        "one",
        vec![
            Layer::new().busybox(),
            Layer::new().file("one", b"1", 0o644),
        ],
        config(),
    );
    layout.add(
        "two",
        vec![
            Layer::new().busybox(),
            Layer::new().file("two", b"2", 0o644),
        ],
        config(),
    );
    for t in ["one", "two"] {
        push(&layout.dir, t, &format!("{}/test/gc:{t}", reg.host()), None);
        env.ok(&["pull", "-q", &format!("{}/test/gc:{t}", reg.host())]);
    }
    assert_eq!(env.rootfs_count(), 2);
    let blobs = || {
        fs::read_dir(env.home().join("blobs/sha256"))
            .unwrap()
            .count()
    };
    assert_eq!(blobs(), 7); // shared busybox layer + 2 × (layer, config, manifest)
    let out = env.ok(&["rmi", &format!("{}/test/gc:one", reg.host())]);
    assert!(
        out.contains("Untagged: ") && out.contains("Deleted: sha256:"),
        "{out}"
    );
    assert_eq!(env.rootfs_count(), 1);
    assert_eq!(blobs(), 4);
    env.ok(&["inspect", &format!("{}/test/gc:two", reg.host())]);
    // Leftovers of an interrupted pull are pruned.
    fs::write(
        env.home().join("tmp/partial").join("a".repeat(64)),
        vec![1u8; 5000],
    )
    .unwrap();
    fs::create_dir_all(env.home().join("tmp/stage-xyz/etc")).unwrap();
    fs::write(
        env.home().join("blobs/sha256").join(sha256_hex(b"orphan")),
        b"orphan",
    )
    .unwrap();
    let out = env.ok(&["image", "prune"]);
    assert!(out.contains("Total reclaimed space:"), "{out}");
    assert!(
        out.contains("partial download")
            && out.contains("stage-xyz")
            && out.contains("blob sha256:"),
        "{out}"
    );
    assert_eq!(blobs(), 4);
    let out = env.ok(&["image", "prune"]);
    assert!(out.contains("Total reclaimed space: 0B"), "{out}");
    env.assert_store_consistent();
    env.ok(&["rmi", &format!("{}/test/gc:two", reg.host())]);
    assert_eq!(blobs(), 0);
    assert_eq!(env.rootfs_count(), 0);
}
