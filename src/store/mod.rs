//! The redb file: opening it (create, read-only, version check and migration), transactions,
//! and closing it safely.
//!
//! Owns: the [`Store`] handle and its lifecycle. Its submodules own the rows table
//! (`store/rows.rs`: the one row-key range type and the one row iterator, [`RowIter`]) and the
//! panic guard with the damage bookkeeping (`store/guard.rs`), and the schema-v3 tables of
//! versions, layer pointers and last use (`store/versions.rs`).
//!
//! Must never: import from `cache`, `tree` or `diff` (arrows point down: the cache writes a
//! walked tree through [`Store::write_tree`], which lives with put), or know what a source is.

pub(crate) mod guard;
pub(crate) mod rows;
pub mod versions;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use redb::ReadableDatabase;

use crate::error::{DbResultExt, Error, Result};
use crate::schema::{
    EntryKind, LAST_USED, LAYERS, META, META_SCHEMA_VERSION, META_WRITER, ROWS, SCHEMA_VERSION,
    VERSIONS,
};

pub use guard::panic_message;
use guard::{guard_redb, take_damage};
pub use rows::RowIter;
use rows::RowRange;

/// First bytes of every redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

enum Handle {
    Rw(redb::Database),
    Ro(redb::ReadOnlyDatabase),
    /// Only while dropping (see `Drop for Store`).
    Closed,
}

fn closed(path: &Path) -> Error {
    Error::Db {
        path: path.to_path_buf(),
        source: Box::new(redb::Error::Io(std::io::Error::other(
            "the database was closed",
        ))),
    }
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
        let handle = std::mem::replace(&mut self.db, Handle::Closed);
        if take_damage(&self.path) {
            std::mem::forget(handle);
            return;
        }
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(handle))).is_err() {
            tracing::warn!(path = %self.path.display(), "closing the damaged cache database failed inside redb; run `layercache check`");
        }
    }
}

/// An open cache database.
///
/// Writers open it with [`Store::open`] (one writing process at a time); any number of other
/// processes can read the committed state at the same time with [`Store::open_read_only`].
pub struct Store {
    path: PathBuf,
    db: Handle,
    migration: Option<crate::migrate::MigrationReport>,
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

fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
    b
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
        return Err(Error::NotACache {
            path: path.to_path_buf(),
            detail: "it is not a redb database file".into(),
        });
    }
    Ok(())
}

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
    if let Err(e) = std::fs::metadata(path) {
        return Err(Error::io("cannot open", path, e));
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
    /// Opens the cache database at `path` for writing, creating it (mode 0600) if it does not
    /// exist. A file of an older schema is migrated in one transaction (see [`crate::migrate`]);
    /// a file written by a newer layercache is refused and left byte-for-byte unchanged; a file
    /// that is not a layercache database is refused.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        // redb trusts the pages it reads: a damaged file can panic inside it.
        guard_redb(path, || Self::open_unguarded(path))
    }

    fn open_unguarded(path: &Path) -> Result<Store> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io("cannot create", path, e)),
                }
            }
            Err(e) => return Err(Error::io("cannot stat", path, e)),
            Ok(m) if m.len() > 0 => {
                check_magic(path)?;
                // Look before opening for writing: a writable open may touch the header, and a
                // file from a newer layercache must stay exactly as it is.
                if let Ok(ro) = builder().open_read_only(path) {
                    let txn = ro.begin_read().db(path)?;
                    refuse_newer(path, read_version(path, &txn)?)?;
                }
            }
            Ok(_) => {}
        }
        let db = builder().create(path).map_err(|e| open_error(path, e))?;
        let mut store = Store {
            path: path.to_path_buf(),
            db: Handle::Rw(db),
            migration: None,
        };
        store.init()?;
        Ok(store)
    }

    /// The schema version of the cache database at `path`, read without changing anything and
    /// without refusing other versions (for `layercache migrate --dry-run`).
    pub fn peek_version(path: impl AsRef<Path>) -> Result<u32> {
        let path = path.as_ref();
        // redb trusts the pages it reads: a damaged file can panic inside it.
        guard_redb(path, || Self::peek_version_unguarded(path))
    }

    fn peek_version_unguarded(path: &Path) -> Result<u32> {
        let db = open_existing_read_only(path)?;
        let txn = db.begin_read().db(path)?;
        read_version(path, &txn)?.ok_or_else(|| empty_redb(path))
    }

    /// What opening this store migrated, if anything.
    pub fn migration(&self) -> Option<&crate::migrate::MigrationReport> {
        self.migration.as_ref()
    }

    /// Opens an existing cache database read-only. Works while another process holds it open
    /// for writing through [`Store::open`]. Refuses files of other schema versions.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        // redb trusts the pages it reads: a damaged file can panic inside it.
        guard_redb(path, || Self::open_read_only_unguarded(path))
    }

    fn open_read_only_unguarded(path: &Path) -> Result<Store> {
        let db = open_existing_read_only(path)?;
        let store = Store {
            path: path.to_path_buf(),
            db: Handle::Ro(db),
            migration: None,
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

    /// Creates the tables of a new database, or checks the version of an existing one and
    /// migrates it if it is older.
    fn init(&mut self) -> Result<()> {
        let version = {
            let txn = self.begin_read()?;
            read_version(&self.path, &txn)?
        };
        if let Some(v) = version {
            refuse_newer(&self.path, Some(v))?;
            if v < SCHEMA_VERSION
                && let Handle::Rw(db) = &self.db
            {
                self.migration = Some(crate::migrate::run_pending(db, &self.path, v)?);
            }
            return Ok(());
        }
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META).db(&self.path)?;
            meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())
                .db(&self.path)?;
            meta.insert(META_WRITER, env!("CARGO_PKG_VERSION").as_bytes())
                .db(&self.path)?;
            txn.open_table(VERSIONS).db(&self.path)?;
            txn.open_table(LAYERS).db(&self.path)?;
            txn.open_table(LAST_USED).db(&self.path)?;
            txn.open_table(ROWS).db(&self.path)?;
        }
        txn.commit().db(&self.path)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when opened with [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        matches!(self.db, Handle::Ro(_))
    }

    /// Begins a read transaction on the last committed state.
    pub fn begin_read(&self) -> Result<redb::ReadTransaction> {
        match &self.db {
            Handle::Rw(db) => db.begin_read().db(&self.path),
            Handle::Ro(db) => db.begin_read().db(&self.path),
            Handle::Closed => Err(closed(&self.path)),
        }
    }

    /// Begins a write transaction only if no other one is alive (in this process or, with a
    /// shared writer, another): `None` when it would wait. For the optional writes of a lookup
    /// (a version switch, a coarse last use), which are skipped rather than queued behind a
    /// put.
    pub fn try_begin_write(&self) -> Result<Option<redb::WriteTransaction>> {
        match &self.db {
            Handle::Rw(db) => match db.try_begin_write() {
                Ok(mut txn) => {
                    txn.set_quick_repair(true);
                    Ok(Some(txn))
                }
                Err(redb::TransactionError::WouldBlock) => Ok(None),
                Err(e) => Err(e).db(&self.path),
            },
            Handle::Closed => Err(closed(&self.path)),
            Handle::Ro(_) => Ok(None),
        }
    }

    /// Begins a write transaction (quick-repair enabled, so reopening after a crash is fast).
    pub fn begin_write(&self) -> Result<redb::WriteTransaction> {
        match &self.db {
            Handle::Rw(db) => {
                let mut txn = db.begin_write().db(&self.path)?;
                txn.set_quick_repair(true);
                Ok(txn)
            }
            Handle::Closed => Err(closed(&self.path)),
            Handle::Ro(_) => Err(Error::Db {
                path: self.path.clone(),
                source: Box::new(redb::Error::Io(std::io::Error::other(
                    "the database was opened read-only",
                ))),
            }),
        }
    }

    /// The stored rows of (layer, source) in key order, decoded lazily from one range scan.
    pub fn rows(&self, txn: &redb::ReadTransaction, layer: &str, source: &str) -> Result<RowIter> {
        RowIter::open(&self.path, txn, &RowRange::source(layer, source))
    }

    /// Number of rows stored for (layer, source).
    pub fn row_count(&self, layer: &str, source: &str) -> Result<u64> {
        let txn = self.begin_read()?;
        let mut n = 0;
        for r in self.rows(&txn, layer, source)? {
            r?;
            n += 1;
        }
        Ok(n)
    }

    /// The raw redb database when opened for writing (`None` when read-only), for the
    /// maintenance operations that need `&mut`: `check_integrity` and `compact`.
    pub fn database_mut(&mut self) -> Option<&mut redb::Database> {
        match &mut self.db {
            Handle::Rw(db) => Some(db),
            Handle::Ro(_) | Handle::Closed => None,
        }
    }

    /// The schema version stored in the file.
    pub fn schema_version(&self) -> Result<u32> {
        let txn = self.begin_read()?;
        Ok(read_version(&self.path, &txn)?.unwrap_or(SCHEMA_VERSION))
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> Error {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse {
            path: path.to_path_buf(),
        },
        redb::DatabaseError::UpgradeRequired(v) => Error::NotACache {
            path: path.to_path_buf(),
            detail: format!("a redb file of an old format ({v}) that redb 4 cannot open"),
        },
        other => Error::Db {
            path: path.to_path_buf(),
            source: Box::new(other.into()),
        },
    }
}
