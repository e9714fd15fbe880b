//! Crash points, placed exactly (instead of SIGKILL at random moments): a real child process
//! (`examples/crash_child.rs`, built with the `failpoints` feature) aborts at each named point of
//! a put, a stat refresh and a migration (`FAILPOINTS=NAME=return`; `std::process::abort`, no
//! unwinding, as a crash), and for each point the test asserts the outcome: the old state at
//! every point before the commit, the new state after it — never a mix (every entry agrees with
//! its rows: `check` is clean) — and nothing committed before is lost. The points are the
//! library's own lists (`layercache::testing::failpoint`), so a point added there is tested here, and a
//! child that does not die of SIGABRT at a point (the point is not on the path) fails the test.

use crate::common;
use crate::layer;
use layer::build;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use layercache::testing::Store;
use layercache::testing::failpoint::{MIGRATE_POINTS, PUT_POINTS, REFRESH_POINTS, SWITCH_POINTS};
use layercache::testing::schema::VersionRecord;
use layercache::{Build, Cache, CacheConfig, MissReason, SCHEMA_VERSION, inspect};

/// The crash_child example, built with the `failpoints` feature beside this test (always
/// rebuilt: cargo makes it a no-op when fresh).
fn child_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--example",
        "crash_child",
        "--features",
        "failpoints",
        "--manifest-path",
    ])
    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    assert!(cmd.status().unwrap().success(), "cannot build crash_child");
    let child = profile_dir.join("examples").join("crash_child");
    assert!(child.exists(), "{} missing", child.display());
    child
}

/// Runs the child with `args`, aborting at `point` (if any). With a point, asserts that the
/// child died of SIGABRT there; without, that it succeeded. Returns its stdout.
fn run_child(child: &Path, args: &[&std::ffi::OsStr], point: Option<&str>) -> String {
    let mut cmd = Command::new(child);
    cmd.args(args);
    match point {
        Some(p) => cmd.env("FAILPOINTS", format!("{p}=return")),
        None => cmd.env_remove("FAILPOINTS"),
    };
    // SAFETY: setrlimit only, between fork and exec: no core file for the deliberate aborts.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match point {
        Some(p) => assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "the child did not abort at {p} (not on its path?): {:?}\n{stdout}{stderr}",
            out.status
        ),
        None => assert!(out.status.success(), "{:?}\n{stdout}{stderr}", out.status),
    }
    stdout
}

/// The cache as the child opens it: its OCI layout is `<dir>/oci`, holding the one output blob
/// (`examples/crash_child.rs`).
fn open(db: &Path) -> Cache {
    let layout = common::output_layout(&db.parent().unwrap().join("oci"));
    Cache::open(CacheConfig {
        db: db.to_path_buf(),
        oci_layout: Some(layout),
        ..Default::default()
    })
    .unwrap()
}

fn put(cache: &Cache, build: &Build, layer: &str) -> VersionRecord {
    let mut s = cache.session(build).unwrap();
    let lk = s.lookup(layer).unwrap();
    s.put(&lk, &common::outputs()).unwrap()
}

fn age(root: &Path, secs: u64) {
    let t = filetime::FileTime::from_system_time(SystemTime::now() - Duration::from_secs(secs));
    for e in walkdir::WalkDir::new(root) {
        filetime::set_symlink_file_times(e.unwrap().path(), t, t).unwrap();
    }
}

/// What holds after any crash: redb's own check passes, every entry agrees with its rows
/// (`check` is clean, so no entry is mixed with another put's rows), and the layer `keep`,
/// committed before, is as it was.
fn verify_consistent(db: &Path, keep: &VersionRecord, point: &str) {
    let mut store = Store::open(db).unwrap_or_else(|e| panic!("{point}: open: {e}"));
    assert!(
        store.check_integrity().unwrap().unwrap(),
        "{point}: redb's integrity check repaired the file"
    );
    drop(store);
    let report = inspect::check(db).unwrap();
    assert!(
        report.is_clean(),
        "{point}: an entry and its rows disagree: {:?}",
        report.problems
    );
    let cache = open(db);
    assert_eq!(
        cache.entry("keep").unwrap().as_ref(),
        Some(keep),
        "{point}: a committed layer changed"
    );
}

/// A cache with layer `keep` and layer `l` (generation 1) put from `tree`; then `tree` is
/// changed (a file edited, one added, one removed). Returns (keep, l) as committed.
fn committed_then_changed(dir: &Path, db: &Path, tree: &Path) -> (VersionRecord, VersionRecord) {
    for i in 0..20 {
        common::write(tree, &format!("sub/f{i:02}"), format!("v1 {i}").as_bytes());
        common::write(&dir.join("keep"), &format!("k{i}"), b"keep");
    }
    let cache = open(db);
    let mut keep_build = build(&dir.join("keep"), 0);
    let l = keep_build.layers.remove("l").unwrap();
    keep_build.add("keep", l);
    let keep = put(&cache, &keep_build, "keep");
    let old = put(&cache, &build(tree, 1), "l");
    drop(cache);
    common::write(tree, "sub/f03", b"v2 edited");
    common::write(tree, "sub/new", b"v2 added");
    std::fs::remove_file(tree.join("sub/f07")).unwrap();
    (keep, old)
}

/// A put aborted at each of its crash points: before the commit, layer `l` is exactly the old
/// entry with its old rows (a lookup of the old build misses only because the tree changed);
/// after the commit, the new entry with its new rows (a lookup of the new build hits). Either
/// way every entry agrees with its rows and `keep` is intact. A control run without a point
/// commits.
#[test]
fn a_put_aborted_at_each_crash_point_leaves_the_old_entry_or_the_new_never_a_mix() {
    let child = child_exe();
    for point in PUT_POINTS.iter().map(|p| Some(*p)).chain([None]) {
        let name = point.unwrap_or("no point");
        let tmp = tempfile::tempdir().unwrap();
        let (db, tree) = (tmp.path().join("c.redb"), tmp.path().join("tree"));
        let (keep, old) = committed_then_changed(tmp.path(), &db, &tree);
        let out = run_child(
            &child,
            &[
                "put".as_ref(),
                db.as_os_str(),
                tree.as_os_str(),
                "2".as_ref(),
            ],
            point,
        );
        verify_consistent(&db, &keep, name);
        let committed = point.is_none_or(|p| p.ends_with("after_commit"));
        let cache = open(&db);
        let now = cache.entry("l").unwrap().expect("layer l lost");
        if committed {
            assert_eq!(point.is_none(), out.contains("committed"), "{name}: {out}");
            assert_eq!(now.definition_json, br#"{"gen":2}"#, "{name}");
            let b = build(&tree, 2);
            let mut s = cache.session(&b).unwrap();
            let lk = s.lookup("l").unwrap();
            assert!(lk.is_hit(), "{name}: {:?}", lk.reasons());
        } else {
            assert_eq!(now, old, "{name}: the entry changed without a commit");
            let b = build(&tree, 1);
            let mut s = cache.session(&b).unwrap();
            let lk = s.lookup("l").unwrap();
            assert!(
                matches!(lk.reasons(), [MissReason::ImportContentChanged { .. }]),
                "{name}: the old entry must miss on the changed tree, and only for that: {:?}",
                lk.reasons()
            );
            assert_eq!(
                layercache::testing::store_of(&cache)
                    .row_count("l", "import:src")
                    .unwrap(),
                old.imports[0].rows,
                "{name}"
            );
        }
    }
}

/// A stat refresh (after a hit on a tree whose files were all touched) aborted at each of its
/// crash points: before the commit no row has new stat data (the next lookup reads every file
/// again), after it every row has (the next lookup reads none); the entry never changes, and
/// it still hits.
#[test]
fn a_refresh_aborted_at_each_crash_point_refreshes_all_rows_or_none() {
    let child = child_exe();
    for point in REFRESH_POINTS {
        let tmp = tempfile::tempdir().unwrap();
        let (db, tree) = (tmp.path().join("c.redb"), tmp.path().join("tree"));
        let (keep, old) = committed_then_changed(tmp.path(), &db, &tree);
        // The changed tree, put (generation 2), aged and settled: then every file touched, so
        // a hit hashes each file and refreshes each row.
        age(&tree, 3600);
        std::thread::sleep(Duration::from_millis(30));
        let cache = open(&db);
        let entry = put(&cache, &build(&tree, 2), "l");
        assert_ne!(entry, old);
        drop(cache);
        age(&tree, 7200);
        std::thread::sleep(Duration::from_millis(30));
        run_child(
            &child,
            &[
                "lookup".as_ref(),
                db.as_os_str(),
                tree.as_os_str(),
                "2".as_ref(),
            ],
            Some(point),
        );
        verify_consistent(&db, &keep, point);
        let cache = open(&db);
        assert_eq!(cache.entry("l").unwrap().as_ref(), Some(&entry), "{point}");
        let b = build(&tree, 2);
        let mut s = cache.session(&b).unwrap();
        assert!(s.lookup("l").unwrap().is_hit(), "{point}");
        let files = 20; // 20 written, one added, one removed
        let c = s.counters();
        if point.ends_with("after_commit") {
            assert_eq!(
                (c.walk.files_hashed, c.rows_refreshed),
                (0, 0),
                "{point}: {c:?}"
            );
        } else {
            assert_eq!(c.walk.files_hashed, files, "{point}: {c:?}");
            assert!(c.rows_refreshed >= files, "{point}: {c:?}");
        }
    }
}

/// Layer `l` (generation 1) with two stored versions: A, put from `tree` as
/// [`committed_then_changed`] wrote it, and B, put after the change and current; then the
/// change is undone, so a lookup of `tree` hits A, not the current version, and switches the
/// layer to it. Returns (keep, A, B).
fn two_versions_back_on_a(
    dir: &Path,
    db: &Path,
    tree: &Path,
) -> (VersionRecord, VersionRecord, VersionRecord) {
    let (keep, a) = committed_then_changed(dir, db, tree);
    let cache = open(db);
    let b = put(&cache, &build(tree, 1), "l");
    assert_ne!(a.input_digest, b.input_digest);
    drop(cache);
    common::write(tree, "sub/f03", b"v1 3");
    common::write(tree, "sub/f07", b"v1 7");
    std::fs::remove_file(tree.join("sub/new")).unwrap();
    (keep, a, b)
}

/// A version switch (a hit on stored version A while B is current) aborted at each of its
/// crash points: before the commit the layer is still B over B's rows, after it A over A's
/// rows — never a pointer to one version over the rows of another (`check` is clean); either
/// way the next lookup of A's tree hits with A's record, switching the three rows that differ
/// only if the aborted switch did not, and `keep` is intact.
#[test]
fn a_version_switch_aborted_at_each_crash_point_leaves_the_old_version_or_the_new() {
    let child = child_exe();
    for point in SWITCH_POINTS {
        let tmp = tempfile::tempdir().unwrap();
        let (db, tree) = (tmp.path().join("c.redb"), tmp.path().join("tree"));
        let (keep, a, b) = two_versions_back_on_a(tmp.path(), &db, &tree);
        run_child(
            &child,
            &[
                "lookup".as_ref(),
                db.as_os_str(),
                tree.as_os_str(),
                "1".as_ref(),
            ],
            Some(point),
        );
        verify_consistent(&db, &keep, point);
        let committed = point.ends_with("after_commit");
        let cache = open(&db);
        let current = cache.entry("l").unwrap().expect("layer l lost");
        assert_eq!(current, if committed { a.clone() } else { b }, "{point}");
        let a_build = build(&tree, 1);
        let mut s = cache.session(&a_build).unwrap();
        let lk = s.lookup("l").unwrap();
        assert!(lk.is_hit(), "{point}: {:?}", lk.reasons());
        assert_eq!(lk.entry().unwrap().record, a, "{point}");
        let c = s.counters();
        assert_eq!(
            c.rows_switched,
            if committed { 0 } else { 3 },
            "{point}: {c:?}"
        );
    }
}

/// A version switch never overwrites a put committed after its lookup read the layer. The
/// child's lookup hits A (B current) and pauses where the switch would take the write lock;
/// meanwhile B is put again, from a copy of B's tree elsewhere: the same inputs, so the same
/// version, and only the pointer's generation tells that the rows were rewritten. The child
/// then goes on (still a hit) and must leave the layer on B, as the later put left it.
#[test]
fn a_version_switch_never_overwrites_a_put_committed_after_its_lookup_read_the_layer() {
    let child = child_exe();
    let tmp = tempfile::tempdir().unwrap();
    let (db, tree) = (tmp.path().join("c.redb"), tmp.path().join("tree"));
    let (keep, _a, b) = two_versions_back_on_a(tmp.path(), &db, &tree);
    let b_tree = tmp.path().join("b-tree");
    for i in (0..20).filter(|i| *i != 7) {
        let content = if i == 3 {
            "v2 edited".to_string()
        } else {
            format!("v1 {i}")
        };
        common::write(&b_tree, &format!("sub/f{i:02}"), content.as_bytes());
    }
    common::write(&b_tree, "sub/new", b"v2 added");

    let mut proc = Command::new(&child)
        .args([
            "lookup".as_ref(),
            db.as_os_str(),
            tree.as_os_str(),
            "1".as_ref(),
        ])
        .env_remove("FAILPOINTS")
        .env("PAUSE_AT", "switch::before_write")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(proc.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "paused at switch::before_write");

    let cache = open(&db);
    let again = put(&cache, &build(&b_tree, 1), "l");
    assert_eq!(again, b, "the same inputs and outputs: the same version");
    drop(cache);

    proc.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = proc.wait().unwrap();
    assert!(status.success(), "{status:?}: {rest}");
    assert_eq!(rest.trim(), "hit", "the hit stands");
    verify_consistent(&db, &keep, "after the race");
    assert_eq!(
        open(&db).entry("l").unwrap().expect("layer l lost"),
        b,
        "the switch overwrote a put committed after its lookup read the layer"
    );
}

/// A migration aborted at each of its crash points (between row batches — in the large fixture,
/// after the first of several — before the version record, around the commit): before the
/// commit the file is exactly v1 (every row a v1 row, none lost), after it exactly the current
/// version (every step runs in the one transaction, so never v2 in between); the
/// library then opens it at the current version.
#[test]
fn a_migration_aborted_at_each_crash_point_leaves_v1_or_the_current_version_never_between() {
    let child = child_exe();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let runs = MIGRATE_POINTS
        .iter()
        .map(|p| (*p, "v1-small.redb"))
        .chain([("migrate::between_batches", "v1-large.redb")]);
    for (point, fixture) in runs {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join(fixture);
        std::fs::copy(fixtures.join(fixture), &db).unwrap();
        let (v, rows) = common::raw_state(&db);
        assert_eq!(v, 1);
        run_child(&child, &["open".as_ref(), db.as_os_str()], Some(point));
        let expected = if point.ends_with("after_commit") {
            SCHEMA_VERSION
        } else {
            1
        };
        assert_eq!(
            common::raw_state(&db),
            (expected, rows),
            "{point} ({fixture})"
        );
        let store = Store::open(&db).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        drop(store);
        assert_eq!(
            common::raw_state(&db),
            (SCHEMA_VERSION, rows),
            "{point} ({fixture})"
        );
    }
}
