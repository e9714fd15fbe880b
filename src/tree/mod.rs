//! The tree snapshot: a sorted walk of a root, one [`Row`] per entry, content digests computed in
//! parallel.
//!
//! Owns: the walk ([`TreeWalk`]) and what one entry is described as ([`WalkedEntry`]). Its
//! submodules own the stat rules ([`fastpath`]: when stored rows vouch for what would otherwise
//! be read, and the racy rule), hashing file contents (`tree/hash.rs`) and Merkle roots
//! ([`TreeHasher`]).
//!
//! Must never: write to the database, compare rows (that is [`crate::diff`]), open a FIFO,
//! socket or device node, or follow a symlink below the root.
//!
//! Names come in key order from an [`Enumerator`]: by default the ordered parallel walker
//! ([`walker`]: directories read on the rayon pool with one `fstatat` per entry relative to the
//! directory's fd), or walkdir on a thread of its own (sorted `readdir`). Everything else per
//! entry — the `lstat` when the enumerator gave none, `readlink`, `llistxattr`, and hashing
//! regular files — runs in parallel on rayon, one task per entry, over a bounded window of
//! entries (a *chunk*), so memory is bounded by the window, not the tree, and entries come out
//! in walk order. An entry the stat fast path fully vouches for costs no path syscall and no
//! allocation beyond its path and row.
//!
//! With prior rows (the stored rows of the same tree, [`TreeWalk::with_prior`]), the stat fast
//! path skips work: a directory whose prior row vouches for its names is not read (no
//! `getdents`; its names come from the prior rows, see [`walker`], "When a directory is read"),
//! the xattrs and link target of an entry whose prior row
//! [vouches for its metadata](fastpath::vouches_for_metadata) are not read again, and a file
//! whose prior row says [`FastPath::Reuse`] is not opened. The racy rule that limits both is
//! explained once, in [`fastpath`].
//!
//! A regular file is opened with `O_NOFOLLOW | O_NONBLOCK` and checked with `fstat` to be the
//! same regular file the walk saw, so a file swapped for a FIFO cannot hang the walk; its stat is
//! compared again after hashing, and a file that changed while it was read is marked unstable and
//! never recorded as current. A file whose ctime is within the current timestamp tick is read
//! twice, around the tick's end, since a same-tick rewrite would not show in its stat. FIFOs,
//! sockets and device nodes are never opened.

pub mod fastpath;
mod hash;
pub mod log;
mod merkle;
pub mod prior;
pub mod progress;
pub mod walker;

use std::cell::OnceCell;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, sync_channel};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::path::RelPath;
use crate::schema::{EntryKind, Row, RowStat};

pub use fastpath::FastPath;
use fastpath::coarse_now_ns;
pub(crate) use hash::hash_file;
pub use hash::on_read;
pub use log::{LogReader, LoggedEntry, SealedLog, WalkLog};
pub use merkle::{PairedHasher, TreeHasher};
use prior::PriorCursor;
pub use progress::{Progress, ProgressSnapshot};
use walker::DirCounts;
pub use walker::{Enumerator, Lstat, OrderedDirs};

/// Entries per parallel window.
#[cfg(not(test))]
const CHUNK_ENTRIES: usize = 4096;
/// Small windows in unit tests, so a small tree exercises the pipeline of many windows.
#[cfg(test)]
const CHUNK_ENTRIES: usize = 64;

/// The stat data an entry was seen under (not compared; used to detect changes during reads and,
/// later, to skip hashing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StatData {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device of the file system holding it.
    pub dev: u64,
}

impl StatData {
    fn of(m: &std::fs::Metadata) -> Self {
        StatData {
            size: m.size(),
            mtime_ns: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
            ctime_ns: m
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// One walked entry.
#[derive(Debug, Clone)]
pub struct WalkedEntry {
    /// Path relative to the root (empty for the root).
    pub path: RelPath,
    /// What is recorded and compared.
    pub row: Row,
    /// The stat data it was seen under.
    pub stat: StatData,
    /// True when a regular file changed while it was hashed: its digest is not trustworthy.
    pub unstable: bool,
}

/// Counters of work done by a walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WalkCounters {
    /// Entries enumerated (including the root).
    pub entries_walked: u64,
    /// Regular files opened and hashed.
    pub files_hashed: u64,
    /// Bytes fed to blake3.
    pub bytes_hashed: u64,
    /// Regular files whose stored digest was reused because their stat data matched the row's
    /// and the row was not racy (the stat fast path): not opened at all.
    pub stat_matched: u64,
    /// Regular files whose stat data matched a racy row (modified too close to the row's
    /// snapshot to trust the timestamps), and were hashed for that reason.
    pub racy: u64,
    /// Directories listed with `getdents` (every directory without prior rows that vouch for
    /// its names; see `tree/walker.rs`).
    pub dirs_read: u64,
    /// Directories whose names were taken from their prior rows instead (their stat proves no
    /// entry was created, removed or renamed in them): only their entries were `lstat`ed.
    pub dirs_proven: u64,
    /// Proven directories whose proof failed when their entries were `lstat`ed (a stored name
    /// gone, or the directory not the one proven): read instead, so also in `dirs_read`.
    pub proofs_failed: u64,
}

impl WalkCounters {
    /// The work done since `earlier` (a copy of these counters taken before).
    pub fn since(&self, earlier: &WalkCounters) -> WalkCounters {
        WalkCounters {
            entries_walked: self.entries_walked.saturating_sub(earlier.entries_walked),
            files_hashed: self.files_hashed.saturating_sub(earlier.files_hashed),
            bytes_hashed: self.bytes_hashed.saturating_sub(earlier.bytes_hashed),
            stat_matched: self.stat_matched.saturating_sub(earlier.stat_matched),
            racy: self.racy.saturating_sub(earlier.racy),
            dirs_read: self.dirs_read.saturating_sub(earlier.dirs_read),
            dirs_proven: self.dirs_proven.saturating_sub(earlier.dirs_proven),
            proofs_failed: self.proofs_failed.saturating_sub(earlier.proofs_failed),
        }
    }

    /// Adds another set of counters to this one.
    pub fn add(&mut self, o: &WalkCounters) {
        self.entries_walked += o.entries_walked;
        self.files_hashed += o.files_hashed;
        self.bytes_hashed += o.bytes_hashed;
        self.stat_matched += o.stat_matched;
        self.racy += o.racy;
        self.dirs_read += o.dirs_read;
        self.dirs_proven += o.dirs_proven;
        self.proofs_failed += o.proofs_failed;
    }
}

/// Stored rows of the same tree, in key order: the prior state the stat fast path compares to.
pub type PriorRows = Box<dyn Iterator<Item = Result<(RelPath, Row)>>>;

/// What describing one window produced, in walk order.
type Described = Vec<Result<(WalkedEntry, Work)>>;

/// A name; from the ordered parallel walker, the lstat it was seen under (walkdir gives none:
/// the entry is then `lstat`ed by its full path when described); and its prior row, if any.
type Named = (RelPath, Option<Lstat>, Option<Row>);

/// Enumerates names, a window at a time, in walk order (symlinks below the root never
/// followed).
enum NameSource {
    /// walkdir, sorted.
    Walkdir {
        root: PathBuf,
        inner: walkdir::IntoIter,
        counts: Arc<DirCounts>,
    },
    /// The ordered parallel walker.
    Parallel(OrderedDirs),
}

impl NameSource {
    fn new(root: &Path, how: Enumerator, counts: Arc<DirCounts>) -> Self {
        match how {
            Enumerator::Walkdir => NameSource::Walkdir {
                counts,
                root: root.to_path_buf(),
                inner: walkdir::WalkDir::new(root)
                    .follow_links(false)
                    .follow_root_links(true)
                    .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()))
                    .into_iter(),
            },
            Enumerator::Parallel => NameSource::Parallel(OrderedDirs::counted(root, counts)),
        }
    }

    /// The next window of names, in walk order, each with its prior row from `prior`; empty at
    /// the end.
    fn next_names(&mut self, mut prior: Option<&mut PriorCursor>) -> Result<Vec<Named>> {
        let mut names = Vec::with_capacity(CHUNK_ENTRIES);
        while names.len() < CHUNK_ENTRIES {
            match self {
                NameSource::Parallel(w) => match w.next_with(prior.as_deref_mut()) {
                    None => break,
                    Some(Ok((p, l, row))) => names.push((p, Some(l), row)),
                    Some(Err(e)) => return Err(e),
                },
                NameSource::Walkdir {
                    root,
                    inner,
                    counts,
                } => match inner.next() {
                    None => break,
                    Some(Ok(ent)) => {
                        if ent.file_type().is_dir() {
                            counts.read.fetch_add(1, Ordering::Relaxed);
                        }
                        let rel = ent.path().strip_prefix(&*root).unwrap_or(ent.path());
                        let rel = RelPath::from_slash_bytes(rel.as_os_str().as_bytes());
                        let row = prior.as_deref_mut().and_then(|c| c.take(&rel));
                        names.push((rel, None, row));
                    }
                    Some(Err(e)) => {
                        let path = e
                            .path()
                            .map(Path::to_path_buf)
                            .unwrap_or_else(|| root.clone());
                        let io = e
                            .into_io_error()
                            .unwrap_or_else(|| std::io::Error::other("walk error"));
                        return Err(Error::io("cannot read directory", path, io));
                    }
                },
            }
        }
        Ok(names)
    }
}

/// Windows of names sent by the enumerating thread.
type NameReceiver = Receiver<Result<Vec<Named>>>;

/// Where the next window of names comes from: the walk's own thread for the first window (a
/// small tree never starts a thread), then a dedicated enumerating thread that reads ahead.
enum Names {
    /// Enumerated on demand by the caller's thread.
    Inline(Box<NameSource>),
    /// Enumerated ahead by a thread, which sends an empty window last.
    Thread(NameReceiver),
    /// Nothing more to enumerate.
    Done,
}

/// A window handed to rayon, or already described.
enum Pending {
    /// Being described on the rayon pool.
    Spawned(Receiver<std::thread::Result<Described>>),
    /// Described inline (the walk runs on a rayon worker itself).
    Ready(Described),
    /// Enumerating this window failed.
    Failed(Error),
}

/// A sorted, depth-first walk of one root that yields [`WalkedEntry`]s in key order, hashing
/// regular files in parallel a window at a time.
///
/// Three stages run at once: enumeration of window *k+2* (a thread of its own, reading
/// directories ahead into a bounded channel), description of window *k+1* (stat, xattrs,
/// hashing: one rayon task per entry) and the caller's consumption of window *k* (together with
/// the decoding of the prior rows the next window is matched against). At most four windows
/// exist at a time, so memory is bounded by the window size, not the tree.
pub struct TreeWalk {
    root: Arc<Path>,
    names: Names,
    pending: Option<Pending>,
    buffer: std::vec::IntoIter<WalkedEntry>,
    counters: WalkCounters,
    dir_counts: Arc<DirCounts>,
    failed: bool,
    prior: Option<PriorCursor>,
    snapshot_ns: i64,
    progress: Option<Arc<Progress>>,
}

impl TreeWalk {
    /// Starts a walk of `root`. The root itself is the first entry (its mode and owner count);
    /// a root that is a file yields one entry. A root that is a symlink is followed (the builder
    /// named it; recording only the link would hide changes behind it); symlinks below the root
    /// are recorded, never followed.
    pub fn new(root: &Path) -> Result<Self> {
        Self::with_enumerator(root, Enumerator::default())
    }

    /// [`TreeWalk::new`] with a chosen walker: both yield the same entries, described the
    /// same, in the same order (`tests/testsuite/walkers.rs`).
    pub fn with_enumerator(root: &Path, how: Enumerator) -> Result<Self> {
        // The snapshot is taken before anything of the tree is seen (the racy rule needs it
        // no later than every stat of the walk).
        let snapshot_ns = coarse_now_ns();
        std::fs::metadata(root).map_err(|e| Error::io("cannot stat", root, e))?;
        let dir_counts = Arc::new(DirCounts::default());
        Ok(TreeWalk {
            root: Arc::from(root),
            names: Names::Inline(Box::new(NameSource::new(
                root,
                how,
                Arc::clone(&dir_counts),
            ))),
            pending: None,
            buffer: Vec::new().into_iter(),
            counters: WalkCounters::default(),
            dir_counts,
            failed: false,
            prior: None,
            snapshot_ns,
            progress: None,
        })
    }

    /// A walk that reuses the digests of `prior` rows (the stored rows of the same tree, in key
    /// order) for regular files whose stat data matches and whose row is not racy: the stat fast
    /// path. Such files are not opened. A prior row that fails to decode is ignored (the file is
    /// hashed).
    pub fn with_prior(root: &Path, prior: PriorRows) -> Result<Self> {
        let mut w = Self::new(root)?;
        w.set_prior(prior);
        Ok(w)
    }

    /// Gives a walk that has not yielded anything yet its prior rows (see
    /// [`TreeWalk::with_prior`]).
    pub fn set_prior(&mut self, prior: PriorRows) {
        self.prior = Some(PriorCursor::new(prior));
    }

    /// Adds this walk's work to `progress`, once per window of entries (not per entry).
    pub fn report_to(&mut self, progress: Arc<Progress>) {
        self.progress = Some(progress);
    }

    /// The moment this walk began, from the coarse real-time clock the kernel stamps files
    /// with; recorded in each row as the snapshot time for the racy check.
    pub fn snapshot_ns(&self) -> i64 {
        self.snapshot_ns
    }

    /// Work done so far.
    pub fn counters(&self) -> WalkCounters {
        self.counters
    }

    /// The root being walked.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Enumerates the next window of names, in walk order, with their prior rows; empty at the
    /// end. After a first full window, enumeration moves to a thread of its own that reads
    /// ahead — except for the ordered parallel walker with prior rows, which reads the prior
    /// rows as it lists (to prove directories, see `tree/walker.rs`) and stays on this thread,
    /// which owns them.
    fn next_names(&mut self) -> Result<Vec<Named>> {
        match std::mem::replace(&mut self.names, Names::Done) {
            Names::Done => Ok(Vec::new()),
            Names::Thread(rx) => match rx.recv() {
                Ok(Ok(mut names)) => {
                    if !names.is_empty() {
                        self.names = Names::Thread(rx);
                    }
                    if let Some(c) = self.prior.as_mut() {
                        for (path, _, row) in &mut names {
                            *row = c.take(path);
                        }
                    }
                    Ok(names)
                }
                Ok(Err(e)) => Err(e),
                // The thread ended without sending the empty last window.
                Err(_) => Err(Error::io(
                    "cannot read directory",
                    self.root.to_path_buf(),
                    std::io::Error::other("the enumerating thread stopped early"),
                )),
            },
            Names::Inline(mut src) => {
                let names = src.next_names(self.prior.as_mut())?;
                if names.len() < CHUNK_ENTRIES {
                    // A short window is the last one.
                    return Ok(names);
                }
                if self.prior.is_some() && matches!(*src, NameSource::Parallel(_)) {
                    self.names = Names::Inline(src);
                    return Ok(names);
                }
                self.names = match read_ahead(src) {
                    Ok(rx) => Names::Thread(rx),
                    Err(src) => Names::Inline(src),
                };
                Ok(names)
            }
        }
    }

    /// Enumerates the next window and hands it to rayon. `None` at the end.
    fn start_window(&mut self) -> Option<Pending> {
        let names = match self.next_names() {
            Ok(n) if n.is_empty() => return None,
            Ok(n) => n,
            Err(e) => return Some(Pending::Failed(e)),
        };
        let root = Arc::clone(&self.root);
        let snapshot_ns = self.snapshot_ns;
        if rayon::current_thread_index().is_some() {
            // On a rayon worker, waiting for a spawned job could starve the pool: describe here.
            return Some(Pending::Ready(describe_all(&root, names, snapshot_ns)));
        }
        let (tx, rx) = sync_channel(1);
        rayon::spawn(move || {
            let described = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                describe_all(&root, names, snapshot_ns)
            }));
            // The walk may have been dropped meanwhile; then nobody wants the result.
            let _ = tx.send(described);
        });
        Some(Pending::Spawned(rx))
    }

    /// The next window of entries, fully described and hashed, in walk order; `None` at the end.
    pub fn next_chunk(&mut self) -> Option<Result<Vec<WalkedEntry>>> {
        if self.failed {
            return None;
        }
        let current = match self.pending.take() {
            Some(p) => p,
            None => self.start_window()?,
        };
        let results = match current {
            Pending::Ready(r) => r,
            Pending::Spawned(rx) => match rx.recv() {
                Ok(Ok(r)) => r,
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(_) => {
                    self.failed = true;
                    return Some(Err(Error::io(
                        "lost the hashing job of",
                        self.root.to_path_buf(),
                        std::io::Error::other("the rayon task ended without a result"),
                    )));
                }
            },
            Pending::Failed(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        // The next window is enumerated and described while the caller consumes this one.
        self.pending = self.start_window();
        Some(self.take_window(results))
    }

    /// The entries of one described window, counted; the first error ends the walk.
    fn take_window(&mut self, results: Described) -> Result<Vec<WalkedEntry>> {
        let mut out = Vec::with_capacity(results.len());
        let before = self.counters;
        for r in results {
            let (entry, work) = r.inspect_err(|_| {
                self.failed = true;
                self.pending = None;
            })?;
            self.counters.entries_walked += 1;
            match work {
                Work::None => {}
                Work::StatMatched => self.counters.stat_matched += 1,
                Work::Hashed { bytes, racy } => {
                    self.counters.files_hashed += 1;
                    self.counters.bytes_hashed += bytes;
                    self.counters.racy += u64::from(racy);
                }
            }
            out.push(entry);
        }
        let dirs = &self.dir_counts;
        self.counters.dirs_read = dirs.read.load(Ordering::Relaxed);
        self.counters.dirs_proven = dirs.proven.load(Ordering::Relaxed);
        self.counters.proofs_failed = dirs.proofs_failed.load(Ordering::Relaxed);
        if let Some(p) = &self.progress {
            p.add(&self.counters.since(&before));
        }
        Ok(out)
    }
}

/// Moves enumeration to a thread of its own that reads up to two windows ahead and ends with an
/// empty window. Gives the source back if no thread can be started (the walk then enumerates
/// inline).
fn read_ahead(src: Box<NameSource>) -> std::result::Result<NameReceiver, Box<NameSource>> {
    let (tx, rx) = sync_channel::<Result<Vec<Named>>>(2);
    let slot = Arc::new(std::sync::Mutex::new(Some(src)));
    let theirs = Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name("layercache-walk".into())
        .spawn(move || {
            let Some(mut src) = theirs.lock().ok().and_then(|mut g| g.take()) else {
                return;
            };
            loop {
                let names = src.next_names(None);
                let last = !matches!(&names, Ok(n) if !n.is_empty());
                // A send fails when the walk was dropped: stop reading.
                if tx.send(names).is_err() || last {
                    break;
                }
            }
        });
    match spawned {
        Ok(_) => Ok(rx),
        // Spawning failed, so the closure never ran and the source is still in the slot; if
        // it were not, the receiver reports the missing end of the walk as an error.
        Err(_) => match slot.lock().ok().and_then(|mut g| g.take()) {
            Some(src) => Err(src),
            None => Ok(rx),
        },
    }
}

/// Describes a window in parallel, one rayon task per entry, keeping walk order.
fn describe_all(root: &Path, names: Vec<Named>, snapshot_ns: i64) -> Described {
    names
        .into_par_iter()
        .map(|(path, seen, prior)| describe(root, path, seen, prior, snapshot_ns))
        .collect()
}

impl Iterator for TreeWalk {
    type Item = Result<WalkedEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.buffer.next() {
                return Some(Ok(e));
            }
            match self.next_chunk()? {
                Ok(chunk) => self.buffer = chunk.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

fn kind_of(ft: std::fs::FileType) -> EntryKind {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_socket() {
        EntryKind::Socket
    } else if ft.is_char_device() {
        EntryKind::CharDevice
    } else {
        EntryKind::BlockDevice
    }
}

/// Reads the extended attributes of `path`, sorted by name; a symlink is followed only when
/// `follow` (the root, which the walk stats through a link too: its xattrs must be the ones of
/// the directory it stands for). A file system without xattr support yields none, and so does
/// an entry that is gone when `gone_is_none`.
fn read_xattrs(path: &Path, follow: bool, gone_is_none: bool) -> Result<Xattrs> {
    let gone = |r| none_if_gone(r, gone_is_none);
    if follow {
        let listed = none_if_gone(xattr::list_deref(path).map(Some), gone_is_none);
        collect_xattrs(path, listed, |n| gone(xattr::get_deref(path, n)))
    } else {
        let listed = none_if_gone(xattr::list(path).map(Some), gone_is_none);
        collect_xattrs(path, listed, |n| gone(xattr::get(path, n)))
    }
}

/// `r`, or `None` when it failed because the entry is gone and `on`.
fn none_if_gone<T>(r: std::io::Result<Option<T>>, on: bool) -> std::io::Result<Option<T>> {
    match r {
        Err(e) if on && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        r => r,
    }
}

/// The xattrs of `listed` names (`None`: none), each value read with `get`, sorted by name; a
/// file system without xattr support yields none (`path` names the entry in errors).
pub(crate) fn collect_xattrs(
    path: &Path,
    listed: std::io::Result<Option<xattr::XAttrs>>,
    get: impl Fn(&std::ffi::OsStr) -> std::io::Result<Option<Vec<u8>>>,
) -> Result<Xattrs> {
    let names = match listed {
        Ok(Some(n)) => n,
        Ok(None) => return Ok(Vec::new()),
        Err(e) if is_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("cannot list extended attributes of", path, e)),
    };
    let mut out = Vec::new();
    for name in names {
        match get(&name) {
            Ok(Some(v)) => out.push((name.as_bytes().to_vec(), v)),
            Ok(None) => {}
            Err(e) if is_unsupported(&e) => {}
            Err(e) => return Err(Error::io("cannot read extended attributes of", path, e)),
        }
    }
    out.sort();
    Ok(out)
}

fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENODATA))
        || e.kind() == std::io::ErrorKind::Unsupported
}

/// What describing one entry cost.
enum Work {
    /// Not a regular file.
    None,
    /// The prior row's digest was reused.
    StatMatched,
    /// The file was read; `racy` when only the racy rule forced it.
    Hashed { bytes: u64, racy: bool },
}

/// Where one entry is: its path under the root, made (one allocation) only when a syscall by
/// path needs it — never for an entry the enumerator stated and the prior row fully vouches for.
struct Located<'a> {
    root: &'a Path,
    path: &'a RelPath,
    abs: OnceCell<PathBuf>,
}

impl Located<'_> {
    fn abs(&self) -> &Path {
        self.abs.get_or_init(|| self.path.under(self.root))
    }
}

/// The lstat of one entry by its full path (the root through a symlink, as the walk does).
fn lstat_path(at: &Located<'_>) -> Result<Lstat> {
    let abs = at.abs();
    let meta = if at.path.is_root() {
        std::fs::metadata(abs)
    } else {
        std::fs::symlink_metadata(abs)
    };
    match meta {
        Ok(m) => Ok(Lstat::of(&m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::ChangedWhileReading {
            path: abs.to_path_buf(),
        }),
        Err(e) => Err(Error::io("cannot stat", abs, e)),
    }
}

/// readlink, xattrs, and the content digest of one entry (reused from `prior` when the stat
/// fast path allows), from the lstat the enumerator took (`seen`) or, if it took none, one
/// taken here.
fn describe(
    root: &Path,
    path: RelPath,
    seen: Option<Lstat>,
    prior: Option<Row>,
    snapshot_ns: i64,
) -> Result<(WalkedEntry, Work)> {
    let at = Located {
        root,
        path: &path,
        abs: OnceCell::new(),
    };
    let follow = path.is_root();
    let meta = match seen {
        Some(l) => l,
        None => lstat_path(&at)?,
    };
    let mut prior = prior;
    let kept = prior
        .as_mut()
        .and_then(|p| kept_metadata(p, meta.kind, &meta.stat));
    let mut row = row_of(&meta, snapshot_ns);
    let mut content = Content::NONE;
    if meta.kind == EntryKind::File {
        content = read_content(&at, &mut row, prior.as_ref(), &meta.stat, kept.is_none())?;
    }
    (row.link_target, row.xattrs) = match kept {
        Some(kept) => kept,
        None => {
            let xattrs = match content.xattrs.take() {
                Some(x) => x,
                // A file that changed while it was read may be gone since: it has none then
                // (its row is unstable: never equal, never stored).
                None => read_xattrs(at.abs(), follow, content.unstable)?,
            };
            (read_link(&at, meta.kind)?, xattrs)
        }
    };
    let entry = WalkedEntry {
        path,
        row,
        stat: meta.stat,
        unstable: content.unstable,
    };
    Ok((entry, content.work))
}

/// The row of an entry from its lstat, before its link target, xattrs and digest are known.
fn row_of(meta: &Lstat, snapshot_ns: i64) -> Row {
    let stat = &meta.stat;
    Row {
        kind: meta.kind,
        mode: meta.mode,
        uid: meta.uid,
        gid: meta.gid,
        size: stat.size,
        rdev: if matches!(meta.kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
            meta.rdev
        } else {
            0
        },
        link_target: Vec::new(),
        xattrs: Vec::new(),
        digest: [0; 32],
        stat: Some(RowStat {
            mtime_ns: stat.mtime_ns,
            ctime_ns: stat.ctime_ns,
            ino: stat.ino,
            dev: stat.dev,
            snapshot_ns,
        }),
    }
}

/// What reading a regular file's content gave.
struct Content {
    /// It changed while it was read (its digest is zeros).
    unstable: bool,
    work: Work,
    /// Its xattrs, read through the file the hasher opened, when asked for and read.
    xattrs: Option<Xattrs>,
}

impl Content {
    /// Not a regular file: nothing read.
    const NONE: Content = Content {
        unstable: false,
        work: Work::None,
        xattrs: None,
    };
}

/// Sets `row.digest` of a regular file: `prior`'s when the stat fast path allows, else the
/// file's hash (zeros when it changed while it was read); its xattrs are read through the open
/// file too when `with_xattrs` (the prior row did not vouch for them).
fn read_content(
    at: &Located<'_>,
    row: &mut Row,
    prior: Option<&Row>,
    stat: &StatData,
    with_xattrs: bool,
) -> Result<Content> {
    let fast = prior.map_or(FastPath::Stale, |p| fastpath::content(p, row, stat));
    if let (FastPath::Reuse, Some(p)) = (fast, prior) {
        row.digest = p.digest;
        return Ok(Content {
            work: Work::StatMatched,
            ..Content::NONE
        });
    }
    let hashed = hash_file(at.abs(), stat, at.path.is_root(), with_xattrs)?;
    let unstable = hashed.is_none();
    let (bytes, xattrs) = match hashed {
        Some(h) => {
            row.digest = h.digest;
            (h.bytes, h.xattrs)
        }
        None => (0, None),
    };
    Ok(Content {
        unstable,
        work: Work::Hashed {
            bytes,
            racy: !unstable && fast == FastPath::Racy,
        },
        xattrs,
    })
}

/// Extended attributes as recorded: (name, value), sorted by name.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The link target and xattrs of an entry, moved out of `prior` when its row
/// [vouches for them](fastpath::vouches_for_metadata) (no path syscall, no copy).
fn kept_metadata(prior: &mut Row, kind: EntryKind, stat: &StatData) -> Option<(Vec<u8>, Xattrs)> {
    fastpath::vouches_for_metadata(prior, kind, stat).then(|| {
        (
            std::mem::take(&mut prior.link_target),
            std::mem::take(&mut prior.xattrs),
        )
    })
}

/// The link target of a symlink (empty for any other type).
fn read_link(at: &Located<'_>, kind: EntryKind) -> Result<Vec<u8>> {
    if kind != EntryKind::Symlink {
        return Ok(Vec::new());
    }
    Ok(std::fs::read_link(at.abs())
        .map_err(|e| Error::io("cannot read symlink", at.abs(), e))?
        .into_os_string()
        .into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of more than two windows walks through the read-ahead thread and the rayon
    /// pipeline, and still yields every entry once, in key order, with every file hashed.
    #[test]
    fn multi_window_walk_is_complete_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = 0u64;
        for d in 0..30 {
            let sub = dir.path().join(format!("d{d:02}"));
            std::fs::create_dir(&sub).unwrap();
            for f in 0..10u64 {
                std::fs::write(sub.join(format!("f{f:04}")), f.to_le_bytes()).unwrap();
                files += 1;
            }
        }
        let mut walk = TreeWalk::new(dir.path()).unwrap();
        let paths: Vec<RelPath> = walk.by_ref().map(|e| e.unwrap().path).collect();
        let entries = files + 30 + 1;
        assert!(entries > 2 * CHUNK_ENTRIES as u64);
        assert_eq!(paths.len() as u64, entries);
        assert!(paths.windows(2).all(|w| w[0] < w[1]), "not in key order");
        assert_eq!(walk.counters().files_hashed, files);
        assert_eq!(walk.counters().bytes_hashed, files * 8);

        // A walk dropped after its first window stops its thread and jobs without hanging.
        let mut early = TreeWalk::new(dir.path()).unwrap();
        let first = early.next_chunk().unwrap().unwrap();
        assert_eq!(first.len(), CHUNK_ENTRIES);
        drop(early);
    }
}
