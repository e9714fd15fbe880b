//! The command line's own surface, through the built binary: `--db` from `$LAYERCACHE_DB`, and
//! the shell completions and man page generated from the clap definition.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_layercache");

/// Runs the binary with `LAYERCACHE_DB` set to `env_db` (or removed).
fn run(args: &[&str], env_db: Option<&Path>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("LAYERCACHE_LOG", "warn");
    match env_db {
        Some(db) => cmd.env("LAYERCACHE_DB", db),
        None => cmd.env_remove("LAYERCACHE_DB"),
    };
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// An empty cache made by the library.
fn empty_cache(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("cache.redb");
    drop(layercache::testing::Store::open(&db).unwrap());
    db
}

#[test]
fn db_defaults_to_layercache_db() {
    let tmp = tempfile::tempdir().unwrap();
    let db = empty_cache(tmp.path());

    // No --db: the environment names the file, for every command that takes --db.
    let o = run(&["stats", "--json"], Some(&db));
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["db"], db.display().to_string());
    assert_eq!(v["entries"], 0);
    for args in [&["dump"][..], &["check"], &["migrate", "--dry-run"]] {
        let o = run(args, Some(&db));
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }

    // --db wins over the environment.
    let elsewhere = tmp.path().join("not-there.redb");
    let o = run(&["stats", "--db", db.to_str().unwrap()], Some(&elsewhere));
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(stdout(&o).contains(&db.display().to_string()));
    assert!(!elsewhere.exists());

    // Neither: a usage error (exit 2) that names the option and the variable.
    let o = run(&["stats"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--db"), "stderr: {}", stderr(&o));
    let help = stdout(&run(&["stats", "--help"], None));
    assert!(help.contains("env: LAYERCACHE_DB"), "help: {help}");
    let help = stdout(&run(&["--help"], None));
    assert!(help.contains("LAYERCACHE_DB"), "help: {help}");
}

#[test]
fn completions_for_bash() {
    let o = run(&["completions", "bash"], None);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let script = stdout(&o);
    assert!(script.contains("_layercache()"));
    assert!(script.contains("complete -F _layercache"));
    for word in [
        "lookup",
        "dump",
        "compact",
        "completions",
        "--db",
        "--files",
    ] {
        assert!(script.contains(word), "no {word} in the script");
    }
    // The script is valid bash.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("layercache.bash");
    std::fs::write(&file, &script).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(syntax.status.success(), "{}", stderr(&syntax));

    let o = run(&["completions", "no-such-shell"], None);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn man_page() {
    let o = run(&["man"], None);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let page = stdout(&o);
    assert!(page.contains(".TH layercache 1"), "page: {page}");
    assert!(page.contains(".SH NAME"));
    assert!(page.contains(".SH SUBCOMMANDS"));
    assert!(page.contains("layercache\\-lookup(1)"));
    assert!(page.contains("LAYERCACHE_DB"));
}
