//! Crash consistency: a child process (`examples/put_loop.rs`) puts layers in a loop and prints a
//! line after each committed put; it is killed with SIGKILL at random moments (while opening and
//! recovering the file, inside a put's walk, inside a commit). After every kill the database
//! opens, redb's integrity check passes, `check` (library and binary) finds no problem, every
//! entry decodes, and every put the child reported as committed is there with all its rows.
//!
//! Quick run (CI): 12 kills. Soak run: `LAYERCACHE_SOAK=1 cargo test --release --test
//! reliability_crash` does 150 (`LAYERCACHE_KILLS=N` sets any number; `LAYERCACHE_SEED=S`
//! replays a run).

use crate::common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use layercache::inspect;
use layercache::testing::Store;
use layercache::{Cache, CacheConfig};

use common::Rng;

fn kills() -> u64 {
    if let Some(n) = std::env::var("LAYERCACHE_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return n;
    }
    if std::env::var_os("LAYERCACHE_SOAK").is_some() {
        150
    } else {
        12
    }
}

/// The put_loop example, built beside this test. Always (re)built: a stale child from older
/// code would write rows the current code cannot read (cargo makes this a no-op when fresh).
fn child_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let child = profile_dir.join("examples").join("put_loop");
    {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--example", "put_loop", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "cannot build put_loop");
    }
    assert!(child.exists(), "{} missing", child.display());
    child
}

/// What the child reported committed: the `p{N}` layers and the newest `hot` generation.
#[derive(Default)]
struct Reported {
    puts: BTreeSet<u64>,
    hot: Option<u64>,
}

impl Reported {
    fn take(&mut self, line: &str) {
        if let Some(n) = line.strip_prefix("put p") {
            self.puts.insert(n.parse().unwrap());
        } else if let Some(n) = line.strip_prefix("hot ") {
            let n: u64 = n.parse().unwrap();
            self.hot = Some(self.hot.map_or(n, |h| h.max(n)));
        } else {
            panic!("unexpected line from the child: {line:?}");
        }
    }
}

/// Everything that must hold after a kill.
fn verify(db: &Path, reported: &Reported, kill: u64) {
    // redb's own page-level check, through a writable open.
    let mut store = Store::open(db).unwrap_or_else(|e| panic!("kill {kill}: open: {e}"));
    assert!(
        store.check_integrity().unwrap().unwrap(),
        "kill {kill}: redb integrity check repaired the file after a crash"
    );
    drop(store);
    // Every record decodes and every summary agrees with its rows.
    let report = inspect::check(db).unwrap();
    assert!(report.is_clean(), "kill {kill}: {:?}", report.problems);
    // Every reported put is there, with as many rows as its summaries say.
    let cache = Cache::open(CacheConfig {
        db: db.to_path_buf(),
        oci_layout: None,
        rootfs_dir: None,
        ..Default::default()
    })
    .unwrap();
    for n in &reported.puts {
        let layer = format!("p{n}");
        let rec = cache
            .entry(&layer)
            .unwrap()
            .unwrap_or_else(|| panic!("kill {kill}: committed put {layer} is lost"));
        for s in rec.imports.iter().chain(&rec.overlay_dirs) {
            assert_eq!(
                layercache::testing::store_of(&cache)
                    .row_count(&layer, &s.source)
                    .unwrap(),
                s.rows
            );
            assert!(s.rows > 1);
        }
    }
    if let Some(h) = reported.hot {
        let rec = cache.entry("hot").unwrap().expect("hot entry lost");
        let def: serde_json::Value = serde_json::from_slice(&rec.definition_json).unwrap();
        let gen_ = def["gen"].as_u64().unwrap();
        // The committed generation, or the next one if it committed just before the kill.
        assert!(gen_ >= h, "kill {kill}: hot went back from {h} to {gen_}");
    }
}

#[test]
fn sigkill_during_puts_loses_nothing_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("cache.redb");
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for i in 0..40 {
        std::fs::write(tree.join(format!("sub/file{i}")), vec![i as u8; 3000]).unwrap();
    }
    let child = child_exe();
    let mut rng = Rng::new(None);
    let mut reported = Reported::default();
    let mut next = 0u64;
    let total = kills();
    let mut killed_mid_put = 0;
    for kill in 0..total {
        let mut proc = Command::new(&child)
            .arg(&db)
            .arg(&tree)
            .arg(next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = proc.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for 0..6 committed puts, then a random extra 0..25 ms, then SIGKILL.
        let wait_for = rng.below(7);
        let mut got = 0;
        while got < wait_for {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    reported.take(&line);
                    got += 1;
                }
                Err(e) => panic!("child stopped reporting: {e}"),
            }
        }
        std::thread::sleep(Duration::from_micros(rng.below(25_000)));
        proc.kill().unwrap();
        let status = proc.wait().unwrap();
        reader.join().unwrap();
        for line in rx.try_iter() {
            reported.take(&line);
        }
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the child died on its own: {status:?}"
        );
        if let Some(&max) = reported.puts.last() {
            next = max + 2;
        }
        killed_mid_put += u64::from(wait_for > 0);
        verify(&db, &reported, kill);
        // The binary's check agrees, and exits 0.
        common::cli_ok(&["check"], &db);
    }
    eprintln!(
        "{total} kills ({killed_mid_put} after at least one put), {} puts reported committed, all present",
        reported.puts.len()
    );
    assert!(!reported.puts.is_empty());
}
