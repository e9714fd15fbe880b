//! The stacker layout hashes the overlay dir the stackerfile means, whatever the working
//! directory: a relative `source` is relative to the stackerfile's directory, as in stacker.
//! One test in its own binary, because it changes the process's working directory.

mod common;

use std::collections::BTreeMap;

use layercache::testing::stacker::{StackerLayer, StackerLayout};
use layercache::{Cache, LookupMode};
use serde_json::json;

#[test]
fn the_same_overlay_dir_is_hashed_from_any_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("proj");
    let elsewhere = tmp.path().join("elsewhere");
    common::write(&proj, "src/main.c", b"int main(void) { return 0; }\n");
    // Another `src` beside the other working directory, with other content: hashing it
    // instead of the project's would make the lookup below miss.
    common::write(&elsewhere, "src/main.c", b"something else entirely\n");
    std::fs::create_dir_all(proj.join("roots/app/overlay_dirs/src")).unwrap();
    std::fs::create_dir_all(proj.join("oci")).unwrap();

    let layout = StackerLayout::in_project(&proj);
    let app = StackerLayer::from_definition(json!({
        "from": {"type": "scratch"},
        "overlay_dirs": [{"source": "src"}],
        "build_only": true
    }))
    .unwrap();
    let layers = BTreeMap::from([("app".to_string(), app)]);
    let db = tmp.path().join("cache.redb");

    std::env::set_current_dir(&proj).unwrap();
    let build_in_proj = layout.build(&layers, None).unwrap();
    {
        let cache = Cache::open(layout.cache_config(&db)).unwrap();
        let mut s = cache.session(&build_in_proj).unwrap();
        let seen = s.lookup_for_build("app", LookupMode::FOR_BUILD).unwrap();
        s.put(&seen, &BTreeMap::new()).unwrap();
    }

    std::env::set_current_dir(&elsewhere).unwrap();
    let build_elsewhere = layout.build(&layers, None).unwrap();
    assert_eq!(
        build_elsewhere, build_in_proj,
        "the same paths from another cwd"
    );
    assert_eq!(
        build_elsewhere.layer("app").unwrap().overlay_dirs[0].source,
        proj.join("src")
    );
    let cache = Cache::open(layout.cache_config(&db)).unwrap();
    let mut s = cache.session(&build_elsewhere).unwrap();
    let l = s.lookup("app").unwrap();
    assert!(l.is_hit(), "{:?}", l.reasons());
}
