//! The one conversion of the storage engine's errors into the crate's: [`DbResultExt::db`]
//! on any engine result, and the few errors the store makes itself (a panic caught inside the
//! engine, a handle that is read-only or closed).
//!
//! Owns: which engine error is "in use", which is damage, which is I/O ([`DbError`]'s kind is
//! decided here, once). Must never: record damage (that is `guard.rs`'s, where an error is
//! produced or handled, never as a side effect of converting one), or be bypassed by a
//! hand-made [`Error::Db`] outside `store/`.

use std::path::Path;

use crate::error::{DbError, DbErrorKind, Error, Result};

/// Maps any storage-engine error to [`Error::Db`] (or [`Error::InUse`]) for a given database
/// path.
pub(crate) trait DbResultExt<T> {
    /// The result with the engine's error converted, naming `path`.
    fn db(self, path: &Path) -> Result<T>;
}

impl<T, E: Into<redb::Error>> DbResultExt<T> for std::result::Result<T, E> {
    fn db(self, path: &Path) -> Result<T> {
        self.map_err(|e| engine_error(path, e.into()))
    }
}

/// The crate's error for one of the engine's.
pub(crate) fn engine_error(path: &Path, e: redb::Error) -> Error {
    match e {
        redb::Error::DatabaseAlreadyOpen => Error::InUse {
            path: path.to_path_buf(),
        },
        // Only a conversion: whoever handles the error records damage (the store's guard), so
        // converting has no side effect.
        other => Error::Db {
            path: path.to_path_buf(),
            source: db_error(other),
        },
    }
}

/// The opaque [`DbError`] of an engine error: its message as the engine words it, its kind
/// classified here.
pub(crate) fn db_error(e: redb::Error) -> DbError {
    let message = e.to_string();
    let kind = match e {
        redb::Error::Corrupted(detail) => DbErrorKind::Damaged(detail),
        redb::Error::RepairAborted => DbErrorKind::RepairAborted,
        redb::Error::Io(io) => DbErrorKind::Io(io),
        _ => DbErrorKind::Other,
    };
    DbError::new(kind, message)
}

/// [`Error::Db`] saying the file is damaged: `detail` says how it showed.
pub(crate) fn damaged(path: &Path, detail: String) -> Error {
    engine_error(path, redb::Error::Corrupted(detail))
}

/// [`Error::Db`] for a handle that cannot do what was asked (`what`: "the database was opened
/// read-only", "the database was closed").
pub(crate) fn unavailable(path: &Path, what: &'static str) -> Error {
    engine_error(path, redb::Error::Io(std::io::Error::other(what)))
}
