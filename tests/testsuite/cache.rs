//! The cache through its library API: every miss reason, every base type, chains, regressions
//! of stacker's bugs, prune, put's observation check, and bad input. Real redb files, real trees.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use layercache::{
    Base, BaseChange, Build, Cache, CacheConfig, Error, Import, LayerInputs, LookupMode,
    MissReason, OverlayDir,
};
use oci_spec::image::Descriptor;
use serde_json::json;

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("oci/blobs/sha256")).unwrap();
        std::fs::create_dir_all(dir.join("roots")).unwrap();
        Fixture { _tmp: tmp, dir }
    }

    fn config(&self) -> CacheConfig {
        CacheConfig {
            db: self.dir.join("cache.redb"),
            oci_layout: Some(self.dir.join("oci")),
            rootfs_dir: Some(self.dir.join("roots")),
            ..Default::default()
        }
    }

    fn open(&self) -> Cache {
        Cache::open(self.config()).unwrap()
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Writes a blob into the OCI layout; returns its descriptor.
    fn blob(&self, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        use sha2::Digest as _;
        let digest: String = sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(self.p(&format!("oci/blobs/sha256/{digest}")), bytes).unwrap();
        json!({"mediaType": media_type, "digest": format!("sha256:{digest}"), "size": bytes.len()})
    }

    /// Writes an image (a layer holding `content`, a config, the manifest) into the OCI layout
    /// and returns a descriptor map pointing at its manifest.
    fn manifests(&self, content: &str) -> BTreeMap<String, Descriptor> {
        let layer = self.blob("application/vnd.oci.image.layer.v1.tar", content.as_bytes());
        let config = self.blob("application/vnd.oci.image.config.v1+json", b"{}");
        let manifest = json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": [layer]});
        let mut d = self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        );
        d["annotations"] = json!({"b": "2", "a": "1"});
        BTreeMap::from([("tar".to_string(), serde_json::from_value(d).unwrap())])
    }

    fn blob_of(&self, m: &BTreeMap<String, Descriptor>) -> PathBuf {
        let d = m["tar"].digest().to_string();
        self.p(&format!(
            "oci/blobs/sha256/{}",
            d.trim_start_matches("sha256:")
        ))
    }
}

fn layer(base: Base) -> LayerInputs {
    LayerInputs {
        definition: json!({"run": "make", "from": "x"}),
        base,
        imports: vec![],
        overlay_dirs: vec![],
        source_date_epoch: None,
        build_only: false,
        uncacheable: None,
    }
}

fn import(key: &str, path: &Path) -> Import {
    Import {
        key: key.into(),
        path: path.into(),
        dest: None,
    }
}

/// A build: `base` (scratch, imports a dir and a file) and `app` (built on base, overlay dir).
fn two_layers(f: &Fixture) -> Build {
    write(&f.p("imports/base/tree"), "x/one.txt", b"one");
    write(&f.p("imports/base/tree"), "x/two.txt", b"two");
    write(&f.p("imports/base"), "file.tar", b"tarball");
    write(&f.p("src"), "lib/a.rs", b"fn a() {}");
    write(&f.p("src"), "main.rs", b"fn main() {}");
    std::fs::create_dir_all(f.p("roots/app/overlay_dirs/src")).unwrap();
    two_layers_again(f)
}

fn put_all(f: &Fixture, cache: &Cache, build: &Build, names: &[&str]) {
    let mut s = cache.session(build).unwrap();
    for name in names {
        let l = s.lookup(name).unwrap();
        s.put(
            &l,
            &f.manifests(&format!("{name}-{:?}", std::time::SystemTime::now())),
        )
        .unwrap();
    }
}

fn first_reason(cache: &Cache, build: &Build, name: &str) -> Option<MissReason> {
    let mut s = cache.session(build).unwrap();
    s.lookup(name).unwrap().reasons().first().cloned()
}

#[test]
fn miss_then_put_then_hit_and_the_definition_round_trips() {
    let f = Fixture::new();
    let cache = f.open();
    let build = two_layers(&f);
    assert_eq!(
        first_reason(&cache, &build, "base"),
        Some(MissReason::NotCached)
    );
    put_all(&f, &cache, &build, &["base", "app"]);
    let mut s = cache.session(&build).unwrap();
    for name in ["base", "app"] {
        let l = s.lookup(name).unwrap();
        assert!(l.is_hit(), "{name}: {:?}", l.reasons());
        assert_eq!(l.entry().unwrap().manifests.len(), 1);
    }
    // Reopen: the definition compares equal after a round trip through the file (seed bug).
    drop(s);
    drop(cache);
    let cache = f.open();
    let mut s = cache.session(&build).unwrap();
    let hit = s.lookup("base").unwrap();
    assert!(hit.is_hit());
    let rec = &hit.entry().unwrap().record;
    let back: serde_json::Value = serde_json::from_slice(&rec.definition_json).unwrap();
    assert_eq!(back, build.layers["base"].definition);
    // Descriptors survive too, annotations included.
    let d = &hit.entry().unwrap().manifests["tar"];
    assert_eq!(d.annotations().as_ref().unwrap()["a"], "1");
}

#[test]
fn definition_changed_names_the_fields() {
    let f = Fixture::new();
    let cache = f.open();
    let mut build = two_layers(&f);
    put_all(&f, &cache, &build, &["base"]);
    build.layers.get_mut("base").unwrap().definition =
        json!({"run": "make all", "from": "x", "new": 1});
    match first_reason(&cache, &build, "base") {
        Some(MissReason::DefinitionChanged { fields }) => {
            let names: Vec<&str> = fields.iter().map(|c| c.field.as_str()).collect();
            assert_eq!(names, vec!["new", "run"]);
            assert_eq!(fields[1].old, json!("make"));
            assert_eq!(fields[1].new, json!("make all"));
        }
        other => panic!("{other:?}"),
    }
    // Key order alone is not a change (canonical form).
    build.layers.get_mut("base").unwrap().definition =
        serde_json::from_str(r#"{"from": "x", "run": "make"}"#).unwrap();
    assert_eq!(first_reason(&cache, &build, "base"), None);
}

#[test]
fn source_date_epoch_changed() {
    let f = Fixture::new();
    let cache = f.open();
    let mut build = two_layers(&f);
    build.layers.get_mut("base").unwrap().source_date_epoch = Some(100);
    put_all(&f, &cache, &build, &["base"]);
    build.layers.get_mut("base").unwrap().source_date_epoch = Some(200);
    assert_eq!(
        first_reason(&cache, &build, "base"),
        Some(MissReason::SourceDateEpochChanged {
            old: Some(100),
            new: Some(200)
        })
    );
}

#[test]
fn import_reasons_new_missing_type_content() {
    let f = Fixture::new();
    let cache = f.open();
    let mut build = two_layers(&f);
    put_all(&f, &cache, &build, &["base"]);

    // Content of a file import (its mode counts too).
    chmod(&f.p("imports/base/file.tar"), 0o600);
    match first_reason(&cache, &build, "base") {
        Some(MissReason::ImportContentChanged { key, diff }) => {
            assert_eq!(key, "stacker://file.tar");
            assert_eq!(diff.modified.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    chmod(&f.p("imports/base/file.tar"), 0o644);
    assert_eq!(first_reason(&cache, &build, "base"), None);

    // Content of a dir import: a file removed (seed bug: it still hit).
    std::fs::remove_file(f.p("imports/base/tree/x/two.txt")).unwrap();
    match first_reason(&cache, &build, "base") {
        Some(MissReason::ImportContentChanged { key, diff }) => {
            assert_eq!(key, "https://example.com/tree");
            assert_eq!(diff.removed.len(), 1);
            assert_eq!(diff.removed[0].to_string(), "x/two.txt");
        }
        other => panic!("{other:?}"),
    }
    write(&f.p("imports/base/tree"), "x/two.txt", b"two");
    assert_eq!(first_reason(&cache, &build, "base"), None);

    // Missing on disk.
    std::fs::rename(f.p("imports/base/file.tar"), f.p("file.tar.away")).unwrap();
    assert!(matches!(
        first_reason(&cache, &build, "base"),
        Some(MissReason::ImportMissing { key, .. }) if key == "stacker://file.tar"
    ));
    // File ↔ dir.
    std::fs::create_dir(f.p("imports/base/file.tar")).unwrap();
    assert!(matches!(
        first_reason(&cache, &build, "base"),
        Some(MissReason::ImportTypeChanged {
            old: layercache::EntryKind::File,
            new: layercache::EntryKind::Dir,
            ..
        })
    ));
    std::fs::remove_dir(f.p("imports/base/file.tar")).unwrap();
    std::fs::rename(f.p("file.tar.away"), f.p("imports/base/file.tar")).unwrap();
    assert_eq!(first_reason(&cache, &build, "base"), None);

    // A new import. Its key changed while the file on disk stayed the same (seed bug).
    build.layers.get_mut("base").unwrap().imports[1].key = "stacker://renamed.tar".into();
    assert!(matches!(
        first_reason(&cache, &build, "base"),
        Some(MissReason::ImportNew { key }) if key == "stacker://renamed.tar"
    ));
}

#[test]
fn overlay_reasons_new_missing_content() {
    let f = Fixture::new();
    let cache = f.open();
    let mut build = two_layers(&f);
    put_all(&f, &cache, &build, &["base", "app"]);

    write(&f.p("src"), "lib/a.rs", b"fn A() {}");
    write(&f.p("src"), "lib/new.rs", b"new");
    match first_reason(&cache, &build, "app") {
        Some(MissReason::OverlayDirContentChanged { key, diff }) => {
            assert_eq!(key, "src");
            assert_eq!(diff.added.len(), 1);
            assert_eq!(diff.added[0].to_string(), "lib/new.rs");
            assert_eq!(diff.modified[0].path.to_string(), "lib/a.rs");
            let text = MissReason::OverlayDirContentChanged { key, diff }.to_string();
            assert!(
                text.starts_with("cache miss because overlay_dir content changed: src"),
                "{text}"
            );
            assert!(
                text.contains("lib/new.rs") && text.contains("lib/a.rs"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The base layer is unaffected.
    assert_eq!(first_reason(&cache, &build, "base"), None);

    std::fs::remove_dir_all(f.p("roots/app/overlay_dirs/src")).unwrap();
    assert!(matches!(
        first_reason(&cache, &build, "app"),
        Some(MissReason::OverlayDirMissing { .. })
    ));

    build.layers.get_mut("app").unwrap().overlay_dirs[0].key = "src2".into();
    assert!(matches!(
        first_reason(&cache, &build, "app"),
        Some(MissReason::OverlayDirNew { key }) if key == "src2"
    ));
}

#[test]
fn explain_collects_every_reason() {
    let f = Fixture::new();
    let cache = f.open();
    let mut build = two_layers(&f);
    put_all(&f, &cache, &build, &["base", "app"]);
    build.layers.get_mut("app").unwrap().definition = json!({"run": "other"});
    build.layers.get_mut("app").unwrap().source_date_epoch = Some(5);
    write(&f.p("src"), "main.rs", b"changed");
    let mut s = cache.session(&build).unwrap();
    let l = s.explain("app").unwrap();
    let kinds: Vec<String> = l
        .reasons()
        .iter()
        .map(|r| {
            serde_json::to_value(r).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "definition_changed",
            "source_date_epoch_changed",
            "overlay_dir_content_changed"
        ]
    );
    // A plain lookup stops at the first.
    assert_eq!(s.lookup("app").unwrap().reasons().len(), 1);
}

#[test]
fn built_chain_misses_above_a_change_and_nothing_else() {
    let f = Fixture::new();
    let cache = f.open();
    let mut build = Build::new();
    let mut l0 = layer(Base::Scratch);
    write(&f.p("in"), "f", b"1");
    l0.imports = vec![import("in", &f.p("in"))];
    build.add("l0", l0);
    for i in 1..6 {
        build.add(
            format!("l{i}"),
            layer(Base::Built {
                layer: format!("l{}", i - 1),
            }),
        );
    }
    build.add("side", layer(Base::Scratch));
    let names: Vec<String> = (0..6)
        .map(|i| format!("l{i}"))
        .chain(["side".into()])
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    put_all(&f, &cache, &build, &refs);
    let mut s = cache.session(&build).unwrap();
    assert!(refs.iter().all(|n| s.lookup(n).unwrap().is_hit()));

    // A change at the bottom: everything built on l0 misses, the unrelated layer hits.
    write(&f.p("in"), "f", b"2");
    let mut s = cache.session(&build).unwrap();
    let l0 = s.lookup("l0").unwrap();
    assert!(!l0.is_hit());
    for n in ["l1", "l2", "l3", "l4", "l5"] {
        assert!(matches!(
            s.lookup(n).unwrap().reasons(),
            [MissReason::BaseChanged {
                change: BaseChange::BaseLayerMissed { .. }
            }]
        ));
    }
    assert!(s.lookup("side").unwrap().is_hit());
    // Memoized: each layer evaluated once in this session (6 chain + side).
    assert_eq!(s.counters().lookups, 7);

    // Rebuild l0 only: l1 now misses because its base hash changed.
    s.put(&l0, &f.manifests("l0-v2")).unwrap();
    match s.lookup("l1").unwrap().reasons() {
        [
            MissReason::BaseChanged {
                change: BaseChange::HashChanged { .. },
            },
        ] => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn long_chain_is_linear() {
    let f = Fixture::new();
    let cache = f.open();
    let mut build = Build::new();
    build.add("c0", layer(Base::Scratch));
    for i in 1..200 {
        build.add(
            format!("c{i}"),
            layer(Base::Built {
                layer: format!("c{}", i - 1),
            }),
        );
    }
    let mut s = cache.session(&build).unwrap();
    for i in 0..200 {
        let l = s.lookup(&format!("c{i}")).unwrap();
        s.put(&l, &f.manifests("chain")).unwrap();
    }
    let mut s = cache.session(&build).unwrap();
    assert!(s.lookup("c199").unwrap().is_hit());
    for i in 0..199 {
        assert!(s.lookup(&format!("c{i}")).unwrap().is_hit());
    }
    // Top first resolves the chain once; each later lookup is one more evaluation.
    assert_eq!(s.counters().lookups, 200 + 199);
}

#[test]
fn tar_base() {
    let f = Fixture::new();
    let cache = f.open();
    write(&f.dir, "layer-bases/base.tar", b"tar v1");
    let mut build = Build::new();
    build.add(
        "t",
        layer(Base::Tar {
            path: f.p("layer-bases/base.tar"),
        }),
    );
    put_all(&f, &cache, &build, &["t"]);
    assert_eq!(first_reason(&cache, &build, "t"), None);
    write(&f.dir, "layer-bases/base.tar", b"tar v2");
    assert!(matches!(
        first_reason(&cache, &build, "t"),
        Some(MissReason::BaseChanged {
            change: BaseChange::HashChanged { .. }
        })
    ));
    std::fs::remove_file(f.p("layer-bases/base.tar")).unwrap();
    assert!(matches!(
        first_reason(&cache, &build, "t"),
        Some(MissReason::BaseChanged {
            change: BaseChange::TarballMissing { .. }
        })
    ));
}

fn write_index(layout: &Path, entries: &[(&str, &str)]) {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(tag, hex)| {
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": format!("sha256:{hex}"), "size": 10,
                   "annotations": {"org.opencontainers.image.ref.name": tag}})
        })
        .collect();
    std::fs::create_dir_all(layout).unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).unwrap(),
    )
    .unwrap();
}

/// Two manifests carrying one tag in `index.json` (which umoci never writes, so the layout is
/// written by hand here; the other oci/docker base cases run on umoci layouts in
/// tests/testsuite/oci_bases.rs): an error, as in stacker, for both base kinds.
#[test]
fn two_manifests_with_one_tag_are_an_error() {
    let a = "a".repeat(64);
    let b = "b".repeat(64);
    for docker in [false, true] {
        let f = Fixture::new();
        let cache = f.open();
        let layout = f.p("layer-bases/oci");
        write_index(&layout, &[("ubuntu:22.04", &a), ("ubuntu:22.04", &b)]);
        let tag = "ubuntu:22.04".to_string();
        let base = if docker {
            Base::Docker {
                layout: layout.clone(),
                tag,
            }
        } else {
            Base::Oci {
                layout: layout.clone(),
                tag,
            }
        };
        let mut build = Build::new();
        build.add("o", layer(base));
        let mut s = cache.session(&build).unwrap();
        let err = s.lookup("o").unwrap_err().to_string();
        assert!(err.contains("duplicate manifests"), "{err}");
    }
}

#[test]
fn scratch_base_and_base_replaced() {
    let f = Fixture::new();
    let cache = f.open();
    let mut build = Build::new();
    build.add("s", layer(Base::Scratch));
    put_all(&f, &cache, &build, &["s"]);
    assert_eq!(first_reason(&cache, &build, "s"), None);
    write(&f.dir, "b.tar", b"x");
    build.layers.get_mut("s").unwrap().base = Base::Tar { path: f.p("b.tar") };
    assert!(matches!(
        first_reason(&cache, &build, "s"),
        Some(MissReason::BaseChanged {
            change: BaseChange::Replaced { .. }
        })
    ));
}

/// A base of the same kind under another reference (another tarball) is reported as replaced,
/// naming both, not as the old base's hash changing: the kind alone does not make it the same
/// base. (Under another path with the same bytes it is the same base: a hit.)
#[test]
fn a_base_of_the_same_kind_under_another_reference_is_replaced() {
    let f = Fixture::new();
    let cache = f.open();
    write(&f.dir, "a.tar", b"x");
    write(&f.dir, "b.tar", b"y");
    let mut build = Build::new();
    build.add("s", layer(Base::Tar { path: f.p("a.tar") }));
    put_all(&f, &cache, &build, &["s"]);
    assert_eq!(first_reason(&cache, &build, "s"), None);
    build.layers.get_mut("s").unwrap().base = Base::Tar { path: f.p("b.tar") };
    match first_reason(&cache, &build, "s") {
        Some(MissReason::BaseChanged {
            change: BaseChange::Replaced { old, new },
        }) => {
            assert!(
                old.ends_with("a.tar") && new.ends_with("b.tar"),
                "{old} -> {new}"
            );
        }
        other => panic!("expected the base to be replaced, got {other:?}"),
    }
}

/// #22: an open reads no version (so it stats no blob: only versions name blobs), and needs
/// not: a version whose outputs are gone is a miss at its hit check, every time, with nothing
/// pruned; pruning is asked for, and reads every version.
#[test]
fn an_open_reads_no_version_and_a_version_whose_outputs_are_gone_misses_unpruned() {
    let f = Fixture::new();
    let mut build = two_layers(&f);
    let mut bo = layer(Base::Scratch);
    bo.build_only = true;
    build.add("builder", bo);
    std::fs::create_dir_all(f.p("roots/builder")).unwrap();
    let cache = Cache::open(f.config()).unwrap();
    let mut s = cache.session(&build).unwrap();
    let mut blobs = BTreeMap::new();
    for name in ["base", "app", "builder"] {
        let l = s.lookup(name).unwrap();
        let m = f.manifests(name);
        blobs.insert(name, f.blob_of(&m));
        s.put(&l, &m).unwrap();
    }
    drop(s);
    drop(cache);
    std::fs::remove_file(&blobs["app"]).unwrap();
    std::fs::remove_dir(f.p("roots/builder")).unwrap();

    let cache = Cache::open(f.config()).unwrap();
    assert_eq!(cache.versions_examined(), 0, "the open read a version");
    for _ in 0..2 {
        let mut s = cache.session(&build).unwrap();
        assert!(s.lookup("base").unwrap().is_hit());
        for name in ["app", "builder"] {
            let l = s.lookup(name).unwrap();
            assert!(
                matches!(l.reasons(), [MissReason::OutputsMissing { .. }]),
                "{name}: {:?}",
                l.reasons()
            );
        }
    }
    // Nothing was pruned, and nothing but the hits' own check looked at the outputs.
    assert_eq!(cache.versions_examined(), 0);
    for name in ["base", "app", "builder"] {
        assert_eq!(cache.versions(name).unwrap().len(), 1, "{name}");
    }
    let report = cache.prune().unwrap();
    assert_eq!(report.examined, 3);
    assert_eq!(cache.versions_examined(), 3);
    assert_eq!(report.pruned.len(), 2);
}

/// `Cache::gc` prunes by the same rule (a dry run reports and keeps), and plans over the rest.
#[test]
fn gc_prunes_versions_whose_outputs_are_gone() {
    let f = Fixture::new();
    let build = two_layers(&f);
    let cache = Cache::open(f.config()).unwrap();
    let mut s = cache.session(&build).unwrap();
    let mut app_blob = None;
    for name in ["base", "app"] {
        let l = s.lookup(name).unwrap();
        let m = f.manifests(name);
        if name == "app" {
            app_blob = Some(f.blob_of(&m));
        }
        s.put(&l, &m).unwrap();
    }
    drop(s);
    std::fs::remove_file(app_blob.unwrap()).unwrap();
    let policy = layercache::GcPolicy::default();
    let now = u64::MAX / 2;
    let dry = cache.gc(&policy, now, true, None).unwrap();
    let pruned: Vec<&str> = dry.pruned.iter().map(|p| p.layer.as_str()).collect();
    assert_eq!(pruned, ["app"]);
    assert!(dry.pruned[0].why.contains("is gone"), "{:?}", dry.pruned);
    assert_eq!(
        dry.plan.versions_before, 1,
        "the plan is over the versions left"
    );
    assert!(
        cache.entry("app").unwrap().is_some(),
        "a dry run dropped it"
    );
    let done = cache.gc(&policy, now, false, None).unwrap();
    assert_eq!(done.pruned, dry.pruned);
    assert!(cache.entry("app").unwrap().is_none());
    assert!(cache.entry("base").unwrap().is_some());
    // Without a configured layout nothing can be checked, and gc prunes nothing.
    let bare = Cache::open(CacheConfig {
        oci_layout: None,
        ..f.config()
    })
    .unwrap();
    drop(cache);
    assert!(bare.gc(&policy, now, true, None).unwrap().pruned.is_empty());
}

#[test]
fn prune_removes_entries_whose_outputs_are_gone() {
    let f = Fixture::new();
    let mut build = two_layers(&f);
    let mut bo = layer(Base::Scratch);
    bo.build_only = true;
    build.add("builder", bo);
    std::fs::create_dir_all(f.p("roots/builder")).unwrap();
    let cache = Cache::open(f.config()).unwrap();
    let report = cache.prune().unwrap();
    assert!(report.pruned.is_empty());
    let mut s = cache.session(&build).unwrap();
    let mut blobs = BTreeMap::new();
    for name in ["base", "app", "builder"] {
        let l = s.lookup(name).unwrap();
        let m = f.manifests(name);
        blobs.insert(name, f.blob_of(&m));
        s.put(&l, &m).unwrap();
    }
    drop(s);
    drop(cache);
    std::fs::remove_file(&blobs["app"]).unwrap();
    std::fs::remove_dir(f.p("roots/builder")).unwrap();
    let cache = Cache::open(f.config()).unwrap();
    let report = cache.prune().unwrap();
    let mut pruned: Vec<&str> = report.pruned.iter().map(|p| p.layer.as_str()).collect();
    pruned.sort();
    assert_eq!(pruned, vec!["app", "builder"]);
    assert_eq!(report.examined, 3);
    assert!(cache.entry("base").unwrap().is_some());
    assert!(cache.entry("app").unwrap().is_none());
    // Rows went with the entry.
    assert_eq!(
        layercache::testing::store_of(&cache)
            .row_count("app", "overlay:src")
            .unwrap(),
        0
    );
    assert!(
        layercache::testing::store_of(&cache)
            .row_count("base", "import:https://example.com/tree")
            .unwrap()
            > 0
    );
}

#[test]
fn inputs_changed_between_lookup_and_put_stores_nothing() {
    let f = Fixture::new();
    let cache = f.open();
    let build = two_layers(&f);
    let mut s = cache.session(&build).unwrap();
    let l = s.lookup("base").unwrap();
    write(
        &f.p("imports/base/tree"),
        "x/one.txt",
        b"edited during the build",
    );
    write(&f.p("imports/base/tree"), "x/added.txt", b"new");
    let err = s.put(&l, &f.manifests("base")).unwrap_err();
    match &err {
        Error::InputsChanged { layer, changes } => {
            let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
            assert_eq!(layer, "base");
            assert_eq!(changes.len(), 2, "{changes:?}");
            assert!(
                changes.iter().any(|c| c.ends_with("x/one.txt")),
                "{changes:?}"
            );
            assert!(
                changes.iter().any(|c| c.ends_with("x/added.txt")),
                "{changes:?}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(cache.entry("base").unwrap().is_none());
    assert_eq!(
        layercache::testing::store_of(&cache)
            .row_count("base", "import:https://example.com/tree")
            .unwrap(),
        0
    );
    // Looked up again, the new state is put.
    let l = s.lookup("base").unwrap();
    s.put(&l, &f.manifests("base")).unwrap();
    assert!(s.lookup("base").unwrap().is_hit());
}

#[test]
fn bad_names_missing_bases_and_cycles_are_clear_errors() {
    let f = Fixture::new();
    let cache = f.open();
    for bad in ["a/b", "..", "a\0b", ""] {
        let mut b = Build::new();
        b.add(bad, layer(Base::Scratch));
        let err = cache.session(&b).err().expect(bad);
        assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err}");
    }
    let mut b = Build::new();
    b.add(
        "x",
        layer(Base::Built {
            layer: "nowhere".into(),
        }),
    );
    let err = cache.session(&b).err().unwrap();
    assert!(err.to_string().contains("nowhere"), "{err}");

    let mut b = Build::new();
    b.add("x", layer(Base::Built { layer: "y".into() }));
    b.add("y", layer(Base::Built { layer: "z".into() }));
    b.add("z", layer(Base::Built { layer: "x".into() }));
    let err = cache.session(&b).err().unwrap();
    assert!(matches!(err, Error::BaseCycle { .. }), "{err}");

    let mut b = Build::new();
    b.add("ok", layer(Base::Scratch));
    let mut s = cache.session(&b).unwrap();
    assert!(matches!(
        s.lookup("not-there"),
        Err(Error::UnknownLayer { .. })
    ));
    assert!(matches!(s.lookup("../etc"), Err(Error::InvalidName { .. })));
}

#[test]
fn put_of_a_layer_on_an_uncached_base_is_refused() {
    let f = Fixture::new();
    let cache = f.open();
    let build = two_layers(&f);
    let mut s = cache.session(&build).unwrap();
    let l = s.lookup("app").unwrap();
    let err = s.put(&l, &common::outputs()).unwrap_err();
    assert!(matches!(err, Error::Base { .. }), "{err}");
    assert!(cache.entry("app").unwrap().is_none());
}

#[test]
fn check_mode_walks_nothing_after_the_first_reason() {
    let f = Fixture::new();
    let cache = f.open();
    let mut build = two_layers(&f);
    put_all(&f, &cache, &build, &["base"]);
    build.layers.get_mut("base").unwrap().definition = json!({"changed": true});
    let mut s = cache.session(&build).unwrap();
    let l = s.lookup_with("base", LookupMode::CHECK).unwrap();
    assert!(matches!(
        l.reasons(),
        [MissReason::DefinitionChanged { .. }]
    ));
    assert_eq!(s.counters().walk.entries_walked, 0);
    // A lookup for a build observes every source, for the put (walking it with the stat fast
    // path against the rows, so unchanged files need not be read).
    let _ = s.lookup("base").unwrap();
    assert!(s.counters().walk.entries_walked >= 3);
}

#[test]
fn a_source_dropped_from_the_layer_misses() {
    let f = Fixture::new();
    let cache = f.open();
    let mut build = two_layers(&f);
    put_all(&f, &cache, &build, &["base", "app"]);
    // The definition JSON is unchanged; only the import list is shorter.
    build.layers.get_mut("base").unwrap().imports.pop();
    assert_eq!(
        first_reason(&cache, &build, "base"),
        Some(MissReason::ImportRemoved {
            key: "stacker://file.tar".into()
        })
    );
    let mut build = two_layers_again(&f);
    build.layers.get_mut("app").unwrap().overlay_dirs.clear();
    // app's base still hits; its overlay dir is gone from the inputs.
    assert_eq!(
        first_reason(&cache, &build, "app"),
        Some(MissReason::OverlayDirRemoved { key: "src".into() })
    );
    // An import that gains a dest is another source (keyed by key and dest): a new import.
    let mut build = two_layers_again(&f);
    build.layers.get_mut("base").unwrap().imports[1].dest = Some("/x".into());
    assert!(matches!(
        first_reason(&cache, &build, "base"),
        Some(MissReason::ImportNew { .. })
    ));
}

/// The same build as `two_layers`, without rewriting its files.
fn two_layers_again(f: &Fixture) -> Build {
    let mut base = layer(Base::Scratch);
    base.imports = vec![
        import("https://example.com/tree", &f.p("imports/base/tree")),
        import("stacker://file.tar", &f.p("imports/base/file.tar")),
    ];
    let mut app = layer(Base::Built {
        layer: "base".into(),
    });
    app.overlay_dirs = vec![OverlayDir {
        key: "src".into(),
        source: f.p("src"),
        rootfs_path: f.p("roots/app/overlay_dirs/src"),
    }];
    let mut b = Build::new();
    b.add("base", base).add("app", app);
    b
}

#[test]
fn a_damaged_row_costs_that_entry_only() {
    let f = Fixture::new();
    let build = two_layers(&f);
    {
        let cache = f.open();
        put_all(&f, &cache, &build, &["base", "app"]);
    }
    crate::common::plant_garbage(&f.p("cache.redb"), "app", "overlay:src", b"main.rs");
    let cache = f.open();
    let mut s = cache.session(&build).unwrap();
    assert!(s.lookup("base").unwrap().is_hit());
    let l = s.lookup("app").unwrap();
    assert!(
        matches!(l.reasons(), [MissReason::DamagedEntry { .. }]),
        "{:?}",
        l.reasons()
    );
    // Putting it again repairs it.
    s.put(&l, &f.manifests("app again")).unwrap();
    assert!(s.lookup("app").unwrap().is_hit());
}

#[test]
fn a_tar_base_moved_with_the_build_directory_still_hits() {
    let f = Fixture::new();
    let cache = f.open();
    write(&f.dir, "one/layer-bases/base.tar", b"tar");
    write(&f.dir, "two/layer-bases/base.tar", b"tar");
    let mut build = Build::new();
    build.add(
        "t",
        layer(Base::Tar {
            path: f.p("one/layer-bases/base.tar"),
        }),
    );
    put_all(&f, &cache, &build, &["t"]);
    build.layers.get_mut("t").unwrap().base = Base::Tar {
        path: f.p("two/layer-bases/base.tar"),
    };
    assert_eq!(first_reason(&cache, &build, "t"), None);
}

/// Issue 12: a plan whose `oci_layout` has a typo (the directory does not exist) must not look
/// like "every blob is gone": pruning is an error naming the directory, and nothing is pruned
/// — the entries are all there when the right layout is given again.
#[test]
fn a_missing_layout_directory_is_an_error_and_prunes_nothing() {
    let f = Fixture::new();
    let build = two_layers(&f);
    let cache = Cache::open(f.config()).unwrap();
    let mut s = cache.session(&build).unwrap();
    for name in ["base", "app"] {
        let l = s.lookup(name).unwrap();
        s.put(&l, &f.manifests(name)).unwrap();
    }
    drop(s);
    drop(cache);
    let typo = f.p("oic");
    let config = CacheConfig {
        oci_layout: Some(typo.clone()),
        ..f.config()
    };
    match Cache::open(config).unwrap().prune() {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(&typo.display().to_string()), "{msg}");
            assert!(msg.contains("nothing was pruned"), "{msg}");
        }
        Ok(report) => panic!("a missing layout pruned {:?}", report.pruned),
    }
    let cache = Cache::open(f.config()).unwrap();
    let report = cache.prune().unwrap();
    assert!(report.pruned.is_empty());
    let mut s = cache.session(&build).unwrap();
    for name in ["base", "app"] {
        assert!(s.lookup(name).unwrap().is_hit(), "{name}");
    }
}
