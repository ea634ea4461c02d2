//! Hostile-input harnesses for what the image store takes from a registry or an archive: the
//! layer unpacker, the manifest and index parser, and the image config parser. The `fuzz/`
//! cargo-fuzz targets call them with fuzzer-made bytes (through `brig::fuzzing`); the tests
//! below call them with deterministic inputs, so that `cargo test` on stable checks the same
//! properties.
//!
//! The properties: no panic and no hang on any input; the unpacker never writes, links or
//! changes anything outside its staging directory, and never writes more than its byte
//! limit; a manifest that parses is one brig can use (its digests valid) and survives a
//! round trip through JSON.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use arbitrary::Unstructured;
use oci_spec::image::ImageConfiguration;

use super::manifest::{self, Document, Platform};
use super::unpack::{open_layer, Limits, Policy, Unpacker};
use super::ImageConfig;

/// The unpacker's limits under the fuzzer: small, so that bombs fail fast.
const LIMITS: Limits = Limits {
    max_bytes: 1 << 20,
    max_entries: 64,
};
/// What the file outside the staging directory holds, and its mode.
const SECRET: &[u8] = b"host secret";
const SECRET_MODE: u32 = 0o600;

/// Unpacks the layers `data` describes into a fresh staging directory that has a sibling
/// directory holding a secret file. The layers are either raw bytes (the tar parser's
/// attack surface) or built from hostile entries (`..`, absolute paths, symlinks and hard
/// links out, whiteouts, sparse files, device nodes, xattrs, PAX overrides), plain or gzip'd.
/// Checks: no panic; afterwards nothing beside the staging directory exists, the secret is
/// unchanged and not linked, and the staging tree holds at most the limit's bytes per layer.
pub fn layer_unpack(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mode: u8 = u.arbitrary().unwrap_or(0);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stage = dir.path().join("stage");
    let outside = dir.path().join("outside");
    fs::create_dir(&stage).expect("the staging directory");
    fs::create_dir(&outside).expect("the outside directory");
    let secret = outside.join("secret");
    fs::write(&secret, SECRET).expect("the secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(SECRET_MODE)).expect("chmod");

    let layers: Vec<Vec<u8>> = if mode & 2 == 0 {
        let rest = u.take_rest();
        let cut = rest.len() * usize::from(mode >> 2) / 64;
        let (a, b) = rest.split_at(cut.min(rest.len()));
        [a, b]
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| l.to_vec())
            .collect()
    } else {
        let n = 1 + usize::from(mode >> 2) % 3;
        (0..n).map(|_| build_layer(&mut u, &secret)).collect()
    };
    let policy = if mode & 1 == 0 {
        Policy::Layer
    } else {
        Policy::Copy
    };
    let mut unpacker = Unpacker::with_policy(&stage, LIMITS, policy).expect("an unpacker");
    let mut ok = true;
    for (i, layer) in layers.iter().enumerate() {
        let name = format!("layer{i}");
        let result = if mode & 0x80 != 0 {
            // Through open_layer, as the store reads layers: compressed, then detected.
            let path = dir.path().join(format!("{name}.tar.gz"));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(layer).expect("gzip in memory");
            fs::write(&path, gz.finish().expect("gzip in memory")).expect("the layer file");
            let reader = open_layer(&path).expect("the layer file opens");
            let r = unpacker.apply(reader, &name);
            fs::remove_file(&path).expect("the layer file is removed");
            r
        } else {
            unpacker.apply(&layer[..], &name)
        };
        if result.is_err() {
            ok = false;
            break;
        }
    }
    if ok {
        let _ = unpacker.finish();
    } else {
        drop(unpacker);
    }

    let mut names: Vec<_> = fs::read_dir(dir.path())
        .expect("the temporary directory")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["outside", "stage"],
        "the layer wrote beside the stage"
    );
    let inside: Vec<_> = fs::read_dir(&outside)
        .expect("the outside directory")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(inside, ["secret"], "the layer wrote outside the stage");
    let meta = fs::symlink_metadata(&secret).expect("the secret");
    assert!(meta.is_file(), "the secret was replaced");
    assert_eq!(meta.nlink(), 1, "the layer hard-linked the secret");
    assert_eq!(
        meta.mode() & 0o7777,
        SECRET_MODE,
        "the layer changed the secret's mode"
    );
    assert_eq!(
        fs::read(&secret).expect("the secret"),
        SECRET,
        "the secret changed"
    );
    assert!(
        fs::symlink_metadata(&stage).expect("the stage").is_dir(),
        "the stage was replaced"
    );
    let bytes = tree_bytes(&stage);
    assert!(
        bytes <= LIMITS.max_bytes * layers.len() as u64,
        "{bytes} bytes unpacked from {} layers",
        layers.len()
    );
}

/// Bytes in regular files under `dir` (each inode once; symlinks not followed), making every
/// directory writable on the way so that the temporary directory can be removed.
fn tree_bytes(dir: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o755));
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                todo.push(e.path());
            } else if m.is_file() && seen.insert(m.ino()) {
                total += m.len();
            }
        }
    }
    total
}

/// Path components a hostile layer uses.
const COMPONENTS: &[&str] = &[
    "a",
    "b",
    "etc",
    "passwd",
    "..",
    ".",
    "",
    ".wh.a",
    ".wh.b",
    ".wh..wh..opq",
    ".wh..wh.plnk",
    ".wh.",
    ".wh...",
    "outside",
    "secret",
    "stage",
    "dev",
];

/// A tar stream of up to 16 hostile entries.
fn build_layer(u: &mut Unstructured, secret: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let entries: u8 = u.arbitrary().unwrap_or(0);
    for _ in 0..entries % 16 {
        if u.is_empty() {
            break;
        }
        let path = hostile_path(u, secret);
        let link = hostile_path(u, secret);
        let kind: u8 = u.arbitrary().unwrap_or(0);
        let len = usize::from(u.arbitrary::<u8>().unwrap_or(0) % 64);
        let data = u.bytes(len).unwrap_or(&[]).to_vec();
        let mode = u32::from(u.arbitrary::<u16>().unwrap_or(0o644)) & 0o7777;
        if kind % 12 == 11 {
            // PAX records for the next entry: xattrs, or a path or link that overrides the
            // header's (and may be longer than it holds).
            let key = [
                "SCHILY.xattr.user.a",
                "SCHILY.xattr.security.capability",
                "SCHILY.xattr.trusted.x",
                "path",
                "linkpath",
                "mtime",
                "uid",
                "size",
            ][usize::from(u.arbitrary::<u8>().unwrap_or(0) % 8)];
            let value = if key.ends_with("path") {
                link.clone()
            } else {
                String::from_utf8_lossy(&data).into_owned()
            };
            out.extend(entry(
                tar::EntryType::XHeader,
                "pax",
                "",
                &pax(key, &value),
                0o644,
            ));
            continue;
        }
        if kind % 12 == 10 {
            out.extend(sparse(&path, u64::from(u.arbitrary::<u16>().unwrap_or(0))));
            continue;
        }
        let kind = [
            tar::EntryType::Regular,
            tar::EntryType::Regular,
            tar::EntryType::Directory,
            tar::EntryType::Directory,
            tar::EntryType::Symlink,
            tar::EntryType::Link,
            tar::EntryType::Fifo,
            tar::EntryType::Char,
            tar::EntryType::Block,
            tar::EntryType::new(u.arbitrary().unwrap_or(0)),
        ][usize::from(kind % 12).min(9)];
        let data = if kind == tar::EntryType::Regular {
            data
        } else {
            Vec::new()
        };
        out.extend(entry(kind, &path, &link, &data, mode));
    }
    // Sometimes a byte flipped anywhere, checksums notwithstanding.
    if !out.is_empty() && u.arbitrary::<u8>().unwrap_or(0) == 0xff {
        let at = usize::from(u.arbitrary::<u16>().unwrap_or(0)) % out.len();
        out[at] ^= u.arbitrary::<u8>().unwrap_or(1);
    }
    out.extend([0u8; 1024]);
    out
}

/// A path of 1-4 hostile components, sometimes absolute, or the secret itself.
fn hostile_path(u: &mut Unstructured, secret: &Path) -> String {
    let n = 1 + u.arbitrary::<u8>().unwrap_or(0) % 4;
    if n == 4 && u.arbitrary::<bool>().unwrap_or(false) {
        return secret.display().to_string();
    }
    let parts: Vec<&str> = (0..n)
        .map(|_| COMPONENTS[usize::from(u.arbitrary::<u8>().unwrap_or(0)) % COMPONENTS.len()])
        .collect();
    let p = parts.join("/");
    if u.arbitrary::<u8>().unwrap_or(0) % 8 == 0 {
        format!("/{p}")
    } else {
        p
    }
}

/// One tar entry from a raw header, so that hostile names survive (tar's builder refuses
/// them); names and link names longer than the header holds are cut.
fn entry(kind: tar::EntryType, path: &str, link: &str, data: &[u8], mode: u32) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    let name = &path.as_bytes()[..path.len().min(100)];
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    let link = &link.as_bytes()[..link.len().min(100)];
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// One PAX record, `"<len> <key>=<value>\n"` where len counts the whole record.
fn pax(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

/// A GNU sparse entry of `real_size` bytes, all hole, whose header carries no data.
fn sparse(path: &str, real_size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNUSparse);
    let name = &path.as_bytes()[..path.len().min(100)];
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(0);
    h.set_mode(0o644);
    if let Some(gnu) = h.as_gnu_mut() {
        gnu.set_real_size(real_size);
        let offset = format!("{real_size:011o}\0");
        gnu.sparse[0].offset.copy_from_slice(offset.as_bytes());
        gnu.sparse[0].numbytes = *b"00000000000\0";
    }
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// Content types a registry may send with a manifest.
const CONTENT_TYPES: &[&str] = &[
    "",
    "application/json",
    "application/octet-stream",
    manifest::OCI_INDEX,
    manifest::OCI_MANIFEST,
    manifest::DOCKER_LIST,
    manifest::DOCKER_MANIFEST,
    "text/html",
];

/// Parses `data` (after a byte that picks the Content-Type) as a manifest or index, then
/// does with the result what a pull does. Checks: no panic; a manifest that parses has valid
/// digests and parses again, as the same manifest, after a round trip through JSON; an
/// index's platform selection returns one of its manifests.
pub fn manifest(data: &[u8]) {
    let Some((&ct, bytes)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(ct) % CONTENT_TYPES.len()];
    match manifest::parse(bytes, content_type) {
        Ok(Document::Manifest(m)) => {
            manifest::check_manifest(&m).expect("a parsed manifest passes its own check");
            manifest::descriptor_digest(m.config()).expect("a parsed manifest's config digest");
            let again = serde_json::to_vec(&m).expect("a manifest serializes");
            match manifest::parse(&again, manifest::OCI_MANIFEST) {
                Ok(Document::Manifest(m2)) => assert_eq!(m, m2, "a manifest's round trip"),
                other => panic!("a re-serialized manifest parses as {other:?}"),
            }
        }
        Ok(Document::Index(index)) => {
            for want in [
                Platform::host(),
                Platform::parse("linux/arm64/v8").expect("a platform"),
            ] {
                if let Ok(d) = manifest::select_platform(&index, &want) {
                    assert!(
                        index.manifests().contains(&d),
                        "selected a manifest the index does not list"
                    );
                }
            }
        }
        Err(_) => {}
    }
    // The same bytes as a --platform value.
    if let Ok(p) = Platform::parse(&String::from_utf8_lossy(bytes)) {
        assert_eq!(
            Platform::parse(&p.to_string()).ok(),
            Some(p),
            "a platform's round trip"
        );
    }
}

/// Parses `data` as an image config, as the store does, and takes what `brig run` needs
/// from it. Checks: no panic, and the result serializes (it goes into `brig inspect`).
pub fn image_config(data: &[u8]) {
    let Ok(config) = serde_json::from_slice::<ImageConfiguration>(data) else {
        return;
    };
    let ours = ImageConfig::from_oci(&config);
    serde_json::to_vec(&ours).expect("an ImageConfig serializes");
    serde_json::to_vec(&config).expect("an image config serializes");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prop::{check, run, Rng};

    /// The seed documents the fuzz targets start from (`fuzz/seeds/`).
    const MANIFESTS: &[&[u8]] = &[
        include_bytes!("../../fuzz/seeds/manifest/oci-manifest.json"),
        include_bytes!("../../fuzz/seeds/manifest/oci-index.json"),
        include_bytes!("../../fuzz/seeds/manifest/docker-manifest.json"),
        include_bytes!("../../fuzz/seeds/manifest/docker-list.json"),
    ];
    const CONFIGS: &[&[u8]] = &[
        include_bytes!("../../fuzz/seeds/image_config/busybox.json"),
        include_bytes!("../../fuzz/seeds/image_config/minimal.json"),
    ];

    #[test]
    fn seeds_parse() {
        for seed in MANIFESTS {
            manifest::parse(seed, "").unwrap();
        }
        for seed in CONFIGS {
            serde_json::from_slice::<ImageConfiguration>(seed).unwrap();
        }
    }

    #[test]
    fn layer_unpack_never_escapes() {
        run("layer_unpack", layer_unpack, 0x5eed_0011, 400, 2048);
    }

    #[test]
    fn manifests_mutated_never_break_the_parser() {
        check("manifest", manifest, 0x5eed_0012, 3000, |rng: &mut Rng| {
            let mut data = vec![rng.next().to_le_bytes()[0]];
            let seed = MANIFESTS[rng.below(MANIFESTS.len())];
            data.extend(rng.mutate(seed));
            data
        });
    }

    #[test]
    fn image_configs_mutated_never_break_the_parser() {
        check(
            "image_config",
            image_config,
            0x5eed_0013,
            3000,
            |rng: &mut Rng| {
                let seed = CONFIGS[rng.below(CONFIGS.len())];
                rng.mutate(seed)
            },
        );
    }
}
