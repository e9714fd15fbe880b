//! The demo example's logic, run in a temp dir: the same three rounds `cargo run --example demo`
//! prints, checked here through its summary and independently of its self-check.

use crate::demo_example as demo;

use layercache::{BaseChange, Change, MissReason, RelPath};

#[test]
fn demo_misses_then_hits_then_misses_exactly_the_edited_layer_and_its_dependents() {
    let tmp = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let summary = demo::run(tmp.path(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();

    // The demo's own check agrees.
    summary.check().unwrap();

    assert_eq!(summary.rounds.len(), 3);
    let names = |round: usize| -> Vec<&str> {
        summary.rounds[round]
            .layers
            .iter()
            .map(|l| l.layer.as_str())
            .collect()
    };
    for round in 0..3 {
        assert_eq!(names(round), demo::LAYERS);
    }
    // Round 1: every layer misses as not cached, and was put.
    for l in &summary.rounds[0].layers {
        assert_eq!(l.reasons, vec![MissReason::NotCached], "{}", l.layer);
        assert!(l.build_put.is_some());
    }
    // Round 2: every layer hits, nothing is rebuilt.
    for l in &summary.rounds[1].layers {
        assert!(
            l.hit && l.reasons.is_empty() && l.build_put.is_none(),
            "{}",
            l.layer
        );
    }
    // Round 3: app misses naming the edited file (and only it); release, built on app, misses
    // because its base was rebuilt; base, deps and docs hit.
    assert_eq!(summary.affected, vec!["app", "release"]);
    for l in &summary.rounds[2].layers {
        match l.layer.as_str() {
            "app" => match l.reasons.as_slice() {
                [MissReason::OverlayDirContentChanged { key, diff }] => {
                    assert_eq!(*key, tmp.path().join("monorepo").to_str().unwrap());
                    assert!(diff.added.is_empty() && diff.removed.is_empty(), "{diff}");
                    assert_eq!(diff.modified.len(), 1, "{diff}");
                    assert_eq!(
                        diff.modified[0].path,
                        RelPath::from_slash_bytes(demo::EDITED.as_bytes())
                    );
                    assert_eq!(diff.modified[0].changes, vec![Change::Content]);
                }
                other => panic!("app: {other:?}"),
            },
            "release" => assert!(
                matches!(
                    l.reasons.as_slice(),
                    [MissReason::BaseChanged {
                        change: BaseChange::HashChanged { .. }
                    }]
                ),
                "release: {:?}",
                l.reasons
            ),
            other => assert!(l.hit, "{other}: {:?}", l.reasons),
        }
    }
    // The lookup of the edited layer read the edited file: work is counted, not timed.
    assert!(summary.rounds[2].counters.walk.files_hashed >= 1);
    // Nothing changed in round 2: the stat fast path reads no file (the generated files are
    // dated an hour back, past the racy slack).
    assert_eq!(summary.rounds[1].counters.walk.files_hashed, 0);
    assert!(summary.rounds[0].counters.walk.files_hashed > 300);

    // What a person sees names the file.
    assert!(
        text.contains(&format!("modified {} (content)", demo::EDITED)),
        "{text}"
    );
    assert!(text.contains("round 3: one file edited"), "{text}");
}
