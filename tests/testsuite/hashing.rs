//! Hashing one regular file (`src/tree/hash.rs`), through real walks of real files: which files
//! are read once and which twice (and when), and what a file becomes when it is swapped or
//! changed between the walk's `lstat` and the end of its reads.
//!
//! Work is counted with inotify (opens and reads of the file), never timed; the one assertion on
//! time is the property itself (the second read of a fresh file comes after its tick). A swap is
//! placed right after the walk's first read closed the file (inotify) and before the end of that
//! file's tick, which is before any second read a correct walk makes; an attempt whose timing
//! missed that window is repeated.

use crate::common;

use crate::inotify;

use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use inotify::{Event, IN_CLOSE_NOWRITE, IN_OPEN, Watch};
use layercache::EntryKind;
use layercache::testing::{TreeWalk, WalkedEntry};

/// Content of the files hashed here: 64 KiB, one small-file read buffer, not all one byte.
fn content() -> Vec<u8> {
    (0..64u32 << 10).map(|i| (i % 251) as u8).collect()
}

fn walk(root: &Path) -> layercache::Result<Vec<WalkedEntry>> {
    TreeWalk::new(root)?.collect()
}

/// The entry of `name` in a walk.
fn entry<'a>(entries: &'a [WalkedEntry], name: &str) -> &'a WalkedEntry {
    entries
        .iter()
        .find(|e| e.path.to_slash_bytes() == name.as_bytes())
        .unwrap_or_else(|| panic!("{name} not walked"))
}

/// The kernel's coarse real-time clock, the one file timestamps are taken from, in ns.
fn coarse_now_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) },
        0
    );
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// The fine real-time clock in ns (never behind the coarse one).
fn fine_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn ctime_ns(p: &Path) -> i64 {
    let m = std::fs::symlink_metadata(p).unwrap();
    m.ctime() * 1_000_000_000 + m.ctime_nsec()
}

/// How long after a change its timestamp tick may last, as the walk reckons it: 20 ms for
/// file systems with fine timestamps, 2 s for a whole-second timestamp.
fn slack_ns(time_ns: i64) -> i64 {
    if time_ns.rem_euclid(1_000_000_000) == 0 {
        2_000_000_000
    } else {
        20_000_000
    }
}

/// Waits until an event matching `mask` arrives and returns every event read until then (it
/// included); `None` once `done` is set (the walk ended) without one, so a walk that never reads
/// the file fails the test at once instead of after a long timeout.
fn events_until(watch: &Watch, mask: u32, done: &AtomicBool) -> Option<Vec<Event>> {
    let mut seen = Vec::new();
    loop {
        let finished = done.load(Ordering::SeqCst);
        let batch = watch.pending();
        let hit = batch.iter().any(|e| e.mask & mask != 0);
        seen.extend(batch);
        if hit {
            return Some(seen);
        }
        if finished {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn count(events: &[Event], mask: u32) -> usize {
    events.iter().filter(|e| e.mask & mask != 0).count()
}

/// A file last changed well before the walk (its ctime older than the tick slack) is opened
/// exactly once: its stat cannot hide a same-tick rewrite, so no second read is needed.
#[test]
fn a_file_last_changed_before_the_current_tick_is_opened_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    let f = common::write(&dir, "f", &content());
    let c = ctime_ns(&f);
    while coarse_now_ns() <= c + slack_ns(c) + 10_000_000 {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Closes are watched too: inotify merges an event into an identical one still unread, so
    // two opens in a row would count as one.
    let watch = Watch::new();
    watch.add(&f, IN_OPEN | IN_CLOSE_NOWRITE);
    let entries = walk(&dir).unwrap();
    let file = entry(&entries, "f");
    assert!(!file.unstable);
    assert_eq!(file.row.digest, *blake3::hash(&content()).as_bytes());
    assert_eq!(
        count(&watch.pending(), IN_OPEN),
        1,
        "a settled file must be read once"
    );
}

/// A file changed within the current tick (written right before the walk) is opened twice, and
/// the second read starts only after the tick of its ctime is over (when any further write gets
/// a new timestamp): two equal reads around that moment mean no write was in flight. Decisive
/// when the first read came within 5 ms of the file's ctime (else repeated).
#[test]
fn a_file_changed_within_the_current_tick_is_read_again_after_the_tick() {
    for attempt in 0..50 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("src");
        let f = common::write(&dir, "f", &content());
        let c = ctime_ns(&f);
        let watch = Watch::new();
        watch.add(&f, IN_OPEN | IN_CLOSE_NOWRITE);
        let done = AtomicBool::new(false);
        let (entries, first_open, events) = std::thread::scope(|sc| {
            let helper = sc.spawn(|| {
                let ev = events_until(&watch, IN_OPEN, &done);
                (coarse_now_ns(), ev)
            });
            let entries = walk(&dir).unwrap();
            let end = fine_now_ns();
            done.store(true, Ordering::SeqCst);
            let (first_open, ev) = helper.join().unwrap();
            let mut ev = ev.expect("the walk never opened the file");
            ev.extend(watch.pending());
            ((entries, end), first_open, ev)
        });
        let (entries, end) = entries;
        if first_open - c > 5_000_000 {
            eprintln!(
                "attempt {attempt}: first read {} ms after the change; again",
                (first_open - c) / 1_000_000
            );
            continue;
        }
        let file = entry(&entries, "f");
        assert!(!file.unstable);
        assert_eq!(file.row.digest, *blake3::hash(&content()).as_bytes());
        assert_eq!(
            count(&events, IN_OPEN),
            2,
            "a file changed in the current tick must be read twice"
        );
        assert!(
            end >= c + slack_ns(c),
            "the walk ended {} ms after the file's change, within its tick: the second read did \
             not wait for the tick to end",
            (end - c) / 1_000_000
        );
        return;
    }
    panic!("in 50 attempts, the walk never read the file within 5 ms of its change");
}

/// What the walk made of a fresh file `src/f` that a swap changed right after the first read
/// closed it, before that file's tick was over (so before any second read of a correct walk).
struct Swapped<T> {
    /// The walk's result (run under a 60 s watchdog: a hang fails the test).
    result: layercache::Result<Vec<WalkedEntry>>,
    /// What `prepare` returned.
    prepared: T,
    /// The inotify events (opens and closes) of the file the walk first read, wherever it was
    /// moved, over the whole walk.
    events: Vec<Event>,
    _tmp: tempfile::TempDir,
}

/// Writes a fresh `src/f` in a new temporary directory, runs `prepare(tmp)`, walks `src`, and
/// runs `swap(src, f)` right after the walk's first read of `f` closed it. Repeats until the swap
/// landed before the end of the tick of `f`'s ctime.
fn swapped_between_reads<T>(prepare: fn(&Path) -> T, swap: fn(&Path, &Path)) -> Swapped<T> {
    for attempt in 0..50 {
        let tmp = tempfile::tempdir().unwrap();
        let prepared = prepare(tmp.path());
        let dir = tmp.path().join("src");
        let f = common::write(&dir, "f", &content());
        let ctime = ctime_ns(&f);
        let watch = Watch::new();
        watch.add(&f, IN_OPEN | IN_CLOSE_NOWRITE);
        let done = Arc::new(AtomicBool::new(false));
        let helper = {
            let (f, dir, done) = (f.clone(), dir.clone(), done.clone());
            std::thread::spawn(move || {
                let events = events_until(&watch, IN_CLOSE_NOWRITE, &done)?;
                swap(&dir, &f);
                Some((fine_now_ns(), events, watch))
            })
        };
        let walked = dir.clone();
        let result = common::watchdog(60, move || walk(&walked));
        done.store(true, Ordering::SeqCst);
        let (swapped_at, mut events, watch) = helper
            .join()
            .unwrap()
            .expect("the walk never read the file");
        events.extend(watch.pending());
        if swapped_at >= ctime + slack_ns(ctime) {
            eprintln!(
                "attempt {attempt}: swapped {} ms after the change, after its tick; again",
                (swapped_at - ctime) / 1_000_000
            );
            continue;
        }
        return Swapped {
            result,
            prepared,
            events,
            _tmp: tmp,
        };
    }
    panic!("in 50 attempts, the swap never landed within the tick of the file's change");
}

fn nothing(_: &Path) {}

/// A file removed between its two reads (after the walk saw it) is unstable, not an error: a
/// build tool deleting a temporary file while it is looked up must not fail the lookup.
#[test]
fn a_file_removed_between_its_two_reads_is_unstable_not_an_error() {
    let s = swapped_between_reads(nothing, |_, f| std::fs::remove_file(f).unwrap());
    let entries = s
        .result
        .unwrap_or_else(|e| panic!("a removed file failed the walk: {e}"));
    assert!(entry(&entries, "f").unstable);
}

/// A file replaced by a FIFO between its two reads is opened without blocking (no writer will
/// ever come), found not to be a regular file, and is unstable; the walk does not hang.
#[test]
fn a_file_replaced_by_a_fifo_between_its_two_reads_is_unstable_and_never_blocks() {
    let s = swapped_between_reads(nothing, |dir, f| {
        let fifo = dir.join("fifo.tmp");
        common::mkfifo(&fifo);
        std::fs::rename(&fifo, f).unwrap();
    });
    let entries = s.result.unwrap();
    let file = entry(&entries, "f");
    assert_eq!(file.row.kind, EntryKind::File, "as the walk's lstat saw it");
    assert!(file.unstable);
}

/// A file replaced by a symlink between its two reads (the symlink points to the very file it
/// replaced, moved aside) is unstable, and the symlink is never followed: the moved file is
/// opened once, by the first read.
#[test]
fn a_file_replaced_by_a_symlink_between_its_two_reads_is_unstable_and_never_followed() {
    let s = swapped_between_reads(nothing, |dir, f| {
        std::fs::rename(f, dir.join("f.moved")).unwrap();
        symlink("f.moved", f).unwrap();
    });
    let entries = s
        .result
        .unwrap_or_else(|e| panic!("a file replaced by a symlink failed the walk: {e}"));
    assert!(entry(&entries, "f").unstable);
    assert_eq!(
        count(&s.events, IN_OPEN),
        1,
        "the symlink was followed to the moved file"
    );
}

/// A file replaced by another regular file between its two reads is unstable, and the
/// replacement is never read (it may be opened, but `fstat` says it is not the file the walk saw
/// before a byte is read; inotify counts the reads).
#[test]
fn a_file_replaced_by_another_file_between_its_two_reads_is_unstable_and_the_other_never_read() {
    let s = swapped_between_reads(
        |tmp| {
            let other = common::write(tmp, "other", b"another file, never to be read");
            let watch = Watch::new();
            watch.add(&other, libc::IN_ACCESS);
            watch
        },
        |dir, f| std::fs::rename(dir.parent().unwrap().join("other"), f).unwrap(),
    );
    let entries = s.result.unwrap();
    assert!(entry(&entries, "f").unstable);
    assert_eq!(
        count(&s.prepared.pending(), libc::IN_ACCESS),
        0,
        "the replacement was read"
    );
}

/// A settled file (read once) rewritten in place while it is read (same size, new mtime and
/// ctime) is unstable: its stat after the read is not the one the walk saw. Decisive when a read
/// of the file completed after the write (inotify: a read event after the write's); repeated
/// until so.
#[test]
fn a_settled_file_rewritten_while_it_is_read_is_unstable() {
    const LEN: usize = 32 << 20;
    for attempt in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("src");
        let f = common::write(&dir, "big", &vec![0u8; LEN]);
        let c = ctime_ns(&f);
        while coarse_now_ns() <= c + slack_ns(c) + 10_000_000 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let watch = Watch::new();
        watch.add(&f, libc::IN_ACCESS | libc::IN_MODIFY);
        let done = AtomicBool::new(false);
        let (entries, mut events) = std::thread::scope(|sc| {
            let helper = sc.spawn(|| {
                let ev = events_until(&watch, libc::IN_ACCESS, &done)?;
                use std::os::unix::fs::FileExt;
                let w = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
                w.write_all_at(&[0xff; 4096], (LEN / 2) as u64).unwrap();
                Some(ev)
            });
            let entries = walk(&dir).unwrap();
            done.store(true, Ordering::SeqCst);
            (
                entries,
                helper
                    .join()
                    .unwrap()
                    .expect("the walk never read the file"),
            )
        });
        events.extend(watch.pending());
        let modified = events
            .iter()
            .position(|e| e.mask & libc::IN_MODIFY != 0)
            .expect("the write made no event");
        if count(&events[modified..], libc::IN_ACCESS) == 0 {
            eprintln!("attempt {attempt}: the write came after the last read; again");
            continue;
        }
        assert!(
            entry(&entries, "big").unstable,
            "a file rewritten while it was read was recorded"
        );
        return;
    }
    panic!("in 20 attempts, the write never landed while the file was read");
}

/// A file the walk saw but cannot open is an error naming it, never an unstable entry (which a
/// put would report as "changed while reading"). `/proc/sys/vm/drop_caches` is a regular file
/// (mode 0200) whose open for reading the kernel refuses even to root; the test says why it
/// skips where that is not so.
#[test]
fn a_file_that_cannot_be_opened_is_an_error_naming_it_not_an_unstable_entry() {
    let f = Path::new("/proc/sys/vm/drop_caches");
    match std::fs::File::open(f) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
        other => {
            eprintln!(
                "skipped: opening {} is not refused here ({other:?})",
                f.display()
            );
            return;
        }
    }
    match walk(f) {
        Err(e) => assert!(
            matches!(&e, layercache::Error::Io { op: "cannot open", path, .. } if path == f),
            "{e}"
        ),
        Ok(entries) => panic!("not an error: {entries:?}"),
    }
}

/// A file that opens but whose read fails is an error naming it, at once: the failed read is
/// not retried (only an interrupted one is). `/sys/class/net/lo/speed` is a regular file (a
/// sysfs attribute of 4096 bytes) whose read the kernel fails with `EINVAL`; the test says why
/// it skips where that is not so. sysfs may give the file new timestamps when it is opened, so
/// the walk finds it changed and never reads it: such an attempt is repeated.
#[test]
fn a_file_whose_read_fails_is_an_error_naming_it() {
    let f = Path::new("/sys/class/net/lo/speed");
    match std::fs::read(f) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        other => {
            eprintln!(
                "skipped: reading {} does not fail with EINVAL here ({other:?})",
                f.display()
            );
            return;
        }
    }
    for attempt in 0..20 {
        match common::watchdog(20, move || walk(f)) {
            Err(e) => {
                assert!(
                    matches!(&e, layercache::Error::Io { op: "cannot read", path, .. } if path == f),
                    "{e}"
                );
                return;
            }
            Ok(entries) if entries.len() == 1 && entries[0].unstable => {
                eprintln!("attempt {attempt}: the file's stat changed when opened; again");
            }
            Ok(entries) => panic!("not an error: {entries:?}"),
        }
    }
    panic!("in 20 attempts, the walk never read the file with its stat unchanged");
}
