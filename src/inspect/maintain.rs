//! The writable operations: [`stats_exact`] (redb's own accounting), [`compact`], and redb's
//! page-level integrity check for [`check()`](super::check()). Each opens the file for writing
//! only after a read-only open has proved it a layercache database of this schema, and only as
//! long as the operation takes.
//!
//! It must never create a database, never wait for a build that holds the file (it reports
//! [`Error::InUse`] instead), and never change a record.

use std::io;
use std::path::Path;

use super::{CompactReport, ExactUsage, Inspector, Integrity, Stats, damaged_file_message};
use crate::error::{DbResultExt, Error, Result};
use crate::path::show_path;
use crate::store::Store;

/// Refuses a path that does not exist (a maintenance command must never create a database).
pub(super) fn must_exist(path: &Path) -> Result<()> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| Error::io("cannot open", path, e))
}

/// Opens for writing a file that is already known to be a layercache database of this schema
/// (a read-only open checks that first, so a writable open never initializes a foreign or
/// empty file).
fn open_writable(path: &Path) -> Result<Store> {
    must_exist(path)?;
    drop(Store::open_read_only(path)?);
    Store::open(path)
}

/// True for errors that mean "this process may not write the file" rather than damage.
fn not_writable(e: &Error) -> Option<String> {
    let io = match e {
        Error::Io { source, .. } => Some(source),
        Error::Db { source, .. } => match source.as_ref() {
            redb::Error::Io(io) => Some(io),
            _ => None,
        },
        _ => None,
    }?;
    matches!(
        io.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
    )
    .then(|| io.to_string())
}

/// [`Inspector::stats`] plus redb's exact accounting, through a brief writable open: fails
/// with [`Error::InUse`] while a build holds the file.
pub fn stats_exact(path: impl AsRef<Path>) -> Result<Stats> {
    let path = path.as_ref();
    let exact = {
        let store = open_writable(path)?;
        let txn = store.begin_write()?;
        let s = txn.stats().db(path)?;
        txn.abort().db(path)?;
        ExactUsage {
            page_size: s.page_size() as u64,
            allocated_pages: s.allocated_pages(),
            stored_bytes: s.stored_bytes(),
            metadata_bytes: s.metadata_bytes(),
            fragmented_bytes: s.fragmented_bytes(),
        }
    };
    let mut stats = Inspector::open(path)?.stats()?;
    stats.exact = Some(exact);
    Ok(stats)
}

/// Compacts the file: runs redb's `compact` until it has nothing left to move. Needs a
/// writable open and no transaction of any other process: while a build (or a dump) uses the
/// file, fails with [`Error::InUse`] and changes nothing.
pub fn compact(path: impl AsRef<Path>) -> Result<CompactReport> {
    let path = path.as_ref();
    let size = |p: &Path| -> Result<u64> {
        Ok(std::fs::metadata(p)
            .map_err(|e| Error::io("cannot stat", p, e))?
            .len())
    };
    let mut store = open_writable(path)?;
    let bytes_before = size(path)?;
    let mut passes = 0;
    if let Some(db) = store.database_mut() {
        // Each pass moves pages toward the start of the file; redb says when none is left.
        // The bound only guards against a pass that keeps reporting progress.
        while passes < 100_000 {
            match db.compact() {
                Ok(true) => passes += 1,
                Ok(false) => break,
                Err(redb::CompactionError::TransactionInProgress) => {
                    return Err(Error::InUse {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) => return Err(e).db(path),
            }
        }
    }
    drop(store);
    Ok(CompactReport {
        db: show_path(path),
        bytes_before,
        bytes_after: size(path)?,
        passes,
    })
}

/// redb's own integrity check (page checksums, allocator state), through a brief writable open
/// made after [`check()`](super::check())'s read-only checks. Skipped, not failed, while a build
/// holds the file or when this process may not write it.
pub(super) fn redb_integrity(path: &Path) -> Integrity {
    match open_writable(path) {
        Ok(mut store) => match store.database_mut().map(|db| db.check_integrity()) {
            Some(Ok(true)) => Integrity::Passed,
            Some(Ok(false)) => Integrity::Repaired,
            Some(Err(e)) => Integrity::Failed(e.to_string()),
            None => Integrity::SkippedNotWritable("opened read-only".into()),
        },
        Err(Error::InUse { .. }) => Integrity::SkippedInUse,
        Err(e) => match (not_writable(&e), damaged_file_message(&e)) {
            (Some(why), _) => Integrity::SkippedNotWritable(why),
            (None, Some(damage)) => Integrity::Failed(damage),
            (None, None) => Integrity::Failed(e.to_string()),
        },
    }
}
