//! The child process of `tests/reliability_crash_points.rs`, built with `--features failpoints`:
//! one write, with the crash points of `layercache::failpoint` configured from the `FAILPOINTS`
//! environment variable (`NAME=return` aborts the process at that point, as a crash would).
//!
//! Usage:
//! - `crash_child put DB TREE GEN`: looks up and puts layer `l` (from scratch, import `src` =
//!   TREE, definition `{"gen": GEN}`); prints `committed` once the put returned.
//! - `crash_child lookup DB TREE GEN`: looks up layer `l` (a hit refreshes stale stat data);
//!   prints `hit` or `miss`.
//! - `crash_child open DB`: opens the database for writing (which migrates an older schema);
//!   prints `opened`.

#[path = "common/outputs.rs"]
mod outputs;
use outputs::outputs;

use std::path::Path;

use layercache::{Base, Build, Cache, CacheConfig, Import, LayerInputs};
use serde_json::json;

/// The build of layer `l` both this child and the test use.
fn build(tree: &Path, generation: u64) -> Build {
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

fn open(db: &Path) -> Result<Cache, layercache::Error> {
    Cache::open_without_prune(CacheConfig {
        db: db.to_path_buf(),
        oci_layout: db.parent().map(|d| d.join("oci")),
        ..Default::default()
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scenario = fail::FailScenario::setup();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> Result<&str, String> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| "usage: crash_child put|lookup DB TREE GEN | open DB".to_string())
    };
    let db = Path::new(arg(1)?);
    match arg(0)? {
        "put" | "lookup" => {
            let tree = Path::new(arg(2)?);
            let build = build(tree, arg(3)?.parse()?);
            let manifests = outputs(db)?;
            let cache = open(db)?;
            let mut session = cache.session(&build)?;
            let lookup = session.lookup("l")?;
            if arg(0)? == "put" {
                session.put(&lookup, &manifests)?;
                println!("committed");
            } else {
                println!("{}", if lookup.is_hit() { "hit" } else { "miss" });
            }
        }
        "open" => {
            open(db)?;
            println!("opened");
        }
        other => return Err(format!("unknown command {other:?}").into()),
    }
    scenario.teardown();
    Ok(())
}
