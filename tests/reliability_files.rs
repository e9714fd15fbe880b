//! Files on disk: the database is created 0600 whatever the umask and stays so through puts,
//! lookups, check and compact; nothing is written outside the database file (the input trees
//! and the database's directory are unchanged apart from it, and no temp file is left behind).

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use layercache::{Base, Build, Cache, CacheConfig, Import, LayerInputs, OverlayDir};
use serde_json::json;

/// Every path under `root` with its type, mode, size, mtime and content digest.
fn listing(root: &Path) -> BTreeSet<(PathBuf, u32, u64, i64, String)> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            let digest = if m.is_file() {
                blake3::hash(&std::fs::read(e.path()).unwrap())
                    .to_hex()
                    .to_string()
            } else {
                String::new()
            };
            (
                e.path().to_path_buf(),
                m.mode(),
                m.size(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
                digest,
            )
        })
        .collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn database_is_0600_and_nothing_else_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = d.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..10 {
        std::fs::write(src.join(format!("sub/f{i}")), format!("{i}")).unwrap();
    }
    let dbdir = d.join("db");
    std::fs::create_dir(&dbdir).unwrap();
    let db = dbdir.join("cache.redb");
    let inputs_before = listing(&src);
    // A permissive umask must not make the database readable by others.
    let old = unsafe { libc::umask(0) };
    let cache = Cache::open(CacheConfig {
        db: db.clone(),
        oci_layout: Some(common::shared_oci()),
        rootfs_dir: None,
        ..Default::default()
    });
    unsafe { libc::umask(old) };
    let cache = cache.unwrap();
    assert_eq!(mode(&db), 0o600);
    let mut build = Build::new();
    for l in ["a", "b"] {
        build.add(
            l,
            LayerInputs {
                definition: json!(l),
                base: Base::Scratch,
                imports: vec![Import {
                    key: "src".into(),
                    path: src.clone(),
                    dest: None,
                }],
                overlay_dirs: vec![OverlayDir {
                    key: "ov".into(),
                    source: src.clone(),
                    rootfs_path: src.clone(),
                }],
                source_date_epoch: None,
                build_only: false,
                uncacheable: None,
            },
        );
    }
    for _ in 0..2 {
        let mut s = cache.session(&build).unwrap();
        for l in ["a", "b"] {
            let lk = s.lookup(l).unwrap();
            if !lk.is_hit() {
                s.put(&lk, &common::outputs()).unwrap();
            }
        }
    }
    assert!(cache.remove("b").unwrap());
    drop(cache);
    for cmd in ["check", "compact", "dump", "stats"] {
        common::cli_ok(&[cmd], &db);
        assert_eq!(mode(&db), 0o600, "after {cmd}");
    }
    // The database's directory holds the database only; the input tree is untouched (not even
    // an mtime or atime-independent attribute changed).
    let names: Vec<_> = std::fs::read_dir(&dbdir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("cache.redb")]);
    assert_eq!(listing(&src), inputs_before);
    let top: BTreeSet<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        top,
        ["db", "src"].iter().map(std::ffi::OsString::from).collect()
    );
}

/// The binary's `put` creates the database 0600 too, under a permissive umask.
#[test]
fn binary_creates_the_database_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("plan.json"),
        json!({"oci_layout": "oci",
               "layers": {"a": {"definition": null, "base": {"type": "scratch"}}}})
        .to_string(),
    )
    .unwrap();
    common::output_layout(&d.join("oci"));
    std::fs::write(
        d.join("m.json"),
        serde_json::to_string(&common::outputs()).unwrap(),
    )
    .unwrap();
    let db = d.join("new.redb");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" put --db \"$1\" --plan \"$2\" --manifests \"$3\" --inputs-as-of-now a")
        .arg(env!("CARGO_BIN_EXE_layercache"))
        .arg(&db)
        .arg(d.join("plan.json"))
        .arg(d.join("m.json"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&db), 0o600);
}
