//! OCI and docker bases, and GC's `index.json` guard, on real OCI layouts made by `umoci`
//! (init, new, insert, tag, rm) rather than hand-written `index.json` files: the base hash
//! follows the tag's manifest as umoci moves it, a tag that is gone is a miss with its reason,
//! a tag moved back hits the older version, and `gc --delete-blobs` never deletes a blob that an
//! image still tagged in the layout uses.
//!
//! umoci is installed by `.ci/install-deps`; without it these tests are skipped with a message
//! (never in CI, where they fail).

use crate::common;
use crate::registry;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use layercache::{Base, BaseChange, Build, Cache, LayerInputs, LookupMode, MissReason, OverlayDir};
use oci_spec::image::Descriptor;
use registry::{image_blobs, run, tools_available, umoci_insert, umoci_layout};
use serde_json::json;

/// The workspace with a source directory `src`; its `oci` layout is made by umoci.
struct Fx(common::Workspace);

impl std::ops::Deref for Fx {
    type Target = common::Workspace;
    fn deref(&self) -> &common::Workspace {
        &self.0
    }
}

impl Fx {
    fn new() -> Fx {
        let w = common::Workspace::new();
        std::fs::create_dir_all(w.p("src")).unwrap();
        Fx(w)
    }

    /// One layer `app` on `base` with an overlay dir `src`.
    fn build(&self, base: Base) -> Build {
        let mut build = Build::new();
        build.add(
            "app",
            LayerInputs {
                definition: json!({"run": "make"}),
                base,
                imports: vec![],
                overlay_dirs: vec![OverlayDir {
                    key: "src".into(),
                    source: self.p("src"),
                    rootfs_path: self.p("roots/app/overlay_dirs/src"),
                }],
                source_date_epoch: Some(1),
                build_only: false,
                uncacheable: None,
            },
        );
        build
    }
}

/// `umoci` with the rootless flag where it needs one.
fn umoci(args: &[&str]) {
    let mut cmd = Command::new("umoci");
    cmd.args(args);
    run(&mut cmd);
}

/// The manifests naming the last layer blob of image `tag` in `layout` as the layer's output
/// (as a builder that wrote its layer into the layout would pass them).
fn output_of(layout: &Path, tag: &str) -> BTreeMap<String, Descriptor> {
    let blobs = image_blobs(layout, tag);
    let (layer, _) = blobs.last().unwrap();
    let d: Descriptor = serde_json::from_value(layer.clone()).unwrap();
    BTreeMap::from([("tar".to_string(), d)])
}

fn lookup(cache: &Cache, build: &Build) -> layercache::Lookup {
    let mut s = cache.session(build).unwrap();
    s.lookup_with("app", LookupMode::EXPLAIN).unwrap()
}

#[test]
fn oci_and_docker_bases_follow_umoci_tags() {
    if !tools_available(&["umoci"]) {
        return;
    }
    for docker in [false, true] {
        let f = Fx::new();
        let bases = f.p("bases");
        umoci_layout(&bases, "base", &[("etc-release", b"v1".to_vec())]);
        // Keep the first manifest reachable under another tag, to move `base` back later.
        let image = |t: &str| format!("{}:{t}", bases.display());
        umoci(&["tag", "--image", &image("base"), "first"]);
        let outputs = f.p("oci");
        umoci_layout(&outputs, "out", &[("app.bin", b"output".to_vec())]);
        let base = if docker {
            Base::Docker {
                layout: bases.clone(),
                tag: "base".into(),
            }
        } else {
            Base::Oci {
                layout: bases.clone(),
                tag: "base".into(),
            }
        };
        let build = f.build(base);
        let cache = f.cache();
        {
            let mut s = cache.session(&build).unwrap();
            let l = s.lookup("app").unwrap();
            assert!(!l.is_hit(), "a new cache misses");
            s.put(&l, &output_of(&outputs, "out")).unwrap();
        }
        assert!(
            lookup(&cache, &build).is_hit(),
            "docker={docker}: same base"
        );

        // umoci moves the tag to a new manifest (one more layer): the base changed.
        umoci_insert(&bases, "base", "etc-extra", b"more");
        let l = lookup(&cache, &build);
        assert!(
            matches!(
                l.reasons(),
                [MissReason::BaseChanged {
                    change: BaseChange::HashChanged { .. }
                }]
            ),
            "docker={docker}: {:?}",
            l.reasons()
        );

        // The tag is removed from the layout: a miss naming it.
        umoci(&["rm", "--image", &image("base")]);
        let l = lookup(&cache, &build);
        assert!(
            matches!(
                l.reasons(),
                [MissReason::BaseChanged {
                    change: BaseChange::TagNotFound { .. }
                }]
            ),
            "docker={docker}: {:?}",
            l.reasons()
        );

        // The tag points at the first manifest again: the stored version hits.
        umoci(&["tag", "--image", &image("first"), "base"]);
        assert!(
            lookup(&cache, &build).is_hit(),
            "docker={docker}: the tag moved back"
        );
    }
}

#[test]
fn gc_never_deletes_a_blob_that_an_image_tagged_in_the_layout_uses() {
    if !tools_available(&["umoci"]) {
        return;
    }
    let f = Fx::new();
    let layout = f.p("oci");
    // Three images, one output layer each, as a builder writes them; the cache records one
    // version of `app` per image, oldest first.
    umoci_layout(&layout, "v0", &[("app.bin", b"zero".to_vec())]);
    for (i, tag) in ["v1", "v2"].iter().enumerate() {
        umoci(&["new", "--image", &format!("{}:{tag}", layout.display())]);
        umoci_insert(&layout, tag, "app.bin", format!("output {i}").as_bytes());
    }
    let build = f.build(Base::Scratch);
    let cache = f.cache();
    let mut outputs = Vec::new();
    for (i, tag) in ["v0", "v1", "v2"].iter().enumerate() {
        common::write(&f.p("src"), "version.txt", format!("tree {i}").as_bytes());
        let mut s = cache.session(&build).unwrap();
        let l = s.lookup("app").unwrap();
        assert!(!l.is_hit());
        let m = output_of(&layout, tag);
        outputs.push(m["tar"].digest().to_string());
        s.put(&l, &m).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(cache);
    // v0 is still tagged; v1's tag is removed (its blobs are garbage for the layout now).
    umoci(&["rm", "--image", &format!("{}:v1", layout.display())]);
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let db = f.p("cache.redb");
    let out = common::cli_ok(
        &[
            "gc",
            "--json",
            "--keep",
            "1",
            "--oci-layout",
            layout.to_str().unwrap(),
            "--delete-blobs",
        ],
        &db,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["blobs"]["deleted"],
        json!([outputs[1]]),
        "only the untagged image's output goes: {v}"
    );
    assert!(blob(&outputs[0]).is_file(), "image v0 still uses it");
    assert!(!blob(&outputs[1]).exists());
    assert!(
        blob(&outputs[2]).is_file(),
        "the kept version's output stays"
    );
    // The layout is still a valid layout for umoci: the tagged images read back.
    let tags = run(Command::new("umoci").args(["ls", "--layout"]).arg(&layout));
    assert_eq!(tags.split_whitespace().collect::<Vec<_>>(), ["v0", "v2"]);
    for tag in ["v0", "v2"] {
        for (_, path) in image_blobs(&layout, tag) {
            assert!(path.is_file(), "{tag}: {}", path.display());
        }
    }
}
