//! The cache: open, prune (opt-in), remove, and the entry record's digest and decoding; lookup
//! and put within one build [`Session`].
//!
//! Owns: the [`Cache`] handle and the types a lookup returns ([`Lookup`], [`BuildLookup`],
//! [`Outcome`], [`CachedEntry`], [`LookupMode`], [`SessionCounters`]); [`entry_digest`], the
//! hash layers built on a version record; pruning (only when asked: [`Cache::prune`],
//! [`Cache::gc`]; an open reads no version) and removing versions. Records are read and written
//! through the store's `Snapshot` and `Batch`, which verify their checksums. Its submodules
//! own one job each:
//!
//! * `engine/outputs.rs` — the one "outputs exist" rule a hit, pruning and `push` apply, and
//!   the blobs an output reaches;
//! * `engine/session.rs` — [`Session`], its memo of per-layer results, the base chain, forgetting
//!   the dependents of a layer that was put;
//! * `engine/lookup.rs` — evaluating one layer as read state → observe → decide → apply:
//!   definition, base, epoch, sources, in that order, and the verdict; it writes nothing;
//! * `engine/observe.rs` — walking one source against its stored rows (the tee, the diff) and
//!   returning an observation: what differs, the rows a hit would refresh or a switch would
//!   write, the rows that lied; it never writes;
//! * `engine/apply.rs` — every write a lookup makes once it has decided: stat refresh batches,
//!   last use, switching the rows to another stored version on a hit on it, and clearing the
//!   stat data of rows a verify lookup caught lying;
//! * `engine/source.rs` — one source's identity ([`SourceRole`] and its key) and the
//!   observation a put checks against;
//! * `engine/put.rs` — put: walk, compare with what the lookup saw (its observation, or a
//!   [`LookupRecord`] from another process), one write transaction that writes only the rows
//!   that differ from the stored ones;
//! * `engine/record.rs` — [`LookupRecord`], the lookup record file;
//! * `engine/gc.rs` — [`Cache::gc`]: applying the GC planner's decision, and pruning.
//!
//! Must never: decide what stat data vouches for (that is [`crate::tree::fastpath`], which also
//! explains the racy rule), encode values itself (that is `store/codec.rs`), or build a row-key
//! range by hand (that is the store's).
//!
//! A [`Session`] holds one build's layers and memoizes, per layer, whether it hits and with
//! which base hash, so a chain of N built layers costs N lookups, not stacker's N². Across
//! processes (the CLI) the same holds through the lookup records' proofs: see the crate doc,
//! "A shell-driven chain".

mod apply;
mod gc;
mod lookup;
mod observe;
pub(crate) mod outputs;
mod put;
pub(crate) mod record;
pub(crate) mod session;
mod source;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::Descriptor;
use serde::Serialize;

use crate::error::Result;
use crate::inputs::Build;
use crate::reason::MissReason;
use crate::schema::VersionRecord;
use crate::store::{Store, WriteWait};
use crate::tree::{Progress, WalkCounters};

pub use crate::config::CacheConfig;
pub use gc::GcReport;
pub use outputs::{MANIFEST_LIMIT, OutputBlob, Unusable, reached as output_blobs};
pub use record::LookupRecord;
pub use session::Session;
pub(crate) use source::SourceId;
pub use source::{LyingRow, Observed, SourceRole};

/// A version removed by pruning ([`Cache::prune`], [`Cache::gc`]), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// The layer.
    pub layer: String,
    /// Why it was pruned (the missing blob or directory).
    pub why: String,
}

/// What [`Cache::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Entries removed.
    pub pruned: Vec<Pruned>,
    /// Entries examined.
    pub examined: u64,
    /// Entries that should have been pruned but were left, because another process held the
    /// write lock (pruning is optional: a later prune removes them). They never hit all the
    /// same: a hit checks the outputs by the same rule.
    pub skipped_busy: Vec<Pruned>,
}

/// An open cache.
pub struct Cache {
    pub(crate) store: Store,
    pub(crate) config: CacheConfig,
    /// What every walk of this cache has done so far, for a progress display.
    pub(crate) progress: Arc<Progress>,
    /// Versions read to check their outputs outside a lookup (pruning, gc): none by an open.
    pub(crate) examined: AtomicU64,
}

/// A cached entry returned by a hit: the record and its manifests as OCI descriptors.
#[derive(Debug, Clone)]
pub struct CachedEntry {
    /// The stored record.
    pub record: VersionRecord,
    /// Output manifests by layer type.
    pub manifests: BTreeMap<String, Descriptor>,
}

/// The outcome of a lookup.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The cached output can be reused.
    Hit(Box<CachedEntry>),
    /// It cannot; the reasons, in check order (only the first unless explaining).
    Miss(Vec<MissReason>),
}

/// The result of looking up one layer.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The layer.
    pub layer: String,
    /// Hit or miss.
    pub outcome: Outcome,
    /// Stored rows whose stat data matched the file while its content differed: found only by
    /// a [`LookupMode::verify`] lookup (any other lookup trusts the stat data and cannot see
    /// them). Their stat data has been cleared in the database, so no later walk reuses their
    /// digest.
    pub lying_rows: Vec<LyingRow>,
    /// The entry digest of the version every input matched (a hit, or a miss only because its
    /// outputs are gone): what layers built on this one compare as their base hash.
    pub(crate) base_of_dependents: Option<[u8; 32]>,
    /// The layer's input digest as this lookup walked it: `None` when a source was not walked
    /// (a `CHECK` lookup stops at the first reason), is gone or changed while it was hashed,
    /// or the base misses. Outputs (an overlay dir's builder's copy among them) are no part of
    /// it. What a remote lookup asks the registry for, without walking again.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))] // read by the remote lookup
    pub(crate) input_digest: Option<[u8; 32]>,
}

impl Lookup {
    /// True on a hit.
    pub fn is_hit(&self) -> bool {
        matches!(self.outcome, Outcome::Hit(_))
    }

    /// The miss reasons (empty on a hit).
    pub fn reasons(&self) -> &[MissReason] {
        match &self.outcome {
            Outcome::Hit(_) => &[],
            Outcome::Miss(r) => r,
        }
    }

    /// The cached entry on a hit.
    pub fn entry(&self) -> Option<&CachedEntry> {
        match &self.outcome {
            Outcome::Hit(e) => Some(e),
            Outcome::Miss(_) => None,
        }
    }
}

/// A lookup made for a build: the [`Lookup`] (also through `Deref`) and what it saw of every
/// input (definition, builder, base hash, SOURCE_DATE_EPOCH, build_only, every source's rows,
/// the input digest). Only [`Session::lookup`], [`Session::explain`] and
/// [`Session::lookup_for_build`] return one, and [`Session::put`] takes only this: a put is
/// always checked against what a lookup saw, so a [`LookupMode::CHECK`] lookup, which keeps
/// nothing, cannot be put:
///
/// ```compile_fail
/// # fn f(s: &mut layercache::Session<'_>) -> layercache::Result<()> {
/// let l = s.lookup_with("app", layercache::LookupMode::CHECK)?;
/// s.put(&l, &Default::default())?; // a `Lookup` is not a `BuildLookup`
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BuildLookup {
    pub(crate) lookup: Lookup,
    /// `None` only for a layer that is not cacheable (its put is refused).
    pub(crate) seen: Option<Seen>,
    /// Binds its [`LookupRecord`] to this cache.
    pub(crate) record_key: record::RecordKey,
    /// On a hit: the version it hit and the layer's pointer after the hit, read in one
    /// snapshot — what a dependent's lookup in another process may trust instead of walking
    /// this layer again (`session.rs`, `Proof`).
    pub(crate) result: Option<session::Proof>,
}

impl BuildLookup {
    /// The lookup's answer.
    pub fn lookup(&self) -> &Lookup {
        &self.lookup
    }

    /// The lookup's answer, by value.
    pub fn into_lookup(self) -> Lookup {
        self.lookup
    }

    /// What it saw of each source (empty for a layer that is not cacheable).
    pub fn observed(&self) -> &[Observed] {
        self.seen.as_ref().map_or(&[], |s| s.sources.as_slice())
    }

    /// The input digest of what the lookup saw (`crate::version`); `None` when it has none
    /// (the base did not resolve, a source is missing, or a file changed while it was read).
    pub fn input_digest(&self) -> Option<[u8; 32]> {
        self.seen.as_ref().and_then(|s| s.input_digest)
    }

    /// The record a shell-driven build passes from `lookup` to `put` in another process
    /// ([`LookupRecord`]); `None` for a layer that is not cacheable.
    pub fn record(&self) -> Option<LookupRecord> {
        self.seen
            .as_ref()
            .map(|seen| LookupRecord::new(&self.lookup.layer, seen, self.result, &self.record_key))
    }
}

impl std::ops::Deref for BuildLookup {
    type Target = Lookup;

    fn deref(&self) -> &Lookup {
        &self.lookup
    }
}

/// Everything a build's lookup saw of a layer's inputs, which its put compares with its own
/// view: any difference means the build may have used other inputs than the ones recorded.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// blake3 of the canonical definition.
    pub(crate) definition_digest: [u8; 32],
    /// The builder identity.
    pub(crate) builder: Option<String>,
    /// The base hash at lookup; `None` when the base could not be resolved then (missing
    /// tarball or tag, or a built base that missed).
    pub(crate) base_hash: Option<Vec<u8>>,
    /// SOURCE_DATE_EPOCH at lookup.
    pub(crate) source_date_epoch: Option<i64>,
    /// build_only at lookup.
    pub(crate) build_only: bool,
    /// The lookup found the stored version or rows damaged: they vouch for nothing at put.
    pub(crate) damaged: bool,
    /// The input digest of what was seen, when every part of it was.
    pub(crate) input_digest: Option<[u8; 32]>,
    /// Every source that existed on disk, in the layer's order.
    pub(crate) sources: Vec<Observed>,
    /// For a built base that resolved: the base version and its pointer, read in one snapshot
    /// (a put re-checks them in its write transaction instead of walking the base again).
    pub(crate) base_proof: Option<session::Proof>,
    /// The built base's layer name, when the layer has one.
    pub(crate) base_layer: Option<String>,
}

/// How much a lookup does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupMode {
    /// Collect every reason instead of stopping at the first.
    pub explain: bool,
    /// Walk every source even after a miss, and keep what was seen for [`Session::put`]
    /// (implied by [`Session::lookup_for_build`]).
    pub observe: bool,
    /// Distrust the stat data: read every file whatever its stat, report the stored rows whose
    /// stat data matched while the content differed ([`Lookup::lying_rows`]) and clear their
    /// stat data. Costs a full read of every source.
    pub verify: bool,
}

impl LookupMode {
    /// Stop at the first reason; observe for a later put (the library default).
    pub const FOR_BUILD: LookupMode = LookupMode {
        explain: false,
        observe: true,
        verify: false,
    };
    /// Stop at the first reason, observe nothing (a yes/no question; cannot be put).
    pub const CHECK: LookupMode = LookupMode {
        explain: false,
        observe: false,
        verify: false,
    };
    /// Every reason, and observe for a later put.
    pub const EXPLAIN: LookupMode = LookupMode {
        explain: true,
        observe: true,
        verify: false,
    };
    /// Every reason, every file read whatever its stat data (see [`LookupMode::verify`]).
    pub const VERIFY: LookupMode = LookupMode {
        explain: true,
        observe: false,
        verify: true,
    };
}

/// Counters of work done in a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SessionCounters {
    /// Lookups evaluated (each layer at most once per session for base resolution).
    pub lookups: u64,
    /// Entries decoded from the database.
    pub entries_read: u64,
    /// Walk counters summed over every walk of the session.
    pub walk: WalkCounters,
    /// Built bases resolved from this build's own result for them (a base lookup record
    /// whose pointer and version still hold, or a lookup record's base proof at put) instead
    /// of walking their sources again (see the crate doc, "A shell-driven chain").
    pub bases_trusted: u64,
    /// Rows a put inserted, replaced or removed: only the rows that differ from the stored
    /// ones are written (a put of a tree with 1% of its files changed writes about 1% of its
    /// rows).
    pub rows_put: u64,
    /// Rows whose stat data a hit refreshed.
    pub rows_refreshed: u64,
    /// Rows written or removed by hits on a version other than the current one (the rows
    /// then describe the tree as it is now).
    pub rows_switched: u64,
    /// Optional writes (stat refresh batches) skipped because another process held the write
    /// lock; a lookup never waits for one.
    pub writes_skipped_busy: u64,
    /// Write transactions the session's lookups committed (stat refresh batches, last-use
    /// records, version switches, clearing lying rows). A hit on settled rows whose use was
    /// recorded within the last hour commits none: it costs readers nothing and never queues
    /// behind another process's write.
    pub writes_committed: u64,
}

/// The store's wait for the write lock, from the configuration.
fn write_wait(config: &CacheConfig) -> WriteWait {
    WriteWait {
        timeout: config.write_wait,
        cancel: config.interrupt.clone(),
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Cache {
    /// The schema version of the cache file at `path`, read without opening it for writing
    /// (so a newer file is reported, not refused, and nothing is changed).
    pub fn schema_version_of(path: impl AsRef<Path>) -> Result<u32> {
        Store::peek_version(path)
    }

    /// Opens the cache file at `path` for writing, which runs every pending migration step in
    /// one write transaction, and closes it again; returns what ran (no step when the file was
    /// up to date). A file of a newer schema is refused and stays unchanged.
    pub fn migrate_file(path: impl AsRef<Path>) -> Result<crate::MigrationReport> {
        let path = path.as_ref();
        let before = Store::peek_version(path)?;
        let store = Store::open(path)?;
        Ok(store
            .migration()
            .cloned()
            .unwrap_or(crate::MigrationReport {
                from: before,
                to: before,
                steps: Vec::new(),
            }))
    }

    /// Opens (or creates) the cache: O(1) in the number of entries. Nothing is pruned: a
    /// version whose outputs are gone is a miss at its hit check (`engine/outputs.rs`, the one
    /// "outputs exist" rule), and is dropped by [`Cache::gc`] or an explicit [`Cache::prune`].
    pub fn open(config: CacheConfig) -> Result<Cache> {
        let store = Store::open_waiting(&config.db, write_wait(&config))?;
        Ok(Cache {
            store,
            config,
            progress: Arc::default(),
            examined: AtomicU64::new(0),
        })
    }

    /// How many versions this handle has read to check their outputs outside a lookup
    /// ([`Cache::prune`], [`Cache::gc`]); an open reads none (it reads no version, so it
    /// stats no blob either: blobs are named only by versions).
    #[doc(hidden)]
    pub fn versions_examined(&self) -> u64 {
        self.examined.load(Ordering::Relaxed)
    }

    /// Counters of the work of every walk of this cache (entries walked, files and bytes
    /// hashed, and the entries expected from stored row counts), added to once per window of a
    /// walk, for a progress display to poll from another thread.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// The configuration it was opened with (where its outputs are checked).
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The underlying store.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Starts a build session over `build`, after validating it (names, keys, bases, cycles).
    pub fn session<'a>(&'a self, build: &'a Build) -> Result<Session<'a>> {
        Session::new(self, build)
    }

    /// The stored entry of a layer, if any.
    pub fn entry(&self, layer: &str) -> Result<Option<VersionRecord>> {
        self.store.guarded(|| {
            let snapshot = self.store.snapshot()?;
            let Some(pointer) = snapshot.pointer(layer)? else {
                return Ok(None);
            };
            snapshot.version(layer, &pointer?.current)?.transpose()
        })
    }

    /// Every stored version of a layer with its last use (ms), in digest order; damaged ones
    /// as errors.
    pub fn versions(&self, layer: &str) -> Result<Vec<(Result<VersionRecord>, Option<u64>)>> {
        self.store.guarded(|| {
            let snapshot = self.store.snapshot()?;
            let mut out = Vec::new();
            for (digest, rec) in snapshot.versions_of(layer)? {
                let used = snapshot.last_used(layer, &digest)?;
                out.push((rec, used));
            }
            Ok(out)
        })
    }

    /// Removes the versions whose output blobs are gone from the OCI layout, and build_only
    /// versions whose rootfs directory is gone, by the one "outputs exist" rule
    /// (`engine/outputs.rs`); damaged versions are removed too. Opt-in: no open prunes, and a
    /// version whose outputs are gone never hits whether it was pruned or not (its hit check
    /// applies the same rule), so pruning only keeps the file small. It reads every version
    /// and stats every blob they name. It never waits for the write lock: while another
    /// process writes it removes nothing and reports what it left
    /// ([`PruneReport::skipped_busy`]).
    pub fn prune(&self) -> Result<PruneReport> {
        self.store.guarded(|| self.prune_unguarded(None))
    }

    /// [`Cache::prune`] restricted to the layers `build` defines: a cache shared by several
    /// builds (several plans) keeps the other builds' entries, whose outputs may live in other
    /// layouts.
    pub fn prune_build(&self, build: &Build) -> Result<PruneReport> {
        self.store.guarded(|| self.prune_unguarded(Some(build)))
    }

    fn prune_unguarded(&self, only: Option<&Build>) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let doomed = self.doomed(only, &mut report)?;
        if doomed.is_empty() {
            return Ok(report);
        }
        let Some(batch) = self.store.try_batch()? else {
            tracing::debug!(
                versions = doomed.len(),
                "pruning skipped: another process holds the write lock"
            );
            report.skipped_busy = doomed.into_iter().map(|(p, _)| p).collect();
            return Ok(report);
        };
        for (p, digest) in &doomed {
            batch.drop_version(&p.layer, digest)?;
        }
        batch.commit()?;
        for (p, _) in &doomed {
            tracing::info!(
                "couldn't find {}, pruning it from the cache ({})",
                crate::path::escape_bytes(p.layer.as_bytes()),
                p.why
            );
        }
        report.pruned = doomed.into_iter().map(|(p, _)| p).collect();
        Ok(report)
    }

    /// The versions (of `only`'s layers, or all) whose outputs are gone or that are damaged,
    /// read in one snapshot; counts what it examined in `report`.
    fn doomed(
        &self,
        only: Option<&Build>,
        report: &mut PruneReport,
    ) -> Result<Vec<(Pruned, [u8; 32])>> {
        let mut doomed = Vec::new();
        if self.config.oci_layout.is_none() && self.config.rootfs_dir.is_none() {
            return Ok(doomed);
        }
        let snapshot = self.store.snapshot()?;
        for (layer, digest) in snapshot.version_keys()? {
            if only.is_some_and(|b| !b.layers.contains_key(&layer)) {
                continue;
            }
            report.examined += 1;
            self.examined.fetch_add(1, Ordering::Relaxed);
            let why = match snapshot.version(&layer, &digest)? {
                None => None,
                Some(Err(e)) => Some(format!("the entry is damaged: {e}")),
                Some(Ok(rec)) => outputs::gone(&self.config, &rec)?.map(|m| m.text()),
            };
            if let Some(why) = why {
                doomed.push((Pruned { layer, why }, digest));
            }
        }
        Ok(doomed)
    }

    /// What a hit on `rec` would say of its outputs now, for the layer as `inputs` describes
    /// it: `None` when they are all there, else the miss reason
    /// ([`MissReason::OutputsMissing`], or [`MissReason::OverlayDirMissing`] when a builder's
    /// copy is gone). This is the check every hit makes (`engine/outputs.rs`, and
    /// `docs/guarantees.md` for the rule): the location not configured counts as missing; one
    /// configured but not there is an error naming it.
    pub fn outputs_missing(
        &self,
        rec: &VersionRecord,
        inputs: &crate::inputs::LayerInputs,
    ) -> Result<Option<MissReason>> {
        Ok(
            outputs::missing(&self.config, rec, &inputs.overlay_dirs)?
                .map(outputs::Missing::reason),
        )
    }

    /// Removes one layer: every version, its pointer, last uses and rows. Returns whether it
    /// was cached.
    pub fn remove(&self, layer: &str) -> Result<bool> {
        self.store.guarded(|| {
            let batch = self.store.batch()?;
            let existed = batch.remove_layer(layer)?;
            batch.commit()?;
            Ok(existed)
        })
    }

    /// Removes one version of a layer (`Batch::drop_version`: with the layer's pointer and
    /// rows when it is the current one); `Ok(())` when it was not there.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))] // used by the remote lookup
    pub(crate) fn remove_version(&self, layer: &str, digest: &[u8; 32]) -> Result<()> {
        self.store.guarded(|| {
            let batch = self.store.batch()?;
            batch.drop_version(layer, digest)?;
            batch.commit()
        })
    }
}

fn decode_manifests(rec: &VersionRecord) -> Result<BTreeMap<String, Descriptor>, String> {
    rec.manifests
        .iter()
        .map(|m| {
            serde_json::from_slice::<Descriptor>(&m.descriptor_json)
                .map(|d| (m.layer_type.clone(), d))
                .map_err(|e| format!("manifest for {}: {e}", m.layer_type))
        })
        .collect()
}
