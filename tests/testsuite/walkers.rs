//! The two walkers (walkdir on one thread; the ordered parallel walker of `tree/walker.rs`)
//! yield the same entries, described the same (type, mode, owner, size, link target, xattrs,
//! digest, stat data), in the same key order, and fail the same way: on a tree with every entry
//! type, modes with setgid, non-UTF-8 names, names that sort around `/`, symlink loops, a
//! symlink root, a file root, a missing root, and an unreadable directory. Neither opens a FIFO,
//! socket or device node (inotify sees no open of them).

use crate::common;
use crate::inotify;

use std::os::unix::fs::symlink;
use std::path::Path;

use common::*;
use layercache::testing::tree::walker::READ_AHEAD_DIRS;
use layercache::testing::tree::{Enumerator, OrderedDirs, TreeWalk, WalkCounters, WalkedEntry};
use layercache::{EntryKind, Error, RelPath};

const BOTH: [Enumerator; 2] = [Enumerator::Walkdir, Enumerator::Parallel];

fn walk(root: &Path, how: Enumerator) -> Vec<WalkedEntry> {
    TreeWalk::with_enumerator(root, how)
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
}

/// Everything of an entry but the moment its walk began.
fn assert_same(a: &[WalkedEntry], b: &[WalkedEntry]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.path, y.path);
        let without_snapshot = |e: &WalkedEntry| {
            let mut r = e.row.clone();
            if let Some(s) = r.stat.as_mut() {
                s.snapshot_ns = 0;
            }
            r
        };
        assert_eq!(without_snapshot(x), without_snapshot(y), "{}", x.path);
        assert_eq!(x.stat, y.stat, "{}", x.path);
        assert_eq!(x.unstable, y.unstable, "{}", x.path);
    }
}

/// rich_tree plus xattrs (where supported), a wide part (several windows of entries, and more
/// directories than the read-ahead window), and mtimes an hour old (so rows are not racy).
fn big_rich_tree(root: &Path) {
    rich_tree(root);
    for d in 0..90 {
        for f in 0..50 {
            write(
                root,
                &format!("w/d{d:02}/f{f}"),
                format!("{d}/{f}").as_bytes(),
            );
        }
    }
    if xattrs_supported(root) {
        xattr::set(root.join("a.txt"), "user.one", b"1").unwrap();
        xattr::set(root.join("w/d07"), "user.dir", b"\xff\x00").unwrap();
    }
    let old = filetime::FileTime::from_unix_time(1_600_000_000, 123);
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        filetime::set_symlink_file_times(e.path(), old, old).unwrap();
    }
}

#[test]
fn both_walkers_agree_on_a_tree_with_every_entry_type() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    big_rich_tree(&root);
    let a = walk(&root, Enumerator::Walkdir);
    let b = walk(&root, Enumerator::Parallel);
    assert!(a.len() > 4096, "more than one window: {}", a.len());
    assert_same(&a, &b);
    let keys: Vec<&RelPath> = b.iter().map(|e| &e.path).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "not in key order");
    // The names that sort around `/`, in key order: a, a/b, a-b, a.txt, a0.
    let around: Vec<String> = b
        .iter()
        .map(|e| e.path.to_string())
        .filter(|p| p.starts_with('a') && !p.starts_with("abs"))
        .collect();
    assert_eq!(around, ["a", "a/b", "a-b", "a.txt", "a0"]);
    let find = |key: &[u8]| {
        b.iter()
            .find(|e| e.path.key() == key)
            .unwrap_or_else(|| panic!("{} not walked", String::from_utf8_lossy(key)))
    };
    find(b"bad\xff\xfename");
    find(b"new\nline");
    assert_eq!(find(b"setgid-dir").row.mode, 0o2775);
    assert_eq!(find(b"exec.sh").row.mode, 0o755);
    // Loops are recorded as links, never followed.
    assert_eq!(find(b"loop1").row.link_target, b"loop2");
    assert_eq!(find(b"self").row.link_target, b"self");
    assert_eq!(find(b"abs-link").row.link_target, b"/etc/passwd");
}

/// With prior rows (the stat fast path), both walkers reuse the same digests and read the same
/// files: none.
#[test]
fn both_walkers_agree_with_prior_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    big_rich_tree(&root);
    // Past the tick of the last status change (aging sets the ctimes): no row is racy.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let first = walk(&root, Enumerator::Walkdir);
    let results = walk_both_with_prior(&root, &first);
    assert_same(&results[0].0, &results[1].0);
    assert_same(&first, &results[1].0);
    let (by_walkdir, by_parallel) = (results[0].1, results[1].1);
    assert_eq!(without_dirs(by_walkdir), without_dirs(by_parallel));
    assert_eq!(by_parallel.files_hashed, 0, "{by_parallel:?}");
    assert!(by_parallel.stat_matched > 4000, "{by_parallel:?}");
    // walkdir reads every directory; the parallel walker proves every one from its prior rows
    // (no directory changed), and reads none.
    let dirs = first
        .iter()
        .filter(|e| e.row.kind == EntryKind::Dir)
        .count() as u64;
    assert!(dirs > READ_AHEAD_DIRS as u64, "{dirs}");
    assert_eq!(by_walkdir.dirs_read, dirs, "{by_walkdir:?}");
    assert_eq!(by_walkdir.dirs_proven, 0);
    assert_eq!(by_parallel.dirs_read, 0, "{by_parallel:?}");
    assert_eq!(by_parallel.dirs_proven, dirs, "{by_parallel:?}");
}

/// Walks `root` with both walkers, each given `prior`'s rows.
fn walk_both_with_prior(
    root: &Path,
    prior: &[WalkedEntry],
) -> Vec<(Vec<WalkedEntry>, WalkCounters)> {
    BOTH.iter()
        .map(|&how| {
            let rows: Vec<_> = prior
                .iter()
                .map(|e| Ok((e.path.clone(), e.row.clone())))
                .collect();
            let mut w = TreeWalk::with_enumerator(root, how).unwrap();
            w.set_prior(Box::new(rows.into_iter()));
            let entries: Vec<WalkedEntry> = w.by_ref().map(|e| e.unwrap()).collect();
            (entries, w.counters())
        })
        .collect()
}

/// The counters but the directory ones (which differ by design: walkdir reads every directory).
fn without_dirs(c: WalkCounters) -> WalkCounters {
    WalkCounters {
        dirs_read: 0,
        dirs_proven: 0,
        proofs_failed: 0,
        ..c
    }
}

/// After entries were added, removed, renamed, and a directory replaced by a symlink and one
/// by a file, both walkers with the old prior rows still yield the same entries as a walk
/// without prior rows; the parallel walker reads exactly the directories whose entries changed
/// and proves the others.
#[test]
fn both_walkers_agree_with_prior_rows_after_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    big_rich_tree(&root);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let first = walk(&root, Enumerator::Walkdir);
    write(&root, "w/d01/added", b"new");
    std::fs::remove_file(root.join("w/d02/f3")).unwrap();
    std::fs::rename(root.join("w/d03/f4"), root.join("w/d03/f4-renamed")).unwrap();
    std::fs::rename(root.join("w/d04/f5"), root.join("w/d05/f5-moved")).unwrap();
    std::fs::remove_dir_all(root.join("w/d06")).unwrap();
    symlink("d07", root.join("w/d06")).unwrap();
    std::fs::remove_dir_all(root.join("w/d08")).unwrap();
    write(&root, "w/d08", b"a file now");
    std::fs::remove_file(root.join("w/d09/f0")).unwrap();
    std::fs::create_dir(root.join("w/d09/f0")).unwrap();
    write(&root, "w/d09/f0/inside", b"x");
    let fresh = walk(&root, Enumerator::Walkdir);
    let results = walk_both_with_prior(&root, &first);
    let strip = |v: &[WalkedEntry]| -> Vec<(RelPath, EntryKind, [u8; 32])> {
        v.iter()
            .map(|e| (e.path.clone(), e.row.kind, e.row.digest))
            .collect()
    };
    assert_eq!(strip(&results[0].0), strip(&fresh));
    assert_eq!(strip(&results[1].0), strip(&fresh));
    let c = results[1].1;
    // w (d06, d08 replaced) and d01, d02, d03, d04, d05, d09 (entries changed) are read, and
    // d09/f0, new; every other directory is proven.
    assert_eq!(c.dirs_read, 8, "{c:?}");
    assert_eq!(c.proofs_failed, 0, "{c:?}");
    let dirs = fresh
        .iter()
        .filter(|e| e.row.kind == EntryKind::Dir)
        .count() as u64;
    assert_eq!(c.dirs_read + c.dirs_proven, dirs, "{c:?}");
}

#[test]
fn both_walkers_follow_a_symlink_root_and_no_symlink_below_it() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    write(&real, "sub/f", b"f");
    symlink(&real, tmp.path().join("root-link")).unwrap();
    symlink(real.join("sub"), real.join("sub-link")).unwrap();
    let a = walk(&tmp.path().join("root-link"), Enumerator::Walkdir);
    let b = walk(&tmp.path().join("root-link"), Enumerator::Parallel);
    assert_same(&a, &b);
    let paths: Vec<String> = b.iter().map(|e| e.path.to_string()).collect();
    assert_eq!(paths, [".", "sub", "sub/f", "sub-link"]);
}

#[test]
fn both_walkers_walk_a_file_root_as_one_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "only", b"one");
    let a = walk(&f, Enumerator::Walkdir);
    let b = walk(&f, Enumerator::Parallel);
    assert_same(&a, &b);
    assert_eq!(b.len(), 1);
    assert_eq!(OrderedDirs::new(&f).count(), 1);
}

#[test]
fn a_missing_root_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("gone");
    for how in BOTH {
        match TreeWalk::with_enumerator(&gone, how) {
            Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("gone"), "{e}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("walked a missing root"),
        }
    }
    match OrderedDirs::new(&gone).next() {
        Some(Err(Error::Io { path, .. })) => assert_eq!(path, gone),
        other => panic!("{other:?}"),
    }
}

/// FIFOs, sockets and device nodes are stated, never opened, by either walker: inotify reports
/// no open of them (and does report one when the test opens the FIFO itself).
#[test]
fn neither_walker_opens_a_fifo_socket_or_device() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    rich_tree(&root);
    let watch = inotify::Watch::new();
    let mut watched = vec![root.join("fifo"), root.join("sock")];
    if root.join("null-dev").exists() {
        watched.push(root.join("null-dev"));
    }
    for p in &watched {
        watch.add(p, inotify::IN_OPEN);
    }
    for how in BOTH {
        let entries = walk(&root, how);
        assert!(entries.iter().any(|e| e.path.key() == b"fifo"));
        let opened = watch.pending();
        assert!(opened.is_empty(), "{how:?} opened {opened:?}");
    }
    // The watch works: an open of the FIFO is seen.
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
        root.join("fifo").as_os_str(),
    ))
    .unwrap();
    // SAFETY: a valid path; the descriptor is closed right away.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    assert!(fd >= 0);
    unsafe { libc::close(fd) };
    assert!(
        watch
            .wait_for(inotify::IN_OPEN, std::time::Duration::from_secs(5))
            .is_some()
    );
}

/// A directory its reader may not list: both walkers yield the same entries before it (whole
/// windows), then fail with an I/O error naming it — never a silent skip. Root lists it anyway
/// (CAP_DAC_OVERRIDE), so as root this test runs itself again in a child process of this test
/// binary with uid and gid `nobody`; it skips (saying why) only where dropping privileges is
/// refused.
#[test]
fn an_unreadable_directory_is_the_same_error_for_both() {
    if common::rerun_as_nobody("an_unreadable_directory_is_the_same_error_for_both") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    // More than a window of entries before it, so the walks have yielded something.
    for f in 0..5000 {
        write(&root, &format!("a-first/f{f:04}"), b"x");
    }
    write(&root, "locked/inside", b"secret");
    write(&root, "z-after", b"z");
    chmod(&root.join("locked"), 0o000);
    let mut outcomes = Vec::new();
    for how in BOTH {
        let mut before = Vec::new();
        let mut err = None;
        for e in TreeWalk::with_enumerator(&root, how).unwrap() {
            match e {
                Ok(e) => before.push(e),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        match err {
            Some(Error::Io { path, source, .. }) => {
                assert_eq!(path, root.join("locked"), "{how:?}");
                assert_eq!(source.raw_os_error(), Some(libc::EACCES), "{how:?}");
            }
            other => panic!("{how:?}: expected an I/O error naming the directory, got {other:?}"),
        }
        assert!(
            !before.iter().any(|e| e.path.key().starts_with(b"locked\0")),
            "{how:?} listed the unreadable directory"
        );
        outcomes.push(before);
    }
    assert_same(&outcomes[0], &outcomes[1]);
    assert!(!outcomes[1].is_empty());
    chmod(&root.join("locked"), 0o755);
}
