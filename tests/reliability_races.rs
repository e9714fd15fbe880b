//! Races: a file rewritten while it is hashed is never recorded as current and never a hit (a
//! change between the two reads of a fresh file, placed exactly with inotify; a rewriter racing
//! puts); a file changed between lookup and put makes the put refuse; a put committed during
//! another session's lookup (placed exactly, with a fanotify gate) changes neither that lookup's snapshot nor the rows
//! its refresh writes; lookups from 8 threads (one Session each over one shared Cache) while a
//! writer puts; and `layercache dump` from another process while a build holds the database.
//!
//! Quick run (CI): a few hundred operations per test. Soak run:
//! `LAYERCACHE_SOAK=1 cargo test --release --test reliability_races` (20× as many).

mod common;

use layercache::testing::RawTransactions;
use std::collections::{BTreeMap, HashSet};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use layercache::testing::{TreeWalk, WalkedEntry};
use layercache::{
    Base, Build, Cache, CacheConfig, Error, Import, LayerInputs, MissReason, OverlayDir,
};
use serde_json::json;

#[path = "support/fanotify.rs"]
mod fanotify;
#[path = "support/inotify.rs"]
mod inotify;
#[path = "support/mapping.rs"]
mod mapping;

use fanotify::OpenGate;
use inotify::{IN_CLOSE_NOWRITE, IN_OPEN, Watch};
use mapping::Mapping;

fn scale() -> u64 {
    if std::env::var_os("LAYERCACHE_SOAK").is_some() {
        20
    } else {
        1
    }
}

fn cfg(db: &Path) -> CacheConfig {
    CacheConfig {
        db: db.to_path_buf(),
        oci_layout: Some(common::shared_oci()),
        rootfs_dir: None,
        ..Default::default()
    }
}

fn layer_with(def: serde_json::Value, import: &Path) -> LayerInputs {
    LayerInputs {
        definition: def,
        base: Base::Scratch,
        imports: vec![Import {
            key: "src".into(),
            path: import.to_path_buf(),
            dest: None,
        }],
        overlay_dirs: vec![],
        source_date_epoch: None,
        build_only: false,
        uncacheable: None,
    }
}

const BIG: usize = 4 << 20;

/// Version `v` of the big file: every byte is `v % 251 + 1` (never the original's 0), so any
/// torn read mixes two values and has a digest no complete version has.
fn version(v: u64) -> Vec<u8> {
    vec![(v % 251 + 1) as u8; BIG]
}

/// Compile-time check: one Cache can be shared by threads.
fn assert_sync<T: Sync + Send>() {}

#[test]
fn cache_is_sync() {
    assert_sync::<Cache>();
}

/// The double read of a file changed in the current timestamp tick: a write in that tick
/// leaves size, mtime and ctime as they were, so only a second read after the tick can show it.
/// The file is written through a shared mapping right before the walk (its ctime is now); the
/// change comes through the same mapping (its page already dirty: no new mtime or ctime,
/// checked) exactly after the walk's first read closed the file (inotify) and before any second
/// open (checked). The walk must mark the file unstable, never record the first read's digest.
/// An attempt whose timing missed that window is repeated (at most 20).
#[test]
fn a_same_stat_change_between_the_two_reads_of_a_fresh_file_is_never_recorded() {
    const LEN: usize = 64 << 10;
    for attempt in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("src");
        std::fs::create_dir(&dir).unwrap();
        let f = dir.join("f");
        let map = Mapping::new(&f, LEN);
        map.fill(b'a');
        let watch = Watch::new();
        watch.add(&f, IN_OPEN | IN_CLOSE_NOWRITE);
        let (entries, events) = std::thread::scope(|sc| {
            let helper = sc.spawn(|| {
                let before = watch.wait_for(IN_CLOSE_NOWRITE, Duration::from_secs(30))?;
                map.fill(b'b');
                Some((before, watch.pending()))
            });
            let entries: Vec<WalkedEntry> =
                TreeWalk::new(&dir).unwrap().map(Result::unwrap).collect();
            (entries, helper.join().unwrap())
        });
        let (before, after) = events.expect("the walk never read the file");
        let opens = |ev: &[inotify::Event]| ev.iter().filter(|e| e.mask & IN_OPEN != 0).count();
        let file = entries.iter().find(|e| !e.path.is_root()).unwrap();
        let stat_now = layercache::testing::StatData { ..file.stat };
        let m = std::fs::metadata(&f).unwrap();
        use std::os::unix::fs::MetadataExt;
        let same_stat = m.mtime() * 1_000_000_000 + m.mtime_nsec() == stat_now.mtime_ns
            && m.ctime() * 1_000_000_000 + m.ctime_nsec() == stat_now.ctime_ns
            && m.size() == LEN as u64;
        if opens(&before) != 1 || opens(&after) != 0 || !same_stat {
            eprintln!(
                "attempt {attempt}: not exactly between the reads (opens before the change {}, \
                 after {}, stat unchanged {same_stat}); again",
                opens(&before),
                opens(&after)
            );
            continue;
        }
        let first = *blake3::hash(&vec![b'a'; LEN]).as_bytes();
        assert!(
            file.unstable,
            "a change between the two reads was not seen: recorded {} (the first read's digest: {})",
            file.row.digest == first,
            blake3::Hash::from(file.row.digest)
        );
        return;
    }
    panic!("in 20 attempts, the change never landed between the two reads");
}

/// A 4 MiB file is rewritten in place in bursts (same size, a new version each time, never the
/// content first cached), with pauses between bursts, while lookups and puts run. Puts that race
/// a burst are refused (the file changed while read, or between lookup and put); puts within a
/// pause are stored. Every stored digest and every hit's digest is that of one complete version
/// written, never a torn mix. The run goes on until at least 3 puts were stored and 3 refused
/// (at most 300 rounds), and asserts that it got there.
#[test]
fn puts_racing_a_rewriter_store_only_complete_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    std::fs::create_dir(&dir).unwrap();
    let big = dir.join("big");
    std::fs::write(&big, vec![0u8; BIG]).unwrap();
    std::fs::write(dir.join("small"), b"s").unwrap();
    let mut build = Build::new();
    build.add("l", layer_with(json!(1), &dir));
    let cache = Cache::open(cfg(&tmp.path().join("c.redb"))).unwrap();
    {
        let mut s = cache.session(&build).unwrap();
        let lk = s.lookup("l").unwrap();
        s.put(&lk, &common::outputs()).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Complete versions: the first (zeros) and every one the writer writes.
    let written = Arc::new(Mutex::new(HashSet::from([
        *blake3::hash(&vec![0u8; BIG]).as_bytes()
    ])));
    let writer = {
        let (stop, written, big) = (stop.clone(), written.clone(), big.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
            let mut v = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // A burst of versions, then a pause in which a lookup and a put can agree.
                for _ in 0..4 {
                    let content = version(v);
                    written
                        .lock()
                        .unwrap()
                        .insert(*blake3::hash(&content).as_bytes());
                    f.seek(SeekFrom::Start(0)).unwrap();
                    // Two halves, so a reader can fall between them.
                    f.write_all(&content[..BIG / 2]).unwrap();
                    f.write_all(&content[BIG / 2..]).unwrap();
                    v += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(150));
            }
            v
        })
    };
    while written.lock().unwrap().len() < 2 {
        std::thread::yield_now();
    }
    let stored_big = |cache: &Cache| {
        let store = layercache::testing::store_of(cache);
        let txn = store.begin_read().unwrap();
        store
            .rows(&txn, "l", "import:src")
            .unwrap()
            .map(Result::unwrap)
            .find(|(p, _)| p.to_slash_bytes() == b"big")
            .unwrap()
            .1
            .digest
    };
    let (mut rounds, mut hits, mut put_ok, mut put_refused) = (0, 0, 0, 0);
    let mut torn = Vec::new();
    while rounds < 300 * scale() && (put_ok < 3 || put_refused < 3) {
        rounds += 1;
        let mut s = cache.session(&build).unwrap();
        let lk = s.lookup("l").unwrap();
        if lk.is_hit() {
            hits += 1;
            let d = stored_big(&cache);
            if !written.lock().unwrap().contains(&d) {
                torn.push(("hit", d));
            }
            continue;
        }
        match s.put(&lk, &common::outputs()) {
            Ok(_) => {
                put_ok += 1;
                let d = stored_big(&cache);
                if !written.lock().unwrap().contains(&d) {
                    torn.push(("put", d));
                }
            }
            Err(Error::ChangedWhileReading { .. } | Error::InputsChanged { .. }) => {
                put_refused += 1
            }
            Err(e) => panic!("unexpected put error: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let versions = writer.join().unwrap();
    eprintln!(
        "{rounds} rounds, {versions} versions written: {hits} hits, {put_ok} puts stored, \
         {put_refused} refused, {} torn",
        torn.len()
    );
    assert!(
        torn.is_empty(),
        "a torn read of a file being rewritten was recorded: {torn:?}"
    );
    assert!(
        put_ok >= 3 && put_refused >= 3,
        "the run never had both outcomes 3 times: {put_ok} stored, {put_refused} refused"
    );
}

/// The put checks its walk against what the lookup saw: a file changed between lookup and put
/// (by the build itself, or anyone else) makes the put refuse with `InputsChanged` naming the
/// path, and store nothing — neither for an uncached layer nor over a cached one.
#[test]
fn a_file_changed_between_lookup_and_put_makes_the_put_refuse_and_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f"), b"one").unwrap();
    std::fs::write(dir.join("g"), b"unchanged").unwrap();
    let mut build = Build::new();
    build.add("l", layer_with(json!(1), &dir));
    let cache = Cache::open(cfg(&tmp.path().join("c.redb"))).unwrap();
    let refused = |cache: &Cache, content: &[u8]| {
        let mut s = cache.session(&build).unwrap();
        let lk = s.lookup("l").unwrap();
        assert!(!lk.is_hit());
        std::fs::write(dir.join("f"), content).unwrap();
        match s.put(&lk, &common::outputs()) {
            Err(Error::InputsChanged { layer, changes }) => {
                let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
                assert_eq!(layer, "l");
                assert_eq!(changes.len(), 1, "{changes:?}");
                assert!(changes[0].ends_with("/f"), "{changes:?}");
            }
            other => panic!("a put after a change since its lookup: {other:?}"),
        }
    };
    // Uncached: nothing is stored.
    refused(&cache, b"two!");
    assert!(cache.entry("l").unwrap().is_none());
    assert_eq!(
        layercache::testing::store_of(&cache)
            .row_count("l", "import:src")
            .unwrap(),
        0
    );
    // Cached: the entry and rows stay those of the earlier put.
    let mut s = cache.session(&build).unwrap();
    let lk = s.lookup("l").unwrap();
    let before = s.put(&lk, &common::outputs()).unwrap();
    std::fs::write(dir.join("f"), b"three").unwrap();
    refused(&cache, b"four!!");
    assert_eq!(cache.entry("l").unwrap().unwrap(), before);
}

/// Trees `a` and `b` under `d`, each with imports `s1` and `s2` of 10 files (same names and
/// sizes, other content); a build of layer `l` from either.
fn two_source_trees(d: &Path) -> (Build, Build) {
    for t in ["a", "b"] {
        for s in ["s1", "s2"] {
            std::fs::create_dir_all(d.join(t).join(s)).unwrap();
            for i in 0..10 {
                std::fs::write(
                    d.join(t).join(s).join(format!("f{i}")),
                    format!("{t}{s}{i}"),
                )
                .unwrap();
            }
        }
    }
    let build_of = |t: &str| {
        let mut l = layer_with(json!("l"), &d.join(t).join("s1"));
        l.imports.push(Import {
            key: "s2".into(),
            path: d.join(t).join("s2"),
            dest: None,
        });
        let mut b = Build::new();
        b.add("l", l);
        b
    };
    (build_of("a"), build_of("b"))
}

/// A put committed while another session's lookup is running, placed exactly: the lookup of
/// layer `l` (two imports, from tree `a`, whose files were touched so the lookup reads them) is
/// held inside its walk of the first import — its open of `a/s1/f0` waits on a fanotify gate —
/// while another thread looks up and puts `l` from tree `b` and commits; then the open goes on.
/// The lookup must still see one snapshot — the entry and the rows of `a` (a hit, not a
/// `DamagedEntry` from `b`'s rows of the second import) — and the refresh after its hit must
/// leave `b`'s rows alone (they are not the rows it verified): a lookup from `a` afterwards
/// misses.
#[test]
fn a_put_committed_during_a_lookup_changes_neither_its_snapshot_nor_the_rows_it_refreshes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (build_a, build_b) = two_source_trees(d);
    let cache = Cache::open(cfg(&d.join("c.redb"))).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut s = cache.session(&build_a).unwrap();
    let lk = s.lookup("l").unwrap();
    let put_a = s.put(&lk, &common::outputs()).unwrap();
    let roots_a: Vec<[u8; 32]> = put_a.imports.iter().map(|s| s.root_digest).collect();
    // Touched: the stat no longer vouches, so the lookup opens (and reads) every file of a.
    let hour_ago = filetime::FileTime::from_system_time(
        std::time::SystemTime::now() - Duration::from_secs(3600),
    );
    for s in ["s1", "s2"] {
        for i in 0..10 {
            filetime::set_file_mtime(d.join(format!("a/{s}/f{i}")), hour_ago).unwrap();
        }
    }
    let gate = match OpenGate::new(&d.join("a/s1/f0")) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skipped: cannot hold opens with fanotify here ({e}); needs root");
            return;
        }
    };
    let (reader, put_b) = std::thread::scope(|sc| {
        let (pool, cache, build_b) = (&pool, &cache, &build_b);
        let helper = sc.spawn(move || {
            let held = gate.next_open(Duration::from_secs(60));
            let put_b = held.as_ref().map(|_| {
                pool.install(|| {
                    let mut s = cache.session(build_b).unwrap();
                    let lk = s.lookup("l").unwrap();
                    s.put(&lk, &common::outputs()).unwrap()
                })
            });
            // Let this open go on, and every later one (the walk reads a fresh file twice).
            drop(held);
            drop(gate);
            put_b.expect("the lookup never opened a/s1/f0")
        });
        let mut s = cache.session(&build_a).unwrap();
        let lk = s.lookup("l").unwrap();
        (lk, helper.join().unwrap())
    });
    assert_eq!(cache.entry("l").unwrap().as_ref(), Some(&put_b));
    // The reader's lookup saw the entry of a and must have verified it against the rows of a
    // (its snapshot), although b's were committed before it read the second import's rows.
    match reader.entry() {
        Some(e) => assert_eq!(
            e.record
                .imports
                .iter()
                .map(|s| s.root_digest)
                .collect::<Vec<_>>(),
            roots_a
        ),
        None => panic!(
            "a put during a lookup changed what it saw: {:?}",
            reader.reasons()
        ),
    }
    // The refresh after that hit must not have stamped a's stat data on b's rows: if it had, a
    // lookup from a would stat-match b's digests and hit b's version. With many versions per
    // layer (schema v3) a lookup from a may hit — but only a's own version, never b's.
    let mut s = cache.session(&build_a).unwrap();
    let again = s.lookup("l").unwrap();
    if let Some(e) = again.entry() {
        assert_eq!(
            e.record
                .imports
                .iter()
                .map(|s| s.root_digest)
                .collect::<Vec<_>>(),
            roots_a,
            "a lookup from a hit b's version (the refresh wrote a's stat data into b's rows)"
        );
    }
}

/// 8 threads, each with its own Session over one shared Cache, look layers up while a writer
/// thread puts them alternately from two different import trees. A reader hits only when the
/// stored entry was put from *its* tree (checked against that tree's Merkle root), misses only
/// because the entry is the other tree's (never as damage), and no lookup fails; both outcomes
/// occur.
#[test]
fn eight_readers_and_a_writer_see_only_whole_entries_of_their_own_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for t in ["a", "b"] {
        for i in 0..20 {
            let p = d.join(t).join(format!("f{i}"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{t}{i}")).unwrap();
        }
    }
    let layers: Vec<String> = (0..4).map(|i| format!("l{i}")).collect();
    let build_of = |t: &str| {
        let mut b = Build::new();
        for l in &layers {
            b.add(l.clone(), layer_with(json!({"l": l}), &d.join(t)));
        }
        b
    };
    let (build_a, build_b) = (build_of("a"), build_of("b"));
    let cache = Cache::open(cfg(&d.join("c.redb"))).unwrap();
    // The Merkle roots of the two trees, from a first put of each.
    let mut roots = BTreeMap::new();
    for (t, b) in [("b", &build_b), ("a", &build_a)] {
        let mut s = cache.session(b).unwrap();
        let lk = s.lookup("l0").unwrap();
        let rec = s.put(&lk, &common::outputs()).unwrap();
        roots.insert(t, rec.imports[0].root_digest);
    }
    let stop = AtomicBool::new(false);
    let (hits, misses, puts) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let rounds = 30 * scale();
    std::thread::scope(|sc| {
        let writer = sc.spawn(|| {
            for i in 0..rounds * 2 {
                let b = if i % 2 == 0 { &build_b } else { &build_a };
                let mut s = cache.session(b).unwrap();
                for l in &layers {
                    let lk = s.lookup(l).unwrap();
                    s.put(&lk, &common::outputs()).unwrap();
                    puts.fetch_add(1, Ordering::Relaxed);
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        let readers: Vec<_> = (0..8)
            .map(|r| {
                let (build, mine) = if r % 2 == 0 {
                    (&build_a, roots["a"])
                } else {
                    (&build_b, roots["b"])
                };
                let (cache, layers, stop, hits, misses) = (&cache, &layers, &stop, &hits, &misses);
                sc.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let mut s = cache.session(build).unwrap();
                        for l in layers {
                            let lk = s.lookup(l).unwrap_or_else(|e| panic!("reader {r}: {e}"));
                            match lk.entry() {
                                Some(e) => {
                                    assert_eq!(e.record.imports[0].root_digest, mine);
                                    hits.fetch_add(1, Ordering::Relaxed);
                                }
                                None => {
                                    // The only true reasons: the entry is the other tree's,
                                    // or not put yet. Rows read from another snapshot than
                                    // the entry's would show as damage.
                                    assert!(
                                        matches!(
                                            lk.reasons(),
                                            [MissReason::ImportContentChanged { .. }
                                                | MissReason::NotCached]
                                        ),
                                        "reader {r}: {:?}",
                                        lk.reasons()
                                    );
                                    misses.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
    });
    eprintln!(
        "{} puts by the writer; readers: {} hits, {} misses, no error",
        puts.load(Ordering::Relaxed),
        hits.load(Ordering::Relaxed),
        misses.load(Ordering::Relaxed)
    );
    assert!(hits.load(Ordering::Relaxed) > 0 && misses.load(Ordering::Relaxed) > 0);
}

/// `layercache dump` (and `dump --json`, and `check`) from other processes while this process
/// holds the database open for writing and puts layers: dump always succeeds and lists only
/// layers that were committed; check runs its read-only part and reports the file in use.
#[test]
fn dump_from_another_process_during_a_build() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src: PathBuf = d.join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..30 {
        std::fs::write(src.join(format!("f{i}")), format!("{i}")).unwrap();
    }
    let db = d.join("c.redb");
    let cache = Cache::open(cfg(&db)).unwrap();
    let n = 15 * scale();
    let mut build = Build::new();
    for i in 0..n {
        let mut l = layer_with(json!({ "i": i }), &src);
        l.overlay_dirs.push(OverlayDir {
            key: "ov".into(),
            source: src.clone(),
            rootfs_path: src.clone(),
        });
        build.add(format!("l{i:04}"), l);
    }
    let mut s = cache.session(&build).unwrap();
    let mut dumps = 0;
    for i in 0..n {
        let name = format!("l{i:04}");
        let lk = s.lookup(&name).unwrap();
        s.put(&lk, &common::outputs()).unwrap();
        // A dump started right after the commit, while the writer keeps the file open.
        let out = common::cli_ok(&["dump", "--json"], &db);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let text = v.to_string();
        for j in 0..=i {
            assert!(
                text.contains(&format!("l{j:04}")),
                "dump misses committed l{j:04}"
            );
        }
        assert!(!text.contains(&format!("l{:04}", i + 1)));
        dumps += 1;
        if i % 5 == 0 {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_layercache"))
                .args(["check", "--db"])
                .arg(&db)
                .output()
                .unwrap();
            assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
        }
    }
    eprintln!("{n} puts, {dumps} dumps from another process during the build");
}
