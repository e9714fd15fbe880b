//! The numbers behind how last use is recorded (see `version_store`/the cache's lookup): the
//! cost of one write transaction that records a use, against a no-change lookup of a small
//! layer. Run by hand: `cargo test --release --test testsuite last_use_cost:: -- --ignored --nocapture`.

use crate::common;
use layercache::testing::RawTransactions;

use std::time::Instant;

use layercache::{Base, Build, Cache, CacheConfig, LayerInputs, OverlayDir};

#[test]
#[ignore = "prints timings; run by hand"]
fn cost_of_recording_a_use_against_a_no_change_lookup() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..1000 {
        common::write(&src, &format!("d{}/f{i}", i % 20), b"x");
    }
    std::fs::create_dir_all(tmp.path().join("rootfs")).unwrap();
    let mut build = Build::new();
    build.add(
        "l",
        LayerInputs {
            definition: serde_json::json!({"run": "x"}),
            base: Base::Scratch,
            imports: vec![],
            overlay_dirs: vec![OverlayDir {
                key: "src".into(),
                source: src,
                rootfs_path: tmp.path().join("rootfs"),
            }],
            source_date_epoch: None,
            build_only: false,
            uncacheable: None,
        },
    );
    let db = tmp.path().join("c.redb");
    let cache = Cache::open(CacheConfig {
        db: db.clone(),
        oci_layout: Some(common::shared_oci()),
        ..Default::default()
    })
    .unwrap();
    let mut s = cache.session(&build).unwrap();
    let l = s.lookup("l").unwrap();
    s.put(&l, &common::outputs()).unwrap();
    // Age the files so the rows are not racy, and settle the stat data.
    std::thread::sleep(std::time::Duration::from_millis(50));
    for _ in 0..2 {
        let mut s = cache.session(&build).unwrap();
        s.lookup_with("l", layercache::LookupMode::CHECK).unwrap();
    }
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        let mut s = cache.session(&build).unwrap();
        assert!(
            s.lookup_with("l", layercache::LookupMode::CHECK)
                .unwrap()
                .is_hit()
        );
    }
    let lookup = t.elapsed() / n;
    let t = Instant::now();
    for i in 0..n {
        let txn = layercache::testing::store_of(&cache).begin_write().unwrap();
        {
            let def: redb::TableDefinition<(&str, &[u8; 32]), u64> =
                redb::TableDefinition::new("probe_last_used");
            txn.open_table(def)
                .unwrap()
                .insert(("l", &[7u8; 32]), i as u64)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let write = t.elapsed() / n;
    eprintln!(
        "no-change lookup of 1000 files: {lookup:?}; one last-use write transaction: {write:?} \
         ({:.0}% of the lookup)",
        write.as_secs_f64() * 100.0 / lookup.as_secs_f64()
    );
}
