//! A build session: one build's layers, the memo of per-layer results, and the base chain.
//!
//! Owns: [`Session`] and its public entry points (lookup, explain, put), the memo (per layer:
//! hit with its entry digest, or miss), resolving the built bases below a layer bottom up, the
//! current hash of a layer's base, and forgetting the memo of the layers built on one that was
//! put.
//!
//! Must never: evaluate a layer itself (that is `cache/lookup.rs`) or write to the database
//! (that is `cache/put.rs` and `cache/refresh.rs`).

use std::collections::HashMap;

use crate::base::{External, resolve_external};
use crate::error::{Error, Result};
use crate::inputs::{Base, Build};
use crate::path::validate_layer_name;
use crate::reason::{BaseChange, MissReason};
use crate::store::guard::guard_redb;

use super::{BuildLookup, Cache, Lookup, LookupMode, Outcome, Seen, SessionCounters};
use crate::version::entry_digest_of;

/// Memoized result of a layer within a session.
#[derive(Debug, Clone)]
pub(super) enum Memo {
    /// The layer hits; this is its entry digest (the base hash of layers built on it).
    Hit([u8; 32]),
    Miss,
}

/// One build: the layers, and what is known of them so far.
pub struct Session<'a> {
    pub(super) cache: &'a Cache,
    pub(super) build: &'a Build,
    pub(super) memo: HashMap<String, Memo>,
    /// Base layer → the layers built directly on it (computed once per session).
    dependents: HashMap<String, Vec<String>>,
    pub(super) counters: SessionCounters,
}

/// The current state of a layer's base, as lookup and put see it.
pub(super) enum BaseNow {
    Hash(Vec<u8>),
    Miss(BaseChange),
}

impl Memo {
    /// What a lookup means for the layers built on it: its version is their base when every
    /// input matched, even if its own outputs are gone (rebuilding it puts a version, and then
    /// they are evaluated again).
    pub(super) fn of(lookup: &Lookup) -> Memo {
        match (&lookup.outcome, lookup.base_of_dependents) {
            (Outcome::Hit(e), _) => Memo::Hit(entry_digest_of(&e.record)),
            (Outcome::Miss(_), Some(d)) => Memo::Hit(d),
            (Outcome::Miss(_), None) => Memo::Miss,
        }
    }
}

impl<'a> Session<'a> {
    /// A session over `build`, after validating it (names, keys, bases, cycles).
    pub(super) fn new(cache: &'a Cache, build: &'a Build) -> Result<Self> {
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
        let (lookup, seen) = self.run_lookup(layer, mode)?;
        let record_key = super::record::RecordKey::of(&self.cache.store.secret()?);
        Ok(BuildLookup {
            lookup,
            seen,
            record_key,
        })
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
        let db = self.cache.store.path().to_path_buf();
        let (result, seen) = guard_redb(&db, || {
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

    /// Makes sure every built base below `layer` is memoized, bottom up (iteratively, so a
    /// chain of any length costs one evaluation per layer and no deep recursion).
    pub(super) fn resolve_bases_below(&mut self, layer: &str) -> Result<()> {
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
            let (r, _) = self.evaluate(name, inputs, LookupMode::CHECK)?;
            self.memo.insert(name.to_string(), Memo::of(&r));
        }
        Ok(())
    }

    /// The base hash of a layer right now. For a built base, the base must be memoized
    /// (`resolve_bases_below`) or be put in this session.
    pub(super) fn base_now(&self, layer: &str, base: &Base, for_put: bool) -> Result<BaseNow> {
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
    pub(super) fn forget_dependents_of(&mut self, layer: &str) {
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
