//! Evaluating one layer (schema v3): read state → observe → decide → apply. A layer marked
//! uncacheable misses with that reason alone, before any check. Otherwise the lookup reads, in
//! one snapshot, the layer's current version (the one its rows describe, the most recently
//! used) and every stored version; observes each source (`engine/observe.rs`), computing the
//! input digest of what was walked; hits on **any** stored version with that digest; and
//! otherwise explains the miss against the current version in stacker's order: not cached,
//! definition, builder, base, SOURCE_DATE_EPOCH, build_only, each cached source, sources no
//! longer in the layer. Only then are the writes the verdict calls for made, in one step
//! (`engine/apply.rs`).
//!
//! Owns: that order, what each step compares, which stored versions can still match before
//! any tree is walked (if none can and nothing is to be observed, no tree is walked), which
//! sources are walked and which of their differences are reported, the input digest of what
//! was walked ([`crate::version::input_digest`]), and the outcome (hit with the decoded
//! version, or miss with typed reasons) with its [`Verdict`].
//!
//! Must never: write to the database itself (every write is `engine/apply.rs`, after the
//! decision), walk a tree itself (that is `engine/observe.rs`), or hit on a version whose
//! outputs are gone (`engine/outputs.rs`). The module graph is `observe ← lookup → apply`
//! (and `apply → observe` for what was seen): nothing it uses depends on it.

use std::borrow::Cow;
use std::collections::BTreeSet;

use crate::error::Result;
use crate::inputs::LayerInputs;
use crate::path::display_hash;
use crate::reason::{BaseChange, MissReason, definition_changes};
use crate::schema::{LayerRecord, Origin, SourceSummary, VersionRecord};
use crate::store::Snapshot;
use crate::version::{Inputs, SourceInput, entry_digest_of, input_digest};

use super::apply::Verdict;
use super::observe::{Observation, Observer};
use super::outputs;
use super::session::BaseNow;
use super::source::{SourceMiss, SourceRef, SourceRole, cached_sources, summaries};
use super::{CachedEntry, Lookup, LookupMode, Outcome, Seen, Session, decode_manifests};

/// The reasons found so far, and whether to look for more.
struct Reasons {
    explain: bool,
    list: Vec<MissReason>,
}

impl Reasons {
    /// True while another reason is wanted: always when explaining, else until the first.
    fn wants_more(&self) -> bool {
        self.explain || self.list.is_empty()
    }

    /// Adds `r` when another reason is wanted.
    fn push(&mut self, r: MissReason) {
        if self.wants_more() {
            self.list.push(r);
        }
    }

    /// True when the stored version or rows were found damaged.
    fn damaged(&self) -> bool {
        self.list
            .iter()
            .any(|r| matches!(r, MissReason::DamagedEntry { .. }))
    }
}

/// What the lookup read of the layer in its snapshot, and its inputs now.
struct Read {
    /// The layer's pointer (`None`: none, or a damaged one).
    pointer: Option<LayerRecord>,
    /// Its current version, when the pointer and the version decode.
    current: Option<VersionRecord>,
    /// Every stored version of the layer.
    stored: Vec<([u8; 32], Result<VersionRecord>)>,
    /// The base hash now, or why the base misses.
    base: BaseNow,
    /// blake3 of the canonical definition now.
    definition_digest: [u8; 32],
    /// Whether any stored version can still match once the trees are known.
    could_hit: bool,
}

/// What the lookup decided.
struct Decided {
    outcome: Outcome,
    /// See [`Lookup::base_of_dependents`].
    base_of_dependents: Option<[u8; 32]>,
    /// The hit is on the current version (no switch).
    on_current: bool,
}

impl Session<'_> {
    /// Evaluates one layer (see the module doc). With `mode.observe`, also returns what was
    /// seen of every input, for a put (`None` for a layer that is not cacheable).
    pub(crate) fn evaluate(
        &mut self,
        layer: &str,
        inputs: &LayerInputs,
        mode: LookupMode,
    ) -> Result<(Lookup, Option<Seen>)> {
        self.counters.lookups += 1;
        if let Some(why) = &inputs.uncacheable {
            // Never cached: nothing to compare, nothing to observe, nothing a put may use.
            let why = why.clone();
            return Ok((
                lookup_of(layer, miss(MissReason::NotCacheable { why })),
                None,
            ));
        }
        let mut reasons = Reasons {
            explain: mode.explain,
            list: Vec::new(),
        };
        let snapshot = self.cache.store.snapshot()?;
        let mut read = self.read_state(&snapshot, layer, inputs, &mut reasons)?;
        let mut observed = self.observe(&snapshot, layer, inputs, &read, mode, &mut reasons)?;
        drop(snapshot);
        if let Some(rec) = &read.current {
            check_removed_sources(rec, inputs, &mut reasons);
        }
        // Computed on a miss too: a remote lookup asks for it.
        let digest = self.digest_of(inputs, &read, &observed);
        let damaged = reasons.damaged();
        let decided = self.decide(inputs, &mut read, digest, reasons)?;
        let verdict = match &decided.outcome {
            Outcome::Miss(_) => Verdict::Miss,
            Outcome::Hit(e) if decided.on_current => Verdict::HitCurrent(&e.record),
            Outcome::Hit(e) => Verdict::HitOther {
                rec: &e.record,
                from: read.pointer.as_ref(),
            },
        };
        self.apply(layer, verdict, &observed)?;
        let seen = mode
            .observe
            .then(|| self.seen_of(inputs, &read, damaged, digest, &mut observed));
        let mut lookup = lookup_of(layer, decided.outcome);
        lookup.lying_rows = observed.into_iter().flat_map(|o| o.lied).collect();
        lookup.base_of_dependents = decided.base_of_dependents;
        lookup.input_digest = digest;
        Ok((lookup, seen))
    }

    /// 1–4: the layer's current version and every stored version, read in the lookup's
    /// snapshot, and the base hash now; the definition, builder, base, SOURCE_DATE_EPOCH and
    /// build_only compared with the current version.
    fn read_state(
        &mut self,
        snapshot: &Snapshot,
        layer: &str,
        inputs: &LayerInputs,
        reasons: &mut Reasons,
    ) -> Result<Read> {
        let (pointer, current) = self.read_current(snapshot, layer, reasons)?;
        let stored = snapshot.versions_of(layer)?;
        self.counters.entries_read += stored.iter().filter(|(_, r)| r.is_ok()).count() as u64;
        let base = self.base_now(layer, &inputs.base, false)?;
        let builder = self.build.builder.as_deref();
        let definition_digest = inputs.definition_digest();
        if let Some(rec) = &current {
            check_definition(rec, inputs, definition_digest, reasons);
            if rec.builder.as_deref() != builder {
                // With the definition: the builder is part of what was built.
                reasons.push(MissReason::BuilderChanged {
                    old: rec.builder.clone(),
                    new: builder.map(str::to_string),
                });
            }
            check_base(rec, inputs, &base, reasons);
            check_epoch(rec, inputs, reasons);
            check_build_only(rec, inputs, reasons);
        }
        let could_hit = could_hit(&stored, inputs, builder, definition_digest, &base);
        Ok(Read {
            pointer,
            current,
            stored,
            base,
            definition_digest,
            could_hit,
        })
    }

    /// 1. The layer's current version: no pointer is "not cached"; a pointer or version that
    ///    does not decode is "damaged" (then no rows are trusted, but another version can
    ///    still hit).
    fn read_current(
        &mut self,
        snapshot: &Snapshot,
        layer: &str,
        reasons: &mut Reasons,
    ) -> Result<(Option<LayerRecord>, Option<VersionRecord>)> {
        let pointer = match snapshot.pointer(layer)? {
            None => {
                reasons.push(MissReason::NotCached);
                return Ok((None, None));
            }
            Some(Err(e)) => {
                reasons.push(damaged(&e));
                return Ok((None, None));
            }
            Some(Ok(p)) => p,
        };
        match snapshot.version(layer, &pointer.current)? {
            Some(Ok(v)) => Ok((Some(pointer), Some(v))),
            Some(Err(e)) => {
                reasons.push(damaged(&e));
                Ok((Some(pointer), None))
            }
            // Pruned or collected: the rows describe nothing stored.
            None => {
                reasons.push(MissReason::NotCached);
                Ok((Some(pointer), None))
            }
        }
    }

    /// 5 and 6: imports and overlay dirs, in the layer's order, each observed against the
    /// rows of the current version (the stat fast path, and the diff). A source is walked
    /// while it can still decide the outcome (a stored version may match, or its difference
    /// is still wanted as a reason), or when the caller wants it observed for a put; its
    /// difference is reported only while another reason is wanted.
    fn observe<'i>(
        &mut self,
        snapshot: &Snapshot,
        layer: &str,
        inputs: &'i LayerInputs,
        read: &Read,
        mode: LookupMode,
        reasons: &mut Reasons,
    ) -> Result<Vec<Observation<'i>>> {
        let observer = Observer {
            snapshot,
            layer,
            keep: mode.observe,
            verify: mode.verify,
            progress: &self.cache.progress,
        };
        let current = read.current.as_ref();
        let mut observed = Vec::new();
        for src in cached_sources(inputs) {
            let explain = current.is_some() && reasons.wants_more();
            if !explain && !mode.observe && !read.could_hit {
                break;
            }
            let summary =
                current.and_then(|r| summaries(r, src.role).iter().find(|s| s.key == src.ident));
            if let Some(rec) = current.filter(|_| explain)
                && let Some(r) = before_walk(rec, &src, summary)
            {
                reasons.push(r);
            }
            let mut obs = observer.observe(src, summary)?;
            self.counters.walk.add(&obs.counters);
            if explain && let Some(r) = obs.reason.take() {
                reasons.push(r);
            }
            observed.push(obs);
        }
        Ok(observed)
    }

    /// The input digest of the layer as walked (outputs are no part of it: a builder's copy of
    /// an overlay dir is an output of building here, `engine/outputs.rs`); `None` when the
    /// base misses, or a source was not walked, is gone, or its walk vouches for nothing.
    fn digest_of(
        &self,
        inputs: &LayerInputs,
        read: &Read,
        observed: &[Observation<'_>],
    ) -> Option<[u8; 32]> {
        let BaseNow::Hash(base_hash) = &read.base else {
            return None;
        };
        if observed.len() != cached_sources(inputs).count() {
            return None;
        }
        let mut sources = Vec::with_capacity(observed.len());
        for o in observed {
            let t = o.tree.as_ref().filter(|t| t.trusted)?;
            sources.push(SourceInput {
                role: o.role,
                key: &o.key,
                root_kind: t.root_kind,
                root_digest: t.root_digest,
            });
        }
        Some(input_digest(&Inputs {
            definition_digest: read.definition_digest,
            base_kind: inputs.base.kind(),
            base_hash,
            source_date_epoch: inputs.source_date_epoch,
            build_only: inputs.build_only,
            builder: self.build.builder.as_deref(),
            sources,
        }))
    }

    /// The outcome: a hit on the stored version with the walked input digest (when one could
    /// match), if its outputs exist and its manifests decode; otherwise a miss with the
    /// reasons found (or "not cached" when there are none).
    fn decide(
        &self,
        inputs: &LayerInputs,
        read: &mut Read,
        digest: Option<[u8; 32]>,
        reasons: Reasons,
    ) -> Result<Decided> {
        let found = digest.filter(|_| read.could_hit).and_then(|d| {
            std::mem::take(&mut read.stored)
                .into_iter()
                .find(|(k, _)| *k == d)
        });
        let outcome = match found {
            Some((_, Ok(rec))) => return self.decide_hit(inputs, read, rec),
            Some((_, Err(e))) => miss(damaged(&e)),
            None if reasons.list.is_empty() => miss(MissReason::NotCached),
            None => Outcome::Miss(reasons.list),
        };
        Ok(Decided {
            outcome,
            base_of_dependents: None,
            on_current: false,
        })
    }

    /// Every input matches `rec`: the hit is decided by the one outputs rule.
    fn decide_hit(&self, inputs: &LayerInputs, read: &Read, rec: VersionRecord) -> Result<Decided> {
        if let Some(missing) = outputs::missing(&self.cache.config, &rec, &inputs.overlay_dirs)? {
            // The outputs are not there: a miss (that writes nothing), but the version is still
            // what the layers built on this one were built on.
            return Ok(Decided {
                outcome: miss(missing.reason()),
                base_of_dependents: Some(entry_digest_of(&rec)),
                on_current: false,
            });
        }
        let on_current = read
            .current
            .as_ref()
            .is_some_and(|c| c.input_digest == rec.input_digest);
        Ok(Decided {
            outcome: hit(rec),
            base_of_dependents: None,
            on_current,
        })
    }

    /// What the lookup saw of every input, for a put; takes the observations' walk logs.
    fn seen_of(
        &self,
        inputs: &LayerInputs,
        read: &Read,
        damaged: bool,
        digest: Option<[u8; 32]>,
        observed: &mut [Observation<'_>],
    ) -> Seen {
        Seen {
            definition_digest: read.definition_digest,
            builder: self.build.builder.clone(),
            base_hash: match &read.base {
                BaseNow::Hash(h) => Some(h.clone()),
                BaseNow::Miss(_) => None,
            },
            source_date_epoch: inputs.source_date_epoch,
            build_only: inputs.build_only,
            damaged,
            input_digest: digest,
            sources: observed.iter_mut().filter_map(|o| o.seen.take()).collect(),
            base_proof: None,
            base_layer: match &inputs.base {
                crate::inputs::Base::Built { layer } => Some(layer.clone()),
                _ => None,
            },
        }
    }
}

/// A lookup of `layer` with `outcome` and nothing else.
fn lookup_of(layer: &str, outcome: Outcome) -> Lookup {
    Lookup {
        layer: layer.to_string(),
        outcome,
        lying_rows: Vec::new(),
        base_of_dependents: None,
        input_digest: None,
    }
}

/// A miss for one reason.
fn miss(r: MissReason) -> Outcome {
    Outcome::Miss(vec![r])
}

/// The miss reason of a stored record that does not decode.
fn damaged(e: &crate::error::Error) -> MissReason {
    MissReason::DamagedEntry {
        detail: e.to_string(),
    }
}

/// Which stored versions can still match once the trees are known: the same definition, base,
/// epoch, build_only, builder and set of sources. A damaged version might be any.
fn could_hit(
    stored: &[([u8; 32], Result<VersionRecord>)],
    inputs: &LayerInputs,
    builder: Option<&str>,
    definition_digest: [u8; 32],
    base: &BaseNow,
) -> bool {
    let BaseNow::Hash(h) = base else {
        return false;
    };
    let keys_now: BTreeSet<(SourceRole, Cow<'_, str>)> =
        cached_sources(inputs).map(|s| (s.role, s.ident)).collect();
    stored.iter().any(|(_, r)| match r {
        Err(_) => true,
        Ok(v) => {
            v.definition_digest == definition_digest
                && v.base.kind == inputs.base.kind()
                && v.base.hash == *h
                && v.source_date_epoch == inputs.source_date_epoch
                && v.build_only == inputs.build_only
                && v.builder.as_deref() == builder
                && source_keys(v) == keys_now
        }
    })
}

/// The (role, key) set of a version's sources.
fn source_keys(v: &VersionRecord) -> BTreeSet<(SourceRole, Cow<'_, str>)> {
    crate::version::sources_of(&v.imports, &v.overlay_dirs)
        .into_iter()
        .map(|s| (s.role, Cow::Borrowed(s.key)))
        .collect()
}

/// What a source is before its walk, against the current version `rec`: new to it; or, for an
/// overlay dir of a version built here, its builder's copy gone — in the seed's order (before
/// the content), the same check a hit on it makes (`engine/outputs.rs`); a pulled version has
/// no copy to miss.
fn before_walk(
    rec: &VersionRecord,
    src: &SourceRef<'_>,
    summary: Option<&SourceSummary>,
) -> Option<MissReason> {
    if summary.is_none() {
        return Some(src.id().miss(SourceMiss::New));
    }
    let rootfs = src.rootfs_path.filter(|_| rec.origin == Origin::Built)?;
    outputs::builder_copy(&src.ident, rootfs).map(|m| m.reason())
}

/// 2. The definition: its digest (`now`), and on a change the top-level fields that differ.
fn check_definition(
    rec: &VersionRecord,
    inputs: &LayerInputs,
    now: [u8; 32],
    reasons: &mut Reasons,
) {
    if now != rec.definition_digest {
        let old: serde_json::Value =
            serde_json::from_slice(&rec.definition_json).unwrap_or(serde_json::Value::Null);
        reasons.push(MissReason::DefinitionChanged {
            fields: definition_changes(&old, &inputs.definition),
        });
    }
}

/// 3. The base: the same kind and reference, and the same hash now as at put.
fn check_base(rec: &VersionRecord, inputs: &LayerInputs, base: &BaseNow, reasons: &mut Reasons) {
    let kind = inputs.base.kind();
    let reference = inputs.base.reference();
    if kind != rec.base.kind || reference != rec.base.reference {
        reasons.push(MissReason::BaseChanged {
            change: BaseChange::Replaced {
                old: format!("{}:{}", rec.base.kind.as_str(), rec.base.reference),
                new: format!("{}:{}", kind.as_str(), reference),
            },
        });
        return;
    }
    match base {
        BaseNow::Miss(change) => reasons.push(MissReason::BaseChanged {
            change: change.clone(),
        }),
        BaseNow::Hash(h) if *h != rec.base.hash => reasons.push(MissReason::BaseChanged {
            change: BaseChange::HashChanged {
                old: display_hash(&rec.base.hash),
                new: display_hash(h),
            },
        }),
        BaseNow::Hash(_) => {}
    }
}

/// 4. SOURCE_DATE_EPOCH.
fn check_epoch(rec: &VersionRecord, inputs: &LayerInputs, reasons: &mut Reasons) {
    if rec.source_date_epoch != inputs.source_date_epoch {
        reasons.push(MissReason::SourceDateEpochChanged {
            old: rec.source_date_epoch,
            new: inputs.source_date_epoch,
        });
    }
}

/// 4b. build_only (part of the input digest): kept as a rootfs directory or exported.
fn check_build_only(rec: &VersionRecord, inputs: &LayerInputs, reasons: &mut Reasons) {
    if rec.build_only != inputs.build_only {
        reasons.push(MissReason::BuildOnlyChanged {
            old: rec.build_only,
            new: inputs.build_only,
        });
    }
}

/// Sources recorded at put that the layer no longer has. In stacker they are part of the
/// definition; here the builder passes them apart, so they are checked apart — after the
/// current ones, so a renamed key reports the new name first ("new import").
fn check_removed_sources(rec: &VersionRecord, inputs: &LayerInputs, reasons: &mut Reasons) {
    for role in [SourceRole::Import, SourceRole::OverlayDir] {
        for s in summaries(rec, role) {
            let id = super::SourceId { role, key: &s.key };
            let still = cached_sources(inputs).any(|c| c.id() == id);
            if !still {
                reasons.push(id.miss(SourceMiss::Removed));
            }
        }
    }
}

/// A hit with the version, unless its manifests do not decode (then a damaged-entry miss).
fn hit(rec: VersionRecord) -> Outcome {
    match decode_manifests(&rec) {
        Ok(manifests) => Outcome::Hit(Box::new(CachedEntry {
            record: rec,
            manifests,
        })),
        Err(detail) => Outcome::Miss(vec![MissReason::DamagedEntry { detail }]),
    }
}
