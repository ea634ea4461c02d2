//! Unit tests of the unpacker, on tarballs built in memory.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

/// A tar built from raw headers (so hostile names survive).
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn entry(
        mut self,
        kind: tar::EntryType,
        path: &str,
        link: &str,
        data: &[u8],
        mode: u32,
    ) -> Self {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(self, path: &str, data: &[u8]) -> Self {
        self.entry(tar::EntryType::Regular, path, "", data, 0o644)
    }

    fn dir(self, path: &str, mode: u32) -> Self {
        self.entry(tar::EntryType::Directory, path, "", b"", mode)
    }

    fn symlink(self, path: &str, target: &str) -> Self {
        self.entry(tar::EntryType::Symlink, path, target, b"", 0o777)
    }

    fn hardlink(self, path: &str, target: &str) -> Self {
        self.entry(tar::EntryType::Link, path, target, b"", 0o644)
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn unpack(layers: Vec<Vec<u8>>, limits: Limits) -> (tempfile::TempDir, Result<(), UnpackError>) {
    let dir = tempfile::tempdir().unwrap();
    let stage = dir.path().join("stage");
    fs::create_dir(&stage).unwrap();
    let mut u = Unpacker::new(&stage, limits).unwrap();
    for (i, l) in layers.iter().enumerate() {
        if let Err(e) = u.apply(&l[..], &format!("layer{i}")) {
            return (dir, Err(e));
        }
    }
    let r = u.finish();
    (dir, r)
}

#[test]
fn whiteouts_and_opaque_dirs() {
    let l1 = Tar::new()
        .dir("d", 0o755)
        .file("d/keep", b"k")
        .file("d/gone", b"g")
        .dir("o", 0o755)
        .file("o/old", b"o")
        .dir("o/sub", 0o755)
        .file("o/sub/deep", b"d")
        .bytes();
    let l2 = Tar::new()
        .file("d/.wh.gone", b"")
        .file("o/new", b"n")
        .file("o/.wh..wh..opq", b"")
        .file("d/.wh.nothing-there", b"")
        .file("missing/.wh.x", b"")
        .bytes();
    let (dir, r) = unpack(vec![l1, l2], Limits::default());
    r.unwrap();
    let s = dir.path().join("stage");
    assert!(s.join("d/keep").exists());
    assert!(!s.join("d/gone").exists());
    assert!(
        s.join("o/new").exists(),
        "entries of the same layer survive the opaque marker"
    );
    assert!(!s.join("o/old").exists() && !s.join("o/sub").exists());
    assert!(!s.join("missing").exists(), "a whiteout creates nothing");
}

#[test]
fn links_modes_and_replacements() {
    let l1 = Tar::new()
        .file("a", b"one")
        .hardlink("h", "a")
        .symlink("s", "a")
        .dir("ro", 0o555)
        .file("ro/inside", b"x")
        .entry(tar::EntryType::Regular, "suid", "", b"#!", 0o4755)
        .bytes();
    let l2 = Tar::new()
        .file("a", b"two")
        .file("s", b"now a file")
        .bytes();
    let (dir, r) = unpack(vec![l1, l2], Limits::default());
    r.unwrap();
    let s = dir.path().join("stage");
    assert_eq!(fs::read(s.join("h")).unwrap(), b"one");
    assert_eq!(fs::read(s.join("a")).unwrap(), b"two");
    assert!(fs::symlink_metadata(s.join("s")).unwrap().is_file());
    let m = fs::metadata(s.join("ro")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o555);
    assert_eq!(m.mtime(), 1_600_000_000);
    assert_eq!(
        fs::metadata(s.join("suid")).unwrap().permissions().mode() & 0o7777,
        0o4755
    );
    fs::set_permissions(s.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn escapes_are_refused() {
    let cases = [
        Tar::new().file("../x", b"x").bytes(),
        Tar::new().file("/abs", b"x").bytes(),
        Tar::new().symlink("l", "/").file("l/x", b"x").bytes(),
        Tar::new().symlink("l", "..").file("l/x", b"x").bytes(),
        Tar::new().hardlink("h", "/etc/passwd").bytes(),
        Tar::new().hardlink("h", "../../x").bytes(),
        Tar::new().file("f", b"").file("f/x", b"x").bytes(),
    ];
    for (i, t) in cases.into_iter().enumerate() {
        let (dir, r) = unpack(vec![t], Limits::default());
        assert!(
            matches!(r, Err(UnpackError::Unsafe { .. })),
            "case {i}: {r:?}"
        );
        assert!(!dir.path().join("x").exists(), "case {i} wrote outside");
    }
}

#[test]
fn limits_are_enforced() {
    let big = Tar::new().file("z", &vec![0u8; 100_000]).bytes();
    let (_d, r) = unpack(
        vec![big],
        Limits {
            max_bytes: 50_000,
            max_entries: 10,
        },
    );
    assert!(matches!(r, Err(UnpackError::TooLarge(..))), "{r:?}");
    let mut many = Tar::new();
    for i in 0..20 {
        many = many.file(&format!("f{i}"), b"");
    }
    let (_d, r) = unpack(
        vec![many.bytes()],
        Limits {
            max_bytes: 1 << 30,
            max_entries: 10,
        },
    );
    assert!(matches!(r, Err(UnpackError::TooManyEntries(..))), "{r:?}");
    let (_d, r) = unpack(
        vec![b"not a tar at all, just text".repeat(40)],
        Limits::default(),
    );
    assert!(r.is_err());
}

#[test]
fn pax_times_parse() {
    assert_eq!(
        parse_time(b"1700000000.5"),
        Some((1_700_000_000, 500_000_000))
    );
    assert_eq!(parse_time(b"12"), Some((12, 0)));
    assert_eq!(parse_time(b"x"), None);
}

#[test]
fn copy_policy_keeps_wh_names_and_drops_privileges() {
    let tar = Tar::new()
        .dir("t", 0o2755)
        .file("t/.wh.not-a-whiteout", b"w")
        .file("t/plain", b"p")
        .entry(tar::EntryType::Regular, "t/suid", "", b"#!", 0o6755)
        .entry(tar::EntryType::Regular, "t/sticky", "", b"", 0o1644)
        .entry(tar::EntryType::Char, "t/null", "", b"", 0o666)
        .bytes();
    let dir = tempfile::tempdir().unwrap();
    let mut u = Unpacker::with_policy(dir.path(), Limits::default(), Policy::Copy).unwrap();
    u.apply(&tar[..], "copy").unwrap();
    u.finish().unwrap();
    let t = dir.path().join("t");
    assert_eq!(fs::read(t.join(".wh.not-a-whiteout")).unwrap(), b"w");
    assert_eq!(fs::read(t.join("plain")).unwrap(), b"p");
    let mode = |p: &str| fs::symlink_metadata(t.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755, "setuid and setgid are dropped");
    assert_eq!(mode("sticky"), 0o1644);
    assert_eq!(mode("."), 0o755);
    assert!(!t.join("null").exists(), "no device nodes on the host");
    let me = rustix::process::geteuid().as_raw();
    assert_eq!(fs::metadata(t.join("plain")).unwrap().uid(), me);
}

/// A GNU sparse entry: a header of `name` whose only data block starts at `real_size` and is
/// empty, so that tar reads no data and yields `real_size` zero bytes.
pub(crate) fn sparse_bomb(name: &str, real_size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(0);
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.set_real_size(real_size);
    gnu.sparse[0].offset = *format!("{real_size:011o}\0")
        .as_bytes()
        .first_chunk()
        .unwrap();
    gnu.sparse[0].numbytes = *b"00000000000\0";
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.resize(512 * 3, 0);
    out
}

#[test]
fn sparse_entries_count_against_the_size_limit() {
    // Found while writing the layer_unpack fuzz target: a 1.5 KiB layer declaring a 64 MiB sparse file
    // made the unpacker write 64 MiB of zeros past a 1 MiB limit (tar expands the holes
    // itself, so the stream's byte count never sees them).
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 100,
    };
    let (dir, r) = unpack(vec![sparse_bomb("bomb", 64 << 20)], limits);
    assert!(matches!(r, Err(UnpackError::TooLarge(..))), "{r:?}");
    let written = fs::metadata(dir.path().join("stage/bomb")).map_or(0, |m| m.len());
    assert!(written <= 1 << 20, "{written} bytes written");
    // Within the limit it unpacks, holes and all.
    let (dir, r) = unpack(vec![sparse_bomb("small", 4096)], limits);
    r.unwrap();
    assert_eq!(
        fs::read(dir.path().join("stage/small")).unwrap(),
        vec![0; 4096]
    );
}
