//! The one error type of the library. Every variant that concerns a file names it, and every
//! message ends with what to do about it.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in layercache. A cache *miss* is not an error: it is a
/// [`crate::MissReason`]. Errors are for conditions the caller has to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database file is held by another process in a way that excludes this open.
    #[error(
        "cache database {path} is in use by another process; wait for the build holding it to \
         finish (readers can only share it with a writer opened by layercache itself)"
    )]
    InUse {
        /// The database file.
        path: PathBuf,
    },

    /// Another layercache process kept the write lock longer than this process was willing to
    /// wait (`--wait`, [`crate::CacheConfig::write_wait`]). Nothing was written.
    #[error(
        "cache database {path} is being written by another layercache process; gave up waiting \
         for its write lock after {waited_secs} s and recorded nothing; retry when that build \
         step is done, or allow a longer write wait",
        path = path.display()
    )]
    Busy {
        /// The database file.
        path: PathBuf,
        /// How long this process waited, in whole seconds.
        waited_secs: u64,
    },

    /// A signal (SIGINT, SIGTERM) asked this process to stop while it waited for the cache.
    /// Nothing was written.
    #[error("interrupted while waiting for the write lock on {path}; nothing was recorded", path = path.display())]
    Interrupted {
        /// The database file.
        path: PathBuf,
    },

    /// The database was not closed cleanly (a writing process was killed or crashed). Nothing
    /// committed is lost; the database refuses read-only opens until a writable open repairs it.
    #[error(
        "cache database {path} was not closed cleanly (a build step was killed); nothing \
         committed is lost: the next writable open (a build step, \
         or a repair: `inspect::repair`, the CLI's `check` with repair) repairs it",
        path = path.display()
    )]
    NeedsRepair {
        /// The database file.
        path: PathBuf,
    },

    /// An entry or row is larger than the reader's decode limit would accept: recording it
    /// would make an entry that can never be read back. Nothing was written.
    #[error(
        "{what} would be {size} bytes encoded, over the {limit}-byte limit a reader of the \
         cache accepts; nothing was recorded in {path}: make it smaller",
        path = path.display()
    )]
    RecordTooLarge {
        /// The database file.
        path: PathBuf,
        /// What is too large (the entry record of a layer, the row of a path), escaped.
        what: String,
        /// Its encoded size.
        size: usize,
        /// The limit (the store codec's `ENTRY_LIMIT` or `ROW_LIMIT`).
        limit: usize,
    },

    /// The file exists but is not a database of the storage engine layercache uses, or is one
    /// without layercache's tables.
    #[error(
        "{path} is not a layercache database ({detail}); point the cache at a cache file, or \
         move this file away so a new cache can be created"
    )]
    NotACache {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        detail: String,
    },

    /// The database was written by a newer layercache. Nothing was changed.
    #[error(
        "{path} has cache schema version {found}, newer than the {supported} this layercache \
         understands; nothing was changed: upgrade layercache to use this cache"
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Version stored in the file.
        found: u32,
        /// Newest version this code knows.
        supported: u32,
    },

    /// The database was written by an older layercache and must be migrated first.
    #[error(
        "{path} has cache schema version {found}, older than the {supported} this layercache \
         uses; open it for writing (or run `layercache migrate`) to upgrade it in place"
    )]
    SchemaTooOld {
        /// The database file.
        path: PathBuf,
        /// Version stored in the file.
        found: u32,
        /// Version this code uses.
        supported: u32,
    },

    /// The storage engine reported an error while using the database.
    #[error("cache database {path}: {source}; if this persists, check its integrity (`inspect::check`, the CLI's `check`)", path = path.display())]
    Db {
        /// The database file.
        path: PathBuf,
        /// What the storage engine said.
        #[source]
        source: DbError,
    },

    /// A stored record could not be decoded: the database is damaged (or was written by a
    /// broken build). Only that record is affected.
    #[error(
        "damaged record in {path}, table {table}, key {key}: {detail}; a check (`inspect::check`, the CLI's `check`) \
         lists every damaged record, and putting the layer again replaces it"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Table name.
        table: &'static str,
        /// The key, escaped for display.
        key: String,
        /// What was wrong.
        detail: String,
    },

    /// An I/O error on a file or directory of the build inputs, or on the database file.
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        /// What was being done ("cannot read", "cannot open", ...).
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A file changed while it was being hashed (its stat before and after differ). Its content
    /// cannot be trusted and is never recorded.
    #[error("{path} changed while it was being read; retry when the tree is no longer being written to", path = path.display())]
    ChangedWhileReading {
        /// The file.
        path: PathBuf,
    },

    /// A layer was asked for that the build does not define.
    #[error("layer {name:?} is not defined in this build; check the layer name or the plan")]
    UnknownLayer {
        /// The name asked for.
        name: String,
    },

    /// A layer is built on a layer the build does not define.
    #[error(
        "layer {layer:?} is built from {base:?}, which this build does not define; add it or fix the base"
    )]
    MissingBase {
        /// The dependent layer.
        layer: String,
        /// The base it names.
        base: String,
    },

    /// Built bases form a cycle.
    #[error("layers are built from each other in a cycle: {}; break the cycle", chain.join(" -> "))]
    BaseCycle {
        /// The layers of the cycle, the first repeated at the end.
        chain: Vec<String>,
    },

    /// The base of a layer could not be resolved (unreadable OCI layout, ambiguous tag, ...).
    #[error("cannot resolve the base of layer {layer:?}: {detail}")]
    Base {
        /// The layer whose base it is.
        layer: String,
        /// What went wrong and what to do.
        detail: String,
    },

    /// The inputs of a layer changed between its lookup and its put; nothing was stored.
    #[error(
        "inputs of layer {layer:?} changed between lookup and put, nothing was cached: {}; \
         rebuild the layer from the current inputs",
        crate::refusal::PutChange::join(changes)
    )]
    InputsChanged {
        /// The layer.
        layer: String,
        /// What changed, each typed ([`crate::PutChange`]; `Display` gives the sentence).
        changes: Vec<crate::refusal::PutChange>,
    },

    /// A plan or manifests file could not be read or parsed.
    #[error("invalid {what} {path}: {detail}", path = path.display())]
    Parse {
        /// "plan file", "manifests file", "index.json", ...
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },

    /// A stacker cache file of a format `layercache import-stacker` does not read (it reads
    /// formats 12 to 16). Nothing was imported and the database was not opened.
    #[error(
        "stacker cache file {path} has format version {version}, which this layercache cannot \
         import (it reads versions 12 to 16); nothing was imported: build once without \
         importing, or use a layercache that knows this format",
        path = path.display()
    )]
    UnsupportedStackerFormat {
        /// The stacker cache file.
        path: PathBuf,
        /// The version it has.
        version: u64,
    },

    /// A layer name, source name or relative path is not acceptable.
    #[error("invalid {what} {value:?}: {why}")]
    InvalidName {
        /// What kind of name ("layer name", "source name", ...).
        what: &'static str,
        /// The offending value, escaped.
        value: String,
        /// Why it is refused.
        why: &'static str,
    },

    /// A path names a file of the wrong type: a device, FIFO, socket or directory where a
    /// regular file is read, or a file where a directory is expected. It was never read (a
    /// FIFO is never opened for a blocking read).
    #[error(
        "{what} {path} is {found}, not {expected}; check that the path names the right file",
        path = path.display()
    )]
    WrongFileType {
        /// What the file is for ("plan file", "base tarball", "OCI layout", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What it is ("a character device", "a FIFO", "a directory", ...).
        found: &'static str,
        /// What it should be ("a regular file", "a directory", "a regular file of at most
        /// 64 MiB").
        expected: String,
    },

    /// A file read whole into memory is larger than its documented limit.
    #[error(
        "{what} {path} is larger than its limit of {} ({size} bytes or more); a {what} is \
         never this large: check that the path names the right file",
        show_size(*limit),
        path = path.display()
    )]
    TooLarge {
        /// What the file is for ("plan file", "manifests file", "OCI index").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its size as seen (at least this many bytes).
        size: u64,
        /// The limit, in bytes.
        limit: u64,
    },

    /// A layer that must never be cached ([`crate::LayerInputs::uncacheable`]) was put.
    #[error("layer {layer:?} is not cacheable ({why}); build it every time and do not put it")]
    NotCacheable {
        /// The layer.
        layer: String,
        /// Why ("layer has binds").
        why: String,
    },

    /// A put that would record a layer whose outputs cannot be reused: manifests `{}` for a
    /// layer that is not build-only (a later hit would tell the builder to reuse an output that
    /// was never produced), or a put without anything its lookup saw. Nothing was stored.
    #[error("cannot record layer {layer:?}: {why}; nothing was cached")]
    PutRefused {
        /// The layer.
        layer: String,
        /// Why ([`crate::PutRefusal`]; `Display` says what to do).
        why: crate::refusal::PutRefusal,
    },

    /// A lookup record (`layercache lookup --record FILE`) is of another layer than the put
    /// it was passed to. Nothing was stored.
    #[error(
        "the lookup record {path} is of layer {found:?}, not {layer:?}; pass the record of this \
         layer's lookup; nothing was cached",
        path = path.display()
    )]
    RecordOfAnotherLayer {
        /// The record file.
        path: PathBuf,
        /// The layer being put.
        layer: String,
        /// The layer the record is of.
        found: String,
    },

    /// A lookup record whose MAC does not match under this cache's secret: it was edited,
    /// written by hand, or made by a lookup of another cache database. Nothing was cached.
    #[error(
        "the lookup record of layer {layer:?} was not made by a lookup of the cache {db} (or was \
         changed since): look the layer up again with this cache, recording that lookup, and \
         put from that record; nothing was cached",
        db = db.display()
    )]
    RecordNotFromThisCache {
        /// The cache database.
        db: PathBuf,
        /// The layer the record names.
        layer: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// What the storage engine said about the database file ([`Error::Db`]). Opaque on purpose:
/// the engine's own error types are not part of this crate's API, so a new major version of
/// the engine is not a breaking change of ours. `Display` gives the engine's message;
/// [`DbError::is_damage`] and [`DbError::io_error`] answer what a caller may act on.
#[derive(Debug)]
pub struct DbError {
    kind: DbErrorKind,
    message: String,
}

/// What kind of failure a [`DbError`] is, classified once where the engine's error is
/// converted (in `store/`).
#[derive(Debug)]
pub(crate) enum DbErrorKind {
    /// The engine found the file damaged (the detail it gave).
    Damaged(String),
    /// The engine gave up on a repair of a file that was not closed cleanly.
    RepairAborted,
    /// An I/O error reading or writing the file.
    Io(std::io::Error),
    /// Anything else.
    Other,
}

impl DbError {
    /// An error of `kind` whose `Display` is `message`; made by `store/` only.
    pub(crate) fn new(kind: DbErrorKind, message: String) -> Self {
        DbError { kind, message }
    }

    /// True when the storage engine found the file damaged (a page that does not check out,
    /// or a panic inside the engine on a damaged page).
    pub fn is_damage(&self) -> bool {
        matches!(self.kind, DbErrorKind::Damaged(_))
    }

    /// The I/O error under this one, if it is one (permission denied, a short read, ...).
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match &self.kind {
            DbErrorKind::Io(io) => Some(io),
            _ => None,
        }
    }

    /// Why the file itself is damaged, when this error says so: the engine's detail, a repair
    /// it could not complete, or a file shorter than its own header says. `None` otherwise.
    pub(crate) fn damage_detail(&self) -> Option<String> {
        match &self.kind {
            DbErrorKind::Damaged(d) => Some(d.clone()),
            // layercache never aborts a repair itself: the storage engine gave up on one.
            DbErrorKind::RepairAborted => {
                Some("it needs a repair that the database could not complete".to_string())
            }
            DbErrorKind::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                Some("it is shorter than its own header says: truncated".to_string())
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            DbErrorKind::Io(io) => Some(io),
            _ => None,
        }
    }
}

/// A size in bytes for messages: whole MiB when it is one (`64 MiB`), else bytes. It lives here,
/// below every module that words a size, so that `error` imports nothing from them.
pub(crate) fn show_size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}
