//! The stacker layout helper: every path mapping, the base kinds and tags, bad names, and an
//! end-to-end build through the real cache on a stacker-like directory tree.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use layercache::testing::stacker::{FromType, StackerLayer, StackerLayout, docker_tag, oci_tag};
use layercache::{Base, Cache, Error, MissReason, RelPath};
use oci_spec::image::Descriptor;
use serde_json::json;

fn layout() -> StackerLayout {
    StackerLayout::new("/p", "/p/.stacker", "/p/roots", "/p/oci").with_platform("linux", "amd64")
}

fn layer(def: serde_json::Value) -> StackerLayer {
    StackerLayer::from_definition(def).unwrap()
}

fn invalid_name(e: Error) -> (&'static str, String) {
    match e {
        Error::InvalidName { what, value, .. } => (what, value),
        other => panic!("expected InvalidName, got {other:?}"),
    }
}

#[test]
fn imports_map_to_imports_dir_by_base_name_and_keep_the_url_as_key() {
    let l = layer(json!({
        "from": {"type": "scratch"},
        "imports": [
            "https://example.com/dl/toolchain.tar.gz",
            {"path": "stacker://other/usr/lib/"},
            {"path": "conf/app.toml", "dest": "/etc/app/"},
            {"path": "README", "dest": ""}
        ],
        "import": "legacy.sh"
    }));
    let inputs = layout().layer_inputs("web", &l, None).unwrap();
    let got: Vec<(&str, &Path, Option<&str>)> = inputs
        .imports
        .iter()
        .map(|i| (i.key.as_str(), i.path.as_path(), i.dest.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "https://example.com/dl/toolchain.tar.gz",
                Path::new("/p/.stacker/imports/web/toolchain.tar.gz"),
                None
            ),
            // Trailing slashes are dropped before taking the base name, as Go's path.Base.
            (
                "stacker://other/usr/lib/",
                Path::new("/p/.stacker/imports/web/lib"),
                None
            ),
            (
                "conf/app.toml",
                Path::new("/p/.stacker/imports/web/app.toml"),
                Some("/etc/app/")
            ),
            // An empty dest is no dest (Go's zero value): the import is cached.
            ("README", Path::new("/p/.stacker/imports/web/README"), None),
            // The legacy `import` field follows `imports`.
            (
                "legacy.sh",
                Path::new("/p/.stacker/imports/web/legacy.sh"),
                None
            ),
        ]
    );
    assert_eq!(
        layout()
            .import_path("web", "https://example.com/x.tar?v=1")
            .unwrap(),
        PathBuf::from("/p/.stacker/imports/web/x.tar?v=1")
    );
}

#[test]
fn an_import_whose_base_name_names_no_file_is_invalid() {
    for bad in ["", ".", "..", "a/..", "dir/./", "/", "///", "a/b\0c"] {
        let l = layer(json!({"from": {"type": "scratch"}, "imports": [bad]}));
        let e = layout().layer_inputs("web", &l, None).unwrap_err();
        let (what, value) = invalid_name(e);
        assert_eq!(what, "import", "{bad:?}");
        assert_eq!(value, layercache::escape_bytes(bad.as_bytes()));
    }
    // The message names the import and says why.
    let e = layout().import_path("web", "a/..").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("\"a/..\"") && msg.contains("names no file"),
        "{msg}"
    );
}

#[test]
fn overlay_dirs_map_source_and_rootfs_copy() {
    let l = layer(json!({
        "from": {"type": "scratch"},
        "overlay_dirs": [
            {"source": "/repo/services/api", "dest": "/usr/src/api"},
            {"source": "assets/", "dest": "/"},
            {"source": "/repo/docs"},
            {"source": "/repo/cfg", "dest": "a/./b/../c//"}
        ]
    }));
    let inputs = layout().layer_inputs("api", &l, None).unwrap();
    let got: Vec<(&str, &Path, &Path)> = inputs
        .overlay_dirs
        .iter()
        .map(|o| (o.key.as_str(), o.source.as_path(), o.rootfs_path.as_path()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "/repo/services/api",
                Path::new("/repo/services/api"),
                Path::new("/p/roots/api/overlay_dirs/api/usr/src/api")
            ),
            // A relative source is relative to the stackerfile's directory (/p), as in stacker.
            (
                "assets/",
                Path::new("/p/assets"),
                Path::new("/p/roots/api/overlay_dirs/assets")
            ),
            (
                "/repo/docs",
                Path::new("/repo/docs"),
                Path::new("/p/roots/api/overlay_dirs/docs")
            ),
            (
                "/repo/cfg",
                Path::new("/repo/cfg"),
                Path::new("/p/roots/api/overlay_dirs/cfg/a/c")
            ),
        ]
    );
}

#[test]
fn an_overlay_dest_that_leaves_its_directory_or_a_bad_source_is_invalid() {
    let e = layout()
        .overlay_rootfs_path("api", "/repo/x", "a/../../etc")
        .unwrap_err();
    assert_eq!(
        invalid_name(e),
        ("overlay_dir dest", "a/../../etc".to_string())
    );
    for bad in ["..", "/", ""] {
        let e = layout().overlay_rootfs_path("api", bad, "/").unwrap_err();
        assert_eq!(invalid_name(e).0, "overlay_dir source", "{bad:?}");
    }
}

#[test]
fn a_bad_layer_name_is_refused_before_any_path_is_built() {
    let l = layer(json!({"from": {"type": "scratch"}, "imports": ["x"]}));
    for bad in ["a/b", "..", "", "a\0b"] {
        let e = layout().layer_inputs(bad, &l, None).unwrap_err();
        assert_eq!(invalid_name(e).0, "layer name", "{bad:?}");
    }
}

#[test]
fn tar_base_is_the_downloaded_tarball_in_layer_bases() {
    let l =
        layer(json!({"from": {"type": "tar", "url": "https://example.com/rootfs/alpine.tar.gz"}}));
    let inputs = layout().layer_inputs("x", &l, None).unwrap();
    assert_eq!(
        inputs.base,
        Base::Tar {
            path: PathBuf::from("/p/.stacker/layer-bases/alpine.tar.gz")
        }
    );
    let l = layer(json!({"from": {"type": "tar"}}));
    match layout().layer_inputs("x", &l, None).unwrap_err() {
        Error::Base { layer, detail } => {
            assert_eq!(layer, "x");
            assert!(detail.contains("from.url"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    let l = layer(json!({"from": {"type": "tar", "url": "https://example.com/"}}));
    // Base name of "https://example.com/" is "example.com", as Go's path.Base gives.
    assert_eq!(
        layout().layer_inputs("x", &l, None).unwrap().base,
        Base::Tar {
            path: PathBuf::from("/p/.stacker/layer-bases/example.com")
        }
    );
}

#[test]
fn oci_and_docker_bases_resolve_in_layer_bases_oci_with_stackers_tag() {
    let oci = layer(json!({"from": {"type": "oci", "url": "/images/layout:1.0"}}));
    assert_eq!(
        layout().layer_inputs("x", &oci, None).unwrap().base,
        Base::Oci {
            layout: PathBuf::from("/p/.stacker/layer-bases/oci"),
            tag: "1.0".into()
        }
    );
    let docker = layer(json!({"from": {"type": "docker", "url": "docker://ubuntu:latest"}}));
    assert_eq!(
        layout().layer_inputs("x", &docker, None).unwrap().base,
        Base::Docker {
            layout: PathBuf::from("/p/.stacker/layer-bases/oci"),
            tag: "ubuntu".into()
        }
    );
    assert_eq!(
        layout().bases_oci_layout(),
        Path::new("/p/.stacker/layer-bases/oci")
    );

    for (url, tag) in [
        ("/images/layout:1.0", "1.0"),
        ("oci:/images/layout:v2", "v2"),
        ("layout:a:b", "a:b"),
    ] {
        assert_eq!(oci_tag("x", url).unwrap(), tag, "{url}");
    }
    for bad in ["/images/layout", "/images/layout:", "oci:/images/layout"] {
        assert!(
            matches!(oci_tag("x", bad), Err(Error::Base { .. })),
            "{bad}"
        );
    }
    for (url, tag) in [
        ("docker://ubuntu:latest", "ubuntu"),
        ("docker://centos", "centos"),
        ("docker://docker.io/library/ubuntu:22.04", "ubuntu"),
        ("docker://localhost:5000/team/app:1", "app"),
        ("ubuntu:latest", "ubuntu"),
    ] {
        assert_eq!(docker_tag("x", url).unwrap(), tag, "{url}");
    }
    for bad in ["docker://", "docker://host/", ":latest"] {
        assert!(
            matches!(docker_tag("x", bad), Err(Error::Base { .. })),
            "{bad}"
        );
    }
}

#[test]
fn built_and_scratch_bases() {
    let built = layer(json!({"from": {"type": "built", "tag": "base"}}));
    assert_eq!(built.from.kind, FromType::Built);
    assert_eq!(
        layout().layer_inputs("x", &built, None).unwrap().base,
        Base::Built {
            layer: "base".into()
        }
    );
    let no_tag = layer(json!({"from": {"type": "built", "tag": ""}}));
    assert!(matches!(
        layout().layer_inputs("x", &no_tag, None),
        Err(Error::Base { .. })
    ));
    let scratch = layer(json!({"from": {"type": "scratch"}}));
    assert_eq!(
        layout().layer_inputs("x", &scratch, None).unwrap().base,
        Base::Scratch
    );
}

#[test]
fn the_whole_definition_is_kept_and_round_trips() {
    let text = r#"{"from":{"type":"docker","url":"docker://alpine:3.19","insecure":true},
        "run":["make","make install"],"build_only":true,"annotations":{"b":"2","a":"1"},
        "imports":[{"path":"x","dest":"/x","mode":420}]}"#;
    let l: StackerLayer = serde_json::from_str(text).unwrap();
    let raw: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(l.definition, raw);
    assert!(l.build_only);
    // Serializes back to the definition, every field included.
    assert_eq!(serde_json::to_value(&l).unwrap(), raw);
    let inputs = layout().layer_inputs("x", &l, Some(1_700_000_000)).unwrap();
    // The definition compared is the whole definition plus the build's platform, which
    // stacker defaults when the layer does not set it.
    let mut with_platform = raw.clone();
    with_platform["os"] = json!("linux");
    with_platform["arch"] = json!("amd64");
    assert_eq!(inputs.definition, with_platform);
    assert!(inputs.build_only);
    assert_eq!(inputs.source_date_epoch, Some(1_700_000_000));

    // A definition without `from`, or with an unknown type, is a parse error.
    assert!(StackerLayer::from_definition(json!({"run": "x"})).is_err());
    assert!(StackerLayer::from_definition(json!({"from": {"type": "git"}})).is_err());
}

#[test]
fn cache_config_prunes_against_the_output_layout_and_roots() {
    let l = StackerLayout::in_project(Path::new("/proj"));
    assert_eq!(l.oci_layout(), Path::new("/proj/oci"));
    assert_eq!(l.rootfs_dir(), Path::new("/proj/roots"));
    let c = l.cache_config("/proj/.stacker/layercache.redb");
    assert_eq!(c.db, Path::new("/proj/.stacker/layercache.redb"));
    assert_eq!(c.oci_layout.as_deref(), Some(Path::new("/proj/oci")));
    assert_eq!(c.rootfs_dir.as_deref(), Some(Path::new("/proj/roots")));
}

#[test]
fn build_checks_built_bases_across_layers() {
    let layers = BTreeMap::from([(
        "app".to_string(),
        layer(json!({"from": {"type": "built", "tag": "nope"}})),
    )]);
    assert!(matches!(
        layout().build(&layers, None),
        Err(Error::MissingBase { .. })
    ));
}

/// A stacker-like project: `.stacker/imports/base/{toolchain/,build.conf}`, a source tree
/// overlaid into `app`, the rootfs copies, and an output OCI layout.
struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    layout: StackerLayout,
}

impl Project {
    fn new() -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let layout = StackerLayout::in_project(&dir);
        let imports = dir.join(".stacker/imports/base");
        common::write(&imports, "toolchain/bin/cc", b"#!/bin/sh\necho cc\n");
        common::write(&imports, "toolchain/lib/libc.a", b"libc");
        common::write(&imports, "toolchain/lib/libm.a", b"libm");
        common::write(&imports, "build.conf", b"opt=2\n");
        common::write(&dir, "src/app/main.rs", b"fn main() {}\n");
        common::write(&dir, "src/app/lib/util.rs", b"pub fn f() {}\n");
        std::fs::create_dir_all(dir.join("oci/blobs/blake3")).unwrap();
        // The rootfs copies the builder made.
        std::fs::create_dir_all(dir.join("roots/base")).unwrap();
        std::fs::create_dir_all(dir.join("roots/app/overlay_dirs/app/src")).unwrap();
        Project {
            _tmp: tmp,
            dir,
            layout,
        }
    }

    fn layers(&self) -> BTreeMap<String, StackerLayer> {
        let src = self.dir.join("src/app").to_str().unwrap().to_string();
        BTreeMap::from([
            (
                "base".to_string(),
                layer(json!({
                    "from": {"type": "scratch"},
                    "imports": ["https://dl.example.com/toolchain", {"path": "https://dl.example.com/build.conf"}],
                    "run": "install toolchain"
                })),
            ),
            (
                "app".to_string(),
                layer(json!({
                    "from": {"type": "built", "tag": "base"},
                    "overlay_dirs": [{"source": src, "dest": "/src"}],
                    "run": "make -C /src"
                })),
            ),
        ])
    }

    fn manifests(&self, content: &str) -> BTreeMap<String, Descriptor> {
        let hex = blake3::hash(content.as_bytes()).to_hex().to_string();
        std::fs::write(self.dir.join(format!("oci/blobs/blake3/{hex}")), content).unwrap();
        let d: Descriptor = serde_json::from_value(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("blake3:{hex}"),
            "size": content.len(),
        }))
        .unwrap();
        BTreeMap::from([("tar".to_string(), d)])
    }

    fn open(&self) -> Cache {
        let cache = Cache::open(self.layout.cache_config(self.dir.join("cache.redb"))).unwrap();
        let report = cache.prune().unwrap();
        assert!(report.pruned.is_empty(), "{report:?}");
        cache
    }
}

fn only_reason(l: &layercache::Lookup) -> &MissReason {
    assert_eq!(l.reasons().len(), 1, "{:?}", l.reasons());
    &l.reasons()[0]
}

#[test]
fn end_to_end_on_a_stacker_tree() {
    let p = Project::new();
    let build = p.layout.build(&p.layers(), Some(1_700_000_000)).unwrap();
    let base = build.layer("base").unwrap();
    assert_eq!(
        base.imports[0].path,
        p.dir.join(".stacker/imports/base/toolchain")
    );
    assert_eq!(
        build.layer("app").unwrap().overlay_dirs[0].rootfs_path,
        p.dir.join("roots/app/overlay_dirs/app/src")
    );

    // First build: both miss (not cached), then are put.
    {
        let cache = p.open();
        let mut s = cache.session(&build).unwrap();
        let l = s.lookup("base").unwrap();
        assert_eq!(only_reason(&l), &MissReason::NotCached);
        s.put(&l, &p.manifests("base v1")).unwrap();
        let l = s.lookup("app").unwrap();
        assert_eq!(only_reason(&l), &MissReason::NotCached);
        s.put(&l, &p.manifests("app v1")).unwrap();
    }

    // Second build, a new open: both hit; app returns its descriptor.
    {
        let cache = p.open();
        let mut s = cache.session(&build).unwrap();
        assert!(s.lookup("base").unwrap().is_hit());
        let l = s.lookup("app").unwrap();
        let entry = l.entry().expect("app hits");
        assert_eq!(
            entry.manifests["tar"].digest().to_string(),
            format!("blake3:{}", blake3::hash(b"app v1").to_hex())
        );
    }

    // An imported file changes: base misses naming that import; app misses because its base
    // no longer hits.
    let cache = p.open();
    common::write(&p.dir, ".stacker/imports/base/build.conf", b"opt=3\n");
    {
        let mut s = cache.session(&build).unwrap();
        let l = s.lookup("base").unwrap();
        match only_reason(&l) {
            MissReason::ImportContentChanged { key, diff } => {
                assert_eq!(key, "https://dl.example.com/build.conf");
                assert_eq!(diff.modified.len(), 1, "{diff}");
                assert!(diff.modified[0].path.is_root());
            }
            other => panic!("{other:?}"),
        }
        let app = s.lookup("app").unwrap();
        assert!(
            matches!(only_reason(&app), MissReason::BaseChanged { .. }),
            "{:?}",
            app.reasons()
        );
        s.put(&l, &p.manifests("base v2")).unwrap();
        // Base rebuilt: app now misses because the base hash it recorded is outdated.
        let app = s.lookup("app").unwrap();
        assert!(matches!(
            only_reason(&app),
            MissReason::BaseChanged {
                change: layercache::BaseChange::HashChanged { .. }
            }
        ));
        s.put(&app, &p.manifests("app v2")).unwrap();
    }

    // Seed regression: a file removed from an imported directory must miss.
    std::fs::remove_file(p.dir.join(".stacker/imports/base/toolchain/lib/libm.a")).unwrap();
    {
        let mut s = cache.session(&build).unwrap();
        let l = s.lookup("base").unwrap();
        match only_reason(&l) {
            MissReason::ImportContentChanged { key, diff } => {
                assert_eq!(key, "https://dl.example.com/toolchain");
                assert_eq!(diff.removed, vec![RelPath::from_slash_bytes(b"lib/libm.a")]);
                assert!(diff.added.is_empty() && diff.modified.is_empty(), "{diff}");
            }
            other => panic!("{other:?}"),
        }
        s.put(&l, &p.manifests("base v3")).unwrap();
        let app = s.lookup("app").unwrap();
        s.put(&app, &p.manifests("app v3")).unwrap();
    }

    // A file deep in the overlay dir changes: app misses naming it; base still hits.
    common::write(&p.dir, "src/app/lib/util.rs", b"pub fn f() { 1; }\n");
    {
        let mut s = cache.session(&build).unwrap();
        assert!(s.lookup("base").unwrap().is_hit());
        let l = s.lookup("app").unwrap();
        match only_reason(&l) {
            MissReason::OverlayDirContentChanged { key, diff } => {
                assert_eq!(key, p.dir.join("src/app").to_str().unwrap());
                let paths: Vec<String> = diff.modified.iter().map(|m| m.path.to_string()).collect();
                assert_eq!(paths, vec!["lib/util.rs"]);
                assert!(diff.added.is_empty() && diff.removed.is_empty(), "{diff}");
            }
            other => panic!("{other:?}"),
        }
    }

    // The rootfs copy of the overlay dir disappears: app misses naming where it should be.
    std::fs::remove_dir_all(p.dir.join("roots/app/overlay_dirs")).unwrap();
    {
        let mut s = cache.session(&build).unwrap();
        let l = s.lookup("app").unwrap();
        match only_reason(&l) {
            MissReason::OverlayDirMissing { rootfs_path, .. } => {
                assert!(
                    rootfs_path.ends_with("roots/app/overlay_dirs/app/src"),
                    "{rootfs_path}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn binds_are_parsed_as_stacker_parses_them_and_make_the_layer_uncacheable() {
    use layercache::testing::stacker::StackerBind;
    let bind = |source: &str, dest: &str| StackerBind {
        source: source.into(),
        dest: dest.into(),
    };
    let l = layer(json!({
        "from": {"type": "scratch"},
        "binds": [
            "/host/src -> /src",
            "/host/cache",
            {"source": "/host/a", "dest": "/a"},
            {"source": "/host/b"}
        ]
    }));
    assert_eq!(
        l.binds,
        vec![
            bind("/host/src", "/src"),
            bind("/host/cache", "/host/cache"),
            bind("/host/a", "/a"),
            bind("/host/b", "/host/b"),
        ]
    );
    let inputs = layout().layer_inputs("x", &l, None).unwrap();
    assert_eq!(inputs.uncacheable.as_deref(), Some("layer has binds"));
    // The reason a lookup reports, in text and JSON.
    let reason = MissReason::NotCacheable {
        why: inputs.uncacheable.clone().unwrap(),
    };
    assert_eq!(
        reason.to_string(),
        "cache miss because layer has binds: not cacheable"
    );
    assert_eq!(
        serde_json::to_value(&reason).unwrap(),
        json!({"reason": "not_cacheable", "why": "layer has binds"})
    );

    // Without binds (or with an empty list) the layer is cacheable.
    for def in [
        json!({"from": {"type": "scratch"}}),
        json!({"from": {"type": "scratch"}, "binds": []}),
    ] {
        let inputs = layout().layer_inputs("x", &layer(def), None).unwrap();
        assert_eq!(inputs.uncacheable, None);
    }

    // What stacker refuses is refused: a bind without a source, a malformed string, an object
    // instead of a list.
    for bad in [
        json!([{"dest": "/a"}]),
        json!(["a -> "]),
        json!(["a => b"]),
        json!(["a -> b c"]),
        json!({"source": "/a", "dest": "/b"}),
    ] {
        let def = json!({"from": {"type": "scratch"}, "binds": bad});
        assert!(StackerLayer::from_definition(def).is_err(), "{bad}");
    }
}

#[test]
fn the_build_platform_goes_into_the_definition_so_arches_never_share_a_hit() {
    let l = layer(json!({"from": {"type": "scratch"}, "run": "make"}));
    let amd64 = layout().with_platform("linux", "amd64");
    let arm64 = layout().with_platform("linux", "arm64");
    let a = amd64.layer_inputs("x", &l, None).unwrap().definition;
    let b = arm64.layer_inputs("x", &l, None).unwrap().definition;
    assert_ne!(a, b);
    assert_eq!(a["arch"], json!("amd64"));
    assert_eq!(b["arch"], json!("arm64"));
    assert_eq!(a["os"], json!("linux"));
    // A layer that sets its platform keeps it: the build's platform does not override it.
    let pinned = layer(json!({"from": {"type": "scratch"}, "os": "linux", "arch": "riscv64"}));
    let a = amd64.layer_inputs("x", &pinned, None).unwrap().definition;
    let b = arm64.layer_inputs("x", &pinned, None).unwrap().definition;
    assert_eq!(a, b);
    assert_eq!(a["arch"], json!("riscv64"));
    // The default is the host's, in OCI names.
    let (os, arch) = layercache::testing::stacker::host_platform();
    let host = StackerLayout::in_project(Path::new("/proj"));
    assert_eq!(
        (host.os.as_str(), host.arch.as_str()),
        (os.as_str(), arch.as_str())
    );
    if cfg!(target_arch = "x86_64") {
        assert_eq!(arch, "amd64");
    }
    if cfg!(target_arch = "aarch64") {
        assert_eq!(arch, "arm64");
    }
    if cfg!(target_os = "linux") {
        assert_eq!(os, "linux");
    }
}

#[test]
fn overlay_sources_resolve_against_the_stackerfile_directory() {
    let layout = StackerLayout::new("/work/proj/sub", "/s", "/r", "/o");
    assert_eq!(
        layout.overlay_source_path("assets"),
        Path::new("/work/proj/sub/assets")
    );
    // Cleaned lexically, as Go's filepath.Abs does.
    assert_eq!(
        layout.overlay_source_path("./a/../../shared/"),
        Path::new("/work/proj/shared")
    );
    assert_eq!(
        layout.overlay_source_path("/abs/dir"),
        Path::new("/abs/dir")
    );
    // The key stays as written.
    let l = layer(json!({"from": {"type": "scratch"},
                         "overlay_dirs": [{"source": "../shared", "dest": "/s"}]}));
    let inputs = layout.layer_inputs("x", &l, None).unwrap();
    assert_eq!(inputs.overlay_dirs[0].key, "../shared");
    assert_eq!(
        inputs.overlay_dirs[0].source,
        Path::new("/work/proj/shared")
    );
}
