//! Many versions per layer (schema v3, issue 13), through the library on real trees: a branch
//! switched back hits (an overlay-dir layer and a chain built on it), a definition flipped back
//! hits, the same tree elsewhere hits, a miss after a switch still names the changed paths, and
//! last use is recorded coarsely.

use crate::common;
use layercache::testing::RawTransactions;

use std::collections::BTreeMap;
use std::path::Path;

use common::write;
use layercache::testing::schema::{LAST_USED, LAYERS};
use layercache::{
    Base, Build, Cache, CacheConfig, LayerInputs, Lookup, MissReason, OverlayDir, Session,
};
use oci_spec::image::Descriptor;
use serde_json::json;

/// The workspace with an OCI layout of hand-written blobs at `oci`.
struct Fx(common::Workspace);

impl std::ops::Deref for Fx {
    type Target = common::Workspace;
    fn deref(&self) -> &common::Workspace {
        &self.0
    }
}

impl Fx {
    fn new() -> Fx {
        let w = common::Workspace::new();
        std::fs::create_dir_all(w.p("oci/blobs/sha256")).unwrap();
        Fx(w)
    }

    /// An output blob in the layout and the manifests naming it.
    fn manifests(&self, content: &str) -> BTreeMap<String, Descriptor> {
        let hex = blake3::hash(content.as_bytes()).to_hex().to_string();
        std::fs::write(self.p(&format!("oci/blobs/sha256/{hex}")), content).unwrap();
        let d: Descriptor = serde_json::from_value(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{hex}"),
            "size": content.len(),
        }))
        .unwrap();
        BTreeMap::from([("tar".to_string(), d)])
    }

    /// `app` (scratch, overlay dir `src` at `src_dir`) and `top` built on it.
    fn build(&self, src_dir: &Path, app_def: serde_json::Value) -> Build {
        let mut app = LayerInputs {
            definition: app_def,
            base: Base::Scratch,
            imports: vec![],
            overlay_dirs: vec![],
            source_date_epoch: Some(1),
            build_only: false,
            uncacheable: None,
        };
        app.overlay_dirs = vec![OverlayDir {
            key: "src".into(),
            source: src_dir.to_path_buf(),
            rootfs_path: self.p("roots/app/overlay_dirs/src"),
        }];
        let top = LayerInputs {
            definition: json!({"run": "top"}),
            base: Base::Built {
                layer: "app".into(),
            },
            imports: vec![],
            overlay_dirs: vec![],
            source_date_epoch: Some(1),
            build_only: false,
            uncacheable: None,
        };
        let mut b = Build::new();
        b.add("app", app).add("top", top);
        b
    }
}

/// Branch A of the source tree.
fn branch_a(src: &Path) {
    let _ = std::fs::remove_dir_all(src);
    write(src, "lib/a.rs", b"fn a() {}");
    write(src, "lib/shared.rs", b"fn shared() {}");
    write(src, "main.rs", b"fn main() { a() }");
    write(src, "only-a.txt", b"a");
}

/// Branch B: one file changed, one removed, one added.
fn branch_b(src: &Path) {
    let _ = std::fs::remove_dir_all(src);
    write(src, "lib/a.rs", b"fn a() { changed() }");
    write(src, "lib/shared.rs", b"fn shared() {}");
    write(src, "main.rs", b"fn main() { a() }");
    write(src, "only-b.txt", b"b");
}

fn put_layers(f: &Fx, s: &mut Session<'_>, tag: &str) {
    for layer in ["app", "top"] {
        let l = s.lookup(layer).unwrap();
        assert!(!l.is_hit(), "{tag} {layer}");
        s.put(&l, &f.manifests(&format!("{layer} built from {tag}")))
            .unwrap();
    }
}

fn hits(cache: &Cache, build: &Build) -> Vec<Lookup> {
    let mut s = cache.session(build).unwrap();
    ["app", "top"]
        .iter()
        .map(|l| s.lookup(l).unwrap().into_lookup())
        .collect()
}

#[test]
fn branch_switch_back_and_forth_hits_an_overlay_layer_and_the_chain_on_it() {
    let f = Fx::new();
    let cache = f.cache();
    let src = f.p("checkout");
    let build = f.build(&src, json!({"run": "make"}));
    // 1. Branch A: built and stored.
    branch_a(&src);
    put_layers(&f, &mut cache.session(&build).unwrap(), "A");
    let a_outputs = cache.entry("app").unwrap().unwrap().manifests;
    // 2. Branch B: misses, naming exactly the changed paths; built and stored.
    branch_b(&src);
    let mut s = cache.session(&build).unwrap();
    let l = s.lookup("app").unwrap();
    match l.reasons() {
        [MissReason::OverlayDirContentChanged { key, diff }] => {
            assert_eq!(key, "src");
            let names =
                |v: &[layercache::RelPath]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
            assert_eq!(names(&diff.added), ["only-b.txt"]);
            assert_eq!(names(&diff.removed), ["only-a.txt"]);
            assert_eq!(
                diff.modified
                    .iter()
                    .map(|m| m.path.to_string())
                    .collect::<Vec<_>>(),
                ["lib/a.rs"]
            );
        }
        other => panic!("{other:?}"),
    }
    drop(s);
    put_layers(&f, &mut cache.session(&build).unwrap(), "B");
    // 3. Back to A: both layers hit, with A's outputs; the rows now describe A.
    branch_a(&src);
    let mut s = cache.session(&build).unwrap();
    let app = s.lookup("app").unwrap();
    assert!(app.is_hit(), "{:?}", app.reasons());
    assert_eq!(app.entry().unwrap().record.manifests, a_outputs);
    // Exactly the rows that differ (only-b.txt removed, only-a.txt and lib/a.rs written), and
    // the stat data of the four rewritten with the same content (lib/shared.rs, main.rs, the
    // root and lib/: the checkout made new files), in one write transaction with the pointer.
    let c = s.counters();
    assert_eq!(
        (c.rows_switched, c.rows_refreshed, c.writes_committed),
        (3, 4, 1),
        "{c:?}"
    );
    let top = s.lookup("top").unwrap();
    assert!(top.is_hit(), "{:?}", top.reasons());
    assert_eq!(cache.entry("app").unwrap().unwrap().manifests, a_outputs);
    drop(s);
    // Again A: a hit on the current version, nothing switched.
    let mut s = cache.session(&build).unwrap();
    assert!(s.lookup("app").unwrap().is_hit());
    assert_eq!(s.counters().rows_switched, 0);
    drop(s);
    // 4. B again: hits too.
    branch_b(&src);
    for l in hits(&cache, &build) {
        assert!(l.is_hit(), "{}: {:?}", l.layer, l.reasons());
    }
    assert_eq!(cache.versions("app").unwrap().len(), 2);
    assert_eq!(cache.versions("top").unwrap().len(), 2);
    // A third tree misses, explained against the version last used (B).
    write(&src, "main.rs", b"fn main() { b() }");
    let mut s = cache.session(&build).unwrap();
    match s.lookup("app").unwrap().reasons() {
        [MissReason::OverlayDirContentChanged { diff, .. }] => {
            assert!(diff.added.is_empty() && diff.removed.is_empty());
            assert_eq!(diff.modified[0].path.to_string(), "main.rs");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_definition_flipped_back_hits() {
    let f = Fx::new();
    let cache = f.cache();
    let src = f.p("checkout");
    branch_a(&src);
    let debug = f.build(&src, json!({"run": "make", "profile": "debug"}));
    let release = f.build(&src, json!({"run": "make", "profile": "release"}));
    put_layers(&f, &mut cache.session(&debug).unwrap(), "debug");
    let mut s = cache.session(&release).unwrap();
    match s.lookup("app").unwrap().reasons() {
        [MissReason::DefinitionChanged { fields }] => {
            assert_eq!(fields[0].field, "profile")
        }
        other => panic!("{other:?}"),
    }
    drop(s);
    put_layers(&f, &mut cache.session(&release).unwrap(), "release");
    for build in [&debug, &release, &debug] {
        for l in hits(&cache, build) {
            assert!(l.is_hit(), "{}: {:?}", l.layer, l.reasons());
        }
    }
}

#[test]
fn the_same_tree_in_another_directory_hits() {
    let f = Fx::new();
    let cache = f.cache();
    branch_a(&f.p("one"));
    put_layers(
        &f,
        &mut cache
            .session(&f.build(&f.p("one"), json!({"run": "make"})))
            .unwrap(),
        "one",
    );
    branch_a(&f.p("elsewhere/two"));
    let two = f.build(&f.p("elsewhere/two"), json!({"run": "make"}));
    for l in hits(&cache, &two) {
        assert!(l.is_hit(), "{}: {:?}", l.layer, l.reasons());
    }
}

#[test]
fn last_use_is_recorded_when_older_than_an_hour() {
    let f = Fx::new();
    let cache = f.cache();
    let src = f.p("checkout");
    branch_a(&src);
    let build = f.build(&src, json!({"run": "make"}));
    put_layers(&f, &mut cache.session(&build).unwrap(), "A");
    let digest = cache.entry("app").unwrap().unwrap().input_digest;
    let set = |ms: u64| {
        let txn = layercache::testing::store_of(&cache).begin_write().unwrap();
        txn.open_table(LAST_USED)
            .unwrap()
            .insert(("app", &digest), ms)
            .unwrap();
        txn.commit().unwrap();
    };
    let get = || {
        cache
            .versions("app")
            .unwrap()
            .into_iter()
            .find_map(|(r, used)| r.ok().filter(|r| r.input_digest == digest).and(used))
            .unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    set(now - 2 * 3_600_000);
    assert!(hits(&cache, &build)[0].is_hit());
    assert!(get() >= now, "a use older than an hour is recorded");
    // Settle the stat data (so no refresh write piggy-backs), then a recent use is kept as is.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let _ = hits(&cache, &build);
    set(now - 60_000);
    let mut s = cache.session(&build).unwrap();
    assert!(s.lookup("app").unwrap().is_hit());
    if s.counters().rows_refreshed == 0 {
        assert_eq!(
            get(),
            now - 60_000,
            "a use within the hour is not rewritten"
        );
    }
}

/// Three versions of `app` (trees 1, 2, 3 put in that order; 3 is current), each with one
/// output blob of `sizes[i]` bytes. Returns the blob digests.
fn three_versions(f: &Fx, cache: &Cache, sizes: [usize; 3]) -> (Build, Vec<String>) {
    let src = f.p("checkout");
    let build = f.build(&src, json!({"run": "make"}));
    let mut digests = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        write(&src, "version.txt", format!("tree {i}").as_bytes());
        let mut s = cache.session(&build).unwrap();
        let l = s.lookup("app").unwrap();
        assert!(!l.is_hit());
        let content = format!("{i}").repeat(*size);
        let m = f.manifests(&content);
        digests.push(m["tar"].digest().to_string());
        s.put(&l, &m).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    (build, digests)
}

fn gc_json(db: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["gc", "--json"];
    all.extend_from_slice(args);
    let out = common::cli_ok(&all, db);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn dropped(v: &serde_json::Value) -> Vec<String> {
    v["plan"]["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"]["rule"].as_str().unwrap().to_string())
        .collect()
}

fn version_count(db: &Path) -> usize {
    let cache = Cache::open(CacheConfig {
        db: db.to_path_buf(),
        oci_layout: Some(common::shared_oci()),
        ..Default::default()
    })
    .unwrap();
    cache.versions("app").unwrap().len()
}

#[test]
fn gc_by_count_dry_run_then_for_real_keeps_the_current_version_hitting() {
    let f = Fx::new();
    let db = f.p("cache.redb");
    let build = {
        let cache = f.cache();
        three_versions(&f, &cache, [10, 10, 10]).0
    };
    let v = gc_json(&db, &["--keep", "1", "--dry-run"]);
    assert_eq!(v["dry_run"], true);
    assert_eq!(dropped(&v), ["per_layer_count", "per_layer_count"]);
    assert_eq!(v["plan"]["unreferenced_blobs"].as_array().unwrap().len(), 2);
    assert_eq!(version_count(&db), 3, "a dry run changes nothing");
    let v = gc_json(&db, &["--keep", "1"]);
    assert_eq!(dropped(&v).len(), 2);
    assert_eq!(version_count(&db), 1);
    {
        let cache = f.cache();
        let mut s = cache.session(&build).unwrap();
        assert!(s.lookup("app").unwrap().is_hit());
    }
    // The text form lists what it would drop.
    let out = common::cli_ok(&["gc", "--keep", "0", "--dry-run"], &db);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("1 -> 1 versions"), "{text}");
}

#[test]
fn gc_by_age_uses_the_time_given_not_a_sleep() {
    let f = Fx::new();
    let db = f.p("cache.redb");
    {
        let cache = f.cache();
        three_versions(&f, &cache, [10, 10, 10]);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let in_31_days = (now + 31 * 86_400_000).to_string();
    let v = gc_json(&db, &["--unused-days", "40", "--now-ms", &in_31_days]);
    assert!(dropped(&v).is_empty());
    let v = gc_json(
        &db,
        &["--unused-days", "30", "--now-ms", &in_31_days, "--dry-run"],
    );
    assert_eq!(dropped(&v), ["unused", "unused"]);
    assert_eq!(version_count(&db), 3);
    gc_json(&db, &["--unused-days", "30", "--now-ms", &in_31_days]);
    assert_eq!(version_count(&db), 1, "the current version stays");
    let v = gc_json(
        &db,
        &[
            "--unused-days",
            "30",
            "--now-ms",
            &in_31_days,
            "--include-current",
        ],
    );
    assert_eq!(dropped(&v), ["unused"]);
    assert_eq!(version_count(&db), 0);
}

#[test]
fn gc_by_size_drops_least_recently_used_first() {
    let f = Fx::new();
    let db = f.p("cache.redb");
    let digests = {
        let cache = f.cache();
        three_versions(&f, &cache, [3000, 1000, 1000]).1
    };
    let v = gc_json(&db, &["--max-bytes", "2500", "--dry-run"]);
    assert_eq!(dropped(&v), ["byte_budget"]);
    assert_eq!(v["plan"]["bytes_before"], 5000);
    assert_eq!(v["plan"]["bytes_after"], 2000);
    assert_eq!(v["plan"]["unreferenced_blobs"][0][0], digests[0]);
    assert_eq!(version_count(&db), 3);
    gc_json(&db, &["--max-bytes", "2500"]);
    assert_eq!(version_count(&db), 2);
    let v = gc_json(&db, &["--max-versions", "1", "--dry-run"]);
    assert_eq!(dropped(&v), ["version_budget"]);
}

#[test]
fn the_builder_identity_is_an_input_and_a_flip_back_hits() {
    let f = Fx::new();
    let cache = f.cache();
    let src = f.p("checkout");
    branch_a(&src);
    let with = |who: &str| {
        let mut b = f.build(&src, json!({"run": "make"}));
        b.builder = Some(who.to_string());
        b
    };
    let (old, new) = (with("stacker 1.0.0"), with("stacker 1.1.0"));
    put_layers(&f, &mut cache.session(&old).unwrap(), "old");
    assert_eq!(
        cache.entry("app").unwrap().unwrap().builder.as_deref(),
        Some("stacker 1.0.0")
    );
    let mut s = cache.session(&new).unwrap();
    match s.lookup("app").unwrap().reasons() {
        [MissReason::BuilderChanged { old, new }] => {
            assert_eq!(old.as_deref(), Some("stacker 1.0.0"));
            assert_eq!(new.as_deref(), Some("stacker 1.1.0"));
        }
        other => panic!("{other:?}"),
    }
    drop(s);
    put_layers(&f, &mut cache.session(&new).unwrap(), "new");
    for build in [&old, &new] {
        for l in hits(&cache, build) {
            assert!(l.is_hit(), "{}: {:?}", l.layer, l.reasons());
        }
    }
}

#[test]
fn an_uncacheable_layer_misses_alone_and_is_never_put() {
    let f = Fx::new();
    let cache = f.cache();
    let src = f.p("checkout");
    branch_a(&src);
    let mut build = f.build(&src, json!({"run": "make"}));
    build.layers.get_mut("app").unwrap().uncacheable = Some("layer has binds".into());
    let mut s = cache.session(&build).unwrap();
    let l = s.lookup("app").unwrap();
    assert!(matches!(
        l.reasons(),
        [MissReason::NotCacheable { why }] if why == "layer has binds"
    ));
    assert!(matches!(
        s.put(&l, &common::outputs()),
        Err(layercache::Error::NotCacheable { .. })
    ));
    assert!(cache.entry("app").unwrap().is_none());
}

/// A put of inputs already stored: with the same outputs it keeps the stored version (its
/// creation time stays); with other outputs — the old blob was lost, the lookup missed with
/// `outputs_missing` and the layer was rebuilt — it records the new outputs, and the next
/// lookup hits with them.
#[test]
fn a_re_put_keeps_an_identical_version_and_replaces_one_with_other_outputs() {
    let f = Fx::new();
    let src = f.p("checkout");
    write(&src, "a.txt", b"a");
    let build = f.build(&src, json!({"run": "make"}));
    let cache = f.cache();
    let put = |m: &BTreeMap<String, Descriptor>| {
        let mut s = cache.session(&build).unwrap();
        let l = s.lookup("app").unwrap();
        s.put(&l, m).unwrap()
    };
    let first = f.manifests("output one");
    let created = put(&first).created_unix_ms;
    std::thread::sleep(std::time::Duration::from_millis(5));
    let again = put(&first);
    assert_eq!(
        again.created_unix_ms, created,
        "the identical version was kept"
    );
    assert_eq!(cache.versions("app").unwrap().len(), 1);

    // The blob goes; the layer is rebuilt with other outputs and put again.
    let blob = |m: &BTreeMap<String, Descriptor>| {
        f.p(&format!(
            "oci/blobs/sha256/{}",
            m["tar"].digest().to_string().trim_start_matches("sha256:")
        ))
    };
    std::fs::remove_file(blob(&first)).unwrap();
    let mut s = cache.session(&build).unwrap();
    assert!(matches!(
        s.lookup("app").unwrap().reasons(),
        [MissReason::OutputsMissing { .. }]
    ));
    let second = f.manifests("output two");
    let rebuilt = put(&second);
    assert_ne!(rebuilt.created_unix_ms, created, "a new version record");
    let mut s = cache.session(&build).unwrap();
    let l = s.lookup("app").unwrap();
    assert_eq!(
        l.entry().map(|e| e.manifests.clone()),
        Some(second),
        "{:?}",
        l.reasons()
    );
}

/// The rows of a source that the current version does not have are deleted when a hit switches
/// to that version: a version A with an extra import, a version B without it; switching back
/// and forth leaves rows of the extra import only while A is current (they are the last-seen
/// state of the layer's sources, never a copy per version).
#[test]
fn switching_to_a_version_without_a_source_deletes_that_sources_rows() {
    let f = Fx::new();
    let src = f.p("checkout");
    write(&src, "a.txt", b"a");
    write(&f.p("extra"), "x.txt", b"x");
    write(&f.p("early"), "e.txt", b"e");
    let mut plain = f.build(&src, json!({"run": "make"}));
    // An import of the same role before the extra one, with rows of its own: the switch must
    // walk the extra import's own directory into its rows, not the first import's.
    plain
        .layers
        .get_mut("app")
        .unwrap()
        .imports
        .push(layercache::Import {
            key: "early".into(),
            path: f.p("early"),
            dest: None,
        });
    let mut with_extra = plain.clone();
    with_extra
        .layers
        .get_mut("app")
        .unwrap()
        .imports
        .push(layercache::Import {
            key: "extra".into(),
            path: f.p("extra"),
            dest: None,
        });
    let extra_rows = |cache: Cache| -> (Cache, usize) {
        let db = layercache::testing::store_of(&cache).path().to_path_buf();
        drop(cache);
        let n = {
            use redb::{ReadableDatabase, ReadableTable};
            let d = redb::Database::builder()
                .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
                .open(&db)
                .unwrap();
            let txn = d.begin_read().unwrap();
            let rows = txn.open_table(layercache::testing::schema::ROWS).unwrap();
            rows.iter()
                .unwrap()
                .filter(|r| r.as_ref().unwrap().0.value().1.contains("extra"))
                .count()
        };
        (f.cache(), n)
    };
    let cache = f.cache();
    for (build, m) in [(&with_extra, "with extra"), (&plain, "plain")] {
        let mut s = cache.session(build).unwrap();
        let l = s.lookup("app").unwrap();
        assert!(!l.is_hit());
        s.put(&l, &f.manifests(m)).unwrap();
    }
    // Back to A (a hit on the older version): the extra import's rows are there again,
    // walked into rows by the switch (the rows held none to diff against).
    let mut s = cache.session(&with_extra).unwrap();
    assert!(s.lookup("app").unwrap().is_hit());
    assert_eq!(s.counters().rows_switched, 2, "{:?}", s.counters());
    drop(s);
    let (cache, n) = extra_rows(cache);
    assert_eq!(
        n, 2,
        "the extra import's rows (root and x.txt) while A is current"
    );
    // And to B: they describe no source of the current version any more.
    let mut s = cache.session(&plain).unwrap();
    assert!(s.lookup("app").unwrap().is_hit());
    drop(s);
    let (_cache, n) = extra_rows(cache);
    assert_eq!(n, 0, "stale rows of a source B does not have");
}

/// A layer put from settled files (mtimes an hour back) and looked up once, so its rows'
/// stat data vouch for every file: the next hit has nothing to refresh. Returns the cache,
/// the build and the version's input digest.
fn settled_hit_layer(f: &Fx) -> (Cache, Build, [u8; 32]) {
    let cache = f.cache();
    let src = f.p("checkout");
    branch_a(&src);
    // Settled files: mtimes an hour back, past the tick of the last status change.
    let old = filetime::FileTime::from_system_time(
        std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
    );
    for e in walkdir::WalkDir::new(&src) {
        filetime::set_symlink_file_times(e.unwrap().path(), old, old).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    let build = f.build(&src, json!({"run": "make"}));
    put_layers(f, &mut cache.session(&build).unwrap(), "A");
    let digest = cache.entry("app").unwrap().unwrap().input_digest;
    // One lookup to settle the rows' stat data; the next has nothing to refresh.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let _ = hits(&cache, &build);
    (cache, build, digest)
}

/// Sets the recorded last use of `app`'s version `digest` to `ago_ms` before now; returns it.
fn set_last_use(cache: &Cache, digest: &[u8; 32], ago_ms: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - ago_ms;
    let txn = layercache::testing::store_of(cache).begin_write().unwrap();
    txn.open_table(LAST_USED)
        .unwrap()
        .insert(("app", digest), t)
        .unwrap();
    txn.commit().unwrap();
    t
}

/// The recorded last use of `app`'s version `digest`.
fn last_use(cache: &Cache, digest: &[u8; 32]) -> u64 {
    cache
        .versions("app")
        .unwrap()
        .into_iter()
        .find_map(|(r, used)| r.ok().filter(|r| r.input_digest == *digest).and(used))
        .unwrap()
}

/// The last use of a version hit with nothing to refresh (settled stat data: the optional
/// last-use write alone) is recorded when it is older than an hour — else `gc --unused-days`
/// could drop a version in daily use. (The refresh and switch paths record the use too; this
/// pins the path that writes nothing else.)
#[test]
fn a_hit_with_nothing_to_refresh_records_a_last_use_older_than_an_hour() {
    let f = Fx::new();
    let (cache, build, digest) = settled_hit_layer(&f);
    let two_hours_ago = set_last_use(&cache, &digest, 2 * 3_600_000);
    let mut s = cache.session(&build).unwrap();
    assert!(s.lookup("app").unwrap().is_hit());
    let c = s.counters();
    assert_eq!(c.rows_refreshed, 0, "nothing to refresh");
    assert_eq!(c.writes_committed, 1, "the use alone: {c:?}");
    drop(s);
    assert!(
        last_use(&cache, &digest) > two_hours_ago,
        "the use was recorded"
    );
}

/// A hit with nothing to refresh on a version whose use was recorded within the hour commits
/// no write transaction (a write costs about as much as the lookup of a 1000-file layer, and
/// must never make a hit queue behind another process's put), and leaves the recorded use as
/// it was.
#[test]
fn a_hit_with_nothing_to_refresh_and_a_recent_use_commits_no_write() {
    let f = Fx::new();
    let (cache, build, digest) = settled_hit_layer(&f);
    let half_an_hour_ago = set_last_use(&cache, &digest, 1_800_000);
    let mut s = cache.session(&build).unwrap();
    assert!(s.lookup("app").unwrap().is_hit());
    let c = s.counters();
    assert_eq!((c.rows_refreshed, c.writes_committed), (0, 0), "{c:?}");
    assert_eq!(c.walk.files_hashed, 0, "settled rows: nothing read");
    drop(s);
    assert_eq!(last_use(&cache, &digest), half_an_hour_ago);
}

/// A layer whose pointer (which version its rows describe) is lost, or damaged so that it no
/// longer decodes, still hits its stored version, and the hit points the layer at that version
/// again: the pointer is repaired, not left missing for every later lookup to trip over.
#[test]
fn a_hit_on_a_layer_whose_pointer_is_lost_or_damaged_repairs_the_pointer() {
    for damage in ["lost", "damaged"] {
        let f = Fx::new();
        let (cache, build, digest) = settled_hit_layer(&f);
        {
            let txn = layercache::testing::store_of(&cache).begin_write().unwrap();
            {
                let mut t = txn.open_table(LAYERS).unwrap();
                match damage {
                    "lost" => assert!(t.remove("app").unwrap().is_some()),
                    _ => {
                        t.insert("app", b"\x01\x02\x03".as_slice()).unwrap();
                    }
                }
            }
            txn.commit().unwrap();
        }
        assert!(
            cache.entry("app").unwrap_or(None).is_none(),
            "{damage}: no current version"
        );
        let mut s = cache.session(&build).unwrap();
        let l = s.lookup("app").unwrap();
        assert!(l.is_hit(), "{damage}: {:?}", l.reasons());
        assert_eq!(l.entry().unwrap().record.input_digest, digest, "{damage}");
        drop(s);
        let current = cache.entry("app").unwrap().map(|e| e.input_digest);
        assert_eq!(
            current,
            Some(digest),
            "{damage}: the pointer was not repaired"
        );
    }
}
