//! Helpers shared by the integration tests: real trees in temp dirs.
#![allow(dead_code)]

use layercache::testing::RawTransactions;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

pub fn write(root: &Path, rel: &str, content: &[u8]) -> PathBuf {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, content).unwrap();
    p
}

pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {}",
        p.display()
    );
}

/// Creates a character device node; false where the system does not permit it.
pub fn mknod_char(p: &Path, major: u32, minor: u32) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let dev = libc::makedev(major, minor);
    unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, dev) == 0 }
}

/// True when the file system under `dir` accepts user xattrs.
pub fn xattrs_supported(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    std::fs::write(&probe, b"").unwrap();
    let ok = xattr::set(&probe, "user.probe", b"1").is_ok();
    std::fs::remove_file(&probe).unwrap();
    ok
}

/// A tree with every entry type, empty dirs, deep nesting, non-UTF-8 names and names that sort
/// around `/`. Returns the number of regular files in it.
pub fn rich_tree(root: &Path) -> u64 {
    let mut files = 0;
    for rel in [
        "a/b",
        "a-b",
        "a.txt",
        "a0",
        "z/y/x/w/v/u/t/s/r/q/deep.txt",
        "exec.sh",
    ] {
        write(root, rel, rel.as_bytes());
        files += 1;
    }
    chmod(&root.join("exec.sh"), 0o755);
    std::fs::create_dir_all(root.join("empty/also-empty")).unwrap();
    let bad = root.join(OsStr::from_bytes(b"bad\xff\xfename"));
    std::fs::write(&bad, b"latin-1 name").unwrap();
    files += 1;
    std::fs::write(root.join("new\nline"), b"newline name").unwrap();
    files += 1;
    symlink("a.txt", root.join("link-to-a")).unwrap();
    symlink("/etc/passwd", root.join("abs-link")).unwrap();
    symlink("loop1", root.join("loop2")).unwrap();
    symlink("loop2", root.join("loop1")).unwrap();
    symlink("self", root.join("self")).unwrap();
    mkfifo(&root.join("fifo"));
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    std::fs::create_dir(root.join("setgid-dir")).unwrap();
    chmod(&root.join("setgid-dir"), 0o2775);
    mknod_char(&root.join("null-dev"), 1, 3);
    files
}

pub mod v1_fixture;

/// xorshift64*: reproducible random numbers. The seed is `LAYERCACHE_SEED` if set, else `fixed`
/// if given, else the clock; it is printed so a failing run can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(fixed: Option<u64>) -> Rng {
        let seed = std::env::var("LAYERCACHE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .or(fixed)
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("LAYERCACHE_SEED={seed}");
        Rng(seed)
    }

    /// A number below `n` (0 for `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Runs the built binary as `layercache ARGS --db DB`, asserts it exits 0, returns its output.
pub fn cli_ok(args: &[&str], db: &Path) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_layercache"))
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "layercache {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The snapshot and diff of one (layer, source) that the tree tests drive a [`Store`] with,
/// built from the public API (walk, `write_tree`, `rows`, `diff_trees`): the store itself knows
/// nothing of walks or diffs.
pub trait StoreTestExt {
    /// Walks `root` and stores it as the rows of (layer, source) in one transaction, replacing
    /// what was there. Returns the summary and the walk's counters.
    fn snapshot(
        &self,
        layer: &str,
        source: &str,
        root: &Path,
    ) -> layercache::Result<(
        layercache::testing::TreeSummary,
        layercache::testing::WalkCounters,
    )>;

    /// Diffs the stored rows of (layer, source) against a fresh walk of `root`.
    fn diff(
        &self,
        layer: &str,
        source: &str,
        root: &Path,
    ) -> layercache::Result<(layercache::TreeDiff, layercache::testing::WalkCounters)>;
}

impl StoreTestExt for layercache::testing::Store {
    fn snapshot(
        &self,
        layer: &str,
        source: &str,
        root: &Path,
    ) -> layercache::Result<(
        layercache::testing::TreeSummary,
        layercache::testing::WalkCounters,
    )> {
        let mut walk = layercache::testing::TreeWalk::new(root)?;
        let txn = self.begin_write()?;
        let summary = self.write_tree(&txn, layer, source, root, walk.by_ref())?;
        txn.commit().map_err(|e| layercache::Error::Io {
            op: "cannot commit to",
            path: self.path().to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok((summary, walk.counters()))
    }

    fn diff(
        &self,
        layer: &str,
        source: &str,
        root: &Path,
    ) -> layercache::Result<(layercache::TreeDiff, layercache::testing::WalkCounters)> {
        let txn = self.begin_read()?;
        let stored = self.rows(&txn, layer, source)?;
        let mut walk = layercache::testing::TreeWalk::new(root)?;
        let diff = layercache::testing::diff_trees(stored, walk.by_ref(), |_, _| {})?;
        Ok((diff, walk.counters()))
    }
}

/// (version, rows) read with redb directly, checking every row decodes as that version's row.
pub fn raw_state(path: &Path) -> (u32, u64) {
    let db = redb::Database::builder()
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .open(path)
        .unwrap();
    use redb::{ReadableDatabase, ReadableTable};
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(layercache::testing::schema::META).unwrap();
    let v = u32::from_le_bytes(
        meta.get("schema_version")
            .unwrap()
            .unwrap()
            .value()
            .try_into()
            .unwrap(),
    );
    let rows = txn.open_table(layercache::testing::schema::ROWS).unwrap();
    let mut n = 0;
    for item in rows.iter().unwrap() {
        let (_, val) = item.unwrap();
        match v {
            1 => {
                layercache::testing::codec::decode::<
                    layercache::testing::migrate::v0002::RowV1,
                    { layercache::testing::codec::ROW_LIMIT },
                >(val.value())
                .expect("a v1 database holds only v1 rows");
            }
            2..=4 => {
                layercache::testing::codec::decode::<
                    layercache::testing::schema::Row,
                    { layercache::testing::codec::ROW_LIMIT },
                >(val.value())
                .expect("v2, v3 and v4 databases hold only v2 rows");
            }
            other => panic!("unexpected version {other}"),
        }
        n += 1;
    }
    (v, n)
}

/// A temp directory holding a cache (`cache.redb`) whose outputs go to the OCI layout `oci` and
/// the rootfs directory `roots`, both inside it.
pub struct Workspace {
    _tmp: tempfile::TempDir,
    /// The directory.
    pub dir: PathBuf,
}

impl Workspace {
    /// A new empty directory with `roots/app/overlay_dirs/src` made (the rootfs copy of the
    /// overlay dir `src` of a layer `app`).
    pub fn new() -> Workspace {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("roots/app/overlay_dirs/src")).unwrap();
        Workspace { _tmp: tmp, dir }
    }

    /// A path inside the directory.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The cache, with its outputs in `oci` and `roots`.
    pub fn cache(&self) -> layercache::Cache {
        layercache::Cache::open(layercache::CacheConfig {
            db: self.p("cache.redb"),
            oci_layout: Some(self.p("oci")),
            rootfs_dir: Some(self.p("roots")),
            ..Default::default()
        })
        .unwrap()
    }
}

/// The content of the one output blob the tests record (any layer that is not build-only must
/// record outputs, and a hit checks that they exist).
pub const OUTPUT: &[u8] = b"test output";

/// Writes the blob of [`OUTPUT`] into the OCI layout `layout` (created if missing); returns
/// `layout`. The digest is the blake3 of the content spelled as sha256: the cache checks that
/// the blob exists, not its hash.
pub fn output_layout(layout: &Path) -> PathBuf {
    let hex = blake3::hash(OUTPUT).to_hex().to_string();
    write(layout, &format!("blobs/sha256/{hex}"), OUTPUT);
    layout.to_path_buf()
}

/// An OCI layout shared by the tests of one process (a temp dir that lives as long as it),
/// holding the output blob of [`outputs`]: pass it as `oci_layout` so that hits can check
/// their outputs.
pub fn shared_oci() -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        output_layout(d.path());
        d
    })
    .path()
    .to_path_buf()
}

/// Manifests pointing at the blob of [`OUTPUT`] (in [`shared_oci`], or any layout made by
/// [`output_layout`]).
pub fn outputs() -> std::collections::BTreeMap<String, oci_spec::image::Descriptor> {
    let hex = blake3::hash(OUTPUT).to_hex().to_string();
    let d = serde_json::from_value(serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": format!("sha256:{hex}"),
        "size": OUTPUT.len(),
    }))
    .unwrap();
    std::collections::BTreeMap::from([("tar".to_string(), d)])
}

/// When run as root, re-runs the test `name` of this test binary as uid/gid 65534 (nobody), so
/// that permission checks apply, asserts that it passed there (without skipping), and returns
/// true: the caller returns. Returns false when not root (the caller runs the test itself).
/// When root cannot drop privileges here, says so and returns true.
pub fn rerun_as_nobody(name: &str) -> bool {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    // The test's full name (`module::name` inside tests/testsuite): libtest names the thread
    // that runs a test after it.
    let current = std::thread::current();
    let full = match current.name() {
        Some(t) if t.ends_with(name) => t.to_string(),
        _ => name.to_string(),
    };
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", &full, "--nocapture", "--test-threads=1"]);
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: root cannot drop to uid/gid 65534 here ({e})");
            return true;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "as nobody: {text}");
    assert!(text.contains("1 passed"), "as nobody: {text}");
    assert!(!text.contains("skipped"), "as nobody: {text}");
    true
}

/// Runs `f` on its own thread (8 MiB of stack) and fails the test if it has not finished within
/// `secs` (a hang). A panic inside `f` fails the test with its message.
pub fn watchdog<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::sync::mpsc;
    let (tx, rx) = mpsc::channel();
    let h = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!("the thread sent nothing but did not panic"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("hang: not finished within {secs} s"),
    }
}

/// Runs `layercache ARGS[0] --db DIR/cache.redb --plan DIR/plan.json ARGS[1..]` with the log
/// level `log` and no remote from the environment.
pub fn run_plan(log: &str, dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_layercache"))
        .arg(args[0])
        .arg("--db")
        .arg(dir.join("cache.redb"))
        .arg("--plan")
        .arg(dir.join("plan.json"))
        .args(&args[1..])
        .env("LAYERCACHE_LOG", log)
        .env_remove("LAYERCACHE_REMOTE")
        .output()
        .unwrap()
}

/// Sets the access and modification times of `path` (a symlink itself, not its target) to
/// `secs_ago` seconds back.
pub fn backdate_one(path: &Path, secs_ago: u64) {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(secs_ago);
    let old = filetime::FileTime::from_system_time(then);
    filetime::set_symlink_file_times(path, old, old).unwrap();
}

/// Sets the times of every entry under `root`, `root` included, to `secs_ago` seconds back:
/// no row of it is racy by its mtime.
pub fn backdate(root: &Path, secs_ago: u64) {
    for e in walkdir::WalkDir::new(root) {
        backdate_one(e.unwrap().path(), secs_ago);
    }
}

/// Sets every entry's times under `root` an hour back (an old checkout), then waits past the
/// tick of the status changes that makes: no row of it is racy by its mtime or its ctime.
pub fn age(root: &Path) {
    backdate(root, 3600);
    std::thread::sleep(std::time::Duration::from_millis(50));
}

/// A build of one layer `app` on scratch (definition `{"run": "build"}`, no
/// SOURCE_DATE_EPOCH, not build-only) with the overlay dirs `overlays` (key, source), each
/// with its builder's copy made at `dir/rootfs/app/<key>`, and the imports `imports`.
pub fn app_build(
    dir: &Path,
    overlays: &[(&str, &Path)],
    imports: Vec<layercache::Import>,
) -> layercache::Build {
    let overlay_dirs = overlays
        .iter()
        .map(|(key, source)| {
            let rootfs_path = dir.join("rootfs/app").join(key);
            std::fs::create_dir_all(&rootfs_path).unwrap();
            layercache::OverlayDir {
                key: key.to_string(),
                source: source.to_path_buf(),
                rootfs_path,
            }
        })
        .collect();
    let mut build = layercache::Build::new();
    build.add(
        "app",
        layercache::LayerInputs {
            definition: serde_json::json!({"run": "build"}),
            base: layercache::Base::Scratch,
            imports,
            overlay_dirs,
            source_date_epoch: None,
            build_only: false,
            uncacheable: None,
        },
    );
    build
}

/// The cache at `db` (created if missing), its outputs in [`shared_oci`].
pub fn open_cache(db: &Path) -> layercache::Cache {
    layercache::Cache::open(layercache::CacheConfig {
        db: db.to_path_buf(),
        oci_layout: Some(shared_oci()),
        ..Default::default()
    })
    .unwrap()
}

/// Plants bytes no reader can decode in the stored row of `key` of (`layer`, `source`) in the
/// cache database `db`, behind the cache's back (a damaged row).
pub fn plant_garbage(db: &Path, layer: &str, source: &str, key: &[u8]) {
    let db = redb::Database::builder()
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .open(db)
        .unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut rows = txn.open_table(layercache::testing::schema::ROWS).unwrap();
        let garbage: &[u8] = &[0xff; 7];
        rows.insert((layer, source, key), garbage).unwrap();
    }
    txn.commit().unwrap();
}
