//! Helpers for the image tests: OCI layouts built from busybox-static and crafted layers,
//! a real `docker-registry` on a free loopback port (optionally with htpasswd auth), a
//! small in-process registry that can misbehave (truncate, demand bearer tokens), and
//! runners for the real `brig` binary with a private `BRIG_HOME`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Running brig

/// Set when a rootfs had to be read with `fsck.erofs --extract`, which chowns after it
/// chmods and so loses setuid/setgid bits: comparisons then ignore those two bits.
pub static LOSSY_EXTRACT: AtomicBool = AtomicBool::new(false);

/// A private brig home, docker config dir and scratch space.
pub struct Env {
    pub dir: tempfile::TempDir,
    mounts: Mutex<Vec<PathBuf>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for m in self.mounts.lock().unwrap().drain(..) {
            let _ = Command::new("umount").arg(&m).status();
        }
    }
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("brig-image-test")
            .tempdir()
            .unwrap();
        fs::create_dir_all(dir.path().join("home")).unwrap();
        fs::create_dir_all(dir.path().join("docker")).unwrap();
        Self {
            dir,
            mounts: Mutex::new(Vec::new()),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_brig"));
        c.env("BRIG_HOME", self.home())
            .env("DOCKER_CONFIG", self.dir.path().join("docker"))
            .env_remove("BRIG_INSECURE_REGISTRIES")
            .env_remove("BRIG_MAX_LAYER_BYTES")
            .env_remove("BRIG_MAX_LAYER_ENTRIES")
            .stdin(Stdio::null());
        c
    }

    pub fn brig(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs brig and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.brig(args);
        assert!(
            out.status.success(),
            "brig {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs brig, asserts exit 125 and a one-line `brig: ...` error containing `needle`.
    pub fn fails(&self, args: &[&str], needle: &str) -> String {
        let out = self.brig(args);
        assert_bad(&out, needle, &format!("brig {args:?}"));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The erofs rootfs of `image` as a tree: mounted read-only where the kernel allows
    /// (as root with erofs and loop devices), else extracted with fsck.erofs.
    pub fn extract_rootfs(&self, image: &str, into: &Path) -> PathBuf {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", image])).unwrap();
        let rootfs = v[0]["RootfsPath"].as_str().unwrap().to_string();
        fs::create_dir_all(into).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(&rootfs)
            .arg(into)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if mounted {
            self.mounts.lock().unwrap().push(into.to_path_buf());
            return into.to_path_buf();
        }
        LOSSY_EXTRACT.store(true, Ordering::Relaxed);
        let _ = fs::remove_dir(into);
        let st = Command::new("fsck.erofs")
            .arg(format!("--extract={}", into.display()))
            .arg("--preserve")
            .arg(&rootfs)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "fsck.erofs: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        into.to_path_buf()
    }

    /// Asserts the store holds nothing incomplete: every blob hashes to its name, no
    /// temporary file sits next to final names.
    pub fn assert_store_consistent(&self) {
        let blobs = self.home().join("blobs/sha256");
        if let Ok(rd) = fs::read_dir(&blobs) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let data = fs::read(e.path()).unwrap();
                assert_eq!(
                    sha256_hex(&data),
                    name,
                    "blob {name} does not match its name"
                );
            }
        }
        if let Ok(rd) = fs::read_dir(self.home().join("rootfs")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    name.ends_with(".erofs") && name.len() == 64 + 6,
                    "unexpected rootfs entry {name}"
                );
            }
        }
    }

    pub fn rootfs_count(&self) -> usize {
        fs::read_dir(self.home().join("rootfs"))
            .map(|r| r.count())
            .unwrap_or(0)
    }
}

/// Asserts exit 125 with one `brig: ` line on stderr containing `needle`.
pub fn assert_bad(out: &Output, needle: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(125),
        "{what}: expected exit 125, stderr: {stderr}"
    );
    let errs: Vec<&str> = stderr.lines().filter(|l| l.starts_with("brig: ")).collect();
    assert_eq!(
        errs.len(),
        1,
        "{what}: expected one error line, got: {stderr}"
    );
    assert!(
        errs[0].to_lowercase().contains(&needle.to_lowercase()),
        "{what}: error {:?} lacks {needle:?}",
        errs[0]
    );
}

// ---------------------------------------------------------------------------------------
// Layers and OCI layouts

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A layer tarball built entry by entry (raw headers, so hostile entries can be made).
pub struct Layer {
    tar: tar::Builder<Vec<u8>>,
    pub compression: Compression,
    pub media_type: Option<String>,
}

pub const MTIME: u64 = 1_700_000_000;

impl Layer {
    pub fn new() -> Self {
        Self {
            tar: tar::Builder::new(Vec::new()),
            compression: Compression::Gzip,
            media_type: None,
        }
    }

    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    pub fn media_type(mut self, m: &str) -> Self {
        self.media_type = Some(m.to_string());
        self
    }

    #[allow(clippy::too_many_arguments)]
    pub fn raw(
        mut self,
        kind: tar::EntryType,
        path: &str,
        link: Option<&str>,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        pax: &[(&str, &[u8])],
    ) -> Self {
        if !pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in pax {
                let rest = format!(" {k}=").len() + v.len() + 1;
                let mut len = rest + 1;
                while format!("{len}").len() + rest != len {
                    len += 1;
                }
                body.extend_from_slice(format!("{len} {k}=").as_bytes());
                body.extend_from_slice(v);
                body.push(b'\n');
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            set_name(&mut h, "PaxHeader");
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            self.tar.append(&h, &body[..]).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        set_name(&mut h, path);
        if let Some(l) = link {
            let bytes = l.as_bytes();
            let old = h.as_old_mut();
            old.linkname[..bytes.len()].copy_from_slice(bytes);
        }
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_cksum();
        self.tar.append(&h, data).unwrap();
        self
    }

    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.raw(tar::EntryType::Directory, path, None, b"", mode, 0, 0, &[])
    }

    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.raw(tar::EntryType::Regular, path, None, data, mode, 0, 0, &[])
    }

    pub fn file_owned(self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        self.raw(
            tar::EntryType::Regular,
            path,
            None,
            data,
            mode,
            uid,
            gid,
            &[],
        )
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.raw(
            tar::EntryType::Symlink,
            path,
            Some(target),
            b"",
            0o777,
            0,
            0,
            &[],
        )
    }

    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.raw(
            tar::EntryType::Link,
            path,
            Some(target),
            b"",
            0o644,
            0,
            0,
            &[],
        )
    }

    pub fn whiteout(self, dir: &str, name: &str) -> Self {
        let p = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&p, b"", 0o644)
    }

    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// busybox-static as /bin/busybox with a few applet links.
    pub fn busybox(self) -> Self {
        let bb = fs::read("/bin/busybox").expect("busybox-static must be installed");
        let mut l = self.dir("bin", 0o755).file("bin/busybox", &bb, 0o755);
        for applet in ["sh", "ls", "cat", "echo"] {
            l = l.symlink(&format!("bin/{applet}"), "busybox");
        }
        l
    }

    /// (uncompressed tar, blob bytes, media type)
    pub fn finish(self) -> (Vec<u8>, Vec<u8>, String) {
        let tar = self.tar.into_inner().unwrap();
        let (blob, mt) = match self.compression {
            Compression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar).unwrap();
                (
                    e.finish().unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compression::Zstd => (
                zstd::encode_all(&tar[..], 3).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        let mt = self.media_type.unwrap_or_else(|| mt.to_string());
        (tar, blob, mt)
    }
}

fn set_name(h: &mut tar::Header, path: &str) {
    let bytes = path.as_bytes();
    assert!(bytes.len() < 100, "test paths must be short");
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..bytes.len()].copy_from_slice(bytes);
}

/// An OCI image layout directory that tests fill with images.
pub struct Layout {
    pub dir: PathBuf,
    manifests: Vec<serde_json::Value>,
}

/// The JSON descriptor of a blob.
pub fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", sha256_hex(data)),
        "size": data.len(),
    })
}

impl Layout {
    pub fn new(dir: PathBuf) -> Self {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let l = Self {
            dir,
            manifests: Vec::new(),
        };
        l.write_index();
        l
    }

    pub fn put(&self, data: &[u8]) -> String {
        let hex = sha256_hex(data);
        fs::write(self.dir.join("blobs/sha256").join(&hex), data).unwrap();
        format!("sha256:{hex}")
    }

    fn write_index(&self) {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": self.manifests,
        });
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec_pretty(&index).unwrap(),
        )
        .unwrap();
    }

    /// Writes an image manifest (not yet tagged); returns (descriptor, manifest bytes).
    pub fn image(
        &self,
        layers: Vec<Layer>,
        arch: &str,
        config: serde_json::Value,
    ) -> (serde_json::Value, Vec<u8>) {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for l in layers {
            let (tar, blob, mt) = l.finish();
            diff_ids.push(format!("sha256:{}", sha256_hex(&tar)));
            self.put(&blob);
            descs.push(descriptor(&mt, &blob));
        }
        let cfg = serde_json::json!({
            "created": "2024-01-02T03:04:05Z",
            "architecture": arch,
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let cfg = serde_json::to_vec(&cfg).unwrap();
        self.put(&cfg);
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", &cfg),
            "layers": descs,
        });
        let m = serde_json::to_vec(&m).unwrap();
        self.put(&m);
        (
            descriptor("application/vnd.oci.image.manifest.v1+json", &m),
            m,
        )
    }

    /// Tags a descriptor in index.json.
    pub fn tag(&mut self, mut desc: serde_json::Value, tag: &str) {
        desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        self.manifests.push(desc);
        self.write_index();
    }

    /// A single-platform amd64 image tagged `tag`.
    pub fn add(&mut self, tag: &str, layers: Vec<Layer>, config: serde_json::Value) -> String {
        let (desc, _) = self.image(layers, "amd64", config);
        let d = desc["digest"].as_str().unwrap().to_string();
        self.tag(desc, tag);
        d
    }

    /// An index of (arch, manifest descriptor) tagged `tag`; returns the index digest.
    pub fn add_index(&mut self, tag: &str, platforms: Vec<(&str, serde_json::Value)>) -> String {
        let manifests: Vec<_> = platforms
            .into_iter()
            .map(|(arch, mut d)| {
                d["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
                d
            })
            .collect();
        let idx = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let idx = serde_json::to_vec(&idx).unwrap();
        let d = self.put(&idx);
        self.tag(
            descriptor("application/vnd.oci.image.index.v1+json", &idx),
            tag,
        );
        d
    }
}

// ---------------------------------------------------------------------------------------
// Tools

pub fn run_tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `skopeo copy` from a layout tag to a registry (with `--all` for indexes).
pub fn push(layout: &Path, tag: &str, dest: &str, creds: Option<&str>) {
    push_as(layout, tag, dest, creds, None);
}

/// `skopeo copy`, converting to a manifest `format` (`v2s2`: Docker schema 2) if given.
pub fn push_as(layout: &Path, tag: &str, dest: &str, creds: Option<&str>, format: Option<&str>) {
    let mut c = Command::new("skopeo");
    c.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
    if format.is_none() {
        c.arg("--preserve-digests");
    }
    if let Some(cr) = creds {
        c.arg(format!("--dest-creds={cr}"));
    }
    if let Some(f) = format {
        c.arg(format!("--format={f}"));
    }
    c.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"));
    run_tool(&mut c);
}

/// What `umoci unpack` makes of a layout tag: the rootfs directory.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    run_tool(
        Command::new("umoci")
            .arg("unpack")
            .arg(format!("--image={}:{tag}", layout.display()))
            .arg(bundle),
    );
    bundle.join("rootfs")
}

/// A description of a tree: path → (type, mode, uid, gid, symlink target or file hash).
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link->{}", fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                format!("file:{}", sha256_hex(&fs::read(&p).unwrap()))
            } else if ft.is_fifo() {
                "fifo".into()
            } else if ft.is_char_device() {
                format!("chr:{}", m.rdev())
            } else if ft.is_block_device() {
                format!("blk:{}", m.rdev())
            } else {
                "other".into()
            };
            let mut mode = if ft.is_symlink() {
                0
            } else {
                m.mode() & 0o7777
            };
            if ft.is_file() && LOSSY_EXTRACT.load(Ordering::Relaxed) {
                mode &= !0o6000;
            }
            out.insert(
                rel,
                format!("{what} mode={mode:o} owner={}:{}", m.uid(), m.gid()),
            );
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Asserts two trees are equal, listing the differences.
pub fn assert_same_tree(ours: &Path, reference: &Path) {
    let a = tree(ours);
    let b = tree(reference);
    let mut diffs = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            Some(w) if w == v => {}
            Some(w) => diffs.push(format!("{k}: brig {v} / umoci {w}")),
            None => diffs.push(format!("{k}: only in brig ({v})")),
        }
    }
    for (k, w) in &b {
        if !a.contains_key(k) {
            diffs.push(format!("{k}: only in umoci ({w})"));
        }
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
    assert!(!a.is_empty(), "empty tree");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on port {port}");
}

// ---------------------------------------------------------------------------------------
// The real registry

/// Debian's `docker-registry` on 127.0.0.1, killed when dropped.
pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Registry {
    /// Starts a registry; with `htpasswd = Some((user, password))` it requires basic auth.
    pub fn start(htpasswd: Option<(&str, &str)>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("brig-registry")
            .tempdir()
            .unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = htpasswd {
            let hash = bcrypt::hash(pass, 5).unwrap();
            let file = dir.path().join("htpasswd");
            fs::write(&file, format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: brig-test\n    path: {}\n",
                file.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        fs::write(&cfg, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("docker-registry must be installed");
        wait_port(port);
        Self { port, dir, child }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file holding a blob in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// A registry that misbehaves on purpose

/// How the fake registry behaves.
#[derive(Clone, Default)]
pub struct FakeOptions {
    /// Send only this many bytes of each blob response, then close (Content-Length says all).
    pub truncate_blobs_at: Option<usize>,
    /// Demand a bearer token from /token.
    pub bearer: bool,
    /// Send blobs in 32 KiB pieces with this many milliseconds between them.
    pub throttle_ms: u64,
}

/// Serves an OCI layout over the distribution API from a thread; records request lines.
pub struct FakeRegistry {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<String>>>,
    pub options: Arc<Mutex<FakeOptions>>,
    stop: Arc<AtomicBool>,
}

impl FakeRegistry {
    pub fn start(layout: &Path, options: FakeOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let options = Arc::new(Mutex::new(options));
        let stop = Arc::new(AtomicBool::new(false));
        let (layout, reqs, opts, stop2) = (
            layout.to_path_buf(),
            requests.clone(),
            options.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (layout, reqs, opts) = (layout.clone(), reqs.clone(), opts.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &layout, &reqs, &opts, port);
                });
            }
        });
        Self {
            port,
            requests,
            options,
            stop,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

const TOKEN: &str = "test-token-123";

fn serve(
    conn: TcpStream,
    layout: &Path,
    reqs: &Mutex<Vec<String>>,
    opts: &Mutex<FakeOptions>,
    port: u16,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let range_start: u64 = headers
            .get("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.trim_end_matches('-').parse().ok())
            .unwrap_or(0);
        reqs.lock()
            .unwrap()
            .push(format!("{path} range={range_start}"));
        let o = opts.lock().unwrap().clone();
        let throttle = o.throttle_ms;
        let send =
            |conn: &mut TcpStream, status: &str, extra: &str, body: &[u8], cut: Option<usize>| {
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n",
                    body.len()
                );
                conn.write_all(head.as_bytes())?;
                match cut {
                    Some(n) if n < body.len() => {
                        conn.write_all(&body[..n])?;
                        conn.flush()?;
                        let _ = conn.shutdown(std::net::Shutdown::Both);
                        Err(std::io::Error::other("cut"))
                    }
                    _ if throttle > 0 && status != "401 Unauthorized" => {
                        for chunk in body.chunks(32 << 10) {
                            conn.write_all(chunk)?;
                            conn.flush()?;
                            std::thread::sleep(Duration::from_millis(throttle));
                        }
                        Ok(())
                    }
                    _ => conn.write_all(body),
                }
            };
        if path.starts_with("/token") {
            let body = format!(r#"{{"token":"{TOKEN}"}}"#);
            send(
                &mut conn,
                "200 OK",
                "Content-Type: application/json\r\n",
                body.as_bytes(),
                None,
            )?;
            continue;
        }
        if o.bearer
            && headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}"))
        {
            let ch = format!(
                "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\",scope=\"repository:x:pull\"\r\n"
            );
            send(&mut conn, "401 Unauthorized", &ch, b"{}", None)?;
            continue;
        }
        let p = path.trim_start_matches("/v2/");
        if path == "/v2/" {
            send(&mut conn, "200 OK", "", b"{}", None)?;
        } else if let Some((_, r)) = p.split_once("/manifests/") {
            let index: serde_json::Value =
                serde_json::from_slice(&fs::read(layout.join("index.json"))?).unwrap();
            let found = index["manifests"].as_array().unwrap().iter().find(|m| {
                m["digest"] == r || m["annotations"]["org.opencontainers.image.ref.name"] == r
            });
            let digest = match found {
                Some(m) => m["digest"].as_str().unwrap().to_string(),
                None => r.to_string(),
            };
            let file = layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:"));
            match fs::read(&file) {
                Ok(body) => {
                    let mt: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let ct = mt["mediaType"]
                        .as_str()
                        .unwrap_or("application/json")
                        .to_string();
                    send(
                        &mut conn,
                        "200 OK",
                        &format!("Content-Type: {ct}\r\n"),
                        &body,
                        None,
                    )?;
                }
                Err(_) => send(
                    &mut conn,
                    "404 Not Found",
                    "",
                    br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                    None,
                )?,
            }
        } else if let Some((_, d)) = p.split_once("/blobs/") {
            let file = layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:"));
            match fs::read(&file) {
                Ok(body) => {
                    let start = (range_start as usize).min(body.len());
                    let (status, extra) = if range_start > 0 {
                        (
                            "206 Partial Content",
                            format!(
                                "Content-Range: bytes {start}-{}/{}\r\n",
                                body.len() - 1,
                                body.len()
                            ),
                        )
                    } else {
                        ("200 OK", String::new())
                    };
                    send(
                        &mut conn,
                        status,
                        &extra,
                        &body[start..],
                        o.truncate_blobs_at,
                    )?;
                }
                Err(_) => send(&mut conn, "404 Not Found", "", b"{}", None)?,
            }
        } else {
            send(&mut conn, "404 Not Found", "", b"{}", None)?;
        }
    }
}

/// Reads everything from a reader (for child stdout).
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}
pub mod images;
