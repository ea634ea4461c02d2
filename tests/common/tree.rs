//! Trees on disk described and compared, with umoci as the reference unpacker.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{run_tool, sha256_hex};

/// Set when a rootfs had to be read with `fsck.erofs --extract`, which chowns after it
/// chmods and so loses setuid/setgid bits: comparisons then ignore those two bits.
pub static LOSSY_EXTRACT: AtomicBool = AtomicBool::new(false);

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
