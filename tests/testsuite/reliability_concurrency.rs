//! Many build steps on one cache, and interrupted ones, through real processes: the built binary
//! (`lookup`, `put`, `stats`, `check`) and a helper child (this test binary re-run as
//! `hold_write_lock_helper`) that holds the write lock for as long as a test needs.
//!
//! What is asserted: parallel lookups all answer; lookups and inspection answer while another
//! process holds the write lock; puts of different layers all land; a put waits for the lock
//! (saying so on stderr) and gives up after `--wait`; SIGINT/SIGTERM/SIGKILL of a put or a lookup
//! leave a cache that `stats` calls clean or "not closed cleanly", never damaged; creation is
//! atomic (racing creators, a full disk); the file is private; a FIFO as `--db` fails at once;
//! names are escaped in text output; `put > /dev/full` says the entry was recorded; a put over a
//! large change logs a few lines; put refuses what a reader could not decode.
//!
//! Soak (ignored): `LAYERCACHE_SIGNAL=INT|TERM|KILL LAYERCACHE_KILLS=N cargo test --release
//! --test reliability_concurrency -- --ignored signal_soak`.

use crate::common;
use layercache::testing::RawTransactions;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_layercache");
const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A build of `n` independent layers `l0..l{n-1}`, each importing its own directory of `files`
/// files.
struct Build {
    dir: tempfile::TempDir,
    db: PathBuf,
    plan: PathBuf,
    manifests: PathBuf,
}

impl Build {
    fn new(n: usize, files: usize) -> Build {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut layers = serde_json::Map::new();
        for i in 0..n {
            for f in 0..files {
                common::write(
                    root,
                    &format!("imports/l{i}/d{}/f{f}", f / 100),
                    format!("{i}/{f}").as_bytes(),
                );
            }
            layers.insert(
                format!("l{i}"),
                json!({
                    "definition": {"run": format!("make l{i}")},
                    "base": {"type": "scratch"},
                    "imports": [{"key": "stacker://src", "path": format!("imports/l{i}")}]
                }),
            );
        }
        let b = Build {
            db: root.join("cache.redb"),
            plan: root.join("plan.json"),
            manifests: root.join("manifests.json"),
            dir,
        };
        b.write_plan(json!({"oci_layout": "oci", "layers": layers}));
        // The output blob every manifest names, so pruning keeps the entries.
        common::write(
            b.root(),
            &format!("oci/blobs/sha256/{}", &DIGEST[7..]),
            b"x",
        );
        std::fs::write(
            &b.manifests,
            json!({"tar": {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": DIGEST, "size": 1}})
                .to_string(),
        )
        .unwrap();
        b
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write_plan(&self, plan: Value) {
        std::fs::write(&self.plan, serde_json::to_vec_pretty(&plan).unwrap()).unwrap();
    }

    fn lookup_cmd(&self, layer: &str) -> Command {
        let mut c = Command::new(BIN);
        c.arg("lookup")
            .arg("--db")
            .arg(&self.db)
            .arg("--plan")
            .arg(&self.plan)
            .arg(layer);
        c
    }

    fn put_cmd(&self, layer: &str) -> Command {
        let mut c = Command::new(BIN);
        c.arg("put")
            .arg("--db")
            .arg(&self.db)
            .arg("--plan")
            .arg(&self.plan)
            .arg("--manifests")
            .arg(&self.manifests)
            .arg("--inputs-as-of-now")
            .arg(layer);
        c
    }

    fn run(&self, mut c: Command) -> Output {
        c.output().unwrap()
    }

    fn stats(&self) -> Output {
        Command::new(BIN)
            .arg("stats")
            .arg("--db")
            .arg(&self.db)
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs every command at once; returns their outputs in order.
fn all_at_once(cmds: Vec<Command>) -> Vec<Output> {
    let children: Vec<Child> = cmds
        .into_iter()
        .map(|mut c| {
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

/// A child process (this test binary, running `hold_write_lock_helper`) that opens the cache,
/// takes the write lock, says "held", and keeps it until its stdin closes.
struct LockHolder(Child, BufReader<std::process::ChildStdout>);

impl LockHolder {
    fn take(db: &Path) -> LockHolder {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "reliability_concurrency::hold_write_lock_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LAYERCACHE_HOLD_DB", db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kept open until the child ends: it writes its test summary there last.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        loop {
            let mut line = String::new();
            match out.read_line(&mut line) {
                Ok(n) if n > 0 && line.trim().ends_with("held") => break,
                Ok(n) if n > 0 => {}
                other => panic!("the lock holder did not start: {other:?}"),
            }
        }
        LockHolder(child, out)
    }

    fn release(mut self) {
        drop(self.0.stdin.take());
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.1, &mut rest);
        assert!(
            self.0.wait().unwrap().success(),
            "the lock holder failed: {rest}"
        );
    }
}

/// Not a test: the child of [`LockHolder`] (run only when `LAYERCACHE_HOLD_DB` is set).
#[test]
#[ignore = "helper process of the concurrency tests"]
fn hold_write_lock_helper() {
    let Some(db) = std::env::var_os("LAYERCACHE_HOLD_DB") else {
        return;
    };
    let store = layercache::testing::Store::open(&db).unwrap();
    let txn = store.begin_write().unwrap();
    println!("held");
    std::io::stdout().flush().unwrap();
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
    drop(txn);
}

#[test]
fn six_parallel_lookups_and_two_parallel_puts_all_answer() {
    let b = Build::new(6, 20);
    // Six lookups of different layers on a cache nobody created yet: all answer "miss", none
    // is refused as "in use" or as a foreign file.
    let outs = all_at_once((0..6).map(|i| b.lookup_cmd(&format!("l{i}"))).collect());
    for o in &outs {
        assert_eq!(o.status.code(), Some(1), "{}", text(o));
    }
    // Puts of different layers at once: all land.
    let outs = all_at_once((0..6).map(|i| b.put_cmd(&format!("l{i}"))).collect());
    for o in &outs {
        assert_eq!(o.status.code(), Some(0), "{}", text(o));
    }
    let outs = all_at_once((0..6).map(|i| b.lookup_cmd(&format!("l{i}"))).collect());
    for o in &outs {
        assert_eq!(
            o.status.code(),
            Some(0),
            "every put must have landed: {}",
            text(o)
        );
    }
}

#[test]
fn while_another_process_holds_the_write_lock() {
    let b = Build::new(3, 5);
    for i in 0..2 {
        assert!(b.run(b.put_cmd(&format!("l{i}"))).status.success());
    }
    let holder = LockHolder::take(&b.db);
    // Lookups answer from a snapshot.
    let outs = all_at_once((0..3).map(|i| b.lookup_cmd(&format!("l{i}"))).collect());
    let codes: Vec<_> = outs.iter().map(|o| o.status.code()).collect();
    assert_eq!(codes, [Some(0), Some(0), Some(1)], "{}", text(&outs[0]));
    // Inspection keeps reading.
    let s = b.stats();
    assert!(s.status.success(), "{}", text(&s));
    // A put with --wait 0 fails at once, --wait 1 after saying what it waits for.
    let mut c = b.put_cmd("l2");
    c.args(["--wait", "0"]);
    let o = b.run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("gave up waiting"),
        "{}",
        text(&o)
    );
    let mut c = b.put_cmd("l2");
    c.args(["--wait", "1"]);
    let start = Instant::now();
    let o = b.run(c);
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Blocking waiting for the write lock on"),
        "{err}"
    );
    assert!(err.contains("held by another layercache process"), "{err}");
    assert!(err.contains("recorded nothing"), "{err}");
    // A put that waits long enough lands once the lock is released.
    let mut c = b.put_cmd("l2");
    c.args(["--wait", "60"])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    let mut waiting = c.spawn().unwrap();
    let mut err = BufReader::new(waiting.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("Blocking waiting"), "{line}");
    holder.release();
    let o = waiting.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(b.run(b.lookup_cmd("l2")).status.code(), Some(0));
}

/// A hit whose stat refresh finds the write lock held by another process neither waits nor
/// fails: the hit stands, the refresh is skipped and counted (`writes_skipped_busy`), nothing
/// is written; once the lock is free the next hit refreshes every row in one write, and the
/// one after reads no file.
#[test]
fn a_hit_skips_its_stat_refresh_while_another_process_writes_and_refreshes_later() {
    let b = Build::new(1, 5);
    assert!(b.run(b.put_cmd("l0")).status.success());
    // Every file touched (content kept, ctime moved), then past the ctimes' tick: a hit must
    // read each file and would refresh each row.
    let old = filetime::FileTime::from_system_time(
        std::time::SystemTime::now() - Duration::from_secs(3600),
    );
    for e in walkdir::WalkDir::new(b.root().join("imports/l0")) {
        filetime::set_file_mtime(e.unwrap().path(), old).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    let counters = |what: &str| -> Value {
        let mut c = b.lookup_cmd("l0");
        c.arg("--json");
        let o = b.run(c);
        assert_eq!(o.status.code(), Some(0), "{what}: {}", text(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let c = &v["counters"];
        json!([
            c["walk"]["files_hashed"],
            c["rows_refreshed"],
            c["writes_skipped_busy"],
            c["writes_committed"]
        ])
    };
    let holder = LockHolder::take(&b.db);
    assert_eq!(
        counters("lock held"),
        json!([5, 0, 1, 0]),
        "hashed, not refreshed, skipped, nothing written"
    );
    holder.release();
    // Five files and two directories (the root and d0) touched: seven rows.
    assert_eq!(counters("lock free"), json!([5, 7, 0, 1]));
    assert_eq!(counters("refreshed"), json!([0, 0, 0, 0]));
}

/// `gc` (like `migrate` and `compact`, one transaction each) handles SIGINT: interrupted while
/// it waits for the write lock, it stops waiting, changes nothing, closes the file and exits
/// 130 saying so — it is not killed with the database open.
#[test]
fn sigint_of_a_gc_waiting_for_the_write_lock_ends_it_cleanly() {
    let b = Build::new(1, 5);
    assert!(b.run(b.put_cmd("l0")).status.success());
    let holder = LockHolder::take(&b.db);
    let mut gc = Command::new(BIN)
        .args(["gc", "--keep", "0", "--include-current", "--db"])
        .arg(&b.db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(gc.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("Blocking waiting"), "{line}");
    unsafe { libc::kill(gc.id() as i32, libc::SIGINT) };
    // Handled, it ends within a few seconds while the lock is still held.
    let start = Instant::now();
    let status = loop {
        if let Some(s) = gc.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > Duration::from_secs(20) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    holder.release();
    let Some(status) = status else {
        let _ = gc.kill();
        panic!("gc kept waiting for the lock after SIGINT: {rest}");
    };
    assert_eq!(status.code(), Some(130), "{line}{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert!(rest.contains("nothing was"), "{rest}");
    assert!(b.stats().status.success(), "{}", text(&b.stats()));
    assert_eq!(
        b.run(b.lookup_cmd("l0")).status.code(),
        Some(0),
        "gc dropped nothing"
    );
}

#[test]
fn lookups_during_a_long_put_all_answer() {
    // A put of a tree large enough that lookups overlap it (not timed: every lookup must
    // answer whether or not it overlapped).
    let b = Build::new(4, 3000);
    for i in 1..4 {
        assert!(b.run(b.put_cmd(&format!("l{i}"))).status.success());
    }
    let mut long = b.put_cmd("l0");
    long.stdout(Stdio::null()).stderr(Stdio::null());
    let mut long = long.spawn().unwrap();
    let mut answered = 0;
    while long.try_wait().unwrap().is_none() && answered < 30 {
        let outs = all_at_once((1..4).map(|i| b.lookup_cmd(&format!("l{i}"))).collect());
        for o in &outs {
            assert_eq!(o.status.code(), Some(0), "{}", text(o));
        }
        answered += outs.len();
    }
    assert!(long.wait().unwrap().success());
    assert_eq!(b.run(b.lookup_cmd("l0")).status.code(), Some(0));
    eprintln!("{answered} lookups answered during the put");
}

/// What `stats` says after an interruption: clean, or not closed cleanly; never damaged.
fn assert_clean_or_needs_repair(b: &Build, what: &str) -> bool {
    let s = b.stats();
    let all = text(&s);
    assert!(!all.contains("damaged"), "{what}: {all}");
    if s.status.success() {
        return false;
    }
    assert!(all.contains("not closed cleanly"), "{what}: {all}");
    let c = Command::new(BIN)
        .args(["check", "--db"])
        .arg(&b.db)
        .output()
        .unwrap();
    let all = text(&c);
    assert_eq!(c.status.code(), Some(1), "{what}: {all}");
    assert!(
        all.contains("not closed cleanly") && !all.contains("damaged"),
        "{what}: {all}"
    );
    true
}

/// Sends `sig` to a put (or lookup) of a large tree after `delay`; returns its exit status.
fn interrupt(b: &Build, put: bool, sig: i32, delay: Duration) -> Output {
    let mut c = if put {
        b.put_cmd("l0")
    } else {
        b.lookup_cmd("l0")
    };
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    std::thread::sleep(delay);
    unsafe { libc::kill(child.id() as i32, sig) };
    child.wait_with_output().unwrap()
}

fn signal_round(b: &Build, sig: i32, put: bool, delay: Duration) -> (Option<i32>, bool) {
    use std::os::unix::process::ExitStatusExt;
    let out = interrupt(b, put, sig, delay);
    let status = out.status;
    let needs = assert_clean_or_needs_repair(b, &format!("signal {sig} after {delay:?}"));
    if sig != libc::SIGKILL {
        // Handled: the step finished or stopped between transactions and closed the file. (A
        // signal that lands during process start, before the handler is installed, ends the
        // process before it opened anything.)
        assert!(
            matches!(status.code(), Some(0 | 1 | 130 | 143)) || status.signal() == Some(sig),
            "signal {sig}: {}",
            text(&out)
        );
        assert!(
            !needs,
            "signal {sig}: the handled signal left the file unclean"
        );
    }
    if needs {
        let r = Command::new(BIN)
            .args(["check", "--repair", "--db"])
            .arg(&b.db)
            .output()
            .unwrap();
        assert_eq!(r.status.code(), Some(0), "{}", text(&r));
        assert!(String::from_utf8_lossy(&r.stdout).contains("repaired first"));
        assert!(b.stats().status.success());
    }
    (status.code().or(status.signal().map(|s| 128 + s)), needs)
}

#[test]
fn sigint_sigterm_and_sigkill_of_put_and_lookup_never_look_like_damage() {
    let b = Build::new(2, 2000);
    assert!(b.run(b.put_cmd("l1")).status.success());
    let mut seen = Vec::new();
    for (round, sig) in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL]
        .into_iter()
        .cycle()
        .take(9)
        .enumerate()
    {
        let delay = Duration::from_millis(40 + 60 * round as u64);
        seen.push(signal_round(&b, sig, round % 2 == 0, delay));
    }
    eprintln!("(exit status, needed repair) per round: {seen:?}");
    // Nothing committed was lost.
    assert_eq!(b.run(b.lookup_cmd("l1")).status.code(), Some(0));
}

#[test]
#[ignore = "soak: LAYERCACHE_SIGNAL=INT|TERM|KILL LAYERCACHE_KILLS=N"]
fn signal_soak() {
    let sig = match std::env::var("LAYERCACHE_SIGNAL").as_deref() {
        Ok("TERM") => libc::SIGTERM,
        Ok("KILL") => libc::SIGKILL,
        _ => libc::SIGINT,
    };
    let n: u64 = std::env::var("LAYERCACHE_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let b = Build::new(2, 2000);
    assert!(b.run(b.put_cmd("l1")).status.success());
    let mut rng = common::Rng::new(None);
    let mut codes = std::collections::BTreeMap::new();
    let mut repairs = 0;
    for i in 0..n {
        let delay = Duration::from_millis(5 + rng.below(400));
        let (code, needs) = signal_round(&b, sig, i % 2 == 0, delay);
        *codes.entry(code).or_insert(0u64) += 1;
        repairs += needs as u64;
    }
    assert_eq!(b.run(b.lookup_cmd("l1")).status.code(), Some(0));
    eprintln!("signal {sig}: {n} rounds, exit codes {codes:?}, {repairs} needed repair, 0 damaged");
}

#[test]
fn four_processes_racing_to_create_one_cache() {
    for _ in 0..3 {
        let b = Build::new(4, 1);
        let outs = all_at_once((0..4).map(|i| b.lookup_cmd(&format!("l{i}"))).collect());
        for o in &outs {
            let all = text(o);
            assert!(!all.contains("not a layercache database"), "{all}");
            assert_eq!(o.status.code(), Some(1), "{all}");
        }
        let names: Vec<_> = std::fs::read_dir(b.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("cache"))
            .collect();
        assert_eq!(names, ["cache.redb"], "a temporary file was left");
    }
}

#[test]
fn a_full_disk_during_creation_leaves_no_file() {
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this as root (it mounts a tmpfs)"
        );
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let b = Build::new(1, 1);
    let mnt = b.root().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs in CI"
        );
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let db = mnt.join("cache.redb");
    let o = Command::new(BIN)
        .arg("lookup")
        .arg("--db")
        .arg(&db)
        .arg("--plan")
        .arg(&b.plan)
        .arg("l0")
        .output()
        .unwrap();
    let left: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn the_database_is_private_and_inspection_never_creates_one() {
    let b = Build::new(1, 1);
    assert!(b.run(b.put_cmd("l0")).status.success());
    let mode = std::fs::metadata(&b.db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    common::chmod(&b.db, 0o644);
    let o = b.run(b.lookup_cmd("l0"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("chmod 600"),
        "{}",
        text(&o)
    );
    std::fs::remove_file(&b.db).unwrap();
    for args in [
        vec!["stats"],
        vec!["stats", "--exact"],
        vec!["dump"],
        vec!["check"],
        vec!["check", "--repair"],
        vec!["compact"],
    ] {
        let o = Command::new(BIN)
            .args(&args)
            .arg("--db")
            .arg(&b.db)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(!b.db.exists(), "{args:?} created the database");
    }
}

#[test]
fn a_fifo_as_db_fails_at_once() {
    let b = Build::new(1, 1);
    common::mkfifo(&b.db);
    for mut c in [b.lookup_cmd("l0"), b.put_cmd("l0"), {
        let mut c = Command::new(BIN);
        c.arg("stats").arg("--db").arg(&b.db);
        c
    }] {
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("hung on a FIFO");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("a FIFO"),
            "{}",
            text(&o)
        );
    }
}

#[test]
fn names_are_escaped_in_text_and_exact_in_json() {
    let b = Build::new(0, 0);
    let evil = "evil\n\x1b[2J";
    common::write(b.root(), "imports/e/f", b"x");
    b.write_plan(json!({"oci_layout": "oci", "layers": {evil: {
        "definition": {"run\n\x1b[2J": "x"},
        "base": {"type": "scratch"},
        "imports": [{"key": "k\n\x1b[2J", "path": "imports/e"}]
    }}}));
    std::fs::write(
        &b.manifests,
        json!({"tar\n\x1b[2J": {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": DIGEST, "size": 1}})
            .to_string(),
    )
    .unwrap();
    let put = b.run(b.put_cmd(evil));
    assert_eq!(put.status.code(), Some(0), "{}", text(&put));
    let hit = b.run(b.lookup_cmd(evil));
    // A changed definition field and import key, so the miss names them.
    b.write_plan(json!({"oci_layout": "oci", "layers": {evil: {
        "definition": {"run\n\x1b[2J": "y"},
        "base": {"type": "scratch"},
        "imports": [{"key": "k\n\x1b[2J", "path": "imports/e"}]
    }}}));
    let mut c = b.lookup_cmd(evil);
    c.arg("--explain");
    let miss = b.run(c);
    for o in [&put, &hit, &miss] {
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !out.contains('\x1b') && !err.contains('\x1b'),
            "{}",
            text(o)
        );
        assert!(out.contains("evil\\x0a\\x1b[2J"), "{}", text(o));
        assert!(
            !out.lines().any(|l| l.starts_with("\x1b") || l == "[2J"),
            "{}",
            text(o)
        );
    }
    assert!(
        String::from_utf8_lossy(&hit.stdout).contains("tar\\x0a\\x1b[2J"),
        "{}",
        text(&hit)
    );
    assert!(
        String::from_utf8_lossy(&miss.stdout).contains("run\\x0a\\x1b[2J"),
        "{}",
        text(&miss)
    );
    let mut c = b.lookup_cmd(evil);
    c.arg("--json");
    let j: Value = serde_json::from_slice(&b.run(c).stdout).unwrap();
    assert_eq!(j["layer"], evil);
}

#[test]
fn put_to_a_full_stdout_says_the_entry_was_recorded() {
    if !Path::new("/dev/full").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "/dev/full is missing in CI"
        );
        eprintln!("skipped: no /dev/full here");
        return;
    }
    let b = Build::new(1, 1);
    let mut c = b.put_cmd("l0");
    c.stdout(std::fs::File::create("/dev/full").unwrap());
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("was recorded in the cache, but writing the report failed"),
        "{}",
        text(&o)
    );
    assert_eq!(b.run(b.lookup_cmd("l0")).status.code(), Some(0));
}

#[test]
fn a_put_over_a_large_change_logs_a_few_lines() {
    let b = Build::new(1, 5000);
    assert!(b.run(b.put_cmd("l0")).status.success());
    for f in 0..5000 {
        common::write(
            b.root(),
            &format!("imports/l0/d{}/f{f}", f / 100),
            b"changed",
        );
    }
    // A put of the changed layer: one summary line at the default level, not 5,000 paths.
    let o = b.run(b.put_cmd("l0"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let lines = String::from_utf8_lossy(&o.stderr).lines().count();
    assert!(lines < 10, "{lines} lines on stderr: {}", text(&o));
    let mut c = b.lookup_cmd("l0");
    c.env("LAYERCACHE_LOG", "debug");
    assert!(b.run(c).status.code() == Some(0));
}

#[test]
fn put_refuses_what_a_reader_could_not_decode() {
    let b = Build::new(1, 1);
    let mut plan: Value = serde_json::from_slice(&std::fs::read(&b.plan).unwrap()).unwrap();
    plan["layers"]["l0"]["definition"]["blob"] = Value::String("x".repeat(17 << 20));
    b.write_plan(plan);
    let o = b.run(b.put_cmd("l0"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("16777216-byte limit") && err.contains("nothing was recorded"),
        "{err}"
    );
    // Nothing was stored: a plain miss, not a damaged entry.
    let o = b.run(b.lookup_cmd("l0"));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("not cached"),
        "{}",
        text(&o)
    );

    // 2x10^5 manifest types: refused before anything is opened, by the manifests file's own
    // 16 MiB cap (they need ~30 MB of JSON, more than such an entry could encode to).
    let b = Build::new(1, 1);
    let mut m = serde_json::Map::new();
    for i in 0..200_000 {
        m.insert(
            format!("type{i}"),
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": DIGEST, "size": 1}),
        );
    }
    std::fs::write(&b.manifests, Value::Object(m).to_string()).unwrap();
    let o = b.run(b.put_cmd("l0"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("manifests file") && err.contains("limit"),
        "{err}"
    );
    assert_eq!(b.run(b.lookup_cmd("l0")).status.code(), Some(1));
}
