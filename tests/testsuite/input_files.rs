//! The files a build names — plan, manifests, a tar base, an OCI layout and its `index.json` —
//! when they are not what they should be: a FIFO is refused at once (never a hang), a device is
//! never read (no memory blow-up, no empty-input hash), a directory where a file is expected and
//! a file where a directory is expected are errors naming the path, and oversized files are
//! refused with their limit. Through the real binary, with a timeout guard on every run.

use crate::common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use layercache::Error;
use layercache::testing::fsread::{INDEX_LIMIT, PLAN_LIMIT};
use layercache::testing::plan::Plan;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_layercache");

/// Runs the binary; a run that takes longer than 30 s is killed and fails the test (a FIFO
/// opened for a blocking read would hang forever).
fn run(args: &[&std::ffi::OsStr]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("LAYERCACHE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("layercache {args:?} hung for 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Asserts exit 2 with every needle on stderr.
#[track_caller]
fn assert_error(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// A temp dir with an OCI layout for outputs, a rootfs dir and a plan whose one layer `l`
/// has `base`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(base: Value) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("oci/blobs/sha256")).unwrap();
        std::fs::create_dir_all(dir.path().join("roots")).unwrap();
        let f = Fixture { dir };
        f.write_plan(base);
        f
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn plan(&self) -> PathBuf {
        self.root().join("plan.json")
    }

    fn write_plan(&self, base: Value) {
        let plan = json!({
            "oci_layout": "oci",
            "rootfs_dir": "roots",
            "layers": {"l": {"definition": {"run": "make"}, "base": base}}
        });
        std::fs::write(self.plan(), plan.to_string()).unwrap();
    }

    fn lookup_with_plan(&self, plan: &Path) -> Output {
        let db = self.root().join("cache.redb");
        run(&[
            "lookup".as_ref(),
            "--db".as_ref(),
            db.as_os_str(),
            "--plan".as_ref(),
            plan.as_os_str(),
            "l".as_ref(),
        ])
    }

    fn lookup(&self) -> Output {
        self.lookup_with_plan(&self.plan())
    }

    /// `put` of layer `l` with one output blob: it resolves the base (a lookup of a layer that
    /// is not cached stops at "not cached").
    fn put(&self) -> Output {
        let content = b"output of l";
        let hex = blake3::hash(content).to_hex().to_string();
        std::fs::write(self.root().join("oci/blobs/sha256").join(&hex), content).unwrap();
        let manifests = self.root().join("manifests.json");
        let m = json!({"tar": {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{hex}"),
            "size": content.len()
        }});
        std::fs::write(&manifests, m.to_string()).unwrap();
        self.put_with(&manifests)
    }

    fn put_with(&self, manifests: &Path) -> Output {
        let db = self.root().join("cache.redb");
        let plan = self.plan();
        run(&[
            "put".as_ref(),
            "--db".as_ref(),
            db.as_os_str(),
            "--plan".as_ref(),
            plan.as_os_str(),
            "l".as_ref(),
            "--manifests".as_ref(),
            manifests.as_os_str(),
            "--inputs-as-of-now".as_ref(),
        ])
    }
}

#[test]
fn a_fifo_as_plan_is_refused_at_once() {
    let f = Fixture::new(json!({"type": "scratch"}));
    let fifo = f.root().join("plan.fifo");
    common::mkfifo(&fifo);
    let o = f.lookup_with_plan(&fifo);
    assert_error(
        &o,
        &[
            "plan file",
            fifo.to_str().unwrap(),
            "is a FIFO, not a regular file of at most 64 MiB",
        ],
    );
}

#[test]
fn dev_zero_as_plan_names_the_file_and_the_limit() {
    let f = Fixture::new(json!({"type": "scratch"}));
    let o = f.lookup_with_plan(Path::new("/dev/zero"));
    assert_error(
        &o,
        &[
            "plan file /dev/zero is a character device",
            "at most 64 MiB",
        ],
    );
    // A directory is refused the same way.
    let o = f.lookup_with_plan(f.root());
    assert_error(&o, &["plan file", "is a directory, not a regular file"]);
}

#[test]
fn a_plan_over_its_limit_is_refused_without_reading_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("huge.json");
    // Sparse: no disk space is used, and the limit is checked before any read.
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(PLAN_LIMIT + 1).unwrap();
    match Plan::load(&path) {
        Err(Error::TooLarge {
            what, size, limit, ..
        }) => {
            assert_eq!(what, "plan file");
            assert_eq!(size, PLAN_LIMIT + 1);
            assert_eq!(limit, PLAN_LIMIT);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let msg = Plan::load(&path).unwrap_err().to_string();
    assert!(msg.contains("huge.json") && msg.contains("64 MiB"), "{msg}");
}

#[test]
fn a_tar_base_that_is_not_a_regular_file_is_an_error_naming_it() {
    let f = Fixture::new(json!({"type": "scratch"}));
    let fifo = f.root().join("base.tar.fifo");
    common::mkfifo(&fifo);
    let dir = f.root().join("base-dir.tar");
    std::fs::create_dir(&dir).unwrap();
    let cases: [(PathBuf, &str); 4] = [
        // A device hashed as empty input, so a base switched to another device still hit.
        (PathBuf::from("/dev/null"), "a character device"),
        (PathBuf::from("/dev/zero"), "a character device"),
        (fifo, "a FIFO"),
        (dir, "a directory"),
    ];
    for (path, found) in cases {
        f.write_plan(json!({"type": "tar", "path": path}));
        let o = f.put();
        assert_error(
            &o,
            &[
                "base tarball",
                path.to_str().unwrap(),
                &format!("is {found}, not a regular file"),
            ],
        );
    }
}

#[test]
fn an_oci_layout_that_is_not_a_directory_is_an_error_naming_it() {
    let f = Fixture::new(json!({"type": "scratch"}));
    let file = common::write(f.root(), "layout-file", b"not a layout");
    for kind in ["oci", "docker"] {
        f.write_plan(json!({"type": kind, "layout": "layout-file", "tag": "v1"}));
        let o = f.put();
        assert_error(
            &o,
            &[
                "OCI layout",
                file.to_str().unwrap(),
                "is a regular file, not a directory",
            ],
        );
    }
}

#[test]
fn a_fifo_or_device_as_index_json_is_refused_at_once() {
    let f = Fixture::new(json!({"type": "oci", "layout": "layout", "tag": "v1"}));
    let index = f.root().join("layout/index.json");
    std::fs::create_dir_all(index.parent().unwrap()).unwrap();
    common::mkfifo(&index);
    let o = f.put();
    assert_error(
        &o,
        &[
            "OCI index",
            index.to_str().unwrap(),
            "is a FIFO, not a regular file",
        ],
    );

    std::fs::remove_file(&index).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &index).unwrap();
    let o = f.put();
    assert_error(
        &o,
        &["OCI index", "is a character device", "at most 16 MiB"],
    );
}

#[test]
fn an_index_json_over_its_limit_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let file = std::fs::File::create(layout.join("index.json")).unwrap();
    file.set_len(INDEX_LIMIT + 1).unwrap();
    match layercache::testing::base::resolve_tag(&layout, "v1") {
        Err(Error::TooLarge { what, limit, .. }) => {
            assert_eq!((what, limit), ("OCI index", INDEX_LIMIT))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn a_fifo_as_manifests_file_is_refused_at_once() {
    let f = Fixture::new(json!({"type": "scratch"}));
    let fifo = f.root().join("manifests.fifo");
    common::mkfifo(&fifo);
    let o = f.put_with(&fifo);
    assert_error(
        &o,
        &[
            "manifests file",
            fifo.to_str().unwrap(),
            "is a FIFO",
            "16 MiB",
        ],
    );
}

#[test]
fn put_refuses_a_non_sha256_digest_and_a_duplicate_layer_type_naming_them() {
    let f = Fixture::new(json!({"type": "scratch"}));
    let d = |digest: &str| {
        json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest,
               "size": 3})
        .to_string()
    };
    let bad = f.root().join("bad.json");
    std::fs::write(
        &bad,
        format!(
            r#"{{"squashfs": {}}}"#,
            d(&format!("sha512:{}", "ab".repeat(64)))
        ),
    )
    .unwrap();
    assert_error(
        &f.put_with(&bad),
        &[
            "invalid manifests file",
            "bad.json",
            "layer type \"squashfs\"",
            "sha256",
        ],
    );
    let good = d(&format!("sha256:{}", "ab".repeat(32)));
    std::fs::write(&bad, format!(r#"{{"tar": {good}, "tar": {good}}}"#)).unwrap();
    assert_error(
        &f.put_with(&bad),
        &[
            "invalid manifests file",
            "layer type \"tar\" is given twice",
        ],
    );
    // Nothing was recorded.
    assert_eq!(f.lookup().status.code(), Some(1));
}

#[test]
fn the_binary_refuses_a_plan_without_definition_or_output_locations() {
    let f = Fixture::new(json!({"type": "scratch"}));
    let cases = [
        (
            json!({"oci_layout": "oci", "layers": {"l": {"base": {"type": "scratch"}}}}),
            "layer \"l\" has no \"definition\"",
        ),
        (
            json!({"layers": {"l": {"definition": {}, "base": {"type": "scratch"}}}}),
            "add \"oci_layout\"",
        ),
        (
            json!({"oci_layout": "oci", "layers": {"l": {"definition": {},
                   "base": {"type": "scratch"}, "build_only": true}}}),
            "add \"rootfs_dir\"",
        ),
    ];
    for (plan, needle) in cases {
        std::fs::write(f.plan(), plan.to_string()).unwrap();
        assert_error(&f.lookup(), &["invalid plan file", "plan.json", needle]);
    }
}
