//! A build session: one build's layers, the memo of per-layer results, and the base chain.
//!
//! Owns: [`Session`] and its public entry points (lookup, explain, put), the memo (per layer:
//! hit with its entry digest, or miss), resolving the built bases below a layer bottom up, the
//! current hash of a layer's base, and forgetting the memo of the layers built on one that was
//! put.
//!
//! Must never: evaluate a layer itself (that is `engine/lookup.rs`) or write to the database
//! (that is `engine/put.rs` and `engine/apply.rs`).

use std::collections::HashMap;

use crate::base::{External, resolve_external};
use crate::error::{Error, Result};
use crate::inputs::{Base, Build};
use crate::path::validate_layer_name;
use crate::reason::{BaseChange, MissReason};
use crate::schema::{LayerRecord, VersionRecord};
use crate::store::Batch;

use super::{BuildLookup, Cache, Lookup, LookupMode, LookupRecord, Outcome, Seen, SessionCounters};
use crate::version::entry_digest_of;

/// What this build resolved a layer to, with the proof that nothing has changed it since:
/// the entry digest of the version, and the layer's pointer (its current version and rows
/// generation) read in the same snapshot as that version. It *holds* later when, read again
/// in one snapshot (or inside a write transaction), the pointer is the same and its current
/// version still has that entry digest: then no put, version switch, removal or collection of
/// the layer happened in between (each moves the pointer or drops the version), and the
/// version is byte for byte the one this build used (the entry digest covers inputs and
/// outputs). It says nothing about the layer's sources on disk now: see the crate doc ("A
/// shell-driven chain") for why a dependent may rely on it all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proof {
    /// The entry digest of the version (the base hash of the layers built on it).
    pub(crate) entry_digest: [u8; 32],
    /// The layer's current version (its input digest) as read with it.
    pub(crate) current: [u8; 32],
    /// The layer's rows generation as read with it.
    pub(crate) generation: u64,
}

impl Proof {
    /// Whether the proof holds for what was read in one snapshot: `pointer`, and `version`
    /// of its current digest.
    fn holds_for(
        &self,
        pointer: Option<Result<LayerRecord>>,
        version: impl FnOnce(&[u8; 32]) -> Result<Option<Result<VersionRecord>>>,
    ) -> Result<bool> {
        let Some(Ok(p)) = pointer else {
            return Ok(false);
        };
        if p.current != self.current || p.generation != self.generation {
            return Ok(false);
        }
        Ok(match version(&p.current)? {
            Some(Ok(v)) => entry_digest_of(&v) == self.entry_digest,
            _ => false,
        })
    }

    /// Whether the proof holds now for `layer`, read in one read snapshot.
    pub(crate) fn holds(&self, cache: &Cache, layer: &str) -> Result<bool> {
        let snapshot = cache.store.snapshot()?;
        self.holds_for(snapshot.pointer(layer)?, |d| snapshot.version(layer, d))
    }

    /// Whether the proof holds for `layer` inside the write batch `batch`.
    pub(crate) fn holds_in(&self, batch: &Batch, layer: &str) -> Result<bool> {
        self.holds_for(batch.pointer(layer)?, |d| batch.version(layer, d))
    }

    /// The proof for `layer` now, if its current version has entry digest `entry` (read in
    /// one snapshot).
    pub(crate) fn now(cache: &Cache, layer: &str, entry: [u8; 32]) -> Result<Option<Proof>> {
        let snapshot = cache.store.snapshot()?;
        let Some(Ok(p)) = snapshot.pointer(layer)? else {
            return Ok(None);
        };
        Ok(match snapshot.version(layer, &p.current)? {
            Some(Ok(v)) if entry_digest_of(&v) == entry => Some(Proof {
                entry_digest: entry,
                current: p.current,
                generation: p.generation,
            }),
            _ => None,
        })
    }
}

/// Memoized result of a layer within a session.
#[derive(Debug, Clone)]
pub(crate) enum Memo {
    /// The layer hits; this is its entry digest (the base hash of layers built on it).
    Hit([u8; 32]),
    Miss,
}

/// One build: the layers, and what is known of them so far.
pub struct Session<'a> {
    pub(crate) cache: &'a Cache,
    pub(crate) build: &'a Build,
    pub(crate) memo: HashMap<String, Memo>,
    /// Base layer → the layers built directly on it (computed once per session).
    pub(crate) dependents: HashMap<String, Vec<String>>,
    pub(crate) counters: SessionCounters,
    /// Per layer this session resolved to a version: that version and the layer's pointer
    /// read with it ([`Proof`]), for the lookup record of its dependents and for its own
    /// record after a put.
    pub(crate) proofs: HashMap<String, Proof>,
}

/// The current state of a layer's base, as lookup and put see it.
pub(crate) enum BaseNow {
    Hash(Vec<u8>),
    Miss(BaseChange),
}

impl Memo {
    /// What a lookup means for the layers built on it: its version is their base when every
    /// input matched, even if its own outputs are gone (rebuilding it puts a version, and then
    /// they are evaluated again).
    pub(crate) fn of(lookup: &Lookup) -> Memo {
        match (&lookup.outcome, lookup.base_of_dependents) {
            (Outcome::Hit(e), _) => Memo::Hit(entry_digest_of(&e.record)),
            (Outcome::Miss(_), Some(d)) => Memo::Hit(d),
            (Outcome::Miss(_), None) => Memo::Miss,
        }
    }
}

impl<'a> Session<'a> {
    /// A session over `build`, after validating it (names, keys, bases, cycles).
    pub(crate) fn new(cache: &'a Cache, build: &'a Build) -> Result<Self> {
        build.validate()?;
        for l in build.layers.values() {
            super::source::check_import_keys(l)?;
        }
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
            cache,
            build,
            memo: HashMap::new(),
            dependents,
            counters: SessionCounters::default(),
            proofs: HashMap::new(),
        })
    }

    /// Work done so far in this session.
    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    /// Looks up a layer for a build: stops at the first reason, and observes every input so
    /// that [`Session::put`] can check nothing changed in between.
    pub fn lookup(&mut self, layer: &str) -> Result<BuildLookup> {
        self.lookup_for_build(layer, LookupMode::FOR_BUILD)
    }

    /// Looks up a layer for a build and collects every reason it misses.
    pub fn explain(&mut self, layer: &str) -> Result<BuildLookup> {
        self.lookup_for_build(layer, LookupMode::EXPLAIN)
    }

    /// Looks up a layer for a build in the given mode (`observe` is implied): the only way to
    /// get the [`BuildLookup`] that [`Session::put`] takes.
    pub fn lookup_for_build(&mut self, layer: &str, mode: LookupMode) -> Result<BuildLookup> {
        let mode = LookupMode {
            observe: true,
            ..mode
        };
        let (lookup, mut seen) = self.run_lookup(layer, mode)?;
        let record_key = super::record::RecordKey::of(&self.cache.store.secret()?);
        let cache = self.cache;
        let (base_proof, result) = cache.store.guarded(|| {
            let base_proof = match &self.build.layer(layer)?.base {
                Base::Built { layer: b } => self.proof_of(b)?,
                _ => None,
            };
            // A hit: the version and the pointer as the hit left them (after its switch).
            let result = match lookup.entry() {
                Some(e) => Proof::now(self.cache, layer, entry_digest_of(&e.record))?,
                None => None,
            };
            Ok((base_proof, result))
        })?;
        if let Some(seen) = seen.as_mut() {
            seen.base_proof = base_proof;
        }
        if let Some(p) = result {
            self.proofs.insert(layer.to_string(), p);
        }
        Ok(BuildLookup {
            lookup,
            seen,
            record_key,
            result,
        })
    }

    /// The proof of what this session resolved `layer` to (its memoized hit), formed from a
    /// fresh snapshot when the session has none yet; `None` when the layer missed, or its
    /// current version is no longer the one it resolved to.
    fn proof_of(&mut self, layer: &str) -> Result<Option<Proof>> {
        let Some(Memo::Hit(e)) = self.memo.get(layer) else {
            return Ok(None);
        };
        let e = *e;
        if let Some(p) = self.proofs.get(layer).filter(|p| p.entry_digest == e) {
            return Ok(Some(*p));
        }
        let p = Proof::now(self.cache, layer, e)?;
        if let Some(p) = p {
            self.proofs.insert(layer.to_string(), p);
        }
        Ok(p)
    }

    /// Trusts this build's own result for a base layer, from the lookup record of the base's
    /// step (`layercache lookup --base-record FILE`): instead of walking the base's sources (and
    /// every base below it) again, the layer is resolved to the version that record's lookup
    /// hit, or that its put stored (`put --from` writes its result into the record) — when the
    /// record is of this cache (its MAC), of a layer of this build with the same definition,
    /// builder, SOURCE_DATE_EPOCH and build_only as now, and its proof still holds: the
    /// layer's pointer and that version, read now in one snapshot, are what the record says.
    /// Returns whether it was trusted; when not (no result in the record, the layer put or
    /// switched since by anyone, the definition changed), nothing is memoized and the base is
    /// walked as usual. Why this cannot produce a false hit: the crate doc, "A shell-driven
    /// chain".
    pub fn trust_base_record(&mut self, record: &LookupRecord) -> Result<bool> {
        let key = super::record::RecordKey::of(&self.cache.store.secret()?);
        let db = self.cache.store.path().to_path_buf();
        if !record.is_from(&key) {
            return Err(Error::RecordNotFromThisCache {
                db,
                layer: record.layer().to_string(),
            });
        }
        let layer = record.layer();
        validate_layer_name(layer)?;
        let inputs = self.build.layer(layer)?;
        let Some(proof) = record.result() else {
            tracing::info!(
                layer = %crate::path::escape_bytes(layer.as_bytes()),
                "the base record holds no result (its lookup missed and no put recorded into                  it): the base is walked"
            );
            return Ok(false);
        };
        let same_layer = record.same_layer_as(inputs, self.build.builder.as_deref())
            && record.input_digest() == Some(proof.current);
        let cache = self.cache;
        let holds = same_layer && cache.store.guarded(|| proof.holds(cache, layer))?;
        if !holds {
            tracing::info!(
                layer = %crate::path::escape_bytes(layer.as_bytes()),
                "the base record no longer describes the layer (put or switched since, or its                  definition changed): the base is walked"
            );
            return Ok(false);
        }
        self.memo
            .insert(layer.to_string(), Memo::Hit(proof.entry_digest));
        self.proofs.insert(layer.to_string(), proof);
        self.counters.bases_trusted += 1;
        Ok(true)
    }

    /// The record of a put's layer with the put's result written into it (the version stored
    /// and the pointer the put left), for `put --from FILE` to write back: the lookups of the
    /// layers built on it then trust it ([`Session::trust_base_record`]). `None` when this
    /// session put nothing of that layer.
    pub fn record_after_put(&self, record: &LookupRecord) -> Result<Option<LookupRecord>> {
        let Some(p) = self.proofs.get(record.layer()) else {
            return Ok(None);
        };
        let key = super::record::RecordKey::of(&self.cache.store.secret()?);
        Ok(Some(record.with_result(*p, &key)))
    }

    /// Looks up a layer in the given mode: a question only, whose answer cannot be put (see
    /// [`Session::lookup_for_build`]). Miss reasons are logged at info level, one line each
    /// (the full diff at debug level).
    pub fn lookup_with(&mut self, layer: &str, mode: LookupMode) -> Result<Lookup> {
        Ok(self.run_lookup(layer, mode)?.0)
    }

    fn run_lookup(&mut self, layer: &str, mode: LookupMode) -> Result<(Lookup, Option<Seen>)> {
        validate_layer_name(layer)?;
        let inputs = self.build.layer(layer)?;
        let cache = self.cache;
        let (result, seen) = cache.store.guarded(|| {
            self.resolve_bases_below(layer)?;
            self.evaluate(layer, inputs, mode)
        })?;
        self.memo.insert(layer.to_string(), Memo::of(&result));
        // One line per reason at info (a whole diff of 30,000 paths does not belong in a
        // build log); the full text at debug, and in the lookup's own report with --explain.
        for r in result.reasons() {
            if !matches!(r, MissReason::NotCached) {
                let text = r.to_string();
                match text.split_once('\n') {
                    Some((first, rest)) => {
                        tracing::info!(
                            layer = %crate::path::escape_bytes(layer.as_bytes()),
                            "{first} ({} more line(s): all of them at debug level)",
                            rest.lines().count()
                        );
                        tracing::debug!(layer = %crate::path::escape_bytes(layer.as_bytes()), "{text}");
                    }
                    None => {
                        tracing::info!(layer = %crate::path::escape_bytes(layer.as_bytes()), "{text}")
                    }
                }
            }
        }
        Ok((result, seen))
    }

    /// Makes sure every built base below `layer` is memoized, bottom up: the chain of built
    /// bases is [`Build::build_order`]'s (the one walk down a chain, which `push` and `pull`
    /// use too), and only the bases above the highest one already memoized are evaluated, so
    /// a chain of any length costs one evaluation per layer and no deep recursion.
    pub(crate) fn resolve_bases_below(&mut self, layer: &str) -> Result<()> {
        let order = self.build.build_order(&[layer.to_string()], true)?;
        // The order ends with `layer` itself; what comes before it are its built bases.
        let below = order.split_last().map_or(&[][..], |(_, below)| below);
        let from = below
            .iter()
            .rposition(|b| self.memo.contains_key(b.as_str()))
            .map_or(0, |i| i + 1);
        for name in below.get(from..).unwrap_or_default() {
            let inputs = self.build.layer(name)?;
            let (r, _) = self.evaluate(name, inputs, LookupMode::CHECK)?;
            self.memo.insert(name.to_string(), Memo::of(&r));
        }
        Ok(())
    }

    /// The base hash of a layer right now. For a built base, the base must be memoized
    /// (`resolve_bases_below`) or be put in this session.
    pub(crate) fn base_now(&self, layer: &str, base: &Base, for_put: bool) -> Result<BaseNow> {
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

    /// Forgets the memoized results of every layer built (directly or not) on `layer`.
    pub(crate) fn forget_dependents_of(&mut self, layer: &str) {
        let mut todo: Vec<&str> = self
            .dependents
            .get(layer)
            .map(|d| d.iter().map(String::as_str).collect())
            .unwrap_or_default();
        while let Some(l) = todo.pop() {
            self.proofs.remove(l);
            if self.memo.remove(l).is_some()
                && let Some(more) = self.dependents.get(l)
            {
                todo.extend(more.iter().map(String::as_str));
            }
        }
    }
}
