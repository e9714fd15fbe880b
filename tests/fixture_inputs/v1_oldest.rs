//! The inputs behind the frozen `tests/fixtures/v1-oldest.redb`, made by the oldest schema-v1
//! code (commit 743a078~1, which recorded a tar base's `reference` as the tarball's absolute
//! path). This code must keep producing exactly the trees, tarball, OCI index and output blobs
//! the fixture was made from: change nothing here. Self-contained (no `common` helpers) so the
//! maker in the old worktree and today's tests include the very same file with `#[path]`.
//!
//! Layers (every record kind of schema v1):
//! * `tarred`: tar base `layer-bases/base.tar`; a dir import `conf` (no dest), a file import
//!   `motd` with a dest (not cached by the v1 code), SOURCE_DATE_EPOCH set.
//! * `chain-1` built on `tarred`, `chain-2` built on `chain-1`: an overlay dir with nested,
//!   non-UTF-8 and symlink names.
//! * `from-oci`: oci base `alpine:3.19`; `from-docker`: docker base `debian:12` (one layout).
//! * `tools`: build-only, scratch, one import, no manifests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use layercache::{Base, Build, Import, LayerInputs, OverlayDir};
use oci_spec::image::Descriptor;
use serde_json::json;

/// Layers in the order the maker put them (bases first).
pub const ORDER: &[&str] = &[
    "tarred",
    "chain-1",
    "chain-2",
    "from-oci",
    "from-docker",
    "tools",
];

/// The manifest digests the base OCI layout's tags point at.
pub const ALPINE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
/// See [`ALPINE`].
pub const DEBIAN: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn write(root: &Path, rel: &str, content: &[u8]) -> PathBuf {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, content).unwrap();
    p
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Builds every input under `root` and returns the build.
pub fn inputs(root: &Path) -> Build {
    // Tar base: its bytes are the base hash; the oldest code recorded its absolute path.
    let tarball = write(
        root,
        "layer-bases/base.tar",
        b"not really a tarball, just bytes\n",
    );
    // Base OCI layout with two tags.
    let layout = root.join("layer-bases/oci");
    std::fs::create_dir_all(&layout).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": ALPINE,
         "size": 10, "annotations": {"org.opencontainers.image.ref.name": "alpine:3.19"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": DEBIAN,
         "size": 10, "annotations": {"org.opencontainers.image.ref.name": "debian:12"}},
    ]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();

    let conf = root.join("imports/tarred/conf");
    write(&conf, "app.toml", b"[app]\nname = \"x\"\n");
    write(&conf, "nested/deep/level.conf", b"deep\n");
    std::fs::write(conf.join(OsStr::from_bytes(b"na\xefve.conf")), b"latin-1\n").unwrap();
    let motd = write(root, "imports/tarred/motd", b"welcome\n");

    let overlay = root.join("src/chain");
    for i in 0..12 {
        write(
            &overlay,
            &format!("lib{}/f{i}.c", i % 3),
            format!("int f{i};\n").as_bytes(),
        );
    }
    std::fs::write(overlay.join(OsStr::from_bytes(b"\xff\xfeodd")), b"odd\n").unwrap();
    symlink("lib0/f0.c", overlay.join("main.c")).unwrap();
    std::fs::create_dir_all(overlay.join("empty")).unwrap();
    std::fs::create_dir_all(root.join("rootfs/chain-2/overlay_dirs/chain")).unwrap();

    let oci_src = root.join("src/oci");
    write(&oci_src, "index.html", b"<html></html>\n");
    std::fs::create_dir_all(root.join("rootfs/from-oci/overlay_dirs/www")).unwrap();

    let tools = root.join("imports/tools/bin");
    write(&tools, "build.sh", b"#!/bin/sh\nmake\n");
    chmod(&tools.join("build.sh"), 0o755);
    std::fs::create_dir_all(root.join("rootfs/tools")).unwrap();
    fix_modes(root);

    let layer = |base: Base, def: serde_json::Value| LayerInputs {
        definition: def,
        base,
        imports: vec![],
        overlay_dirs: vec![],
        source_date_epoch: None,
        build_only: false,
        uncacheable: None,
    };
    let mut tarred = layer(
        Base::Tar { path: tarball },
        json!({"from": {"type": "tar", "url": "layer-bases/base.tar"}, "run": "configure"}),
    );
    tarred.source_date_epoch = Some(1_600_000_000);
    tarred.imports = vec![
        Import {
            key: "conf".into(),
            path: conf,
            dest: None,
        },
        Import {
            key: "motd".into(),
            path: motd,
            dest: Some("/etc/motd".into()),
        },
    ];
    let chain1 = layer(
        Base::Built {
            layer: "tarred".into(),
        },
        json!({"run": "chain one"}),
    );
    let mut chain2 = layer(
        Base::Built {
            layer: "chain-1".into(),
        },
        json!({"run": "chain two", "env": {"CC": "gcc"}}),
    );
    chain2.overlay_dirs = vec![OverlayDir {
        key: "src/chain".into(),
        source: overlay,
        rootfs_path: root.join("rootfs/chain-2/overlay_dirs/chain"),
    }];
    let mut from_oci = layer(
        Base::Oci {
            layout: layout.clone(),
            tag: "alpine:3.19".into(),
        },
        json!({"from": {"type": "oci", "url": "alpine:3.19"}, "run": "apk add"}),
    );
    from_oci.overlay_dirs = vec![OverlayDir {
        key: "www".into(),
        source: oci_src,
        rootfs_path: root.join("rootfs/from-oci/overlay_dirs/www"),
    }];
    let from_docker = layer(
        Base::Docker {
            layout,
            tag: "debian:12".into(),
        },
        json!({"from": {"type": "docker", "url": "docker://debian:12"}, "run": "apt-get"}),
    );
    let mut tools_layer = layer(Base::Scratch, json!({"build_only": true, "run": "tools"}));
    tools_layer.build_only = true;
    tools_layer.imports = vec![Import {
        key: "bin".into(),
        path: tools,
        dest: None,
    }];
    let mut b = Build::new();
    b.add("tarred", tarred)
        .add("chain-1", chain1)
        .add("chain-2", chain2)
        .add("from-oci", from_oci)
        .add("from-docker", from_docker)
        .add("tools", tools_layer);
    b
}

/// The output manifests the maker put for `layer` (none for the build-only `tools`), with their
/// blobs written into the output OCI layout `root/oci` (a blake3 hex stands in for a sha256).
pub fn manifests(root: &Path, layer: &str) -> BTreeMap<String, Descriptor> {
    if layer == "tools" {
        return BTreeMap::new();
    }
    let content = format!("output of {layer}\n");
    let hex = blake3::hash(content.as_bytes()).to_hex().to_string();
    write(root, &format!("oci/blobs/sha256/{hex}"), content.as_bytes());
    let d: Descriptor = serde_json::from_value(json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": format!("sha256:{hex}"),
        "size": content.len(),
        "annotations": {"layer": layer}
    }))
    .unwrap();
    BTreeMap::from([("tar".to_string(), d)])
}

/// Modes independent of the umask: dirs 0755, files 0644 unless executable already set.
fn fix_modes(root: &Path) {
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.unwrap();
        let ft = e.file_type();
        if ft.is_dir() {
            chmod(e.path(), 0o755);
        } else if ft.is_file() {
            let m = e.metadata().unwrap().permissions().mode() & 0o777;
            chmod(e.path(), if m & 0o100 != 0 { 0o755 } else { 0o644 });
        }
    }
}
