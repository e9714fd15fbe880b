//! Snapshot → store → diff through a real redb file and real directory trees.

use crate::common;
use layercache::testing::RawTransactions;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use layercache::testing::{Store, TreeWalk};
use layercache::{Change, EntryKind, RelPath, TreeDiff};

fn store(dir: &Path) -> Store {
    Store::open(dir.join("cache.redb")).unwrap()
}

/// Snapshots `root`, applies `change`, and returns the diff against the stored rows.
fn diff_after(change: impl FnOnce(&Path)) -> TreeDiff {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    std::fs::create_dir(&root).unwrap();
    rich_tree(&root);
    let s = store(tmp.path());
    s.snapshot("layer", "src", &root).unwrap();
    change(&root);
    s.diff("layer", "src", &root).unwrap().0
}

fn p(s: &str) -> RelPath {
    RelPath::from_slash_bytes(s.as_bytes())
}

fn only_modified(diff: &TreeDiff, path: &str) -> Vec<Change> {
    assert!(diff.added.is_empty(), "added: {:?}", diff.added);
    assert!(diff.removed.is_empty(), "removed: {:?}", diff.removed);
    assert_eq!(diff.modified.len(), 1, "{diff}");
    assert_eq!(diff.modified[0].path, p(path));
    diff.modified[0].changes.clone()
}

#[test]
fn unchanged_tree_diffs_empty_and_every_file_is_hashed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    std::fs::create_dir(&root).unwrap();
    let files = rich_tree(&root);
    let s = store(tmp.path());
    let (summary, counters) = s.snapshot("layer", "src", &root).unwrap();
    assert_eq!(counters.files_hashed, files);
    assert_eq!(summary.root_kind, Some(EntryKind::Dir));
    assert_eq!(summary.rows, counters.entries_walked);

    // Stored order equals walk order, and the names sorting around '/' come out as walked.
    let txn = s.begin_read().unwrap();
    let stored: Vec<RelPath> = s
        .rows(&txn, "layer", "src")
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    let walked: Vec<RelPath> = TreeWalk::new(&root)
        .unwrap()
        .map(|e| e.unwrap().path)
        .collect();
    assert_eq!(stored, walked);
    let pos = |x: &str| stored.iter().position(|q| *q == p(x)).unwrap();
    assert!(pos("a") < pos("a/b") && pos("a/b") < pos("a-b"));
    assert!(pos("a-b") < pos("a.txt") && pos("a.txt") < pos("a0"));
    assert!(stored.contains(&RelPath::from_slash_bytes(b"bad\xff\xfename")));

    let (diff, counters) = s.diff("layer", "src", &root).unwrap();
    assert!(diff.is_empty(), "{diff}");
    assert_eq!(counters.files_hashed, files);

    // Reopening the file sees the same rows.
    drop(txn);
    drop(s);
    let s = store(tmp.path());
    assert!(s.diff("layer", "src", &root).unwrap().0.is_empty());
}

#[test]
fn content_changed_with_same_size() {
    let d = diff_after(|r| {
        write(r, "a.txt", b"A.TXT");
    });
    assert_eq!(only_modified(&d, "a.txt"), vec![Change::Content]);
}

#[test]
fn mode_only() {
    let d = diff_after(|r| chmod(&r.join("a.txt"), 0o600));
    assert_eq!(
        only_modified(&d, "a.txt"),
        vec![Change::Mode {
            old: 0o644,
            new: 0o600
        }]
    );
}

#[test]
fn setgid_bit_counts() {
    let d = diff_after(|r| chmod(&r.join("setgid-dir"), 0o775));
    assert_eq!(
        only_modified(&d, "setgid-dir"),
        vec![Change::Mode {
            old: 0o2775,
            new: 0o775
        }]
    );
}

#[test]
fn owner_only() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: changing owners needs root");
        return;
    }
    let d = diff_after(|r| std::os::unix::fs::chown(r.join("a0"), Some(4242), Some(4343)).unwrap());
    let changes = only_modified(&d, "a0");
    assert!(
        changes.contains(&Change::Uid { old: 0, new: 4242 }),
        "{changes:?}"
    );
    assert!(
        changes.contains(&Change::Gid { old: 0, new: 4343 }),
        "{changes:?}"
    );
}

#[test]
fn symlink_retargeted() {
    let d = diff_after(|r| {
        std::fs::remove_file(r.join("link-to-a")).unwrap();
        symlink("a0", r.join("link-to-a")).unwrap();
    });
    assert_eq!(
        only_modified(&d, "link-to-a"),
        vec![Change::LinkTarget {
            old: "a.txt".into(),
            new: "a0".into()
        }]
    );
}

#[test]
fn file_replaced_by_directory() {
    let d = diff_after(|r| {
        std::fs::remove_file(r.join("a0")).unwrap();
        std::fs::create_dir(r.join("a0")).unwrap();
    });
    assert_eq!(
        only_modified(&d, "a0"),
        vec![Change::Type {
            old: EntryKind::File,
            new: EntryKind::Dir
        }]
    );
}

#[test]
fn xattr_added_and_changed() {
    let probe = tempfile::tempdir().unwrap();
    if !xattrs_supported(probe.path()) {
        eprintln!("skipped: this file system refuses user xattrs");
        return;
    }
    let d = diff_after(|r| xattr::set(r.join("a.txt"), "user.new", b"1").unwrap());
    assert_eq!(only_modified(&d, "a.txt"), vec![Change::Xattrs]);

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    write(&root, "f", b"x");
    xattr::set(root.join("f"), "user.k", b"old").unwrap();
    let s = store(tmp.path());
    s.snapshot("l", "s", &root).unwrap();
    assert!(s.diff("l", "s", &root).unwrap().0.is_empty());
    xattr::set(root.join("f"), "user.k", b"new").unwrap();
    assert_eq!(
        only_modified(&s.diff("l", "s", &root).unwrap().0, "f"),
        vec![Change::Xattrs]
    );
}

#[test]
fn deep_file_added_and_removed() {
    let d = diff_after(|r| {
        write(r, "z/y/x/w/v/u/t/s/r/q/new.txt", b"new");
    });
    assert_eq!(d.added, vec![p("z/y/x/w/v/u/t/s/r/q/new.txt")]);
    assert!(d.removed.is_empty());
    // The parent directory's content is not compared (no mtime), so nothing else is modified.
    assert!(d.modified.is_empty(), "{d}");

    let d = diff_after(|r| std::fs::remove_file(r.join("z/y/x/w/v/u/t/s/r/q/deep.txt")).unwrap());
    assert_eq!(d.removed, vec![p("z/y/x/w/v/u/t/s/r/q/deep.txt")]);
    assert!(d.added.is_empty() && d.modified.is_empty(), "{d}");
}

#[test]
fn empty_directory_added_and_removed() {
    let d = diff_after(|r| std::fs::create_dir(r.join("a/new-empty")).unwrap());
    assert_eq!(d.added, vec![p("a/new-empty")]);
    assert!(d.removed.is_empty() && d.modified.is_empty(), "{d}");

    let d = diff_after(|r| std::fs::remove_dir(r.join("empty/also-empty")).unwrap());
    assert_eq!(d.removed, vec![p("empty/also-empty")]);
    assert!(d.added.is_empty() && d.modified.is_empty(), "{d}");
}

#[test]
fn removed_subtree_lists_every_path() {
    let d = diff_after(|r| std::fs::remove_dir_all(r.join("z")).unwrap());
    assert_eq!(d.removed.len(), 11, "{d}");
    assert_eq!(d.removed[0], p("z"));
}

#[test]
fn fifo_does_not_hang_and_loops_are_recorded() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("t");
        std::fs::create_dir(&root).unwrap();
        rich_tree(&root);
        let entries: Vec<_> = TreeWalk::new(&root).unwrap().map(|e| e.unwrap()).collect();
        tx.send(entries).unwrap();
    });
    let entries = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the walk hung on a FIFO or a symlink loop");
    let find = |name: &str| entries.iter().find(|e| e.path == p(name)).unwrap();
    assert_eq!(find("fifo").row.kind, EntryKind::Fifo);
    assert_eq!(find("sock").row.kind, EntryKind::Socket);
    assert_eq!(find("loop1").row.kind, EntryKind::Symlink);
    assert_eq!(find("loop1").row.link_target, b"loop2");
    assert_eq!(find("self").row.link_target, b"self");
    assert_eq!(find("abs-link").row.link_target, b"/etc/passwd");
    if let Some(dev) = entries.iter().find(|e| e.path == p("null-dev")) {
        assert_eq!(dev.row.kind, EntryKind::CharDevice);
        assert_ne!(dev.row.rdev, 0);
    }
}

#[test]
fn root_mode_counts() {
    let d = diff_after(|r| chmod(r, 0o700));
    assert!(matches!(
        only_modified(&d, "")[0],
        Change::Mode { new: 0o700, .. }
    ));
}

#[test]
fn single_file_root_is_one_row() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "import.tar", b"tarball");
    let s = store(tmp.path());
    let (summary, c) = s.snapshot("l", "imp", &f).unwrap();
    assert_eq!(
        (summary.rows, summary.root_kind, c.files_hashed),
        (1, Some(EntryKind::File), 1)
    );
    chmod(&f, 0o600);
    assert_eq!(
        only_modified(&s.diff("l", "imp", &f).unwrap().0, ""),
        vec![Change::Mode {
            old: 0o644,
            new: 0o600
        }]
    );
}

#[test]
fn sources_and_layers_do_not_bleed_into_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    write(&a, "x", b"1");
    write(&b, "y", b"2");
    let s = store(tmp.path());
    // "src" and "src2", layers "l" and "l2": prefixes of each other.
    s.snapshot("l", "src", &a).unwrap();
    s.snapshot("l", "src2", &b).unwrap();
    s.snapshot("l2", "src", &b).unwrap();
    assert!(s.diff("l", "src", &a).unwrap().0.is_empty());
    assert!(s.diff("l", "src2", &b).unwrap().0.is_empty());
    assert!(s.diff("l2", "src", &b).unwrap().0.is_empty());
    assert_eq!(s.row_count("l", "src").unwrap(), 2);
    // Re-snapshotting replaces the rows rather than adding to them.
    s.snapshot("l", "src", &b).unwrap();
    assert_eq!(s.row_count("l", "src").unwrap(), 2);
    assert!(s.diff("l", "src", &b).unwrap().0.is_empty());
}

#[test]
fn merkle_root_covers_compared_properties_only() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    std::fs::create_dir(&root).unwrap();
    rich_tree(&root);
    let s = store(tmp.path());
    let first = s.snapshot("l", "s", &root).unwrap().0.root_digest;
    // mtime is never covered.
    filetime::set_file_mtime(root.join("a.txt"), filetime::FileTime::from_unix_time(1, 0)).unwrap();
    assert_eq!(s.snapshot("l", "s", &root).unwrap().0.root_digest, first);
    // The same tree elsewhere (other absolute path) has the same root.
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    rich_tree(&copy);
    chmod(&copy, std::fs::metadata(&root).unwrap().mode_bits());
    assert_eq!(s.snapshot("l", "copy", &copy).unwrap().0.root_digest, first);
    // Any compared change moves it: content deep down, a mode, an added empty dir.
    write(&root, "z/y/x/w/v/u/t/s/r/q/deep.txt", b"other");
    let second = s.snapshot("l", "s", &root).unwrap().0.root_digest;
    assert_ne!(second, first);
    chmod(&root.join("a0"), 0o600);
    let third = s.snapshot("l", "s", &root).unwrap().0.root_digest;
    assert_ne!(third, second);
    std::fs::create_dir(root.join("empty/more")).unwrap();
    assert_ne!(s.snapshot("l", "s", &root).unwrap().0.root_digest, third);
}

trait ModeBits {
    fn mode_bits(&self) -> u32;
}
impl ModeBits for std::fs::Metadata {
    fn mode_bits(&self) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        self.permissions().mode() & 0o7777
    }
}

/// A file its reader may not read: the snapshot fails with an error naming it. Root reads
/// through permission bits (CAP_DAC_OVERRIDE), so as root (CI) this test runs itself again in a
/// child process of this test binary with uid and gid `nobody`, which cannot; it skips (saying
/// why) only where dropping privileges is refused.
#[test]
fn unreadable_file_is_an_error_naming_it() {
    if common::rerun_as_nobody("unreadable_file_is_an_error_naming_it") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    let f = write(&root, "secret", b"x");
    chmod(&f, 0o000);
    let s = store(tmp.path());
    let err = s.snapshot("l", "s", &root).unwrap_err().to_string();
    assert!(err.contains("secret"), "{err}");
}

/// A device node replaced by one of the same type and mode with other device numbers: the
/// diff names its content (the device numbers are a device's content).
#[test]
fn device_numbers_changed_are_content() {
    let tmp = tempfile::tempdir().unwrap();
    if !mknod_char(&tmp.path().join("probe"), 1, 3) {
        eprintln!("skipped: mknod refused here (not root)");
        return;
    }
    let d = diff_after(|r| {
        std::fs::remove_file(r.join("null-dev")).unwrap();
        assert!(mknod_char(&r.join("null-dev"), 1, 5));
    });
    assert_eq!(only_modified(&d, "null-dev"), vec![Change::Content]);
}
