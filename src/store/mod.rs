//! The redb file: opening it (create, read-only, version check and migration), transactions,
//! and closing it safely. The only module of the crate that names redb: every other room reads
//! through a [`Snapshot`] and writes through a [`Batch`] (`store/txn.rs`), and no redb type is
//! public.
//!
//! Owns: the [`Store`] handle and its lifecycle. Its submodules own the table definitions
//! (`store/tables.rs`), how values are encoded (`store/codec.rs`), the schema steps
//! (`store/migrate.rs`, with `migrations/`), the rows table (`store/rows.rs`: the one row-key
//! range type and the one row iterator, [`RowIter`]), the panic guard with the damage
//! bookkeeping (`store/guard.rs`), the one conversion of redb's errors (`store/db_error.rs`),
//! the schema-v3 tables of versions, layer pointers and last use (`store/versions.rs`), the
//! reads and maintenance `inspect` asks for (`store/inspect.rs`), the raw transactions of the
//! tests (`store/testing.rs`), and the per-cache secret in `meta` (`store/secret.rs`: made
//! with the file, or at the first writable open of a file made before it existed).
//!
//! Must never: import from `engine`, `tree` or `diff` (arrows point down: the cache writes a
//! walked tree through [`Store::write_tree`], which lives with put), or know what a source is;
//! never create a database anywhere but [`Store::open`] (and only through the temporary file
//! and link of `create_atomically`), and never wait for the write lock without a bound.
//!
//! ## Sharing the file between processes
//!
//! Every handle opens the file in redb's `MultiWriter` mode: any number of build steps
//! ([`Store::open`]) and inspection commands ([`Store::open_read_only`]) have it open at once.
//! Reads run on a snapshot of the last commit and never wait. Only one write transaction runs at
//! a time, across processes: [`Store::begin_write`] waits for it (polling, up to the wait of
//! [`Store::set_write_wait`], logging once what it waits for, then [`Error::Busy`]), and
//! [`Store::try_begin_write`] never waits (`None` when another process writes), for the
//! optional writes a lookup may skip (stat refresh, pruning).
//!
//! ## Creation
//!
//! A new database is built in a temporary file beside it (mode 0600 from its first byte),
//! with its tables and version, synced, and then hard-linked to its name, which fails if the
//! name exists: a crash or a full disk during creation leaves no half-made file at the name, and
//! of several processes creating one cache at once exactly one file wins and every process opens
//! it. An existing empty file is refused (it is not a database; remove it). A path that is not
//! a regular file (a FIFO, a device, a directory) is refused before it is opened, so a FIFO can
//! never hang the process.
//!
//! ## Not closed cleanly
//!
//! A writing process that dies (SIGKILL, a crash, a power loss) leaves redb's recovery flag set:
//! nothing committed is lost, and the next writable open repairs the allocator state by itself
//! (quick repair, milliseconds). Until then redb refuses read-only opens; [`Store::open_read_only`]
//! reports that as [`Error::NeedsRepair`], never as damage.

pub mod codec;
mod db_error;
pub(crate) mod guard;
mod inspect;
pub mod migrate;
mod put;
mod refresh;
pub(crate) mod rows;
pub(crate) mod secret;
pub mod tables;
pub mod testing;
mod txn;
pub mod versions;

pub(crate) use db_error::DbResultExt;
pub(crate) use guard::guarded;
pub(crate) use txn::{Batch, Snapshot};

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redb::ReadableDatabase;

use crate::error::{Error, Result};
use crate::schema::{EntryKind, SCHEMA_VERSION};
use tables::{LAST_USED, LAYERS, META, META_SCHEMA_VERSION, META_WRITER, ROWS, VERSIONS};

pub use guard::panic_message;
use guard::take_damage;
pub use rows::RowIter;
use rows::RowRange;

/// First bytes of every redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// How long an open for an optional write may take before the write is skipped: an
/// uncontended open takes milliseconds; one that takes longer waits for another process's
/// write transaction (redb's writable open takes the writer lock).
const OPEN_GRACE: Duration = Duration::from_millis(250);

type OpenResult = std::result::Result<redb::Database, redb::DatabaseError>;
/// Where a writable open that has not finished yet will deliver its database.
type PendingOpen = std::sync::mpsc::Receiver<std::thread::Result<OpenResult>>;

/// Opens `path` for writing on a helper thread, so that the wait redb's writable open does for
/// another process's write transaction can be bounded: `Ok(None)` when the open did not finish
/// by `deadline`, or when `cancel` was set. The unfinished open is kept in `pending` and the
/// next call waits for it instead of starting another (if the store is dropped first, the
/// thread closes what it opened).
fn open_writable_until(
    path: &Path,
    pending: &std::sync::Mutex<Option<PendingOpen>>,
    deadline: Instant,
    announce: Option<Duration>,
    cancel: Option<&AtomicBool>,
) -> Result<Option<redb::Database>> {
    let mut slot = pending.lock().map_err(|_| closed(path))?;
    let rx = match slot.take() {
        Some(rx) => rx,
        None => spawn_open(path)?,
    };
    let start = Instant::now();
    let mut told = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let step = left.min(Duration::from_millis(50));
        match rx.recv_timeout(step) {
            Ok(Ok(r)) => {
                if told {
                    tracing::info!(
                        "got the write lock on {} after {:.1} s",
                        crate::path::show_path(path),
                        start.elapsed().as_secs_f64()
                    );
                }
                return r.map(Some).map_err(|e| open_error(path, e));
            }
            Ok(Err(payload)) => {
                guard::note_damage(path);
                let msg = panic_message(payload.as_ref());
                return Err(db_error::damaged(
                    path,
                    format!("opening the database failed inside redb ({msg}): the file is damaged"),
                ));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(closed(path));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline || cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            *slot = Some(rx);
            return Ok(None);
        }
        if let Some(total) = announce
            && !told
            && start.elapsed() >= OPEN_GRACE.min(total)
        {
            announce_wait(path, total);
            told = true;
        }
    }
}

/// Starts redb's writable open of `path` on a thread of its own; its result comes on the
/// receiver (a panic inside redb as the thread's `Err`).
fn spawn_open(path: &Path) -> Result<PendingOpen> {
    let (tx, rx) = std::sync::mpsc::channel::<std::thread::Result<OpenResult>>();
    let p = path.to_path_buf();
    std::thread::Builder::new()
        .name("layercache-open".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(|| builder().open(&p));
            // A receiver that is gone drops the database here, which closes it.
            let _ = tx.send(r);
        })
        .map_err(|e| Error::io("cannot start a thread to open", path, e))?;
    Ok(rx)
}

/// The one message a wait for the write lock prints (warn, so it shows at every usual level).
fn announce_wait(path: &Path, total: Duration) {
    tracing::warn!(
        "Blocking waiting for the write lock on {} (held by another layercache process), for \
         up to {} s",
        crate::path::show_path(path),
        total.as_secs()
    );
}

fn read_only(path: &Path) -> Error {
    db_error::unavailable(path, "the database was opened read-only")
}

fn closed(path: &Path) -> Error {
    db_error::unavailable(path, "the database was closed")
}

impl Drop for Store {
    /// Closes the database. redb writes its allocator state when a writable database closes and
    /// trusts the pages it reads to do so: on a damaged file that can panic inside redb, which
    /// must not turn into an abort (a panic while unwinding) or a crashed builder at exit.
    ///
    /// Once this process has seen this file damaged (a panic inside redb, redb's `Corrupted`, an
    /// undecodable record), closing it could panic inside redb and panic again during redb's
    /// own unwinding, which aborts the process; so then the handle is leaked instead of closed (the file needs redb's quick repair at its next writable open,
    /// which redb does by itself).
    fn drop(&mut self) {
        let handle = (self.ro.take(), self.rw.take());
        if take_damage(&self.path) {
            std::mem::forget(handle);
            return;
        }
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(handle))).is_err() {
            tracing::warn!(path = %self.path.display(), "closing the damaged cache database failed inside redb; check it (`inspect::check`, the CLI's `check`)");
        }
    }
}

/// An open cache database.
///
/// Build steps open it with [`Store::open`], any number at once: it is read through a read-only
/// handle, and a writable handle is opened only when a write is wanted (so a build step that
/// only reads never holds the file for writing, and a kill of it leaves nothing to repair).
/// Inspection opens it with [`Store::open_read_only`], which never writes.
pub struct Store {
    path: PathBuf,
    /// The read-only handle (`None` when the file had to be opened for writing at once: it
    /// needed a repair).
    ro: Option<redb::ReadOnlyDatabase>,
    /// The writable handle, opened on the first write.
    rw: std::sync::OnceLock<redb::Database>,
    /// A writable open still waiting for another process's write transaction.
    pending: std::sync::Mutex<Option<PendingOpen>>,
    /// False for [`Store::open_read_only`]: no write, ever.
    writable: bool,
    migration: Option<migrate::MigrationReport>,
    wait: WriteWait,
}

/// How long a write (`Store::batch`) waits for another process's write transaction, and what can
/// cut the wait short.
#[derive(Debug, Clone)]
pub struct WriteWait {
    /// The longest wait; zero fails at once with [`Error::Busy`].
    pub timeout: Duration,
    /// When set (by a signal handler), the wait ends at once with [`Error::Interrupted`].
    pub cancel: Option<Arc<AtomicBool>>,
}

/// The default wait for the write lock: long enough for any single put of a large tree.
pub const DEFAULT_WRITE_WAIT: Duration = Duration::from_secs(300);

impl Default for WriteWait {
    fn default() -> Self {
        WriteWait {
            timeout: DEFAULT_WRITE_WAIT,
            cancel: None,
        }
    }
}

/// What a written tree amounts to: its Merkle root, row count and root type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeSummary {
    /// Merkle root over the rows ([`TreeHasher`](crate::tree::TreeHasher)).
    pub root_digest: [u8; 32],
    /// Number of rows.
    pub rows: u64,
    /// Type of the root entry (`None` for an empty tree).
    pub root_kind: Option<EntryKind>,
}

/// The storage engine's page cache (read cache and write buffer together), in bytes. Its
/// default (1 GiB) keeps every page a scan reads, so a lookup's peak memory grew with the
/// database file (a touched lookup at 10^6 files: 340 MiB against a 311 MB file; 145 MiB with
/// this cache, docs/performance.md §9). A lookup reads each row page once, so a smaller cache
/// costs it little; the OS page cache still holds the file.
const PAGE_CACHE_BYTES: usize = 64 << 20;

fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
    b.set_cache_size(PAGE_CACHE_BYTES);
    b
}

/// Refuses, before anything opens it, a path that is not a regular file: opening a FIFO would
/// block until a writer appears, and a device or directory is never a cache. `Ok(None)` when
/// nothing is there.
fn regular_file(path: &Path) -> Result<Option<std::fs::Metadata>> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot stat", path, e)),
        Ok(m) if m.is_file() => Ok(Some(m)),
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            let t = m.file_type();
            let what = if t.is_dir() {
                "a directory"
            } else if t.is_fifo() {
                "a FIFO"
            } else if t.is_socket() {
                "a socket"
            } else if t.is_char_device() || t.is_block_device() {
                "a device"
            } else {
                "not a regular file"
            };
            Err(Error::NotACache {
                path: path.to_path_buf(),
                detail: format!("it is {what}, not a regular file"),
            })
        }
    }
}

/// Warns when the database is readable or writable by group or others: it records the build's
/// paths, digests and definitions, and the cache's answers can be forged by whoever can write it.
fn warn_if_shared(path: &Path, meta: &std::fs::Metadata) {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "cache database {} has mode {mode:03o}: other users can read or change it; \
             `chmod 600 {}` makes it private again",
            crate::path::show_path(path),
            crate::path::show_path(path)
        );
    }
}

/// Removes the temporary file of a creation unless it was handed over.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Creates a new, initialised database at `path` atomically: built in a temporary file in the
/// same directory (0600 from the start), synced, then hard-linked to `path`, which fails if
/// another process created it first (that file is then used). The temporary file is removed in
/// every case, so a full disk or a crash leaves nothing at `path`.
fn create_atomically(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cache".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp_path = dir.join(format!(".{name}.new-{}-{nanos}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp_path)
        .map_err(|e| Error::io("cannot create", path, e))?;
    let tmp = TempFile(Some(tmp_path.clone()));
    {
        // The file exists and is empty: redb initialises it.
        let db = builder()
            .create(&tmp_path)
            .map_err(|e| open_error(path, e))?;
        let mut txn = db.begin_write().db(path)?;
        txn.set_quick_repair(true);
        create_tables(path, &txn)?;
        txn.commit().db(path)?;
        db_close(path, db)?;
    }
    file.sync_all()
        .map_err(|e| Error::io("cannot sync", &tmp_path, e))?;
    drop(file);
    match std::fs::hard_link(&tmp_path, path) {
        Ok(()) => {
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("cannot create", path, e)),
    }
    drop(tmp);
    Ok(())
}

fn db_close(path: &Path, db: redb::Database) -> Result<()> {
    db.close().map_err(|e| open_error(path, e))
}

/// The tables and facts of a new database, inside `txn`.
fn create_tables(path: &Path, txn: &redb::WriteTransaction) -> Result<()> {
    let mut meta = txn.open_table(META).db(path)?;
    meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())
        .db(path)?;
    meta.insert(META_WRITER, env!("CARGO_PKG_VERSION").as_bytes())
        .db(path)?;
    txn.open_table(VERSIONS).db(path)?;
    txn.open_table(LAYERS).db(path)?;
    txn.open_table(LAST_USED).db(path)?;
    txn.open_table(ROWS).db(path)?;
    drop(meta);
    secret::insert(path, txn)?;
    Ok(())
}

/// Refuses a non-empty file that does not start with redb's magic bytes.
fn check_magic(path: &Path) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut head = [0u8; 9];
    let mut got = 0;
    while got < head.len() {
        match f.read(head.get_mut(got..).unwrap_or(&mut [])) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("cannot read", path, e)),
        }
    }
    if got < head.len() || head != REDB_MAGIC {
        let detail = if got > 0
            && head.get(..got).is_some_and(|h| h.iter().all(|b| *b == 0))
            && all_zero(&mut f)
        {
            // What an interrupted first creation by layercache 0.1 left behind (creation is
            // atomic since): nothing was ever stored in it.
            "it holds only zero bytes: a cache whose creation was interrupted (nothing was ever \
             stored in it); remove it and a new cache is created"
        } else {
            "it is not a redb database file"
        };
        return Err(Error::NotACache {
            path: path.to_path_buf(),
            detail: detail.into(),
        });
    }
    Ok(())
}

/// Whether the rest of `f` (read up to [`ZERO_SCAN_LIMIT`] bytes) holds only zero bytes; a
/// file longer than that is not called a never-initialised cache.
fn all_zero(f: &mut std::fs::File) -> bool {
    let mut buf = [0u8; 8192];
    let mut seen = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                seen += n as u64;
                if seen > ZERO_SCAN_LIMIT || buf.get(..n).is_none_or(|b| b.iter().any(|x| *x != 0))
                {
                    return false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// How much of an all-zero file is read before it is called a never-initialised cache (the
/// files an interrupted creation left were about 70 KB).
const ZERO_SCAN_LIMIT: u64 = 1 << 20;

/// Reads the schema version from a read transaction: `Ok(None)` for a file with no tables at
/// all (a new database), an error for a redb file that is not ours.
fn read_version(path: &Path, txn: &redb::ReadTransaction) -> Result<Option<u32>> {
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            let any = txn.list_tables().db(path)?.next().is_some();
            if any {
                return Err(Error::NotACache {
                    path: path.to_path_buf(),
                    detail: "a redb database without layercache's meta table".into(),
                });
            }
            return Ok(None);
        }
        Err(redb::TableError::TableTypeMismatch { .. }) => {
            return Err(Error::NotACache {
                path: path.to_path_buf(),
                detail: "its meta table has other key or value types".into(),
            });
        }
        Err(e) => return Err(e).db(path),
    };
    let v = meta.get(META_SCHEMA_VERSION).db(path)?;
    let Some(v) = v else {
        return Err(Error::NotACache {
            path: path.to_path_buf(),
            detail: "its meta table holds no schema version".into(),
        });
    };
    let bytes: [u8; 4] = v.value().try_into().map_err(|_| Error::Corrupt {
        path: path.to_path_buf(),
        table: "meta",
        key: META_SCHEMA_VERSION.into(),
        detail: "the schema version is not 4 bytes".into(),
    })?;
    Ok(Some(u32::from_le_bytes(bytes)))
}

/// A read-only handle on an existing redb file (no layercache checks yet).
fn open_existing_read_only(path: &Path) -> Result<redb::ReadOnlyDatabase> {
    if regular_file(path)?.is_none() {
        return Err(Error::io(
            "cannot open",
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    check_magic(path)?;
    builder()
        .open_read_only(path)
        .map_err(|e| open_error(path, e))
}

fn empty_redb(path: &Path) -> Error {
    Error::NotACache {
        path: path.to_path_buf(),
        detail: "an empty redb database".into(),
    }
}

/// Refuses a schema newer than this code.
fn refuse_newer(path: &Path, found: Option<u32>) -> Result<()> {
    match found {
        Some(v) if v > SCHEMA_VERSION => Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found: v,
            supported: SCHEMA_VERSION,
        }),
        _ => Ok(()),
    }
}

impl Store {
    /// Opens the cache database at `path` for writing, creating it (mode 0600, atomically: see
    /// the module doc) if it does not exist. A file of an older schema is migrated in one
    /// transaction (see [`migrate`]); a file written by a newer layercache is refused and
    /// left byte-for-byte unchanged; a file that is not a layercache database (an empty file
    /// included) is refused. Waits for another process's write transaction as
    /// [`WriteWait::default`] says.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Self::open_waiting(path, WriteWait::default())
    }

    /// [`Store::open`] with the given wait for the write lock (used by creation, migration and
    /// [`Store::begin_write`]).
    pub fn open_waiting(path: impl AsRef<Path>, wait: WriteWait) -> Result<Store> {
        let path = path.as_ref();
        // redb trusts the pages it reads: a damaged file can panic inside it.
        guarded(path, || Self::open_unguarded(path, wait, true))
    }

    /// Opens an existing cache database for writing; never creates one (for maintenance:
    /// `check --repair`, `compact`, `stats --exact`). A file that was not closed cleanly is
    /// repaired by this open.
    pub fn open_existing(path: impl AsRef<Path>, wait: WriteWait) -> Result<Store> {
        let path = path.as_ref();
        guarded(path, || Self::open_unguarded(path, wait, false))
    }

    fn open_unguarded(path: &Path, wait: WriteWait, create: bool) -> Result<Store> {
        let meta = match regular_file(path)? {
            Some(m) => m,
            None if create => {
                create_atomically(path)?;
                regular_file(path)?.ok_or_else(|| {
                    Error::io(
                        "cannot open",
                        path,
                        std::io::Error::other("it was removed while being created"),
                    )
                })?
            }
            None => {
                return Err(Error::io(
                    "cannot open",
                    path,
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
        };
        if meta.len() == 0 {
            return Err(Error::NotACache {
                path: path.to_path_buf(),
                detail: "it is an empty file; remove it and a new cache is created".into(),
            });
        }
        warn_if_shared(path, &meta);
        check_magic(path)?;
        let mut store = Store {
            path: path.to_path_buf(),
            ro: None,
            rw: std::sync::OnceLock::new(),
            pending: std::sync::Mutex::new(None),
            writable: true,
            migration: None,
            wait,
        };
        // Read-only first: it never waits, and it lets the version be checked before anything
        // could write to a file from a newer layercache (which must stay exactly as it is).
        match builder().open_read_only(path) {
            Ok(ro) => store.ro = Some(ro),
            // Not closed cleanly: only a writable open repairs it (and it may wait for one).
            Err(redb::DatabaseError::RepairAborted) => {
                store.writer(true)?;
            }
            Err(e) => return Err(open_error(path, e)),
        }
        store.init()?;
        Ok(store)
    }

    /// Sets how long [`Store::begin_write`] waits for another process's write transaction.
    pub fn set_write_wait(&mut self, wait: WriteWait) {
        self.wait = wait;
    }

    /// The schema version of the cache database at `path`, read without changing anything and
    /// without refusing other versions (for `layercache migrate --dry-run`).
    pub fn peek_version(path: impl AsRef<Path>) -> Result<u32> {
        let path = path.as_ref();
        // redb trusts the pages it reads: a damaged file can panic inside it.
        guarded(path, || Self::peek_version_unguarded(path))
    }

    fn peek_version_unguarded(path: &Path) -> Result<u32> {
        let db = open_existing_read_only(path)?;
        let txn = db.begin_read().db(path)?;
        read_version(path, &txn)?.ok_or_else(|| empty_redb(path))
    }

    /// What opening this store migrated, if anything.
    pub fn migration(&self) -> Option<&migrate::MigrationReport> {
        self.migration.as_ref()
    }

    /// Opens an existing cache database read-only. Works while another process holds it open
    /// for writing through [`Store::open`]. Refuses files of other schema versions.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        // redb trusts the pages it reads: a damaged file can panic inside it.
        guarded(path, || Self::open_read_only_unguarded(path))
    }

    fn open_read_only_unguarded(path: &Path) -> Result<Store> {
        let db = open_existing_read_only(path)?;
        let store = Store {
            path: path.to_path_buf(),
            ro: Some(db),
            rw: std::sync::OnceLock::new(),
            pending: std::sync::Mutex::new(None),
            writable: false,
            migration: None,
            wait: WriteWait::default(),
        };
        let txn = store.begin_read()?;
        match read_version(path, &txn)? {
            None => return Err(empty_redb(path)),
            Some(v) => Self::check_version(path, Some(v))?,
        }
        Ok(store)
    }

    /// Refuses any schema but this code's: newer ([`refuse_newer`]) or older.
    fn check_version(path: &Path, found: Option<u32>) -> Result<()> {
        refuse_newer(path, found)?;
        match found {
            Some(v) if v < SCHEMA_VERSION => Err(Error::SchemaTooOld {
                path: path.to_path_buf(),
                found: v,
                supported: SCHEMA_VERSION,
            }),
            _ => Ok(()),
        }
    }

    /// Checks the version of the database and migrates it if it is older. Migration takes the
    /// write lock, waiting like [`Store::begin_write`]: a lookup cannot read an older schema,
    /// and the process holding the lock is most likely migrating the same file.
    fn init(&mut self) -> Result<()> {
        self.init_version()?;
        // A database made before the per-cache secret existed gets one now (once).
        secret::ensure(self)
    }

    fn init_version(&mut self) -> Result<()> {
        let version = {
            let txn = self.begin_read()?;
            read_version(&self.path, &txn)?
        };
        match version {
            Some(v) if v >= SCHEMA_VERSION => refuse_newer(&self.path, Some(v)),
            Some(v) => {
                // Wait for the lock, then look again: another process may have migrated it.
                let guard = self.begin_write()?;
                let now = read_version(&self.path, &self.begin_read()?)?;
                guard.abort().db(&self.path)?;
                match (now, self.rw.get()) {
                    (Some(now), Some(db)) if now < SCHEMA_VERSION => {
                        self.migration = Some(migrate::run_pending(db, &self.path, now)?);
                        Ok(())
                    }
                    (now, _) => refuse_newer(&self.path, now.or(Some(v))),
                }
            }
            // A database made by another program with redb, or emptied by one: not ours to
            // initialise.
            None => Err(empty_redb(&self.path)),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when opened with [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        !self.writable
    }

    /// The writable handle, opening it on first use: for a required write (`required`) waiting
    /// up to the [`WriteWait`] (announced, then [`Error::Busy`] or [`Error::Interrupted`]); for
    /// an optional one only [`OPEN_GRACE`] (`None` if that was not enough).
    fn writer(&self, required: bool) -> Result<Option<&redb::Database>> {
        self.writer_announcing(required, required)
    }

    /// [`Store::writer`], saying on stderr that it waits only when `announce`.
    fn writer_announcing(&self, required: bool, announce: bool) -> Result<Option<&redb::Database>> {
        if let Some(db) = self.rw.get() {
            return Ok(Some(db));
        }
        if !self.writable {
            return Err(read_only(&self.path));
        }
        let start = Instant::now();
        let limit = if required {
            self.wait.timeout.max(OPEN_GRACE)
        } else {
            OPEN_GRACE
        };
        let cancel = self.wait.cancel.as_deref();
        let announce = announce.then_some(self.wait.timeout);
        match open_writable_until(&self.path, &self.pending, start + limit, announce, cancel)? {
            Some(db) => {
                // Only this thread opens it: `&self` methods run on one thread at a time here
                // (redb handles are used from the caller's thread), so the cell is empty.
                let _ = self.rw.set(db);
                Ok(self.rw.get())
            }
            None if !required => Ok(None),
            None => Err(self.gave_up(start)),
        }
    }

    /// The error of a required write that could not get the lock in time.
    fn gave_up(&self, start: Instant) -> Error {
        if self
            .wait
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
        {
            Error::Interrupted {
                path: self.path.clone(),
            }
        } else {
            Error::Busy {
                path: self.path.clone(),
                waited_secs: start.elapsed().as_secs(),
            }
        }
    }

    /// Begins a read transaction on the last committed state.
    ///
    /// `pub(crate)` until the engine reads through [`Snapshot`] only (#21); then `pub(super)`.
    /// Tests reach it through `testing::RawTransactions`.
    pub(super) fn begin_read(&self) -> Result<redb::ReadTransaction> {
        match (self.rw.get(), &self.ro) {
            (Some(db), _) => db.begin_read().db(&self.path),
            (None, Some(db)) => db.begin_read().db(&self.path),
            (None, None) => Err(closed(&self.path)),
        }
    }

    /// Begins a write transaction (quick-repair enabled, so reopening after a crash is fast),
    /// waiting while another process writes: the first time it has to wait it logs (warn) what
    /// it waits for, and after the timeout of its [`WriteWait`] it fails with [`Error::Busy`]
    /// (at once for a zero timeout); a set cancel flag ends the wait with
    /// [`Error::Interrupted`].
    ///
    /// `pub(crate)` until the engine writes through [`Batch`] only (#21); then `pub(super)`.
    pub(super) fn begin_write(&self) -> Result<redb::WriteTransaction> {
        let start = Instant::now();
        let Some(db) = self.writer(true)? else {
            return Err(self.gave_up(start));
        };
        let mut told = false;
        let mut pause = Duration::from_millis(5);
        loop {
            match db.try_begin_write() {
                Ok(mut txn) => {
                    if told {
                        tracing::info!(
                            "got the write lock on {} after {:.1} s",
                            crate::path::show_path(&self.path),
                            start.elapsed().as_secs_f64()
                        );
                    }
                    txn.set_quick_repair(true);
                    return Ok(txn);
                }
                Err(redb::TransactionError::WouldBlock) => {}
                Err(e) => return Err(e).db(&self.path),
            }
            let waited = start.elapsed();
            if waited >= self.wait.timeout
                || self
                    .wait
                    .cancel
                    .as_ref()
                    .is_some_and(|c| c.load(Ordering::SeqCst))
            {
                return Err(self.gave_up(start));
            }
            if !told {
                announce_wait(&self.path, self.wait.timeout);
                told = true;
            }
            std::thread::sleep(pause.min(self.wait.timeout.saturating_sub(waited)));
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Begins a write transaction if no other transaction (of any process) is writing; `None`
    /// when one is, or when the store was opened read-only. Never waits: for the optional
    /// writes of a lookup (stat refresh, a version switch, last use, pruning), which are skipped.
    ///
    /// `pub(crate)` until the engine writes through [`Batch`] only (#21); then `pub(super)`.
    pub(super) fn try_begin_write(&self) -> Result<Option<redb::WriteTransaction>> {
        if !self.writable {
            return Ok(None);
        }
        let Some(db) = self.writer(false)? else {
            return Ok(None);
        };
        match db.try_begin_write() {
            Ok(mut txn) => {
                txn.set_quick_repair(true);
                Ok(Some(txn))
            }
            Err(redb::TransactionError::WouldBlock) => Ok(None),
            Err(e) => Err(e).db(&self.path),
        }
    }

    /// A read [`Snapshot`] of the last commit.
    #[allow(dead_code)]
    pub(crate) fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot::new(self.begin_read()?, &self.path))
    }

    #[allow(dead_code)]
    /// A write [`Batch`], waiting for the write lock as [`Store::begin_write`] does.
    pub(crate) fn batch(&self) -> Result<Batch> {
        Ok(Batch::new(self.begin_write()?, &self.path))
    }

    #[allow(dead_code)]
    /// A write [`Batch`] if no other process writes now (never waits), as
    /// [`Store::try_begin_write`].
    pub(crate) fn try_batch(&self) -> Result<Option<Batch>> {
        Ok(self.try_begin_write()?.map(|t| Batch::new(t, &self.path)))
    }

    /// The stored rows of (layer, source) in key order, decoded lazily from one range scan.
    ///
    /// `pub(crate)` until the engine reads rows through [`Snapshot::rows`] only (#21).
    pub(super) fn rows(
        &self,
        txn: &redb::ReadTransaction,
        layer: &str,
        source: &str,
    ) -> Result<RowIter> {
        RowIter::open(&self.path, txn, &RowRange::source(layer, source))
    }

    /// Number of rows stored for (layer, source).
    pub fn row_count(&self, layer: &str, source: &str) -> Result<u64> {
        let snap = self.snapshot()?;
        let mut n = 0;
        for r in snap.rows(layer, source)? {
            r?;
            n += 1;
        }
        Ok(n)
    }

    /// The raw writable redb database, for the maintenance operations of `store/inspect.rs`
    /// that need `&mut` (integrity check, compaction). Opens the writable handle if it is not
    /// open yet, waiting (silently) up to the store's [`WriteWait`]; fails on a store opened
    /// read-only.
    fn database_mut(&mut self) -> Result<&mut redb::Database> {
        let start = Instant::now();
        if self.writer_announcing(true, false)?.is_none() {
            return Err(self.gave_up(start));
        }
        self.rw.get_mut().ok_or_else(|| closed(&self.path))
    }

    /// The schema version stored in the file.
    pub fn schema_version(&self) -> Result<u32> {
        let txn = self.begin_read()?;
        Ok(read_version(&self.path, &txn)?.unwrap_or(SCHEMA_VERSION))
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> Error {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            Error::InUse {
                path: path.to_path_buf(),
            }
        }
        redb::DatabaseError::RepairAborted => Error::NeedsRepair {
            path: path.to_path_buf(),
        },
        redb::DatabaseError::UpgradeRequired(v) => Error::NotACache {
            path: path.to_path_buf(),
            detail: format!("a redb file of an old format ({v}) that redb 4 cannot open"),
        },
        other => db_error::engine_error(path, other.into()),
    }
}
