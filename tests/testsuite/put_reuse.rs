//! The put of a build reuses what its lookup hashed: the lookup's walk log is the stat cache of
//! the put's walk, in the library (`Session::lookup` then `Session::put`) and through the binary
//! (`lookup --record FILE` then `put --from FILE`). Work is counted (files hashed), never timed;
//! every change that could hide a write between lookup and put is a case, and each is read
//! again and refused (or, when nothing compared differs, stored).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use common::*;
use filetime::FileTime;
use layercache::{Build, Cache, Error};
use serde_json::{Value, json};

const FILES: u64 = 400;

struct Setup {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    cache: Cache,
    build: Build,
}

/// A tree of `FILES` files, times set an hour back (not racy), in a temp dir.
fn tree(root: &Path) -> PathBuf {
    let src = root.join("src");
    for i in 0..FILES {
        write(
            &src,
            &format!("d{}/f{i}.txt", i % 9),
            format!("content {i}").as_bytes(),
        );
    }
    age(&src);
    src
}

/// The tree, and an empty cache with one layer `app` whose overlay dir is that tree.
fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let src = tree(tmp.path());
    let build = app_build(tmp.path(), &[("src", &src)], vec![]);
    let cache = open_cache(&tmp.path().join("cache.redb"));
    Setup {
        _tmp: tmp,
        src,
        cache,
        build,
    }
}

/// A cold lookup for a build, `between` run, then the put: (files the lookup hashed, files the
/// put hashed, the put's result).
fn lookup_then_put(
    s: &Setup,
    between: impl FnOnce(&Path),
) -> (
    u64,
    u64,
    layercache::Result<layercache::testing::schema::VersionRecord>,
) {
    let mut session = s.cache.session(&s.build).unwrap();
    let l = session.lookup("app").unwrap();
    assert!(!l.is_hit());
    let looked = session.counters().walk.files_hashed;
    between(&s.src);
    let put = session.put(&l, &outputs());
    let put_hashed = session.counters().walk.files_hashed - looked;
    (looked, put_hashed, put)
}

#[test]
fn cold_put_after_cold_lookup_hashes_nothing() {
    let s = setup();
    let (looked, put, r) = lookup_then_put(&s, |_| {});
    assert_eq!(looked, FILES);
    assert_eq!(put, 0, "the put reads no file the lookup hashed");
    r.unwrap();
    // What it stored is right: the next lookup hits without reading anything.
    let mut session = s.cache.session(&s.build).unwrap();
    assert!(session.lookup("app").unwrap().is_hit());
    assert_eq!(session.counters().walk.files_hashed, 0);
    // The lookup kept a compact log: well under 200 bytes an entry.
    let l = session.lookup("app").unwrap();
    let o = &l.observed()[0];
    assert_eq!(o.logged_entries(), FILES + 10);
    assert!(
        o.logged_bytes() < 200 * (FILES as usize + 10),
        "{}",
        o.logged_bytes()
    );
}

#[test]
fn file_changed_between_lookup_and_put_is_hashed_and_refused() {
    let s = setup();
    let (_, put, r) = lookup_then_put(&s, |src| {
        std::fs::write(src.join("d3/f3.txt"), b"changed, and longer").unwrap();
    });
    assert_eq!(put, 1, "exactly the changed file is read again");
    match r {
        Err(Error::InputsChanged { changes, .. }) => {
            let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
            assert_eq!(changes.len(), 1, "{changes:?}");
            assert!(changes[0].ends_with("d3/f3.txt"), "{changes:?}");
        }
        other => panic!("expected InputsChanged, got {other:?}"),
    }
}

/// A file the lookup saw and removed before the put: the put is refused naming exactly that
/// path (not the paths that follow it in the walk).
#[test]
fn file_removed_between_lookup_and_put_is_named_alone() {
    let s = setup();
    let (_, _, r) = lookup_then_put(&s, |src| {
        std::fs::remove_file(src.join("d3/f3.txt")).unwrap();
    });
    match r {
        Err(Error::InputsChanged { changes, .. }) => {
            let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
            // The file, and its directory (whose listing changed).
            assert!(
                changes.iter().any(|c| c.ends_with("d3/f3.txt")),
                "{changes:?}"
            );
            assert!(
                changes
                    .iter()
                    .all(|c| c.ends_with("d3/f3.txt") || c.ends_with("d3")),
                "only the removed file and its directory: {changes:?}"
            );
        }
        other => panic!("expected InputsChanged, got {other:?}"),
    }
}

/// Same size, mtime set back to what the lookup saw: only the ctime shows the write. The put
/// must not reuse the lookup's digest: it reads the file, sees other content, and refuses.
#[test]
fn same_size_rewrite_with_mtime_restored_between_lookup_and_put_is_caught() {
    let s = setup();
    let (_, put, r) = lookup_then_put(&s, |src| {
        let f = src.join("d4/f4.txt");
        let before = std::fs::metadata(&f).unwrap();
        std::fs::write(&f, b"CONTENT 4").unwrap();
        filetime::set_file_mtime(&f, FileTime::from_last_modification_time(&before)).unwrap();
        let after = std::fs::metadata(&f).unwrap();
        assert_eq!(after.len(), before.len());
    });
    assert_eq!(put, 1);
    match r {
        Err(Error::InputsChanged { changes, .. }) => {
            let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
            assert!(changes[0].ends_with("d4/f4.txt"), "{changes:?}")
        }
        other => panic!("expected InputsChanged, got {other:?}"),
    }
}

/// Replaced by another file (a new inode) with the same bytes, size and times: read again, and
/// since nothing compared differs, the put stores it.
#[test]
fn file_replaced_by_an_identical_copy_is_hashed_and_stored() {
    let s = setup();
    let (_, put, r) = lookup_then_put(&s, |src| {
        let f = src.join("d5/f5.txt");
        let tmp = src.join("d5/f5.tmp");
        let m = std::fs::metadata(&f).unwrap();
        std::fs::copy(&f, &tmp).unwrap();
        let t = FileTime::from_last_modification_time(&m);
        filetime::set_file_times(&tmp, t, t).unwrap();
        std::fs::rename(&tmp, &f).unwrap();
    });
    assert_eq!(put, 1);
    r.unwrap();
}

/// A file whose mtime is at or after the lookup's snapshot (here: in the future) is racy: the
/// lookup's digest of it cannot be trusted by stat, so the put reads it again.
#[test]
fn racy_file_is_hashed_again_by_the_put() {
    let s = setup();
    let f = s.src.join("d6/f6.txt");
    let future = FileTime::from_system_time(SystemTime::now() + Duration::from_secs(3600));
    filetime::set_file_mtime(&f, future).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let (looked, put, r) = lookup_then_put(&s, |_| {});
    assert_eq!(looked, FILES);
    assert_eq!(put, 1, "only the racy file is read again");
    r.unwrap();
}

// ---- through the binary: lookup --record, then put --from

#[track_caller]
fn json_of(o: &Output, code: i32) -> Value {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A plan of one layer importing the tree, and its output.
fn cli_setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    output_layout(&dir.path().join("oci"));
    std::fs::write(
        dir.path().join("m.json"),
        serde_json::to_string(&outputs()).unwrap(),
    )
    .unwrap();
    let plan = json!({
        "oci_layout": "oci",
        "layers": {"app": {
            "definition": {"run": "make"},
            "base": {"type": "scratch"},
            "imports": [{"key": "src", "path": "src"}]
        }}
    });
    std::fs::write(dir.path().join("plan.json"), plan.to_string()).unwrap();
    dir
}

fn put_from(dir: &Path) -> Output {
    let m = dir.join("m.json");
    let rec = dir.join("rec.json");
    run_plan(
        "warn",
        dir,
        &[
            "put",
            "app",
            "--json",
            "--manifests",
            m.to_str().unwrap(),
            "--from",
            rec.to_str().unwrap(),
        ],
    )
}

fn lookup_record(dir: &Path) -> Value {
    let rec = dir.join("rec.json");
    json_of(
        &run_plan(
            "warn",
            dir,
            &["lookup", "app", "--json", "--record", rec.to_str().unwrap()],
        ),
        1,
    )
}

/// `lookup --record` hashes every file once; `put --from` after it hashes none, and what it
/// stored hits without reading anything.
#[test]
fn cli_put_from_a_record_hashes_nothing_the_lookup_hashed() {
    let dir = cli_setup();
    let d = dir.path();
    let l = lookup_record(d);
    assert_eq!(l["counters"]["walk"]["files_hashed"], FILES, "{l}");
    let p = json_of(&put_from(d), 0);
    assert_eq!(p["counters"]["walk"]["files_hashed"], 0, "{p}");
    let l = json_of(&run_plan("warn", d, &["lookup", "app", "--json"]), 0);
    assert_eq!(l["counters"]["walk"]["files_hashed"], 0, "{l}");
}

/// Through the binary too: a same-size rewrite with the mtime set back, between the lookup and
/// the put, is read again by the put and refused, naming the file.
#[test]
fn cli_same_size_rewrite_with_mtime_restored_is_read_and_refused() {
    let dir = cli_setup();
    let d = dir.path();
    lookup_record(d);
    let f = d.join("src/d2/f2.txt");
    let before = std::fs::metadata(&f).unwrap();
    std::fs::write(&f, b"CONTENT 2").unwrap();
    filetime::set_file_mtime(&f, FileTime::from_last_modification_time(&before)).unwrap();
    let o = put_from(d);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("d2/f2.txt"), "{err}");
    // Nothing was stored: a lookup still misses.
    assert_eq!(
        run_plan("warn", d, &["lookup", "app"]).status.code(),
        Some(1)
    );
}

/// A damaged walk log (its checksum no longer matches) makes the whole record refused: the
/// record's MAC under the cache's secret covers the log, so a put never uses a record that
/// changed after its lookup wrote it (exit 2, nothing recorded), and says to look up again.
#[test]
fn cli_damaged_walk_log_is_refused() {
    let dir = cli_setup();
    let d = dir.path();
    lookup_record(d);
    let rec_path = d.join("rec.json");
    let mut rec: Value = serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    let walk = &mut rec["sources"][0]["walk"];
    assert_eq!(walk["entries"], FILES + 10, "{walk}");
    let log = walk["log"].as_str().unwrap().to_string();
    // Another base64 letter in the middle: decodes, but not to what the checksum covers.
    let mid = log.len() / 2;
    let swapped = if &log[mid..mid + 1] == "A" { "B" } else { "A" };
    walk["log"] = Value::String(format!("{}{swapped}{}", &log[..mid], &log[mid + 1..]));
    std::fs::write(&rec_path, serde_json::to_vec(&rec).unwrap()).unwrap();
    let o = put_from(d);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("was not made by a lookup of the cache")
            && err.contains("look the layer up again"),
        "{err}"
    );
    // Nothing was recorded: the layer still misses.
    let o = run_plan("warn", d, &["lookup", "app"]);
    assert_eq!(o.status.code(), Some(1));
}
