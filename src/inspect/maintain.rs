//! The writable operations: [`stats_exact`] (the storage engine's own accounting),
//! [`compact`], and the engine's page-level integrity check for [`check()`](super::check()),
//! each one typed call of the store. Each opens the file for writing
//! only after a read-only open has proved it a layercache database of this schema, and only as
//! long as the operation takes.
//!
//! It must never create a database, never wait for a build that holds the file (it reports
//! [`Error::InUse`] instead), and never change a record. [`repair`] is the one operation here
//! whose purpose is to write: it lets the database repair a file that was not closed cleanly.

use std::io;
use std::path::Path;
use std::time::Duration;

use super::{CompactReport, ExactUsage, Inspector, Integrity, Stats, damaged_file_message};
use crate::error::{Error, Result};
use crate::path::show_path;
use crate::store::{Store, WriteWait};

/// Refuses a path that does not exist (a maintenance command must never create a database).
pub(super) fn must_exist(path: &Path) -> Result<()> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| Error::io("cannot open", path, e))
}

/// Opens for writing a file that is already known to be a layercache database of this schema
/// (a read-only open checks that first, so a writable open never initializes a foreign or
/// empty file; [`Store::open_existing`] never creates one). Never waits: while another process
/// writes (a put), it reports [`Error::InUse`] (the integrity check and compaction would
/// otherwise wait for that transaction).
fn open_writable(path: &Path) -> Result<Store> {
    must_exist(path)?;
    drop(Store::open_read_only(path)?);
    writable_now(path)
}

/// How long a maintenance command lets the writable open take: enough for an open (and a
/// quick repair) on a loaded machine, far less than a build step's put.
const MAINTENANCE_WAIT: Duration = Duration::from_secs(3);

/// The writable open itself, refusing to wait for another process's write transaction beyond
/// [`MAINTENANCE_WAIT`].
fn writable_now(path: &Path) -> Result<Store> {
    let in_use = || Error::InUse {
        path: path.to_path_buf(),
    };
    let wait = WriteWait {
        timeout: MAINTENANCE_WAIT,
        cancel: None,
    };
    let mut store = match Store::open_existing(path, wait) {
        Err(Error::Busy { .. }) => return Err(in_use()),
        other => other?,
    };
    match store.open_writer() {
        Err(Error::Busy { .. }) => return Err(in_use()),
        other => other?,
    }
    match store.try_batch()? {
        Some(probe) => probe.abort()?,
        None => return Err(in_use()),
    }
    Ok(store)
}

/// `check --repair`: when the file was not closed cleanly, a writable open repairs it (the
/// database's quick repair) and closes it cleanly. Returns whether it needed the repair. Never creates a
/// file, never waits for a build.
pub fn repair(path: impl AsRef<Path>) -> Result<bool> {
    let path = path.as_ref();
    must_exist(path)?;
    match Store::open_read_only(path) {
        Ok(_) => Ok(false),
        Err(Error::NeedsRepair { .. }) => {
            drop(writable_now(path)?);
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// True for errors that mean "this process may not write the file" rather than damage.
fn not_writable(e: &Error) -> Option<String> {
    let io = match e {
        Error::Io { source, .. } => Some(source),
        Error::Db { source, .. } => source.io_error(),
        _ => None,
    }?;
    matches!(
        io.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
    )
    .then(|| io.to_string())
}

/// [`Inspector::stats`] plus the storage engine's exact accounting, through a brief writable
/// open: fails with [`Error::InUse`] while a build holds the file.
pub fn stats_exact(path: impl AsRef<Path>) -> Result<Stats> {
    let path = path.as_ref();
    let exact = {
        let s = open_writable(path)?.file_stats()?;
        ExactUsage {
            page_size: s.page_size,
            allocated_pages: s.allocated_pages,
            stored_bytes: s.stored_bytes,
            metadata_bytes: s.metadata_bytes,
            fragmented_bytes: s.fragmented_bytes,
        }
    };
    let mut stats = Inspector::open(path)?.stats()?;
    stats.exact = Some(exact);
    Ok(stats)
}

/// Compacts the file: runs the storage engine's compaction until it has nothing left to move. Needs a
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
    let passes = store.compact()?;
    drop(store);
    Ok(CompactReport {
        db: show_path(path),
        bytes_before,
        bytes_after: size(path)?,
        passes,
    })
}

/// The storage engine's own integrity check (page checksums, allocator state), through a brief
/// writable open made after [`check()`](super::check())'s read-only checks. Skipped, not
/// failed, while a build holds the file or when this process may not write it.
pub(super) fn engine_integrity(path: &Path) -> Integrity {
    match open_writable(path) {
        Ok(mut store) => match store.check_integrity() {
            Ok(Ok(true)) => Integrity::Passed,
            Ok(Ok(false)) => Integrity::Repaired,
            Ok(Err(detail)) => Integrity::Failed(detail),
            Err(e) => Integrity::SkippedNotWritable(e.to_string()),
        },
        Err(Error::InUse { .. }) => Integrity::SkippedInUse,
        Err(e) => match (not_writable(&e), damaged_file_message(&e)) {
            (Some(why), _) => Integrity::SkippedNotWritable(why),
            (None, Some(damage)) => Integrity::Failed(damage),
            (None, None) => Integrity::Failed(e.to_string()),
        },
    }
}
