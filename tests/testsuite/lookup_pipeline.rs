//! The lookup pipeline (read state → observe → decide → apply, issue 21), through the library on
//! real trees: which sources a lookup walks when nothing can hit.

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
    let mut build = Build::new();
    build.add(
        "app",
        LayerInputs {
            definition: json!({"run": "app"}),
            base: Base::Scratch,
            overlay_dirs: vec![OverlayDir {
                key: "src".into(),
                source: w.p("src"),
                rootfs_path: w.p("roots/app/overlay_dirs/src"),
            }],
            source_date_epoch: Some(1),
            ..Default::default()
        },
    );
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
