//! Unit tests of `brig cp`'s host side: path rules, docker's landing rules, and unpacking
//! hostile archives, without a VM.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use brig_protocol::FileKind;

use super::place::{receive_with, Landing, PlanIn};
use super::*;
use crate::image::unpack::Limits;

fn sp(raw: &str) -> SandboxPath {
    SandboxPath::parse(raw).unwrap()
}

#[test]
fn sandbox_paths_are_cleaned_and_confined() {
    assert_eq!(sp("/etc/passwd").path, "/etc/passwd");
    assert_eq!(sp("tmp//x/").path, "/tmp/x");
    assert!(sp("tmp/x/").dir && !sp("tmp/x/").contents);
    assert!(sp("/tmp/x/.").contents && sp("/tmp/x/.").dir);
    assert_eq!(sp("/tmp/../etc").path, "/etc");
    assert_eq!(sp("/").name(), None);
    assert_eq!(sp("/a/b").name(), Some("b"));
    assert_eq!(sp("/a/b").parent(), "/a");
    assert_eq!(sp("/a").parent(), "/");
    for bad in ["../../etc", "/tmp/../../etc", ".."] {
        let e = SandboxPath::parse(bad).unwrap_err().to_string();
        assert!(e.contains("outside the sandbox"), "{bad}: {e}");
    }
    assert!(SandboxPath::parse("").is_err());
}

/// A tar built from raw headers, so that hostile names survive.
fn raw_tar(entries: &[(tar::EntryType, &str, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (kind, path, link, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(*kind);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

const DIR: tar::EntryType = tar::EntryType::Directory;
const FILE: tar::EntryType = tar::EntryType::Regular;
const LINK: tar::EntryType = tar::EntryType::Symlink;

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".brig-cp-"))
        .collect()
}

/// A tree with a nested directory, modes, a symlink and an empty file.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::write(root.join("a.txt"), b"alpha\n").unwrap();
    fs::write(root.join("sub/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("sub/run.sh"), fs::Permissions::from_mode(0o751)).unwrap();
    fs::write(root.join("sub/deeper/empty"), b"").unwrap();
    std::os::unix::fs::symlink("../a.txt", root.join("sub/link")).unwrap();
    fs::set_permissions(root.join("sub/deeper"), fs::Permissions::from_mode(0o705)).unwrap();
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 0,
        },
    };
    for p in ["a.txt", "sub/run.sh", "sub/deeper", "sub"] {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            root.join(p),
            &t,
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
    }
}

/// (relative path, mode, mtime, content or link target) of every entry, sorted.
fn describe(root: &Path) -> Vec<(String, u32, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let body = if m.file_type().is_symlink() {
                fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if m.is_dir() {
                stack.push(p.clone());
                Vec::new()
            } else {
                fs::read(&p).unwrap()
            };
            let mtime = if m.file_type().is_symlink() {
                0
            } else {
                m.mtime()
            };
            out.push((rel, m.mode() & 0o7777, mtime, body));
        }
    }
    out.sort();
    out
}

#[test]
fn a_tree_round_trips_with_modes_times_and_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    make_tree(&src);
    let mut tar = Vec::new();
    send_tree(&mut tar, &src, Some("tree".as_ref())).unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let (landing, stage_in) = plan_out(&sp("/x/tree"), FileKind::Directory, &out, false).unwrap();
    assert_eq!(landing, Landing::At(out.join("tree")));
    receive(&mut tar.as_slice(), "tree", &stage_in, &landing).unwrap();
    assert_eq!(describe(&src), describe(&out.join("tree")));
    assert!(leftovers(&out).is_empty());
}

#[test]
fn docker_rules_for_copies_to_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("file"), b"old").unwrap();
    let src = sp("/etc/conf");
    // Into an existing directory, by the source's name.
    assert_eq!(
        plan_out(&src, FileKind::File, d, false).unwrap().0,
        Landing::At(d.join("conf"))
    );
    // A new name; a file replacing a file.
    assert_eq!(
        plan_out(&src, FileKind::File, &d.join("new"), false)
            .unwrap()
            .0,
        Landing::At(d.join("new"))
    );
    assert_eq!(
        plan_out(&src, FileKind::File, &d.join("file"), false)
            .unwrap()
            .0,
        Landing::At(d.join("file"))
    );
    // The contents of a directory.
    assert_eq!(
        plan_out(&sp("/etc/."), FileKind::Directory, d, false)
            .unwrap()
            .0,
        Landing::Into(d.to_path_buf())
    );
    let err = |r: Result<(Landing, std::path::PathBuf), CopyError>| r.unwrap_err().to_string();
    assert!(
        err(plan_out(&src, FileKind::Directory, &d.join("file"), false))
            .contains("cannot copy a directory to a file")
    );
    assert!(err(plan_out(&src, FileKind::File, &d.join("nodir"), true)).contains("does not exist"));
    assert!(
        err(plan_out(&src, FileKind::File, &d.join("no/such"), false))
            .contains("no such directory")
    );
    assert!(err(plan_out(&sp("/etc/conf/"), FileKind::File, d, false)).contains("not a directory"));
}

#[test]
fn copies_merge_into_existing_directories_and_replace_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("t/keep")).unwrap();
    fs::write(d.join("t/keep/mine"), b"host's").unwrap();
    fs::write(d.join("t/f"), b"old").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", d.join("t/l")).unwrap();
    let tar = raw_tar(&[
        (DIR, "t", "", b""),
        (FILE, "t/f", "", b"new"),
        (FILE, "t/l", "", b"not through the link"),
        (DIR, "t/keep", "", b""),
        (FILE, "t/keep/theirs", "", b"sandbox's"),
    ]);
    receive(&mut tar.as_slice(), "t", d, &Landing::At(d.join("t"))).unwrap();
    assert_eq!(fs::read(d.join("t/f")).unwrap(), b"new");
    assert_eq!(fs::read(d.join("t/keep/mine")).unwrap(), b"host's");
    assert_eq!(fs::read(d.join("t/keep/theirs")).unwrap(), b"sandbox's");
    assert!(
        !fs::symlink_metadata(d.join("t/l"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "a symlink at the destination is replaced, not written through"
    );
    // A file where a directory is, and the other way round.
    let tar = raw_tar(&[(FILE, "keep", "", b"x")]);
    let e = receive(
        &mut tar.as_slice(),
        "keep",
        d,
        &Landing::At(d.join("t/keep")),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("cannot overwrite directory"), "{e}");
    let tar = raw_tar(&[(DIR, "f", "", b"")]);
    let e = receive(&mut tar.as_slice(), "f", d, &Landing::At(d.join("t/f")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot overwrite non-directory"), "{e}");
    assert!(leftovers(d).is_empty());
}

#[test]
fn hostile_archives_write_nothing_outside_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("dest");
    fs::create_dir(&d).unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let target = outside.to_str().unwrap().to_string();
    let cases: Vec<Vec<u8>> = vec![
        raw_tar(&[(FILE, "../evil", "", b"x")]),
        raw_tar(&[(FILE, "/abs-evil", "", b"x")]),
        raw_tar(&[(DIR, "x", "", b""), (FILE, "x/../../evil", "", b"x")]),
        raw_tar(&[
            (DIR, "x", "", b""),
            (LINK, "x/l", &target, b""),
            (FILE, "x/l/evil", "", b"x"),
        ]),
        raw_tar(&[(LINK, "x", &target, b""), (FILE, "x/evil", "", b"x")]),
    ];
    for (i, tar) in cases.iter().enumerate() {
        let r = receive(&mut tar.as_slice(), "x", &d, &Landing::At(d.join("x")));
        let e = r.expect_err(&format!("case {i} must fail")).to_string();
        assert!(e.contains("unsafe archive"), "case {i}: {e}");
        assert!(
            fs::read_dir(&outside).unwrap().next().is_none(),
            "case {i} wrote outside"
        );
        assert!(!dir.path().join("evil").exists() && !Path::new("/abs-evil").exists());
        assert!(leftovers(&d).is_empty(), "case {i} left its stage");
    }
    // Entries beside the one asked for stay in the stage and go with it.
    let tar = raw_tar(&[(FILE, "x", "", b"ok"), (FILE, "other", "", b"no")]);
    receive(&mut tar.as_slice(), "x", &d, &Landing::At(d.join("x"))).unwrap();
    assert_eq!(fs::read(d.join("x")).unwrap(), b"ok");
    assert!(!d.join("other").exists());
    // An archive without the entry asked for.
    let tar = raw_tar(&[(FILE, "y", "", b"")]);
    let e = receive(&mut tar.as_slice(), "z", &d, &Landing::At(d.join("z"))).unwrap_err();
    assert!(e.to_string().contains("has no"), "{e}");
    assert!(leftovers(&d).is_empty());
}

#[test]
fn copies_out_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![7u8; 100_000];
    let tar = raw_tar(&[(FILE, "big", "", &big)]);
    let small = Limits {
        max_bytes: 50_000,
        max_entries: 10,
    };
    let d = dir.path();
    let e = receive_with(
        &mut tar.as_slice(),
        "big",
        d,
        &Landing::At(d.join("big")),
        small,
    )
    .unwrap_err();
    assert!(e.to_string().contains("BRIG_MAX_COPY_BYTES"), "{e}");
    let many: Vec<(tar::EntryType, String)> = (0..20).map(|i| (FILE, format!("d/f{i}"))).collect();
    let mut entries: Vec<(tar::EntryType, &str, &str, &[u8])> = vec![(DIR, "d", "", b"")];
    entries.extend(many.iter().map(|(k, p)| (*k, p.as_str(), "", &b""[..])));
    let tar = raw_tar(&entries);
    let e = receive_with(
        &mut tar.as_slice(),
        "d",
        d,
        &Landing::At(d.join("d")),
        small,
    )
    .unwrap_err();
    assert!(e.to_string().contains("BRIG_MAX_COPY_ENTRIES"), "{e}");
    assert!(!d.join("big").exists() && !d.join("d").exists());
    assert!(leftovers(d).is_empty());
}

#[test]
fn docker_rules_for_copies_into_the_sandbox() {
    let src = Path::new("/host/data");
    let no_parent = |_: &str| -> Result<FileKind, CopyError> { panic!("not asked") };
    let dir_parent = |_: &str| Ok(FileKind::Directory);
    let plan = |is_dir, contents, dest: &str, kind, parent: &dyn Fn(&str) -> _| {
        plan_in(src, is_dir, contents, &sp(dest), kind, parent)
    };
    let pi = |dir: &str, name: Option<&str>| PlanIn {
        dir: dir.into(),
        name: name.map(Into::into),
    };
    assert_eq!(
        plan(false, false, "/tmp", FileKind::Directory, &no_parent).unwrap(),
        pi("/tmp", Some("data"))
    );
    assert_eq!(
        plan(true, true, "/tmp", FileKind::Directory, &no_parent).unwrap(),
        pi("/tmp", None)
    );
    assert_eq!(
        plan(true, false, "/tmp/new", FileKind::Missing, &dir_parent).unwrap(),
        pi("/tmp", Some("new"))
    );
    assert_eq!(
        plan(false, false, "/etc/hosts", FileKind::File, &no_parent).unwrap(),
        pi("/etc", Some("hosts"))
    );
    let missing_parent = |_: &str| Ok(FileKind::Missing);
    let e = |r: Result<PlanIn, CopyError>| r.unwrap_err().to_string();
    assert!(e(plan(
        false,
        false,
        "/no/x",
        FileKind::Missing,
        &missing_parent
    ))
    .contains("no such directory"));
    assert!(
        e(plan(false, false, "/new/", FileKind::Missing, &no_parent)).contains("does not exist")
    );
    assert!(
        e(plan(true, false, "/etc/hosts", FileKind::File, &no_parent))
            .contains("cannot copy a directory to a file")
    );
}

#[test]
fn contents_merged_into_a_directory_give_it_the_archives_mode_and_time() {
    // `brig cp NAME:/dir/. existing`: the stage sits in `existing` itself, and removing it
    // must not leave `existing` at "now".
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("existing");
    fs::create_dir(&d).unwrap();
    let tar = raw_tar(&[(DIR, "t", "", b""), (FILE, "t/f", "", b"x")]);
    receive(&mut tar.as_slice(), "t", &d, &Landing::Into(d.clone())).unwrap();
    let m = fs::metadata(&d).unwrap();
    assert_eq!((m.mtime(), m.mode() & 0o7777), (1_600_000_000, 0o644));
    assert_eq!(fs::read(d.join("f")).unwrap(), b"x");
    assert!(leftovers(&d).is_empty());
}
