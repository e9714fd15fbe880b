//! Issue #11 through the built binary: the lookup record that ties `put` to what the build's
//! lookup saw (inputs and base), `put`'s refusal without one, and `lookup --verify`. Each test
//! failed before its fix.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use layercache::RelPath;
use layercache::testing::codec;
use layercache::testing::schema::{ROWS, Row, RowStat};
use redb::ReadableTable;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_layercache");

/// One layer on a tar base, importing a directory; an OCI layout holding its output.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        common::write(root, "src/a.txt", b"version 2");
        common::write(root, "src/b.txt", b"bee");
        common::write(root, "base.tar", b"base v1");
        common::output_layout(&root.join("oci"));
        let manifests = serde_json::to_string(&common::outputs()).unwrap();
        std::fs::write(root.join("m.json"), manifests).unwrap();
        let plan = json!({
            "oci_layout": "oci",
            "layers": {"l": {
                "definition": {"run": "make"},
                "base": {"type": "tar", "path": "base.tar"},
                "imports": [{"key": "src", "path": "src"}]
            }}
        });
        std::fs::write(root.join("plan.json"), plan.to_string()).unwrap();
        Fixture { dir }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg(args[0])
            .arg("--db")
            .arg(self.p("cache.redb"))
            .arg("--plan")
            .arg(self.p("plan.json"))
            .args(&args[1..])
            .env("LAYERCACHE_LOG", "warn")
            .env_remove("LAYERCACHE_REMOTE");
        cmd.output().unwrap()
    }

    fn put(&self, extra: &[&str]) -> Output {
        let m = self.p("m.json");
        let mut args = vec!["put", "l", "--manifests", m.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

#[track_caller]
fn code(o: &Output, want: i32) {
    assert_eq!(
        o.status.code(),
        Some(want),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Hole 2: a build read v2 of an import; the import became v3 before `put`. The put must not
/// record v3 as what the output was built from.
#[test]
fn put_from_a_lookup_record_refuses_inputs_changed_since_the_lookup() {
    let f = Fixture::new();
    let rec = f.p("l.lookup.json");
    let rec_arg = rec.to_str().unwrap();
    code(&f.run(&["lookup", "l", "--record", rec_arg]), 1);
    assert!(rec.is_file());
    let v: Value = serde_json::from_slice(&std::fs::read(&rec).unwrap()).unwrap();
    assert_eq!(v["layer"], "l", "{v}");
    assert_eq!(v["sources"][0]["key"], "src", "{v}");
    assert!(v["input_digest"].is_string(), "{v}");
    // Written atomically: no temporary file left beside it.
    let names: Vec<String> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");

    common::write(f.dir.path(), "src/a.txt", b"version 3");
    let o = f.put(&["--from", rec_arg]);
    code(&o, 2);
    assert!(
        stderr(&o).contains("changed between lookup and put"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("import src"), "{}", stderr(&o));
    // Nothing was stored.
    let o = f.run(&["lookup", "l"]);
    code(&o, 1);
    assert!(String::from_utf8_lossy(&o.stdout).contains("not cached"));

    // A put with no lookup record is refused unless told to record the inputs as of now.
    let o = f.put(&[]);
    code(&o, 2);
    assert!(stderr(&o).contains("--from"), "{}", stderr(&o));
    let help = Command::new(BIN).args(["put", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--inputs-as-of-now"));

    // The normal flow: lookup with a record, build, put from it; then a hit.
    code(&f.run(&["lookup", "l", "--record", rec_arg]), 1);
    code(&f.put(&["--from", rec_arg]), 0);
    code(&f.run(&["lookup", "l"]), 0);

    // The record of another layer is not this layer's.
    code(&f.run(&["lookup", "l", "--record", rec_arg]), 0);
    let text = std::fs::read_to_string(&rec).unwrap();
    std::fs::write(
        &rec,
        text.replace("\"layer\": \"l\"", "\"layer\": \"other\""),
    )
    .unwrap();
    let o = f.put(&["--from", rec_arg]);
    code(&o, 2);
    assert!(
        stderr(&o).contains("is of layer \"other\""),
        "{}",
        stderr(&o)
    );

    // A record that is not one is refused, naming it.
    std::fs::write(&rec, b"{\"garbage\": true}").unwrap();
    let o = f.put(&["--from", rec_arg]);
    code(&o, 2);
    assert!(stderr(&o).contains("l.lookup.json"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a layercache lookup record"),
        "{}",
        stderr(&o)
    );
}

/// Hole 3: the base is part of the put check; a tar base that changed during the build makes
/// the put fail naming the base.
#[test]
fn put_refuses_a_base_that_changed_since_the_lookup() {
    let f = Fixture::new();
    let rec = f.p("l.lookup.json");
    let rec_arg = rec.to_str().unwrap();
    code(&f.run(&["lookup", "l", "--record", rec_arg]), 1);
    common::write(f.dir.path(), "base.tar", b"base v2");
    let o = f.put(&["--from", rec_arg]);
    code(&o, 2);
    assert!(stderr(&o).contains("base tar:base.tar"), "{}", stderr(&o));
    code(&f.run(&["lookup", "l"]), 1);
}

/// Hole 4 through the binary: `{}` manifests for a layer that is not build-only are refused.
#[test]
fn put_refuses_empty_manifests_for_a_layer_that_is_not_build_only() {
    let f = Fixture::new();
    std::fs::write(f.p("empty.json"), b"{}").unwrap();
    let m = f.p("empty.json");
    let o = f.run(&[
        "put",
        "l",
        "--manifests",
        m.to_str().unwrap(),
        "--inputs-as-of-now",
    ]);
    code(&o, 2);
    assert!(stderr(&o).contains("not build-only"), "{}", stderr(&o));
    code(&f.run(&["lookup", "l"]), 1);
}

/// Hole 5 through the binary: a hit whose blob was deleted after the cache was opened by
/// another process is a miss with `outputs_missing` in `--json`.
#[test]
fn a_lookup_whose_blob_is_gone_misses_with_outputs_missing() {
    let f = Fixture::new();
    code(&f.put(&["--inputs-as-of-now"]), 0);
    code(&f.run(&["lookup", "l"]), 0);
    for e in std::fs::read_dir(f.p("oci/blobs/sha256")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    // Keep the layout directory itself: a missing layout is an error, not a miss.
    let o = f.run(&["lookup", "l", "--json"]);
    code(&o, 1);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    // Missing at the hit (a lookup prunes nothing): never a hit.
    assert_eq!(v["reasons"][0]["reason"], "outputs_missing", "{v}");
}

/// Makes the stored row of `path` (source `import:src` of layer `l`) lie: it gets the stat
/// data of the file as it is now, while its digest stays that of the content it was put with
/// — what a clock set back, or an image swapped under identical times, does. Only stat data
/// changes, which no digest covers, so the version stays consistent with its rows.
fn plant_a_lie(db: &Path, root: &Path, path: &str) {
    let m = std::fs::symlink_metadata(root.join(path)).unwrap();
    let db = redb::Database::builder()
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .open(db)
        .unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut rows = txn.open_table(ROWS).unwrap();
        let key = RelPath::from_key(path.as_bytes());
        let mut row: Row = {
            let v = rows.get(("l", "import:src", key.key())).unwrap().unwrap();
            codec::decode::<Row, { codec::ROW_LIMIT }>(v.value()).unwrap()
        };
        row.stat = Some(RowStat {
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
            dev: m.dev(),
            snapshot_ns: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as i64,
        });
        let bytes = codec::encode(&row).unwrap();
        rows.insert(("l", "import:src", key.key()), bytes.as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
}

/// Hole 12: a row whose stat data matches while its digest is of other content fools a normal
/// lookup (the blind spot of any stat fast path); `lookup --verify` reads every file, reports
/// the row, and clears its stat data so no later lookup or put reuses the wrong digest.
#[test]
fn verify_finds_and_clears_a_lying_row() {
    let f = Fixture::new();
    code(&f.put(&["--inputs-as-of-now"]), 0);
    code(&f.run(&["lookup", "l"]), 0);
    // Same size, other content, and a modification time well in the past (not racy).
    common::write(f.dir.path(), "src/a.txt", b"version 9");
    let past = filetime::FileTime::from_system_time(SystemTime::now() - Duration::from_secs(60));
    filetime::set_file_mtime(f.p("src/a.txt"), past).unwrap();
    plant_a_lie(&f.p("cache.redb"), &f.p("src"), "a.txt");

    // The blind spot: the stat data matches, so the wrong digest is trusted.
    code(&f.run(&["lookup", "l"]), 0);

    let o = f.run(&["lookup", "l", "--verify", "--json"]);
    code(&o, 1);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["lying_rows"],
        json!([{"source": "import:src", "path": "a.txt"}]),
        "{v}"
    );
    assert_eq!(v["reasons"][0]["reason"], "import_content_changed", "{v}");
    assert_eq!(
        v["reasons"][0]["diff"]["modified"][0]["path"], "a.txt",
        "{v}"
    );

    // The lying row's stat data was cleared: a normal lookup now reads the file and misses.
    code(&f.run(&["lookup", "l"]), 1);
    code(&f.put(&["--inputs-as-of-now"]), 0);
    code(&f.run(&["lookup", "l"]), 0);
    let o = f.run(&["lookup", "l", "--verify"]);
    code(&o, 0);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("lied"));
}
