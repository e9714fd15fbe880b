//! Progress on stderr, through the built binary: shown on a terminal (a pseudo-terminal here),
//! never on a pipe unless forced with `--progress` (then as plain lines), off with `--quiet`
//! even on a terminal, and `--quiet --progress` refused.

use crate::common;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_layercache");

fn run(args: &[&str], db: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--db")
        .arg(db)
        .env("LAYERCACHE_LOG", "error")
        .output()
        .unwrap()
}

/// Runs the binary with stderr on a pseudo-terminal (100 columns); returns its exit code and
/// what it wrote to the terminal.
fn run_on_terminal(args: &[&str], db: &Path) -> (Option<i32>, String) {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: two out-parameters we own; the name is not asked for.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned here only.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--db")
        .arg(db)
        .env("LAYERCACHE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave));
    let mut child = cmd.spawn().unwrap();
    // The parent's copy of the terminal's slave side is closed, so reading the master ends
    // (EIO) when the child's is.
    drop(cmd);
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let status = child.wait().unwrap();
    (status.code(), reader.join().unwrap())
}

#[test]
fn gc_and_migrate_show_progress_on_a_terminal_or_when_forced() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cache.redb");

    // On a pipe: nothing, unless forced; forced, plain lines naming the step.
    let o = run(&["gc"], &db);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&["gc", "--progress"], &db);
    assert_eq!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("gc {}", db.display())), "{err:?}");
    assert!(
        !err.contains('\x1b'),
        "no terminal codes on a pipe: {err:?}"
    );
    let o = run(&["migrate", "--progress"], &db);
    assert_eq!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("migrate {}", db.display())),
        "{err:?}"
    );

    // On a terminal: shown by default, not with --quiet.
    let (code, shown) = run_on_terminal(&["gc"], &db);
    assert_eq!(code, Some(0));
    assert!(shown.contains(&format!("gc {}", db.display())), "{shown:?}");
    let (code, shown) = run_on_terminal(&["gc", "--quiet"], &db);
    assert_eq!(code, Some(0));
    assert!(shown.is_empty(), "{shown:?}");

    // Both flags: refused.
    let o = run(&["gc", "--quiet", "--progress"], &db);
    assert_eq!(o.status.code(), Some(2));
}

/// A plan of one layer importing a tree of 300 files (aged an hour), with its output.
fn plan_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..300 {
        let p = dir.path().join(format!("tree/d{}/f{i}", i % 7));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("{i}")).unwrap();
    }
    let old = filetime::FileTime::from_unix_time(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 3600,
        0,
    );
    for e in walkdir::WalkDir::new(dir.path().join("tree")) {
        filetime::set_file_mtime(e.unwrap().path(), old).unwrap();
    }
    let hex = blake3::hash(b"out").to_hex().to_string();
    let blob = dir.path().join(format!("oci/blobs/sha256/{hex}"));
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::write(&blob, b"out").unwrap();
    let manifests = serde_json::json!({"tar": {
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": format!("sha256:{hex}"),
        "size": 3,
    }});
    std::fs::write(dir.path().join("m.json"), manifests.to_string()).unwrap();
    let plan = serde_json::json!({
        "oci_layout": "oci",
        "layers": {"app": {
            "definition": {"run": "make"},
            "base": {"type": "scratch"},
            "imports": [{"key": "tree", "path": "tree"}]
        }}
    });
    std::fs::write(dir.path().join("plan.json"), plan.to_string()).unwrap();
    dir
}

/// lookup and put: entries and files hashed, counted once per window; the put after a recorded
/// lookup hashes nothing (the last line says so), and with an ETA once the rows are stored.
#[test]
fn lookup_and_put_show_entries_and_files_hashed() {
    let dir = plan_fixture();
    let d = dir.path();
    let rec = d.join("rec.json");
    let rec = rec.to_str().unwrap();
    let o = common::run_plan(
        "error",
        d,
        &["lookup", "app", "--progress", "--record", rec],
    );
    assert_eq!(o.status.code(), Some(1), "a miss");
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("lookup app"), "{err:?}");
    assert!(last.contains("308 entries"), "{err:?}");
    assert!(last.contains("300 files hashed"), "{err:?}");

    // Without the flag, on a pipe: nothing.
    let o = common::run_plan("error", d, &["lookup", "app"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let m = d.join("m.json");
    let o = common::run_plan(
        "error",
        d,
        &[
            "put",
            "app",
            "--progress",
            "--manifests",
            m.to_str().unwrap(),
            "--from",
            rec,
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("put app"), "{err:?}");
    assert!(
        last.contains("308/308 entries"),
        "a total from the record: {err:?}"
    );
    assert!(
        last.contains("0 files hashed"),
        "reused the lookup's: {err:?}"
    );

    let o = common::run_plan("error", d, &["lookup", "app", "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "a hit after the put");
    assert!(o.stderr.is_empty());
}
