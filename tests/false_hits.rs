//! Issue #11, the cache side: every path by which a stale output could be reused, through the
//! library API with real redb files and real trees. Each test here failed before its fix.

mod common;

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
        Cache::open(self.config()).unwrap().0
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
