//! Registries on loopback: Debian's `docker-registry` (optionally with htpasswd auth), a
//! small in-process registry that can misbehave (truncate, demand bearer tokens), and
//! `skopeo copy` to push layouts to them.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::run_tool;

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
