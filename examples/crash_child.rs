//! The child process of `tests/testsuite/reliability_crash_points.rs`, built with `--features failpoints`:
//! one write, with the crash points of `layercache::testing::failpoint` configured from the `FAILPOINTS`
//! environment variable (`NAME=return` aborts the process at that point, as a crash would).
//!
//! Usage:
//! - `crash_child put DB TREE GEN`: looks up and puts layer `l` (from scratch, import `src` =
//!   TREE, definition `{"gen": GEN}`); prints `committed` once the put returned.
//! - `crash_child lookup DB TREE GEN`: looks up layer `l` (a hit refreshes stale stat data);
//!   prints `hit` or `miss`.
//! - `crash_child open DB`: opens the database for writing (which migrates an older schema);
//!   prints `opened`.
//!
//! With `PAUSE_AT=NAME` (one of `layercache::testing::failpoint::SWITCH_POINTS`) the child stops at that
//! point instead: it prints `paused at NAME` and goes on after a line on stdin.

#[path = "common/layer.rs"]
mod layer;
#[path = "common/outputs.rs"]
mod outputs;
use layer::build;
use outputs::outputs;

use std::io::{BufRead, Write};
use std::path::Path;

use layercache::{Cache, CacheConfig};

/// Makes the child stop at crash point `point` (instead of aborting there): it prints
/// `paused at POINT` and waits for a line on stdin, so a test can act (put, say) between two
/// steps of this process, exactly there.
fn pause_at(point: &'static str) -> Result<(), String> {
    fail::cfg_callback(point, move || {
        println!("paused at {point}");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    })
}

fn open(db: &Path) -> Result<Cache, layercache::Error> {
    Cache::open(CacheConfig {
        db: db.to_path_buf(),
        oci_layout: db.parent().map(|d| d.join("oci")),
        ..Default::default()
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scenario = fail::FailScenario::setup();
    if let Ok(point) = std::env::var("PAUSE_AT") {
        let point = layercache::testing::failpoint::SWITCH_POINTS
            .iter()
            .find(|p| **p == point)
            .ok_or_else(|| format!("PAUSE_AT={point}: not a switch point"))?;
        pause_at(point)?;
    }
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
