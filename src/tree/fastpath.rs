//! The stat fast path: when a stored row's stat data vouches for what a walk would otherwise read
//! again, and the racy rule that limits it. This is the one place the rule is explained; every
//! other module links here.
//!
//! Owns: [`FastPath`] (may a stored content digest be reused?), [`vouches_for_metadata`] (may
//! stored xattrs and link target be reused?), [`vouches_for_listing`] (may a directory's stored
//! children stand for its `getdents`?), [`needs_refresh`] (should a hit store new stat data?),
//! and the clock and timestamp granularity they rely on. All three are built on one
//! definition of "the same file, unchanged" ([`same_stat`]), so the walk's reuse and the
//! cache's refresh cannot drift apart.
//!
//! Must never: read a file, compare content, or let stat data into a digest or a diff — stat
//! data only decides what may be skipped, never what is equal.
//!
//! # The racy rule
//!
//! Each row keeps the stat data it was taken under (mtime and ctime in ns, inode, device) and the
//! moment its walk began (`snapshot_ns`, from `CLOCK_REALTIME_COARSE`, the clock the kernel
//! stamps files with). A file written within the same timestamp tick *after* its row was taken
//! keeps its size and timestamps, so its stat cannot tell the write happened. Hence git's rule: a
//! row whose file was modified at or after (about) the moment its snapshot began is *racy* and
//! never vouches for the content by stat alone — the file is hashed
//! ([`content_is_racy`]). "About" is a slack for timestamp granularity: 20 ms (above the
//! kernel's coarse clock tick) for fine timestamps, 2 s when the mtime has no sub-second part (a
//! file system with one- or two-second timestamps) — and for the content, never less than 2 s
//! ([`IN_FLIGHT_SLACK_NS`], writes in flight, below).
//!
//! The same rule applies to the ctime for what the ctime vouches for ([`metadata_is_racy`]):
//! every change of xattrs sets the ctime, and a symlink cannot be retargeted in place (a new
//! link is a new inode), so a row with the same type, inode, device and ctime, not taken within
//! the ctime's tick, vouches for the entry's xattrs and link target.
//!
//! # Writes in flight
//!
//! A `write()` sets the mtime and ctime when it starts, before its data lands; one that stalls
//! (dirty-page throttling can hold a writer for hundreds of ms on a loaded machine) leaves an
//! in-place overwrite invisible to stat until its data is all there. A row taken after such a
//! write began and before it ended holds a digest of a half-written file under the stat data of
//! the whole one, and the next lookup would reuse it: a false hit (seen as hits in
//! `tests/reliability_races.rs`, `file_rewritten_while_hashed`, a few in 800 rounds, with the
//! old 20 ms slack). So the content slack is at least [`IN_FLIGHT_SLACK_NS`] (2 s): a row
//! whose file changed less than that before its snapshot never vouches for the content, and a
//! file written during a build is read again by the next lookup until its row is refreshed
//! after it settled. A write stalled for longer than that stays invisible to stat — the limit
//! of any stat cache, git's included. What the ctime vouches for (xattrs, link target) keeps the
//! tick's slack: `setxattr` and `symlink` do not land in pieces.
//!
//! # Directories: the listing proof
//!
//! Creating, removing or renaming an entry in a directory sets the directory's mtime and ctime
//! (POSIX; git's untracked cache rests on the same rule), and nothing can set the ctime back. So
//! a directory whose inode, device, mtime and ctime equal its stored row's ([`same_stat`]) has
//! had no entry created, removed or renamed in it since that row's stat was taken — and the
//! rows stored below it name exactly its entries of then, because every entry change during the
//! walk that took them left the directory's mtime at or after that walk's snapshot, which makes
//! the row racy here ([`listing_is_racy`]: the content's rule on the mtime, the metadata's on
//! the ctime). [`vouches_for_listing`] is that proof; the walker (`tree/walker.rs`) then takes the
//! directory's names from the stored rows instead of `getdents` and still `lstat`s every one.

use super::StatData;
use crate::schema::{EntryKind, Row, RowStat};

/// Files whose mtime has a zero nanosecond part are taken to live on a file system with
/// timestamps of one (or two) seconds, and get this much slack in the racy check.
const COARSE_FS_SLACK_NS: i64 = 2_000_000_000;
/// Slack for file systems with fine timestamps: above the kernel's coarse clock tick (at most
/// 10 ms with HZ=100), so a write stamped within the tick before the snapshot began is racy.
const FINE_FS_SLACK_NS: i64 = 20_000_000;
/// The least slack of the content's racy check: a file changed less than this before a row's
/// snapshot may have had a stalled write in flight (see "writes in flight" in the module doc).
pub const IN_FLIGHT_SLACK_NS: i64 = 2_000_000_000;

/// What a stored row says about reusing its content digest for a file seen now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastPath {
    /// Same file, unchanged, and not racy: reuse the stored digest without opening the file.
    Reuse,
    /// The stat matches, but the row is racy (see the module doc): hash the file.
    Racy,
    /// The stat differs (or the row has none, or is not a file): hash the file.
    Stale,
}

/// The one definition of "the same file, unchanged since `then` was taken": same inode, device,
/// mtime and ctime. Type, mode, owner and size are compared by the callers that need them.
pub fn same_stat(then: &RowStat, now: &StatData) -> bool {
    then.ino == now.ino
        && then.dev == now.dev
        && then.mtime_ns == now.mtime_ns
        && then.ctime_ns == now.ctime_ns
}

/// Whether `prior` vouches for the content of the regular file now seen as `row` with `stat`:
/// same type, mode, owner and size, [`same_stat`], and not racy.
pub fn content(prior: &Row, row: &Row, stat: &StatData) -> FastPath {
    let Some(ps) = prior.stat.as_ref() else {
        return FastPath::Stale;
    };
    let same = prior.kind == EntryKind::File
        && prior.kind == row.kind
        && prior.mode == row.mode
        && prior.uid == row.uid
        && prior.gid == row.gid
        && prior.size == stat.size
        && same_stat(ps, stat);
    match (same, content_is_racy(ps)) {
        (false, _) => FastPath::Stale,
        (true, true) => FastPath::Racy,
        (true, false) => FastPath::Reuse,
    }
}

/// Whether `prior` vouches for the xattrs and link target of an entry of type `kind` seen now
/// with `stat`: same type, inode, device and ctime, and not ctime-racy (see the module doc).
pub fn vouches_for_metadata(prior: &Row, kind: EntryKind, stat: &StatData) -> bool {
    prior.kind == kind
        && prior.stat.as_ref().is_some_and(|ps| {
            ps.ino == stat.ino
                && ps.dev == stat.dev
                && ps.ctime_ns == stat.ctime_ns
                && !metadata_is_racy(ps)
        })
}

/// Whether `prior`, the stored row of a directory now seen with `stat`, vouches for the
/// directory's names: the prior row is a directory with stat data, [`same_stat`], and neither
/// its mtime nor its ctime is racy ([`listing_is_racy`]). Then no entry was created, removed or
/// renamed in the directory since its stored rows were taken (see the module doc).
pub fn vouches_for_listing(prior: &Row, kind: EntryKind, stat: &StatData) -> bool {
    kind == EntryKind::Dir
        && prior.kind == EntryKind::Dir
        && prior
            .stat
            .as_ref()
            .is_some_and(|ps| same_stat(ps, stat) && !listing_is_racy(ps))
}

/// The racy rule for a directory's names (see the module doc): the content's rule on its mtime
/// ([`content_is_racy`]: an entry created in the tick of the stored mtime would leave it
/// unchanged) or the metadata's on its ctime ([`metadata_is_racy`]: an entry created and the
/// mtime set back within the stored ctime's tick would leave both unchanged).
pub fn listing_is_racy(stat: &RowStat) -> bool {
    content_is_racy(stat) || metadata_is_racy(stat)
}

/// True when `stored`, equal in every compared property to the entry now seen as `now` with
/// `stat`, could not vouch for it at the next walk — its stat data is missing (a v1 row),
/// different (touched, copied, checked out, moved to another device) or racy (for a directory:
/// its listing racy, [`listing_is_racy`]) — so a hit should store the new stat data. Defined by
/// the fast path's own answers, so the two cannot drift.
pub fn needs_refresh(stored: &Row, now: &Row, stat: &StatData) -> bool {
    let Some(old) = stored.stat.as_ref() else {
        return true;
    };
    !same_stat(old, stat)
        || !vouches_for_metadata(stored, now.kind, stat)
        || (now.kind == EntryKind::File && content(stored, now, stat) != FastPath::Reuse)
        || (now.kind == EntryKind::Dir && listing_is_racy(old))
}

/// Git's racy rule for the content (see the module doc): true when the file was modified at or
/// after (about) the moment the row's snapshot began, so its mtime cannot vouch for the content;
/// "about" is at least [`IN_FLIGHT_SLACK_NS`] (writes in flight).
pub fn content_is_racy(stat: &RowStat) -> bool {
    let slack = timestamp_slack_ns(stat.mtime_ns).max(IN_FLIGHT_SLACK_NS);
    stat.mtime_ns >= stat.snapshot_ns.saturating_sub(slack)
}

/// The racy rule for what the ctime vouches for (xattrs, link target; see the module doc): true
/// when the row was taken within the tick of the entry's last status change.
pub fn metadata_is_racy(stat: &RowStat) -> bool {
    stat.ctime_ns
        >= stat
            .snapshot_ns
            .saturating_sub(timestamp_slack_ns(stat.ctime_ns))
}

/// How far apart two writes can be and still get the same timestamp on the file system that
/// stamped `time_ns` (a time with no sub-second part suggests a file system with one- or
/// two-second timestamps).
pub(crate) fn timestamp_slack_ns(time_ns: i64) -> i64 {
    if time_ns.rem_euclid(1_000_000_000) == 0 {
        COARSE_FS_SLACK_NS
    } else {
        FINE_FS_SLACK_NS
    }
}

/// The kernel's coarse real-time clock (the clock file timestamps are taken from), in ns.
pub(crate) fn coarse_now_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(i64::MAX);
    }
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}
