//! A put writes only the rows that differ from the stored ones (#22): the walk is merged with
//! the rows of the version it replaces, and only paths added, changed or gone are written.
//! Work is counted (rows written, `SessionCounters::rows_put`; bytes of the file), never timed;
//! what is stored afterwards is compared, row by row, with what a put into an empty cache (a
//! full write) stores: equal in every field, except that a row left alone keeps the snapshot
//! time of the walk that wrote it — and then its stat data is not racy, so it vouches for the
//! file exactly as the new one would.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{app_build, backdate, backdate_one, open_cache, outputs, write};
use layercache::testing::schema::{Row, RowStat};
use layercache::testing::{codec, tree::fastpath};
use layercache::{Build, Cache, Import};
use redb::{ReadableDatabase, ReadableTable};

/// Files of the big tree: 1% of them is 50.
const FILES: usize = 5_000;
/// Directories they are spread over.
const DIRS: usize = 50;

/// `files` files of a few dozen bytes in `DIRS` directories under `root`, an hour old.
fn tree(root: &Path, files: usize) {
    for i in 0..files {
        write(
            root,
            &format!("d{}/f{i}.txt", i % DIRS),
            format!("content of file number {i}").as_bytes(),
        );
    }
    backdate(root, 3600);
}

/// A layer `app` with the given overlay dir sources (keys `s0`, `s1`, …) and one import.
fn build_of(dir: &Path, sources: &[&Path], import: &Path) -> Build {
    let keys: Vec<String> = (0..sources.len()).map(|i| format!("s{i}")).collect();
    let overlays: Vec<(&str, &Path)> = keys
        .iter()
        .map(String::as_str)
        .zip(sources.iter().copied())
        .collect();
    let pkg = Import {
        key: "pkg".into(),
        path: import.to_path_buf(),
        dest: None,
    };
    app_build(dir, &overlays, vec![pkg])
}

/// Lookup (a miss) and put of `app`: the rows the put wrote.
fn put(cache: &Cache, build: &Build) -> u64 {
    let mut s = cache.session(build).unwrap();
    let l = s.lookup("app").unwrap();
    assert!(!l.is_hit(), "{:?}", l.reasons());
    s.put(&l, &outputs()).unwrap();
    let rows = s.counters().rows_put;
    // What was stored is right: the next lookup hits, reading no file.
    let mut s = cache.session(build).unwrap();
    assert!(s.lookup("app").unwrap().is_hit());
    assert_eq!(s.counters().walk.files_hashed, 0);
    rows
}

type Rows = BTreeMap<(String, String, Vec<u8>), Row>;

/// Every row of the rows table, decoded: key (layer, source, path) and row.
fn all_rows(db: &Path) -> Rows {
    let d = redb::Builder::new()
        .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
        .open_read_only(db)
        .unwrap();
    let txn = d.begin_read().unwrap();
    let t = txn.open_table(layercache::testing::schema::ROWS).unwrap();
    t.iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            let (l, s, p) = k.value();
            let row = codec::decode::<Row, { codec::ROW_LIMIT }>(v.value()).unwrap();
            ((l.to_string(), s.to_string(), p.to_vec()), row)
        })
        .collect()
}

/// `merged` is what the full write `fresh` stored: the same paths, every row equal — but for
/// the snapshot time of a row the put left alone, whose stat data then vouches (not racy).
#[track_caller]
fn assert_same_rows(merged: &Rows, fresh: &Rows) {
    assert_eq!(
        merged.keys().collect::<Vec<_>>(),
        fresh.keys().collect::<Vec<_>>()
    );
    let mut kept = 0;
    for ((k, m), f) in merged.iter().zip(fresh.values()) {
        let (ms, fs) = (m.stat.unwrap(), f.stat.unwrap());
        if ms.snapshot_ns != fs.snapshot_ns {
            kept += 1;
            assert!(
                !fastpath::content_is_racy(&ms) && !fastpath::metadata_is_racy(&ms),
                "{k:?}: a racy row was left"
            );
        }
        let mut m = m.clone();
        m.stat = Some(RowStat {
            snapshot_ns: fs.snapshot_ns,
            ..ms
        });
        assert_eq!(&m, f, "{k:?}");
    }
    assert!(kept > 0, "no row was left alone");
}

/// The rows a put into an empty cache stores for `build` (every row written).
fn full_write(dir: &Path, build: &Build) -> (Rows, u64) {
    let db = dir.join("fresh.redb");
    let cache = open_cache(&db);
    let written = put(&cache, build);
    drop(cache);
    let rows = all_rows(&db);
    std::fs::remove_file(&db).unwrap();
    (rows, written)
}

/// Changes 1% of the tree's files: 30 rewritten in place (other content, other size), 10
/// removed, 10 added, the times of what changed set back again (nothing racy); returns the
/// directories that gained or lost an entry.
fn change_one_percent(src: &Path) -> usize {
    let mut dirs = std::collections::BTreeSet::new();
    for i in (0..FILES).step_by(FILES / 30).take(30) {
        let f = src.join(format!("d{}/f{i}.txt", i % DIRS));
        std::fs::write(&f, format!("changed {i}")).unwrap();
        backdate_one(&f, 7200);
    }
    for i in (7..FILES).step_by(FILES / 10).take(10) {
        std::fs::remove_file(src.join(format!("d{}/f{i}.txt", i % DIRS))).unwrap();
        dirs.insert(i % DIRS);
    }
    for i in 0..10 {
        let f = write(src, &format!("d{}/new{i}.txt", i * 3), b"a new file");
        backdate_one(&f, 7200);
        dirs.insert(i * 3);
    }
    for d in &dirs {
        backdate_one(&src.join(format!("d{d}")), 7200);
    }
    std::thread::sleep(Duration::from_millis(50));
    dirs.len()
}

#[test]
fn a_one_percent_change_writes_one_percent_of_the_rows_and_stores_what_a_full_write_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = dir.join("src");
    tree(&src, FILES);
    let pkg = dir.join("pkg");
    tree(&pkg, 20);
    std::thread::sleep(Duration::from_millis(50));
    let build = build_of(dir, &[&src], &pkg);
    let db = dir.join("cache.redb");
    let cache = open_cache(&db);

    // The first put writes every row: the files, their directories, the two roots.
    let total = (FILES + DIRS + 1 + 20 + DIRS.min(20) + 1) as u64;
    assert_eq!(put(&cache, &build), total);
    let before = std::fs::metadata(&db).unwrap().len();

    let touched_dirs = change_one_percent(&src) as u64;
    let written = put(&cache, &build);
    let after = std::fs::metadata(&db).unwrap().len();
    drop(cache);
    // 50 files changed (30 rewritten, 10 gone, 10 new); a directory that gained or lost an
    // entry has new stat data, so its row is rewritten too. Nothing else is written.
    assert!(
        (50..=50 + touched_dirs).contains(&written),
        "{written} rows written for 50 changed files in {touched_dirs} directories"
    );
    // The file grows by at most a tenth (the pages the changed rows are on), not by the size
    // of the tree again.
    let changed_rows_bytes = written * 200;
    assert!(
        after as f64 <= 1.1 * before as f64 + changed_rows_bytes as f64,
        "{before} -> {after} bytes"
    );
    eprintln!("database: {before} -> {after} bytes; {written} of {total} rows written");

    // What a full write of the same trees stores.
    let (fresh, fresh_written) = full_write(dir, &build);
    assert_eq!(fresh_written, total - 10 + 10);
    assert_same_rows(&all_rows(&db), &fresh);
}

#[test]
fn a_source_dropped_or_emptied_leaves_exactly_the_rows_of_a_full_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (a, b) = (dir.join("a"), dir.join("b"));
    tree(&a, 40);
    tree(&b, 40);
    let pkg = dir.join("pkg");
    tree(&pkg, 5);
    std::thread::sleep(Duration::from_millis(50));
    let db = dir.join("cache.redb");
    let cache = open_cache(&db);
    put(&cache, &build_of(dir, &[&a, &b], &pkg));

    // The layer loses its second overlay dir, and the first one loses every file but one.
    let one = build_of(dir, &[&a], &pkg);
    let keep = PathBuf::from("d0/f0.txt");
    for e in walkdir::WalkDir::new(&a).min_depth(1).contents_first(true) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(&a).unwrap();
        if e.file_type().is_file() && rel != keep {
            std::fs::remove_file(e.path()).unwrap();
        } else if e.file_type().is_dir() && rel != Path::new("d0") {
            std::fs::remove_dir(e.path()).unwrap();
        }
    }
    backdate(&a, 7200);
    std::thread::sleep(Duration::from_millis(50));
    let written = put(&cache, &one);
    drop(cache);
    // Removed: 39 files and 39 of the 40 directories of `a`; the rows of `b` go by range.
    assert!(written >= 39 + 39, "{written}");
    let (fresh, _) = full_write(dir, &one);
    let merged = all_rows(&db);
    assert!(
        merged.keys().all(|(_, s, _)| !s.ends_with(":s1")),
        "rows of the dropped source are left"
    );
    assert_same_rows(&merged, &fresh);
}
