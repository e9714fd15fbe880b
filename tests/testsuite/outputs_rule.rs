//! The one "outputs exist" rule (`src/engine/outputs.rs`, `docs/guarantees.md`), through the
//! built binary where a builder would meet it: an overlay dir's builder's copy that is not a
//! directory, a blob an output manifest or index reaches that is gone or wrong; and the other
//! findings of issue 26 on the local side: a definition key given twice, format characters in
//! names and paths. Plus the rule's cost, measured (ignored: run by name).

use crate::common;

use crate::treegen;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use sha2::Digest as _;

const BIN: &str = env!("CARGO_BIN_EXE_layercache");
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Writes `bytes` as a blob of `layout`; returns its descriptor.
fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    common::write(layout, &format!("blobs/sha256/{hex}"), bytes);
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// An image of `layers` layers in `layout`: (manifest descriptor, config, layer descriptors).
fn image(layout: &Path, layers: usize, tag: &str) -> (Value, Value, Vec<Value>) {
    let layers: Vec<Value> = (0..layers)
        .map(|i| blob(layout, LAYER, format!("{tag} layer {i}\n").as_bytes()))
        .collect();
    let config = blob(layout, CONFIG, format!("{{\"tag\":\"{tag}\"}}").as_bytes());
    let manifest = json!({"schemaVersion": 2, "mediaType": MANIFEST,
                          "config": config, "layers": layers});
    let d = blob(layout, MANIFEST, manifest.to_string().as_bytes());
    (d, config, layers)
}

fn path_of(layout: &Path, d: &Value) -> PathBuf {
    let digest = d["digest"].as_str().unwrap();
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// One layer `l` with an import and an overlay dir whose builder's copy is `roots/l/ov`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(output: impl FnOnce(&Path) -> Value) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        common::write(root, "src/a.txt", b"a");
        common::write(root, "ovsrc/x.txt", b"x");
        std::fs::create_dir_all(root.join("roots/l/ov")).unwrap();
        let d = output(&root.join("oci"));
        std::fs::write(root.join("m.json"), json!({ "tar": d }).to_string()).unwrap();
        let plan = json!({
            "oci_layout": "oci",
            "layers": {"l": {
                "definition": {"run": "make"},
                "base": {"type": "scratch"},
                "imports": [{"key": "src", "path": "src"}],
                "overlay_dirs": [{"key": "ov", "source": "ovsrc", "rootfs_path": "roots/l/ov"}]
            }}
        });
        std::fs::write(root.join("plan.json"), plan.to_string()).unwrap();
        let f = Fixture { dir };
        let m = f.p("m.json");
        let o = f.run(&[
            "put",
            "l",
            "--manifests",
            m.to_str().unwrap(),
            "--inputs-as-of-now",
        ]);
        assert!(o.status.success(), "{o:?}");
        f
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg(args[0])
            .arg("--db")
            .arg(self.p("cache.redb"))
            .arg("--plan")
            .arg(self.p("plan.json"))
            .args(&args[1..])
            .env("LAYERCACHE_LOG", "warn")
            .env_remove("LAYERCACHE_REMOTE")
            .output()
            .unwrap()
    }

    /// `lookup --json l`: (exit code, JSON).
    fn lookup(&self) -> (i32, Value) {
        let o = self.run(&["lookup", "--json", "l"]);
        let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        (o.status.code().unwrap_or(-1), v)
    }
}

/// The miss reason of a lookup that must miss (a lookup prunes nothing: its JSON has no
/// `pruned`).
#[track_caller]
fn only_reason(f: &Fixture) -> Value {
    let (code, v) = f.lookup();
    assert_eq!(code, 1, "{v}");
    assert!(v.get("pruned").is_none(), "{v}");
    v["reasons"][0].clone()
}

/// `gc --json --oci-layout oci` of the fixture's cache: the versions it pruned.
fn gc_pruned(f: &Fixture) -> Value {
    let o = Command::new(BIN)
        .args(["gc", "--json", "--db"])
        .arg(f.p("cache.redb"))
        .arg("--oci-layout")
        .arg(f.p("oci"))
        .env("LAYERCACHE_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["pruned"].clone()
}

#[test]
fn a_builder_copy_that_is_not_a_directory_misses_with_outputs_missing_naming_it() {
    let f = Fixture::new(|l| image(l, 2, "v1").0);
    assert_eq!(f.lookup().0, 0, "the copy is a directory: a hit");
    let copy = f.p("roots/l/ov");
    let named = |r: &Value, found: &str| {
        assert_eq!(r["reason"], "outputs_missing", "{r}");
        let what = r["what"].as_str().unwrap();
        assert!(what.contains("overlay_dir ov"), "{what}");
        assert!(what.contains(copy.to_str().unwrap()), "{what}");
        assert!(what.contains(found), "{what}");
    };
    std::fs::remove_dir_all(&copy).unwrap();

    std::fs::write(&copy, b"not a dir").unwrap();
    named(&only_reason(&f), "is a regular file");
    std::fs::remove_file(&copy).unwrap();

    // A FIFO is looked at, never opened: the lookup does not wait for a writer.
    let c = std::ffi::CString::new(copy.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    named(&only_reason(&f), "is a FIFO");
    std::fs::remove_file(&copy).unwrap();

    std::os::unix::fs::symlink(f.p("nowhere"), &copy).unwrap();
    named(&only_reason(&f), "a symbolic link to nothing");
    std::fs::remove_file(&copy).unwrap();

    std::os::unix::fs::symlink(f.p("src/a.txt"), &copy).unwrap();
    named(&only_reason(&f), "a symbolic link to a regular file");
    std::fs::remove_file(&copy).unwrap();

    // Symlinks are followed to a directory (a rootfs on another volume): a hit.
    std::fs::create_dir_all(f.p("elsewhere/ov")).unwrap();
    std::os::unix::fs::symlink(f.p("elsewhere/ov"), &copy).unwrap();
    assert_eq!(f.lookup().0, 0);
    std::fs::remove_file(&copy).unwrap();

    // Nothing at all: the seed's own reason, naming where the copy should be.
    let r = only_reason(&f);
    assert_eq!(r["reason"], "overlay_dir_missing", "{r}");
    assert!(
        r["rootfs_path"].as_str().unwrap().ends_with("roots/l/ov"),
        "{r}"
    );
}

/// A blob the output manifest reaches (not the manifest itself) is gone: never a hit, with no
/// pruning anywhere — the lookup (library and binary) misses naming it; `gc` prunes the
/// version by the same rule, naming the blob.
#[test]
fn a_deleted_layer_blob_misses_naming_it() {
    let mut layers = Vec::new();
    let f = Fixture::new(|l| {
        let (d, _, ls) = image(l, 3, "v1");
        layers = ls;
        d
    });
    assert_eq!(f.lookup().0, 0);
    let gone = layers[1]["digest"].as_str().unwrap().to_string();
    std::fs::remove_file(path_of(&f.p("oci"), &layers[1])).unwrap();

    // The library, at the hit (an open prunes nothing).
    let plan = layercache::testing::plan::Plan::load(f.p("plan.json")).unwrap();
    let cache = layercache::Cache::open(plan.cache_config(f.p("cache.redb"))).unwrap();
    let mut s = cache.session(plan.build()).unwrap();
    let l = s.lookup("l").unwrap();
    match l.reasons() {
        [layercache::MissReason::OutputsMissing { what }] => {
            assert!(what.contains(&gone) && what.contains("is gone"), "{what}")
        }
        other => panic!("{other:?}"),
    }
    drop(s);
    drop(cache);

    // The binary: a miss naming the blob, twice (nothing pruned it in between).
    for _ in 0..2 {
        let r = only_reason(&f);
        assert_eq!(r["reason"], "outputs_missing", "{r}");
        assert!(r["what"].as_str().unwrap().contains(&gone), "{r}");
    }
    // gc prunes it by the same rule, naming the blob; then it is not cached at all.
    let pruned = gc_pruned(&f);
    assert_eq!(pruned[0]["layer"], "l", "{pruned}");
    let why = pruned[0]["why"].as_str().unwrap_or_default();
    assert!(why.contains(&gone), "{pruned}");
    assert_eq!(only_reason(&f)["reason"], "not_cached");
}

/// A blob there but wrong — a layer of another size, a manifest swapped for one of the same
/// size that names other layers — is never a hit either, and is not pruned (it is damage a
/// person should see): the lookup names it.
#[test]
fn a_wrong_blob_misses_naming_it_and_is_kept() {
    let mut parts = (Value::Null, Vec::new());
    let f = Fixture::new(|l| {
        let (d, _, ls) = image(l, 2, "v1");
        parts = (d.clone(), ls);
        d
    });
    let (manifest, layers) = parts;
    let layer0 = path_of(&f.p("oci"), &layers[0]);
    let before = std::fs::read(&layer0).unwrap();
    std::fs::write(&layer0, b"short").unwrap();
    let r = only_reason(&f);
    assert_eq!(r["reason"], "outputs_missing", "{r}");
    assert!(r["what"].as_str().unwrap().contains("has 5 bytes"), "{r}");
    std::fs::write(&layer0, &before).unwrap();
    assert_eq!(f.lookup().0, 0);

    // The manifest's bytes changed, size kept: its digest no longer matches, so the layers it
    // names now are not trusted.
    let mpath = path_of(&f.p("oci"), &manifest);
    let mut bytes = std::fs::read(&mpath).unwrap();
    let at = bytes.iter().rposition(|&b| b == b'1').unwrap();
    bytes[at] = b'2';
    std::fs::write(&mpath, &bytes).unwrap();
    let r = only_reason(&f);
    assert!(
        r["what"]
            .as_str()
            .unwrap()
            .contains("does not match its digest"),
        "{r}"
    );
    // Kept: gc does not prune it, and the lookup still names it.
    assert_eq!(gc_pruned(&f), json!([]));
    assert_eq!(only_reason(&f), r);
}

/// An index output reaches its manifests and theirs: a layer of one platform's image gone is
/// a miss naming it.
#[test]
fn an_index_output_is_checked_through_its_manifests() {
    let mut layers = Vec::new();
    let f = Fixture::new(|l| {
        let (amd, _, _) = image(l, 1, "amd64");
        let (arm, _, ls) = image(l, 2, "arm64");
        layers = ls;
        let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [amd, arm]});
        blob(l, INDEX, index.to_string().as_bytes())
    });
    assert_eq!(f.lookup().0, 0);
    let gone = layers[0]["digest"].as_str().unwrap().to_string();
    std::fs::remove_file(path_of(&f.p("oci"), &layers[0])).unwrap();
    // A miss naming the blob; gc prunes it by the same rule, naming the blob.
    let r = only_reason(&f);
    assert!(r["what"].as_str().is_some_and(|w| w.contains(&gone)), "{r}");
    let pruned = gc_pruned(&f);
    assert!(
        pruned[0]["why"].as_str().is_some_and(|w| w.contains(&gone)),
        "{pruned}"
    );
}

/// A directory with an (empty) OCI layout and the plan file `plan`.
fn plan_dir(plan: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("oci")).unwrap();
    std::fs::write(dir.path().join("plan.json"), plan).unwrap();
    dir
}

fn lookup_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("lookup")
        .arg("--db")
        .arg(dir.join("cache.redb"))
        .arg("--plan")
        .arg(dir.join("plan.json"))
        .args(args)
        .env("LAYERCACHE_LOG", "warn")
        .env_remove("LAYERCACHE_REMOTE")
        .output()
        .unwrap()
}

#[test]
fn a_definition_key_given_twice_is_an_error_naming_the_layer_and_the_key() {
    for (text, at) in [
        (r#"{"v": 2, "v": 1}"#, "in definition"),
        (
            r#"{"run": {"env": [{"v": 2, "v": 1}]}}"#,
            "in definition.run.env[0]",
        ),
    ] {
        let plan = format!(
            r#"{{"oci_layout": "oci", "layers": {{"app": {{"definition": {text},
                 "base": {{"type": "scratch"}}}}}}}}"#
        );
        let dir = plan_dir(&plan);
        let o = lookup_in(dir.path(), &["app"]);
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(r#"layer "app""#), "{err}");
        assert!(
            err.contains(&format!(r#"key "v" is given twice {at}"#)),
            "{err}"
        );
    }
    // Equal keys in different objects are fine.
    let plan = json!({"oci_layout": "oci", "layers": {"app": {
        "definition": {"a": {"v": 1}, "b": {"v": 1}}, "base": {"type": "scratch"}}}});
    let dir = plan_dir(&plan.to_string());
    assert_eq!(lookup_in(dir.path(), &["app"]).status.code(), Some(1));
}

#[test]
fn format_characters_in_names_and_paths_print_escaped_in_text_and_exact_in_json() {
    let name = "report\u{202e}fdp.exe";
    let file = "a\u{200b}b.txt";
    let plan = json!({"oci_layout": "oci", "layers": {name: {
        "definition": null, "base": {"type": "scratch"},
        "imports": [{"key": "src", "path": "src"}]}}});
    let dir = plan_dir(&plan.to_string());
    common::write(dir.path(), &format!("src/{file}"), b"one");
    common::output_layout(&dir.path().join("oci"));
    std::fs::write(
        dir.path().join("m.json"),
        serde_json::to_string(&common::outputs()).unwrap(),
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["put", "--db"])
        .arg(dir.path().join("cache.redb"))
        .arg("--plan")
        .arg(dir.path().join("plan.json"))
        .arg("--manifests")
        .arg(dir.path().join("m.json"))
        .args(["--inputs-as-of-now", name])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        text.starts_with("report\\u{202e}fdp.exe: recorded"),
        "{text}"
    );
    assert!(!text.contains('\u{202e}'), "{text}");

    common::write(dir.path(), &format!("src/{file}"), b"two");
    let o = lookup_in(dir.path(), &["--explain", name]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.starts_with("report\\u{202e}fdp.exe: miss"), "{text}");
    assert!(text.contains("a\\u{200b}b.txt"), "{text}");
    assert!(
        !text.contains('\u{202e}') && !text.contains('\u{200b}'),
        "{text}"
    );

    let o = lookup_in(dir.path(), &["--json", name]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["layer"], name, "{v}");
    let diff = &v["reasons"][0]["diff"]["modified"][0]["path"];
    assert_eq!(diff, file, "{v}");
}

/// The rule's cost at a hit, measured: a layer of 10^5 files (`LAYERCACHE_BENCH_FILES`) whose
/// output is an image of 100 layers. Prints the time of the outputs check alone (the small
/// manifest read and hashed, 101 `stat`s) and of a whole no-change lookup (the walk, with the
/// stat fast path), and their ratio; asserts only the outcomes.
///
/// `cargo test --release --test outputs_rule -- --ignored --nocapture outputs_rule_cost`
#[test]
#[ignore = "a measurement (generates 10^5 files): run it by name"]
fn outputs_rule_cost_on_a_large_layer_with_a_100_layer_image() {
    use std::time::Instant;
    let files: u64 = std::env::var("LAYERCACHE_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let stats = treegen::generate(&tree, files, 1).unwrap();
    let layout = tmp.path().join("oci");
    let mut outputs = std::collections::BTreeMap::new();
    for (name, layers) in [("big", 100), ("one", 1)] {
        let (d, _, _) = image(&layout, layers, name);
        outputs.insert(
            name,
            serde_json::from_value::<oci_spec::image::Descriptor>(d).unwrap(),
        );
    }
    let mut build = layercache::Build::new();
    for name in ["big", "one"] {
        build.add(
            name,
            layercache::LayerInputs {
                definition: json!({"run": name}),
                base: layercache::Base::Scratch,
                imports: vec![layercache::Import {
                    key: "src".into(),
                    path: tree.clone(),
                    dest: None,
                }],
                overlay_dirs: Vec::new(),
                source_date_epoch: None,
                build_only: false,
                uncacheable: None,
            },
        );
    }
    let cache = layercache::Cache::open(layercache::CacheConfig {
        db: tmp.path().join("cache.redb"),
        oci_layout: Some(layout.clone()),
        ..Default::default()
    })
    .unwrap();
    for name in ["big", "one"] {
        let mut s = cache.session(&build).unwrap();
        let l = s.lookup(name).unwrap();
        let m = std::collections::BTreeMap::from([("tar".to_string(), outputs[name].clone())]);
        s.put(&l, &m).unwrap();
    }
    let mut s = cache.session(&build).unwrap();
    let hit = s.lookup("big").unwrap();
    let rec = hit.entry().expect("a hit").record.clone();
    let one_rec = s
        .lookup("one")
        .unwrap()
        .entry()
        .expect("a hit")
        .record
        .clone();
    let inputs = build.layer("big").unwrap();
    let n = 2000;
    let time = |rec: &layercache::testing::schema::VersionRecord| {
        let t = Instant::now();
        for _ in 0..n {
            assert!(cache.outputs_missing(rec, inputs).unwrap().is_none());
        }
        t.elapsed() / n
    };
    let check_100 = time(&rec);
    let check_1 = time(&one_rec);
    let runs = 5;
    let t = Instant::now();
    for _ in 0..runs {
        let mut s = cache.session(&build).unwrap();
        assert!(s.lookup("big").unwrap().is_hit());
    }
    let lookup = t.elapsed() / runs;
    println!(
        "files: {} ({} MB); outputs check: {check_100:.2?} for a 100-layer image, \
         {check_1:.2?} for a 1-layer image; no-change lookup (hit, check included): \
         {lookup:.2?}; the check is {:.3}% of the lookup",
        stats.files,
        stats.bytes / 1_000_000,
        check_100.as_secs_f64() / lookup.as_secs_f64() * 100.0
    );
}
