//! The child process of the crash test (`tests/testsuite/reliability_crash.rs`): puts layers in a loop and
//! prints one line to stdout after each put has committed, so a parent that kills it with
//! SIGKILL at a random moment knows which puts it may expect to find.
//!
//! Usage: `put_loop DB TREE START` — puts layers `p{START}`, `p{START+1}`, ... forever (each
//! with TREE as an import and an overlay dir, after touching one file of TREE so every put
//! writes rows), and after each also re-puts layer `hot` with definition `{"gen": N}`.
//! Prints `put p{N}` and `hot {N}` after the respective commits.

#[path = "common/outputs.rs"]
mod outputs;
use outputs::outputs;

use std::io::Write;
use std::path::PathBuf;

use layercache::{Base, Build, Cache, CacheConfig, Import, LayerInputs, OverlayDir};
use serde_json::json;

fn inputs(def: serde_json::Value, tree: &std::path::Path) -> LayerInputs {
    LayerInputs {
        definition: def,
        base: Base::Scratch,
        imports: vec![Import {
            key: "tree".into(),
            path: tree.to_path_buf(),
            dest: None,
        }],
        overlay_dirs: vec![OverlayDir {
            key: "ov".into(),
            source: tree.to_path_buf(),
            rootfs_path: tree.to_path_buf(),
        }],
        source_date_epoch: Some(1),
        build_only: false,
        uncacheable: None,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(db), Some(tree), Some(start)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: put_loop DB TREE START".into());
    };
    let tree = PathBuf::from(tree);
    let db = PathBuf::from(db);
    let manifests = outputs(&db)?;
    let start: u64 = start.to_string_lossy().parse()?;
    let cache = Cache::open(CacheConfig {
        db: db.clone(),
        oci_layout: db.parent().map(|d| d.join("oci")),
        rootfs_dir: None,
        ..Default::default()
    })?;
    let mut out = std::io::stdout().lock();
    for n in start.. {
        // A new file each round, so every put writes rows and the tree grows a little.
        std::fs::write(tree.join(format!("f{}", n % 64)), n.to_le_bytes())?;
        let mut build = Build::new();
        build.add(format!("p{n}"), inputs(json!({ "n": n }), &tree));
        build.add("hot", inputs(json!({ "gen": n }), &tree));
        let mut session = cache.session(&build)?;
        let lookup = session.lookup(&format!("p{n}"))?;
        session.put(&lookup, &manifests)?;
        writeln!(out, "put p{n}")?;
        out.flush()?;
        let lookup = session.lookup("hot")?;
        session.put(&lookup, &manifests)?;
        writeln!(out, "hot {n}")?;
        out.flush()?;
    }
    Ok(())
}
