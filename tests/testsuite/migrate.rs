//! Schema migrations on the frozen v1 fixtures: behaviour after migrating, the CLI, and a real
//! child process killed at several points of a migration.

use crate::common;
use crate::v1_oldest;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use layercache::testing::Store;
use layercache::testing::schema::ROWS;
use layercache::{Cache, CacheConfig, MissReason, SCHEMA_VERSION};
use redb::ReadableTable;

fn fixture(name: &str, dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dst = dir.join(name);
    std::fs::copy(&src, &dst).unwrap();
    dst
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn age(root: &Path) {
    let t = filetime::FileTime::from_system_time(SystemTime::now() - Duration::from_secs(3600));
    for e in walkdir::WalkDir::new(root) {
        filetime::set_symlink_file_times(e.unwrap().path(), t, t).unwrap();
    }
}

/// The small fixture's input trees (made anew, aged) under `dir`, and its build.
fn small_trees(dir: &Path) -> layercache::Build {
    let build = common::v1_fixture::small_inputs(&dir.join("small"));
    age(&dir.join("small"));
    build
}

fn open_cache(db: &Path) -> Cache {
    Cache::open(CacheConfig {
        db: db.to_path_buf(),
        oci_layout: Some(common::shared_oci()),
        ..Default::default()
    })
    .unwrap()
}

/// The fixtures' layers were put by the old code with no output manifests (`{}`), which a layer
/// that is not build-only can no longer record: every input matches, and the only miss reason is
/// that there are no outputs to reuse (a miss, which writes nothing: no stat refresh).
#[track_caller]
fn assert_inputs_match(l: &layercache::Lookup, layer: &str) {
    assert!(
        l.is_hit() || matches!(l.reasons(), [MissReason::OutputsMissing { .. }]),
        "{layer}: {:?}",
        l.reasons()
    );
}

#[test]
fn v1_fixture_migrates_and_hits_where_inputs_are_unchanged() {
    if !is_root() {
        eprintln!("skipped: the fixture's trees are owned by root (0:0); run as root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = fixture("v1-small.redb", tmp.path());
    assert_eq!(common::raw_state(&db).0, 1);
    let build = small_trees(tmp.path());

    let cache = open_cache(&db);
    let report = layercache::testing::store_of(&cache)
        .migration()
        .cloned()
        .expect("opening migrated");
    assert_eq!((report.from, report.to), (1, SCHEMA_VERSION));
    assert!(report.steps[0].records > 20, "{report:?}");
    assert_eq!(
        layercache::testing::store_of(&cache)
            .schema_version()
            .unwrap(),
        SCHEMA_VERSION
    );

    // First lookups: every input matches, every file hashed once (v1 rows carry no stat
    // data). (Refreshing the rows with stat data needs a hit: see assert_inputs_match.)
    let mut s = cache.session(&build).unwrap();
    for layer in ["base", "mid", "app", "other"] {
        assert_inputs_match(&s.lookup(layer).unwrap(), layer);
    }
    let c = s.counters();
    assert!(c.walk.files_hashed > 20, "{c:?}");

    // A change in app's overlay misses app only, naming the file.
    common::write(
        &tmp.path().join("small/src/app"),
        "pkg1/mod5.rs",
        b"// changed\n",
    );
    let mut s = cache.session(&build).unwrap();
    for layer in ["base", "mid", "other"] {
        assert_inputs_match(&s.lookup(layer).unwrap(), layer);
    }
    match s.lookup("app").unwrap().reasons() {
        [MissReason::OverlayDirContentChanged { diff, .. }] => {
            assert_eq!(diff.modified[0].path.to_string(), "pkg1/mod5.rs");
        }
        other => panic!("{other:?}"),
    }
    // And a change in base's import misses base and everything built on it.
    common::write(
        &tmp.path().join("small/imports/base/tools"),
        "share/doc/README",
        b"new\n",
    );
    let mut s = cache.session(&build).unwrap();
    assert!(!s.lookup("base").unwrap().is_hit());
    assert!(!s.lookup("other").unwrap().is_hit());
    assert!(!s.lookup("mid").unwrap().is_hit());
}

#[test]
fn reading_an_unmigrated_file_says_to_migrate() {
    let tmp = tempfile::tempdir().unwrap();
    let db = fixture("v1-small.redb", tmp.path());
    let err = Store::open_read_only(&db).err().unwrap();
    assert!(
        matches!(err, layercache::Error::SchemaTooOld { found: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("layercache migrate"), "{err}");
}

#[test]
fn cli_migrate_dry_run_changes_nothing_then_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let db = fixture("v1-small.redb", tmp.path());
    let before = std::fs::read(&db).unwrap();
    let bin = env!("CARGO_BIN_EXE_layercache");
    let out = Command::new(bin)
        .args(["migrate", "--db"])
        .arg(&db)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("schema v1, 3 pending step(s) to v4"),
        "{text}"
    );
    assert!(text.contains("v1 -> v2: stat fast path"), "{text}");
    assert!(text.contains("v2 -> v3: versions"), "{text}");
    assert!(text.contains("v3 -> v4: origin"), "{text}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "--dry-run modified the file"
    );

    let out = Command::new(bin)
        .args(["migrate", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["from"], 1);
    assert_eq!(v["to"], 4);
    assert_eq!(v["steps"][0]["from"], 1);
    assert!(v["steps"][0]["records"].as_u64().unwrap() > 20);
    assert_eq!(v["steps"][1]["from"], 2);
    assert_eq!(v["steps"][1]["records"], 4, "one version per v2 entry");
    assert_eq!(v["steps"][2]["from"], 3);
    assert_eq!(v["steps"][2]["records"], 4, "every version gets its origin");
    assert_eq!(common::raw_state(&db).0, 4);

    let out = Command::new(bin)
        .args(["migrate", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
}

#[test]
fn killed_migration_leaves_old_or_new_never_between() {
    let seen = kill_migrations("v1-large.redb", 1);
    // Every step (v1 -> v2 -> v3 -> v4) runs in the one transaction: never left between.
    assert_eq!(
        seen[2] + seen[3],
        0,
        "a kill left the file between the steps"
    );
    eprintln!("kill points left v1: {}, v4: {}", seen[1], seen[4]);
}

/// The steps from v2 (a large file made by the code that released schema v2): every kill
/// leaves v2 or the current version with every row.
#[test]
fn killed_v2_migration_leaves_old_or_new_never_between() {
    let seen = kill_migrations("v2-large.redb", 2);
    assert_eq!(seen[0] + seen[1] + seen[3], 0);
    eprintln!("kill points left v2: {}, v4: {}", seen[2], seen[4]);
}

/// SIGKILLs `layercache migrate` of a copy of `fixture` (schema `from`, at least 30,000 rows) at
/// kill points spread from before the transaction starts to after it ends; each time, the file
/// holds every row at some schema version, and the library then opens it at the current one.
/// Returns how many kills left each version.
fn kill_migrations(name: &str, from: u32) -> [u32; 5] {
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_layercache");
    let (v, rows) = common::raw_state(&fixture(name, tmp.path()));
    assert_eq!(v, from);
    assert!(rows >= 30_000);
    let mut seen = [0u32; 5];
    for (i, delay_ms) in [0u64, 2, 5, 10, 20, 35, 50, 80, 120, 200, 400]
        .iter()
        .enumerate()
    {
        let db = tmp.path().join(format!("kill{i}.redb"));
        std::fs::copy(tmp.path().join(name), &db).unwrap();
        let mut child = Command::new(bin)
            .args(["migrate", "--db"])
            .arg(&db)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(*delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let (v, n) = common::raw_state(&db);
        assert_eq!(n, rows, "rows lost at kill point {delay_ms} ms");
        seen[v as usize] += 1;
        // Whatever it was left at, the library opens it at the current version.
        let store = Store::open(&db).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        drop(store);
        assert_eq!(common::raw_state(&db), (SCHEMA_VERSION, rows));
    }
    seen
}

#[test]
fn a_damaged_v1_row_costs_its_layer_not_the_migration() {
    if !is_root() {
        eprintln!("skipped: the fixture's trees are owned by root (0:0); run as root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = fixture("v1-small.redb", tmp.path());
    {
        // Overwrite one of app's v1 rows with bytes that do not decode.
        let d = redb::Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open(&db)
            .unwrap();
        let txn = d.begin_write().unwrap();
        {
            let mut rows = txn.open_table(ROWS).unwrap();
            let key: (String, String, Vec<u8>) = {
                let mut it = rows.iter().unwrap();
                loop {
                    let (k, _) = it.next().unwrap().unwrap();
                    let (l, s, p) = k.value();
                    if l == "app" && !p.is_empty() {
                        break (l.to_string(), s.to_string(), p.to_vec());
                    }
                }
            };
            let garbage: &[u8] = &[0xff; 5];
            rows.insert((key.0.as_str(), key.1.as_str(), key.2.as_slice()), garbage)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let build = small_trees(tmp.path());
    let cache = open_cache(&db);
    assert_eq!(
        layercache::testing::store_of(&cache)
            .schema_version()
            .unwrap(),
        SCHEMA_VERSION
    );
    let mut s = cache.session(&build).unwrap();
    for layer in ["base", "mid", "other"] {
        assert_inputs_match(&s.lookup(layer).unwrap(), layer);
    }
    let l = s.lookup("app").unwrap();
    assert!(
        matches!(l.reasons(), [MissReason::DamagedEntry { .. }]),
        "{:?}",
        l.reasons()
    );
    s.put(&l, &common::outputs()).unwrap();
    assert!(s.lookup("app").unwrap().is_hit());
}

#[test]
fn v2_fixture_migrates_to_the_current_schema_and_hits() {
    if !is_root() {
        eprintln!("skipped: the fixture's trees are owned by root (0:0); run as root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = fixture("v2-small.redb", tmp.path());
    assert_eq!(common::raw_state(&db).0, 2);
    let build = small_trees(tmp.path());
    let cache = open_cache(&db);
    let report = layercache::testing::store_of(&cache)
        .migration()
        .cloned()
        .expect("v2 is migrated");
    assert_eq!((report.from, report.to, report.steps.len()), (2, 4, 2));
    // The trees were made anew (other inodes, times): stat data cannot vouch, so the lookups
    // read every file; every input matches (the fixture's layers have no outputs to reuse:
    // see assert_inputs_match).
    let mut s = cache.session(&build).unwrap();
    for layer in ["base", "mid", "app", "other"] {
        assert_inputs_match(&s.lookup(layer).unwrap(), layer);
    }
    assert!(s.counters().walk.files_hashed > 20, "{:?}", s.counters());
}

/// The v3 fixture (made by the code that released schema v3, with real outputs): the v3 -> v4
/// step gives every version `origin: built`, so every layer hits as it did, and a version built
/// there still needs its overlay dir's builder's copy (the local rule survives the upgrade).
#[test]
fn v3_fixture_migrates_to_v4_and_every_layer_still_hits() {
    if !is_root() {
        eprintln!("skipped: the fixture's trees are owned by root (0:0); run as root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = fixture("v3-small.redb", tmp.path());
    assert_eq!(common::raw_state(&db).0, 3);
    let build = small_trees(tmp.path());
    let cache = open_cache(&db);
    let report = layercache::testing::store_of(&cache)
        .migration()
        .cloned()
        .expect("v3 is migrated");
    assert_eq!((report.from, report.to, report.steps.len()), (3, 4, 1));
    assert_eq!(report.steps[0].records, 4, "every version rewritten");
    let mut s = cache.session(&build).unwrap();
    for layer in ["base", "mid", "app", "other"] {
        let l = s.lookup(layer).unwrap();
        assert!(l.is_hit(), "{layer}: {:?}", l.reasons());
        let origin = l.entry().unwrap().record.origin;
        assert_eq!(
            origin,
            layercache::testing::schema::Origin::Built,
            "{layer}"
        );
    }
    drop(s);
    std::fs::remove_dir_all(tmp.path().join("small/rootfs/app/overlay_dirs/app")).unwrap();
    let mut s = cache.session(&build).unwrap();
    let l = s.lookup("app").unwrap();
    assert!(
        matches!(l.reasons(), [MissReason::OverlayDirMissing { .. }]),
        "{:?}",
        l.reasons()
    );
}

/// The upgrade defect of issue 11: the oldest code recorded a tar base by absolute path; after
/// migrating, the tar layer and every layer above it hit with the inputs made anew elsewhere.
#[test]
fn oldest_fixtures_hit_after_migrating_including_tar_bases_and_chains_on_them() {
    if !is_root() {
        eprintln!("skipped: the fixture's trees are owned by root (0:0); run as root");
        return;
    }
    for name in ["v1-oldest.redb"] {
        let tmp = tempfile::tempdir().unwrap();
        let db = fixture(name, tmp.path());
        let root = tmp.path().join("elsewhere");
        let full = v1_oldest::inputs(&root);
        // Issue 11 hole 1: an import with a dest is now an input keyed ["KEY","DEST"]; the old
        // code recorded no summary for it, so such a layer misses once with import_new (the
        // CHANGELOG's one rebuild), and only so. Without it, every other input still matches.
        let mut build = full.clone();
        for l in build.layers.values_mut() {
            l.imports.retain(|i| i.dest.is_none());
        }
        age(&root);
        let cache = Cache::open(CacheConfig {
            db: db.clone(),
            oci_layout: Some(root.join("oci")),
            rootfs_dir: Some(root.join("rootfs")),
            ..Default::default()
        })
        .unwrap();
        for layer in v1_oldest::ORDER {
            let _ = v1_oldest::manifests(&root, layer);
        }
        assert_eq!(
            layercache::testing::store_of(&cache)
                .schema_version()
                .unwrap(),
            SCHEMA_VERSION
        );
        let mut s = cache.session(&build).unwrap();
        for layer in v1_oldest::ORDER {
            let l = s.explain(layer).unwrap();
            assert!(l.is_hit(), "{name} {layer}: {:?}", l.reasons());
        }
        let mut s = cache.session(&full).unwrap();
        assert_eq!(
            s.explain("tarred").unwrap().reasons(),
            [MissReason::ImportNew {
                key: r#"["motd","/etc/motd"]"#.into()
            }]
        );
        let tarred = cache.entry("tarred").unwrap().unwrap();
        assert_eq!(tarred.base.reference, "base.tar");
        // A hit hands back the outputs recorded by the old code.
        let mut s = cache.session(&build).unwrap();
        let l = s.lookup("chain-2").unwrap();
        assert_eq!(
            l.entry().unwrap().manifests["tar"],
            v1_oldest::manifests(&root, "chain-2")["tar"]
        );
    }
}
