//! Layer tarballs built entry by entry and OCI image layouts that tests fill with images.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use super::sha256_hex;

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
