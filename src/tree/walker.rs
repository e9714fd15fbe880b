//! Enumeration: the names of a tree in key order, each with the `lstat` it was seen under.
//!
//! Owns: [`Enumerator`] (which walker a [`super::TreeWalk`] uses), [`Lstat`] (what one `lstat`
//! says about an entry), and [`OrderedDirs`], the parallel walker that yields in key order and
//! decides, from the prior rows, which directories it reads and which it proves.
//!
//! Must never: follow a symlink below the root, open anything but directories (a FIFO, socket
//! or device node is only `fstatat`ed), yield out of key order, or list a directory from stored
//! names unless `fastpath::vouches_for_listing` says they are its names.
//!
//! # The ordered parallel walker
//!
//! Reading a directory — `openat(O_DIRECTORY | O_NOFOLLOW)`, `getdents`, one `fstatat` per entry
//! relative to the directory's fd (no full-path resolution per entry), sorting by name — is one
//! job. The walk emits depth first in name order, which is the order of keys (where `/` sorts
//! below every other byte, see `crate::path`), and reads ahead: each time it lists a
//! directory it queues, on the rayon pool, reads of the subdirectories it will reach next (those
//! of the innermost directory first, then of its parents), up to [`READ_AHEAD_DIRS`] queued at
//! once. When the walk reaches a directory whose read has not started, it takes the job back and
//! reads the directory itself, so it never waits for a job that is not running (it cannot stall
//! behind other work on the pool, even when it runs on a pool thread itself). Memory is bounded
//! by the listings of the directories on the current path plus the read-ahead window, not by the
//! tree; each listing keeps its names in one buffer (one allocation per directory, not per
//! entry).
//!
//! # When a directory is read, and when it is proven
//!
//! With prior rows (the stored rows of the same tree, `super::TreeWalk::with_prior`), a
//! directory is *proven* instead of read when all of these hold: its prior row is a directory
//! with stat data; the lstat the walk yields it with has the same inode, device, mtime and ctime;
//! that row is not racy (`fastpath::vouches_for_listing`: the mtime older than the row's
//! snapshot by the content's slack, 2 s; the ctime older by its tick); no stored row of the tree
//! failed to decode; and its whole stored subtree fits the prior rows' look-ahead
//! (`tree/prior.rs`, 32,768 rows). Then its names are its prior rows' direct children: the
//! directory is opened, `fstat`ed to be the same directory, and each name is `fstatat`ed — no
//! `getdents`. If it is not the same directory, or a name is gone (`ENOENT`), the proof failed
//! and the directory is read after all: a name is never dropped. Every other directory is read.
//! `WalkCounters::dirs_read` and `dirs_proven` count both.
//!
//! Why skipping `getdents` cannot make a false hit: creating, removing or renaming an entry in a
//! directory moves its mtime and ctime (POSIX; git's untracked cache assumes the same), and the
//! ctime cannot be set back; the racy rule covers a change in the same timestamp tick as the
//! stored stat (see `tree/fastpath.rs`, "Directories"). A child that changed in place (content,
//! mode, type behind the same name) is still seen: every child is `lstat`ed, its own prior row
//! and the fast path decide about it, and a child that became a directory is listed by the same
//! rule (its prior row is not a directory: it is read). A file system that does not move a
//! directory's mtime or ctime when its entries change breaks the assumption (see the README's
//! known limitations); `LookupMode::VERIFY` takes nothing from stored rows and reads every
//! directory.
//!
//! The prior rows are read by the walk's own thread (they come from a read transaction that
//! cannot move), so with prior rows enumeration does not move to a thread of its own; directory
//! jobs still run ahead on the pool, proven ones with their names, while the stored subtree of
//! the queued directory fits the look-ahead (a directory further ahead waits until the walk
//! has moved on). Memory: the look-ahead's rows (at most 32,768, ~200 bytes each without
//! xattrs) plus what the module doc above says.
//!
//! A directory replaced by a symlink (or anything else) between its parent's listing and its own
//! read is [`Error::ChangedWhileReading`]: it is never followed. Errors carry the path and come
//! in walk order: the directory that cannot be read is yielded first, then its error, and the
//! walk ends — as [`super::TreeWalk`] does with walkdir.
//!
//! Paths are opened from the root by their full path, as walkdir does, so a tree deeper than
//! `PATH_MAX` fails the same way with either walker (`ENAMETOOLONG`, naming the directory).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};

use super::fastpath::{same_stat, vouches_for_listing};
use super::prior::{ChildrenOf, KnownDir, KnownNames, LOOKAHEAD_ROWS, PriorCursor};
use super::{StatData, kind_of};
use crate::error::{Error, Result};
use crate::path::RelPath;
use crate::schema::{EntryKind, Row, RowStat};

/// Subdirectory reads queued ahead of the walk at most.
pub const READ_AHEAD_DIRS: usize = 64;

/// Which walker enumerates the names of a [`super::TreeWalk`]. Both yield the same entries in
/// the same order, described the same (`tests/testsuite/walkers.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enumerator {
    /// walkdir on a thread of its own (sorted `readdir`); each entry is then `lstat`ed by its
    /// full path on the rayon pool.
    Walkdir,
    /// [`OrderedDirs`]: directories read on the rayon pool, one `fstatat` per entry relative to
    /// its directory's fd, emitted in key order; its `lstat` is the one the entry is described
    /// with (no second, full-path `lstat`).
    #[default]
    Parallel,
}

/// What one `lstat` says about an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lstat {
    /// Its type.
    pub kind: EntryKind,
    /// `st_mode & 0o7777`: permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (meaningful for device nodes).
    pub rdev: u64,
    /// Size, times, inode and device.
    pub stat: StatData,
}

impl Lstat {
    /// From the standard library's metadata.
    pub fn of(m: &std::fs::Metadata) -> Self {
        Lstat {
            kind: kind_of(m.file_type()),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev(),
            stat: StatData::of(m),
        }
    }

    // The field types of `struct stat` differ across targets: the casts are not all no-ops.
    #[allow(clippy::unnecessary_cast)]
    fn of_raw(s: &rustix::fs::Stat) -> Self {
        let kind = match FileType::from_raw_mode(s.st_mode) {
            FileType::RegularFile => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Symlink,
            FileType::Fifo => EntryKind::Fifo,
            FileType::Socket => EntryKind::Socket,
            FileType::CharacterDevice => EntryKind::CharDevice,
            // What std's `FileType` calls neither of the others ends up a block device in
            // `kind_of` too: the two walkers agree.
            FileType::BlockDevice | FileType::Unknown => EntryKind::BlockDevice,
        };
        let ns = |sec: i64, nsec: i64| sec.saturating_mul(1_000_000_000).saturating_add(nsec);
        Lstat {
            kind,
            mode: (s.st_mode as u32) & 0o7777,
            uid: s.st_uid as u32,
            gid: s.st_gid as u32,
            rdev: s.st_rdev as u64,
            stat: StatData {
                size: s.st_size as u64,
                mtime_ns: ns(s.st_mtime as i64, s.st_mtime_nsec as i64),
                ctime_ns: ns(s.st_ctime as i64, s.st_ctime_nsec as i64),
                ino: s.st_ino as u64,
                dev: s.st_dev as u64,
            },
        }
    }
}

/// One directory's entries with their lstat, sorted by name; the names live in one buffer.
#[derive(Default)]
struct Listing {
    names: Vec<u8>,
    /// (start, end) of the name in `names`, and its lstat.
    entries: Vec<(usize, usize, Lstat)>,
}

impl Listing {
    fn name(&self, i: usize) -> Option<(&[u8], &Lstat)> {
        let (start, end, lstat) = self.entries.get(i)?;
        Some((self.names.get(*start..*end)?, lstat))
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Directories a walk read (`getdents`) and proven (names taken from the stored rows), and
/// proofs that failed (a stored name gone: the directory was read instead); shared with the
/// directory jobs on the pool.
#[derive(Debug, Default)]
pub(crate) struct DirCounts {
    /// Directories listed with `getdents`.
    pub read: AtomicU64,
    /// Directories whose names came from their stored rows (no `getdents`).
    pub proven: AtomicU64,
    /// Proofs that failed (and the directory was read instead).
    pub proofs_failed: AtomicU64,
}

impl DirCounts {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens a directory to list or `fstatat` in; `follow` opens a symlink (the root only).
fn open_dir(abs: &Path, follow: bool) -> Result<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    rustix::fs::openat(CWD, abs, flags, Mode::empty()).map_err(|e| match e {
        // Gone, or no longer a directory (a symlink now, say): it changed under the walk.
        rustix::io::Errno::NOENT | rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
            Error::ChangedWhileReading {
                path: abs.to_path_buf(),
            }
        }
        e => Error::io("cannot read directory", abs, e.into()),
    })
}

/// A directory's listing from its stored names (a proven directory: see
/// `fastpath::vouches_for_listing`), without `getdents`: the directory is opened, checked by
/// `fstat` to be the one whose stat (`seen`) made the proof, and each name is `fstatat`ed. If
/// it is not that directory, or a stored name is gone, the proof failed and the directory is
/// read ([`read_dir`]) — never listed short.
fn stat_known(
    abs: &Path,
    follow: bool,
    seen: &StatData,
    known: KnownNames,
    counts: &DirCounts,
) -> Result<Listing> {
    let fd = open_dir(abs, follow)?;
    let same_dir = rustix::fs::fstat(&fd).is_ok_and(|st| {
        let now = Lstat::of_raw(&st).stat;
        let then = RowStat {
            mtime_ns: seen.mtime_ns,
            ctime_ns: seen.ctime_ns,
            ino: seen.ino,
            dev: seen.dev,
            snapshot_ns: 0,
        };
        same_stat(&then, &now)
    });
    if !same_dir {
        DirCounts::bump(&counts.proofs_failed);
        return read_dir(abs, follow, counts);
    }
    let mut entries = Vec::with_capacity(known.spans.len());
    for &(start, end) in &known.spans {
        let name = known.names.get(start..end).unwrap_or_default();
        match rustix::fs::statat(&fd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => entries.push((start, end, Lstat::of_raw(&st))),
            // A stored name is gone: the directory changed after all (or its mtime lied).
            Err(rustix::io::Errno::NOENT) => {
                DirCounts::bump(&counts.proofs_failed);
                return read_dir(abs, follow, counts);
            }
            Err(e) => {
                return Err(Error::io(
                    "cannot stat",
                    abs.join(OsStr::from_bytes(name)),
                    e.into(),
                ));
            }
        }
    }
    DirCounts::bump(&counts.proven);
    Ok(Listing {
        names: known.names,
        entries,
    })
}

/// Reads one directory: its entries with their lstat, sorted by name. `follow` opens a symlink
/// (the root only).
fn read_dir(abs: &Path, follow: bool, counts: &DirCounts) -> Result<Listing> {
    let fd = open_dir(abs, follow)?;
    DirCounts::bump(&counts.read);
    let io = |e: rustix::io::Errno| Error::io("cannot read directory", abs, e.into());
    let mut dir = Dir::new(fd).map_err(io)?;
    let mut out = Listing::default();
    while let Some(ent) = dir.read() {
        let ent = ent.map_err(io)?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let dfd = dir.fd().map_err(io)?;
        let st = match rustix::fs::statat(dfd, ent.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            // Removed since the directory was read.
            Err(rustix::io::Errno::NOENT) => {
                return Err(Error::ChangedWhileReading {
                    path: abs.join(OsStr::from_bytes(name)),
                });
            }
            Err(e) => {
                return Err(Error::io(
                    "cannot stat",
                    abs.join(OsStr::from_bytes(name)),
                    e.into(),
                ));
            }
        };
        let start = out.names.len();
        out.names.extend_from_slice(name);
        out.entries
            .push((start, out.names.len(), Lstat::of_raw(&st)));
    }
    let names = &out.names;
    out.entries.sort_unstable_by(|a, b| {
        let name = |e: &(usize, usize, Lstat)| names.get(e.0..e.1).unwrap_or_default();
        name(a).cmp(name(b))
    });
    Ok(out)
}

/// A directory read that may run on the pool, or be taken back by the walk.
struct Prefetch {
    slot: Arc<(Mutex<Slot>, Condvar)>,
}

/// A queued read: the directory, for a proven one the stat it was proven with and its stored
/// names, and the stored directories of its subtree when it is small (`prior::SUBTREE_ROWS`),
/// which a job run on the pool lists too (see [`list_below`]).
struct Job {
    dir: RelPath,
    abs: PathBuf,
    proof: Option<(StatData, KnownNames)>,
    below: Vec<KnownDir>,
}

impl Job {
    /// A job for `dir` alone.
    #[cfg(test)]
    fn alone(dir: RelPath, abs: PathBuf) -> Self {
        Job {
            dir,
            abs,
            proof: None,
            below: Vec::new(),
        }
    }
}

/// What a job listed: its directory, and (run on the pool) the proven directories below it, in
/// key order, each listed or failed.
type JobOut = (Result<Listing>, Vec<(RelPath, Result<Listing>)>);

/// Lists a directory: from its stored names when proven, else by reading it; with `deep`, also
/// the directories below it that its stored subtree proves ([`list_below`]).
fn run_job(job: Job, deep: bool, counts: &DirCounts) -> JobOut {
    let Job {
        dir,
        abs,
        proof,
        mut below,
    } = job;
    let listing = match proof {
        Some((seen, known)) => stat_known(&abs, false, &seen, known, counts),
        None => read_dir(&abs, false, counts),
    };
    let mut nested = Vec::new();
    if deep && let Ok(l) = &listing {
        list_below(&dir, &abs, l, &mut below, counts, &mut nested);
    }
    (listing, nested)
}

/// Lists, depth first, each subdirectory of `dir` (listed as `listing`) whose stored row in
/// `below` (key order) vouches for its names seen with the lstat of `listing` — the same row
/// and the same lstat the walk decides with when it reaches it (`OrderedDirs::entry`), so the
/// walk takes these listings as they are. A subdirectory without such a row is left to the walk.
fn list_below(
    dir: &RelPath,
    abs: &Path,
    listing: &Listing,
    below: &mut [KnownDir],
    counts: &DirCounts,
    out: &mut Vec<(RelPath, Result<Listing>)>,
) {
    for i in 0..listing.len() {
        let Some((name, lstat)) = listing.name(i).filter(|(_, l)| l.kind == EntryKind::Dir) else {
            continue;
        };
        let path = dir.join(name);
        let Ok(at) = below.binary_search_by(|d| d.path.cmp(&path)) else {
            continue;
        };
        let Some(known) = below.get_mut(at) else {
            continue;
        };
        if !vouches_for_listing(&known.row, EntryKind::Dir, &lstat.stat) {
            continue;
        }
        let names = std::mem::take(&mut known.names);
        let sub_abs = abs.join(OsStr::from_bytes(name));
        let sub = stat_known(&sub_abs, false, &lstat.stat, names, counts);
        // Its own subdirectories come right after it, in key order.
        let mut inner = Vec::new();
        if let Ok(l) = &sub {
            list_below(&path, &sub_abs, l, below, counts, &mut inner);
        }
        out.push((path, sub));
        out.append(&mut inner);
    }
}

/// The state of one queued read.
enum Slot {
    /// Not started; the walk may take it back.
    Todo(Job),
    /// A pool thread is reading it.
    Running,
    /// Read.
    Done(JobOut),
    /// Taken by the walk, or dropped: nothing more to do.
    Taken,
}

impl Prefetch {
    /// Queues `job` on the rayon pool.
    fn spawn(job: Job, counts: Arc<DirCounts>) -> Self {
        let slot = Arc::new((Mutex::new(Slot::Todo(job)), Condvar::new()));
        let theirs = Arc::clone(&slot);
        rayon::spawn(move || {
            let (m, cv) = &*theirs;
            let job = match m.lock() {
                Ok(mut g) => match std::mem::replace(&mut *g, Slot::Running) {
                    Slot::Todo(j) => j,
                    other => {
                        // Taken back or dropped by the walk: nothing to do.
                        *g = other;
                        return;
                    }
                },
                Err(_) => return,
            };
            let r = run_job(job, true, &counts);
            if let Ok(mut g) = m.lock() {
                *g = Slot::Done(r);
            }
            cv.notify_all();
        });
        Prefetch { slot }
    }

    /// The listing (and what the job listed below it): read here if the job has not started
    /// (only its own directory: the walk reaches the rest soon and queues it), else waited for.
    fn take(self, abs: &Path, counts: &DirCounts) -> JobOut {
        let (m, cv) = &*self.slot;
        let lost = || {
            Error::io(
                "cannot read directory",
                abs,
                std::io::Error::other("a directory-reading job was lost"),
            )
        };
        let Ok(mut g) = m.lock() else {
            return (Err(lost()), Vec::new());
        };
        loop {
            match std::mem::replace(&mut *g, Slot::Taken) {
                Slot::Todo(job) => {
                    drop(g);
                    return run_job(job, false, counts);
                }
                Slot::Done(r) => return r,
                Slot::Running => {
                    *g = Slot::Running;
                    g = match cv.wait(g) {
                        Ok(g) => g,
                        Err(_) => return (Err(lost()), Vec::new()),
                    };
                }
                Slot::Taken => return (Err(lost()), Vec::new()),
            }
        }
    }
}

impl Drop for Prefetch {
    /// A read the walk no longer wants (the walk was dropped) is not started.
    fn drop(&mut self) {
        if let Ok(mut g) = self.slot.0.lock()
            && matches!(*g, Slot::Todo(_))
        {
            *g = Slot::Taken;
        }
    }
}

/// A directory being emitted: its path, its listing, the next entry to emit, and how far the
/// read-ahead has looked for subdirectories in it.
struct Frame {
    dir: RelPath,
    listing: Listing,
    next: usize,
    scanned: usize,
}

/// A directory just yielded, to be listed before the next entry: its path, the lstat it was
/// yielded with, and whether its prior row vouches for its names.
struct Expand {
    dir: RelPath,
    seen: StatData,
    proven: bool,
}

/// What `OrderedDirs::ahead` holds for a directory the walk has not reached: a queued read,
/// or its listing, done by the job of a directory above it.
enum Ahead {
    Read(Prefetch),
    Listed(Result<Listing>),
}

/// One yielded entry: its path, its lstat, and its prior row (when the walk has prior rows).
pub(crate) type Yielded = (RelPath, Lstat, Option<Row>);

/// The ordered parallel walker (see the module doc): yields the root, then every entry below
/// it, depth first in key order, each with its lstat.
pub struct OrderedDirs {
    root: PathBuf,
    started: bool,
    stack: Vec<Frame>,
    expand: Option<Expand>,
    /// Queued reads and listings done by them for directories below theirs, in key order
    /// (the order the walk will need them).
    ahead: VecDeque<(RelPath, Ahead)>,
    /// How many of `ahead` are queued reads (the window counts reads, not listings).
    jobs_ahead: usize,
    done: bool,
    counts: Arc<DirCounts>,
    /// A directory whose stored subtree did not fit the prior rows' look-ahead yet, and when
    /// (in prior rows passed) that was: it is not looked at again before the walk has passed
    /// a quarter of the look-ahead (so the look-ahead is not rescanned at every directory).
    blocked: Option<(RelPath, u64)>,
}

impl OrderedDirs {
    /// A walk of `root`; a root that is a symlink is followed (the builder named it), nothing
    /// below it is.
    pub fn new(root: &Path) -> Self {
        Self::counted(root, Arc::default())
    }

    /// [`OrderedDirs::new`], counting the directories it reads and proves in `counts`.
    pub(crate) fn counted(root: &Path, counts: Arc<DirCounts>) -> Self {
        OrderedDirs {
            root: root.to_path_buf(),
            started: false,
            stack: Vec::new(),
            expand: None,
            ahead: VecDeque::new(),
            jobs_ahead: 0,
            done: false,
            counts,
            blocked: None,
        }
    }

    /// Lists a directory: from its queued read if there is one, else here — from its stored
    /// names when they are known and its prior row vouches for them, else by reading it.
    fn list(&mut self, ex: &Expand, prior: Option<&mut PriorCursor>) -> Result<Listing> {
        let dir = &ex.dir;
        let abs = dir.under(&self.root);
        let follow = dir.is_root();
        if !follow {
            // Reads queued for directories the walk has passed (none, in order) are dropped.
            while self.ahead.front().is_some_and(|(p, _)| p < dir) {
                self.pop_ahead();
            }
            if self.ahead.front().is_some_and(|(p, _)| p == dir)
                && let Some((_, next)) = self.pop_ahead()
            {
                return match next {
                    Ahead::Listed(l) => l,
                    Ahead::Read(pre) => {
                        let (listing, nested) = pre.take(&abs, &self.counts);
                        // Listed below it by the same job: right after it in key order.
                        for (p, l) in nested {
                            let at = self.ahead.partition_point(|(q, _)| *q < p);
                            self.ahead.insert(at, (p, Ahead::Listed(l)));
                        }
                        listing
                    }
                };
            }
        }
        if ex.proven
            && let Some(c) = prior
            && let ChildrenOf::Known(known) = c.children(dir)
        {
            return stat_known(&abs, follow, &ex.seen, known, &self.counts);
        }
        read_dir(&abs, follow, &self.counts)
    }

    /// The first of `ahead`, counted out.
    fn pop_ahead(&mut self) -> Option<(RelPath, Ahead)> {
        let first = self.ahead.pop_front();
        if let Some((_, Ahead::Read(_))) = &first {
            self.jobs_ahead = self.jobs_ahead.saturating_sub(1);
        }
        first
    }

    /// Queues reads of the subdirectories the walk will reach next, up to the window: those of
    /// the innermost directory first, then its parent's, and so on. Each entry of a listing is
    /// looked at once (`Frame::scanned`), so this costs O(entries) over the whole walk. A
    /// subdirectory whose prior row vouches for its names, and whose stored children the prior
    /// rows' look-ahead holds, is queued proven (no `getdents`); one whose prior row is beyond
    /// the look-ahead for now stops the scan until the walk has moved on.
    fn read_ahead(&mut self, mut prior: Option<&mut PriorCursor>) {
        let mut ahead = Window {
            root: &self.root,
            ahead: &mut self.ahead,
            jobs_ahead: &mut self.jobs_ahead,
            counts: &self.counts,
            blocked: &mut self.blocked,
        };
        for frame in self.stack.iter_mut().rev() {
            frame.scanned = frame.scanned.max(frame.next);
            while *ahead.jobs_ahead < READ_AHEAD_DIRS && frame.scanned < frame.listing.len() {
                if !ahead.queue_one(frame, prior.as_deref_mut()) {
                    return;
                }
            }
            if *ahead.jobs_ahead >= READ_AHEAD_DIRS {
                return;
            }
        }
    }

    /// The next entry (see the type doc) and, with `prior`, its prior row; directories whose
    /// prior rows vouch for their names are listed from them (see the module doc).
    pub(crate) fn next_with(
        &mut self,
        mut prior: Option<&mut PriorCursor>,
    ) -> Option<Result<Yielded>> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            return Some(self.root_entry(prior));
        }
        if let Some(ex) = self.expand.take()
            && let Err(e) = self.enter(ex, prior.as_deref_mut())
        {
            self.done = true;
            self.ahead.clear();
            self.jobs_ahead = 0;
            return Some(Err(e));
        }
        loop {
            let frame = self.stack.last_mut()?;
            let Some((name, lstat)) = frame.listing.name(frame.next) else {
                self.stack.pop();
                continue;
            };
            let lstat = *lstat;
            // The stored row's path is the entry's: no second allocation of it.
            let (path, row) = match prior.as_deref_mut() {
                Some(c) => c.take_child(&frame.dir, name),
                None => (frame.dir.join(name), None),
            };
            frame.next += 1;
            return Some(Ok(self.entry(path, lstat, row)));
        }
    }

    /// The root: its lstat (following a symlink at the root, as `metadata` does) and its
    /// prior row; an error ends the walk.
    fn root_entry(&mut self, prior: Option<&mut PriorCursor>) -> Result<Yielded> {
        match std::fs::metadata(&self.root) {
            Ok(m) => {
                let root = RelPath::root();
                let row = prior.and_then(|c| c.take(&root));
                Ok(self.entry(root, Lstat::of(&m), row))
            }
            Err(e) => {
                self.done = true;
                Err(Error::io("cannot stat", &self.root, e))
            }
        }
    }

    /// `path` seen with `lstat`, with its prior row `row`; a directory is expanded before the
    /// next entry, listed from its prior rows when they vouch for it.
    fn entry(&mut self, path: RelPath, lstat: Lstat, row: Option<Row>) -> Yielded {
        if lstat.kind == EntryKind::Dir {
            self.expand = Some(Expand {
                dir: path.clone(),
                seen: lstat.stat,
                proven: row
                    .as_ref()
                    .is_some_and(|r| vouches_for_listing(r, lstat.kind, &lstat.stat)),
            });
        }
        (path, lstat, row)
    }

    /// Lists the directory `ex` and makes it the current frame, then reads ahead.
    fn enter(&mut self, ex: Expand, mut prior: Option<&mut PriorCursor>) -> Result<()> {
        let listing = self.list(&ex, prior.as_deref_mut())?;
        self.stack.push(Frame {
            dir: ex.dir,
            listing,
            next: 0,
            scanned: 0,
        });
        self.read_ahead(prior);
        Ok(())
    }
}

/// The read-ahead's part of an [`OrderedDirs`], borrowed apart from its stack.
struct Window<'w> {
    root: &'w Path,
    ahead: &'w mut VecDeque<(RelPath, Ahead)>,
    jobs_ahead: &'w mut usize,
    counts: &'w Arc<DirCounts>,
    blocked: &'w mut Option<(RelPath, u64)>,
}

impl Window<'_> {
    /// Looks at the next unscanned entry of `frame` and queues a read of it if it is a
    /// directory not queued or listed yet; false when the scan stops here until the walk has
    /// moved on (the prior rows' look-ahead cannot tell yet whether it is proven).
    fn queue_one(&mut self, frame: &mut Frame, prior: Option<&mut PriorCursor>) -> bool {
        let i = frame.scanned;
        let Some((name, lstat)) = frame
            .listing
            .name(i)
            .filter(|(_, l)| l.kind == EntryKind::Dir)
        else {
            frame.scanned += 1;
            return true;
        };
        let p = frame.dir.join(name);
        // Listed already, by the job of a directory above it.
        let pos = self.ahead.partition_point(|(q, _)| *q < p);
        if self.ahead.get(pos).is_some_and(|(q, _)| *q == p) {
            frame.scanned += 1;
            return true;
        }
        let mut below = Vec::new();
        let known = match prior {
            None => None,
            Some(c) => {
                if let Some((at, when)) = self.blocked.as_ref()
                    && *at == p
                    && c.dropped() < when + (LOOKAHEAD_ROWS / 4) as u64
                {
                    return false;
                }
                match proven_names(c, &p, &lstat.stat, &mut below) {
                    Some(k) => k,
                    None => {
                        *self.blocked = Some((p, c.dropped()));
                        return false;
                    }
                }
            }
        };
        frame.scanned += 1;
        // Inner directories sort before their parents' later entries: keep key order.
        let job = Job {
            abs: p.under(self.root),
            dir: p.clone(),
            proof: known.map(|k| (lstat.stat, k)),
            below,
        };
        let read = Ahead::Read(Prefetch::spawn(job, Arc::clone(self.counts)));
        self.ahead.insert(pos, (p, read));
        *self.jobs_ahead += 1;
        true
    }
}

/// For a subdirectory `dir` not reached yet, seen with `seen`: `Some(Some(names))` when its
/// prior row vouches for its names and they are known, `Some(None)` when it is to be read,
/// `None` when the look-ahead cannot tell yet.
/// With its names, the stored directories of its subtree when it is small go to `below`.
fn proven_names(
    c: &mut PriorCursor,
    dir: &RelPath,
    seen: &StatData,
    below: &mut Vec<KnownDir>,
) -> Option<Option<KnownNames>> {
    let vouches = c
        .peek(dir)?
        .is_some_and(|row| vouches_for_listing(row, EntryKind::Dir, seen));
    if !vouches {
        return Some(None);
    }
    match c.children_below(dir, Some(below)) {
        ChildrenOf::Known(k) => Some(Some(k)),
        ChildrenOf::NotYet => None,
        ChildrenOf::Unknown => Some(None),
    }
}

impl Iterator for OrderedDirs {
    type Item = Result<(RelPath, Lstat)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_with(None).map(|r| r.map(|(p, l, _)| (p, l)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory swapped for a symlink after its parent was listed is never followed: reading
    /// it is "changed while reading", naming it.
    #[test]
    fn a_directory_replaced_by_a_symlink_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("secret"), b"s").unwrap();
        let link = tmp.path().join("was-a-dir");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let counts = DirCounts::default();
        match read_dir(&link, false, &counts) {
            Err(Error::ChangedWhileReading { path }) => assert_eq!(path, link),
            Err(e) => panic!("{e}"),
            Ok(c) => panic!("followed the symlink: {} entries", c.len()),
        }
        // The root may be a symlink (the builder named it).
        assert_eq!(read_dir(&link, true, &counts).unwrap().len(), 1);
    }

    /// A taken-back read and a pool read give the same listing, sorted.
    #[test]
    fn prefetch_taken_back_or_waited_for_gives_the_listing() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..10 {
            std::fs::write(tmp.path().join(format!("f{i}")), b"x").unwrap();
        }
        for _ in 0..20 {
            let counts = Arc::new(DirCounts::default());
            let job = Job::alone(RelPath::root(), tmp.path().to_path_buf());
            let p = Prefetch::spawn(job, Arc::clone(&counts));
            let l = p.take(tmp.path(), &counts).0.unwrap();
            let names: Vec<&[u8]> = (0..l.len()).map(|i| l.name(i).unwrap().0).collect();
            assert_eq!(names.len(), 10);
            assert!(names.windows(2).all(|w| w[0] < w[1]));
        }
        // A dropped read that has not started is never started.
        let job = Job::alone(RelPath::root(), tmp.path().to_path_buf());
        let p = Prefetch::spawn(job, Arc::default());
        let slot = Arc::clone(&p.slot);
        drop(p);
        // It may have started before the drop; then it ends on its own.
        for _ in 0..1000 {
            if !matches!(*slot.0.lock().unwrap(), Slot::Running) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let g = slot.0.lock().unwrap();
        assert!(matches!(*g, Slot::Taken | Slot::Done(_)));
    }

    /// Directories wider and deeper than the read-ahead window come out complete and in key
    /// order, with names that sort around `/`.
    #[test]
    fn a_wide_deep_tree_is_emitted_in_key_order() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in 0..(READ_AHEAD_DIRS + 10) {
            for e in 0..3 {
                let sub = root.join(format!("d{d:03}/e{e}/f"));
                std::fs::create_dir_all(&sub).unwrap();
                std::fs::write(sub.join("x"), b"x").unwrap();
            }
            std::fs::write(root.join(format!("d{d:03}-file")), b"y").unwrap();
            std::fs::write(root.join(format!("d{d:03}.txt")), b"y").unwrap();
        }
        let paths: Vec<RelPath> = OrderedDirs::new(root).map(|r| r.unwrap().0).collect();
        let expected = 1 + (READ_AHEAD_DIRS + 10) * (1 + 3 * 3 + 2);
        assert_eq!(paths.len(), expected);
        assert!(paths.windows(2).all(|w| w[0] < w[1]), "not in key order");
    }
}
