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

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::path::Path;

    use super::*;

    /// Each engine error is classified once, here: what a caller can ask of the opaque
    /// `DbError` answers what the engine's own variant said, and `Display` keeps its words.
    #[test]
    fn engine_errors_are_classified_once() {
        let path = Path::new("/tmp/cache.db");
        let Error::Db { source, .. } = damaged(path, "page 7 is garbage".into()) else {
            panic!("damage must be Error::Db");
        };
        assert!(source.is_damage());
        assert_eq!(source.damage_detail().as_deref(), Some("page 7 is garbage"));
        assert!(source.to_string().contains("page 7 is garbage"), "{source}");
        assert!(source.io_error().is_none() && source.source().is_none());

        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        let Error::Db { source, .. } = engine_error(path, redb::Error::Io(eof)) else {
            panic!("I/O must be Error::Db");
        };
        assert!(!source.is_damage());
        let io = source.io_error().map(std::io::Error::kind);
        assert_eq!(io, Some(std::io::ErrorKind::UnexpectedEof));
        let cause = source
            .source()
            .and_then(|c| c.downcast_ref::<std::io::Error>());
        assert!(cause.is_some(), "the I/O error is the source");
        assert!(
            source
                .damage_detail()
                .is_some_and(|d| d.contains("truncated"))
        );

        let Error::Db { source, .. } = engine_error(path, redb::Error::RepairAborted) else {
            panic!("an aborted repair must be Error::Db");
        };
        assert!(!source.is_damage() && source.damage_detail().is_some());

        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let Error::Db { source, .. } = engine_error(path, redb::Error::Io(denied)) else {
            panic!("I/O must be Error::Db");
        };
        assert!(
            source.damage_detail().is_none(),
            "permission denied is not damage"
        );

        let Error::Db { source, .. } = unavailable(path, "the database was closed") else {
            panic!("a closed handle must be Error::Db");
        };
        assert!(!source.is_damage() && source.to_string().contains("closed"));

        assert!(matches!(
            engine_error(path, redb::Error::DatabaseAlreadyOpen),
            Error::InUse { .. }
        ));
    }

    /// `inspect`'s one-line damage message is built from the classification alone.
    #[test]
    fn damaged_file_message_names_the_file_and_the_damage() {
        let path = Path::new("/tmp/cache.db");
        let msg = crate::inspect::damaged_file_message(&damaged(path, "bad page".into()));
        let msg = msg.unwrap_or_default();
        assert!(
            msg.contains("/tmp/cache.db") && msg.contains("bad page"),
            "{msg}"
        );
        let other = engine_error(path, redb::Error::TransactionInProgress);
        assert_eq!(crate::inspect::damaged_file_message(&other), None);
    }
}
