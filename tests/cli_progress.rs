//! Progress on stderr, through the built binary: shown on a terminal (a pseudo-terminal here),
//! never on a pipe unless forced with `--progress` (then as plain lines), off with `--quiet`
//! even on a terminal, and `--quiet --progress` refused.

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
