//! Writes the frozen fixtures of each released schema (run once, with the code of that schema,
//! as root so owners are 0): `cargo test --test make_v1_fixture -- --ignored make_vN`. Kept so
//! anyone can see how they were made; the v1 fixtures were made by commit fb250c2's code, the
//! v2 fixtures by the code that released schema v2 (baf87ef~1), the v3 fixture by the code that
//! released schema v3 (the parent of the commit that added schema v4). Today's code can only make
//! the current one.

mod common;

use layercache::{Cache, CacheConfig};

fn make(name: &str, build: &layercache::Build, order: &[&str], version: u32) {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let _ = std::fs::remove_file(&out);
    let cache = Cache::open(CacheConfig {
        db: out.clone(),
        oci_layout: Some(common::shared_oci()),
        ..Default::default()
    })
    .unwrap();
    let mut s = cache.session(build).unwrap();
    for layer in order {
        let l = s.lookup(layer).unwrap();
        s.put(&l, &common::outputs()).unwrap();
    }
    assert_eq!(
        layercache::testing::store_of(&cache)
            .schema_version()
            .unwrap(),
        version
    );
}

#[test]
#[ignore = "writes the frozen fixtures; run by hand only when making them"]
fn make_v1_fixtures() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "make the fixtures as root (owners 0:0)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let small = common::v1_fixture::small_inputs(&tmp.path().join("small"));
    make("v1-small.redb", &small, &["base", "mid", "app", "other"], 1);
    let large = common::v1_fixture::large_inputs(&tmp.path().join("large"), 30_000);
    make("v1-large.redb", &large, &["big"], 1);
}

#[test]
#[ignore = "writes the frozen fixture; run by hand only when making it"]
fn make_v2_fixtures() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "make the fixtures as root (owners 0:0)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let small = common::v1_fixture::small_inputs(&tmp.path().join("small"));
    make("v2-small.redb", &small, &["base", "mid", "app", "other"], 2);
    let large = common::v1_fixture::large_inputs(&tmp.path().join("large"), 30_000);
    make("v2-large.redb", &large, &["big"], 2);
}

#[test]
#[ignore = "writes the frozen fixture; run by hand only when making it"]
fn make_v3_fixtures() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "make the fixtures as root (owners 0:0)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let small = common::v1_fixture::small_inputs(&tmp.path().join("small"));
    make("v3-small.redb", &small, &["base", "mid", "app", "other"], 3);
}
