//! A shell-driven build of a chain of built layers through the real binary (issue #22): `l0`
//! imports a big tree (`--files N`, default 100,000), `l1`…`l9` each import a small one
//! (`--layer-files M`, default 100) and are built on the layer below. Each step runs
//! `layercache lookup LAYER --record R --base-record R_BELOW` and `layercache put LAYER --from R`
//! as a builder's shell script would.
//!
//! Measured in one run, medians of `--reps K` (default 5), warm:
//! * the cold build (every lookup misses, every layer is put), and the entries its lookups and
//!   its puts walked against the sum of the sources' entries;
//! * a build in which nothing changed (every lookup hits, trusting its base's record), against
//!   **one lookup of the base alone** (`lookup l0 --record`, the same work a build's first step
//!   does) — the issue's limit is 1.2×;
//! * the same no-change build without base records (every lookup walks every base below it:
//!   the N² build this replaced).
//!
//! `cargo bench --bench chain -- [--files N] [--layer-files M] [--reps K] [--json FILE]`.
//! The tree goes to a temporary directory under `--dir D` (default the system's), removed after.
//! The chain's plan and steps are `benches/chain/shell.rs`, which `tests/testsuite/cli_chain.rs`
//! counts the work of.

#[path = "chain/shell.rs"]
mod shell;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use serde_json::json;
use shell::{LAYERS, Shell, json_of, walked};

struct Args {
    files: usize,
    layer_files: usize,
    reps: usize,
    json: Option<PathBuf>,
    dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        files: 100_000,
        layer_files: 100,
        reps: 5,
        json: None,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--files" => a.files = value("--files")?.parse().map_err(|e| format!("{e}"))?,
            "--layer-files" => {
                a.layer_files = value("--layer-files")?
                    .parse()
                    .map_err(|e| format!("{e}"))?
            }
            "--reps" => a.reps = value("--reps")?.parse().map_err(|e| format!("{e}"))?,
            "--json" => a.json = Some(PathBuf::from(value("--json")?)),
            "--dir" => a.dir = Some(PathBuf::from(value("--dir")?)),
            // cargo bench passes --bench.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    Ok(a)
}

/// Writes the sources, the plan and the output layout.
fn make_tree(root: &Path, args: &Args) -> std::io::Result<()> {
    let blob = b"chain bench output";
    let hex = sha256_hex(blob);
    let blobs = root.join("oci/blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(blobs.join(&hex), blob)?;
    std::fs::write(
        root.join("oci/oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let manifests = json!({"tar": {
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": format!("sha256:{hex}"),
        "size": blob.len(),
    }});
    std::fs::write(root.join("m.json"), manifests.to_string())?;
    // 100 files a directory, 100 directories a level: a tree's usual shape.
    let files = |k| if k == 0 { args.files } else { args.layer_files };
    shell::write_chain(root, files, |_, i| {
        format!("d{}/e{}", i / 10_000, (i / 100) % 100)
    })?;
    Ok(())
}

/// sha256 of `bytes`, hex, by the system's `sha256sum` (the bench has no sha2 of its own).
fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chain bench: {e}");
            return ExitCode::from(2);
        }
    };
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory");
    let root = tmp.path();
    let t = Instant::now();
    make_tree(root, &args).expect("make the tree");
    println!(
        "chain: l0 imports {} files, l1..l9 {} each; tree made in {:.1} s",
        args.files,
        args.layer_files,
        t.elapsed().as_secs_f64()
    );
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            eprintln!("FAILED: {what}");
            failures.push(what);
        }
    };
    let mut cold = Vec::new();
    let (mut cold_lookups, mut cold_puts, mut sources) = (0, 0, 0);
    for rep in 0..args.reps {
        let run = Shell {
            root: root.to_path_buf(),
            db: root.join(format!("cold-{rep}.redb")),
        };
        let t = Instant::now();
        let (mut l, mut p) = (0, 0);
        for k in 0..LAYERS {
            let (code, v) = json_of(&run.lookup(k, true));
            check(code == 1, format!("cold lookup l{k}: exit {code}"));
            l += walked(&v);
            let (code, v) = json_of(&run.put(k, "m.json"));
            check(code == 0, format!("put l{k}: exit {code}"));
            p += walked(&v);
        }
        cold.push(t.elapsed());
        (cold_lookups, cold_puts) = (l, p);
        sources = run.source_entries();
        if rep + 1 < args.reps {
            let _ = std::fs::remove_file(&run.db);
        }
    }
    let run = Shell {
        root: root.to_path_buf(),
        db: root.join(format!("cold-{}.redb", args.reps - 1)),
    };
    // Warm the no-change path once (the stat refresh of the first hit), then measure.
    for k in 0..LAYERS {
        run.lookup(k, true);
    }
    let (mut base_alone, mut no_change, mut n_squared) = (Vec::new(), Vec::new(), Vec::new());
    let mut no_change_walked = 0;
    for _ in 0..args.reps {
        let t = Instant::now();
        let (code, _) = json_of(&run.lookup(0, true));
        base_alone.push(t.elapsed());
        check(code == 0, format!("base lookup: exit {code}"));

        let t = Instant::now();
        let mut w = 0;
        for k in 0..LAYERS {
            let (code, v) = json_of(&run.lookup(k, true));
            check(code == 0, format!("no-change lookup l{k}: exit {code}"));
            w += walked(&v);
        }
        no_change.push(t.elapsed());
        no_change_walked = w;

        let t = Instant::now();
        for k in 0..LAYERS {
            let (code, _) = json_of(&run.lookup(k, false));
            check(
                code == 0,
                format!("lookup l{k} without base record: exit {code}"),
            );
        }
        n_squared.push(t.elapsed());
    }
    let (cold, base_alone, no_change, n_squared) = (
        median(cold),
        median(base_alone),
        median(no_change),
        median(n_squared),
    );
    let ratio = no_change.as_secs_f64() / base_alone.as_secs_f64();
    println!(
        "cold build (10 lookups + 10 puts): {:.3} s; entries walked: lookups {cold_lookups}, \
         puts {cold_puts}, sum of the sources' entries {sources}",
        cold.as_secs_f64()
    );
    println!(
        "one lookup of the base alone (lookup l0 --record): {:.3} s",
        base_alone.as_secs_f64()
    );
    println!(
        "no-change build (10 lookups, base records): {:.3} s = {ratio:.2}x the base alone \
         (limit 1.2x); entries walked {no_change_walked}",
        no_change.as_secs_f64()
    );
    println!(
        "no-change build without base records (every base walked again): {:.3} s = {:.2}x",
        n_squared.as_secs_f64(),
        n_squared.as_secs_f64() / base_alone.as_secs_f64()
    );
    check(
        cold_lookups * 100 <= sources * 105,
        format!("cold lookups walked {cold_lookups} for {sources}"),
    );
    check(
        no_change_walked * 100 <= sources * 105,
        format!("no-change lookups walked {no_change_walked} for {sources}"),
    );
    if let Some(path) = &args.json {
        let v = json!({
            "files": args.files, "layer_files": args.layer_files, "reps": args.reps,
            "sources_entries": sources,
            "cold_build_s": cold.as_secs_f64(),
            "cold_lookups_walked": cold_lookups, "cold_puts_walked": cold_puts,
            "base_lookup_alone_s": base_alone.as_secs_f64(),
            "no_change_build_s": no_change.as_secs_f64(),
            "no_change_build_over_base_lookup": ratio,
            "no_change_walked": no_change_walked,
            "without_base_records_s": n_squared.as_secs_f64(),
            "failures": failures,
        });
        if let Err(e) = std::fs::write(path, format!("{v:#}\n")) {
            eprintln!("chain bench: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
