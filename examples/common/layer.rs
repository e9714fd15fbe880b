//! Shared by `crash_child` and `tests/testsuite/reliability_crash_points.rs` (included there with
//! `#[path]`): the build of the one layer `l` both the child and the test look up and put, so
//! the two can never disagree on its inputs.

use std::path::Path;

use layercache::{Base, Build, Import, LayerInputs};
use serde_json::json;

/// The build of layer `l`: from scratch, import `src` = `tree`, definition `{"gen": generation}`.
pub fn build(tree: &Path, generation: u64) -> Build {
    let mut b = Build::new();
    b.add(
        "l",
        LayerInputs {
            definition: json!({ "gen": generation }),
            base: Base::Scratch,
            imports: vec![Import {
                key: "src".into(),
                path: tree.to_path_buf(),
                dest: None,
            }],
            overlay_dirs: vec![],
            source_date_epoch: None,
            build_only: false,
            uncacheable: None,
        },
    );
    b
}
