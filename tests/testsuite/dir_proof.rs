//! The directory listing proof (`tree/fastpath.rs`, "Directories"; `tree/walker.rs`): a
//! directory whose stat equals its stored row's, not racy, is not read (`getdents`); its names
//! come from the stored rows and each is `lstat`ed. Counted through a real cache (real redb,
//! real trees) and the real binary: no directory is read when nothing changed; a directory whose
//! entries changed is read and the change is a miss, never a hit; a racy row, a replaced
//! directory, a replaced child, and a forged row whose names are gone are read.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use filetime::FileTime;
use layercache::testing::codec::{self, ROW_LIMIT};
use layercache::testing::schema::{ROWS, Row, RowStat};
use layercache::testing::tree::fastpath::IN_FLIGHT_SLACK_NS;
use layercache::testing::{RawTransactions, Store};
use layercache::{Build, Cache, LookupMode, MissReason, RelPath};
use redb::ReadableTable;
use serde_json::{Value, json};

/// Directories of the test tree below the root: d0..d4, each with e0..e2.
const DIRS: u64 = 5 + 5 * 3;

/// 600 files in `d{0..4}/e{0..2}`, aged.
fn tree(src: &Path) {
    for i in 0..600 {
        write(
            src,
            &format!("d{}/e{}/f{i}.txt", i % 5, i % 3),
            format!("content {i}").as_bytes(),
        );
    }
    age(src);
}

struct Setup {
    tmp: tempfile::TempDir,
    src: PathBuf,
    cache: Option<Cache>,
    build: Build,
}

/// The layer `app` whose one overlay dir `src` is `src`.
fn build_of(dir: &Path, src: &Path) -> Build {
    app_build(dir, &[("src", src)], vec![])
}

/// A tree, a cache, and a put of it: settled rows.
fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src);
    let build = build_of(tmp.path(), &src);
    let cache = open_cache(&tmp.path().join("cache.redb"));
    let mut session = cache.session(&build).unwrap();
    let l = session.lookup("app").unwrap();
    session.put(&l, &common::outputs()).unwrap();
    drop(session);
    Setup {
        tmp,
        src,
        cache: Some(cache),
        build,
    }
}

impl Setup {
    fn cache(&self) -> &Cache {
        self.cache.as_ref().unwrap()
    }

    /// One lookup of `mode` in a fresh session: the lookup and the session's walk counters.
    fn lookup_with(&self, mode: LookupMode) -> (layercache::Lookup, layercache::SessionCounters) {
        let mut session = self.cache().session(&self.build).unwrap();
        let l = session.lookup_with("app", mode).unwrap();
        (l, session.counters())
    }

    fn lookup(&self) -> (layercache::Lookup, layercache::testing::WalkCounters) {
        let (l, c) = self.lookup_with(LookupMode::CHECK);
        (l, c.walk)
    }

    /// Rewrites the stored row of `path` with `f` through redb directly (closing and opening
    /// the cache around it), as a same-tick change, or a file system that does not move a
    /// directory's mtime, would leave it.
    fn edit_row(&mut self, path: &str, f: impl FnOnce(&mut Row)) {
        let db = self.tmp.path().join("cache.redb");
        drop(self.cache.take());
        let store = Store::open(&db).unwrap();
        let key = RelPath::from_slash_bytes(path.as_bytes());
        let k = ("app", "overlay:src", key.key());
        let txn = store.begin_write().unwrap();
        {
            let mut t = txn.open_table(ROWS).unwrap();
            let mut row =
                codec::decode::<Row, ROW_LIMIT>(t.get(k).unwrap().unwrap().value()).unwrap();
            f(&mut row);
            t.insert(k, codec::encode(&row).unwrap().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
        drop(store);
        self.cache = Some(open_cache(&db));
    }
}

/// The stat data of `p` now, as a row records it, with the given snapshot.
fn stat_now(p: &Path, snapshot_ns: i64) -> RowStat {
    let m = std::fs::symlink_metadata(p).unwrap();
    RowStat {
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        ino: m.ino(),
        dev: m.dev(),
        snapshot_ns,
    }
}

/// The paths a miss names as added, removed and modified (kind changes among the modified).
fn changes(l: &layercache::Lookup) -> (Vec<String>, Vec<String>, Vec<String>) {
    match l.reasons() {
        [MissReason::OverlayDirContentChanged { diff, .. }] => (
            diff.added.iter().map(|p| p.to_string()).collect(),
            diff.removed.iter().map(|p| p.to_string()).collect(),
            diff.modified.iter().map(|c| c.path.to_string()).collect(),
        ),
        other => panic!("not one content change: {other:?}"),
    }
}

#[test]
fn no_change_lookup_reads_no_directory() {
    let s = setup();
    for mode in [LookupMode::CHECK, LookupMode::FOR_BUILD] {
        let (l, c) = s.lookup_with(mode);
        assert!(l.is_hit(), "{:?}", l.reasons());
        let w = c.walk;
        assert_eq!(w.dirs_read, 0, "{w:?}");
        assert_eq!(w.dirs_proven, DIRS + 1, "{w:?}");
        assert_eq!(w.proofs_failed, 0, "{w:?}");
        assert_eq!(w.files_hashed, 0, "{w:?}");
        assert_eq!(w.stat_matched, 600, "{w:?}");
        assert_eq!(c.rows_refreshed, 0);
    }
}

#[test]
fn an_added_file_reads_its_directory_and_misses() {
    let s = setup();
    write(&s.src, "d1/e1/new.txt", b"new");
    let (l, c) = s.lookup();
    assert!(!l.is_hit());
    assert_eq!(c.dirs_read, 1, "only d1/e1 changed: {c:?}");
    assert_eq!(c.dirs_proven, DIRS, "{c:?}");
    assert_eq!(changes(&l).0, ["d1/e1/new.txt"]);
}

#[test]
fn a_removed_file_reads_its_directory_and_misses() {
    let s = setup();
    // f12: d2/e0.
    std::fs::remove_file(s.src.join("d2/e0/f12.txt")).unwrap();
    let (l, c) = s.lookup();
    assert!(!l.is_hit());
    assert_eq!(c.dirs_read, 1, "{c:?}");
    assert_eq!(changes(&l).1, ["d2/e0/f12.txt"]);
}

#[test]
fn a_rename_in_a_directory_and_across_directories_reads_them_and_misses() {
    let s = setup();
    // f7: d2/e1. Renamed in place.
    std::fs::rename(s.src.join("d2/e1/f7.txt"), s.src.join("d2/e1/f7.moved")).unwrap();
    let (l, c) = s.lookup();
    assert!(!l.is_hit());
    assert_eq!(c.dirs_read, 1, "{c:?}");
    let (added, removed, _) = changes(&l);
    assert_eq!(added, ["d2/e1/f7.moved"]);
    assert_eq!(removed, ["d2/e1/f7.txt"]);
    // f8: d3/e2, moved to d4/e0: both directories are read.
    std::fs::rename(s.src.join("d3/e2/f8.txt"), s.src.join("d4/e0/f8.txt")).unwrap();
    let (l, c) = s.lookup();
    assert!(!l.is_hit());
    assert_eq!(c.dirs_read, 3, "{c:?}");
    let (added, removed, _) = changes(&l);
    assert!(added.contains(&"d4/e0/f8.txt".to_string()), "{added:?}");
    assert!(removed.contains(&"d3/e2/f8.txt".to_string()), "{removed:?}");
}

#[test]
fn a_directory_replaced_by_a_symlink_or_a_file_misses() {
    let s = setup();
    std::fs::remove_dir_all(s.src.join("d0/e1")).unwrap();
    std::os::unix::fs::symlink("e2", s.src.join("d0/e1")).unwrap();
    std::fs::remove_dir_all(s.src.join("d1/e2")).unwrap();
    write(&s.src, "d1/e2", b"a file now");
    let (l, c) = s.lookup();
    assert!(!l.is_hit());
    // d0 and d1 are read (an entry of each was replaced); nothing below the symlink is read.
    assert_eq!(c.dirs_read, 2, "{c:?}");
    let (_, removed, modified) = changes(&l);
    assert!(modified.contains(&"d0/e1".to_string()), "{modified:?}");
    assert!(modified.contains(&"d1/e2".to_string()), "{modified:?}");
    assert!(
        removed
            .iter()
            .all(|p| p.starts_with("d0/e1/") || p.starts_with("d1/e2/"))
    );
}

#[test]
fn a_file_replaced_by_a_directory_misses() {
    let s = setup();
    // f9: d4/e0.
    std::fs::remove_file(s.src.join("d4/e0/f9.txt")).unwrap();
    write(&s.src, "d4/e0/f9.txt/inside", b"x");
    let (l, c) = s.lookup();
    assert!(!l.is_hit());
    // d4/e0 (an entry replaced) and the new directory.
    assert_eq!(c.dirs_read, 2, "{c:?}");
    let (added, _, modified) = changes(&l);
    assert_eq!(modified, ["d4/e0/f9.txt"]);
    assert_eq!(added, ["d4/e0/f9.txt/inside"]);
}

/// A subdirectory created in a directory whose mtime is then set back: the ctime moved (nothing
/// sets it back), so the directory is read and the new subdirectory is a miss.
#[test]
fn a_subdirectory_added_with_the_mtime_set_back_is_read() {
    let s = setup();
    let d = s.src.join("d3");
    let before = std::fs::metadata(&d).unwrap();
    write(&s.src, "d3/sub/x.txt", b"x");
    filetime::set_file_mtime(&d, FileTime::from_last_modification_time(&before)).unwrap();
    assert_eq!(
        std::fs::metadata(&d).unwrap().mtime(),
        before.mtime(),
        "mtime restored"
    );
    let (l, c) = s.lookup();
    assert!(!l.is_hit());
    assert_eq!(c.dirs_read, 2, "d3 and d3/sub: {c:?}");
    assert_eq!(changes(&l).0, ["d3/sub", "d3/sub/x.txt"]);
}

/// An entry created in the tick of a row's snapshot leaves the directory's stat as the row
/// recorded it (forged here: the stored row takes the directory's stat after the change, with
/// a snapshot just after its mtime). The racy rule is the only thing between that row and a
/// false hit: with the snapshot well past the mtime, the forged row proves the directory and the
/// added file is missed — which is why a row is never trusted within the slack.
#[test]
fn a_change_in_the_racy_window_is_read() {
    let mut s = setup();
    write(&s.src, "d2/e2/late.txt", b"late");
    let dir = s.src.join("d2/e2");
    let now = stat_now(&dir, 0);
    // Racy: the snapshot 1 ms after the directory's mtime.
    s.edit_row("d2/e2", |r| {
        r.stat = Some(RowStat {
            snapshot_ns: now.mtime_ns + 1_000_000,
            ..now
        })
    });
    let (l, c) = s.lookup();
    assert!(!l.is_hit(), "a racy row never proves its directory");
    assert_eq!(c.dirs_read, 1, "{c:?}");
    assert_eq!(changes(&l).0, ["d2/e2/late.txt"]);
    // Just inside the slack: still read.
    s.edit_row("d2/e2", |r| {
        r.stat = Some(RowStat {
            snapshot_ns: now.mtime_ns + IN_FLIGHT_SLACK_NS,
            ..now
        })
    });
    assert_eq!(s.lookup().1.dirs_read, 1);
    // Past the slack (and past the ctime's tick): the forged row proves the directory.
    s.edit_row("d2/e2", |r| {
        r.stat = Some(RowStat {
            snapshot_ns: now.mtime_ns.max(now.ctime_ns) + IN_FLIGHT_SLACK_NS + 1,
            ..now
        })
    });
    let (l, c) = s.lookup();
    assert_eq!(c.dirs_read, 0, "{c:?}");
    assert!(
        l.is_hit(),
        "the forged row hides the file: the rule above is what stops it"
    );
}

/// A stored name that is gone under a directory whose (forged) row proves it: the proof fails
/// at the `lstat`, the directory is read instead, and the removal is a miss — never dropped.
#[test]
fn a_stored_name_gone_under_a_proven_directory_reads_it() {
    let mut s = setup();
    // f5: d0/e2.
    std::fs::remove_file(s.src.join("d0/e2/f5.txt")).unwrap();
    let dir = s.src.join("d0/e2");
    let now = stat_now(&dir, 0);
    s.edit_row("d0/e2", |r| {
        r.stat = Some(RowStat {
            snapshot_ns: now.mtime_ns.max(now.ctime_ns) + IN_FLIGHT_SLACK_NS + 1,
            ..now
        })
    });
    let (l, c) = s.lookup();
    assert!(!l.is_hit());
    assert_eq!(c.proofs_failed, 1, "{c:?}");
    assert_eq!(c.dirs_read, 1, "{c:?}");
    assert_eq!(changes(&l).1, ["d0/e2/f5.txt"]);
}

/// A directory whose entries changed within 2 s of the put is racy there, so lookups read it;
/// a hit once the slack has passed stores the directory's stat data under its later snapshot
/// (the refresh), and the next lookup reads no directory.
#[test]
fn a_racy_directory_row_is_refreshed_by_a_hit() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src);
    // A file created in d1 just before the put: d1's mtime is within the slack of the put.
    write(&src, "d1/late.txt", b"late");
    backdate_one(&src.join("d1/late.txt"), 3600);
    let changed = SystemTime::now();
    let build = build_of(tmp.path(), &src);
    let cache = open_cache(&tmp.path().join("cache.redb"));
    let mut session = cache.session(&build).unwrap();
    let l = session.lookup("app").unwrap();
    session.put(&l, &common::outputs()).unwrap();
    drop(session);
    let lookup = || {
        let mut session = cache.session(&build).unwrap();
        assert!(session.lookup("app").unwrap().is_hit());
        session.counters()
    };
    // Within the slack: read, and the refresh cannot help yet.
    let c = lookup();
    assert_eq!(c.walk.dirs_read, 1, "{:?}", c.walk);
    let slack = Duration::from_nanos(IN_FLIGHT_SLACK_NS as u64) + Duration::from_millis(100);
    if let Some(left) = slack.checked_sub(changed.elapsed().unwrap()) {
        std::thread::sleep(left);
    }
    // Past it: read once more (the stored row is still racy), and refreshed.
    let c = lookup();
    assert_eq!(c.walk.dirs_read, 1, "{:?}", c.walk);
    assert!(c.rows_refreshed >= 1, "the directory's row: {c:?}");
    let c = lookup();
    assert_eq!(c.walk.dirs_read, 0, "{:?}", c.walk);
    assert_eq!(c.rows_refreshed, 0);
}

const BIN: &str = env!("CARGO_BIN_EXE_layercache");

/// Through the binary: a settled put, then `lookup --json` of an unchanged tree reads no
/// directory; after a file is added, it reads one and exits 1 (a miss).
#[test]
fn cli_lookup_of_an_unchanged_tree_reads_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tree(&root.join("src"));
    std::fs::create_dir_all(root.join("roots/app/overlay_dirs/src")).unwrap();
    std::fs::create_dir_all(root.join("oci/blobs/sha256")).unwrap();
    let plan = json!({
        "oci_layout": "oci",
        "rootfs_dir": "roots",
        "layers": {
            "app": {
                "definition": {"run": "make"},
                "base": {"type": "scratch"},
                "overlay_dirs": [{
                    "key": "src",
                    "source": "src",
                    "rootfs_path": "roots/app/overlay_dirs/src"
                }]
            }
        }
    });
    let plan_file = root.join("plan.json");
    std::fs::write(&plan_file, serde_json::to_vec(&plan).unwrap()).unwrap();
    let content = "output of app";
    let hex = blake3::hash(content.as_bytes()).to_hex().to_string();
    std::fs::write(root.join("oci/blobs/sha256").join(&hex), content).unwrap();
    let manifests = root.join("m.json");
    let desc = json!({"tar": {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": format!("sha256:{hex}"),
        "size": content.len()
    }});
    std::fs::write(&manifests, serde_json::to_vec(&desc).unwrap()).unwrap();
    let db = root.join("cache.redb");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("LAYERCACHE_LOG", "warn")
            .output()
            .unwrap()
    };
    let (db_s, plan_s) = (db.to_str().unwrap(), plan_file.to_str().unwrap());
    let o = run(&[
        "put",
        "--db",
        db_s,
        "--plan",
        plan_s,
        "app",
        "--manifests",
        manifests.to_str().unwrap(),
        "--inputs-as-of-now",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lookup = || {
        let o = run(&["lookup", "--db", db_s, "--plan", plan_s, "app", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
        (o.status.code(), v["counters"]["walk"].clone())
    };
    let (code, walk) = lookup();
    assert_eq!(code, Some(0), "a hit");
    assert_eq!(walk["dirs_read"], 0, "{walk}");
    assert_eq!(walk["dirs_proven"], DIRS + 1, "{walk}");
    assert_eq!(walk["files_hashed"], 0, "{walk}");
    write(&root.join("src"), "d0/e0/new.txt", b"new");
    let (code, walk) = lookup();
    assert_eq!(code, Some(1), "a miss");
    assert_eq!(walk["dirs_read"], 1, "{walk}");
}
