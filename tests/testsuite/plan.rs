//! The plan file: path resolution, SOURCE_DATE_EPOCH defaults, refusal of unknown fields and of
//! invalid builds.

use std::path::{Path, PathBuf};

use layercache::testing::plan::Plan;
use layercache::{Base, Error};
use serde_json::{Value, json};

fn write_plan(dir: &Path, name: &str, plan: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(plan).unwrap()).unwrap();
    path
}

fn full_plan() -> Value {
    json!({
        "oci_layout": "oci",
        "rootfs_dir": "roots",
        "source_date_epoch": 1_700_000_000,
        "layers": {
            "base": {
                "definition": {"run": "make"},
                "base": {"type": "tar", "path": "bases/base.tar"},
                "imports": [
                    {"key": "stacker://x/y.tar", "path": "imports/base/y.tar"},
                    {"key": "https://example.com/z", "path": "/abs/z", "dest": "/opt/z"}
                ],
                "overlay_dirs": [
                    {"key": "src", "source": "src", "rootfs_path": "roots/base/overlay_dirs/src"}
                ],
                "build_only": true
            },
            "oci": {"definition": {"run": "oci"},
                    "base": {"type": "oci", "layout": "layouts/oci", "tag": "v1"},
                    "source_date_epoch": 5},
            "docker": {"definition": {"run": "docker"},
                       "base": {"type": "docker", "layout": "/abs/layout", "tag": "v2"},
                       "source_date_epoch": null},
            // An explicit null definition is allowed (a builder that has none).
            "app": {"definition": null, "base": {"type": "built", "layer": "base"}}
        }
    })
}

#[test]
fn relative_paths_resolve_against_the_plan_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_plan(tmp.path(), "plans/build/plan.json", &full_plan());
    let plan = Plan::load(&path).unwrap();
    let dir = tmp.path().join("plans/build");

    assert_eq!(plan.path(), path);
    assert_eq!(plan.oci_layout(), Some(dir.join("oci").as_path()));
    assert_eq!(plan.rootfs_dir(), Some(dir.join("roots").as_path()));
    let config = plan.cache_config("/var/cache/lc.redb");
    assert_eq!(config.db, Path::new("/var/cache/lc.redb"));
    assert_eq!(config.oci_layout, Some(dir.join("oci")));
    assert_eq!(config.rootfs_dir, Some(dir.join("roots")));

    let build = plan.build();
    let base = build.layer("base").unwrap();
    assert_eq!(
        base.base,
        Base::Tar {
            path: dir.join("bases/base.tar")
        }
    );
    assert_eq!(base.imports[0].key, "stacker://x/y.tar");
    assert_eq!(base.imports[0].path, dir.join("imports/base/y.tar"));
    assert_eq!(base.imports[0].dest, None);
    // Absolute paths stay as written.
    assert_eq!(base.imports[1].path, Path::new("/abs/z"));
    assert_eq!(base.imports[1].dest.as_deref(), Some("/opt/z"));
    assert_eq!(base.overlay_dirs[0].source, dir.join("src"));
    assert_eq!(
        base.overlay_dirs[0].rootfs_path,
        dir.join("roots/base/overlay_dirs/src")
    );
    assert_eq!(base.definition, json!({"run": "make"}));
    assert!(base.build_only);
    assert_eq!(
        build.layer("oci").unwrap().base,
        Base::Oci {
            layout: dir.join("layouts/oci"),
            tag: "v1".into()
        }
    );
    assert_eq!(
        build.layer("docker").unwrap().base,
        Base::Docker {
            layout: PathBuf::from("/abs/layout"),
            tag: "v2".into()
        }
    );
    let app = build.layer("app").unwrap();
    assert_eq!(
        app.base,
        Base::Built {
            layer: "base".into()
        }
    );
    assert_eq!(app.definition, Value::Null);
    assert!(app.imports.is_empty() && app.overlay_dirs.is_empty() && !app.build_only);
}

#[test]
fn a_plan_given_by_a_relative_path_resolves_against_its_directory_not_the_cwd() {
    // The test's working directory is the crate root; the plan lies in a temp dir elsewhere,
    // reached by a path relative to the working directory.
    let tmp = tempfile::tempdir().unwrap();
    let path = write_plan(tmp.path(), "plan.json", &full_plan());
    let cwd = std::env::current_dir().unwrap();
    let up = cwd.components().count() - 1;
    let mut relative = PathBuf::new();
    for _ in 0..up {
        relative.push("..");
    }
    relative.push(path.strip_prefix("/").unwrap());
    assert!(relative.is_relative());

    let plan = Plan::load(&relative).unwrap();
    let oci = plan.oci_layout().unwrap();
    assert!(oci.is_absolute(), "{}", oci.display());
    assert_eq!(
        std::fs::canonicalize(oci.parent().unwrap()).unwrap(),
        std::fs::canonicalize(tmp.path()).unwrap()
    );
    assert_eq!(oci.file_name().unwrap(), "oci");
}

#[test]
fn plan_source_date_epoch_is_the_default_of_layers_without_their_own() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = Plan::load(write_plan(tmp.path(), "plan.json", &full_plan())).unwrap();
    assert_eq!(plan.source_date_epoch(), Some(1_700_000_000));
    let epoch = |l: &str| plan.build().layer(l).unwrap().source_date_epoch;
    assert_eq!(epoch("base"), Some(1_700_000_000));
    assert_eq!(epoch("app"), Some(1_700_000_000));
    assert_eq!(epoch("oci"), Some(5));
    // An explicit null means "none", even under a plan-level default.
    assert_eq!(epoch("docker"), None);

    let mut no_default = full_plan();
    no_default
        .as_object_mut()
        .unwrap()
        .remove("source_date_epoch");
    let plan = Plan::load(write_plan(tmp.path(), "plan2.json", &no_default)).unwrap();
    assert_eq!(plan.source_date_epoch(), None);
    let epoch = |l: &str| plan.build().layer(l).unwrap().source_date_epoch;
    assert_eq!(epoch("base"), None);
    assert_eq!(epoch("oci"), Some(5));
}

fn parse_error(plan: &str) -> String {
    match Plan::parse(plan, "/plans/plan.json") {
        Err(Error::Parse { what, path, detail }) => {
            assert_eq!(what, "plan file");
            assert_eq!(path, Path::new("/plans/plan.json"));
            detail
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn unknown_fields_are_refused_at_every_level() {
    let cases = [
        (r#"{"layers": {}, "oci_layuot": "oci"}"#, "oci_layuot"),
        (
            r#"{"layers": {"a": {"base": {"type": "scratch"}, "buildonly": true}}}"#,
            "buildonly",
        ),
        (
            r#"{"layers": {"a": {"base": {"type": "built", "layer": "b", "tag": "x"}}}}"#,
            "tag",
        ),
        (
            r#"{"layers": {"a": {"base": {"type": "scratch"},
                "imports": [{"key": "k", "path": "p", "dst": "/x"}]}}}"#,
            "dst",
        ),
        (
            r#"{"layers": {"a": {"base": {"type": "scratch"},
                "overlay_dirs": [{"key": "k", "source": "s", "rootfs": "r"}]}}}"#,
            "rootfs",
        ),
    ];
    for (plan, field) in cases {
        let detail = parse_error(plan);
        assert!(
            detail.contains(&format!("unknown field `{field}`")),
            "{plan}: {detail}"
        );
        assert!(detail.contains("line "), "{detail}");
    }
}

#[test]
fn malformed_plans_are_parse_errors_with_their_position() {
    let detail = parse_error("{\n  \"layers\": {\n    \"a\": {,\n");
    assert!(detail.contains("line 3"), "{detail}");

    let detail = parse_error(r#"{"layers": {"a": {"base": {"type": "squashfs"}}}}"#);
    assert!(detail.contains("unknown variant `squashfs`"), "{detail}");

    let detail = parse_error(r#"{"layers": {"a": {}}}"#);
    assert!(detail.contains("missing field `base`"), "{detail}");

    let detail = parse_error(r#"{"oci_layout": "oci"}"#);
    assert!(detail.contains("missing field `layers`"), "{detail}");

    let detail = parse_error(
        r#"{"layers": {"a": {"base": {"type": "scratch"}},
                       "a": {"base": {"type": "built", "layer": "x"}}}}"#,
    );
    assert!(detail.contains("layer \"a\" is defined twice"), "{detail}");

    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("absent.json");
    match Plan::load(&missing) {
        Err(Error::Parse { what, path, detail }) => {
            assert_eq!(what, "plan file");
            assert_eq!(path, missing);
            assert!(detail.contains("cannot read"), "{detail}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn invalid_builds_are_refused_at_load() {
    let name_with_slash = r#"{"layers": {"a/b": {"base": {"type": "scratch"}}}}"#;
    assert!(matches!(
        Plan::parse(name_with_slash, "plan.json"),
        Err(Error::InvalidName {
            what: "layer name",
            ..
        })
    ));
    let dot_dot = r#"{"layers": {"..": {"base": {"type": "scratch"}}}}"#;
    assert!(matches!(
        Plan::parse(dot_dot, "plan.json"),
        Err(Error::InvalidName {
            what: "layer name",
            ..
        })
    ));
    let nul = r#"{"layers": {"a\u0000b": {"base": {"type": "scratch"}}}}"#;
    assert!(matches!(
        Plan::parse(nul, "plan.json"),
        Err(Error::InvalidName {
            what: "layer name",
            ..
        })
    ));
    let missing_base = r#"{"layers": {"a": {"base": {"type": "built", "layer": "b"}}}}"#;
    match Plan::parse(missing_base, "plan.json") {
        Err(Error::MissingBase { layer, base }) => {
            assert_eq!((layer, base), ("a".into(), "b".into()))
        }
        other => panic!("expected MissingBase, got {other:?}"),
    }
    let cycle = r#"{"layers": {
        "a": {"base": {"type": "built", "layer": "b"}},
        "b": {"base": {"type": "built", "layer": "c"}},
        "c": {"base": {"type": "built", "layer": "a"}}}}"#;
    match Plan::parse(cycle, "plan.json") {
        Err(Error::BaseCycle { chain }) => assert_eq!(chain, ["a", "b", "c", "a"]),
        other => panic!("expected BaseCycle, got {other:?}"),
    }
    let duplicate_key = r#"{"layers": {"a": {"base": {"type": "scratch"},
        "imports": [{"key": "k", "path": "x"}, {"key": "k", "path": "y"}]}}}"#;
    assert!(matches!(
        Plan::parse(duplicate_key, "plan.json"),
        Err(Error::InvalidName {
            what: "import key",
            ..
        })
    ));
}

fn manifests_error(text: &str) -> String {
    match layercache::testing::plan::parse_manifests(text, "/out/m.json") {
        Err(Error::Parse { what, path, detail }) => {
            assert_eq!(what, "manifests file");
            assert_eq!(path, Path::new("/out/m.json"));
            detail
        }
        other => panic!("expected a parse error for {text}, got {other:?}"),
    }
}

fn descriptor(digest: &str) -> Value {
    json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": 3})
}

#[test]
fn manifest_digests_must_be_sha256_with_64_lowercase_hex() {
    let hex64 = "0123456789abcdef".repeat(4);
    let good = json!({"tar": descriptor(&format!("sha256:{hex64}"))}).to_string();
    let m = layercache::testing::plan::parse_manifests(&good, "m.json").unwrap();
    assert_eq!(m.len(), 1);

    for bad in [
        format!("sha512:{}", "ab".repeat(64)),
        format!("sha256:{}", &hex64[..63]),
        format!("sha256:{hex64}0"),
        format!("sha256:{}", hex64.to_uppercase()),
        format!("blake3:{hex64}"),
        "md5:d41d8cd98f00b204e9800998ecf8427e".to_string(),
    ] {
        let text = json!({"squashfs": descriptor(&bad)}).to_string();
        let detail = manifests_error(&text);
        // Either oci-spec refuses the digest while parsing, or our check names the layer type.
        assert!(
            detail.contains("\"squashfs\"") || detail.contains("digest"),
            "{bad}: {detail}"
        );
    }
    // Digests oci-spec itself accepts are refused by our check, naming the layer type.
    let detail = manifests_error(
        &json!({"squashfs": descriptor(&format!("sha512:{}", "ab".repeat(64)))}).to_string(),
    );
    assert!(
        detail.contains("layer type \"squashfs\"") && detail.contains("sha256:"),
        "{detail}"
    );
}

#[test]
fn a_layer_type_given_twice_in_the_manifests_is_refused() {
    let hex64 = "ab".repeat(32);
    let d = descriptor(&format!("sha256:{hex64}")).to_string();
    let text = format!(r#"{{"tar": {d}, "squashfs": {d}, "tar": {d}}}"#);
    let detail = manifests_error(&text);
    assert!(
        detail.contains("layer type \"tar\" is given twice"),
        "{detail}"
    );
    // An empty object stays allowed (a build-only layer has no outputs).
    let empty = layercache::testing::plan::parse_manifests("{}", "m.json").unwrap();
    assert!(empty.is_empty());
    // Trailing data and an empty layer type are refused.
    manifests_error(&format!(r#"{{"tar": {d}}} {{}}"#));
    let detail = manifests_error(&format!(r#"{{"": {d}}}"#));
    assert!(detail.contains("empty"), "{detail}");
}

#[test]
fn a_layer_without_definition_is_refused_naming_it_and_an_explicit_null_is_allowed() {
    let detail = parse_error(
        r#"{"oci_layout": "oci", "layers": {
            "has": {"definition": {"run": "make"}, "base": {"type": "scratch"}},
            "lacks": {"base": {"type": "built", "layer": "has"}}}}"#,
    );
    assert!(
        detail.contains("layer \"lacks\" has no \"definition\"")
            && detail.contains("\"definition\": null"),
        "{detail}"
    );
    // A builder that really has no definition says so.
    let plan = Plan::parse(
        r#"{"oci_layout": "oci", "layers": {
            "none": {"definition": null, "base": {"type": "scratch"}}}}"#,
        "/plans/plan.json",
    )
    .unwrap();
    assert_eq!(plan.build().layer("none").unwrap().definition, Value::Null);
}

#[test]
fn a_plan_must_say_where_the_outputs_a_hit_points_at_are() {
    // A layer that is not build-only has output blobs: the plan must name the OCI layout.
    let detail = parse_error(
        r#"{"rootfs_dir": "roots", "layers": {
            "app": {"definition": {}, "base": {"type": "scratch"}}}}"#,
    );
    assert!(
        detail.contains("layer \"app\" has outputs") && detail.contains("add \"oci_layout\""),
        "{detail}"
    );
    // A build-only layer's output is its rootfs: the plan must name the rootfs directory.
    let detail = parse_error(
        r#"{"oci_layout": "oci", "layers": {
            "tools": {"definition": {}, "base": {"type": "scratch"}, "build_only": true}}}"#,
    );
    assert!(
        detail.contains("layer \"tools\" is build-only") && detail.contains("add \"rootfs_dir\""),
        "{detail}"
    );
    // Each is enough for its kind of layer.
    Plan::parse(
        r#"{"rootfs_dir": "roots", "layers": {
            "tools": {"definition": {}, "base": {"type": "scratch"}, "build_only": true}}}"#,
        "plan.json",
    )
    .unwrap();
    Plan::parse(
        r#"{"oci_layout": "oci", "layers": {
            "app": {"definition": {}, "base": {"type": "scratch"}}}}"#,
        "plan.json",
    )
    .unwrap();
}

#[test]
fn the_plan_builder_identity_reaches_the_build() {
    let text = |builder: &str| {
        format!(
            r#"{{{builder} "oci_layout": "oci", "layers": {{
                "a": {{"definition": {{}}, "base": {{"type": "scratch"}}}}}}}}"#
        )
    };
    let plan = Plan::parse(&text(r#""builder": "stacker 1.1.0","#), "plan.json").unwrap();
    assert_eq!(plan.build().builder.as_deref(), Some("stacker 1.1.0"));
    let plan = Plan::parse(&text(""), "plan.json").unwrap();
    assert_eq!(plan.build().builder, None);
    assert!(parse_error(&text(r#""builder": 7,"#)).contains("invalid type"));
    assert_eq!(
        layercache::Build::with_builder("mybuilder 2")
            .builder
            .as_deref(),
        Some("mybuilder 2")
    );
}

#[test]
fn builder_changed_reads_like_the_other_reasons_in_text_and_json() {
    use layercache::MissReason;
    let r = MissReason::BuilderChanged {
        old: Some("stacker 1.0.0".into()),
        new: Some("stacker 1.1.0".into()),
    };
    assert_eq!(
        r.to_string(),
        "cache miss because builder was changed: stacker 1.0.0 -> stacker 1.1.0"
    );
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"reason": "builder_changed", "old": "stacker 1.0.0", "new": "stacker 1.1.0"})
    );
    let r = MissReason::BuilderChanged {
        old: None,
        new: Some("stacker 1.1.0".into()),
    };
    assert_eq!(
        r.to_string(),
        "cache miss because builder was changed: unset -> stacker 1.1.0"
    );
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"reason": "builder_changed", "old": null, "new": "stacker 1.1.0"})
    );
}
