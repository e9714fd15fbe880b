//! Issue #11, the cache side: every path by which a stale output could be reused, through the
//! library API with real redb files and real trees. Each test here failed before its fix.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::*;
use layercache::{Base, Build, Cache, CacheConfig, Error, Import, LayerInputs, MissReason};
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

    /// Writes a blob into the OCI layout and returns a descriptor map pointing at it.
    fn manifests(&self, content: &str) -> BTreeMap<String, Descriptor> {
        let digest = blake3::hash(content.as_bytes()).to_hex().to_string();
        std::fs::write(self.p(&format!("oci/blobs/sha256/{digest}")), content).unwrap();
        let d: Descriptor = serde_json::from_value(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{digest}"),
            "size": content.len(),
        }))
        .unwrap();
        BTreeMap::from([("tar".to_string(), d)])
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

fn one_layer(inputs: LayerInputs) -> Build {
    let mut b = Build::new();
    b.add("l", inputs);
    b
}

fn put(f: &Fixture, cache: &Cache, build: &Build, name: &str) {
    let mut s = cache.session(build).unwrap();
    let l = s.lookup(name).unwrap();
    s.put(
        &l,
        &f.manifests(&format!("{name} {:?}", std::time::SystemTime::now())),
    )
    .unwrap();
}

fn reasons(cache: &Cache, build: &Build, name: &str) -> Vec<MissReason> {
    let mut s = cache.session(build).unwrap();
    s.explain(name).unwrap().reasons().to_vec()
}

/// Hole 1: an import with a `dest` goes into the layer; a change to it must miss. The same URL
/// imported to two destinations is two sources.
#[test]
fn an_import_with_a_dest_is_an_input() {
    let f = Fixture::new();
    write(&f.p("imp"), "etc/conf", b"v1");
    let mut l = layer(Base::Scratch);
    l.imports = vec![
        Import {
            key: "stacker://conf".into(),
            path: f.p("imp/etc/conf"),
            dest: Some("/etc/conf".into()),
        },
        Import {
            key: "stacker://conf".into(),
            path: f.p("imp/etc/conf"),
            dest: Some("/opt/conf".into()),
        },
    ];
    let build = one_layer(l.clone());
    let cache = f.open();
    put(&f, &cache, &build, "l");
    assert_eq!(reasons(&cache, &build, "l"), vec![]);
    let rec = cache.entry("l").unwrap().unwrap();
    assert_eq!(rec.imports.len(), 2, "two destinations, two sources");

    write(&f.p("imp"), "etc/conf", b"v2");
    let r = reasons(&cache, &build, "l");
    assert!(
        matches!(r.first(), Some(MissReason::ImportContentChanged { key, .. })
            if key.contains("stacker://conf") && key.contains("/etc/conf")),
        "{r:?}"
    );

    // Moving the import to another destination is a new import (and the old one removed).
    put(&f, &cache, &build, "l");
    let mut moved = l;
    moved.imports[0].dest = Some("/usr/conf".into());
    let r = reasons(&cache, &one_layer(moved), "l");
    assert!(
        matches!(r.first(), Some(MissReason::ImportNew { key }) if key.contains("/usr/conf")),
        "{r:?}"
    );
    assert!(
        r.iter()
            .any(|x| matches!(x, MissReason::ImportRemoved { key } if key.contains("/etc/conf"))),
        "{r:?}"
    );
}

/// Hole 6: an overlay root reached through a symlink is stat'ed through the link; its xattrs
/// must be read through it too, so an xattr change on the real directory misses.
#[test]
fn an_xattr_change_behind_a_symlinked_root_misses() {
    let f = Fixture::new();
    write(&f.p("real"), "a.txt", b"a");
    if !xattrs_supported(&f.p("real")) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and the temp file system refuses user xattrs"
        );
        eprintln!("skipped: the temp file system refuses user xattrs");
        return;
    }
    std::os::unix::fs::symlink(f.p("real"), f.p("link")).unwrap();
    xattr::set(f.p("real"), "user.tag", b"v1").unwrap();
    let mut l = layer(Base::Scratch);
    l.imports = vec![Import {
        key: "tree".into(),
        path: f.p("link"),
        dest: None,
    }];
    let build = one_layer(l);
    let cache = f.open();
    put(&f, &cache, &build, "l");
    assert_eq!(reasons(&cache, &build, "l"), vec![]);

    xattr::set(f.p("real"), "user.tag", b"v2").unwrap();
    let r = reasons(&cache, &build, "l");
    assert!(
        matches!(r.first(), Some(MissReason::ImportContentChanged { key, .. }) if key == "tree"),
        "{r:?}"
    );
}

/// A layer marked uncacheable (a stacker layer with binds) always misses with its own reason,
/// even when a version of the same name exists, and a put of it is refused.
#[test]
fn an_uncacheable_layer_misses_and_cannot_be_put() {
    let f = Fixture::new();
    let cache = f.open();
    let plain = one_layer(layer(Base::Scratch));
    put(&f, &cache, &plain, "l");
    assert_eq!(reasons(&cache, &plain, "l"), vec![]);
    let mut l = layer(Base::Scratch);
    l.uncacheable = Some("layer has binds".into());
    let build = one_layer(l);
    assert_eq!(
        reasons(&cache, &build, "l"),
        vec![MissReason::NotCacheable {
            why: "layer has binds".into()
        }]
    );
    let mut s = cache.session(&build).unwrap();
    let lk = s.lookup("l").unwrap();
    let err = s.put(&lk, &f.manifests("out")).unwrap_err();
    assert!(matches!(err, Error::NotCacheable { .. }), "{err}");
}

/// Hole 4: build_only is part of what must match (v3: of the input digest), and a miss against
/// the current version says so.
#[test]
fn build_only_is_compared() {
    let f = Fixture::new();
    let mut l = layer(Base::Scratch);
    l.build_only = true;
    std::fs::create_dir_all(f.p("roots/l")).unwrap();
    let cache = f.open();
    {
        let build = one_layer(l.clone());
        let mut s = cache.session(&build).unwrap();
        let lk = s.lookup("l").unwrap();
        s.put(&lk, &BTreeMap::new()).unwrap();
        assert_eq!(reasons(&cache, &build, "l"), vec![]);
    }
    l.build_only = false;
    let build = one_layer(l);
    assert_eq!(
        reasons(&cache, &build, "l"),
        vec![MissReason::BuildOnlyChanged {
            old: true,
            new: false
        }]
    );
    assert_eq!(
        MissReason::BuildOnlyChanged {
            old: true,
            new: false
        }
        .to_string(),
        "cache miss because build_only changed: true -> false"
    );
}

/// Hole 4, the put side: `{}` manifests are refused for a layer that is not build-only (a hit
/// would tell the builder to reuse an output that was never produced), and nothing is stored.
#[test]
fn empty_manifests_need_a_build_only_layer() {
    let f = Fixture::new();
    let mut l = layer(Base::Scratch);
    l.build_only = true;
    std::fs::create_dir_all(f.p("roots/l")).unwrap();
    let cache = f.open();
    put_build_only(&cache, &one_layer(l.clone()));
    l.build_only = false;
    let build = one_layer(l);
    let mut s = cache.session(&build).unwrap();
    let lk = s.lookup("l").unwrap();
    let err = s.put(&lk, &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PutRefused {
                why: layercache::PutRefusal::NoOutputs,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not build-only"), "{err}");
    // Nothing was stored: the build-only version is still the current one.
    assert!(cache.entry("l").unwrap().unwrap().build_only);
}

fn put_build_only(cache: &Cache, build: &Build) {
    let mut s = cache.session(build).unwrap();
    let name = build.layers.keys().next().unwrap().clone();
    let lk = s.lookup(&name).unwrap();
    s.put(&lk, &BTreeMap::new()).unwrap();
}

/// Hole 5: a hit never points at outputs that are gone — checked at the hit, not only by the
/// prune at open; without a configured location nothing can be checked, so there is no hit.
#[test]
fn a_hit_checks_that_its_outputs_exist() {
    let f = Fixture::new();
    let build = one_layer(layer(Base::Scratch));
    let mut bo = layer(Base::Scratch);
    bo.build_only = true;
    let mut bo_build = Build::new();
    bo_build.add("bo", bo);
    std::fs::create_dir_all(f.p("roots/bo")).unwrap();
    let m = f.manifests("output");
    {
        let cache = f.open();
        let mut s = cache.session(&build).unwrap();
        let lk = s.lookup("l").unwrap();
        s.put(&lk, &m).unwrap();
        put_build_only(&cache, &bo_build);
    }
    // Opened without pruning, as a builder that opens once and looks up later would be.
    let cache = Cache::open(f.config()).unwrap();
    assert_eq!(reasons(&cache, &build, "l"), vec![]);
    assert_eq!(reasons(&cache, &bo_build, "bo"), vec![]);
    let hex = m["tar"].digest().to_string().replace("sha256:", "");
    std::fs::remove_file(f.p(&format!("oci/blobs/sha256/{hex}"))).unwrap();
    std::fs::remove_dir(f.p("roots/bo")).unwrap();
    let r = reasons(&cache, &build, "l");
    assert!(
        matches!(r.as_slice(), [MissReason::OutputsMissing { what }] if what.contains(&hex)),
        "{r:?}"
    );
    assert!(
        r[0].to_string().contains("the cached outputs are gone"),
        "{r:?}"
    );
    let r = reasons(&cache, &bo_build, "bo");
    assert!(
        matches!(r.as_slice(), [MissReason::OutputsMissing { what }] if what.contains("roots/bo")),
        "{r:?}"
    );
    // A miss never writes: the versions are still there, and hit again once the outputs are.
    std::fs::write(f.p(&format!("oci/blobs/sha256/{hex}")), "output").unwrap();
    std::fs::create_dir_all(f.p("roots/bo")).unwrap();
    assert_eq!(reasons(&cache, &build, "l"), vec![]);
    assert_eq!(reasons(&cache, &bo_build, "bo"), vec![]);
    // No location configured: the outputs cannot be checked, so the version never hits.
    drop(cache);
    let bare = Cache::open(CacheConfig {
        db: f.p("cache.redb"),
        ..Default::default()
    })
    .unwrap();
    let r = reasons(&bare, &bo_build, "bo");
    assert!(
        matches!(r.as_slice(), [MissReason::OutputsMissing { what }] if what.contains("no rootfs_dir")),
        "{r:?}"
    );
    let r = reasons(&bare, &build, "l");
    assert!(
        matches!(r.as_slice(), [MissReason::OutputsMissing { what }] if what.contains("no oci_layout")),
        "{r:?}"
    );
}

/// A layer whose only miss is its gone outputs is still the base its dependents were built on:
/// they hit (their own outputs are there), and rebuilding it makes them evaluate again.
#[test]
fn a_base_whose_outputs_are_gone_is_still_the_base_of_its_dependents() {
    let f = Fixture::new();
    let mut build = Build::new();
    build.add("base", layer(Base::Scratch)).add(
        "app",
        layer(Base::Built {
            layer: "base".into(),
        }),
    );
    let cache = f.open();
    let base_out = f.manifests("base output");
    {
        let mut s = cache.session(&build).unwrap();
        let lk = s.lookup("base").unwrap();
        s.put(&lk, &base_out).unwrap();
        let lk = s.lookup("app").unwrap();
        s.put(&lk, &f.manifests("app output")).unwrap();
    }
    let hex = base_out["tar"].digest().to_string().replace("sha256:", "");
    std::fs::remove_file(f.p(&format!("oci/blobs/sha256/{hex}"))).unwrap();
    let mut s = cache.session(&build).unwrap();
    assert!(matches!(
        s.lookup("base").unwrap().reasons(),
        [MissReason::OutputsMissing { .. }]
    ));
    assert!(s.lookup("app").unwrap().is_hit());
}

/// Issue #12: pruning for a build never touches layers the build does not define (a cache
/// shared by several plans keeps the others' versions).
#[test]
fn pruning_for_a_build_spares_the_layers_of_other_builds() {
    let f = Fixture::new();
    let mut two = Build::new();
    two.add("mine", layer(Base::Scratch))
        .add("theirs", layer(Base::Scratch));
    let mut mine = Build::new();
    mine.add("mine", layer(Base::Scratch));
    {
        let cache = f.open();
        put(&f, &cache, &two, "mine");
        put(&f, &cache, &two, "theirs");
    }
    // Every blob gone: a prune for `mine` removes only `mine`.
    for e in std::fs::read_dir(f.p("oci/blobs/sha256")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let cache = Cache::open(f.config()).unwrap();
    let report = cache.prune_build(&mine).unwrap();
    let pruned: Vec<&str> = report.pruned.iter().map(|p| p.layer.as_str()).collect();
    assert_eq!(pruned, ["mine"]);
    assert_eq!(report.examined, 1);
    assert!(cache.entry("theirs").unwrap().is_some());
    assert!(cache.entry("mine").unwrap().is_none());
    // A typo in the layout path is still an error, and prunes nothing.
    let mut typo = f.config();
    typo.oci_layout = Some(f.p("ocii"));
    let err = Cache::open(typo).unwrap().prune_build(&two).err().unwrap();
    assert!(err.to_string().contains("ocii"), "{err}");
    assert!(cache.entry("theirs").unwrap().is_some());
}

/// Hole 3: the base hash the lookup saw is what the put compares: a tar base that changed
/// during the build makes the put fail naming the base, and nothing is stored. The definition,
/// builder, SOURCE_DATE_EPOCH and build_only the lookup saw are compared too.
#[test]
fn put_compares_the_base_and_the_layer_the_lookup_saw() {
    let f = Fixture::new();
    write(&f.dir, "base.tar", b"v1");
    let build = one_layer(layer(Base::Tar {
        path: f.p("base.tar"),
    }));
    let cache = f.open();
    let mut s = cache.session(&build).unwrap();
    let lk = s.lookup("l").unwrap();
    write(&f.dir, "base.tar", b"v2");
    let err = s.put(&lk, &f.manifests("out")).unwrap_err();
    match &err {
        Error::InputsChanged { changes, .. } => {
            // Typed: the base's hash, with both hashes, for a builder to act on.
            assert!(
                changes.iter().any(|c| matches!(
                    c,
                    layercache::PutChange::BaseHash { base, old, new }
                        if base == "tar:base.tar" && old != new
                )),
                "{changes:?}"
            );
            let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
            assert!(
                changes.iter().any(|c| c.contains("base tar:base.tar")),
                "{err}"
            )
        }
        other => panic!("{other}"),
    }
    assert!(cache.entry("l").unwrap().is_none());

    let lk = s.lookup("l").unwrap();
    let mut changed = build.clone();
    changed.layers.get_mut("l").unwrap().source_date_epoch = Some(7);
    let mut s2 = cache.session(&changed).unwrap();
    let err = s2.put(&lk, &f.manifests("out")).unwrap_err();
    assert!(err.to_string().contains("SOURCE_DATE_EPOCH"), "{err}");

    let mut changed = build.clone();
    changed.layers.get_mut("l").unwrap().definition = json!({"run": "make other"});
    let mut s2 = cache.session(&changed).unwrap();
    let err = s2.put(&lk, &f.manifests("out")).unwrap_err();
    assert!(err.to_string().contains("the layer definition"), "{err}");

    let mut changed = build.clone();
    changed.builder = Some("stacker 9".into());
    let mut s2 = cache.session(&changed).unwrap();
    let err = s2.put(&lk, &f.manifests("out")).unwrap_err();
    assert!(err.to_string().contains("the builder"), "{err}");

    let mut changed = build.clone();
    changed.layers.get_mut("l").unwrap().build_only = true;
    let mut s2 = cache.session(&changed).unwrap();
    let err = s2.put(&lk, &f.manifests("out")).unwrap_err();
    assert!(err.to_string().contains("build_only"), "{err}");
    assert!(cache.entry("l").unwrap().is_none());

    s.put(&lk, &f.manifests("out")).unwrap();
    assert_eq!(reasons(&cache, &build, "l"), vec![]);
}

/// A base the lookup could not resolve: a tar base that was missing at lookup and appears
/// before the put is refused (the build could not have used what the lookup never saw); a
/// built base that missed at lookup (the builder looked every layer up first, then built
/// bottom up) is the one case accepted — the put records the base version that hits now.
#[test]
fn put_refuses_a_base_unresolved_at_lookup_except_a_built_one_built_since() {
    let f = Fixture::new();
    // The tar base is missing at lookup.
    let build = one_layer(layer(Base::Tar {
        path: f.p("base.tar"),
    }));
    let cache = f.open();
    let mut s = cache.session(&build).unwrap();
    let lk = s.lookup("l").unwrap();
    assert!(!lk.is_hit());
    write(&f.dir, "base.tar", b"v1");
    let err = s.put(&lk, &f.manifests("out")).unwrap_err();
    assert!(
        err.to_string().contains("could not be resolved at lookup"),
        "{err}"
    );
    assert!(cache.entry("l").unwrap().is_none());

    // A chain looked up top to bottom before anything was built, then built bottom up.
    let mut chain = Build::new();
    chain.add("base", layer(Base::Scratch));
    chain.add(
        "app",
        layer(Base::Built {
            layer: "base".into(),
        }),
    );
    let mut s = cache.session(&chain).unwrap();
    let app = s.lookup("app").unwrap();
    let base = s.lookup("base").unwrap();
    assert!(!app.is_hit() && !base.is_hit());
    s.put(&base, &f.manifests("base out")).unwrap();
    s.put(&app, &f.manifests("app out")).unwrap();
    assert_eq!(reasons(&cache, &chain, "app"), vec![]);
}

/// Hole 2, the library side of the lookup record: a record written by a build's lookup and
/// read back in "another process" makes the put refuse a source changed since, naming it; the
/// record is JSON with the format version, and a record of another layer is not this one's.
#[test]
fn put_from_a_lookup_record_refuses_a_source_changed_since_the_lookup() {
    let f = Fixture::new();
    write(&f.p("src"), "a.txt", b"version 2");
    write(&f.p("src"), "b.txt", b"bee");
    let mut l = layer(Base::Scratch);
    l.imports = vec![Import {
        key: "src".into(),
        path: f.p("src"),
        dest: None,
    }];
    let build = one_layer(l);
    let cache = f.open();
    let rec_path = f.p("l.lookup.json");
    {
        let mut s = cache.session(&build).unwrap();
        let lk = s.lookup("l").unwrap();
        let rec = lk.record().unwrap();
        assert_eq!(rec.input_digest(), lk.input_digest());
        assert!(rec.input_digest().is_some());
        rec.write(&rec_path).unwrap();
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    assert_eq!(json["format"], "layercache lookup record");
    assert_eq!(json["version"], 2);
    assert_eq!(json["sources"][0]["row_count"], 3);

    // A record is read for the layer it is of: for any other layer it is refused, typed,
    // before anything is looked up.
    match layercache::LookupRecord::read_for(&rec_path, "other") {
        Err(Error::RecordOfAnotherLayer { layer, found, path }) => {
            assert_eq!((layer.as_str(), found.as_str()), ("other", "l"));
            assert_eq!(path, rec_path);
        }
        other => panic!("{other:?}"),
    }
    write(&f.p("src"), "a.txt", b"version 3");
    let rec = layercache::LookupRecord::read_for(&rec_path, "l").unwrap();
    let mut s = cache.session(&build).unwrap();
    let err = s.put_recorded(&rec, &f.manifests("out")).unwrap_err();
    match &err {
        Error::InputsChanged { changes, .. } => {
            assert!(
                matches!(&changes[..], [layercache::PutChange::Path { role: layercache::SourceRole::Import, key, .. }] if key == "src"),
                "{changes:?}"
            );
            let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
            assert_eq!(changes.len(), 1, "{err}");
            // The record keeps the lookup's walk log, so the path is named.
            assert!(changes[0].starts_with("import src: "), "{err}");
            assert!(changes[0].ends_with("a.txt"), "{err}");
        }
        other => panic!("{other}"),
    }
    assert!(cache.entry("l").unwrap().is_none());
    // Back as the lookup saw it: the put records it, and it hits.
    write(&f.p("src"), "a.txt", b"version 2");
    let mut s = cache.session(&build).unwrap();
    s.put_recorded(&rec, &f.manifests("out")).unwrap();
    assert_eq!(reasons(&cache, &build, "l"), vec![]);
}
