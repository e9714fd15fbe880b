//! Hostile trees and hostile plans: special files, symlink loops and escapes, unreadable
//! directories, odd names, depth beyond PATH_MAX, a 1 GiB sparse file, bad layer names, paths
//! that escape their roots, and a plan 10^5 layers long. Each must give a correct row or a clear
//! error — never a panic, a hang (every case runs under a watchdog) or an escape from the root.
//!
//! Quick run: `cargo test --test testsuite reliability_hostile::`. Soak run:
//! `LAYERCACHE_SOAK=1 cargo test --release --test testsuite reliability_hostile:: -- --include-ignored`
//! (the 10^6-layer chain is `#[ignore]`d: it takes tens of seconds).

use crate::common;

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use layercache::testing::plan::Plan;
use layercache::testing::{TreeWalk, WalkedEntry};
use layercache::{
    Base, Build, Cache, CacheConfig, EntryKind, Error, Import, LayerInputs, LookupMode, MissReason,
    RelPath,
};
use serde_json::json;

fn walk(root: &Path) -> layercache::Result<Vec<WalkedEntry>> {
    TreeWalk::new(root)?.collect()
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Creates a device node; false (after printing why) where the system refuses it (no
/// CAP_MKNOD, a user namespace, a `nodev` mount): the device rows are then not checked.
fn mknod(p: &Path, kind: libc::mode_t, major: u32, minor: u32) -> bool {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    if unsafe { libc::mknod(c.as_ptr(), kind | 0o600, libc::makedev(major, minor)) } == 0 {
        return true;
    }
    eprintln!(
        "not checked: device node {} could not be made ({})",
        p.display(),
        std::io::Error::last_os_error()
    );
    false
}

fn mkfifo(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

fn layer(def: serde_json::Value, base: Base) -> LayerInputs {
    LayerInputs {
        definition: def,
        base,
        imports: vec![],
        overlay_dirs: vec![],
        source_date_epoch: None,
        build_only: false,
        uncacheable: None,
    }
}

fn config(dir: &Path) -> CacheConfig {
    CacheConfig {
        db: dir.join("cache.redb"),
        oci_layout: Some(common::shared_oci()),
        rootfs_dir: None,
        ..Default::default()
    }
}

/// Every special file type, symlink loops, symlinks leaving the root (absolute and relative),
/// names with newlines and invalid UTF-8: each is one row of the right type; FIFOs are never
/// opened (no hang); no symlink is followed (the secret outside the root is never read); a put
/// and a lookup of the tree hit.
#[test]
fn special_files_loops_and_escaping_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    common::watchdog(60, move || {
        let root = base.join("tree");
        let outside = base.join("outside");
        std::fs::create_dir_all(outside.join("secret-dir")).unwrap();
        std::fs::write(outside.join("secret-dir/secret.txt"), b"never read").unwrap();
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("plain"), b"x").unwrap();
        mkfifo(&root.join("fifo"));
        let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
        let chr = mknod(&root.join("chr"), libc::S_IFCHR, 1, 3);
        let blk = mknod(&root.join("blk"), libc::S_IFBLK, 7, 200);
        symlink("loop-b", root.join("loop-a")).unwrap();
        symlink("loop-a", root.join("loop-b")).unwrap();
        symlink("self", root.join("self")).unwrap();
        symlink("..", root.join("sub/up")).unwrap();
        symlink(outside.join("secret-dir"), root.join("abs-out")).unwrap();
        symlink("../outside/secret-dir", root.join("rel-out")).unwrap();
        symlink("/", root.join("slash")).unwrap();
        std::fs::write(root.join("new\nline"), b"n").unwrap();
        std::fs::write(root.join(OsStr::from_bytes(b"bad\xff\xfe")), b"b").unwrap();
        std::fs::write(root.join("sub/\r\t\x1b"), b"c").unwrap();

        let rows = walk(&root).unwrap();
        let by_name: BTreeMap<Vec<u8>, &WalkedEntry> =
            rows.iter().map(|e| (e.path.to_slash_bytes(), e)).collect();
        let kind = |n: &[u8]| by_name.get(n).map(|e| e.row.kind);
        assert_eq!(kind(b"fifo"), Some(EntryKind::Fifo));
        assert_eq!(kind(b"sock"), Some(EntryKind::Socket));
        if chr {
            assert_eq!(kind(b"chr"), Some(EntryKind::CharDevice));
            assert_ne!(by_name[&b"chr"[..]].row.rdev, 0);
        }
        if blk {
            assert_eq!(kind(b"blk"), Some(EntryKind::BlockDevice));
        }
        for l in [
            &b"loop-a"[..],
            b"loop-b",
            b"self",
            b"sub/up",
            b"abs-out",
            b"rel-out",
            b"slash",
        ] {
            assert_eq!(
                kind(l),
                Some(EntryKind::Symlink),
                "{}",
                String::from_utf8_lossy(l)
            );
        }
        assert_eq!(
            by_name[&b"abs-out"[..]].row.link_target,
            outside.join("secret-dir").as_os_str().as_bytes()
        );
        assert_eq!(kind(b"new\nline"), Some(EntryKind::File));
        assert_eq!(kind(b"bad\xff\xfe"), Some(EntryKind::File));
        assert_eq!(kind(b"sub/\r\t\x1b"), Some(EntryKind::File));
        // Nothing beyond what is in the root: no entry under a symlink, nothing named secret.
        let expected = 15 + usize::from(chr) + usize::from(blk);
        assert_eq!(
            rows.len(),
            expected,
            "{:?}",
            by_name.keys().collect::<Vec<_>>()
        );
        assert!(rows.iter().all(|e| !e.path.to_string().contains("secret")));

        // Through the cache: put, then a lookup hits.
        let (cache, build) = one_import(&base, "hostile", json!({"run": "x"}), "tree", &root);
        let mut s = cache.session(&build).unwrap();
        let lk = s.lookup("hostile").unwrap();
        s.put(&lk, &common::outputs()).unwrap();
        let mut s = cache.session(&build).unwrap();
        assert!(s.lookup("hostile").unwrap().is_hit());
        assert_eq!(
            layercache::testing::store_of(&cache)
                .row_count("hostile", "import:tree")
                .unwrap(),
            expected as u64
        );
    });
}

/// An import whose root is itself a FIFO (the plan names it): recorded as a FIFO, never opened,
/// so the walk does not block waiting for a writer.
#[test]
fn fifo_as_import_root_does_not_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("fifo");
    mkfifo(&p);
    let rows = common::watchdog(30, move || walk(&p).unwrap());
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].row.kind, EntryKind::Fifo);
}

/// A directory that cannot be read: as a normal user the walk fails with an error naming that
/// directory; as root (where `chmod 000` does not stop reads, CAP_DAC_OVERRIDE) the walk reads it
/// and records mode 000 — either way no panic and no silent skip.
#[test]
fn unreadable_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    std::fs::create_dir_all(root.join("locked")).unwrap();
    std::fs::write(root.join("locked/inside"), b"x").unwrap();
    std::fs::write(root.join("locked-file"), b"y").unwrap();
    std::fs::set_permissions(
        root.join("locked-file"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let r = {
        let root = root.clone();
        common::watchdog(30, move || walk(&root))
    };
    if is_root() {
        let rows = r.unwrap();
        let locked = rows
            .iter()
            .find(|e| e.path == RelPath::from_slash_bytes(b"locked"))
            .unwrap();
        assert_eq!(locked.row.mode, 0);
        assert!(
            rows.iter()
                .any(|e| e.path == RelPath::from_slash_bytes(b"locked/inside"))
        );
    } else {
        match r {
            Err(Error::Io { path, .. }) => assert!(path.starts_with(root.join("locked"))),
            other => panic!("expected an I/O error naming the directory, got {other:?}"),
        }
    }
    std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Creates `depth` nested directories named `name` under `root` with *at calls, so the full
/// path can exceed PATH_MAX; puts a file at the bottom. Returns the full path length.
fn deep_tree(root: &Path, name: &str, depth: usize) -> usize {
    let cname = CString::new(name).unwrap();
    let croot = CString::new(root.as_os_str().as_bytes()).unwrap();
    let mut fd = unsafe { libc::open(croot.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY) };
    assert!(fd >= 0);
    for _ in 0..depth {
        unsafe {
            assert_eq!(libc::mkdirat(fd, cname.as_ptr(), 0o755), 0);
            let next = libc::openat(fd, cname.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
            assert!(next >= 0);
            libc::close(fd);
            fd = next;
        }
    }
    let leaf = CString::new("leaf").unwrap();
    unsafe {
        let f = libc::openat(fd, leaf.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
        assert!(f >= 0);
        assert_eq!(libc::write(f, b"bottom".as_ptr().cast(), 6), 6);
        libc::close(f);
        libc::close(fd);
    }
    root.as_os_str().len() + depth * (name.len() + 1) + 5
}

/// Depth 1000 with a full path under PATH_MAX (4096): walked completely, put and hit.
#[test]
fn depth_1000_within_path_max() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    common::watchdog(120, move || {
        let root = base.join("t");
        std::fs::create_dir(&root).unwrap();
        let len = deep_tree(&root, "d", 1000);
        assert!(len < 4096);
        let rows = walk(&root).unwrap();
        assert_eq!(rows.len(), 1002);
        let (cache, build) = one_import(&base, "deep", json!(1), "deep", &root);
        let mut s = cache.session(&build).unwrap();
        let lk = s.lookup("deep").unwrap();
        s.put(&lk, &common::outputs()).unwrap();
        assert!(
            cache
                .session(&build)
                .unwrap()
                .lookup("deep")
                .unwrap()
                .is_hit()
        );
    });
}

/// Depth 1000 with 10-byte names: the full path (~11 KB) exceeds PATH_MAX. walkdir and lstat use
/// full paths, so the walk cannot describe the deepest entries; it must fail with an I/O error
/// naming a path inside the tree (ENAMETOOLONG), not panic, hang or record a partial tree. Through
/// the cache, a lookup for a build fails the same way, and a put (after a lookup that walks
/// nothing) fails and stores nothing: no entry, no rows.
#[test]
fn depth_beyond_path_max_is_a_clear_error_and_the_put_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    common::watchdog(120, move || {
        let root = base.join("t");
        std::fs::create_dir(&root).unwrap();
        let len = deep_tree(&root, "0123456789", 1000);
        assert!(len > 4096);
        match walk(&root) {
            Err(Error::Io { path, source, .. }) => {
                assert!(path.starts_with(&root), "{}", path.display());
                assert_eq!(source.raw_os_error(), Some(libc::ENAMETOOLONG), "{source}");
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(rows) => panic!(
                "the walk of a tree deeper than PATH_MAX succeeded ({} rows): this test \
                 expects the walk to fail",
                rows.len()
            ),
        }
        let (cache, build) = one_import(&base, "deep", json!(1), "deep", &root);
        let mut s = cache.session(&build).unwrap();
        // A lookup for a build walks the import to observe it: the same error.
        let lk = s.lookup("deep");
        assert!(matches!(lk, Err(Error::Io { .. })), "{lk:?}");
        // A lookup that observes nothing walks nothing for an uncached layer (and cannot be
        // put: only a lookup for a build can, and that one fails above); nothing is stored.
        let lk = s.lookup_with("deep", LookupMode::CHECK).unwrap();
        assert!(matches!(lk.reasons(), [MissReason::NotCached]), "{lk:?}");
        assert!(cache.entry("deep").unwrap().is_none());
        assert_eq!(
            layercache::testing::store_of(&cache)
                .row_count("deep", "import:deep")
                .unwrap(),
            0
        );
    });
}

/// A 1 GiB sparse file (all zeros, no blocks on disk) hashes to blake3 of 1 GiB of zeros.
#[test]
fn sparse_1gib_file_hashes_as_zeros() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    std::fs::create_dir(&root).unwrap();
    let f = std::fs::File::create(root.join("sparse")).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let rows = common::watchdog(120, move || walk(&root).unwrap());
    let mut h = blake3::Hasher::new();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        h.update(&zeros);
    }
    let file = rows.iter().find(|e| e.row.kind == EntryKind::File).unwrap();
    assert_eq!(file.row.size, 1 << 30);
    assert_eq!(file.row.digest, *h.finalize().as_bytes());
}

fn plan_text(layers: serde_json::Value) -> String {
    json!({ "oci_layout": "oci", "layers": layers }).to_string()
}

/// Layer names with `/`, `..`, `.`, NUL, or empty are refused by the plan (and by the library's
/// Build::validate) with an error naming the value; also through the binary (exit 2, no panic).
#[test]
fn hostile_layer_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["a/b", "..", ".", "a\0b", "", "../../etc", "/abs"] {
        let text = plan_text(json!({ name: {"base": {"type": "scratch"}} }));
        let r = Plan::parse(&text, tmp.path().join("plan.json"));
        assert!(
            matches!(
                r,
                Err(Error::InvalidName {
                    what: "layer name",
                    ..
                })
            ),
            "{name:?}: {r:?}"
        );
        let mut build = Build::new();
        build.add(name, layer(json!(null), Base::Scratch));
        assert!(matches!(build.validate(), Err(Error::InvalidName { .. })));
        let plan = tmp.path().join("plan.json");
        std::fs::write(&plan, &text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_layercache"))
            .args(["lookup", "--db"])
            .arg(tmp.path().join("c.redb"))
            .arg("--plan")
            .arg(&plan)
            .arg("x")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("layer name"));
    }
    // A base naming a layer through `..` is an unknown base, not a path.
    let text = plan_text(json!({"a": {"base": {"type": "built", "layer": "../a"}}}));
    assert!(matches!(
        Plan::parse(&text, tmp.path().join("plan.json")),
        Err(Error::MissingBase { .. })
    ));
    // A source (import key) with a NUL is refused: it would break the row key range.
    let text = plan_text(json!({"a": {"base": {"type": "scratch"},
        "imports": [{"key": "k\u{0}", "path": "p"}]}}));
    assert!(matches!(
        Plan::parse(&text, tmp.path().join("plan.json")),
        Err(Error::InvalidName { .. })
    ));
}

/// What "escape" means for a plan: the plan names its import and overlay paths explicitly
/// (`..` in them is resolved like any path, against the plan's directory; a root that is a
/// symlink is followed, because the builder named it). What must hold is that the walk never
/// leaves the named root: symlinks *inside* it, relative or absolute, are recorded by target and
/// never followed, so files outside never become rows and changing them never changes a hit.
#[test]
fn plan_paths_with_dotdot_and_symlinks_never_leave_the_named_root() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("plans")).unwrap();
    std::fs::create_dir_all(d.join("src/inner")).unwrap();
    std::fs::create_dir_all(d.join("outside")).unwrap();
    std::fs::write(d.join("src/inner/f"), b"1").unwrap();
    std::fs::write(d.join("outside/secret"), b"s1").unwrap();
    symlink("../../outside", d.join("src/inner/up")).unwrap();
    symlink(d.join("outside"), d.join("src/abs")).unwrap();
    symlink(d.join("src"), d.join("linked-src")).unwrap();
    std::fs::create_dir_all(d.join("roots/l/ov")).unwrap();
    let text = plan_text(json!({"l": {
        "definition": {"run": "make"},
        "base": {"type": "scratch"},
        "imports": [{"key": "dotdot", "path": "../src/inner/../inner"},
                    {"key": "linkroot", "path": "../linked-src"}],
        "overlay_dirs": [{"key": "ov", "source": "../src", "rootfs_path": "../roots/l/ov"}]
    }}));
    let plan_path = d.join("plans/plan.json");
    std::fs::write(&plan_path, &text).unwrap();
    let plan = Plan::load(&plan_path).unwrap();
    let cache = Cache::open(config(d)).unwrap();
    let mut s = cache.session(plan.build()).unwrap();
    let lk = s.lookup("l").unwrap();
    s.put(&lk, &common::outputs()).unwrap();
    // The import root reached through `..` holds f and the link `up`; the symlinked root is
    // followed once (the builder named it) and holds inner/, inner/f, inner/up and abs.
    assert_eq!(
        layercache::testing::store_of(&cache)
            .row_count("l", "import:dotdot")
            .unwrap(),
        3
    );
    assert_eq!(
        layercache::testing::store_of(&cache)
            .row_count("l", "import:linkroot")
            .unwrap(),
        5
    );
    assert_eq!(
        layercache::testing::store_of(&cache)
            .row_count("l", "overlay:ov")
            .unwrap(),
        5
    );
    // Changing what lies outside, behind the symlinks, changes nothing: still a hit.
    std::fs::write(d.join("outside/secret"), b"changed").unwrap();
    std::fs::write(d.join("outside/new"), b"new").unwrap();
    let mut s = cache.session(plan.build()).unwrap();
    assert!(s.lookup("l").unwrap().is_hit());
    // Retargeting a symlink inside the root is a change.
    std::fs::remove_file(d.join("src/abs")).unwrap();
    symlink("/", d.join("src/abs")).unwrap();
    let mut s = cache.session(plan.build()).unwrap();
    assert!(!s.lookup("l").unwrap().is_hit());
}

fn chain(n: usize) -> Build {
    let mut build = Build::new();
    for i in 0..n {
        let base = if i == 0 {
            Base::Scratch
        } else {
            Base::Built {
                layer: format!("l{}", i - 1),
            }
        };
        build.add(format!("l{i}"), layer(json!({ "i": i }), base));
    }
    build
}

fn long_chain(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    common::watchdog(300, move || {
        let mut build = chain(n);
        build.validate().unwrap();
        let cache = Cache::open(config(&dir)).unwrap();
        let mut s = cache.session(&build).unwrap();
        // The top layer's lookup resolves every base below it, iteratively: no stack overflow,
        // one evaluation per layer.
        let top = format!("l{}", n - 1);
        assert!(!s.lookup(&top).unwrap().is_hit());
        assert_eq!(s.counters().lookups, n as u64);
        // Closing the chain into a cycle is found, named, and not quadratic.
        build.layers.get_mut("l0").unwrap().base = Base::Built { layer: top };
        match build.validate() {
            Err(Error::BaseCycle { chain }) => assert_eq!(chain.len(), n + 1),
            other => panic!("expected a cycle, got {other:?}"),
        }
    });
}

/// A plan 10^5 layers long (a chain of built bases): validates, and the top layer's lookup
/// resolves the whole chain without overflowing the stack, under a watchdog.
#[test]
fn chain_of_100k_layers() {
    long_chain(100_000);
}

/// The soak size: 10^6 layers.
#[test]
#[ignore = "soak: 10^6-layer chain, tens of seconds"]
fn chain_of_1m_layers() {
    long_chain(1_000_000);
}

/// A cache under `base` and a build of one layer `name` (from scratch, definition `def`) that
/// imports `root` under `key`.
fn one_import(
    base: &Path,
    name: &str,
    def: serde_json::Value,
    key: &str,
    root: &Path,
) -> (Cache, Build) {
    let mut build = Build::new();
    let mut l = layer(def, Base::Scratch);
    l.imports.push(Import {
        key: key.into(),
        path: root.to_path_buf(),
        dest: None,
    });
    build.add(name, l);
    (Cache::open(config(base)).unwrap(), build)
}
