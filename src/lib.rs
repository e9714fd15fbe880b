//! # layercache
//!
//! An embedded build cache for layered container-image builders. For every layer of a build it
//! answers "can the cached output be reused, and if not, exactly why not".
//!
//! ## Data model
//!
//! One redb file holds four tables (see [`schema`]):
//!
//! * `meta` — the schema version and the version of the crate that wrote the file.
//! * `entries` — layer name → [`schema::EntryRecord`]: the layer definition (canonical JSON and
//!   its digest), the base recorded at put, SOURCE_DATE_EPOCH, one summary per import and
//!   overlay dir (root type, Merkle root, row count), the output manifests, build_only, time.
//! * `rows` — `(layer, source, path key)` → [`Row`]: one row per entry of every cached tree.
//! * `bases` — layer name → the hash that layers built `from` it record and compare.
//!
//! Values are encoded only by [`codec`] (bincode 2.0.1, always decoded with a size limit and
//! with trailing bytes refused).
//!
//! ## Key encoding
//!
//! A path key is the path relative to the tree's root, as raw bytes (non-UTF-8 names kept
//! exactly), with each `/` replaced by `\0` ([`RelPath`]). Since `\0` sorts below every other
//! byte and cannot occur in a file name, the byte order of keys equals the order of a sorted
//! depth-first walk (`a`, `a/b`, `a-b`, `a.txt`, `a0`). Hence the rows of one (layer, source)
//! are one contiguous key range, read back in walk order by a range scan, and a diff is a single
//! merge of two sorted streams ([`diff_trees`]) whose memory does not grow with the tree.
//!
//! ## What a tree digest covers
//!
//! A [`Row`] holds, for each entry at and below the root (the root's own mode and owner count):
//! type, permission bits with setuid/setgid/sticky, uid, gid, symlink target (never followed),
//! sorted extended attributes, device number for device nodes, and for regular files size and
//! blake3 digest of the content. The Merkle root of a tree ([`TreeHasher`]) covers exactly these
//! and the names of entries. It **never** covers mtime, atime, ctime, inode numbers or absolute
//! paths: the same tree copied elsewhere, or touched, has the same digest.
//!
//! ## Invariants
//!
//! 1. Rows of (layer, source) are written in one write transaction that first deletes the old
//!    range: a reader sees the old tree or the new, never a mix.
//! 2. A FIFO, socket or device node is recorded by type and never opened; a regular file is
//!    opened with `O_NOFOLLOW | O_NONBLOCK` and must `fstat` as the same file the walk saw.
//! 3. A file whose stat changes while it is hashed is never recorded (put fails with
//!    [`Error::ChangedWhileReading`]) and never compares equal (diff reports
//!    [`Change::ChangedWhileRead`]).
//! 4. A file that cannot be read is an error naming it, never silently skipped.
//! 5. A database with a newer schema is refused before it is opened for writing, so it stays
//!    byte-for-byte unchanged.
//!
//! ## Modules
//!
//! [`tree`] walks and hashes; [`diff`] compares; [`store`] owns the redb file; [`schema`] and
//! [`codec`] define what is stored and how; [`path`] the key encoding and display.

pub mod base;
pub mod cache;
pub mod codec;
pub mod diff;
pub mod error;
pub mod inputs;
pub mod inspect;
pub mod migrate;
pub mod path;
pub mod plan;
pub mod reason;
pub mod schema;
pub mod stacker;
pub mod store;
pub mod tree;

pub use cache::{
    Cache, CacheConfig, CachedEntry, Lookup, LookupMode, Outcome, PruneReport, Pruned, Session,
    SessionCounters, SourceRole,
};
pub use diff::{Change, Modified, TreeDiff, compare_rows, diff_trees};
pub use error::{Error, Result};
pub use inputs::{Base, Build, Import, LayerInputs, OverlayDir};
pub use path::{RelPath, escape_bytes, validate_layer_name};
pub use reason::{BaseChange, FieldChange, MissReason};
pub use schema::{EntryKind, Row, SCHEMA_VERSION};
pub use store::{Store, TreeSummary};
pub use tree::{StatData, TreeHasher, TreeWalk, WalkCounters, WalkedEntry};
