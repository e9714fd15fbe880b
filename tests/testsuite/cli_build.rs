//! `layercache lookup` and `layercache put` through the built binary: exit codes, text and
//! JSON output, errors on stderr.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_layercache");
const MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A build in a temp dir: a scratch `base` layer importing a directory and a file, and an
/// `app` layer built on it with an overlay dir; an OCI layout for the outputs; a plan.
struct Fixture {
    dir: tempfile::TempDir,
    db: PathBuf,
    plan: PathBuf,
}

fn default_plan() -> Value {
    json!({
        "oci_layout": "oci",
        "rootfs_dir": "roots",
        "source_date_epoch": 1_700_000_000,
        "layers": {
            "base": {
                "definition": {
                    "from": {"type": "scratch"},
                    "import": ["stacker://pkg", "stacker://tool.sh"],
                    "run": "make install"
                },
                "base": {"type": "scratch"},
                "imports": [
                    {"key": "stacker://pkg", "path": "imports/base/pkg"},
                    {"key": "stacker://tool.sh", "path": "imports/base/tool.sh"}
                ]
            },
            "app": {
                "definition": {"from": {"type": "built", "tag": "base"}, "run": "make app"},
                "base": {"type": "built", "layer": "base"},
                "overlay_dirs": [{
                    "key": "src",
                    "source": "src",
                    "rootfs_path": "roots/app/overlay_dirs/src"
                }]
            }
        }
    })
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        common::write(root, "imports/base/pkg/a.txt", b"alpha");
        common::write(root, "imports/base/pkg/b/c.txt", b"gamma");
        common::write(root, "imports/base/tool.sh", b"#!/bin/sh\necho tool\n");
        common::write(root, "src/main.c", b"int main(void) { return 0; }\n");
        common::write(root, "src/lib/util.c", b"int util(void) { return 1; }\n");
        std::fs::create_dir_all(root.join("roots/app/overlay_dirs/src")).unwrap();
        std::fs::create_dir_all(root.join("oci/blobs/sha256")).unwrap();
        let f = Fixture {
            db: root.join("cache.redb"),
            plan: root.join("plan.json"),
            dir,
        };
        f.write_plan(&default_plan());
        f
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write_plan(&self, plan: &Value) {
        std::fs::write(&self.plan, serde_json::to_vec_pretty(plan).unwrap()).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("LAYERCACHE_LOG", "warn")
            .output()
            .unwrap()
    }

    fn lookup(&self, layer: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "lookup",
            "--db",
            self.db.to_str().unwrap(),
            "--plan",
            self.plan.to_str().unwrap(),
            layer,
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Writes an output blob for `layer` into the OCI layout and a manifests file describing
    /// it; returns the manifests file and the digest. (The blob is named by the blake3 of its
    /// content: layercache only checks that the named blob exists.)
    fn manifests(&self, layer: &str) -> (PathBuf, String) {
        let content = format!("output of {layer}");
        let hex = blake3::hash(content.as_bytes()).to_hex().to_string();
        std::fs::write(self.root().join("oci/blobs/sha256").join(&hex), &content).unwrap();
        let digest = format!("sha256:{hex}");
        let file = self.root().join(format!("{layer}.manifests.json"));
        let manifests = json!({
            "tar": {"mediaType": MEDIA_TYPE, "digest": digest, "size": content.len()}
        });
        std::fs::write(&file, serde_json::to_vec(&manifests).unwrap()).unwrap();
        (file, digest)
    }

    fn put_with(&self, layer: &str, manifests: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "put",
            "--db",
            self.db.to_str().unwrap(),
            "--plan",
            self.plan.to_str().unwrap(),
            layer,
            "--manifests",
            manifests.to_str().unwrap(),
        ];
        if !extra.contains(&"--from") {
            args.push("--inputs-as-of-now");
        }
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn put(&self, layer: &str) -> Output {
        let (file, _) = self.manifests(layer);
        self.put_with(layer, &file, &[])
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_code(o: &Output, want: i32) {
    assert_eq!(
        code(o),
        want,
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

/// An error: exit 2, nothing on stdout, a message on stderr containing every `needle`.
#[track_caller]
fn assert_error(o: &Output, needles: &[&str]) {
    assert_code(o, 2);
    assert!(o.stdout.is_empty(), "stdout: {}", stdout(o));
    let err = stderr(o);
    assert!(err.starts_with("layercache: error: "), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

#[test]
fn miss_put_hit_then_an_edit_misses_only_the_layer_above() {
    let f = Fixture::new();
    for layer in ["base", "app"] {
        let o = f.lookup(layer, &[]);
        assert_code(&o, 1);
        assert!(stdout(&o).starts_with(&format!("{layer}: miss\n")));
        assert!(stdout(&o).contains("not cached"), "{}", stdout(&o));
    }

    let o = f.put("base");
    assert_code(&o, 0);
    assert!(
        stdout(&o).starts_with("base: recorded (2 import(s), 0 overlay_dir(s),"),
        "{}",
        stdout(&o)
    );
    assert_code(&f.put("app"), 0);

    for layer in ["base", "app"] {
        let o = f.lookup(layer, &[]);
        assert_code(&o, 0);
        let out = stdout(&o);
        assert!(out.starts_with(&format!("{layer}: hit\n")), "{out}");
        assert!(out.contains(&format!("tar {MEDIA_TYPE} sha256:")), "{out}");
    }

    common::write(
        f.root(),
        "src/lib/util.c",
        b"int util(void) { return 2; }\n",
    );
    let o = f.lookup("app", &[]);
    assert_code(&o, 1);
    let out = stdout(&o);
    assert!(out.contains("overlay_dir content changed: src"), "{out}");
    assert!(out.contains("modified lib/util.c (content)"), "{out}");
    assert!(!out.contains("main.c"), "{out}");
    assert_code(&f.lookup("base", &[]), 0);
}

#[test]
fn a_changed_import_misses_its_layer_and_every_layer_built_on_it() {
    let f = Fixture::new();
    assert_code(&f.put("base"), 0);
    assert_code(&f.put("app"), 0);
    std::fs::remove_file(f.root().join("imports/base/pkg/b/c.txt")).unwrap();

    let o = f.lookup("base", &[]);
    assert_code(&o, 1);
    assert!(stdout(&o).contains("import content changed: stacker://pkg"));
    assert!(stdout(&o).contains("removed  b/c.txt"), "{}", stdout(&o));

    let o = f.lookup("app", &[]);
    assert_code(&o, 1);
    assert!(
        stdout(&o).contains("base layer base is not cached as it is now"),
        "{}",
        stdout(&o)
    );

    // Rebuilding the base misses the layer above until it is rebuilt too.
    assert_code(&f.put("base"), 0);
    assert_code(&f.lookup("base", &[]), 0);
    let o = f.lookup("app", &[]);
    assert_code(&o, 1);
    assert!(stdout(&o).contains("base hash"), "{}", stdout(&o));
    assert_code(&f.put("app"), 0);
    assert_code(&f.lookup("app", &[]), 0);
}

#[test]
fn json_output_of_lookup_and_put() {
    let f = Fixture::new();
    let o = f.lookup("app", &["--json"]);
    assert_code(&o, 1);
    let v = json_of(&o);
    assert_eq!(v["layer"], "app");
    assert_eq!(v["hit"], false);
    assert_eq!(v["reasons"], json!([{"reason": "not_cached"}]));
    assert_eq!(v["entry"], Value::Null);
    assert!(v["counters"]["lookups"].as_u64().unwrap() >= 1);

    let o = f.put("base");
    assert_code(&o, 0);
    let (file, digest) = f.manifests("app");
    let o = f.put_with("app", &file, &["--json"]);
    assert_code(&o, 0);
    let v = json_of(&o);
    assert_eq!(v["layer"], "app");
    assert_eq!(v["was_hit"], false);
    assert_eq!(v["imports"], 0);
    assert_eq!(v["overlay_dirs"], 1);
    // src, src/lib, src/lib/util.c, src/main.c
    assert_eq!(v["rows"], 4);
    assert_eq!(v["manifests"]["tar"]["digest"], digest.as_str());

    let o = f.lookup("app", &["--json"]);
    assert_code(&o, 0);
    let v = json_of(&o);
    assert_eq!(v["hit"], true);
    assert_eq!(v["reasons"], json!([]));
    let tar = &v["entry"]["manifests"]["tar"];
    assert_eq!(tar["digest"], digest.as_str());
    assert_eq!(tar["mediaType"], MEDIA_TYPE);
    assert_eq!(tar["size"], "output of app".len());
    assert_eq!(v["entry"]["source_date_epoch"], 1_700_000_000);
    assert_eq!(v["entry"]["build_only"], false);
    // Every source of app and of its base was walked: base's pkg, pkg/a.txt, pkg/b,
    // pkg/b/c.txt, tool.sh; app's src, src/lib, src/lib/util.c, src/main.c. Each of their 5
    // files was hashed or matched by its stat.
    let walk = &v["counters"]["walk"];
    assert_eq!(walk["entries_walked"], 9);
    let files = walk["files_hashed"].as_u64().unwrap() + walk["stat_matched"].as_u64().unwrap_or(0);
    assert_eq!(files, 5);

    common::write(f.root(), "src/new.c", b"new");
    let o = f.lookup("app", &["--json"]);
    assert_code(&o, 1);
    let v = json_of(&o);
    assert_eq!(v["hit"], false);
    assert_eq!(
        v["reasons"],
        json!([{
            "reason": "overlay_dir_content_changed",
            "key": "src",
            "diff": {"added": ["new.c"], "removed": [], "modified": []}
        }])
    );
}

#[test]
fn explain_lists_every_reason() {
    let f = Fixture::new();
    assert_code(&f.put("base"), 0);
    assert_code(&f.put("app"), 0);

    let mut plan = default_plan();
    plan["layers"]["app"]["definition"]["run"] = json!("make app-v2");
    plan["layers"]["app"]["source_date_epoch"] = json!(1_800_000_000);
    f.write_plan(&plan);
    common::write(f.root(), "src/main.c", b"int main(void) { return 1; }\n");

    let o = f.lookup("app", &[]);
    assert_code(&o, 1);
    assert_eq!(stdout(&o).matches("cache miss because").count(), 1);
    assert!(stdout(&o).contains("layer definition was changed: run"));

    let o = f.lookup("app", &["--explain"]);
    assert_code(&o, 1);
    let out = stdout(&o);
    assert_eq!(out.matches("cache miss because").count(), 3, "{out}");
    assert!(
        out.contains(r#"layer definition was changed: run ("make app" -> "make app-v2")"#),
        "{out}"
    );
    assert!(
        out.contains("SOURCE_DATE_EPOCH changed: 1700000000 -> 1800000000"),
        "{out}"
    );
    assert!(out.contains("modified main.c (content)"), "{out}");

    let v = json_of(&f.lookup("app", &["--explain", "--json"]));
    let kinds: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "definition_changed",
            "source_date_epoch_changed",
            "overlay_dir_content_changed"
        ]
    );
    // The base is untouched by all of this.
    assert_code(&f.lookup("base", &[]), 0);
}

/// A removed output blob: the lookup misses naming it (a lookup prunes nothing), and `gc
/// --oci-layout` prunes the version, naming the blob; then the layer is not cached.
#[test]
fn a_removed_output_blob_misses_and_gc_prunes_the_entry() {
    let f = Fixture::new();
    let (file, digest) = f.manifests("base");
    assert_code(&f.put_with("base", &file, &[]), 0);
    assert_code(&f.lookup("base", &[]), 0);
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::remove_file(f.root().join("oci/blobs/sha256").join(hex)).unwrap();

    let o = f.lookup("base", &["--json"]);
    assert_code(&o, 1);
    let v = json_of(&o);
    assert_eq!(v["reasons"][0]["reason"], "outputs_missing", "{v}");
    assert!(
        v["reasons"][0]["what"].as_str().unwrap().contains(hex),
        "{v}"
    );
    assert!(v.get("pruned").is_none(), "{v}");

    let layout = f.root().join("oci");
    let o = f.run(&[
        "gc",
        "--json",
        "--db",
        f.db.to_str().unwrap(),
        "--oci-layout",
        layout.to_str().unwrap(),
    ]);
    assert_code(&o, 0);
    let v = json_of(&o);
    assert_eq!(v["pruned"][0]["layer"], "base");
    assert!(v["pruned"][0]["why"].as_str().unwrap().contains(hex), "{v}");
    let v = json_of(&f.lookup("base", &["--json"]));
    assert_eq!(v["reasons"], json!([{"reason": "not_cached"}]));
}

#[test]
fn put_of_a_layer_before_its_base_is_an_error() {
    let f = Fixture::new();
    let o = f.put("app");
    assert_error(&o, &["base layer \"base\" is not cached", "put it before"]);
    assert_code(&f.lookup("app", &[]), 1);
}

#[test]
fn errors_go_to_stderr_with_exit_2() {
    let f = Fixture::new();

    // Missing plan file.
    std::fs::remove_file(&f.plan).unwrap();
    assert_error(
        &f.lookup("app", &[]),
        &["invalid plan file", "plan.json", "cannot read it"],
    );

    // Invalid JSON, reported with its line.
    std::fs::write(&f.plan, "{\n  \"layers\": {\n    \"a\": {,\n  }\n}\n").unwrap();
    assert_error(&f.lookup("a", &[]), &["invalid plan file", "line 3"]);

    // Unknown field (a typo).
    let mut plan = default_plan();
    plan["layers"]["app"]["overlay_dir"] = json!([]);
    f.write_plan(&plan);
    assert_error(&f.lookup("app", &[]), &["unknown field `overlay_dir`"]);

    // Unknown layer.
    f.write_plan(&default_plan());
    assert_error(
        &f.lookup("nope", &[]),
        &["layer \"nope\" is not defined in this build"],
    );

    // A layer name with '/'.
    let mut plan = default_plan();
    let app = plan["layers"]["app"].clone();
    plan["layers"]["../evil"] = app;
    f.write_plan(&plan);
    assert_error(
        &f.lookup("app", &[]),
        &["plan file", "invalid layer name \"../evil\"", "'/'"],
    );

    // A plan naming a missing base.
    let mut plan = default_plan();
    plan["layers"]["app"]["base"] = json!({"type": "built", "layer": "missing"});
    f.write_plan(&plan);
    assert_error(
        &f.lookup("app", &[]),
        &["layer \"app\" is built from \"missing\", which this build does not define"],
    );

    // A cycle of built layers.
    let mut plan = default_plan();
    plan["layers"]["base"]["base"] = json!({"type": "built", "layer": "app"});
    f.write_plan(&plan);
    assert_error(&f.lookup("app", &[]), &["cycle", "app -> base -> app"]);

    // A manifests file with an invalid digest.
    f.write_plan(&default_plan());
    let bad = f.root().join("bad.json");
    std::fs::write(
        &bad,
        json!({"tar": {"mediaType": MEDIA_TYPE, "digest": "sha256:xyz", "size": 3}}).to_string(),
    )
    .unwrap();
    assert_error(
        &f.put_with("base", &bad, &[]),
        &["invalid manifests file", "bad.json", "line 1"],
    );
    // Nothing was recorded.
    assert_code(&f.lookup("base", &[]), 1);

    // A database that is not a cache.
    std::fs::write(&f.db, b"not a database").unwrap();
    assert_error(&f.lookup("base", &[]), &["cache.redb"]);
}
