//! The stat fast path (schema v2): what a lookup reads, counted, under every stat change; and
//! the two racy rules, each shown to be the only thing between a stale row and a false hit.

use crate::common;
use layercache::testing::RawTransactions;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use filetime::FileTime;
use layercache::testing::Store;
use layercache::testing::codec::{self, ROW_LIMIT};
use layercache::testing::schema::{ROWS, Row};
use layercache::{
    Base, Build, Cache, CacheConfig, Change, LayerInputs, LookupMode, MissReason, OverlayDir,
    RelPath, SessionCounters,
};
use redb::ReadableTable;

use crate::mapping;
use mapping::Mapping;

/// More than three of the walk's 4,096-entry windows, so every window after the first must
/// still be matched against its prior rows.
const FILES: usize = 13_000;
/// The least racy slack of the content (writes in flight, `tree::fastpath`).
const CONTENT_SLACK_NS: i64 = layercache::testing::tree::fastpath::IN_FLIGHT_SLACK_NS;

fn an_hour_ago() -> FileTime {
    FileTime::from_system_time(SystemTime::now() - Duration::from_secs(3600))
}

/// Sets every file's mtime an hour back, as an old checkout would have it (not racy).
fn age(root: &Path) {
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        filetime::set_symlink_file_times(e.path(), an_hour_ago(), an_hour_ago()).unwrap();
    }
}

/// A cache in `dir` and a build of one layer `app` whose overlay dir is `src`.
fn one_layer(dir: &Path, src: &Path) -> (Cache, Build) {
    let rootfs = dir.join("rootfs/app");
    std::fs::create_dir_all(&rootfs).unwrap();
    let mut build = Build::new();
    build.add(
        "app",
        LayerInputs {
            definition: serde_json::json!({"run": "build"}),
            base: Base::Scratch,
            imports: vec![],
            overlay_dirs: vec![OverlayDir {
                key: "src".into(),
                source: src.to_path_buf(),
                rootfs_path: rootfs,
            }],
            source_date_epoch: None,
            build_only: false,
            uncacheable: None,
        },
    );
    let cache = Cache::open(CacheConfig {
        db: dir.join("cache.redb"),
        oci_layout: Some(common::shared_oci()),
        ..Default::default()
    })
    .unwrap();
    (cache, build)
}

struct Setup {
    _tmp: tempfile::TempDir,
    src: std::path::PathBuf,
    cache: Cache,
    build: Build,
}

/// The stored row of `path` (layer `app`, overlay `src`), read with redb directly.
fn stored_row(cache: &Cache, path: &str) -> Row {
    let key = RelPath::from_slash_bytes(path.as_bytes());
    let store = layercache::testing::store_of(cache);
    let txn = store.begin_read().unwrap();
    store
        .rows(&txn, "app", "overlay:src")
        .unwrap()
        .map(Result::unwrap)
        .find(|(p, _)| *p == key)
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no stored row for {path}"))
}

/// Closes `cache`, rewrites the stored row of `path` with `f` through redb directly (as a
/// same-tick change, or damage, would leave it), and opens the cache again.
fn edit_row(cache: Cache, path: &str, f: impl FnOnce(&mut Row)) -> Cache {
    let db = layercache::testing::store_of(&cache).path().to_path_buf();
    drop(cache);
    let store = Store::open(&db).unwrap();
    let key = RelPath::from_slash_bytes(path.as_bytes());
    let k = ("app", "overlay:src", key.key());
    let txn = store.begin_write().unwrap();
    {
        let mut t = txn.open_table(ROWS).unwrap();
        let mut row = codec::decode::<Row, ROW_LIMIT>(t.get(k).unwrap().unwrap().value()).unwrap();
        f(&mut row);
        t.insert(k, codec::encode(&row).unwrap().as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
    drop(store);
    Cache::open(CacheConfig {
        db,
        oci_layout: Some(common::shared_oci()),
        ..Default::default()
    })
    .unwrap()
}

impl Setup {
    /// [`edit_row`] on this set-up's cache.
    fn edit_row(self, path: &str, f: impl FnOnce(&mut Row)) -> Setup {
        let Setup {
            _tmp,
            src,
            cache,
            build,
        } = self;
        let cache = edit_row(cache, path, f);
        Setup {
            _tmp,
            src,
            cache,
            build,
        }
    }
}

/// The current stat data of `p` as a row records it, with the given snapshot time.
fn stat_now(p: &Path, snapshot_ns: i64) -> layercache::testing::schema::RowStat {
    let m = std::fs::symlink_metadata(p).unwrap();
    layercache::testing::schema::RowStat {
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        ino: m.ino(),
        dev: m.dev(),
        snapshot_ns,
    }
}

fn setup(files: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..files {
        write(
            &src,
            &format!("d{}/e{}/f{i}.txt", i % 7, i % 13),
            format!("content {i}").as_bytes(),
        );
    }
    age(&src);
    // Past the tick of the last status change (aging sets the ctimes): no row is ctime-racy.
    std::thread::sleep(Duration::from_millis(50));
    let (cache, build) = one_layer(tmp.path(), &src);
    let s = Setup {
        _tmp: tmp,
        src,
        cache,
        build,
    };
    let mut session = s.cache.session(&s.build).unwrap();
    let l = session.lookup("app").unwrap();
    session.put(&l, &common::outputs()).unwrap();
    s
}

/// One lookup in a fresh session: (hit, walk counters, rows refreshed).
fn lookup(
    s: &Setup,
) -> (
    bool,
    layercache::testing::WalkCounters,
    u64,
    Vec<MissReason>,
) {
    let (l, c) = lookup_with(s, LookupMode::FOR_BUILD);
    (l.is_hit(), c.walk, c.rows_refreshed, l.reasons().to_vec())
}

/// One lookup of `mode` in a fresh session, with the session's counters.
fn lookup_with(s: &Setup, mode: LookupMode) -> (layercache::Lookup, SessionCounters) {
    let mut session = s.cache.session(&s.build).unwrap();
    let l = session.lookup_with("app", mode).unwrap();
    (l, session.counters())
}

#[test]
fn no_change_lookup_of_more_than_three_windows_reads_no_file() {
    let s = setup(FILES);
    let (hit, c, refreshed, _) = lookup(&s);
    assert!(hit);
    assert_eq!(c.files_hashed, 0, "{c:?}");
    assert_eq!(c.bytes_hashed, 0);
    assert_eq!(c.stat_matched, FILES as u64);
    assert_eq!(refreshed, 0);
}

#[test]
fn same_size_rewrite_with_mtime_restored_is_caught_by_ctime() {
    let s = setup(200);
    let f = s.src.join("d1/e1/f1.txt");
    let before = std::fs::metadata(&f).unwrap();
    std::fs::write(&f, b"CONTENT 1").unwrap();
    filetime::set_file_mtime(&f, FileTime::from_last_modification_time(&before)).unwrap();
    let after = std::fs::metadata(&f).unwrap();
    assert_eq!(
        FileTime::from_last_modification_time(&after),
        FileTime::from_last_modification_time(&before)
    );
    let (hit, c, _, reasons) = lookup(&s);
    assert!(!hit);
    assert_eq!(
        c.files_hashed, 1,
        "only the file whose ctime changed is read: {c:?}"
    );
    match &reasons[..] {
        [MissReason::OverlayDirContentChanged { diff, .. }] => {
            assert_eq!(diff.modified.len(), 1);
            assert_eq!(diff.modified[0].path.to_string(), "d1/e1/f1.txt");
        }
        other => panic!("{other:?}"),
    }
    // A miss never writes: the same lookup again reads the same file again.
    assert_eq!(lookup(&s).1.files_hashed, 1);
}

#[test]
fn file_written_just_before_its_snapshot_is_racy() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src, "old.txt", b"old");
    age(&src);
    // Written right before the put's walk begins: not older than the snapshot. (Its mtime is
    // set a minute ahead, so the test does not depend on how soon the put starts.)
    write(&src, "fresh.txt", b"fresh");
    filetime::set_file_mtime(
        src.join("fresh.txt"),
        FileTime::from_system_time(SystemTime::now() + Duration::from_secs(60)),
    )
    .unwrap();
    let (cache, build) = one_layer(tmp.path(), &src);
    let mut session = cache.session(&build).unwrap();
    let l = session.lookup("app").unwrap();
    session.put(&l, &common::outputs()).unwrap();

    let mut session = cache.session(&build).unwrap();
    assert!(session.lookup("app").unwrap().is_hit());
    let c = session.counters().walk;
    assert_eq!(c.racy, 1, "{c:?}");
    assert_eq!(c.files_hashed, 1, "{c:?}");
    assert_eq!(c.stat_matched, 1, "{c:?}");
}

/// Git's racy rule: a row taken within the tick of its file's last modification cannot vouch for
/// the content, since a later write in the same tick leaves the stat unchanged. The row here is
/// truly racy (the file is written right before the put's walk begins: its mtime is within the
/// slack of the walk's snapshot, checked), and the later write goes through a shared mapping
/// whose page is already dirty, so size, mtime, ctime and inode stay exactly those of the row
/// (checked): the ctime check cannot see it, only the racy rule can. The lookup must read the
/// file and miss. Timing decides only whether the put starts within the slack and whether
/// writeback intervened; both are checked, and the attempt repeated (at most 20 times).
#[test]
fn same_stat_rewrite_of_a_racy_row_is_read_and_misses() {
    for attempt in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let f = src.join("f");
        let (cache, build) = one_layer(tmp.path(), &src);
        let mut session = cache.session(&build).unwrap();
        let map = Mapping::new(&f, 4096);
        map.fill(b'a'); // the write fault stamps mtime and ctime now
        // One small file: the lookup's walk is short, so the put's walk starts at once.
        let l = session.lookup_for_build("app", LookupMode::CHECK).unwrap();
        session.put(&l, &common::outputs()).unwrap();
        let row = stored_row(&cache, "f");
        let st = row.stat.unwrap();
        assert_eq!(row.digest, *blake3::hash(&[b'a'; 4096]).as_bytes());
        if st.mtime_ns < st.snapshot_ns - CONTENT_SLACK_NS {
            eprintln!("attempt {attempt}: the put began too late, the row is not racy; again");
            continue;
        }
        map.fill(b'b');
        let now = stat_now(&f, st.snapshot_ns);
        if now != st {
            eprintln!("attempt {attempt}: the mapped write changed the stat ({now:?}); again");
            continue;
        }
        let mut session = cache.session(&build).unwrap();
        let l = session.lookup("app").unwrap();
        let c = session.counters().walk;
        assert!(!l.is_hit(), "a same-stat rewrite of a racy row was a hit");
        match l.reasons() {
            [MissReason::OverlayDirContentChanged { diff, .. }] => {
                assert_eq!(diff.modified.len(), 1, "{diff}");
                assert_eq!(diff.modified[0].path.to_string(), "f");
                assert_eq!(diff.modified[0].changes, vec![Change::Content]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!((c.racy, c.files_hashed, c.stat_matched), (1, 1, 0), "{c:?}");
        return;
    }
    panic!("in 20 attempts, never a racy row with a same-stat rewrite after it");
}

/// The racy rule for the ctime: a row taken within the tick of an entry's last status change
/// cannot vouch for its xattrs (or link target), since a later setxattr in the same tick leaves
/// inode and ctime unchanged. The stored row is given exactly the file's stat after a new
/// setxattr (what a same-tick change leaves) and a snapshot inside the ctime's tick: the lookup
/// must read the xattrs again and miss. The same row with a snapshot a second after the ctime
/// does vouch (the fast path trusts a settled ctime): so the racy rule alone decides.
#[test]
fn xattr_change_in_the_tick_of_a_ctime_racy_row_misses() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let f = write(&src, "f", b"same content");
    if let Err(e) = xattr::set(&f, "user.v", b"1") {
        eprintln!("skipped: this file system refuses user xattrs ({e})");
        return;
    }
    age(&src);
    std::thread::sleep(Duration::from_millis(50)); // past the tick of the last ctime
    let (cache, build) = one_layer(tmp.path(), &src);
    let mut session = cache.session(&build).unwrap();
    let l = session.lookup("app").unwrap();
    session.put(&l, &common::outputs()).unwrap();
    xattr::set(&f, "user.v", b"2").unwrap();
    let ctime = stat_now(&f, 0).ctime_ns;

    // Control: the row settled (snapshot a second after the ctime) vouches for the xattrs.
    let cache = edit_row(cache, "f", |r| {
        r.stat = Some(stat_now(&f, ctime + 1_000_000_000))
    });
    let mut session = cache.session(&build).unwrap();
    assert!(
        session.lookup("app").unwrap().is_hit(),
        "the constructed row should be vouched for by its settled ctime"
    );

    // Racy: the snapshot in the ctime's tick.
    let cache = edit_row(cache, "f", |r| r.stat = Some(stat_now(&f, ctime)));
    let mut session = cache.session(&build).unwrap();
    let l = session.lookup("app").unwrap();
    assert!(
        !l.is_hit(),
        "an xattr change after a ctime-racy row was a hit"
    );
    match l.reasons() {
        [MissReason::OverlayDirContentChanged { diff, .. }] => {
            assert_eq!(diff.modified.len(), 1, "{diff}");
            assert_eq!(diff.modified[0].path.to_string(), "f");
            assert_eq!(diff.modified[0].changes, vec![Change::Xattrs]);
        }
        other => panic!("{other:?}"),
    }

    // Racy through the slack alone: the snapshot 10 ms after a sub-second ctime is still in
    // its tick (`timestamp_slack_ns`: 20 ms where timestamps have sub-second parts), so the row
    // cannot vouch either (kills `timestamp_slack_ns -> 0` / `-> 1`, which the content rule's
    // 2 s in-flight slack no longer shows).
    assert_ne!(
        ctime % 1_000_000_000,
        0,
        "ext4-like sub-second ctime expected"
    );
    let cache = edit_row(cache, "f", |r| {
        r.stat = Some(stat_now(&f, ctime + 10_000_000))
    });
    let mut session = cache.session(&build).unwrap();
    assert!(
        !session.lookup("app").unwrap().is_hit(),
        "an xattr change after a row taken 10 ms into the ctime's tick was a hit"
    );
}

/// A stored row altered in place (same row count, another content digest) while its stat still
/// matches the file: the stat fast path reuses the stored digest (200 stat matches, checked), so
/// the diff sees no change; only the entry's Merkle root can tell. The lookup must miss as a
/// damaged entry, not hit.
#[test]
fn a_row_altered_in_place_misses_as_damaged_although_its_stat_matches() {
    let s = setup(200).edit_row("d1/e1/f1.txt", |r| r.digest[0] ^= 1);
    let (hit, c, _, reasons) = lookup(&s);
    // 200 files hashed: once the rows prove damaged, what a put is checked against comes from
    // a walk that reads every file (damaged rows vouch for nothing).
    assert_eq!(
        (c.files_hashed, c.stat_matched),
        (200, 200),
        "the altered digest must be vouched for by stat: {c:?}"
    );
    assert!(!hit, "a row altered in place was a hit");
    assert!(
        matches!(&reasons[..], [MissReason::DamagedEntry { .. }]),
        "{reasons:?}"
    );
}

#[test]
fn touch_without_change_hits_refreshes_and_then_reads_nothing() {
    let s = setup(500);
    let f = s.src.join("d2/e2/f2.txt");
    // Touched (the ctime moves) to a time past the content's racy slack (2 s, writes in
    // flight: `tree::fastpath`), so the refreshed row vouches for it.
    let recent = FileTime::from_system_time(SystemTime::now() - Duration::from_secs(3));
    filetime::set_file_mtime(&f, recent).unwrap();
    // Past the racy window of the refresh that follows.
    std::thread::sleep(Duration::from_millis(100));
    let (hit, c, refreshed, _) = lookup(&s);
    assert!(hit);
    assert_eq!(c.files_hashed, 1, "{c:?}");
    assert_eq!(refreshed, 1);
    let (hit, c, refreshed, _) = lookup(&s);
    assert!(hit);
    assert_eq!(c.files_hashed, 0, "{c:?}");
    assert_eq!(refreshed, 0);
}

#[test]
fn every_file_touched_hits_after_one_hashing_pass() {
    let s = setup(300);
    for e in walkdir::WalkDir::new(&s.src) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            filetime::set_file_mtime(e.path(), an_hour_ago()).unwrap(); // ctime moves
        }
    }
    // Past the ctimes' tick, so the refresh's stat data vouch for the metadata too.
    std::thread::sleep(Duration::from_millis(50));
    let (l, c) = lookup_with(&s, LookupMode::FOR_BUILD);
    assert!(l.is_hit());
    assert_eq!(c.walk.files_hashed, 300);
    assert_eq!(c.rows_refreshed, 300);
    assert_eq!(c.writes_committed, 1, "one batch, with the use: {c:?}");
    let (l, c) = lookup_with(&s, LookupMode::FOR_BUILD);
    assert!(l.is_hit());
    assert_eq!(c.walk.files_hashed, 0, "{c:?}");
    assert_eq!(
        c.writes_committed, 0,
        "nothing to refresh, the use recorded: {c:?}"
    );
}

/// The stat fast path's blind spot (a row whose stat data matches while its digest is of other
/// content: planted here, as a tool restoring stat data after a rewrite would leave it) fools
/// a normal lookup; a `VERIFY` lookup reads every file, names the row, and clears its stat data
/// in one write, so the next normal lookup reads that file and misses.
#[test]
fn a_verify_lookup_names_a_lying_row_and_clears_its_stat_data() {
    let s = setup(20);
    let path = "d0/e0/f0.txt";
    let f = s.src.join(path);
    write(&s.src, path, b"content X"); // the same size as "content 0"
    filetime::set_file_mtime(&f, an_hour_ago()).unwrap();
    std::thread::sleep(Duration::from_millis(50)); // past the ctime's tick
    let now_ns = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let s = s.edit_row(path, |r| r.stat = Some(stat_now(&f, now_ns)));
    let (hit, c, _, _) = lookup(&s);
    assert!(
        hit && c.files_hashed == 0,
        "the planted lie must fool the fast path: {c:?}"
    );

    let (l, c) = lookup_with(&s, LookupMode::VERIFY);
    assert!(!l.is_hit());
    let lied: Vec<String> = l.lying_rows.iter().map(|r| r.path.to_string()).collect();
    assert_eq!(lied, [path]);
    assert_eq!(c.walk.files_hashed, 20, "verify reads every file: {c:?}");
    assert_eq!(
        c.writes_committed, 1,
        "the stat data cleared in one write: {c:?}"
    );
    assert!(stored_row(&s.cache, path).stat.is_none());

    let (l, c) = lookup_with(&s, LookupMode::FOR_BUILD);
    assert!(!l.is_hit(), "the lying row must not be trusted again");
    assert_eq!(
        c.walk.files_hashed, 1,
        "only the cleared row is read: {c:?}"
    );
}

#[test]
fn lookup_and_put_after_a_small_change_read_only_that_file_once() {
    let s = setup(400);
    write(&s.src, "d0/e0/f0.txt", b"changed content");
    filetime::set_file_mtime(s.src.join("d0/e0/f0.txt"), an_hour_ago()).unwrap();
    let mut session = s.cache.session(&s.build).unwrap();
    let l = session.lookup("app").unwrap();
    assert!(!l.is_hit());
    let before = session.counters().walk.files_hashed;
    assert_eq!(before, 1);
    session.put(&l, &common::outputs()).unwrap();
    // The lookup read the changed file; the put reuses that digest (its stat data is unchanged
    // since, and not racy), so it reads nothing.
    assert_eq!(session.counters().walk.files_hashed - before, 0);
    assert!(lookup(&s).0);
}

#[test]
fn xattr_change_is_seen_although_the_content_is_stat_matched() {
    let s = setup(50);
    let f = s.src.join("d3/e3/f3.txt");
    if xattr::set(&f, "user.probe", b"1").is_err() {
        eprintln!("skipped: this file system refuses user xattrs");
        return;
    }
    // setxattr moves the ctime, so the row cannot vouch for the xattrs (nor the content).
    let (hit, c, _, reasons) = lookup(&s);
    assert!(!hit);
    assert_eq!(c.files_hashed, 1, "{c:?}");
    match &reasons[..] {
        [MissReason::OverlayDirContentChanged { diff, .. }] => {
            assert_eq!(diff.modified[0].path.to_string(), "d3/e3/f3.txt");
            assert_eq!(diff.modified[0].changes, vec![layercache::Change::Xattrs]);
        }
        other => panic!("{other:?}"),
    }
}

/// A hit stores new stat data for rows that could not vouch next time although their stat is
/// unchanged (the refresh decision of `fastpath::needs_refresh`): a directory row taken within
/// its ctime's tick (ctime-racy), and a file row whose mtime is at or after its snapshot (racy
/// content) while its ctime is settled. Both rows are refreshed by the first lookup; the next
/// lookup finds the directory vouched for (not refreshed again) while the file, its mtime an
/// hour ahead, stays racy until that hour is past.
#[test]
fn a_hit_refreshes_racy_rows_whose_stat_is_unchanged() {
    let Setup {
        _tmp,
        src,
        cache,
        build,
    } = setup(20);
    let f = src.join("d1/e1/f1.txt");
    filetime::set_file_mtime(
        &f,
        FileTime::from_system_time(SystemTime::now() + Duration::from_secs(3600)),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50)); // past the tick of that ctime
    let ctime = stat_now(&f, 0).ctime_ns;
    // Settled ctime (snapshot a second after it), racy mtime (an hour after the snapshot).
    let cache = edit_row(cache, "d1/e1/f1.txt", |r| {
        r.stat = Some(stat_now(&f, ctime + 1_000_000_000))
    });
    let d = src.join("d1");
    let dir_ctime = stat_now(&d, 0).ctime_ns;
    let cache = edit_row(cache, "d1", |r| r.stat = Some(stat_now(&d, dir_ctime)));
    let s = Setup {
        _tmp,
        src,
        cache,
        build,
    };
    let (hit, c, refreshed, reasons) = lookup(&s);
    assert!(hit, "{reasons:?}");
    assert_eq!((c.files_hashed, c.racy), (1, 1), "{c:?}");
    assert_eq!(
        refreshed, 2,
        "the racy file row and the ctime-racy directory row"
    );
    let (hit, c, refreshed, _) = lookup(&s);
    assert!(hit);
    assert_eq!(
        (c.files_hashed, refreshed),
        (1, 1),
        "only the file is still racy: {c:?}"
    );
}

/// The racy rule's slack (`fastpath::timestamp_slack_ns`): a file whose mtime lies just
/// *before* its row's snapshot — within one timestamp tick of it — is still racy, since a
/// write stamped in the same tick after the snapshot began would carry the same mtime. Two
/// rows: one with a sub-second mtime 10 ms before its snapshot (within the 20 ms slack), one
/// with a whole-second mtime 1.5 s before its snapshot (within the 2 s slack for file systems
/// with coarse timestamps). Both must be hashed on the next lookup, not reused.
#[test]
fn a_row_whose_mtime_is_within_one_tick_before_its_snapshot_is_racy() {
    let Setup {
        _tmp,
        src,
        cache,
        build,
    } = setup(20);
    let base = SystemTime::now() - Duration::from_secs(3600);
    let secs = base
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let fine = src.join("d1/e1/f1.txt");
    let coarse = src.join("d2/e2/f2.txt");
    filetime::set_file_mtime(&fine, FileTime::from_unix_time(secs as i64, 123_456_789)).unwrap();
    filetime::set_file_mtime(&coarse, FileTime::from_unix_time(secs as i64, 0)).unwrap();
    let mtime = |p: &Path| stat_now(p, 0).mtime_ns;
    let (fine_mtime, coarse_mtime) = (mtime(&fine), mtime(&coarse));
    assert_eq!(
        fine_mtime % 1_000_000_000,
        123_456_789,
        "sub-second mtime kept"
    );
    let cache = edit_row(cache, "d1/e1/f1.txt", |r| {
        r.stat = Some(stat_now(&fine, fine_mtime + 10_000_000))
    });
    let cache = edit_row(cache, "d2/e2/f2.txt", |r| {
        r.stat = Some(stat_now(&coarse, coarse_mtime + 1_500_000_000))
    });
    let s = Setup {
        _tmp,
        src,
        cache,
        build,
    };
    let (hit, c, _, reasons) = lookup(&s);
    assert!(hit, "{reasons:?}");
    assert_eq!(
        (c.files_hashed, c.racy),
        (2, 2),
        "both rows are racy through the slack alone: {c:?}"
    );
}

/// Writes in flight (`tree::fastpath::IN_FLIGHT_SLACK_NS`): a `write()` stamps the mtime when it
/// starts, and a stalled one can still be landing a second later. A row whose file's mtime is
/// 1 s before its snapshot (past any timestamp tick) must not vouch for the content: the next
/// lookup hashes the file. With the old 20 ms slack it was trusted.
#[test]
fn a_file_modified_one_second_before_its_snapshot_is_hashed() {
    let s = setup(20);
    let f = s.src.join("d1/e1/f1.txt");
    let mtime = stat_now(&f, 0).mtime_ns;
    let s = s.edit_row("d1/e1/f1.txt", |r| {
        r.stat = Some(stat_now(&f, mtime + 1_000_000_000))
    });
    let (hit, c, _, reasons) = lookup(&s);
    assert!(hit, "{reasons:?}");
    assert_eq!((c.files_hashed, c.racy), (1, 1), "{c:?}");
    // Two and a half seconds before: settled, trusted by stat.
    let s = s.edit_row("d1/e1/f1.txt", |r| {
        r.stat = Some(stat_now(&f, mtime + 2_500_000_000))
    });
    let (hit, c, _, _) = lookup(&s);
    assert!(hit);
    assert_eq!((c.files_hashed, c.racy), (0, 0), "{c:?}");
}

/// A row whose stat matches and whose content the mtime still vouches for, but whose ctime is
/// racy (taken in the tick of the last status change), cannot vouch for the metadata at the
/// next walk: a hit refreshes it, and the refreshed row is settled (kills `||` → `&&` between
/// the stat and the metadata rule in `fastpath::needs_refresh`).
#[test]
fn a_hit_refreshes_a_row_whose_only_racy_time_is_its_ctime() {
    let Setup {
        _tmp,
        src,
        cache,
        build,
    } = setup(20);
    let f = src.join("d1/e1/f1.txt");
    let ctime = stat_now(&f, 0).ctime_ns;
    // Snapshot at the ctime itself: ctime racy; the mtime (generated in the past) is not.
    let cache = edit_row(cache, "d1/e1/f1.txt", |r| {
        r.stat = Some(stat_now(&f, ctime))
    });
    let s = Setup {
        _tmp,
        src,
        cache,
        build,
    };
    let (hit, _, refreshed, reasons) = lookup(&s);
    assert!(hit, "{reasons:?}");
    assert_eq!(refreshed, 1, "the ctime-racy row is refreshed");
    let (hit, _, refreshed, _) = lookup(&s);
    assert!(hit);
    assert_eq!(refreshed, 0, "the refreshed row is settled");
}
