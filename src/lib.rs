//! # layercache
//!
//! An embedded build cache for layered container-image builders. For every layer of a build it
//! answers "can the cached output be reused, and if not, exactly why not".
//!
//! ## Data model
//!
//! One redb file holds five tables (schema v4, see [`schema`]):
//!
//! * `meta` — the schema version and the version of the crate that wrote the file.
//! * `versions` — `(layer, input digest)` → [`schema::VersionRecord`]: one per evaluation of a
//!   layer's inputs that was put — the layer definition (canonical JSON and its digest), the
//!   base, SOURCE_DATE_EPOCH, builder identity, one summary per import and overlay dir (root
//!   type, Merkle root, row count), the output manifests, build_only, time, and its origin
//!   (built here, or pulled from a registry). A layer keeps many.
//! * `layers` — layer name → [`schema::LayerRecord`]: its *current* version, the one its rows
//!   describe (the most recently used), with a generation bumped whenever the rows are replaced.
//! * `last_used` — `(layer, input digest)` → ms: recorded coarsely (at most hourly per version,
//!   or with a write that happens anyway), so a hit is not a write transaction.
//! * `rows` — `(layer, source, path key)` → [`Row`]: the last seen state of every cached tree
//!   (git's index): it makes the walk cheap and explains a miss.
//!
//! Values are encoded only by [`codec`] (bincode 2.0.1, always decoded with a size limit and
//! with trailing bytes refused); `versions` and `layers` records carry a checksum verified on
//! every read, so a damaged record is a `DamagedEntry` miss, never a hit with a wrong output.
//! What goes into the input digest, and what never does, is documented in [`version`].
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
//! ## Lookup, put, and the base chain
//!
//! A [`Session`] evaluates a layer in stacker's order — not cached, definition changed (which
//! top-level fields), base changed, SOURCE_DATE_EPOCH changed, each import (new, missing, type
//! changed, content changed with the paths), each overlay dir (new, missing from the rootfs,
//! content changed with the paths), a recorded source no longer in the layer — and returns a
//! hit or typed [`MissReason`]s. It computes the layer's input digest while walking (with the
//! stat fast path against the rows) and hits on **any** stored version with that digest, so a
//! branch switched back or a definition flipped back hits; a hit on a version other than the
//! current one makes the rows describe the tree as it is now, in one short write. A miss is
//! explained against the current version. A `built` base must itself hit now, and its base
//! hash is the entry digest ([`version::entry_digest`]) of the base version it hit on: it
//! covers the base's inputs and outputs, so rebuilding a base with other outputs misses
//! everything above it. [`Cache::gc`] drops versions by count, age and size. Per-layer results are
//! memoized within a session: a chain of N built layers costs N evaluations. A lookup made for a
//! build ([`Session::lookup`], returning a [`BuildLookup`]) also *observes* what it saw — the
//! definition digest, builder, base hash, SOURCE_DATE_EPOCH, build_only, per source its walk
//! log ([`tree::WalkLog`]: every path's row with the stat data it was taken under) and Merkle
//! root, the input digest — and [`Session::put`], which takes only a `BuildLookup` (a
//! [`LookupMode::CHECK`] lookup cannot be put), compares its own view against that: anything
//! that changed during the build makes the put fail with [`Error::InputsChanged`] naming it,
//! and nothing is stored. The put's walk takes the walk log as its stat cache: a file whose
//! stat data is unchanged since the lookup hashed it, and not racy, is not read again, so a
//! cold layer's files are read once. Across processes the same observation travels as a
//! [`LookupRecord`] (JSON; per source its root, row count and walk log with a checksum):
//! `layercache lookup --record FILE`, then `layercache put --from FILE`. A put refuses
//! `{}` manifests for a layer that is not build-only ([`Error::PutRefused`]).
//!
//! A hit also checks, at that moment, that the version's outputs exist, by one rule for every
//! kind of output (`cache/outputs.rs`, stated for users in `docs/guarantees.md`): every blob
//! each output manifest reaches (config, layers; an index's manifests) in the configured OCI
//! layout with its size — manifests read, bounded and checked against their digest, layers only
//! `stat`ed — `<rootfs_dir>/<layer>` a directory for a build-only layer, and for a version
//! built on this machine ([`schema::Origin::Built`]) every overlay dir's builder's copy a
//! directory (a version pulled from a registry has none and does not ask for it). Otherwise
//! (or when the location is not configured, so nothing can be checked) the lookup misses with
//! [`MissReason::OutputsMissing`] naming what is missing (or, for a builder's copy with
//! nothing at its path, the seed's [`MissReason::OverlayDirMissing`]); such a version still
//! counts as the base of its dependents.
//! A [`LookupMode::verify`] lookup reads every file whatever its stat data and reports the rows
//! whose stat data lied ([`Lookup::lying_rows`]), clearing their stat data.
//!
//! ## The stat fast path and the racy rule (schema v2; content slack 2 s)
//!
//! Each row also keeps the stat data it was taken under (mtime and ctime in ns, inode, device)
//! and the moment its walk began (`snapshot_ns`, from `CLOCK_REALTIME_COARSE`, the clock the
//! kernel stamps files with). A later walk reuses a file's stored digest without opening it only
//! when type, mode, uid, gid, size, inode, device, mtime and ctime all match **and the row is
//! not racy** — git's racy rule, explained once, where it is implemented: [`tree::fastpath`].
//! Racy rows are always hashed. Likewise a row with the same type, inode, device and ctime that
//! is not ctime-racy vouches for the entry's xattrs and link target. A file whose ctime is
//! within the current tick when it is hashed is read twice, around the tick's end, so a
//! same-tick rewrite cannot leave a torn digest. The stat data is never compared and never part
//! of a digest. A hit refreshes stale, missing or racy stat data (git's index refresh) in write
//! transactions of up to 64k rows, each row only if it is still the row the lookup verified; a
//! miss never writes.
//!
//! ## Migrations
//!
//! The schema version lives in `meta`. Opening an older file for writing runs every pending step
//! of [`migrate::STEPS`] (code and note in `migrations/`) in one write transaction that also
//! records the new version: a crash leaves the old version or the new, never a mix. A newer file
//! is refused before any writable open. The cache is never wiped because of a version.
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
//! 6. A stored digest is reused only under the stat fast path's full match and never for a racy
//!    row; a miss never writes (except a verify lookup clearing the stat data of rows that
//!    lied, which only makes the cache trust less); a put stores exactly what its walk saw
//!    (hashed, or reused from its lookup's walk log under the same full match and racy rule),
//!    in one transaction, and only when that equals what its lookup saw.
//! 7. A damaged entry or row is a miss for that layer, never a false hit and never a wiped
//!    cache.
//! 8. A hit never points at outputs that are not there now (the outputs rule, checked at every
//!    hit, local or remote), and a version of a layer that is not build-only always records
//!    outputs.
//!
//! ## Modules
//!
//! Arrows point down: a module uses only those listed after it, never one above.
//!
//! * [`inspect`] serves `dump`, `stats`, `check` and `compact`: `inspect/mod.rs` (the report
//!   types), `reader.rs` (the read-only snapshot, every read under the store's panic guard),
//!   `check.rs` (the integrity checker), `maintain.rs` (the only writable opens), `render.rs`
//!   (the text forms).
//! * [`cache`] looks up and puts: `cache/mod.rs` (open, prune, remove, the entry digest and
//!   decoding), `outputs.rs` (the one "outputs exist" rule: hits, pruning and push), `session.rs`
//!   (the session, its memo, the base chain), `lookup.rs` (evaluation: definition, base, epoch,
//!   sources), `source.rs` (a source's identity, walk and diff, the
//!   tee, observations), `put.rs` (put in one write transaction, checked against what its
//!   lookup saw), `record.rs` (the lookup record file a put in another process checks
//!   against), `refresh.rs` (stat refresh batches, clearing rows that lied), `gc.rs`
//!   (collecting versions under a policy, in one write transaction).
//! * [`remote`] moves entries to and from an OCI registry (the wire format, the tag and trust
//!   rules); it knows nothing of the cache and uses no other module of the crate.
//! * [`plan`] and [`stacker`] describe a build (the plan file, stacker's directory layout);
//!   [`inputs`] is the build description both produce; [`config`] says where the cache lives.
//! * [`reason`] explains misses; [`base`] resolves tar/oci bases.
//! * [`diff`] compares a walk with stored rows.
//! * [`tree`] walks and hashes: `tree/mod.rs` (the walk), [`tree::walker`] (the ordered
//!   parallel walker), [`tree::fastpath`] (the stat rules and the racy rule), `hash.rs` (file
//!   contents), `merkle.rs` (Merkle roots, [`TreeHasher`]), [`tree::log`] (a walk's compact
//!   log, the put's stat cache), [`tree::progress`] (counters for a progress display).
//! * [`store`] owns the redb file: `store/mod.rs` (open, read-only, version check),
//!   `rows.rs` (the row-key range, the row iterator, row decoding), `guard.rs` (the one panic
//!   guard, the panic-payload decoder and the damage bookkeeping), [`store::versions`] (the
//!   v3 versions, layer pointer and last-use tables); [`migrate`] upgrades old files.
//! * [`gc`] decides which versions to drop (a pure planner) and deletes unreferenced blobs;
//!   [`version`] computes a version's input and entry digests.
//! * [`fsread`] reads the files a build names (regular files only, capped).
//! * [`schema`] and [`codec`] define what is stored and how; [`path`] the key encoding and
//!   display; [`error`] the one error type.
//! * [`failpoint`] names the crash points the crash tests abort at (compiled in only with the
//!   `failpoints` feature).

#![deny(missing_docs)]

pub mod base;
pub mod cache;
pub mod codec;
pub mod config;
pub mod diff;
pub mod error;
pub mod failpoint;
pub mod fsread;
pub mod gc;
pub mod inputs;
pub mod inspect;
pub mod migrate;
pub mod path;
pub mod plan;
pub mod reason;
pub mod remote;
pub mod schema;
pub mod share;
pub mod stacker;
pub mod store;
pub mod tree;
pub mod version;

pub use cache::{
    BuildLookup, Cache, CachedEntry, GcReport, HitSource, Lookup, LookupMode, LookupRecord,
    LyingRow, Outcome, PruneReport, Pruned, PushOutcome, RemoteAnswer, RemoteFailure, RemoteLookup,
    Session, SessionCounters, SourceRole,
};
pub use config::CacheConfig;
pub use diff::{Change, Modified, TreeDiff, compare_rows, diff_trees};
pub use error::{Error, Result};
pub use inputs::{Base, Build, Import, LayerInputs, OverlayDir};
pub use path::{RelPath, escape_bytes, validate_layer_name};
pub use reason::{BaseChange, FieldChange, MissReason};
pub use schema::{EntryKind, Row, SCHEMA_VERSION};
pub use store::{DEFAULT_WRITE_WAIT, Store, TreeSummary, WriteWait};
pub use tree::{FastPath, StatData, TreeHasher, TreeWalk, WalkCounters, WalkedEntry};
