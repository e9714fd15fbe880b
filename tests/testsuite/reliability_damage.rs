//! A damaged database: bytes flipped at many offsets, or the file truncated at many lengths.
//! Opening, lookups (of every layer, under the original inputs and under changed ones), `check`
//! and `dump` each give a typed error or a miss — never a panic (caught in-process), never an
//! abort or a signal (through the binary), and never a hit the undamaged file would not have
//! given. A damaged record costs that layer, not the cache.
//!
//! Quick run (CI): ~100 damaged copies in-process, 12 through the binary. Soak run:
//! `LAYERCACHE_SOAK=1 cargo test --release --test testsuite reliability_damage::` (20× as many;
//! `LAYERCACHE_SEED=S` replays a run).

use crate::common;
use layercache::testing::RawTransactions;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;

use layercache::inspect::{self, Inspector, RowSelection};
use layercache::testing::Store;
use layercache::testing::plan::Plan;
use layercache::testing::schema::{ROWS, VERSIONS};
use layercache::{Cache, CacheConfig, Error, MissReason};
use serde_json::json;

use common::Rng;

/// CI damages the same offsets every run (a fixed seed); the soak run draws new ones each time.
fn rng() -> Rng {
    Rng::new(
        std::env::var_os("LAYERCACHE_SOAK")
            .is_none()
            .then_some(0x5eed_1a7e_ca4e_0001),
    )
}

fn scale() -> u64 {
    if std::env::var_os("LAYERCACHE_SOAK").is_some() {
        20
    } else {
        1
    }
}

/// Layers whose changed plan must miss: `mod` (a file's content changed), `del` (a file
/// deleted), `def` (definition changed). `keep1`, `keep2` are unchanged in both plans.
const LAYERS: [&str; 5] = ["keep1", "keep2", "mod", "del", "def"];
const MUST_MISS: [&str; 3] = ["mod", "del", "def"];

fn tree(dir: &Path, files: usize, tag: &str) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..files {
        std::fs::write(
            dir.join(format!("sub/f{i:03}")),
            format!("{tag} {i}").repeat(20),
        )
        .unwrap();
    }
}

fn plan(dir: &Path, changed: bool) -> PathBuf {
    let mut layers = serde_json::Map::new();
    for l in LAYERS {
        let src = if changed && (l == "mod" || l == "del") {
            format!("trees/{l}-changed")
        } else {
            format!("trees/{l}")
        };
        let def = if changed && l == "def" {
            json!({"run": "changed"})
        } else {
            json!({"run": l})
        };
        layers.insert(
            l.to_string(),
            json!({"base": {"type": "scratch"}, "definition": def,
                   "imports": [{"key": "src", "path": src}]}),
        );
    }
    let p = dir.join(if changed { "changed.json" } else { "plan.json" });
    // A plan names where outputs are (the layers here have none: the layout stays empty).
    std::fs::create_dir_all(dir.join("oci")).unwrap();
    std::fs::write(
        &p,
        json!({ "oci_layout": "oci", "layers": layers }).to_string(),
    )
    .unwrap();
    p
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    original: Vec<u8>,
    plan: Plan,
    changed: Plan,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    for l in LAYERS {
        tree(&dir.join("trees").join(l), 30, l);
    }
    tree(&dir.join("trees/mod-changed"), 30, "mod");
    std::fs::write(dir.join("trees/mod-changed/sub/f007"), "edited").unwrap();
    tree(&dir.join("trees/del-changed"), 30, "del");
    std::fs::remove_file(dir.join("trees/del-changed/sub/f029")).unwrap();
    let plan = Plan::load(plan(&dir, false)).unwrap();
    let changed = Plan::load(plan_changed(&dir)).unwrap();
    let db = dir.join("original.redb");
    let cache = Cache::open(cfg(&db)).unwrap();
    let mut s = cache.session(plan.build()).unwrap();
    for l in LAYERS {
        let lk = s.lookup(l).unwrap();
        s.put(&lk, &common::outputs()).unwrap();
    }
    // The undamaged file: every layer hits with the plan, the three changed ones miss with the
    // changed plan.
    let mut s = cache.session(plan.build()).unwrap();
    for l in LAYERS {
        assert!(s.lookup(l).unwrap().is_hit(), "{l}");
    }
    let mut s = cache.session(changed.build()).unwrap();
    for l in LAYERS {
        assert_eq!(
            s.lookup(l).unwrap().is_hit(),
            !MUST_MISS.contains(&l),
            "{l}"
        );
    }
    drop(s);
    drop(cache);
    let original = std::fs::read(&db).unwrap();
    Fixture {
        _tmp: tmp,
        dir,
        original,
        plan,
        changed,
    }
}

fn plan_changed(dir: &Path) -> PathBuf {
    plan(dir, true)
}

fn cfg(db: &Path) -> CacheConfig {
    CacheConfig {
        db: db.to_path_buf(),
        oci_layout: Some(common::shared_oci()),
        rootfs_dir: None,
        ..Default::default()
    }
}

/// What one damaged copy did.
#[derive(Default, Debug)]
struct Tally {
    open_refused: u64,
    lookup_errors: u64,
    hits: u64,
    misses: u64,
    damaged_misses: u64,
    check_clean: u64,
    check_problems: u64,
    check_errors: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.open_refused += o.open_refused;
        self.lookup_errors += o.lookup_errors;
        self.hits += o.hits;
        self.misses += o.misses;
        self.damaged_misses += o.damaged_misses;
        self.check_clean += o.check_clean;
        self.check_problems += o.check_problems;
        self.check_errors += o.check_errors;
    }
}

/// Everything a user can do to a damaged file, in-process. Returns an error string for a false
/// hit; a panic is caught by the caller.
fn exercise(db: &Path, f: &Fixture) -> Result<Tally, String> {
    let mut t = Tally::default();
    // check and dump first: they open read-only (check also writable), and must not panic.
    match inspect::check(db) {
        Ok(r) if r.is_clean() => t.check_clean += 1,
        Ok(_) => t.check_problems += 1,
        Err(_) => t.check_errors += 1,
    }
    if let Ok(ins) = Inspector::open(db)
        && let Ok(listing) = ins.list()
    {
        let _ = serde_json::to_string(&listing);
        for l in LAYERS {
            let _ = ins.entry(l);
            if let Ok(rows) = ins.rows(l, &RowSelection::All) {
                for r in rows.flatten() {
                    let _ = serde_json::to_string(&r);
                }
            }
        }
    }
    let cache = match Cache::open(cfg(db)) {
        Ok(c) => c,
        Err(_) => {
            t.open_refused += 1;
            return Ok(t);
        }
    };
    for (plan, changed) in [(&f.changed, true), (&f.plan, false)] {
        let Ok(mut s) = cache.session(plan.build()) else {
            t.lookup_errors += 1;
            continue;
        };
        for l in LAYERS {
            match s.lookup(l) {
                Err(_) => t.lookup_errors += 1,
                Ok(lk) if lk.is_hit() => {
                    if changed && MUST_MISS.contains(&l) {
                        return Err(format!("false hit for {l} under the changed plan"));
                    }
                    t.hits += 1;
                }
                Ok(lk) => {
                    t.misses += 1;
                    if matches!(lk.reasons().first(), Some(MissReason::DamagedEntry { .. })) {
                        t.damaged_misses += 1;
                    }
                }
            }
        }
    }
    Ok(t)
}

fn run_in_process(f: &Fixture, name: &str, bytes: &[u8]) -> Result<Tally, String> {
    let db = f.dir.join(format!("{name}.redb"));
    std::fs::write(&db, bytes).unwrap();
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| exercise(&db, f)));
    std::fs::remove_file(&db).unwrap();
    match r {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panic: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

/// Offsets to damage: many in the first pages (header, region headers), the rest spread over
/// the file, biased toward non-zero bytes (where data is).
fn offsets(rng: &mut Rng, bytes: &[u8], n: u64) -> Vec<usize> {
    let len = bytes.len() as u64;
    let mut out = Vec::new();
    for i in 0..n {
        let o = match i % 3 {
            0 => rng.below(4096.min(len)),
            1 => rng.below(len),
            _ => {
                let mut o = rng.below(len);
                for _ in 0..64 {
                    if bytes[o as usize] != 0 {
                        break;
                    }
                    o = rng.below(len);
                }
                o
            }
        };
        out.push(o as usize);
    }
    out
}

#[test]
fn flipped_bytes_and_truncation_never_panic_or_hit_falsely() {
    let f = fixture();
    let mut rng = rng();
    let mut total = Tally::default();
    let mut failures = Vec::new();
    let flips = 80 * scale();
    let cuts = 24 * scale();
    for (i, off) in offsets(&mut rng, &f.original, flips)
        .into_iter()
        .enumerate()
    {
        let mut bytes = f.original.clone();
        bytes[off] ^= 1 << rng.below(8);
        match run_in_process(&f, &format!("flip{i}"), &bytes) {
            Ok(t) => total.add(&t),
            Err(e) => failures.push(format!("flip at {off}: {e}")),
        }
    }
    for i in 0..cuts {
        let len = rng.below(f.original.len() as u64) as usize;
        match run_in_process(&f, &format!("cut{i}"), &f.original[..len]) {
            Ok(t) => total.add(&t),
            Err(e) => failures.push(format!("truncated to {len}: {e}")),
        }
    }
    eprintln!(
        "{flips} flips + {cuts} truncations of a {}-byte file: {total:?}",
        f.original.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Through the binary: `lookup` of a layer whose inputs changed never exits 0, and no command
/// dies of a signal or a panic (exit 101).
#[test]
fn damaged_file_through_the_binary() {
    let f = fixture();
    let mut rng = rng();
    let changed = plan_changed(&f.dir);
    let n = 12 * scale();
    let mut failures = Vec::new();
    for (i, off) in offsets(&mut rng, &f.original, n).into_iter().enumerate() {
        let mut bytes = f.original.clone();
        if i % 4 == 3 {
            bytes.truncate(off);
        } else {
            bytes[off] ^= 1 << rng.below(8);
        }
        let db = f.dir.join("bin.redb");
        std::fs::write(&db, &bytes).unwrap();
        let runs: [(&str, Vec<&std::ffi::OsStr>); 4] = [
            (
                "check",
                vec!["check".as_ref(), "--db".as_ref(), db.as_ref()],
            ),
            ("dump", vec!["dump".as_ref(), "--db".as_ref(), db.as_ref()]),
            (
                "dump rows",
                vec![
                    "dump".as_ref(),
                    "--db".as_ref(),
                    db.as_ref(),
                    "mod".as_ref(),
                    "--files".as_ref(),
                ],
            ),
            (
                "lookup",
                vec![
                    "lookup".as_ref(),
                    "--db".as_ref(),
                    db.as_ref(),
                    "--plan".as_ref(),
                    changed.as_ref(),
                    "mod".as_ref(),
                ],
            ),
        ];
        for (what, args) in runs {
            let out = Command::new(env!("CARGO_BIN_EXE_layercache"))
                .args(&args)
                .output()
                .unwrap();
            let code = out.status.code();
            let bad = match code {
                None => Some("killed by a signal"),
                Some(101) => Some("panicked"),
                Some(0) if what == "lookup" => Some("false hit"),
                Some(0..=2) => None,
                Some(_) => Some("unexpected exit code"),
            };
            if let Some(bad) = bad {
                failures.push(format!(
                    "case {i} (offset {off}) {what}: {bad} ({:?}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Overwrites the stored record of a layer's current version with `value`; returns that
/// version's input digest.
fn overwrite_entry(db: &Path, layer: &str, value: &[u8]) -> [u8; 32] {
    let store = Store::open(db).unwrap();
    let current = {
        let txn = store.begin_read().unwrap();
        layercache::testing::store::versions::pointer(&txn, db, layer)
            .unwrap()
            .unwrap()
            .unwrap()
            .current
    };
    let txn = store.begin_write().unwrap();
    txn.open_table(VERSIONS)
        .unwrap()
        .insert((layer, &current), value)
        .unwrap();
    txn.commit().unwrap();
    current
}

fn damage_rows(db: &Path, layer: &str, how: impl Fn(&mut redb::Table<(&str, &str, &[u8]), &[u8]>)) {
    let store = Store::open(db).unwrap();
    let txn = store.begin_write().unwrap();
    {
        let mut t = txn.open_table(ROWS).unwrap();
        how(&mut t);
    }
    let _ = layer;
    txn.commit().unwrap();
}

/// A damaged record costs its layer only: an entry that does not decode, a row that does not
/// decode, and a row silently missing each make that one layer a `DamagedEntry` miss (not an
/// error, not a hit), every other layer still hits, and putting the layer again repairs it.
#[test]
fn a_damaged_record_costs_that_layer_only() {
    let f = fixture();
    let db = f.dir.join("one.redb");
    std::fs::write(&db, &f.original).unwrap();
    // keep1: garbage entry; keep2: one row's value garbage; del: the last row deleted (the
    // changed plan deletes exactly that file: a lost row must not turn into a hit).
    let keep1_version = overwrite_entry(&db, "keep1", b"\xff\xff\xff");
    damage_rows(&db, "keep2", |t| {
        t.insert(
            ("keep2", "import:src", b"sub\0f003".as_slice()),
            b"\x09garbage".as_slice(),
        )
        .unwrap();
    });
    damage_rows(&db, "del", |t| {
        assert!(
            t.remove(("del", "import:src", b"sub\0f029".as_slice()))
                .unwrap()
                .is_some()
        );
    });
    let cache = Cache::open(cfg(&db)).unwrap();
    for plan in [&f.plan, &f.changed] {
        let mut s = cache.session(plan.build()).unwrap();
        for l in LAYERS {
            let lk = s.lookup(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            match l {
                "keep1" | "keep2" | "del" => assert!(
                    matches!(lk.reasons(), [MissReason::DamagedEntry { .. }]),
                    "{l}: {:?}",
                    lk.reasons()
                ),
                "mod" | "def" if std::ptr::eq(plan, &f.changed) => assert!(!lk.is_hit()),
                _ => assert!(lk.is_hit(), "{l}: {:?}", lk.reasons()),
            }
        }
    }
    // The damaged version is named as `layer@<first 16 hex digits of its input digest>`, the
    // key `layercache check` and `gc` print, so a user can find it.
    let hex: String = keep1_version[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key = format!("keep1@{hex}");
    let lk = cache
        .session(f.plan.build())
        .unwrap()
        .lookup("keep1")
        .unwrap();
    match lk.reasons() {
        [MissReason::DamagedEntry { detail }] => {
            assert!(detail.contains(&key), "{detail:?} does not name {key}")
        }
        other => panic!("keep1: {other:?}"),
    }
    // A put replaces the damaged records; the layers hit again.
    let mut s = cache.session(f.plan.build()).unwrap();
    for l in ["keep1", "keep2", "del"] {
        let lk = s.lookup(l).unwrap();
        s.put(&lk, &common::outputs()).unwrap();
    }
    let mut s = cache.session(f.plan.build()).unwrap();
    for l in LAYERS {
        assert!(s.lookup(l).unwrap().is_hit(), "{l}");
    }
    assert!(matches!(
        Cache::open(cfg(&f.dir.join("trees"))),
        Err(Error::Io { .. } | Error::NotACache { .. } | Error::Db { .. })
    ));
}
