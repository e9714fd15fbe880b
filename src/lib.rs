//! # layercache
//!
//! An embedded build cache for layered container-image builders. For every layer of a build it
//! answers "can the cached output be reused, and if not, exactly why not".
//!
//! ```
//! use layercache::{Base, Build, Cache, CacheConfig, LayerInputs, MissReason, Outcome, OverlayDir};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let root = dir.path();
//! # std::fs::create_dir_all(root.join("src"))?;
//! # std::fs::create_dir_all(root.join("roots/app/src"))?;
//! let cache = Cache::open(CacheConfig {
//!     db: root.join("cache.db"),
//!     oci_layout: None, // where output blobs live; without it no version can hit
//!     rootfs_dir: None,
//!     ..Default::default() // waits 300 s for another writer's lock
//! })?;
//! let mut build = Build::new();
//! build.add("app", LayerInputs {
//!     definition: serde_json::json!({"run": "make"}),
//!     base: Base::Scratch,
//!     imports: vec![],
//!     overlay_dirs: vec![OverlayDir {
//!         key: "src".into(),
//!         source: root.join("src"),
//!         rootfs_path: root.join("roots/app/src"),
//!     }],
//!     source_date_epoch: None,
//!     build_only: false,
//!     ..Default::default()
//! });
//! let mut session = cache.session(&build)?;
//! let lookup = session.lookup("app")?;
//! match &lookup.outcome {
//!     Outcome::Hit(entry) => println!("reuse {:?}", entry.manifests),
//!     Outcome::Miss(reasons) => {
//!         assert!(matches!(reasons[0], MissReason::NotCached));
//!         // build the layer, then: session.put(&lookup, &its_output_descriptors)?
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The README's longer example (compiled as a test too) builds two layers and puts them.
//!
//! ## Features
//!
//! * `remote` — sharing through an OCI registry ([`Remote`], `Session::push_layer`,
//!   `Session::lookup_remote`) and signed entries ([`SigningKey`], [`TrustedKeys`]): brings
//!   the registry client, tokio and rustls.
//! * `cli` (default, implies `remote`) — the `layercache` binary's crates (clap, indicatif,
//!   anyhow, tracing-subscriber).
//!
//! A builder that embeds the cache and never shares depends on
//! `layercache = { version = "0.1", default-features = false }` and compiles none of them.
//!
//! ## Data model
//!
//! One database file holds five tables (schema v4, see `schema`):
//!
//! * `meta` — the schema version, the version of the crate that wrote the file, and the
//!   per-cache secret that binds lookup records to this file (`store/secret.rs`; made with the
//!   file or at its first writable open, never printed or exported).
//! * `versions` — `(layer, input digest)` → `schema::VersionRecord`: one per evaluation of a
//!   layer's inputs that was put — the layer definition (canonical JSON and its digest), the
//!   base, SOURCE_DATE_EPOCH, builder identity, one summary per import and overlay dir (root
//!   type, Merkle root, row count), the output manifests, build_only, time, and its origin
//!   (built here, or pulled from a registry). A layer keeps many.
//! * `layers` — layer name → `schema::LayerRecord`: its *current* version, the one its rows
//!   describe (the most recently used), with a generation bumped whenever the rows are replaced.
//! * `last_used` — `(layer, input digest)` → ms: recorded coarsely (at most hourly per version,
//!   or with a write that happens anyway), so a hit is not a write transaction.
//! * `rows` — `(layer, source, path key)` → `Row`: the last seen state of every cached tree
//!   (git's index): it makes the walk cheap and explains a miss.
//!
//! Values are encoded only by `store/codec.rs` (bincode 2.0.1, always decoded with a size limit and
//! with trailing bytes refused); `versions` and `layers` records carry a checksum verified on
//! every read, so a damaged record is a `DamagedEntry` miss, never a hit with a wrong output.
//! Rows, read once per lookup, are decoded by a reader of exactly their canonical encoding that
//! leaves every other input to the serde path (same value or same error for every input; a
//! damaged row is caught by its version's Merkle root and row count).
//! What goes into the input digest, and what never does, is documented in `version`.
//!
//! ## Key encoding
//!
//! A path key is the path relative to the tree's root, as raw bytes (non-UTF-8 names kept
//! exactly), with each `/` replaced by `\0` ([`RelPath`]). Since `\0` sorts below every other
//! byte and cannot occur in a file name, the byte order of keys equals the order of a sorted
//! depth-first walk (`a`, `a/b`, `a-b`, `a.txt`, `a0`). Hence the rows of one (layer, source)
//! are one contiguous key range, read back in walk order by a range scan, and a diff is a single
//! merge of two sorted streams (`diff_trees`) whose memory does not grow with the tree.
//!
//! ## What a tree digest covers
//!
//! A `Row` holds, for each entry at and below the root (the root's own mode and owner count):
//! type, permission bits with setuid/setgid/sticky, uid, gid, symlink target (never followed),
//! sorted extended attributes, device number for device nodes, and for regular files size and
//! blake3 digest of the content. The Merkle root of a tree (`TreeHasher`) covers exactly these
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
//! hash is the entry digest (`version::entry_digest`) of the base version it hit on: it
//! covers the base's inputs and outputs, so rebuilding a base with other outputs misses
//! everything above it. [`Cache::gc`] drops versions by count, age and size. Per-layer results are
//! memoized within a session: a chain of N built layers costs N evaluations. A lookup made for a
//! build ([`Session::lookup`], returning a [`BuildLookup`]) also *observes* what it saw — the
//! definition digest, builder, base hash, SOURCE_DATE_EPOCH, build_only, per source its walk
//! log (`tree::WalkLog`: every path's row with the stat data it was taken under) and Merkle
//! root, the input digest — and [`Session::put`], which takes only a `BuildLookup` (a
//! [`LookupMode::CHECK`] lookup cannot be put), compares its own view against that: anything
//! that changed during the build makes the put fail with [`Error::InputsChanged`] naming it,
//! and nothing is stored. The put's walk takes the walk log as its stat cache: a file whose
//! stat data is unchanged since the lookup hashed it, and not racy, is not read again, so a
//! cold layer's files are read once. Across processes the same observation travels as a
//! [`LookupRecord`] (JSON; per source its root, row count and walk log with a checksum; bound to
//! its database by a keyed MAC under the per-cache secret, so an edited record is refused):
//! `layercache lookup --record FILE`, then `layercache put --from FILE`. A put refuses
//! `{}` manifests for a layer that is not build-only ([`Error::PutRefused`]).
//!
//! ### A shell-driven chain: one walk per layer per lookup and per put
//!
//! Each CLI process starts with an empty memo, so without help the `lookup` and the `put` of
//! layer k would evaluate all k−1 built bases below it again (N² walks for an N-layer chain).
//! Instead a build passes its own result for the base along: `lookup --record` of a layer
//! that hits writes into its record the version it hit and the layer's pointer (current
//! version + rows generation) read in one snapshot after the hit; `put --from FILE` writes the
//! version it stored and the pointer it left into the same FILE. The dependent's `lookup
//! --base-record BASE_FILE` ([`Session::trust_base_record`]) takes that as the base's result,
//! evaluating nothing below it, when the record is of this cache (its MAC), of the base layer
//! with the same definition, builder, SOURCE_DATE_EPOCH and build_only as now, and its proof
//! **holds**: read now in one snapshot, the base's pointer is the same (current and
//! generation) and that version's entry digest is the recorded one. The dependent's own record
//! then carries the base's proof, and its `put --from` checks it again *inside its write
//! transaction*; only if it no longer holds are the bases walked (and must hit now, as
//! before).
//!
//! When a base is walked again: whenever no base record is given, the record has no result
//! (the base missed and was not put into it), the definition/builder/epoch/build_only of the
//! base changed, or the proof does not hold — the base was put again (by anyone, with any
//! sources or outputs: a put always moves the generation), its rows were switched to another
//! version by a hit, or its version was removed, collected or overwritten with other outputs.
//!
//! Why trusting cannot give a false hit: the base hash a dependent is compared on is a claim
//! "this layer is built on the base version with this entry digest". The proof guarantees the
//! version is exactly the one this build's step of the base hit or stored — the one the
//! builder holds and builds the dependent on — so a hit of the dependent is a version built on
//! exactly that base output, with the dependent's own sources walked as always. What the proof
//! does **not** see is the base's sources on disk after the base's step: a base file edited
//! after the base's put and before the dependent's lookup. That edit is not an input of the
//! dependent in this build (the builder built the base before it; the dependent is built on
//! that output either way); the next build's lookup of the base walks it, misses, rebuilds it,
//! and every dependent then misses on its base hash. The walk would instead have made the
//! dependent miss *and* its put fail in this build. The trust is not silent: `bases_trusted`
//! counts it in `--json`. What the shell order cannot guarantee, the caller must: the base
//! record passed is the one of *this* build's step of the base (a stale record from an older
//! build is trusted only while nothing has put or switched the base since, and then vouches
//! for that older version). The put of a layer still walks its own sources (checked against its
//! lookup's walk log): that walk is what catches a source edited during the build, and
//! dropping it would let a file edited during the build and reverted after the put hit on
//! outputs built from the edit.
//!
//! A hit also checks, at that moment, that the version's outputs exist, by one rule for every
//! kind of output (`engine/outputs.rs`, stated for users in `docs/guarantees.md`): every blob
//! each output manifest reaches (config, layers; an index's manifests) in the configured OCI
//! layout with its size — manifests read, bounded and checked against their digest, layers only
//! `stat`ed — `<rootfs_dir>/<layer>` a directory for a build-only layer, and for a version
//! built on this machine (`schema::Origin::Built`) every overlay dir's builder's copy a
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
//! not racy** — git's racy rule, explained once, where it is implemented: `tree::fastpath`.
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
//! of `migrate::STEPS` (code and note in `migrations/`) in one write transaction that also
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
//! * `report` asks the cache about every layer of a build through the public session API and
//!   renders the answers as text or one self-contained HTML page ([`build_report`]).
//! * [`inspect`] serves `dump`, `stats`, `check` and `compact`: `inspect/mod.rs` (the report
//!   types), `reader.rs` (the read-only snapshot, every read under the store's panic guard),
//!   `check.rs` (the integrity checker), `maintain.rs` (the only writable opens), `render.rs`
//!   (the text forms).
//! * `engine` looks up and puts: `engine/mod.rs` (open, opt-in prune, remove, the entry digest and
//!   decoding), `outputs.rs` (the one "outputs exist" rule: hits, pruning and push), `session.rs`
//!   (the session, its memo, the base chain), `lookup.rs` (evaluation as read state → observe →
//!   decide → apply: definition, base, epoch, sources, in that order, and the verdict; it
//!   writes nothing itself), `observe.rs` (walks one source against its stored rows — the tee,
//!   the diff — and returns an observation: what differs, the rows a hit would refresh or a
//!   switch would write, the rows that lied; it never writes), `apply.rs` (every write a lookup
//!   makes, once it has decided: stat refresh batches, last use, the version switch, clearing
//!   rows that lied), `source.rs` (a source's identity and what a put checks against),
//!   `put.rs` (put in one write transaction, checked against what its lookup saw, writing only
//!   the rows that differ), `record.rs`
//!   (the lookup record file a put in another process checks against), `gc.rs` (collecting
//!   versions under a policy, in one write transaction).
//! * `share` (feature `remote`) shares entries through an OCI registry: `share/lookup.rs` (the
//!   engine's one door: a remote lookup and a push), `share/record.rs` (the wire record and the
//!   rule that accepts one), `share/registry/` (the registry client: the wire format, the tag
//!   and trust rules; `registry::sign`: minisign signatures made at push and verified at every
//!   remote hit against trusted keys; it knows nothing of the cache).
//! * `stacker_import` adopts a stacker cache file: it checks each layer's inputs against
//!   stacker's records and imports the ones that match through the ordinary lookup and put.
//! * `plan` and `stacker` describe a build (the plan file, stacker's directory layout);
//!   `inputs` is the build description both produce; `config` says where the cache lives.
//! * `reason` explains misses, `refusal` why a put stored nothing (typed, below the error type);
//!   `base` resolves tar/oci bases.
//! * `diff` compares a walk with stored rows.
//! * `tree` walks and hashes: `tree/mod.rs` (the walk), `tree::walker` (the ordered
//!   parallel walker), `tree::fastpath` (the stat rules and the racy rule), `hash.rs` (file
//!   contents), `merkle.rs` (Merkle roots, `TreeHasher`), `tree::log` (a walk's compact
//!   log, the put's stat cache), `tree::progress` (counters for a progress display).
//! * `store` owns the database file and is the only module that knows the storage engine:
//!   `store/mod.rs` (open, read-only, version check), `store/txn.rs` (the read `Snapshot` and the write `Batch` every other room goes
//!   through), `tables.rs` (the table definitions), `codec.rs` (how values are encoded),
//!   `rows.rs` (the row-key range, the row iterator, row decoding), `versions.rs` (the
//!   versions, layer pointer and last-use tables), `guard.rs` (the one panic guard, the
//!   panic-payload decoder and the damage bookkeeping), `db_error.rs` (the one conversion of
//!   the engine's errors into an opaque [`DbError`]), `inspect.rs` (the scans, statistics and
//!   maintenance [`inspect`] asks for), and `store::migrate` (upgrading old files, one step
//!   per version in `migrations/`).
//! * `gc` decides which versions to drop (a pure planner) and deletes unreferenced blobs;
//!   `version` computes a version's input and entry digests.
//! * `fsread` reads the files a build names (regular files only, capped).
//! * `schema` defines what is stored (pure data: the record types); `path` the key encoding
//!   and display; `error` the one error type.
//! * `failpoint` names the crash points the crash tests abort at (compiled in only with the
//!   `failpoints` feature).

#![deny(missing_docs)]

// Every module is private: the API is the flat list below (what a builder embedding the cache
// needs), [`inspect`] for tools that look inside a cache file, and the hidden `testing` module
// for this crate's own tests, benches and crash child.
mod base;
mod config;
mod diff;
mod engine;
mod error;
mod failpoint;
mod fsread;
mod gc;
mod inputs;
pub mod inspect;
mod path;
mod plan;
mod reason;
mod refusal;
mod report;
mod schema;
#[cfg(feature = "remote")]
mod share;
mod stacker;
mod stacker_import;
mod store;
mod tree;
mod version;

// Open, look up, put, collect: the builder's calls and what they return.
pub use config::CacheConfig;
pub use engine::{
    BuildLookup, Cache, CachedEntry, GcReport, Lookup, LookupMode, LookupRecord, LyingRow, Outcome,
    PruneReport, Pruned, Session, SessionCounters, SourceRole,
};
pub use gc::Policy as GcPolicy;
pub use store::{DEFAULT_WRITE_WAIT, WriteWait};
// What a layer is made of, and the two ways to describe a build.
pub use inputs::{Base, Build, Import, LayerInputs, OverlayDir};
pub use plan::{Plan, read_manifests};
pub use stacker::StackerLayout;
// Adopting a stacker cache without a cold rebuild.
pub use stacker_import::{
    ImportOptions, ImportReport, ImportStatus, LayerImport, StackerCache, import_stacker_cache,
};
// Why a layer missed.
pub use diff::{Change, Modified, TreeDiff};
pub use reason::{BaseChange, FieldChange, MissReason};
pub use refusal::{PutChange, PutRefusal};
pub use schema::{EntryKind, SCHEMA_VERSION};
// What a put stores and a hit returns ([`CachedEntry::record`]): the stored version.
pub use schema::{BaseKind, BaseRecord, ManifestRecord, Origin, SourceSummary, VersionRecord};
// Errors.
pub use error::{DbError, Error, Result};
// Sharing through an OCI registry (feature `remote`).
#[cfg(feature = "remote")]
pub use share::registry::{FetchReport, PushReport, Remote, RemoteError, RemoteOptions};
#[cfg(feature = "remote")]
pub use share::{HitSource, PushOutcome, RemoteAnswer, RemoteFailure, RemoteLookup};
// Progress of long operations, migrations, and printing paths and names safely.
pub use path::{RelPath, escape_bytes};
pub use store::migrate::{MigrationReport, Step as MigrationStep, pending as pending_migrations};
pub use tree::{Progress, ProgressSnapshot};
// Signed shared entries (feature `remote`).
#[cfg(feature = "remote")]
pub use share::registry::sign::{
    PASSWORD_ENV as SIGN_KEY_PASSWORD_ENV, SigningKey, TrustedKeys, Untrusted, generate_keypair,
};
// A picture of a build: every layer's answer now.
pub use report::{
    BuildReport, ChangedPath, LayerReport, LayerState, MAX_CHANGED_PATHS, StateCounts, build_report,
};

/// The OCI descriptor a put takes for each output ([`Session::put`]) and a hit returns
/// ([`CachedEntry::manifests`]): oci-spec's, re-exported so that a builder names the same type
/// without depending on oci-spec's version itself.
pub use oci_spec::image::Descriptor;

/// Internals for this crate's own tests, benches, examples and binary: the stored schema, the
/// codec, the store, the walker, migrations and crash points. Not part of the API: anything
/// here may change in any release.
#[doc(hidden)]
pub mod testing {
    pub use crate::diff::{compare_rows, diff_trees};
    pub use crate::engine::{MANIFEST_LIMIT, OutputBlob, Unusable, output_blobs};
    pub use crate::path::validate_layer_name;
    pub use crate::schema::Row;
    pub use crate::store::testing::RawTransactions;
    pub use crate::store::{Store, TreeSummary, panic_message};
    pub use crate::tree::{
        FastPath, StatData, TreeHasher, TreeWalk, WalkCounters, WalkedEntry, on_read,
    };

    /// The store under a cache handle (its database file), for tests that read tables
    /// directly (with [`RawTransactions`]).
    pub fn store_of(cache: &crate::Cache) -> &crate::store::Store {
        cache.store()
    }

    macro_rules! internal {
        ($($name:ident),* $(,)?) => {$(
            #[allow(missing_docs)]
            pub mod $name {
                pub use crate::$name::*;
            }
        )*};
    }
    internal!(
        base,
        failpoint,
        fsread,
        gc,
        inputs,
        plan,
        stacker,
        stacker_import,
        store,
        tree,
        version,
    );
    #[cfg(feature = "remote")]
    internal!(share);
    /// The codec (it lives in `store/`).
    pub use crate::store::codec;
    /// Migrations (they live in `store/`).
    pub use crate::store::migrate;
    /// The record types and, for tests that read tables directly, the table definitions.
    #[allow(missing_docs)]
    pub mod schema {
        pub use crate::schema::*;
        pub use crate::store::tables::*;
    }
    #[cfg(feature = "remote")]
    pub use crate::share::registry as remote;
}

/// The README's code blocks, compiled and run as doctests so that its library example cannot
/// rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
