//! The whole-process scale benchmark: limits and cache phases measured in ONE run on ONE
//! generated tree, each phase printed as a ratio to its limit (see README, "Performance").
//!
//! ```text
//! cargo bench --bench scale                          # 10^5 files, best of 3
//! cargo bench --bench scale -- --files 1000000       # the scale run
//! cargo bench --bench scale -- --files 1000 --quick  # CI smoke (seconds)
//! ```
//!
//! Options: `--files N`, `--quick` (10^4 files unless `--files`, one repetition, small open and
//! chain sizes), `--reps K`, `--dir D` (where the tree and databases go; default a fresh
//! directory under /tmp, removed at the end), `--json P` (summary path; default
//! `target/scale-<N>.json`), `--cycles C` (touch + lookup cycles of the database-growth
//! measurement; default 20, 2 with `--quick`), `--profile PHASE` (for `perf record`: generate
//! the tree, then repeat one phase — `put`, `nochange` or `touched` — `--reps` times, and print
//! nothing else; with `--dir`, a later run reuses the tree and, for the lookup phases, the
//! database while it hits), `--mode MODE` (one operation in a fresh process, for each mode's own peak
//! RSS: `setup` generates the tree in `--dir` with a cold put and a settling lookup, then
//! `check`, `for_build`, `put` (a cold lookup + put into a database of its own), `touch`
//! (every file's mtime, unmeasured) then `touched`, `change` (1% of the files get other bytes,
//! unmeasured) then `put_change` (FOR_BUILD lookup + put of it, with the database's size before
//! and after); each prints its time, counters and the process's VmHWM).
//!
//! Besides the cache's phases it measures the two walkers alone against limit 1 (enumeration
//! only, and the stat-fast-path walk without the diff: [`walker_phases`]), the database's bytes
//! per row (file and payload, keys apart) and its growth over `--cycles` touch + lookup cycles,
//! compacted at the end ([`database_growth`]).
//!
//! Everything is measured warm (the page cache holds the tree: it was just written and read once
//! before the first measured phase), for the limits and the phases alike; each time is the best
//! of K repetitions. Lookups are measured in [`LookupMode::CHECK`] (no per-path observations
//! kept); the FOR_BUILD lookup is reported beside it. Every phase checks its work counters
//! (files hashed, stat matches, refreshed rows, hit or miss), so the benchmark exits non-zero if
//! the cache stops doing what the numbers claim.

mod treegen;

use layercache::testing::RawTransactions;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use layercache::testing::tree::{Enumerator, OrderedDirs};
use layercache::testing::{TreeWalk, codec};
use layercache::{Base, Build, Cache, CacheConfig, Import, LayerInputs, LookupMode, MissReason};
use rayon::prelude::*;
use serde_json::{Value, json};

struct Args {
    files: u64,
    quick: bool,
    reps: usize,
    dir: Option<PathBuf>,
    json: Option<PathBuf>,
    profile: Option<String>,
    mode: Option<String>,
    cycles: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        files: 0,
        quick: false,
        reps: 0,
        dir: None,
        json: None,
        profile: None,
        mode: None,
        cycles: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--files" => {
                a.files = val("--files")?
                    .parse()
                    .map_err(|e| format!("--files: {e}"))?
            }
            "--reps" => a.reps = val("--reps")?.parse().map_err(|e| format!("--reps: {e}"))?,
            "--quick" => a.quick = true,
            "--dir" => a.dir = Some(PathBuf::from(val("--dir")?)),
            "--json" => a.json = Some(PathBuf::from(val("--json")?)),
            "--profile" => a.profile = Some(val("--profile")?),
            "--mode" => a.mode = Some(val("--mode")?),
            "--cycles" => {
                a.cycles = Some(
                    val("--cycles")?
                        .parse()
                        .map_err(|e| format!("--cycles: {e}"))?,
                )
            }
            // cargo bench passes --bench; filters are not used.
            "--bench" => {}
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            _ => {}
        }
    }
    if a.files == 0 {
        a.files = if a.quick { 10_000 } else { 100_000 };
    }
    if a.reps == 0 {
        a.reps = if a.quick { 1 } else { 3 };
    }
    if a.cycles.is_none() {
        a.cycles = Some(if a.quick { 2 } else { 20 });
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// Peak RSS per phase.

/// Resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak RSS since the last reset, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------
// The limits.

/// Limit 1: a raw parallel lstat walk. One rayon task per directory: read it, lstat every entry
/// (the same `symlink_metadata` on the full path the cache's walk uses), recurse into
/// subdirectories in parallel. No sorting, no hashing, no database.
fn lstat_walk(dir: &Path) -> u64 {
    let mut n = 0;
    let mut subdirs = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if let Ok(m) = std::fs::symlink_metadata(&p) {
                n += 1;
                if m.is_dir() {
                    subdirs.push(p);
                }
            }
        }
    }
    n + subdirs.par_iter().map(|d| lstat_walk(d)).sum::<u64>()
}

/// Reads every file under `root` (untimed), so that a phase that reads content finds it in the
/// page cache as limit 2 did. Needed on this machine: a DAMON `pageout` scheme
/// (`/sys/kernel/mm/damon/admin/kdamonds/0`: regions idle for 12 × 5 s, up to 128 MiB/s) evicts
/// page cache nobody read for a minute, so at 10^6 files (5.7 GiB) the content read by limit 2
/// is on disk again by the time the touched lookup runs, minutes later.
fn warm(root: &Path) {
    hash_all(&list_files(root));
}

/// Every regular file under `root` with its size (untimed setup of limit 2).
fn list_files(root: &Path) -> Vec<(PathBuf, u64)> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| Some((e.path().to_path_buf(), e.metadata().ok()?.len())))
        .collect()
}

/// blake3 of one file with plain reads; files of 1 MiB and more are read whole and hashed with
/// blake3's multi-threaded `update_rayon`.
fn raw_hash(path: &Path, size: u64) -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    if size >= 1 << 20 {
        let mut buf = Vec::with_capacity(size as usize);
        f.read_to_end(&mut buf)?;
        h.update_rayon(&buf);
    } else {
        let mut buf = [0u8; 64 << 10];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(*h.finalize().as_bytes())
}

/// Limit 2: raw parallel blake3 of every file's bytes, one rayon task per file.
fn hash_all(files: &[(PathBuf, u64)]) -> u64 {
    files
        .par_iter()
        .map(|(p, s)| {
            raw_hash(p, *s).map(|d| u64::from(d[0])).unwrap_or(0);
            *s
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Measuring.

/// One measured phase.
struct Phase {
    name: &'static str,
    secs: f64,
    limit: Option<&'static str>,
    target: Option<f64>,
    rss_mib: f64,
    extra: Value,
}

struct Bench {
    reps: usize,
    phases: Vec<Phase>,
    limits: BTreeMap<&'static str, f64>,
    failures: Vec<String>,
}

impl Bench {
    /// Runs `setup` (untimed) and `run` (timed) `reps` times; keeps the best time and the last
    /// result. The peak RSS covers the runs (and setups) of this phase only.
    fn measure<T>(
        &mut self,
        reps: usize,
        mut setup: impl FnMut(),
        mut run: impl FnMut() -> T,
    ) -> (Duration, T, f64) {
        reset_peak_rss();
        let mut best = Duration::MAX;
        let mut last = None;
        for _ in 0..reps.max(1) {
            setup();
            let t = Instant::now();
            let r = run();
            best = best.min(t.elapsed());
            last = Some(r);
        }
        let rss = peak_rss_mib();
        match last {
            Some(r) => (best, r, rss),
            None => unreachable!("reps >= 1"),
        }
    }

    fn record(
        &mut self,
        name: &'static str,
        d: Duration,
        rss: f64,
        limit: Option<&'static str>,
        target: Option<f64>,
        extra: Value,
    ) {
        self.phases.push(Phase {
            name,
            secs: d.as_secs_f64(),
            limit,
            target,
            rss_mib: rss,
            extra,
        });
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let what = what.into();
            eprintln!("CHECK FAILED: {what}");
            self.failures.push(what);
        }
    }

    fn ratio(&self, p: &Phase) -> Option<f64> {
        p.limit.and_then(|l| self.limits.get(l)).map(|l| p.secs / l)
    }
}

fn fmt_secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

/// A build of one layer `app` importing `tree` (the whole tree is one import: one source).
fn one_layer_build(tree: &Path) -> Build {
    let mut b = Build::new();
    b.add(
        "app",
        LayerInputs {
            definition: json!({"run": "make"}),
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

/// An OCI layout next to the benchmark's databases holding the one output blob every layer
/// records ([`outputs`]): a hit checks that its outputs exist.
fn layout() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("temp dir");
        let hex = blake3::hash(OUTPUT).to_hex().to_string();
        let blobs = d.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("blobs dir");
        std::fs::write(blobs.join(hex), OUTPUT).expect("blob");
        d
    })
    .path()
}

const OUTPUT: &[u8] = b"benchmark output";

/// Output manifests pointing at the blob of [`layout`]: a layer that is not build-only records
/// outputs.
fn outputs() -> BTreeMap<String, oci_spec::image::Descriptor> {
    let hex = blake3::hash(OUTPUT).to_hex().to_string();
    let d = serde_json::from_value(json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": format!("sha256:{hex}"),
        "size": OUTPUT.len(),
    }))
    .expect("descriptor");
    BTreeMap::from([("tar".to_string(), d)])
}

fn open(db: &Path) -> Cache {
    match Cache::open(CacheConfig {
        db: db.to_path_buf(),
        oci_layout: Some(layout().to_path_buf()),
        ..Default::default()
    }) {
        Ok(c) => c,
        Err(e) => panic!("open {}: {e}", db.display()),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("scale: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("scale: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let own_dir = args.dir.is_none();
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("layercache-scale-{}", std::process::id())),
    };
    let result = run_in(args, &base);
    if own_dir {
        let _ = std::fs::remove_dir_all(&base);
    }
    result
}

fn run_in(args: &Args, base: &Path) -> Result<bool, Box<dyn std::error::Error>> {
    let tree = base.join("tree");
    // A profile run in a given directory reuses the tree of an earlier one of the same size.
    let done = base.join(format!("tree-{}.done", args.files));
    if let Some(mode) = &args.mode
        && (mode != "setup" || done.exists())
    {
        if !done.exists() {
            return Err(format!("--mode {mode}: run --mode setup with this --dir first").into());
        }
        return one_mode(mode, &tree, base);
    }
    if args.profile.is_some() && done.exists() {
        return profile(
            args.profile.as_deref().unwrap_or(""),
            &tree,
            base,
            args.reps,
        );
    }
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    let _ = std::fs::remove_file(&done);
    std::fs::create_dir_all(base)?;
    let threads = rayon::current_num_threads();
    println!(
        "layercache scale benchmark: {} files, best of {}, {} rayon threads, warm page cache",
        args.files, args.reps, threads
    );
    let t = Instant::now();
    let stats = treegen::generate(&tree, args.files, 42)?;
    // SAFETY: sync(2) takes no arguments; it flushes dirty pages so writeback does not run
    // during the measurements.
    unsafe { libc::sync() };
    println!(
        "tree: {} files ({} MiB, {} of >= 1 MiB, {} executable), {} dirs, {} symlinks, depth {}; generated in {:.1} s",
        stats.files,
        stats.bytes >> 20,
        stats.large_files,
        stats.executables,
        stats.dirs,
        stats.symlinks,
        stats.max_depth,
        t.elapsed().as_secs_f64()
    );
    let entries_total = stats.files + stats.dirs + stats.symlinks;
    let mut b = Bench {
        reps: args.reps,
        phases: Vec::new(),
        limits: BTreeMap::new(),
        failures: Vec::new(),
    };
    let reps = b.reps;

    if args.mode.is_some() {
        one_mode("setup", &tree, base)?;
        std::fs::write(&done, b"")?;
        return Ok(true);
    }
    if let Some(phase) = &args.profile {
        std::fs::write(&done, b"")?;
        return profile(phase, &tree, base, args.reps);
    }

    // ---- limits (after one untimed pass that reads everything, so both are warm)
    let files = list_files(&tree);
    hash_all(&files);
    let (d, n, rss) = b.measure(reps, || {}, || lstat_walk(&tree));
    b.check(
        n + 1 == entries_total,
        format!("lstat walk saw {n} + root entries, expected {entries_total}"),
    );
    b.limits.insert("limit1", d.as_secs_f64());
    b.record(
        "limit 1: raw parallel lstat walk",
        d,
        rss,
        None,
        None,
        json!({"entries": n + 1}),
    );
    let (d, bytes, rss) = b.measure(reps, || {}, || hash_all(&files));
    b.check(bytes == stats.bytes, "raw hash did not read every byte");
    b.limits.insert("limit2", d.as_secs_f64());
    b.record(
        "limit 2: raw parallel blake3",
        d,
        rss,
        None,
        None,
        json!({"bytes": bytes, "mib_per_s": bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()}),
    );
    drop(files);

    // ---- cold put
    let db = base.join("cache.redb");
    let build = one_layer_build(&tree);
    let manifests = outputs();
    let (d, counters, rss) = b.measure(
        reps,
        || {
            let _ = std::fs::remove_file(&db);
            warm(&tree);
        },
        || {
            let cache = open(&db);
            let mut s = cache.session(&build).expect("session");
            let l = s
                .lookup_for_build("app", LookupMode::CHECK)
                .expect("lookup");
            assert!(!l.is_hit());
            s.put(&l, &manifests).expect("put");
            s.counters()
        },
    );
    // The lookup a put is checked against reads every file of the cold layer; the put walks
    // again with the lookup's walk log as its stat cache and reads none (a CHECK lookup, which
    // keeps nothing, cannot be put).
    b.check(
        counters.walk.files_hashed == stats.files,
        format!(
            "cold lookup + put hashed {} files, expected {} (each file once)",
            counters.walk.files_hashed, stats.files
        ),
    );
    let db_bytes = std::fs::metadata(&db)?.size();
    let rows = entries_total;
    b.record(
        "cold put",
        d,
        rss,
        Some("limit2"),
        Some(1.25),
        json!({"counters": counters, "db_bytes": db_bytes, "rows": rows,
               "db_bytes_per_row": db_bytes as f64 / rows as f64}),
    );

    // ---- no-change lookups
    let cache = open(&db);
    walker_phases(&mut b, &cache, &tree, entries_total)?;
    let lookup = |mode: LookupMode| {
        let mut s = cache.session(&build).expect("session");
        let l = s.lookup_with("app", mode).expect("lookup");
        (l, s.counters())
    };
    let (d, (l, c), rss) = b.measure(reps, || {}, || lookup(LookupMode::CHECK));
    b.check(l.is_hit(), "no-change lookup missed");
    b.check(
        c.walk.files_hashed == 0 && c.walk.stat_matched == stats.files,
        format!("no-change lookup: {:?}", c.walk),
    );
    let no_change = d;
    println!(
        "no-change lookup: {} directories proven (no getdents), {} read, of {}",
        c.walk.dirs_proven, c.walk.dirs_read, stats.dirs
    );
    b.record(
        "no-change lookup (CHECK)",
        d,
        rss,
        Some("limit1"),
        Some(1.2),
        json!({"counters": c}),
    );
    let (d, (l, c), rss) = b.measure(reps, || {}, || lookup(LookupMode::FOR_BUILD));
    b.check(l.is_hit() && c.walk.files_hashed == 0, "FOR_BUILD lookup");
    b.record(
        "no-change lookup (FOR_BUILD)",
        d,
        rss,
        Some("limit1"),
        None,
        json!({"counters": c}),
    );

    // ---- the peer: git on the same tree, in the same run
    git_phases(&mut b, base, &tree, no_change)?;

    // ---- every file touched: stat stale, content equal
    let mut flip = 0u64;
    let (d, (l, c), rss) = b.measure(
        reps,
        || {
            flip += 1;
            // Warm again (untimed), as limit 2 was: the git phases and lookups since read no
            // content, and this machine pages out page cache idle for a minute (see `warm`).
            warm(&tree);
            let when = treegen::past_mtime() - Duration::from_secs(flip);
            treegen::touch_all(&tree, when).expect("touch");
            // Past the timestamp tick of the last touch (as a build starting later would be):
            // a row refreshed within that tick stays ctime-racy and is refreshed again by the
            // next lookup (git's racily-clean rule), which the check below would count.
            std::thread::sleep(Duration::from_millis(50));
        },
        || lookup(LookupMode::CHECK),
    );
    b.check(l.is_hit(), "touched lookup missed");
    b.check(
        c.walk.files_hashed == stats.files && c.rows_refreshed == stats.files,
        format!("touched lookup: {c:?}"),
    );
    b.record(
        "lookup after touching every file",
        d,
        rss,
        Some("limit2"),
        Some(1.3),
        json!({"counters": c}),
    );
    let (d, (l, c), rss) = b.measure(reps, || {}, || lookup(LookupMode::CHECK));
    b.check(
        l.is_hit() && c.walk.files_hashed == 0 && c.rows_refreshed == 0,
        format!("lookup after the touched one: {c:?}"),
    );
    b.record(
        "the lookup after it",
        d,
        rss,
        Some("limit1"),
        Some(1.2),
        json!({"counters": c}),
    );

    // ---- one deep file changed (same size, other bytes)
    let deep = tree.join(&stats.deep_file);
    let mut content = std::fs::read(&deep)?;
    for x in content.iter_mut().take(16) {
        *x = !*x;
    }
    std::fs::write(&deep, &content)?;
    filetime::set_file_mtime(
        &deep,
        filetime::FileTime::from_system_time(treegen::past_mtime()),
    )?;
    let (hash_one, _, _) = b.measure(
        reps,
        || {},
        || raw_hash(&deep, stats.deep_file_size).expect("hash"),
    );
    let (d, (l, c), rss) = b.measure(reps, || {}, || lookup(LookupMode::CHECK));
    b.check(
        !l.is_hit() && c.walk.files_hashed == 1,
        format!("one-file-changed lookup: {c:?}"),
    );
    let expect = no_change + hash_one;
    b.record(
        "lookup after one deep file changed",
        d,
        rss,
        Some("limit1"),
        None,
        json!({"counters": c, "no_change_plus_hash_s": expect.as_secs_f64(),
               "ratio_to_no_change_plus_hash": d.as_secs_f64() / expect.as_secs_f64(),
               "file": stats.deep_file, "file_size": stats.deep_file_size}),
    );
    println!(
        "one file changed: {} vs no-change + hashing it {} ({:.2}x)",
        fmt_secs(d.as_secs_f64()),
        fmt_secs(expect.as_secs_f64()),
        d.as_secs_f64() / expect.as_secs_f64()
    );
    let (d, (l, c), rss) = b.measure(reps, || {}, || lookup(LookupMode::EXPLAIN));
    let reasons: Vec<String> = l.reasons().iter().map(|r| r.to_string()).collect();
    b.check(
        matches!(l.reasons(), [MissReason::ImportContentChanged { diff, .. }] if diff.len() == 1),
        format!("explain: {reasons:?}"),
    );
    for r in &reasons {
        println!("explain: {}", r.trim_end());
    }
    b.record(
        "explain of it (EXPLAIN)",
        d,
        rss,
        Some("limit1"),
        None,
        json!({"counters": c, "reasons": reasons}),
    );
    drop(cache);
    branch_switch(&mut b, &tree, &db, &build, no_change)?;
    let growth = database_growth(&mut b, base, &tree, args.cycles.unwrap_or(0))?;
    std::fs::remove_dir_all(&tree)?;

    // ---- open of databases with many entries
    let sizes: [u64; 2] = if args.quick {
        [100, 1000]
    } else {
        [1000, 10_000]
    };
    for (i, &n) in sizes.iter().enumerate() {
        let db = base.join(format!("entries-{n}.redb"));
        fill_entries(&db, n)?;
        let (d, _, rss) = b.measure(reps * 10, || {}, || drop(open(&db)));
        let name = if i == 0 {
            "open (fewer entries)"
        } else {
            "open (more entries)"
        };
        b.record(
            name,
            d,
            rss,
            None,
            None,
            json!({"entries": n, "db_bytes": std::fs::metadata(&db)?.size()}),
        );
    }
    if let [small, big] = &b.phases[b.phases.len() - 2..] {
        println!(
            "open: {} entries {}, {} entries {} (ratio {:.2})",
            sizes[0],
            fmt_secs(small.secs),
            sizes[1],
            fmt_secs(big.secs),
            big.secs / small.secs
        );
    }

    // ---- a chain of built layers, looked up bottom to top
    let lens: [usize; 2] = if args.quick { [50, 100] } else { [250, 500] };
    let small_tree = base.join("small");
    treegen::generate(&small_tree, 20, 7)?;
    let mut per_len = Vec::new();
    for (i, &n) in lens.iter().enumerate() {
        let db = base.join(format!("chain-{n}.redb"));
        let build = chain_build(&small_tree, n);
        {
            let cache = open(&db);
            let mut s = cache.session(&build)?;
            for k in 0..n {
                let name = format!("l{k:04}");
                let l = s.lookup(&name)?;
                s.put(&l, &manifests)?;
            }
        }
        let cache = open(&db);
        let (d, (hits, c), rss) = b.measure(
            reps,
            || {},
            || {
                let mut s = cache.session(&build).expect("session");
                let mut hits = 0;
                for k in 0..n {
                    hits += usize::from(
                        s.lookup_with(&format!("l{k:04}"), LookupMode::CHECK)
                            .expect("lookup")
                            .is_hit(),
                    );
                }
                (hits, s.counters())
            },
        );
        b.check(
            hits == n && c.lookups == n as u64,
            format!("chain {n}: {hits} hits, {} lookups", c.lookups),
        );
        per_len.push(d.as_secs_f64());
        let name = if i == 0 {
            "chain lookup (shorter)"
        } else {
            "chain lookup (longer)"
        };
        b.record(
            name,
            d,
            rss,
            None,
            None,
            json!({"layers": n, "counters": c, "per_layer_s": d.as_secs_f64() / n as f64}),
        );
    }
    println!(
        "chain: {} layers {}, {} layers {} (ratio {:.2}; linear is {:.2})",
        lens[0],
        fmt_secs(per_len[0]),
        lens[1],
        fmt_secs(per_len[1]),
        per_len[1] / per_len[0],
        lens[1] as f64 / lens[0] as f64
    );

    // ---- report
    println!();
    println!(
        "{:<38} {:>10} {:>8} {:>8} {:>10}",
        "phase", "time", "ratio", "target", "peak RSS"
    );
    let mut out = Vec::new();
    for p in &b.phases {
        let ratio = b.ratio(p);
        let ratio_s = match (ratio, p.limit) {
            (Some(r), Some(l)) => format!("{r:.2}x{}", if l == "limit1" { "L1" } else { "L2" }),
            _ => "-".into(),
        };
        let target_s = p
            .target
            .map(|t| format!("<={t}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<38} {:>10} {:>8} {:>8} {:>7.0} MiB",
            p.name,
            fmt_secs(p.secs),
            ratio_s,
            target_s,
            p.rss_mib
        );
        out.push(json!({
            "phase": p.name, "secs": p.secs, "limit": p.limit, "ratio": ratio,
            "target": p.target, "met": ratio.zip(p.target).map(|(r, t)| r <= t),
            "peak_rss_mib": p.rss_mib, "detail": p.extra,
        }));
    }
    println!(
        "database: {} bytes for {} rows = {:.0} bytes/row",
        db_bytes,
        rows,
        db_bytes as f64 / rows as f64
    );
    let summary = json!({
        "files": stats.files, "dirs": stats.dirs, "symlinks": stats.symlinks,
        "bytes": stats.bytes, "threads": threads, "reps": reps, "quick": args.quick,
        "warm": true,
        "unix_time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "phases": out, "failures": b.failures, "database_growth": growth,
    });
    let json_path = args.json.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("scale-{}.json", args.files))
    });
    if let Some(parent) = json_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&summary)?)?;
    println!("summary: {}", json_path.display());
    if !b.failures.is_empty() {
        eprintln!("{} check(s) failed", b.failures.len());
    }
    Ok(b.failures.is_empty())
}

/// Branch switch of 1% of the files (issue #13): the tree as it is becomes version A, 1% of its
/// files get other bytes of the same size (version B, built and put), then each measured lookup
/// switches those files to the other branch first. Every lookup must hit an older version and
/// hash exactly the switched files; the time is reported as a ratio to the no-change lookup.
fn branch_switch(
    b: &mut Bench,
    tree: &Path,
    db: &Path,
    build: &Build,
    no_change: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let manifests = outputs();
    let put_current = |what: &str| -> Result<(), Box<dyn std::error::Error>> {
        let cache = open(db);
        let mut s = cache.session(build)?;
        let l = s.lookup_for_build("app", LookupMode::FOR_BUILD)?;
        if !l.is_hit() {
            s.put(&l, &manifests)?;
        }
        println!(
            "branch switch: {what} {}",
            if l.is_hit() { "was stored" } else { "put" }
        );
        Ok(())
    };
    // Version A: the tree as it is now (the deep file changed above).
    put_current("version A")?;
    let switched: Vec<(PathBuf, Vec<u8>, Vec<u8>)> = list_files(tree)
        .into_iter()
        .filter(|(_, size)| *size > 0)
        .step_by(100)
        .map(|(path, _)| {
            let a = std::fs::read(&path)?;
            let mut bb = a.clone();
            if let Some(x) = bb.first_mut() {
                *x = !*x;
            }
            Ok((path, a, bb))
        })
        .collect::<std::io::Result<_>>()?;
    let n = switched.len() as u64;
    let write_branch = |to_b: bool| -> std::io::Result<()> {
        // Each branch gets its own settled mtime, as a checkout that happened a while ago.
        let when = treegen::past_mtime() - Duration::from_secs(if to_b { 200 } else { 100 });
        for (path, a, bb) in &switched {
            std::fs::write(path, if to_b { bb } else { a })?;
            filetime::set_file_mtime(path, filetime::FileTime::from_system_time(when))?;
        }
        Ok(())
    };
    let before = std::fs::metadata(db)?.size();
    write_branch(true)?;
    put_current("version B")?;
    let after = std::fs::metadata(db)?.size();
    let cache = open(db);
    let mut on_b = true;
    let (d, (hits, c), rss) = b.measure(
        b.reps.max(2),
        || {
            on_b = !on_b;
            write_branch(on_b).expect("switch branch");
            // Past the timestamp tick of the switch (as a build starting later would be).
            std::thread::sleep(Duration::from_millis(50));
        },
        || {
            let mut s = cache.session(build).expect("session");
            let l = s.lookup_with("app", LookupMode::CHECK).expect("lookup");
            (l.is_hit(), s.counters())
        },
    );
    b.check(
        hits,
        "branch-switch lookup missed (an older version should hit)",
    );
    b.check(
        c.walk.files_hashed == n,
        format!(
            "branch-switch lookup hashed {} files, expected the {n} switched",
            c.walk.files_hashed
        ),
    );
    let ratio = d.as_secs_f64() / no_change.as_secs_f64();
    println!(
        "branch switch of {n} files (1%): {} = {ratio:.2}x the no-change lookup; database {} -> {} bytes for the second version",
        fmt_secs(d.as_secs_f64()),
        before,
        after
    );
    b.record(
        "branch switch 1% (hits older version)",
        d,
        rss,
        Some("limit1"),
        None,
        json!({"counters": c, "switched_files": n, "ratio_to_no_change": ratio,
               "db_bytes_before_second_version": before, "db_bytes_after": after}),
    );
    Ok(())
}

/// The two walkers alone, against limit 1, on the tree whose rows `cache` holds: enumeration
/// only (names and lstat: walkdir sorted with an `lstat` by full path per entry, as the
/// walkdir-based walk does, and the ordered parallel walker), then the walk the lookup does with
/// the stat fast path (every digest reused, nothing hashed) but without the diff, the Merkle
/// root or the database's other work, per walker.
fn walker_phases(
    b: &mut Bench,
    cache: &Cache,
    tree: &Path,
    entries_total: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let reps = b.reps;
    let (d, n, rss) = b.measure(
        reps,
        || {},
        || {
            let mut n = 0u64;
            for e in walkdir::WalkDir::new(tree)
                .sort_by(|a, b| a.file_name().cmp(b.file_name()))
                .into_iter()
            {
                let e = e.expect("walkdir");
                std::hint::black_box(std::fs::symlink_metadata(e.path()).expect("lstat"));
                n += 1;
            }
            n
        },
    );
    b.check(n == entries_total, format!("walkdir enumerated {n}"));
    b.record(
        "enumerate: walkdir sorted + lstat",
        d,
        rss,
        Some("limit1"),
        None,
        json!({"entries": n}),
    );
    let (d, n, rss) = b.measure(
        reps,
        || {},
        || {
            let mut n = 0u64;
            for e in OrderedDirs::new(tree) {
                std::hint::black_box(e.expect("ordered walk"));
                n += 1;
            }
            n
        },
    );
    b.check(n == entries_total, format!("ordered walker enumerated {n}"));
    b.record(
        "enumerate: ordered parallel",
        d,
        rss,
        Some("limit1"),
        None,
        json!({"entries": n}),
    );
    for (name, how) in [
        ("walk, fast path: walkdir", Enumerator::Walkdir),
        ("walk, fast path: ordered parallel", Enumerator::Parallel),
    ] {
        let (d, c, rss) = b.measure(
            reps,
            || {},
            || {
                let store = layercache::testing::store_of(cache);
                let txn = store.begin_read().expect("read");
                let prior = store.rows(&txn, "app", "import:src").expect("rows");
                let mut w = TreeWalk::with_enumerator(tree, how).expect("walk");
                w.set_prior(Box::new(prior));
                for e in w.by_ref() {
                    std::hint::black_box(e.expect("entry"));
                }
                w.counters()
            },
        );
        b.check(
            c.files_hashed == 0 && c.entries_walked == entries_total,
            format!("{name}: {c:?}"),
        );
        b.record(name, d, rss, Some("limit1"), None, json!({"counters": c}));
    }
    Ok(())
}

/// The database's size per row and its growth: a cold put of `tree` into a database of its
/// own, then one touch of every file and a lookup (which refreshes every row's stat data),
/// then `cycles` more touch + lookup cycles, each lookup in its own process-like open and
/// close; finally the file is compacted. Prints bytes per row at each step, and the payload per
/// row (key and value bytes as stored, keys apart: what a key-compressing schema step could
/// save at most).
fn database_growth(
    b: &mut Bench,
    base: &Path,
    tree: &Path,
    cycles: usize,
) -> Result<Value, Box<dyn std::error::Error>> {
    let db = base.join("growth.redb");
    let _ = std::fs::remove_file(&db);
    let build = one_layer_build(tree);
    {
        let cache = open(&db);
        let mut s = cache.session(&build)?;
        let l = s.lookup_for_build("app", LookupMode::CHECK)?;
        s.put(&l, &outputs())?;
    }
    let size = || std::fs::metadata(&db).map(|m| m.size()).unwrap_or(0);
    let (rows, key_bytes, value_bytes) = {
        let cache = open(&db);
        let store = layercache::testing::store_of(&cache);
        let txn = store.begin_read()?;
        let (mut n, mut k, mut v) = (0u64, 0u64, 0u64);
        for r in store.rows(&txn, "app", "import:src")? {
            let (path, row) = r?;
            n += 1;
            k += ("app".len() + "import:src".len() + path.key().len()) as u64;
            v += codec::encode(&row)?.len() as u64;
        }
        (n, k, v)
    };
    let per_row = |bytes: u64| bytes as f64 / rows.max(1) as f64;
    let after_put = size();
    let mut sizes = Vec::new();
    for k in 0..=cycles {
        let when = treegen::past_mtime() - Duration::from_secs(2000 + k as u64);
        let touched = treegen::touch_all(tree, when)?;
        // Past the tick of the last touch (see "every file touched").
        std::thread::sleep(Duration::from_millis(50));
        let cache = open(&db);
        let mut s = cache.session(&build)?;
        let l = s.lookup_with("app", LookupMode::CHECK)?;
        let c = s.counters();
        b.check(
            l.is_hit() && c.rows_refreshed == touched,
            format!("growth cycle {k}: {c:?}"),
        );
        drop(s);
        drop(cache);
        sizes.push(size());
    }
    let after_one = sizes.first().copied().unwrap_or(after_put);
    let last = sizes.last().copied().unwrap_or(after_put);
    let compacted = match layercache::inspect::compact(&db) {
        Ok(_) => size(),
        Err(e) => {
            eprintln!("compaction of {} failed: {e}", db.display());
            0
        }
    };
    println!(
        "database growth: {rows} rows, payload {:.0} bytes/row (keys {:.0}, values {:.0}); file \
         {:.0} bytes/row after the cold put, {:.0} after one touch + refresh, {:.0} after {} \
         more cycles, {:.0} compacted ({:.2}x / {:.2}x the compacted size)",
        per_row(key_bytes + value_bytes),
        per_row(key_bytes),
        per_row(value_bytes),
        per_row(after_put),
        per_row(after_one),
        per_row(last),
        cycles,
        per_row(compacted),
        after_one as f64 / compacted.max(1) as f64,
        last as f64 / compacted.max(1) as f64,
    );
    let _ = std::fs::remove_file(&db);
    Ok(json!({
        "rows": rows, "key_bytes": key_bytes, "value_bytes": value_bytes,
        "after_cold_put": after_put, "after_each_cycle": sizes, "compacted": compacted,
    }))
}

/// A database holding `n` entries (layers without sources), each put through the library.
fn fill_entries(db: &Path, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let _ = std::fs::remove_file(db);
    let mut build = Build::new();
    for k in 0..n {
        build.add(
            format!("e{k:06}"),
            LayerInputs {
                definition: json!({"step": k, "run": "make install"}),
                base: Base::Scratch,
                imports: vec![],
                overlay_dirs: vec![],
                source_date_epoch: Some(1_700_000_000),
                build_only: false,
                uncacheable: None,
            },
        );
    }
    let cache = open(db);
    let mut s = cache.session(&build)?;
    for k in 0..n {
        let l = s.lookup_for_build(&format!("e{k:06}"), LookupMode::CHECK)?;
        s.put(&l, &outputs())?;
    }
    Ok(())
}

/// `n` layers, each built on the previous one, each importing the same small tree.
fn chain_build(small: &Path, n: usize) -> Build {
    let mut build = Build::new();
    for k in 0..n {
        build.add(
            format!("l{k:04}"),
            LayerInputs {
                definition: json!({"step": k}),
                base: if k == 0 {
                    Base::Scratch
                } else {
                    Base::Built {
                        layer: format!("l{:04}", k - 1),
                    }
                },
                imports: vec![Import {
                    key: "small".into(),
                    path: small.to_path_buf(),
                    dest: None,
                }],
                overlay_dirs: vec![],
                source_date_epoch: None,
                build_only: false,
                uncacheable: None,
            },
        );
    }
    build
}

/// `git` with its repository outside the tree (so no walk of ours sees `.git`), quiet and
/// with no hooks, fsmonitor or automatic gc.
fn git(base: &Path, tree: &Path) -> std::process::Command {
    let mut c = std::process::Command::new("git");
    c.env("GIT_DIR", base.join("git.git"))
        .env("GIT_WORK_TREE", tree)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", base)
        .args([
            "-c",
            "safe.directory=*",
            "-c",
            "gc.auto=0",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
        ])
        .current_dir(tree);
    c
}

/// The peer `git status` answers the same question: `git init && git add -A && git commit`
/// once (untimed), then, warm, `git status --porcelain` with the untracked cache and the
/// preloaded index, and `git diff-files --quiet` (tracked files only); each beside limit 1,
/// and the no-change CHECK lookup as a ratio to it. Skipped (said so) when git is missing.
fn git_phases(
    b: &mut Bench,
    base: &Path,
    tree: &Path,
    no_change: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    if git(base, tree).arg("--version").output().is_err() {
        println!("git: not installed, its phases skipped");
        return Ok(());
    }
    let t = Instant::now();
    for args in [
        &["init", "-q"][..],
        &["add", "-A"],
        &["commit", "-q", "-m", "tree"],
    ] {
        let o = git(base, tree).args(args).output()?;
        if !o.status.success() {
            return Err(format!("git {args:?}: {}", String::from_utf8_lossy(&o.stderr)).into());
        }
    }
    println!(
        "git: init + add + commit in {:.1} s (untimed)",
        t.elapsed().as_secs_f64()
    );
    let status = || {
        git(base, tree)
            .args([
                "-c",
                "core.untrackedCache=true",
                "-c",
                "core.preloadIndex=true",
                "status",
                "--porcelain",
            ])
            .output()
            .expect("git status")
    };
    // Warm: the first run writes the untracked cache into the index.
    for _ in 0..2 {
        status();
    }
    let reps = b.reps.max(3);
    let (d, o, rss) = b.measure(reps, || {}, status);
    b.check(
        o.status.success() && o.stdout.is_empty(),
        format!("git status: {:?}", String::from_utf8_lossy(&o.stdout)),
    );
    b.record(
        "git status --porcelain (warm)",
        d,
        rss,
        Some("limit1"),
        None,
        json!({"no_change_lookup_over_git_status": no_change.as_secs_f64() / d.as_secs_f64()}),
    );
    let git_status = d;
    let (d, o, rss) = b.measure(
        reps,
        || {},
        || {
            git(base, tree)
                .args(["diff-files", "--quiet"])
                .output()
                .expect("git diff-files")
        },
    );
    b.check(o.status.success(), "git diff-files saw a change");
    b.record(
        "git diff-files --quiet",
        d,
        rss,
        Some("limit1"),
        None,
        json!({"no_change_lookup_over_git_diff_files": no_change.as_secs_f64() / d.as_secs_f64()}),
    );
    println!(
        "no-change lookup (CHECK) / git status: {:.2}x; / git diff-files: {:.2}x",
        no_change.as_secs_f64() / git_status.as_secs_f64(),
        no_change.as_secs_f64() / d.as_secs_f64()
    );
    std::fs::remove_dir_all(base.join("git.git"))?;
    Ok(())
}

/// Repeats one phase for a profiler.
fn profile(
    phase: &str,
    tree: &Path,
    base: &Path,
    reps: usize,
) -> Result<bool, Box<dyn std::error::Error>> {
    let db = base.join("cache.redb");
    let build = one_layer_build(tree);
    let put = || {
        let _ = std::fs::remove_file(&db);
        let cache = open(&db);
        let mut s = cache.session(&build).expect("session");
        let l = s
            .lookup_for_build("app", LookupMode::CHECK)
            .expect("lookup");
        s.put(&l, &outputs()).expect("put");
    };
    // The lookup phases reuse the database of an earlier profile run in this directory when
    // it still hits, so a profile of them holds no cold put (it was ~17% of a `nochange`
    // profile's samples).
    let reusable = phase != "put"
        && db.exists()
        && open(&db)
            .session(&build)
            .and_then(|mut s| s.lookup_with("app", LookupMode::CHECK))
            .is_ok_and(|l| l.is_hit());
    if !reusable {
        put();
    }
    // Past the racy slack of the directories just generated, and one hit that refreshes their
    // rows: the profiled lookups prove them, as a settled tree's lookup does.
    std::thread::sleep(Duration::from_millis(2100));
    let cache = open(&db);
    let lookup = || {
        let mut s = cache.session(&build).expect("session");
        s.lookup_with("app", LookupMode::CHECK)
            .expect("lookup")
            .is_hit()
    };
    lookup();
    let mut timed = Duration::ZERO;
    for k in 0..reps {
        let t = Instant::now();
        match phase {
            "put" => {
                put_again(&db, &build);
            }
            "nochange" => assert!(lookup()),
            "touched" => {
                let when = treegen::past_mtime() - Duration::from_secs(k as u64 + 1);
                treegen::touch_all(tree, when)?;
                // As in the timed run (which re-warms the tree after the touch): the files'
                // ctimes are older than the hasher's in-flight slack (20 ms on this file
                // system), so no file is read twice to rule out a write in flight. The touch
                // and the pause are not timed.
                std::thread::sleep(Duration::from_millis(100));
                let t = Instant::now();
                assert!(lookup());
                timed += t.elapsed();
                continue;
            }
            other => return Err(format!("unknown phase {other}").into()),
        }
        timed += t.elapsed();
    }
    eprintln!(
        "{phase}: {:.1} ms per repetition",
        timed.as_secs_f64() * 1e3 / reps as f64
    );
    Ok(true)
}

/// One operation of `--mode` in this (fresh) process; prints its time, its counters and the
/// process's peak RSS (VmHWM: the whole process, never reset).
fn one_mode(mode: &str, tree: &Path, base: &Path) -> Result<bool, Box<dyn std::error::Error>> {
    let db = base.join("cache.redb");
    let build = one_layer_build(tree);
    let t = Instant::now();
    let lookup = |m: LookupMode| -> Result<_, Box<dyn std::error::Error>> {
        let cache = open(&db);
        let mut s = cache.session(&build)?;
        let l = s.lookup_with("app", m)?;
        Ok((l.is_hit(), s.counters()))
    };
    let (ok, detail) = match mode {
        "setup" => {
            put_again(&db, &build);
            std::fs::rename(db.with_extension("put.redb"), &db)?;
            // Past the racy slack of the generated directories; one hit refreshes their rows.
            std::thread::sleep(Duration::from_millis(2100));
            let (hit, c) = lookup(LookupMode::CHECK)?;
            (hit, format!("{c:?}"))
        }
        "check" => {
            let (hit, c) = lookup(LookupMode::CHECK)?;
            (hit && c.walk.files_hashed == 0, format!("{c:?}"))
        }
        "for_build" => {
            let (hit, c) = lookup(LookupMode::FOR_BUILD)?;
            (hit && c.walk.files_hashed == 0, format!("{c:?}"))
        }
        "put" => {
            put_again(&db, &build);
            let bytes = std::fs::metadata(db.with_extension("put.redb"))?.size();
            let _ = std::fs::remove_file(db.with_extension("put.redb"));
            (true, format!("database {bytes} bytes"))
        }
        "touch" => {
            warm(tree);
            let n = treegen::touch_all(tree, treegen::past_mtime() - Duration::from_secs(7))?;
            (true, format!("{n} touched"))
        }
        "touched" => {
            let (hit, c) = lookup(LookupMode::CHECK)?;
            (hit && c.walk.files_hashed > 0, format!("{c:?}"))
        }
        "change" => {
            let when = treegen::past_mtime() - Duration::from_secs(300);
            let mut n = 0u64;
            for (path, _) in list_files(tree)
                .into_iter()
                .filter(|(_, size)| *size > 0)
                .step_by(100)
            {
                let mut bytes = std::fs::read(&path)?;
                if let Some(x) = bytes.first_mut() {
                    *x = !*x;
                }
                std::fs::write(&path, &bytes)?;
                filetime::set_file_mtime(&path, filetime::FileTime::from_system_time(when))?;
                n += 1;
            }
            (true, format!("{n} files changed"))
        }
        "put_change" => {
            let before = std::fs::metadata(&db)?.size();
            let cache = open(&db);
            let mut s = cache.session(&build)?;
            let l = s.lookup_for_build("app", LookupMode::FOR_BUILD)?;
            let hit = l.is_hit();
            if !hit {
                s.put(&l, &outputs())?;
            }
            let c = s.counters();
            drop(s);
            drop(cache);
            let after = std::fs::metadata(&db)?.size();
            (
                !hit,
                format!(
                    "database {before} -> {after} bytes ({:.3}x), {} files hashed",
                    after as f64 / before as f64,
                    c.walk.files_hashed
                ),
            )
        }
        other => return Err(format!("unknown mode {other}").into()),
    };
    let secs = t.elapsed().as_secs_f64();
    // After the timed part: this mode's peak is the process's, never reset.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    println!("mode {mode}: {secs:.2} s, peak RSS (VmHWM) {hwm}, ok {ok}: {detail}");
    Ok(ok)
}

/// A cold put into a fresh database next to `db`.
fn put_again(db: &Path, build: &Build) {
    let fresh = db.with_extension("put.redb");
    let _ = std::fs::remove_file(&fresh);
    let cache = open(&fresh);
    let mut s = cache.session(build).expect("session");
    let l = s
        .lookup_for_build("app", LookupMode::CHECK)
        .expect("lookup");
    s.put(&l, &outputs()).expect("put");
}
