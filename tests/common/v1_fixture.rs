//! The inputs behind the frozen schema-v1 fixture databases under tests/fixtures/. This code
//! must keep producing exactly the trees the fixtures were made from: change nothing here.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;

use layercache::{Base, Build, Import, LayerInputs, OverlayDir};
use serde_json::json;

use super::{chmod, write};

/// Builds the small fixture's input trees under `root` and returns its build:
/// `base` (scratch; a dir import and a file import), `mid` (built on base), `app` (built on mid;
/// an overlay dir with nested and non-UTF-8 names), `other` (built on base).
pub fn small_inputs(root: &Path) -> Build {
    let tools = root.join("imports/base/tools");
    write(&tools, "bin/tool", b"#!/bin/sh\necho tool\n");
    chmod(&tools.join("bin/tool"), 0o755);
    write(&tools, "share/doc/README", b"tools readme\n");
    std::fs::write(
        tools.join(OsStr::from_bytes(b"caf\xe9.txt")),
        b"latin-1 name\n",
    )
    .unwrap();
    symlink("bin/tool", tools.join("tool-link")).unwrap();
    write(&root.join("imports/base"), "file.txt", b"a file import\n");
    let app = root.join("src/app");
    for i in 0..20 {
        write(
            &app,
            &format!("pkg{}/mod{i}.rs", i % 4),
            format!("// module {i}\n").as_bytes(),
        );
    }
    std::fs::write(
        app.join(OsStr::from_bytes(b"weird\xff\xfe")),
        b"not utf-8\n",
    )
    .unwrap();
    std::fs::create_dir_all(app.join("empty")).unwrap();
    std::fs::create_dir_all(root.join("rootfs/app/overlay_dirs/app")).unwrap();
    fix_modes(root);

    let layer = |base: Base, def: serde_json::Value| LayerInputs {
        definition: def,
        base,
        imports: vec![],
        overlay_dirs: vec![],
        source_date_epoch: Some(1_700_000_000),
        build_only: false,
        uncacheable: None,
    };
    let mut base = layer(
        Base::Scratch,
        json!({"from": {"type": "scratch"}, "run": "setup"}),
    );
    base.imports = vec![
        Import {
            key: "tools".into(),
            path: tools,
            dest: None,
        },
        Import {
            key: "file.txt".into(),
            path: root.join("imports/base/file.txt"),
            dest: None,
        },
    ];
    let mid = layer(
        Base::Built {
            layer: "base".into(),
        },
        json!({"run": "mid"}),
    );
    let mut app_layer = layer(
        Base::Built {
            layer: "mid".into(),
        },
        json!({"run": "make app"}),
    );
    app_layer.overlay_dirs = vec![OverlayDir {
        key: "src/app".into(),
        source: app,
        rootfs_path: root.join("rootfs/app/overlay_dirs/app"),
    }];
    let other = layer(
        Base::Built {
            layer: "base".into(),
        },
        json!({"run": "other"}),
    );
    let mut b = Build::new();
    b.add("base", base)
        .add("mid", mid)
        .add("app", app_layer)
        .add("other", other);
    b
}

/// Builds the large fixture's overlay tree (`n` files) under `root` and returns its build: one
/// layer `big` from scratch with that overlay dir.
pub fn large_inputs(root: &Path, n: usize) -> Build {
    let src = root.join("big");
    for i in 0..n {
        write(
            &src,
            &format!("d{:03}/f{i:06}.txt", i / 200),
            format!("file {i}\n").as_bytes(),
        );
    }
    std::fs::create_dir_all(root.join("rootfs/big")).unwrap();
    fix_modes(root);
    let mut l = LayerInputs {
        definition: json!({"run": "big"}),
        base: Base::Scratch,
        imports: vec![],
        overlay_dirs: vec![],
        source_date_epoch: None,
        build_only: false,
        uncacheable: None,
    };
    l.overlay_dirs = vec![OverlayDir {
        key: "big".into(),
        source: src,
        rootfs_path: root.join("rootfs/big"),
    }];
    let mut b = Build::new();
    b.add("big", l);
    b
}

/// Modes independent of the umask: dirs 0755, files 0644 unless executable already set.
fn fix_modes(root: &Path) {
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.unwrap();
        let ft = e.file_type();
        if ft.is_dir() {
            chmod(e.path(), 0o755);
        } else if ft.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let m = e.metadata().unwrap().permissions().mode() & 0o777;
            chmod(e.path(), if m & 0o100 != 0 { 0o755 } else { 0o644 });
        }
    }
}
