//! The lookup pipeline (read state → observe → decide → apply, issue 21), through the library on
//! real trees: which sources a lookup walks when nothing can hit.

use std::path::PathBuf;

use crate::common;

use common::write;
use layercache::{Base, Build, LayerInputs, LookupMode, MissReason, OverlayDir};
use serde_json::json;

/// A layer never put, in a question-only mode (`CHECK`, `VERIFY`): no stored version can
/// match and nothing is to be observed for a put, so no tree is walked — a `VERIFY` lookup
/// explains, but there is no current version to explain against.
#[test]
fn a_lookup_of_a_layer_never_put_walks_nothing_unless_asked_to_observe() {
    let w = common::Workspace::new();
    write(&w.p("src"), "a", b"1");
    write(&w.p("src"), "d/b", b"2");
    let build = app_build(&w);
    let cache = w.cache();
    let mut s = cache.session(&build).unwrap();
    for mode in [LookupMode::CHECK, LookupMode::VERIFY] {
        let l = s.lookup_with("app", mode).unwrap();
        assert!(
            matches!(l.reasons(), [MissReason::NotCached]),
            "{mode:?}: {:?}",
            l.reasons()
        );
        assert_eq!(
            s.counters().walk.entries_walked,
            0,
            "{mode:?}: nothing walked"
        );
    }
    // A lookup for a build observes every source, for the put: root, a, d, d/b.
    let _ = s.lookup("app").unwrap();
    assert_eq!(s.counters().walk.entries_walked, 4, "{:?}", s.counters());
}

/// A workspace with an output layout and the files `files` (path, content) in `src`.
fn workspace_with(files: &[(&str, &[u8])]) -> common::Workspace {
    let w = common::Workspace::new();
    common::output_layout(&w.p("oci"));
    for (path, content) in files {
        write(&w.p("src"), path, content);
    }
    w
}

/// A build with the one layer `app` (scratch, overlay dir `src` at `w/src`).
fn app_build(w: &common::Workspace) -> Build {
    let mut build = Build::new();
    build.add("app", layer(w, "app", Base::Scratch, "src", w.p("src")));
    build
}

/// A layer `name` on `base` with the one overlay dir `key` from `source`.
fn layer(w: &common::Workspace, name: &str, base: Base, key: &str, source: PathBuf) -> LayerInputs {
    LayerInputs {
        definition: json!({ "run": name }),
        base,
        overlay_dirs: vec![OverlayDir {
            key: key.into(),
            source,
            rootfs_path: w.p(&format!("roots/{name}/overlay_dirs/{key}")),
        }],
        source_date_epoch: Some(1),
        ..Default::default()
    }
}

/// Looks `app` up for a build and puts it with the test outputs.
fn put_app(cache: &layercache::Cache, build: &Build) {
    let mut s = cache.session(build).unwrap();
    let l = s.lookup("app").unwrap();
    s.put(&l, &common::outputs()).unwrap();
}

/// `SessionCounters::entries_read` counts the stored versions a lookup decoded: one, then two
/// after a second version was put.
#[test]
fn a_lookup_counts_the_versions_it_decodes() {
    let w = workspace_with(&[("a", b"1")]);
    let build = app_build(&w);
    let cache = w.cache();
    put_app(&cache, &build);
    let mut s = cache.session(&build).unwrap();
    assert!(s.lookup("app").unwrap().is_hit());
    assert_eq!(s.counters().entries_read, 1, "{:?}", s.counters());
    write(&w.p("src"), "a", b"2");
    put_app(&cache, &build);
    let mut s = cache.session(&build).unwrap();
    assert!(s.lookup("app").unwrap().is_hit());
    assert_eq!(s.counters().entries_read, 2, "{:?}", s.counters());
}

/// A lookup that found the stored rows damaged says so in its lookup record (`"damaged":
/// true`), so a `put --from` in another process takes no digest from those rows; an undamaged
/// lookup says `false`.
#[test]
fn a_lookup_that_found_damaged_rows_says_so_in_its_record() {
    let w = workspace_with(&[("a", b"1"), ("d/b", b"2")]);
    let build = app_build(&w);
    {
        let cache = w.cache();
        put_app(&cache, &build);
        let (reasons, damaged) = damaged_in_record(&w, &cache, &build, "sound.json");
        assert!(reasons.is_empty(), "a hit: {reasons:?}");
        assert_eq!(damaged, json!(false));
    }
    plant_garbage(&w, b"a");
    let cache = w.cache();
    let (reasons, damaged) = damaged_in_record(&w, &cache, &build, "damaged.json");
    assert!(
        matches!(reasons[..], [MissReason::DamagedEntry { .. }]),
        "{reasons:?}"
    );
    assert_eq!(damaged, json!(true));
}

/// Garbage in app's row of `key` (source `overlay:src`), behind the cache's back.
fn plant_garbage(w: &common::Workspace, key: &[u8]) {
    common::plant_garbage(&w.p("cache.redb"), "app", "overlay:src", key);
}

/// A lookup of app: its reasons, and the `damaged` field of its lookup record (written to
/// `name` in the workspace).
fn damaged_in_record(
    w: &common::Workspace,
    cache: &layercache::Cache,
    build: &Build,
    name: &str,
) -> (Vec<MissReason>, serde_json::Value) {
    let mut s = cache.session(build).unwrap();
    let l = s.lookup("app").unwrap();
    let path = w.p(name);
    l.record().unwrap().write(&path).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    (l.reasons().to_vec(), v["damaged"].clone())
}

/// A damaged row deep in an old tree — under directories proven by their stat, whose stored
/// rows the walk reads ahead of the diff — still reaches the diff as damage: the lookup says
/// `DamagedEntry` and its record `"damaged": true`, not that the file is new.
#[test]
fn a_damaged_row_the_walk_reads_first_is_damage_in_the_diff() {
    let w = common::Workspace::new();
    common::output_layout(&w.p("oci"));
    for i in 0..40 {
        write(&w.p("src"), &format!("d/e/f/{i:02}"), b"x");
        write(&w.p("src"), &format!("g/{i:02}"), b"y");
    }
    common::age(&w.p("src"));
    let build = app_build(&w);
    put_app(&w.cache(), &build);
    plant_garbage(&w, b"d/e/f/17");
    let (reasons, damaged) = damaged_in_record(&w, &w.cache(), &build, "record.json");
    assert!(
        reasons
            .iter()
            .any(|r| matches!(r, MissReason::DamagedEntry { .. })),
        "{reasons:?}"
    );
    assert_eq!(damaged, json!(true));
}

/// The lookup record of a layer on a built base carries the base's proof (its layer, version
/// and pointer as this build saw them) once the base was put in the same session, so a
/// `put --from` in another process checks the base's pointer instead of walking the base again.
#[test]
fn the_record_of_a_layer_on_a_built_base_carries_the_bases_proof() {
    let w = workspace_with(&[("a", b"1")]);
    write(&w.p("top"), "b", b"2");
    let mut build = app_build(&w);
    let top = Base::Built {
        layer: "app".into(),
    };
    build.add("top", layer(&w, "top", top, "top", w.p("top")));
    let cache = w.cache();
    let mut s = cache.session(&build).unwrap();
    let app = s.lookup("app").unwrap();
    s.put(&app, &common::outputs()).unwrap();
    let top = s.lookup("top").unwrap();
    let path = w.p("top.json");
    top.record().unwrap().write(&path).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["base"]["layer"], json!("app"), "{v}");
    assert!(v["base"]["entry_digest"].is_string(), "{v}");
}

/// A source whose path cannot be examined for another reason than being gone (here a symlink
/// loop) is an error naming the path, not a "source missing" miss that hides the cause.
#[test]
fn a_source_path_that_cannot_be_examined_is_an_error_naming_it() {
    let w = common::Workspace::new();
    common::output_layout(&w.p("oci"));
    std::fs::create_dir_all(w.p("loop")).unwrap();
    std::os::unix::fs::symlink(w.p("loop/b"), w.p("loop/a")).unwrap();
    std::os::unix::fs::symlink(w.p("loop/a"), w.p("loop/b")).unwrap();
    let mut build = Build::new();
    build.add("app", layer(&w, "app", Base::Scratch, "src", w.p("loop/a")));
    let cache = w.cache();
    let mut s = cache.session(&build).unwrap();
    match s.lookup("app") {
        Err(e) => assert!(e.to_string().contains("loop/a"), "{e}"),
        Ok(l) => panic!(
            "a symlink loop as a source must be an error: {:?}",
            l.reasons()
        ),
    }
}

/// A lookup for a build of a stable tree vouches for it: each observed source has the Merkle
/// root the put then stores for it (`None` is kept for a walk that saw a file change).
#[test]
fn an_observed_source_of_a_stable_walk_has_the_root_the_put_stores() {
    let w = workspace_with(&[("a", b"1"), ("d/b", b"2")]);
    let build = app_build(&w);
    let cache = w.cache();
    let mut s = cache.session(&build).unwrap();
    let l = s.lookup("app").unwrap();
    let root = l.observed()[0].root_digest;
    assert!(root.is_some(), "a stable walk vouches for its root");
    let put = s.put(&l, &common::outputs()).unwrap();
    let stored: Vec<_> = put
        .overlay_dirs
        .iter()
        .map(|x| Some(x.root_digest))
        .collect();
    assert_eq!(stored, vec![root]);
}

/// A file that changes while the lookup reads it (made to, on demand, by the hasher's test
/// hook): the miss names it as changed while read, the walk vouches for nothing — no input
/// digest, and its record's root digest is `null`, so no put or remote lookup can use what was
/// read — and a put from that lookup is refused, naming the file.
#[test]
fn a_file_that_changes_while_the_lookup_reads_it_makes_the_walk_vouch_for_nothing() {
    let w = workspace_with(&[("a", b"1"), ("d/b", b"2")]);
    common::age(&w.p("src"));
    let build = app_build(&w);
    let cache = w.cache();
    put_app(&cache, &build);
    let stored = cache.entry("app").unwrap().unwrap().input_digest;
    // A new content, so the lookup hashes `a`; the hook appends to it after the hasher's first
    // fstat and before it reads a byte.
    write(&w.p("src"), "a", b"3");
    let a = w.p("src/a");
    let target = a.clone();
    layercache::testing::on_read(a, move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&target)
            .unwrap();
        f.write_all(b" and more").unwrap();
    });
    let mut s = cache.session(&build).unwrap();
    let l = s.lookup("app").unwrap();
    match l.reasons() {
        [MissReason::OverlayDirContentChanged { key, diff }] => {
            assert_eq!(key, "src");
            assert!(diff.added.is_empty() && diff.removed.is_empty(), "{diff:?}");
            assert!(
                matches!(&diff.modified[..], [m] if m.path.key() == b"a"
                    && m.changes == [layercache::Change::ChangedWhileRead]),
                "{diff:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let walk = s.counters().walk;
    assert_eq!((walk.files_hashed, walk.bytes_hashed), (1, 0), "{walk:?}");
    assert_eq!(
        l.input_digest(),
        None,
        "an unstable walk vouches for no digest"
    );
    let path = w.p("unstable.json");
    l.record().unwrap().write(&path).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["sources"][0]["root_digest"], json!(null), "{v}");
    assert_eq!(v["input_digest"], json!(null), "{v}");
    match s.put(&l, &common::outputs()) {
        Err(layercache::Error::InputsChanged { changes, .. }) => assert!(
            matches!(&changes[..], [layercache::PutChange::Path { key, path, .. }]
                if key == "src" && path.ends_with("src/a")),
            "{changes:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(cache.entry("app").unwrap().unwrap().input_digest, stored);
}

/// A miss always names a reason. The one state in which no comparison finds one: the current
/// version agrees with every input on every field and row, yet the input digest it is stored
/// under is not the digest of those inputs (a record written by other code, planted here with
/// a valid checksum). The lookup misses, as `NotCached` — never a hit, never an empty list.
#[test]
fn a_current_version_stored_under_another_digest_is_a_miss_with_a_reason() {
    use layercache::testing::{RawTransactions, store::versions as vs, store_of};
    let w = workspace_with(&[("a", b"1")]);
    let build = app_build(&w);
    let db = w.p("cache.redb");
    {
        let cache = w.cache();
        put_app(&cache, &build);
        let store = store_of(&cache);
        let (mut pointer, mut rec) = {
            let txn = store.begin_read().unwrap();
            let pointer = vs::pointer(&txn, &db, "app").unwrap().unwrap().unwrap();
            let rec = vs::version(&txn, &db, "app", &pointer.current);
            (pointer, rec.unwrap().unwrap().unwrap())
        };
        let txn = store.begin_write().unwrap();
        assert!(vs::remove_version(&txn, &db, "app", &rec.input_digest).unwrap());
        rec.input_digest[0] ^= 0xff;
        pointer.current = rec.input_digest;
        vs::write_version(&txn, &db, &rec).unwrap();
        vs::write_pointer(&txn, &db, "app", &pointer).unwrap();
        txn.commit().unwrap();
    }
    let cache = w.cache();
    let mut s = cache.session(&build).unwrap();
    for mode in [LookupMode::CHECK, LookupMode::FOR_BUILD, LookupMode::VERIFY] {
        let l = s.lookup_with("app", mode).unwrap();
        assert!(
            matches!(l.reasons(), [MissReason::NotCached]),
            "{mode:?}: {:?}",
            l.reasons()
        );
        assert!(!l.is_hit());
    }
}

/// The xattrs of a file the lookup hashes are read through the file it opened, inside the
/// window its two stats bound: a `setxattr` while the file is read (by the hasher's test hook)
/// moves the ctime, so the file changed while read — not recorded with either set of xattrs.
/// Outside that window the xattrs read through the open file are the ones recorded.
#[test]
fn an_xattr_set_while_the_file_is_read_is_a_change_while_read() {
    let w = workspace_with(&[("a", b"1")]);
    if !common::xattrs_supported(&w.p("src")) {
        eprintln!("skipped: this file system refuses user xattrs");
        return;
    }
    xattr::set(w.p("src/a"), "user.before", b"1").unwrap();
    common::age(&w.p("src"));
    let build = app_build(&w);
    let cache = w.cache();
    put_app(&cache, &build);
    let mut s = cache.session(&build).unwrap();
    assert!(
        s.lookup("app").unwrap().is_hit(),
        "the put recorded the xattr it read"
    );

    write(&w.p("src"), "a", b"2");
    let target = w.p("src/a");
    layercache::testing::on_read(w.p("src/a"), move || {
        xattr::set(&target, "user.during", b"2").unwrap();
    });
    let l = s.lookup("app").unwrap();
    match l.reasons() {
        [MissReason::OverlayDirContentChanged { diff, .. }] => assert!(
            matches!(&diff.modified[..], [m] if m.path.key() == b"a"
                && m.changes.contains(&layercache::Change::ChangedWhileRead)),
            "{diff:?}"
        ),
        other => panic!("{other:?}"),
    }
    // Read again, undisturbed: both xattrs, and a put of them hits.
    let l = s.lookup("app").unwrap();
    match l.reasons() {
        [MissReason::OverlayDirContentChanged { diff, .. }] => assert!(
            matches!(&diff.modified[..], [m] if m.changes.contains(&layercache::Change::Xattrs)
                && !m.changes.contains(&layercache::Change::ChangedWhileRead)),
            "{diff:?}"
        ),
        other => panic!("{other:?}"),
    }
    s.put(&l, &common::outputs()).unwrap();
    assert!(s.lookup("app").unwrap().is_hit());
}
