//! The cache: open (and prune), lookup with typed miss reasons, put, within one build session.
//!
//! A [`Session`] holds one build's layers and memoizes, per layer, whether it hits and with
//! which base hash, so a chain of N built layers costs N lookups, not stacker's N².

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::Descriptor;
use redb::ReadableTable;
use serde::Serialize;

use crate::base::{External, blob_path, resolve_external};
use crate::codec;
use crate::diff::diff_trees;
use crate::error::{DbResultExt, Error, Result};
use crate::inputs::{Base, Build, LayerInputs, canonical_json, canonical_json_of};
use crate::path::{RelPath, display_hash, escape_bytes, show_path, validate_layer_name};
use crate::reason::{BaseChange, MissReason, definition_changes};
use crate::schema::{
    BASES, BaseRecord, ENTRIES, EntryKind, EntryRecord, ManifestRecord, ROWS, SourceSummary,
};
use crate::store::{RowIter, Store};
use crate::tree::{TreeWalk, WalkCounters, WalkedEntry};

/// Where the cache lives and what it checks at open.
#[derive(Debug, Clone, Default)]
pub struct CacheConfig {
    /// The database file (created with mode 0600 if missing).
    pub db: PathBuf,
    /// The OCI layout holding the layers' output blobs; entries whose blobs are gone are pruned
    /// at open. `None` skips that pruning.
    pub oci_layout: Option<PathBuf>,
    /// The directory holding one rootfs directory per layer; build_only entries whose directory
    /// is gone are pruned at open. `None` skips that pruning.
    pub rootfs_dir: Option<PathBuf>,
}

/// An entry removed at open, and why.
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
}

/// An open cache.
pub struct Cache {
    store: Store,
    config: CacheConfig,
}

/// A cached entry returned by a hit: the record and its manifests as OCI descriptors.
#[derive(Debug, Clone)]
pub struct CachedEntry {
    /// The stored record.
    pub record: EntryRecord,
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

/// Whether a source is an import or an overlay dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceRole {
    /// An import.
    Import,
    /// An overlay dir.
    OverlayDir,
}

/// What a lookup saw of one source: the row hash of every path, in key order. Put compares its
/// own walk against it, so inputs that change between lookup and put are caught.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Import or overlay dir.
    pub role: SourceRole,
    /// Its key.
    pub key: String,
    /// (path key, row hash) in key order; boxed keys keep a 10^6-path observation small.
    rows: Vec<(Box<[u8]>, [u8; 32])>,
}

/// The result of looking up one layer, to be passed back to [`Session::put`].
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The layer.
    pub layer: String,
    /// Hit or miss.
    pub outcome: Outcome,
    observed: Option<Vec<Observed>>,
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

/// How much a lookup does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupMode {
    /// Collect every reason instead of stopping at the first.
    pub explain: bool,
    /// Walk every source even after a miss, and keep what was seen for [`Session::put`].
    pub observe: bool,
}

impl LookupMode {
    /// Stop at the first reason; observe for a later put (the library default).
    pub const FOR_BUILD: LookupMode = LookupMode {
        explain: false,
        observe: true,
    };
    /// Stop at the first reason, observe nothing (a yes/no question).
    pub const CHECK: LookupMode = LookupMode {
        explain: false,
        observe: false,
    };
    /// Every reason, and observe for a later put.
    pub const EXPLAIN: LookupMode = LookupMode {
        explain: true,
        observe: true,
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
    /// Rows whose stat data a hit refreshed.
    pub rows_refreshed: u64,
}

/// The row source id of an import or overlay dir.
pub fn source_id(role: SourceRole, key: &str) -> String {
    match role {
        SourceRole::Import => format!("import:{key}"),
        SourceRole::OverlayDir => format!("overlay:{key}"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The hash layers built on this entry record and compare: it covers everything recorded except
/// the time, so rebuilding a base (new outputs, new inputs) changes it.
pub fn entry_digest(e: &EntryRecord) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let field = |h: &mut blake3::Hasher, b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(&mut h, e.name.as_bytes());
    field(&mut h, &e.definition_digest);
    field(&mut h, &[e.base.kind as u8]);
    field(&mut h, e.base.reference.as_bytes());
    field(&mut h, &e.base.hash);
    field(&mut h, format!("{:?}", e.source_date_epoch).as_bytes());
    for list in [&e.imports, &e.overlay_dirs] {
        h.update(&(list.len() as u64).to_le_bytes());
        for s in list {
            field(&mut h, s.key.as_bytes());
            field(&mut h, s.root_kind.as_str().as_bytes());
            field(&mut h, &s.root_digest);
            h.update(&s.rows.to_le_bytes());
        }
    }
    h.update(&(e.manifests.len() as u64).to_le_bytes());
    for m in &e.manifests {
        field(&mut h, m.layer_type.as_bytes());
        field(&mut h, &m.descriptor_json);
    }
    h.update(&[e.build_only as u8]);
    *h.finalize().as_bytes()
}

fn row_hash(row: &crate::schema::Row) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    row.hash_into(&mut h);
    *h.finalize().as_bytes()
}

impl Cache {
    /// Opens (or creates) the cache and prunes entries whose outputs are gone.
    pub fn open(config: CacheConfig) -> Result<(Cache, PruneReport)> {
        let db = config.db.clone();
        let store = guard_redb(&db, || Store::open(&config.db))?;
        let cache = Cache { store, config };
        let report = guard_redb(&db, || cache.prune())?;
        for p in &report.pruned {
            tracing::info!(layer = %p.layer, "couldn't find {}, pruning it from the cache ({})", p.layer, p.why);
        }
        Ok((cache, report))
    }

    /// Opens (or creates) the cache without pruning: O(1) in the number of entries.
    pub fn open_without_prune(config: CacheConfig) -> Result<Cache> {
        let store = guard_redb(&config.db, || Store::open(&config.db))?;
        Ok(Cache { store, config })
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts a build session over `build`, after validating it (names, keys, bases, cycles).
    pub fn session<'a>(&'a self, build: &'a Build) -> Result<Session<'a>> {
        build.validate()?;
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        for (name, l) in &build.layers {
            if let Base::Built { layer } = &l.base {
                dependents
                    .entry(layer.clone())
                    .or_default()
                    .push(name.clone());
            }
        }
        Ok(Session {
            cache: self,
            build,
            memo: HashMap::new(),
            dependents,
            counters: SessionCounters::default(),
        })
    }

    /// The stored entry of a layer, if any.
    pub fn entry(&self, layer: &str) -> Result<Option<EntryRecord>> {
        let txn = self.store.begin_read()?;
        let table = txn.open_table(ENTRIES).db(self.store.path())?;
        let Some(v) = table.get(layer).db(self.store.path())? else {
            return Ok(None);
        };
        decode_entry(self.store.path(), layer, v.value()).map(Some)
    }

    /// Removes entries whose output blobs are gone from the OCI layout, and build_only entries
    /// whose rootfs directory is gone. Damaged entries are removed too.
    pub fn prune(&self) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        if self.config.oci_layout.is_none() && self.config.rootfs_dir.is_none() {
            return Ok(report);
        }
        let path = self.store.path();
        let mut doomed = Vec::new();
        {
            let txn = self.store.begin_read()?;
            let table = txn.open_table(ENTRIES).db(path)?;
            for item in table.iter().db(path)? {
                let (k, v) = item.db(path)?;
                let name = k.value().to_string();
                report.examined += 1;
                let why = match decode_entry(path, &name, v.value()) {
                    Err(e) => Some(format!("the entry is damaged: {e}")),
                    Ok(rec) => self.missing_output(&rec),
                };
                if let Some(why) = why {
                    doomed.push(Pruned { layer: name, why });
                }
            }
        }
        if doomed.is_empty() {
            return Ok(report);
        }
        let txn = self.store.begin_write()?;
        for p in &doomed {
            remove_layer(path, &txn, &p.layer)?;
        }
        txn.commit().db(path)?;
        report.pruned = doomed;
        Ok(report)
    }

    fn missing_output(&self, rec: &EntryRecord) -> Option<String> {
        if rec.build_only {
            let dir = self.config.rootfs_dir.as_ref()?.join(&rec.name);
            return (!dir.is_dir())
                .then(|| format!("rootfs directory {} is gone", show_path(&dir)));
        }
        let layout = self.config.oci_layout.as_ref()?;
        for m in &rec.manifests {
            let digest = serde_json::from_slice::<serde_json::Value>(&m.descriptor_json)
                .ok()
                .and_then(|v| v.get("digest").and_then(|d| d.as_str()).map(str::to_string));
            let blob = digest.as_deref().and_then(|d| blob_path(layout, d));
            match blob {
                Some(b) if b.is_file() => {}
                Some(b) => {
                    return Some(format!(
                        "missing build for layer type {}: blob {} is gone",
                        m.layer_type,
                        show_path(&b)
                    ));
                }
                None => {
                    return Some(format!(
                        "the {} descriptor has no valid digest",
                        m.layer_type
                    ));
                }
            }
        }
        None
    }

    /// Removes one layer's entry, rows and base hash. Returns whether it was cached.
    pub fn remove(&self, layer: &str) -> Result<bool> {
        let txn = self.store.begin_write()?;
        let existed = remove_layer(self.store.path(), &txn, layer)?;
        txn.commit().db(self.store.path())?;
        Ok(existed)
    }
}

fn remove_layer(path: &Path, txn: &redb::WriteTransaction, layer: &str) -> Result<bool> {
    let existed = txn
        .open_table(ENTRIES)
        .db(path)?
        .remove(layer)
        .db(path)?
        .is_some();
    txn.open_table(BASES).db(path)?.remove(layer).db(path)?;
    let mut rows = txn.open_table(ROWS).db(path)?;
    let upper = format!("{layer}\0");
    let lo: (&str, &str, &[u8]) = (layer, "", &[]);
    let hi: (&str, &str, &[u8]) = (upper.as_str(), "", &[]);
    rows.retain_in(lo..hi, |_, _| false).db(path)?;
    Ok(existed)
}

/// Runs `f`, turning a panic inside it into [`Error::Db`] naming the file. redb's read path
/// trusts page contents (there is no checksum check on a normal read), so a damaged page can
/// make it index out of bounds or unwrap invalid UTF-8 in a key; that must be a clear error about
/// the file, not a crashed build. (Panics of our own code would be reported the same way, which
/// is still better than aborting the builder.)
pub(crate) fn guard_redb<T>(db: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            crate::store::note_damage(db);
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Err(Error::Db {
                path: db.to_path_buf(),
                source: Box::new(redb::Error::Corrupted(format!(
                    "reading the database failed inside redb ({msg}): the file is damaged"
                ))),
            })
        }
    }
}

pub(crate) fn decode_entry(path: &Path, layer: &str, bytes: &[u8]) -> Result<EntryRecord> {
    codec::decode::<EntryRecord, { codec::ENTRY_LIMIT }>(bytes).map_err(|detail| {
        crate::store::note_damage(path);
        Error::Corrupt {
            path: path.to_path_buf(),
            table: "entries",
            key: escape_bytes(layer.as_bytes()),
            detail,
        }
    })
}

/// Memoized result of a layer within a session.
#[derive(Debug, Clone)]
enum Memo {
    /// The layer hits; this is its entry digest (the base hash of layers built on it).
    Hit([u8; 32]),
    Miss,
}

/// One build: the layers, and what is known of them so far.
pub struct Session<'a> {
    cache: &'a Cache,
    build: &'a Build,
    memo: HashMap<String, Memo>,
    /// Base layer → the layers built directly on it (computed once per session).
    dependents: HashMap<String, Vec<String>>,
    counters: SessionCounters,
}

/// The current state of a layer's base, as lookup and put see it.
enum BaseNow {
    Hash(Vec<u8>),
    Miss(BaseChange),
}

impl<'a> Session<'a> {
    /// Work done so far in this session.
    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    /// Looks up a layer for a build: stops at the first reason, and observes every source so
    /// that [`Session::put`] can check nothing changed in between.
    pub fn lookup(&mut self, layer: &str) -> Result<Lookup> {
        self.lookup_with(layer, LookupMode::FOR_BUILD)
    }

    /// Looks up a layer and collects every reason it misses.
    pub fn explain(&mut self, layer: &str) -> Result<Lookup> {
        self.lookup_with(layer, LookupMode::EXPLAIN)
    }

    /// Looks up a layer in the given mode. Miss reasons are logged at info level.
    pub fn lookup_with(&mut self, layer: &str, mode: LookupMode) -> Result<Lookup> {
        validate_layer_name(layer)?;
        let inputs = self.build.layer(layer)?;
        let db = self.cache.store.path().to_path_buf();
        let result = guard_redb(&db, || {
            self.resolve_bases_below(layer)?;
            self.evaluate(layer, inputs, mode)
        })?;
        self.memo.insert(
            layer.to_string(),
            match &result.outcome {
                Outcome::Hit(e) => Memo::Hit(entry_digest(&e.record)),
                Outcome::Miss(_) => Memo::Miss,
            },
        );
        for r in result.reasons() {
            if !matches!(r, MissReason::NotCached) {
                tracing::info!(layer, "{r}");
            }
        }
        Ok(result)
    }

    /// Makes sure every built base below `layer` is memoized, bottom up (iteratively, so a
    /// chain of any length costs one evaluation per layer and no deep recursion).
    fn resolve_bases_below(&mut self, layer: &str) -> Result<()> {
        let mut chain = Vec::new();
        let mut cur = layer;
        while let Base::Built { layer: base } = &self.build.layer(cur)?.base {
            if self.memo.contains_key(base.as_str()) {
                break;
            }
            chain.push(base.as_str());
            cur = base;
        }
        for name in chain.into_iter().rev() {
            let inputs = self.build.layer(name)?;
            let r = self.evaluate(name, inputs, LookupMode::CHECK)?;
            let memo = match &r.outcome {
                Outcome::Hit(e) => Memo::Hit(entry_digest(&e.record)),
                Outcome::Miss(_) => Memo::Miss,
            };
            self.memo.insert(name.to_string(), memo);
        }
        Ok(())
    }

    /// The base hash of a layer right now. For a built base, the base must be memoized
    /// (`resolve_bases_below`) or be put in this session.
    fn base_now(&self, layer: &str, base: &Base, for_put: bool) -> Result<BaseNow> {
        match base {
            Base::Built { layer: b } => {
                if for_put {
                    // At put, the base must hit now: its entry hash is what this layer was
                    // built on (as in stacker, whose put looks the base up).
                    return match self.memo.get(b.as_str()) {
                        Some(Memo::Hit(h)) => Ok(BaseNow::Hash(h.to_vec())),
                        _ => Err(Error::Base {
                            layer: layer.to_string(),
                            detail: format!(
                                "base layer {b:?} is not cached as it is now; put it before the \
                                 layers built on it"
                            ),
                        }),
                    };
                }
                match self.memo.get(b.as_str()) {
                    Some(Memo::Hit(h)) => Ok(BaseNow::Hash(h.to_vec())),
                    _ => Ok(BaseNow::Miss(BaseChange::BaseLayerMissed {
                        layer: b.clone(),
                    })),
                }
            }
            other => match resolve_external(layer, other)? {
                External::Hash(h) => Ok(BaseNow::Hash(h)),
                External::Missing(c) => Ok(BaseNow::Miss(c)),
            },
        }
    }

    fn evaluate(&mut self, layer: &str, inputs: &LayerInputs, mode: LookupMode) -> Result<Lookup> {
        self.counters.lookups += 1;
        let store = &self.cache.store;
        let txn = store.begin_read()?;
        let stored = {
            let table = txn.open_table(ENTRIES).db(store.path())?;
            let v = table.get(layer).db(store.path())?;
            v.map(|v| decode_entry(store.path(), layer, v.value()))
        };
        let mut reasons = Vec::new();
        let record = match stored {
            None => {
                reasons.push(MissReason::NotCached);
                None
            }
            Some(Err(e)) => {
                reasons.push(MissReason::DamagedEntry {
                    detail: e.to_string(),
                });
                None
            }
            Some(Ok(r)) => {
                self.counters.entries_read += 1;
                Some(r)
            }
        };
        let stop = |reasons: &Vec<MissReason>| !mode.explain && !reasons.is_empty();

        if let Some(rec) = &record {
            // 2. definition
            let def = canonical_json(&inputs.definition);
            if *blake3::hash(&def).as_bytes() != rec.definition_digest {
                let old: serde_json::Value =
                    serde_json::from_slice(&rec.definition_json).unwrap_or(serde_json::Value::Null);
                reasons.push(MissReason::DefinitionChanged {
                    fields: definition_changes(&old, &inputs.definition),
                });
            }
            // 3. base
            if !stop(&reasons) {
                let kind = inputs.base.kind();
                let reference = inputs.base.reference();
                if kind != rec.base.kind || reference != rec.base.reference {
                    reasons.push(MissReason::BaseChanged {
                        change: BaseChange::Replaced {
                            old: format!("{}:{}", rec.base.kind.as_str(), rec.base.reference),
                            new: format!("{}:{}", kind.as_str(), reference),
                        },
                    });
                } else {
                    match self.base_now(layer, &inputs.base, false)? {
                        BaseNow::Miss(change) => reasons.push(MissReason::BaseChanged { change }),
                        BaseNow::Hash(h) if h != rec.base.hash => {
                            reasons.push(MissReason::BaseChanged {
                                change: BaseChange::HashChanged {
                                    old: display_hash(&rec.base.hash),
                                    new: display_hash(&h),
                                },
                            })
                        }
                        BaseNow::Hash(_) => {}
                    }
                }
            }
            // 4. SOURCE_DATE_EPOCH
            if !stop(&reasons) && rec.source_date_epoch != inputs.source_date_epoch {
                reasons.push(MissReason::SourceDateEpochChanged {
                    old: rec.source_date_epoch,
                    new: inputs.source_date_epoch,
                });
            }
        }

        // 5 and 6: imports and overlay dirs. Walked when they can still decide the outcome, or
        // when the caller wants them observed for a put.
        let mut observed = mode.observe.then(Vec::new);
        let mut refresh = RefreshList::default();
        for src in cached_sources(inputs) {
            let decide = !stop(&reasons) && record.is_some();
            if !decide && !mode.observe {
                break;
            }
            let summary = record
                .as_ref()
                .and_then(|r| summaries(r, src.role).iter().find(|s| s.key == src.key));
            if decide && summary.is_none() {
                reasons.push(match src.role {
                    SourceRole::Import => MissReason::ImportNew {
                        key: src.key.to_string(),
                    },
                    SourceRole::OverlayDir => MissReason::OverlayDirNew {
                        key: src.key.to_string(),
                    },
                });
            }
            let mut decide = decide && summary.is_some();
            if let Some(rootfs) = src.rootfs_path
                && decide
                && std::fs::symlink_metadata(rootfs).is_err()
            {
                reasons.push(MissReason::OverlayDirMissing {
                    key: src.key.to_string(),
                    rootfs_path: show_path(rootfs),
                });
                decide = mode.explain;
            }
            let reason = self.check_source(
                &txn,
                layer,
                src.role,
                src.key,
                src.path,
                summary.filter(|_| decide),
                observed.as_mut(),
                &mut refresh,
            )?;
            if decide && let Some(r) = reason {
                reasons.push(r);
            }
        }

        // Sources recorded at put that the layer no longer has. In stacker they are part of the
        // definition; here the builder passes them apart, so they are checked apart — after the
        // current ones, so a renamed key reports the new name first ("new import").
        if let Some(rec) = &record {
            for role in [SourceRole::Import, SourceRole::OverlayDir] {
                for s in summaries(rec, role) {
                    let still = cached_sources(inputs).any(|c| c.role == role && c.key == s.key);
                    if !still && !stop(&reasons) {
                        let key = s.key.clone();
                        reasons.push(match role {
                            SourceRole::Import => MissReason::ImportRemoved { key },
                            SourceRole::OverlayDir => MissReason::OverlayDirRemoved { key },
                        });
                    }
                }
            }
        }

        if !mode.explain {
            reasons.truncate(1);
        }
        drop(txn);
        if reasons.is_empty() && record.is_some() && !refresh.items.is_empty() {
            self.refresh_rows(layer, &refresh)?;
        }
        let outcome = match (record, reasons.is_empty()) {
            (Some(rec), true) => match decode_manifests(&rec) {
                Ok(manifests) => Outcome::Hit(Box::new(CachedEntry {
                    record: rec,
                    manifests,
                })),
                Err(detail) => Outcome::Miss(vec![MissReason::DamagedEntry { detail }]),
            },
            _ => Outcome::Miss(reasons),
        };
        Ok(Lookup {
            layer: layer.to_string(),
            outcome,
            observed,
        })
    }

    /// After a hit, records the current stat data of rows whose content was equal but whose
    /// stat was stale, missing or racy (git's index refresh), so the next lookup reads nothing.
    /// A row is only updated if it is still, in every compared property, the row the lookup
    /// verified (another session may have put the layer from another tree meanwhile). A read-only store skips it. A miss never gets here.
    fn refresh_rows(&mut self, layer: &str, refresh: &RefreshList) -> Result<()> {
        let store = &self.cache.store;
        if store.is_read_only() {
            return Ok(());
        }
        let path = store.path();
        let mut done = 0u64;
        // Each refreshed row is true on its own (this stat, this verified digest), so the rows
        // are written in batches of their own transactions: a refresh of 10^6 touched files
        // never holds all of redb's dirty pages at once.
        for batch in refresh.items.chunks(REFRESH_BATCH) {
            let txn = store.begin_write()?;
            {
                let mut rows = txn.open_table(ROWS).db(path)?;
                for (src, key, stat, verified) in batch {
                    let Some(source) = refresh.sources.get(*src as usize) else {
                        continue;
                    };
                    let current = rows
                        .get((layer, source.as_str(), &key[..]))
                        .db(path)?
                        .and_then(|v| {
                            codec::decode::<crate::schema::Row, { codec::ROW_LIMIT }>(v.value())
                                .ok()
                        });
                    // Only a row still equal, in every compared property, to what this lookup
                    // verified on disk gets the new stat data (another session may have put
                    // the layer from another tree meanwhile).
                    let Some(mut row) = current.filter(|r| row_hash(r) == *verified) else {
                        continue;
                    };
                    row.stat = Some(*stat);
                    let bytes = codec::encode(&row).map_err(|detail| Error::Corrupt {
                        path: path.to_path_buf(),
                        table: "rows",
                        key: RelPath::from_key(key).to_string(),
                        detail,
                    })?;
                    rows.insert((layer, source.as_str(), &key[..]), bytes.as_slice())
                        .db(path)?;
                    done += 1;
                }
            }
            txn.commit().db(path)?;
        }
        self.counters.rows_refreshed += done;
        tracing::debug!(layer, rows = done, "refreshed stat data of unchanged files");
        Ok(())
    }

    /// Walks one source, diffing it against the stored rows when `summary` is given, and
    /// recording what was seen when `observed` is given. Returns the miss reason, if any.
    #[allow(clippy::too_many_arguments)]
    fn check_source(
        &mut self,
        txn: &redb::ReadTransaction,
        layer: &str,
        role: SourceRole,
        key: &str,
        path: &Path,
        summary: Option<&SourceSummary>,
        observed: Option<&mut Vec<Observed>>,
        refresh: &mut RefreshList,
    ) -> Result<Option<MissReason>> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let p = show_path(path);
                return Ok(summary.map(|_| match role {
                    SourceRole::Import => MissReason::ImportMissing {
                        key: key.to_string(),
                        path: p,
                    },
                    SourceRole::OverlayDir => MissReason::OverlayDirContentChanged {
                        key: key.to_string(),
                        diff: crate::diff::TreeDiff {
                            removed: vec![RelPath::root()],
                            ..Default::default()
                        },
                    },
                }));
            }
            Err(e) => return Err(Error::io("cannot stat", path, e)),
        };
        let kind_now = if meta.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::File
        };
        let mut rows = Vec::new();
        let keep = observed.is_some();
        let sid = source_id(role, key);
        let src_index = refresh.sources.len() as u32;
        refresh.sources.push(sid.clone());
        let mut record = |e: &WalkedEntry, stored: Option<&crate::schema::Row>| {
            if keep {
                rows.push((e.path.key().into(), row_hash_of(e)));
            }
            if let Some(stored) = stored
                && needs_refresh(stored, e)
                && let Some(stat) = e.row.stat
            {
                refresh
                    .items
                    .push((src_index, e.path.key().into(), stat, row_hash(&e.row)));
            }
        };
        // With stored rows, the walk reuses their digests where the stat data allows.
        // One range scan of the stored rows feeds both the walk's stat fast path and the diff.
        let (mut walk, mut stored_rows) = match summary {
            Some(_) => {
                let (for_walk, for_diff) = tee_rows(self.cache.store.rows(txn, layer, &sid)?);
                (
                    TreeWalk::with_prior(path, Box::new(for_walk))?,
                    Some(for_diff),
                )
            }
            None => (TreeWalk::new(path)?, None),
        };
        let reason = match summary {
            Some(s)
                if role == SourceRole::Import
                    && s.root_kind != kind_now
                    && matches!(s.root_kind, EntryKind::File | EntryKind::Dir) =>
            {
                drop(stored_rows.take());
                for e in walk.by_ref() {
                    record(&e?, None);
                }
                Some(MissReason::ImportTypeChanged {
                    key: key.to_string(),
                    old: s.root_kind,
                    new: kind_now,
                })
            }
            Some(summary) => {
                // A damaged row ends the stored stream and makes this a miss (it costs this
                // entry, not the lookup); the walk still runs to its end for the observation.
                // The stored rows are also checked against the entry's summary (row count and
                // Merkle root): bincode has no checksum, and a row lost or altered by damage to
                // the file must not turn into a hit (a lost row of a file deleted since would).
                let mut damage: Option<String> = None;
                let mut hasher = crate::tree::TreeHasher::new();
                let stored = stored_rows
                    .take()
                    .into_iter()
                    .flatten()
                    .map_while(|r| match r {
                        Err(e @ Error::Corrupt { .. }) => {
                            damage = Some(e.to_string());
                            None
                        }
                        Ok((p, row)) => {
                            hasher.push(&p, &row);
                            Some(Ok((p, row)))
                        }
                        other => Some(other),
                    });
                let diff = diff_trees(stored, walk.by_ref(), &mut record)?;
                let (root, n) = hasher.finish();
                if damage.is_none() && (root, n) != (summary.root_digest, summary.rows) {
                    damage = Some(format!(
                        "the stored rows of {} do not match the entry ({n} rows stored, {} \
                         recorded, or a different Merkle root): the database is damaged",
                        escape_bytes(sid.as_bytes()),
                        summary.rows
                    ));
                }
                if let Some(detail) = damage {
                    for e in walk.by_ref() {
                        record(&e?, None);
                    }
                    self.counters.walk.add(&walk.counters());
                    if let Some(obs) = observed {
                        obs.push(Observed {
                            role,
                            key: key.to_string(),
                            rows,
                        });
                    }
                    return Ok(Some(MissReason::DamagedEntry { detail }));
                }
                (!diff.is_empty()).then(|| match role {
                    SourceRole::Import => MissReason::ImportContentChanged {
                        key: key.to_string(),
                        diff,
                    },
                    SourceRole::OverlayDir => MissReason::OverlayDirContentChanged {
                        key: key.to_string(),
                        diff,
                    },
                })
            }
            None => {
                for e in walk.by_ref() {
                    record(&e?, None);
                }
                None
            }
        };
        self.counters.walk.add(&walk.counters());
        if let Some(obs) = observed {
            obs.push(Observed {
                role,
                key: key.to_string(),
                rows,
            });
        }
        Ok(reason)
    }

    /// Records a layer: walks its imports and overlay dirs into rows, and stores the entry, the
    /// rows and its base hash in one write transaction. `lookup` is the lookup this build did of
    /// the layer: if any input differs from what it saw, nothing is stored and
    /// [`Error::InputsChanged`] names the paths. A lookup without observations (see
    /// [`LookupMode::observe`]) skips that check.
    pub fn put(
        &mut self,
        lookup: &Lookup,
        manifests: &BTreeMap<String, Descriptor>,
    ) -> Result<EntryRecord> {
        let db = self.cache.store.path().to_path_buf();
        guard_redb(&db, || self.put_unguarded(lookup, manifests))
    }

    fn put_unguarded(
        &mut self,
        lookup: &Lookup,
        manifests: &BTreeMap<String, Descriptor>,
    ) -> Result<EntryRecord> {
        let layer = lookup.layer.as_str();
        validate_layer_name(layer)?;
        let inputs = self.build.layer(layer)?;
        self.resolve_bases_below(layer)?;
        let store = &self.cache.store;
        let path = store.path();
        let base_hash = match self.base_now(layer, &inputs.base, true)? {
            BaseNow::Hash(h) => h,
            BaseNow::Miss(change) => {
                return Err(Error::Base {
                    layer: layer.to_string(),
                    detail: MissReason::BaseChanged { change }.to_string(),
                });
            }
        };
        let definition_json = canonical_json(&inputs.definition);
        let mut manifest_records = Vec::new();
        for (layer_type, desc) in manifests {
            let json = canonical_json_of(desc).map_err(|e| Error::Parse {
                what: "manifest descriptor",
                path: PathBuf::from(layer_type),
                detail: e.to_string(),
            })?;
            manifest_records.push(ManifestRecord {
                layer_type: layer_type.clone(),
                descriptor_json: json,
            });
        }
        // The rows stored so far, read from the committed state, let the put's walk reuse the
        // digests of files whose stat data is unchanged.
        let prior_txn = store.begin_read()?;
        let damaged = lookup
            .reasons()
            .iter()
            .any(|r| matches!(r, MissReason::DamagedEntry { .. }));
        let txn = store.begin_write()?;
        {
            let mut rows = txn.open_table(ROWS).db(path)?;
            // Drop rows of sources the layer no longer has.
            let upper = format!("{layer}\0");
            let lo: (&str, &str, &[u8]) = (layer, "", &[]);
            let hi: (&str, &str, &[u8]) = (upper.as_str(), "", &[]);
            rows.retain_in(lo..hi, |_, _| false).db(path)?;
        }
        let mut changes = Vec::new();
        let mut imports = Vec::new();
        let mut overlays = Vec::new();
        for SourceRef {
            role,
            key,
            path: src,
            ..
        } in cached_sources(inputs)
        {
            let seen = lookup.observed.as_ref().map(|obs| {
                obs.iter()
                    .find(|o| o.role == role && o.key == *key)
                    .map(|o| o.rows.as_slice())
                    .unwrap_or(&[])
            });
            // Rows the lookup found damaged vouch for nothing: then every file is read.
            let mut walk = if damaged {
                TreeWalk::new(src)?
            } else {
                let prior = store.rows(&prior_txn, layer, &source_id(role, key))?;
                TreeWalk::with_prior(src, Box::new(prior))?
            };
            let mut checker = seen.map(ObservationCheck::new);
            let entries = walk.by_ref().inspect(|e| {
                if let (Ok(e), Some(c)) = (e, checker.as_mut()) {
                    c.push(e);
                }
            });
            let summary = store.write_tree(&txn, layer, &source_id(role, key), src, entries)?;
            self.counters.walk.add(&walk.counters());
            if let Some(c) = checker {
                for p in c.finish() {
                    changes.push(format!(
                        "{} {key}: {}",
                        match role {
                            SourceRole::Import => "import",
                            SourceRole::OverlayDir => "overlay_dir",
                        },
                        escape_bytes(&p.under(src).into_os_string().into_encoded_bytes())
                    ));
                }
            }
            let s = SourceSummary {
                key: key.to_string(),
                source: source_id(role, key),
                root_kind: summary.root_kind.unwrap_or(EntryKind::Dir),
                root_digest: summary.root_digest,
                rows: summary.rows,
            };
            match role {
                SourceRole::Import => imports.push(s),
                SourceRole::OverlayDir => overlays.push(s),
            }
        }
        if !changes.is_empty() {
            // Dropping the transaction without commit stores nothing.
            txn.abort().db(path)?;
            return Err(Error::InputsChanged {
                layer: layer.to_string(),
                changes,
            });
        }
        let record = EntryRecord {
            name: layer.to_string(),
            definition_digest: *blake3::hash(&definition_json).as_bytes(),
            definition_json,
            base: BaseRecord {
                kind: inputs.base.kind(),
                reference: inputs.base.reference(),
                hash: base_hash,
            },
            source_date_epoch: inputs.source_date_epoch,
            imports,
            overlay_dirs: overlays,
            manifests: manifest_records,
            build_only: inputs.build_only,
            created_unix_ms: now_ms(),
        };
        let digest = entry_digest(&record);
        let bytes = codec::encode(&record).map_err(|detail| Error::Corrupt {
            path: path.to_path_buf(),
            table: "entries",
            key: layer.to_string(),
            detail,
        })?;
        txn.open_table(ENTRIES)
            .db(path)?
            .insert(layer, bytes.as_slice())
            .db(path)?;
        txn.open_table(BASES)
            .db(path)?
            .insert(layer, &digest)
            .db(path)?;
        txn.commit().db(path)?;
        self.memo.insert(layer.to_string(), Memo::Hit(digest));
        // Layers built on this one must be evaluated again.
        self.forget_dependents_of(layer);
        Ok(record)
    }

    /// Forgets the memoized results of every layer built (directly or not) on `layer`.
    fn forget_dependents_of(&mut self, layer: &str) {
        let mut todo: Vec<&str> = self
            .dependents
            .get(layer)
            .map(|d| d.iter().map(String::as_str).collect())
            .unwrap_or_default();
        while let Some(l) = todo.pop() {
            if self.memo.remove(l).is_some()
                && let Some(more) = self.dependents.get(l)
            {
                todo.extend(more.iter().map(String::as_str));
            }
        }
    }
}

/// The two readers of one scan of stored rows: the walk (for the stat fast path) and the diff.
/// Each takes rows in key order; whichever is ahead pulls from the scan and queues a copy for
/// the other, so rows are read and decoded once. The walk runs at most a couple of windows ahead
/// of the diff, which bounds the queue, except after a damaged row ends the diff's stream (then
/// the rest of that one source is queued until the lookup ends). Nothing is queued for a side
/// that was dropped. A row that fails to decode goes to the diff only (the walk ignores it).
struct Tee {
    scan: RowIter,
    for_walk: VecDeque<(RelPath, crate::schema::Row)>,
    for_diff: VecDeque<Result<(RelPath, crate::schema::Row)>>,
}

/// The walk's side of a [`Tee`].
struct TeeWalk(Rc<RefCell<Tee>>);
/// The diff's side of a [`Tee`].
struct TeeDiff(Rc<RefCell<Tee>>);

fn tee_rows(scan: RowIter) -> (TeeWalk, TeeDiff) {
    let t = Rc::new(RefCell::new(Tee {
        scan,
        for_walk: VecDeque::new(),
        for_diff: VecDeque::new(),
    }));
    (TeeWalk(t.clone()), TeeDiff(t))
}

impl Iterator for TeeWalk {
    type Item = Result<(RelPath, crate::schema::Row)>;

    fn next(&mut self) -> Option<Self::Item> {
        // Nothing is queued for a side that was dropped.
        let diff_alive = Rc::strong_count(&self.0) > 1;
        let mut t = self.0.borrow_mut();
        if let Some(row) = t.for_walk.pop_front() {
            return Some(Ok(row));
        }
        loop {
            match t.scan.next()? {
                Ok(row) => {
                    if diff_alive {
                        t.for_diff.push_back(Ok(row.clone()));
                    }
                    return Some(Ok(row));
                }
                Err(e) if diff_alive => t.for_diff.push_back(Err(e)),
                Err(_) => {}
            }
        }
    }
}

impl Iterator for TeeDiff {
    type Item = Result<(RelPath, crate::schema::Row)>;

    fn next(&mut self) -> Option<Self::Item> {
        let walk_alive = Rc::strong_count(&self.0) > 1;
        let mut t = self.0.borrow_mut();
        if let Some(item) = t.for_diff.pop_front() {
            return Some(item);
        }
        match t.scan.next()? {
            Ok(row) => {
                if walk_alive {
                    t.for_walk.push_back(row.clone());
                }
                Some(Ok(row))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// One cached source of a layer: an import without a `dest`, or an overlay dir.
struct SourceRef<'a> {
    role: SourceRole,
    key: &'a str,
    /// The tree that is walked and cached.
    path: &'a Path,
    /// For an overlay dir, its copy in the rootfs, which must exist for a hit.
    rootfs_path: Option<&'a Path>,
}

/// The cached sources of a layer, imports first, in the order the builder gave them.
fn cached_sources(inputs: &LayerInputs) -> impl Iterator<Item = SourceRef<'_>> {
    let imports = inputs
        .imports
        .iter()
        .filter(|i| i.dest.is_none())
        .map(|i| SourceRef {
            role: SourceRole::Import,
            key: &i.key,
            path: &i.path,
            rootfs_path: None,
        });
    let overlays = inputs.overlay_dirs.iter().map(|o| SourceRef {
        role: SourceRole::OverlayDir,
        key: &o.key,
        path: &o.source,
        rootfs_path: Some(&o.rootfs_path),
    });
    imports.chain(overlays)
}

/// The summaries an entry recorded for one role.
fn summaries(rec: &EntryRecord, role: SourceRole) -> &[SourceSummary] {
    match role {
        SourceRole::Import => &rec.imports,
        SourceRole::OverlayDir => &rec.overlay_dirs,
    }
}

/// Rows refreshed per write transaction.
const REFRESH_BATCH: usize = 65_536;

/// Rows whose stat data a hit will bring up to date, kept compact (a touched 10^6-file tree
/// holds one item per file until the lookup ends): source index, path key, the stat the
/// digest was verified under, and that digest.
#[derive(Debug, Default)]
struct RefreshList {
    sources: Vec<String>,
    items: Vec<RefreshItem>,
}

/// (source index, path key, stat, hash of the verified row — every compared property).
type RefreshItem = (u32, Box<[u8]>, crate::schema::RowStat, [u8; 32]);

/// True when `e` matched `stored` in content but `stored`'s stat data cannot vouch for it next
/// time: missing (a v1 row), different (touched, copied, checked out), or racy.
fn needs_refresh(stored: &crate::schema::Row, e: &WalkedEntry) -> bool {
    if e.unstable || e.row.kind != stored.kind {
        return false;
    }
    if !crate::diff::compare_rows(stored, &e.row).is_empty() {
        return false;
    }
    match (&stored.stat, &e.row.stat) {
        (Some(old), Some(new)) => {
            old.mtime_ns != new.mtime_ns
                || old.ctime_ns != new.ctime_ns
                || old.ino != new.ino
                || (e.row.kind == EntryKind::File && crate::tree::is_racy(old))
                || crate::tree::is_ctime_racy(old)
        }
        (None, Some(_)) => true,
        _ => false,
    }
}

fn row_hash_of(e: &WalkedEntry) -> [u8; 32] {
    if e.unstable {
        // Never equal to anything a later walk produces.
        return [0xff; 32];
    }
    row_hash(&e.row)
}

/// Merges a put's walk against what the lookup observed, collecting paths that differ.
struct ObservationCheck<'s> {
    seen: std::slice::Iter<'s, (Box<[u8]>, [u8; 32])>,
    next: Option<&'s (Box<[u8]>, [u8; 32])>,
    changed: Vec<RelPath>,
}

impl<'s> ObservationCheck<'s> {
    fn new(seen: &'s [(Box<[u8]>, [u8; 32])]) -> Self {
        let mut it = seen.iter();
        let next = it.next();
        ObservationCheck {
            seen: it,
            next,
            changed: Vec::new(),
        }
    }

    fn push(&mut self, e: &WalkedEntry) {
        let h = row_hash_of(e);
        loop {
            match self.next {
                Some((p, _)) if **p < *e.path.key() => {
                    self.changed.push(RelPath::from_key(p));
                    self.next = self.seen.next();
                }
                Some((p, oh)) if **p == *e.path.key() => {
                    if *oh != h {
                        self.changed.push(RelPath::from_key(p));
                    }
                    self.next = self.seen.next();
                    return;
                }
                _ => {
                    self.changed.push(e.path.clone());
                    return;
                }
            }
        }
    }

    fn finish(mut self) -> Vec<RelPath> {
        while let Some((p, _)) = self.next {
            self.changed.push(RelPath::from_key(p));
            self.next = self.seen.next();
        }
        self.changed
    }
}

fn decode_manifests(rec: &EntryRecord) -> Result<BTreeMap<String, Descriptor>, String> {
    rec.manifests
        .iter()
        .map(|m| {
            serde_json::from_slice::<Descriptor>(&m.descriptor_json)
                .map(|d| (m.layer_type.clone(), d))
                .map_err(|e| format!("manifest for {}: {e}", m.layer_type))
        })
        .collect()
}
