//! The reference builder (`examples/builder.rs`) through the real tools: it builds a generated
//! monorepo of about 2,900 files in six layers into a real OCI layout with umoci (and skopeo
//! for the `oci` base), asking the cache before every layer and putting the real descriptors.
//!
//! One test, four builds against one cache: the first builds every layer and umoci and skopeo
//! accept the images; the second builds nothing and leaves every image digest as it was; after
//! one file of the monorepo is edited exactly the layers built on it are rebuilt and the new
//! image holds the edit; after one layer's blob is deleted from the layout, that layer misses
//! with `outputs_missing` and is rebuilt, with the layers built on it. Work is counted (layers
//! built, umoci repacks and unpacks), never timed; the no-change build's time is printed beside
//! one `layercache lookup` of the top layer, for the README.
//!
//! umoci and skopeo come from `.ci/install-deps`; without them the test is skipped with a
//! message (never in CI, where it fails).

use crate::builder_example as builder;
use crate::registry;
use crate::support_builder;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use layercache::{BaseChange, Cache, CacheConfig, MissReason};
use support_builder::{EDITED, LAYERS, Project, run};

/// Every layer's manifest digest, by tag.
fn digests(p: &Project) -> BTreeMap<&'static str, String> {
    LAYERS.iter().map(|&l| (l, p.manifest_digest(l))).collect()
}

/// The layer blobs (digests) of image `tag`, bottom first.
fn layer_digests(p: &Project, tag: &str) -> Vec<String> {
    p.manifest(tag)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_builder_makes_oci_images_through_the_cache_and_rebuilds_exactly_what_changed() {
    if !registry::tools_available(&["umoci", "skopeo"]) {
        return;
    }
    let p = Project::generate();
    assert!(p.files > 2_500, "{} files", p.files);

    // 1. First build: every layer misses (not cached) and is built.
    let first = builder::build(&p.plan(), &p.db()).unwrap();
    let mut all: Vec<&str> = LAYERS.to_vec();
    all.sort_unstable();
    let mut built = first.built();
    built.sort_unstable();
    assert_eq!(built, all);
    assert_eq!(first.repacks, 6);
    assert_eq!(first.unpacks, 6);
    for l in &first.layers {
        assert_eq!(l.reason, Some(MissReason::NotCached), "{}", l.layer);
    }
    // Bases first.
    let order: Vec<&str> = first.layers.iter().map(|l| l.layer.as_str()).collect();
    let at = |n: &str| order.iter().position(|&o| o == n).unwrap();
    assert!(at("base") < at("deps") && at("deps") < at("app") && at("app") < at("release"));
    assert!(at("base") < at("docs"));

    // umoci and skopeo accept the images; release is base + deps + app + release.
    for l in LAYERS {
        run(Command::new("umoci").args(["stat", "--image", &p.image(l)]));
    }
    let inspect: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}", p.image("release")))))
    .unwrap();
    let release_layers = layer_digests(&p, "release");
    assert_eq!(release_layers.len(), 4);
    assert_eq!(
        inspect["Layers"].as_array().unwrap().len(),
        4,
        "skopeo inspect: {inspect}"
    );
    assert_eq!(inspect["Layers"][3], release_layers[3].as_str());
    // The runtime image is the oci base's layer plus its own.
    assert_eq!(layer_digests(&p, "runtime").len(), 2);

    // The cache recorded the real descriptors: each layer's new layer blob and its manifest.
    {
        let cache = Cache::open(CacheConfig {
            db: p.db(),
            oci_layout: Some(p.layout()),
            rootfs_dir: Some(p.p("roots")),
            ..CacheConfig::default()
        })
        .unwrap();
        for l in LAYERS {
            let rec = cache.entry(l).unwrap().unwrap();
            let blobs: Vec<String> = rec.blobs().into_iter().map(|(d, _)| d).collect();
            let top = layer_digests(&p, l).pop().unwrap();
            assert!(blobs.contains(&top), "{l}: {blobs:?} lacks {top}");
            assert!(blobs.contains(&p.manifest_digest(l)), "{l}: {blobs:?}");
        }
    }
    let index_before = std::fs::read(p.layout().join("index.json")).unwrap();
    let digests_before = digests(&p);

    // 2. Nothing changed: nothing is built, unpacked or repacked; the images are the same.
    let second = builder::build(&p.plan(), &p.db()).unwrap();
    assert_eq!(second.built(), Vec::<&str>::new());
    assert_eq!((second.repacks, second.unpacks), (0, 0));
    assert!(second.layers.iter().all(|l| l.reason.is_none()));
    assert_eq!(digests(&p), digests_before);
    assert_eq!(
        std::fs::read(p.layout().join("index.json")).unwrap(),
        index_before
    );
    // The cost of asking: the no-change build beside one `layercache lookup` of the top layer.
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_layercache"))
        .args(["lookup", "--quiet", "--plan"])
        .arg(p.plan())
        .arg("--db")
        .arg(p.db())
        .arg("release")
        .output()
        .unwrap();
    let one_lookup = t.elapsed();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "measured: no-change build of {} layers ({} files) {:.1} ms (lookups {:.1} ms); one \
         `layercache lookup release` process {:.1} ms",
        second.layers.len(),
        p.files,
        second.total.as_secs_f64() * 1e3,
        second
            .layers
            .iter()
            .map(|l| l.lookup.as_secs_f64() * 1e3)
            .sum::<f64>(),
        one_lookup.as_secs_f64() * 1e3
    );

    // 3. One file edited: exactly app and release (built on it) are rebuilt.
    let edited = p.edit();
    let third = builder::build(&p.plan(), &p.db()).unwrap();
    assert_eq!(third.built(), vec!["app", "release"]);
    assert_eq!((third.repacks, third.unpacks), (2, 2));
    match &third.layer("app").unwrap().reason {
        Some(MissReason::OverlayDirContentChanged { key, diff }) => {
            assert_eq!(key, "monorepo");
            assert!(diff.added.is_empty() && diff.removed.is_empty());
            assert_eq!(diff.modified.len(), 1);
            assert_eq!(diff.modified[0].path.to_string(), EDITED);
        }
        other => panic!("app: {other:?}"),
    }
    assert!(matches!(
        &third.layer("release").unwrap().reason,
        Some(MissReason::BaseChanged {
            change: BaseChange::HashChanged { .. }
        })
    ));
    let after_edit = digests(&p);
    for l in ["base", "deps", "docs", "runtime"] {
        assert_eq!(after_edit[l], digests_before[l], "{l} changed");
    }
    for l in ["app", "release"] {
        assert_ne!(after_edit[l], digests_before[l], "{l} did not change");
    }
    // The new release image holds the edit (and still the layers below app).
    let unpacked = p.p("unpacked-release");
    let mut raw = Command::new("umoci");
    raw.args(["raw", "unpack"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        raw.arg("--rootless");
    }
    run(raw.args(["--image", &p.image("release")]).arg(&unpacked));
    assert_eq!(
        std::fs::read(unpacked.join("src").join(EDITED)).unwrap(),
        edited
    );
    assert!(unpacked.join("opt/vendor/crate07/src/m3.rs").is_file());
    assert!(unpacked.join("opt/toolchain/bin/cc").is_file());
    assert!(unpacked.join("stacker/imports/build.conf").is_file());
    assert!(unpacked.join("etc/app/app05.toml").is_file());
    let release_now = layer_digests(&p, "release");
    assert_eq!(release_now[..2], release_layers[..2]);

    // 4. deps' layer blob deleted from the layout: deps misses because its outputs are gone
    // and is rebuilt; app and release, built on it, follow; the others are reused.
    let deps_blob = p.blob(layer_digests(&p, "deps").last().unwrap());
    std::fs::remove_file(&deps_blob).unwrap();
    let fourth = builder::build(&p.plan(), &p.db()).unwrap();
    assert_eq!(fourth.built(), vec!["deps", "app", "release"]);
    assert_eq!(fourth.repacks, 3);
    match &fourth.layer("deps").unwrap().reason {
        Some(MissReason::OutputsMissing { what }) => {
            assert!(what.contains("is gone"), "{what}");
        }
        other => panic!("deps: {other:?}"),
    }
    assert!(matches!(
        &fourth.layer("app").unwrap().reason,
        Some(MissReason::BaseChanged {
            change: BaseChange::HashChanged { .. }
        })
    ));
    // The rebuilt deps layer is in the layout again, under its (possibly new) digest.
    assert!(p.blob(layer_digests(&p, "deps").last().unwrap()).is_file());
    for l in LAYERS {
        run(Command::new("umoci").args(["stat", "--image", &p.image(l)]));
    }
    run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}", p.image("release"))));

    // 5. The tag of docs removed (its blobs stay): the cache hits, but dependents unpack the
    // tag, so the builder rebuilds docs and says why.
    run(Command::new("umoci").args(["rm", "--image", &p.image("docs")]));
    let fifth = builder::build(&p.plan(), &p.db()).unwrap();
    assert_eq!(fifth.built(), vec!["docs"]);
    let docs = fifth.layer("docs").unwrap();
    assert_eq!(docs.reason, None);
    assert!(
        docs.builder_reason
            .as_deref()
            .is_some_and(|r| r.contains("no longer names the cached image")),
        "{docs:?}"
    );
    run(Command::new("umoci").args(["stat", "--image", &p.image("docs")]));

    // And once more: nothing to do.
    let sixth = builder::build(&p.plan(), &p.db()).unwrap();
    assert_eq!(sixth.built(), Vec::<&str>::new());
    assert_eq!(sixth.repacks, 0);
}
