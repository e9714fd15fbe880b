//! `layercache dump | stats | check | compact` through the built binary, on real databases made
//! by the library from real trees: text and JSON (parsed, checked field by field), reading while
//! another process holds the writer, damaged and foreign files, planted inconsistencies, and
//! `| head` on a large dump.

use crate::common;
use layercache::testing::RawTransactions;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use layercache::testing::schema::{
    LAYERS, LayerRecord, ROWS, SCHEMA_VERSION, VERSIONS, VersionRecord,
};
use layercache::{Base, Build, Cache, CacheConfig, Import, LayerInputs, OverlayDir, RelPath};
use oci_spec::image::Descriptor;
use redb::ReadableTable;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_layercache");
const SDE: i64 = 1_700_000_000;

fn run(args: &[&OsStr]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("LAYERCACHE_LOG", "warn")
        .output()
        .unwrap()
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn manifests(name: &str) -> BTreeMap<String, Descriptor> {
    let digest = blake3::hash(name.as_bytes()).to_hex().to_string();
    let d: Descriptor = serde_json::from_value(json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": format!("sha256:{digest}"),
        "size": 1234,
    }))
    .unwrap();
    BTreeMap::from([("tar".to_string(), d)])
}

/// A cache made by the library: `base` (scratch, importing a tree with every entry type and
/// non-UTF-8 names) and `app` (built on `base`, importing one file, with an overlay dir).
struct Db {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    db: PathBuf,
    records: BTreeMap<String, VersionRecord>,
    build: Build,
}

impl Db {
    fn new() -> Db {
        Db::with_extra_files(0)
    }

    /// Like `new`, with `n` more files in `base`'s import (for large dumps).
    fn with_extra_files(n: usize) -> Db {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        common::rich_tree(&src);
        for i in 0..n {
            common::write(&src, &format!("many/f{i:05}"), i.to_string().as_bytes());
        }
        common::write(&dir, "one.txt", b"one file import\n");
        common::write(&dir, "ov/etc/app.conf", b"key=value\n");
        std::fs::create_dir_all(dir.join("rootfs/app/ov")).unwrap();
        let mut build = Build::new();
        build.add(
            "base",
            LayerInputs {
                definition: json!({"from": {"type": "scratch"}, "run": "make base"}),
                base: Base::Scratch,
                imports: vec![Import {
                    key: "src".into(),
                    path: src,
                    dest: None,
                }],
                overlay_dirs: vec![],
                source_date_epoch: Some(SDE),
                build_only: false,
                uncacheable: None,
            },
        );
        build.add(
            "app",
            LayerInputs {
                definition: json!({"from": {"type": "built", "tag": "base"}, "run": "make app"}),
                base: Base::Built {
                    layer: "base".into(),
                },
                imports: vec![Import {
                    key: "one".into(),
                    path: dir.join("one.txt"),
                    dest: None,
                }],
                overlay_dirs: vec![OverlayDir {
                    key: "ov".into(),
                    source: dir.join("ov"),
                    rootfs_path: dir.join("rootfs/app/ov"),
                }],
                source_date_epoch: Some(SDE),
                build_only: false,
                uncacheable: None,
            },
        );
        let db = dir.join("cache.redb");
        let mut records = BTreeMap::new();
        {
            let cache = Cache::open(CacheConfig {
                db: db.clone(),
                oci_layout: Some(common::shared_oci()),
                rootfs_dir: None,
                ..Default::default()
            })
            .unwrap();
            let mut session = cache.session(&build).unwrap();
            for name in ["base", "app"] {
                let lookup = session.lookup(name).unwrap();
                assert!(!lookup.is_hit());
                let rec = session.put(&lookup, &manifests(name)).unwrap();
                records.insert(name.to_string(), rec);
            }
        }
        Db {
            _tmp: tmp,
            dir,
            db,
            records,
            build,
        }
    }

    fn run(&self, cmd: &str, rest: &[&str]) -> Output {
        let mut args = vec![os(cmd), os("--db"), self.db.as_os_str()];
        args.extend(rest.iter().map(|s| os(s)));
        run(&args)
    }

    fn rows_of(&self, layer: &str) -> u64 {
        let r = &self.records[layer];
        r.imports
            .iter()
            .chain(&r.overlay_dirs)
            .map(|s| s.rows)
            .sum()
    }

    fn total_rows(&self) -> u64 {
        self.rows_of("base") + self.rows_of("app")
    }
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

/// Exit 2 with exactly one line on stderr, naming the file, and no panic.
fn assert_one_line_error(o: &Output, db: &Path) -> String {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {}\nstderr: {err}",
        stdout(o)
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(&db.display().to_string()), "{err}");
    err
}

#[test]
fn dump_lists_entries_in_text_and_json() {
    let d = Db::new();
    let o = d.run("dump", &[]);
    assert_ok(&o);
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("LAYER"), "{text}");
    assert!(lines[0].contains("OUTPUTS") && lines[0].contains("RECORDED"));
    // Sorted by name: app before base.
    assert!(lines[1].starts_with("app "), "{text}");
    assert!(lines[2].starts_with("base "), "{text}");
    let base_hash = hex(&d.records["app"].base.hash);
    assert!(lines[1].contains(&format!("built:base {}", &base_hash[..12])));
    assert!(lines[1].contains(&d.rows_of("app").to_string()));
    assert!(lines[2].contains("scratch"));
    assert!(lines[1].contains("tar") && lines[1].contains('Z'));
    assert_eq!(
        lines[3],
        format!(
            "2 entries, 2 versions, 2 imports, 1 overlay dirs, {} rows",
            d.total_rows()
        )
    );

    let o = d.run("dump", &["--json"]);
    assert_ok(&o);
    let v = json_of(&o);
    assert_eq!(v["db"], d.db.display().to_string());
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let app = &entries[0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["output_types"], json!(["tar"]));
    assert_eq!(app["base"]["kind"], "built");
    assert_eq!(app["base"]["reference"], "base");
    assert_eq!(app["base"]["hash"], base_hash);
    assert_eq!(app["base"]["short_hash"], base_hash[..12]);
    assert_eq!(app["imports"], 1);
    assert_eq!(app["overlay_dirs"], 1);
    assert_eq!(app["rows"], d.rows_of("app"));
    assert_eq!(app["build_only"], false);
    assert_eq!(app["created_unix_ms"], d.records["app"].created_unix_ms);
    assert!(app["created"].as_str().unwrap().ends_with('Z'));
    let base = &entries[1];
    assert_eq!(base["name"], "base");
    assert_eq!(base["base"]["kind"], "scratch");
    assert_eq!(base["base"]["hash"], "");
    assert_eq!(base["overlay_dirs"], 0);
    assert_eq!(v["totals"]["entries"], 2);
    assert_eq!(v["totals"]["versions"], 2);
    assert_eq!(app["versions"].as_array().unwrap().len(), 1);
    assert_eq!(app["versions"][0]["current"], true);
    assert_eq!(
        app["versions"][0]["input_digest"],
        hex(&d.records["app"].input_digest)
    );
    assert_eq!(v["totals"]["damaged"], 0);
    assert_eq!(v["totals"]["imports"], 2);
    assert_eq!(v["totals"]["overlay_dirs"], 1);
    assert_eq!(v["totals"]["rows"], d.total_rows());
}

#[test]
fn dump_of_one_entry_in_text_and_json() {
    let d = Db::new();
    let rec = &d.records["app"];
    let o = d.run("dump", &["app", "--json"]);
    assert_ok(&o);
    let v = json_of(&o);
    assert_eq!(v["name"], "app");
    assert_eq!(v["definition"], d.build.layers["app"].definition);
    assert_eq!(v["definition_digest"], hex(&rec.definition_digest));
    assert_eq!(v["base"]["kind"], "built");
    assert_eq!(v["base"]["reference"], "base");
    assert_eq!(v["base"]["hash"], hex(&rec.base.hash));
    assert_eq!(v["source_date_epoch"], SDE);
    assert_eq!(v["build_only"], false);
    let m = &v["manifests"][0];
    assert_eq!(m["layer_type"], "tar");
    let want = serde_json::to_value(&manifests("app")["tar"]).unwrap();
    assert_eq!(m["descriptor"]["digest"], want["digest"]);
    assert_eq!(m["descriptor"]["size"], 1234);
    assert_eq!(m["descriptor"]["mediaType"], want["mediaType"]);
    let imp = &v["imports"][0];
    assert_eq!(imp["key"], "one");
    assert_eq!(imp["source"], "import:one");
    assert_eq!(imp["kind"], "file");
    assert_eq!(imp["rows"], 1);
    assert_eq!(imp["root_digest"], hex(&rec.imports[0].root_digest));
    let ov = &v["overlay_dirs"][0];
    assert_eq!(ov["source"], "overlay:ov");
    assert_eq!(ov["kind"], "dir");
    assert_eq!(ov["rows"], rec.overlay_dirs[0].rows);
    assert_eq!(ov["root_digest"], hex(&rec.overlay_dirs[0].root_digest));

    let o = d.run("dump", &["app"]);
    assert_ok(&o);
    let text = stdout(&o);
    assert!(text.starts_with("layer              app\n"), "{text}");
    assert!(
        text.contains(&format!("SOURCE_DATE_EPOCH  {SDE}\n")),
        "{text}"
    );
    assert!(text.contains("base               built base\n"), "{text}");
    assert!(text.contains(&format!("base hash          {}\n", hex(&rec.base.hash))));
    // Pretty definition, indented.
    assert!(text.contains("    {\n"), "{text}");
    assert!(text.contains("      \"run\": \"make app\""), "{text}");
    assert!(text.contains(&format!(
        "  import:one  file, 1 rows, root {}\n",
        hex(&rec.imports[0].root_digest)
    )));
    assert!(text.contains(&format!(
        "  overlay:ov  dir, {} rows, root {}\n",
        rec.overlay_dirs[0].rows,
        hex(&rec.overlay_dirs[0].root_digest)
    )));

    let o = d.run("dump", &["nope"]);
    let err = assert_one_line_error(&o, &d.db);
    assert!(err.contains("no entry for layer \"nope\""), "{err}");
}

#[test]
fn dump_files_streams_rows_with_escaped_paths() {
    let d = Db::new();
    let src = d.dir.join("src");
    let o = d.run("dump", &["base", "--files", "--json"]);
    assert_ok(&o);
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, d.rows_of("base"));
    let by_path: BTreeMap<Vec<u8>, &Value> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["source"], "import:src");
            let shown = l["path"].as_str().unwrap();
            let raw = if shown == "." {
                Vec::new()
            } else {
                RelPath::parse_escaped(shown).unwrap().to_slash_bytes()
            };
            (raw, l)
        })
        .collect();
    assert_eq!(by_path.len(), lines.len());
    // Every path printed maps back, losslessly, to an entry of the tree on disk.
    for raw in by_path.keys().filter(|r| !r.is_empty()) {
        let on_disk = src.join(OsStr::from_bytes(raw));
        assert!(std::fs::symlink_metadata(&on_disk).is_ok(), "{on_disk:?}");
    }
    let bad = by_path[&b"bad\xff\xfename"[..]];
    assert_eq!(bad["path"], "bad\\xff\\xfename");
    assert_eq!(bad["type"], "file");
    assert_eq!(bad["size"], 12);
    assert_eq!(
        bad["digest"],
        blake3::hash(b"latin-1 name").to_hex().as_str()
    );
    assert_eq!(by_path[&b"new\nline"[..]]["path"], "new\\x0aline");
    let exec = by_path[&b"exec.sh"[..]];
    assert_eq!(exec["mode"], "0755");
    let uid = std::fs::metadata(src.join("exec.sh")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(exec["uid"], uid.uid());
    assert_eq!(exec["gid"], uid.gid());
    assert_eq!(exec["link_target"], Value::Null);
    let link = by_path[&b"link-to-a"[..]];
    assert_eq!(link["type"], "symlink");
    assert_eq!(link["link_target"], "a.txt");
    assert_eq!(link["digest"], Value::Null);
    assert_eq!(by_path[&b"fifo"[..]]["type"], "fifo");
    assert_eq!(by_path[&b"setgid-dir"[..]]["mode"], "2775");
    assert_eq!(by_path[&b""[..]]["type"], "dir");

    // Text: one line per row under a source header, escaped paths, symlink targets.
    let o = d.run("dump", &["base", "--files"]);
    assert_ok(&o);
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "== import:src");
    assert_eq!(lines.len() as u64, 1 + d.rows_of("base"));
    let bad_line = lines
        .iter()
        .find(|l| l.ends_with(" bad\\xff\\xfename"))
        .unwrap();
    assert!(bad_line.starts_with("file "), "{bad_line}");
    assert!(bad_line.contains(blake3::hash(b"latin-1 name").to_hex().as_str()));
    assert!(
        lines.iter().any(|l| l.ends_with(" link-to-a -> a.txt")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("dir ") && l.ends_with(" .")),
        "{text}"
    );

    // All sources of a layer, and one source by id or by bare key.
    let o = d.run("dump", &["app", "--files", "--json"]);
    assert_ok(&o);
    let sources: Vec<String> = stdout(&o)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["source"]
                .as_str()
                .unwrap()
                .into()
        })
        .collect();
    assert_eq!(sources.len() as u64, d.rows_of("app"));
    assert_eq!(sources[0], "import:one");
    assert_eq!(sources.last().unwrap(), "overlay:ov");
    let by_id = d.run("dump", &["app", "--files", "overlay:ov", "--json"]);
    let by_key = d.run("dump", &["app", "--files", "ov", "--json"]);
    assert_ok(&by_id);
    assert_eq!(by_id.stdout, by_key.stdout);
    let ov_lines: Vec<Value> = stdout(&by_id)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ov_lines.len() as u64, d.records["app"].overlay_dirs[0].rows);
    assert!(ov_lines.iter().any(|l| l["path"] == "etc/app.conf"
        && l["digest"] == blake3::hash(b"key=value\n").to_hex().as_str()));

    let o = d.run("dump", &["app", "--files", "nosuch"]);
    let err = assert_one_line_error(&o, &d.db).to_string();
    assert!(
        err.contains("no import or overlay dir with that key"),
        "{err}"
    );
}

#[test]
fn stats_in_text_and_json() {
    let d = Db::new();
    let o = d.run("stats", &["--json"]);
    assert_ok(&o);
    let v = json_of(&o);
    let size = std::fs::metadata(&d.db).unwrap().len();
    assert_eq!(v["db"], d.db.display().to_string());
    assert_eq!(v["file_bytes"], size);
    assert_eq!(v["schema_version"], SCHEMA_VERSION);
    assert_eq!(v["entries"], 2);
    assert_eq!(v["rows"], d.total_rows());
    assert_eq!(v["versions"], 2);
    // One more version costs one record, not a copy of the rows.
    let per_version = v["bytes_per_version"].as_u64().unwrap();
    assert!(per_version > 100 && per_version < 4096, "{per_version}");
    let tables = v["tables"].as_array().unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["meta", "layers", "versions", "last_used", "rows"]);
    assert_eq!(tables[4]["len"], d.total_rows());
    assert!(tables[4]["stored_bytes"].as_u64().unwrap() > 0);
    let in_tables: u64 = tables
        .iter()
        .map(|t| {
            t["stored_bytes"].as_u64().unwrap()
                + t["metadata_bytes"].as_u64().unwrap()
                + t["fragmented_bytes"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(v["table_bytes"], in_tables);
    assert_eq!(v["outside_tables_bytes"], size - in_tables);
    assert_eq!(v["exact"], Value::Null);

    let o = d.run("stats", &[]);
    assert_ok(&o);
    let text = stdout(&o);
    assert!(text.contains("entries            2\n"), "{text}");
    assert!(text.contains(&format!("rows               {}\n", d.total_rows())));
    assert!(text.contains(&format!("({size} bytes)")), "{text}");
    assert!(text.contains("reclaimable        at most"), "{text}");

    let o = d.run("stats", &["--exact", "--json"]);
    assert_ok(&o);
    let v = json_of(&o);
    assert_eq!(v["exact"]["page_size"], 4096);
    let allocated = v["exact"]["allocated_pages"].as_u64().unwrap() * 4096;
    assert!(allocated > 0 && allocated <= size, "{allocated} {size}");
    assert!(v["exact"]["fragmented_bytes"].is_u64());
}

#[test]
fn compact_reclaims_space_after_removals() {
    let d = Db::with_extra_files(1500);
    {
        let cache = Cache::open(CacheConfig {
            db: d.db.clone(),
            ..Default::default()
        })
        .unwrap();
        assert!(cache.remove("base").unwrap());
    }
    let before = std::fs::metadata(&d.db).unwrap().len();
    let o = d.run("compact", &["--json"]);
    assert_ok(&o);
    let v = json_of(&o);
    let after = std::fs::metadata(&d.db).unwrap().len();
    assert_eq!(v["bytes_before"], before);
    assert_eq!(v["bytes_after"], after);
    assert!(after < before, "{before} -> {after}");
    assert!(v["passes"].as_u64().unwrap() >= 1);
    // Still a sound cache afterwards, with the remaining entry intact.
    let o = d.run("dump", &["--json"]);
    assert_ok(&o);
    assert_eq!(json_of(&o)["totals"]["entries"], 1);
    let o = d.run("compact", &[]);
    assert_ok(&o);
    assert!(stdout(&o).starts_with(&format!("compacted {}: ", d.db.display())));
}

#[test]
fn check_passes_on_a_sound_cache() {
    let d = Db::new();
    let o = d.run("check", &[]);
    assert_ok(&o);
    let text = stdout(&o);
    assert!(
        text.contains("database integrity check: passed\n"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "records: 2 layers, 3 sources, {} rows, 2 versions\n",
        d.total_rows()
    )));
    assert!(text.ends_with("no problems found\n"), "{text}");

    let o = d.run("check", &["--json"]);
    assert_ok(&o);
    let v = json_of(&o);
    assert_eq!(v["integrity"]["status"], "passed");
    assert_eq!(v["entries_checked"], 2);
    assert_eq!(v["sources_checked"], 3);
    assert_eq!(v["rows_checked"], d.total_rows());
    assert_eq!(v["versions_checked"], 2);
    assert_eq!(v["problems"], json!([]));
    assert_eq!(v["problems_not_listed"], 0);
}

fn problems_of(v: &Value) -> Vec<(String, String, String)> {
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
            (s("kind"), s("layer"), s("source"))
        })
        .collect()
}

#[test]
fn check_finds_planted_inconsistencies() {
    let d = Db::new();
    {
        let db = redb::Database::open(&d.db).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut rows = txn.open_table(ROWS).unwrap();
            // app's overlay dir loses its rows behind the entry's back.
            let lo: (&str, &str, &[u8]) = ("app", "overlay:ov", &[]);
            let hi: (&str, &str, &[u8]) = ("app", "overlay:ov\0", &[]);
            rows.retain_in(lo..hi, |_, _| false).unwrap();
            // A row of base changes value (still decodable): same count, other Merkle root.
            let key: (&str, &str, &[u8]) = ("base", "import:src", b"a.txt");
            let exec_key: (&str, &str, &[u8]) = ("base", "import:src", b"exec.sh");
            let other = rows.get(exec_key).unwrap().unwrap().value().to_vec();
            rows.insert(key, other.as_slice()).unwrap();
            // Undecodable bytes for another row.
            let a0: (&str, &str, &[u8]) = ("base", "import:src", b"a0");
            rows.insert(a0, &[0xffu8; 3][..]).unwrap();
            // Rows of a layer nobody put.
            let ghost: (&str, &str, &[u8]) = ("ghost", "import:x", b"");
            rows.insert(ghost, other.as_slice()).unwrap();
        }
        // base's version records other outputs (checksum intact): app is built on a version
        // of base that is no longer stored.
        {
            let mut rec = d.records["base"].clone();
            rec.manifests.clear();
            let bytes = layercache::testing::codec::encode_checked(&rec).unwrap();
            txn.open_table(VERSIONS)
                .unwrap()
                .insert(("base", &rec.input_digest), bytes.as_slice())
                .unwrap();
        }
        // A layer pointing at a version that is not stored.
        let pointer = layercache::testing::codec::encode_checked(&LayerRecord {
            current: [9; 32],
            generation: 0,
        })
        .unwrap();
        txn.open_table(LAYERS)
            .unwrap()
            .insert("lost", pointer.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let o = d.run("check", &["--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = json_of(&o);
    let problems = problems_of(&v);
    let has = |kind: &str, layer: &str, source: &str| {
        problems
            .iter()
            .any(|p| p.0 == kind && p.1 == layer && p.2 == source)
    };
    assert!(has("row_count", "app", "overlay:ov"), "{problems:?}");
    assert!(has("damaged_row", "base", "import:src"), "{problems:?}");
    assert!(has("orphan_rows", "ghost", "import:x"), "{problems:?}");
    assert!(has("pointer", "lost", ""), "{problems:?}");
    assert!(has("missing_base", "app", ""), "{problems:?}");
    let damaged = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "damaged_row")
        .unwrap();
    assert_eq!(damaged["path"], "a0");
    assert_eq!(problems.len(), 5, "{problems:?}");

    // The changed row alone (damaged row removed): the Merkle root no longer matches.
    {
        let db = redb::Database::open(&d.db).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut rows = txn.open_table(ROWS).unwrap();
            let a0: (&str, &str, &[u8]) = ("base", "import:src", b"a0");
            rows.remove(a0).unwrap();
            let exec_key: (&str, &str, &[u8]) = ("base", "import:src", b"exec.sh");
            let other = rows.get(exec_key).unwrap().unwrap().value().to_vec();
            rows.insert(a0, other.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let o = d.run("check", &["--json"]);
    assert_eq!(o.status.code(), Some(1));
    let problems = problems_of(&json_of(&o));
    assert!(
        problems
            .iter()
            .any(|p| p.0 == "root_digest" && p.1 == "base" && p.2 == "import:src"),
        "{problems:?}"
    );
    assert!(
        !problems.iter().any(|p| p.0 == "damaged_row"),
        "{problems:?}"
    );

    // Text: one line per problem under a count.
    let o = d.run("check", &[]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(text.contains("5 problem(s):\n"), "{text}");
    assert!(
        text.contains("  row_count: layer app, overlay:ov: no rows are stored for this source"),
        "{text}"
    );
    assert!(
        text.contains("  orphan_rows: layer ghost, import:x: 1 rows"),
        "{text}"
    );
}

#[test]
fn check_lists_a_damaged_entry() {
    let d = Db::new();
    {
        let db = redb::Database::open(&d.db).unwrap();
        let txn = db.begin_write().unwrap();
        let app = &d.records["app"];
        txn.open_table(VERSIONS)
            .unwrap()
            .insert(("app", &app.input_digest), &b"\x01\x02garbage"[..])
            .unwrap();
        txn.commit().unwrap();
    }
    let o = d.run("check", &["--json"]);
    assert_eq!(o.status.code(), Some(1));
    let problems = problems_of(&json_of(&o));
    // The damaged entry is one problem; its rows are not reported as orphans.
    assert_eq!(
        problems,
        [(
            "damaged_entry".to_string(),
            "app".to_string(),
            String::new()
        )]
    );
    // The listing shows it as damaged instead of failing.
    let o = d.run("dump", &["--json"]);
    assert_ok(&o);
    let v = json_of(&o);
    assert_eq!(v["entries"][0]["name"], "app");
    assert!(v["entries"][0]["damaged"].is_string());
    assert_eq!(v["totals"]["damaged"], 1);
    let o = d.run("dump", &[]);
    assert!(stdout(&o).contains("1 DAMAGED (a `check` lists them)"));
}

#[test]
fn readable_while_another_process_holds_the_writer() {
    let d = Db::new();
    // This test process is the builder: it holds the database open for writing (as
    // `Cache::open` does during a build) while the binary, another process, reads it.
    let cache = Cache::open(CacheConfig {
        db: d.db.clone(),
        ..Default::default()
    })
    .unwrap();
    // A write in progress, not committed: readers see the last committed state.
    let txn = layercache::testing::store_of(&cache).begin_write().unwrap();
    let pointer = layercache::testing::codec::encode_checked(&LayerRecord {
        current: [7; 32],
        generation: 0,
    })
    .unwrap();
    txn.open_table(LAYERS)
        .unwrap()
        .insert("uncommitted", pointer.as_slice())
        .unwrap();

    let o = d.run("dump", &["--json"]);
    assert_ok(&o);
    assert_eq!(json_of(&o)["totals"]["entries"], 2);
    let o = d.run("dump", &["base", "--files", "--json"]);
    assert_ok(&o);
    assert_eq!(stdout(&o).lines().count() as u64, d.rows_of("base"));
    let o = d.run("dump", &["app"]);
    assert_ok(&o);
    let o = d.run("stats", &["--json"]);
    assert_ok(&o);
    assert_eq!(json_of(&o)["entries"], 2);

    // check: everything but the redb-level check runs, and says why that one was skipped.
    let o = d.run("check", &["--json"]);
    assert_ok(&o);
    let v = json_of(&o);
    assert_eq!(v["integrity"]["status"], "skipped_in_use");
    assert_eq!(v["rows_checked"], d.total_rows());
    assert_eq!(v["problems"], json!([]));
    let o = d.run("check", &[]);
    assert_ok(&o);
    assert!(stdout(&o).contains("database integrity check: skipped: the file is in use"));

    // What needs the writer says so in one line.
    for (cmd, extra) in [("compact", &[][..]), ("stats", &["--exact"][..])] {
        let o = d.run(cmd, extra);
        let err = assert_one_line_error(&o, &d.db);
        assert!(err.contains("is in use by another process"), "{cmd}: {err}");
    }

    // After the builder commits, a new reader sees the commit.
    txn.commit().unwrap();
    let o = d.run("stats", &["--json"]);
    assert_eq!(json_of(&o)["entries"], 3);
    drop(cache);
    let o = d.run("check", &["--json"]);
    assert_eq!(o.status.code(), Some(1));
    let problems = problems_of(&json_of(&o));
    assert_eq!(
        problems,
        [(
            "pointer".to_string(),
            "uncommitted".to_string(),
            String::new()
        )]
    );
}

#[test]
fn a_file_held_exclusively_is_reported_in_use() {
    let d = Db::new();
    // A plain redb writer (ExclusiveWriter mode) locks the whole file.
    let _held = redb::Database::open(&d.db).unwrap();
    for cmd in ["dump", "stats", "check", "compact"] {
        let o = d.run(cmd, &[]);
        let err = assert_one_line_error(&o, &d.db);
        assert!(err.contains("is in use by another process"), "{cmd}: {err}");
    }
}

#[test]
fn damaged_and_foreign_files_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cases: Vec<(PathBuf, &str)> = Vec::new();

    let garbage = dir.join("garbage.redb");
    std::fs::write(
        &garbage,
        b"this is not a database at all, just some text\n".repeat(100),
    )
    .unwrap();
    cases.push((
        garbage,
        "is not a layercache database (it is not a redb database file)",
    ));

    // What an interrupted first creation by layercache 0.1 left (about 70 KB of zeros): told
    // apart from a foreign file, with what to do.
    let zeros = dir.join("zeros.redb");
    std::fs::write(&zeros, vec![0u8; 70 * 1024]).unwrap();
    cases.push((
        zeros,
        "it holds only zero bytes: a cache whose creation was interrupted",
    ));

    let empty = dir.join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    cases.push((empty, "is not a layercache database"));

    let foreign = dir.join("foreign.redb");
    {
        let db = redb::Database::create(&foreign).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("other");
            txn.open_table(def).unwrap().insert(1, 2).unwrap();
        }
        txn.commit().unwrap();
    }
    cases.push((foreign, "without layercache's meta table"));

    let newer = dir.join("newer.redb");
    drop(layercache::testing::Store::open(&newer).unwrap());
    {
        let db = redb::Database::open(&newer).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(layercache::testing::schema::META)
            .unwrap()
            .insert(
                "schema_version",
                (SCHEMA_VERSION + 1).to_le_bytes().as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
    }
    cases.push((newer, "upgrade layercache to use this cache"));

    let missing = dir.join("missing.redb");
    cases.push((missing.clone(), "cannot open"));

    for (path, want) in &cases {
        let before = std::fs::read(path).ok();
        for cmd in ["dump", "stats", "check", "compact"] {
            let o = run(&[os(cmd), os("--db"), path.as_os_str()]);
            let err = assert_one_line_error(&o, path);
            assert!(err.contains(want), "{cmd} {}: {err}", path.display());
            assert!(o.stdout.is_empty(), "{cmd}: {}", stdout(&o));
        }
        // Nothing was changed, and nothing was created.
        assert_eq!(std::fs::read(path).ok(), before, "{}", path.display());
    }
    assert!(!missing.exists());
}

#[test]
fn a_truncated_file_is_reported_damaged() {
    let d = Db::new();
    let bytes = std::fs::read(&d.db).unwrap();
    let truncated = d.dir.join("truncated.redb");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let before = std::fs::read(&truncated).unwrap();
    for cmd in ["dump", "stats", "compact"] {
        let o = run(&[os(cmd), os("--db"), truncated.as_os_str()]);
        let err = assert_one_line_error(&o, &truncated);
        assert!(
            err.contains("is damaged (") && err.contains("truncated"),
            "{cmd}: {err}"
        );
        assert!(err.contains("restore it from a backup"), "{err}");
    }
    // check ran and found the file damaged: exit 1, with the finding in the report.
    let o = run(&[os("check"), os("--db"), truncated.as_os_str(), os("--json")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = json_of(&o);
    assert_eq!(v["integrity"]["status"], "failed");
    let kinds: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["database_integrity", "unreadable"]);
    assert!(
        v["problems"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("truncated")
    );
    assert_eq!(std::fs::read(&truncated).unwrap(), before);
}

#[test]
fn dump_into_a_closed_pipe_exits_quietly() {
    let d = Db::with_extra_files(3000);
    // Far more than a pipe buffer (64 KiB), so the writer does hit the closed pipe.
    let full = d.run("dump", &["base", "--files"]);
    assert_ok(&full);
    assert!(full.stdout.len() > 256 << 10, "{}", full.stdout.len());
    for extra in ["", " --json"] {
        let script = format!(
            "'{BIN}' dump --db '{}' base --files{extra} | head -n 3; echo \"status=${{PIPESTATUS[0]}}\" >&2",
            d.db.display()
        );
        let o = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let out = stdout(&o);
        let err = stderr(&o);
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!err.contains("error"), "{err}");
        assert_eq!(err.trim(), "status=0", "{err}");
    }
}
