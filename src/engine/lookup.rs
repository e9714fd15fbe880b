//! Evaluating one layer (schema v3): a layer marked uncacheable misses with that reason alone;
//! otherwise compute its input digest while walking, hit on **any**
//! stored version with that digest, and otherwise explain the miss against the layer's current
//! version (the one its rows describe, the most recently used) in stacker's order: not cached,
//! definition, builder, base, SOURCE_DATE_EPOCH, build_only, each cached source, sources no
//! longer in the layer. A layer marked uncacheable misses with that reason alone, before any check.
//!
//! Owns: that order, what each step compares, which stored versions can still match before
//! any tree is walked (if none can and nothing is to be observed, no tree is walked), the input
//! digest of what was walked ([`crate::version::input_digest`]), and the outcome (hit with the
//! decoded version, or miss with typed reasons). A source's walk and diff is `engine/source.rs`.
//!
//! Must never: write to the database on a miss. After a hit (once the read transaction ends)
//! `engine/refresh.rs` refreshes stat data, records the use coarsely, and — for a hit on a
//! version other than the current one — makes the rows describe the tree as it is now.

use std::borrow::Cow;
use std::collections::BTreeSet;

use crate::error::Result;
use crate::inputs::LayerInputs;
use crate::path::display_hash;
use crate::reason::{BaseChange, MissReason, definition_changes};
use crate::schema::{LayerRecord, Origin, VersionRecord};
use crate::store::versions;
use crate::version::{Inputs, SourceInput, input_digest};

use super::outputs;
use super::refresh::{RefreshList, Switch};
use super::session::BaseNow;
use super::source::{
    LyingRow, Observed, SourceCheck, SourceMiss, SourceRole, WalkedTree, cached_sources, summaries,
};
use super::{CachedEntry, Lookup, LookupMode, Outcome, Seen, Session, decode_manifests};

/// The reasons found so far, and whether to look for more.
struct Reasons {
    mode: LookupMode,
    list: Vec<MissReason>,
}

impl Reasons {
    /// True when the outcome is decided and the caller wants only the first reason.
    fn stop(&self) -> bool {
        !self.mode.explain && !self.list.is_empty()
    }

    fn push(&mut self, r: MissReason) {
        self.list.push(r);
    }
}

/// What the sources' walks gave the lookup.
struct Walked<'i> {
    observed: Option<Vec<Observed>>,
    /// Per cached source: its role, key and walked tree (`None`: not walked or gone).
    trees: Vec<(SourceRole, Cow<'i, str>, Option<WalkedTree>)>,
    /// Stored rows whose stat data lied (verify only).
    lied: Vec<LyingRow>,
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
            let lookup = Lookup {
                layer: layer.to_string(),
                outcome: Outcome::Miss(vec![MissReason::NotCacheable { why: why.clone() }]),
                lying_rows: Vec::new(),
                base_of_dependents: None,
                input_digest: None,
            };
            return Ok((lookup, None));
        }
        let builder = self.build.builder.as_deref();
        let path = self.cache.store.path().to_path_buf();
        let txn = self.cache.store.begin_read()?;
        let mut reasons = Reasons {
            mode,
            list: Vec::new(),
        };
        let (pointer, current) = self.read_current(&txn, layer, &mut reasons)?;
        let stored = versions::versions_of(&txn, &path, layer)?;
        self.counters.entries_read += stored.iter().filter(|(_, r)| r.is_ok()).count() as u64;
        let base = self.base_now(layer, &inputs.base, false)?;
        if let Some(rec) = &current {
            check_definition(rec, inputs, &mut reasons);
            if !reasons.stop() && rec.builder.as_deref() != builder {
                // With the definition: the builder is part of what was built.
                reasons.push(MissReason::BuilderChanged {
                    old: rec.builder.clone(),
                    new: builder.map(str::to_string),
                });
            }
            if !reasons.stop() {
                check_base(rec, inputs, &base, &mut reasons);
            }
            if !reasons.stop() {
                check_epoch(rec, inputs, &mut reasons);
            }
            if !reasons.stop() {
                check_build_only(rec, inputs, &mut reasons);
            }
        }
        // Which stored versions can still match once the trees are known: the same definition,
        // base, epoch, build_only, builder and set of sources. A damaged version might be any.
        let definition_digest = inputs.definition_digest();
        let keys_now: BTreeSet<(SourceRole, Cow<'_, str>)> =
            cached_sources(inputs).map(|s| (s.role, s.ident)).collect();
        let could_hit = match &base {
            BaseNow::Miss(_) => false,
            BaseNow::Hash(h) => stored.iter().any(|(_, r)| match r {
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
            }),
        };
        let mut refresh = RefreshList::default();
        let walked = self.check_sources(
            &txn,
            layer,
            inputs,
            current.as_ref(),
            could_hit,
            &mut reasons,
            &mut refresh,
        )?;
        if let Some(rec) = &current {
            check_removed_sources(rec, inputs, &mut reasons);
        }
        drop(txn);

        // The input digest of what was walked, if every source was walked soundly (computed
        // on a miss too: a remote lookup asks for it). Outputs are no part of it: a builder's
        // copy of an overlay dir is an output of building here (`engine/outputs.rs`).
        let digest = match &base {
            BaseNow::Hash(h) => digest_of(inputs, builder, definition_digest, h, &walked),
            BaseNow::Miss(_) => None,
        };
        let damaged = reasons
            .list
            .iter()
            .any(|r| matches!(r, MissReason::DamagedEntry { .. }));
        let found = digest
            .filter(|_| could_hit)
            .and_then(|d| stored.into_iter().find(|(k, _)| *k == d));
        let mut reasons = reasons.list;
        let mut base_of_dependents = None;
        let outcome = match found {
            // Every input matches: the hit is decided by the one outputs rule.
            Some((_, Ok(rec))) => {
                match outputs::missing(&self.cache.config, &rec, &inputs.overlay_dirs)? {
                    // The outputs are not there: a miss (that writes nothing), but the version is
                    // still what the layers built on this one were built on.
                    Some(missing) => {
                        base_of_dependents = Some(crate::version::entry_digest_of(&rec));
                        Outcome::Miss(vec![missing.reason()])
                    }
                    None => {
                        let is_current = current
                            .as_ref()
                            .is_some_and(|c| c.input_digest == rec.input_digest);
                        let switch = (!is_current).then(|| Switch {
                            from: pointer.clone(),
                            trees: walked.trees,
                        });
                        self.after_hit(layer, &rec, &refresh, switch)?;
                        hit(rec)
                    }
                }
            }
            Some((_, Err(e))) => Outcome::Miss(vec![MissReason::DamagedEntry {
                detail: e.to_string(),
            }]),
            None => {
                if reasons.is_empty() {
                    reasons.push(MissReason::NotCached);
                }
                if !mode.explain {
                    reasons.truncate(1);
                }
                Outcome::Miss(reasons)
            }
        };
        if !walked.lied.is_empty() {
            self.distrust_rows(layer, &walked.lied)?;
        }
        let seen = walked.observed.map(|sources| Seen {
            definition_digest,
            builder: builder.map(str::to_string),
            base_hash: match &base {
                BaseNow::Hash(h) => Some(h.clone()),
                BaseNow::Miss(_) => None,
            },
            source_date_epoch: inputs.source_date_epoch,
            build_only: inputs.build_only,
            damaged,
            input_digest: digest,
            sources,
            base_proof: None,
            base_layer: match &inputs.base {
                crate::inputs::Base::Built { layer } => Some(layer.clone()),
                _ => None,
            },
        });
        let lookup = Lookup {
            layer: layer.to_string(),
            outcome,
            lying_rows: walked.lied,
            base_of_dependents,
            input_digest: digest,
        };
        Ok((lookup, seen))
    }

    /// 1. The layer's current version: no pointer is "not cached"; a pointer or version that
    ///    does not decode is "damaged" (then no rows are trusted, but another version can
    ///    still hit).
    fn read_current(
        &mut self,
        txn: &redb::ReadTransaction,
        layer: &str,
        reasons: &mut Reasons,
    ) -> Result<(Option<LayerRecord>, Option<VersionRecord>)> {
        let path = self.cache.store.path();
        let pointer = match versions::pointer(txn, path, layer)? {
            None => {
                reasons.push(MissReason::NotCached);
                return Ok((None, None));
            }
            Some(Err(e)) => {
                reasons.push(MissReason::DamagedEntry {
                    detail: e.to_string(),
                });
                return Ok((None, None));
            }
            Some(Ok(p)) => p,
        };
        match versions::version(txn, path, layer, &pointer.current)? {
            Some(Ok(v)) => Ok((Some(pointer), Some(v))),
            Some(Err(e)) => {
                reasons.push(MissReason::DamagedEntry {
                    detail: e.to_string(),
                });
                Ok((Some(pointer), None))
            }
            // Pruned or collected: the rows describe nothing stored.
            None => {
                reasons.push(MissReason::NotCached);
                Ok((Some(pointer), None))
            }
        }
    }

    /// 5 and 6: imports and overlay dirs. Walked when they can still decide the outcome (a
    /// stored version may match: then with the stat fast path against the rows of the current
    /// version), or when the caller wants them observed for a put.
    #[allow(clippy::too_many_arguments)]
    fn check_sources<'i>(
        &mut self,
        txn: &redb::ReadTransaction,
        layer: &str,
        inputs: &'i LayerInputs,
        current: Option<&VersionRecord>,
        could_hit: bool,
        reasons: &mut Reasons,
        refresh: &mut RefreshList,
    ) -> Result<Walked<'i>> {
        let observe = reasons.mode.observe;
        let mut walked = Walked {
            observed: observe.then(Vec::new),
            trees: Vec::new(),
            lied: Vec::new(),
        };
        for src in cached_sources(inputs) {
            let explain = !reasons.stop() && current.is_some();
            if !explain && !observe && !could_hit {
                break;
            }
            let summary =
                current.and_then(|r| summaries(r, src.role).iter().find(|s| s.key == src.ident));
            if explain && summary.is_none() {
                reasons.push(src.id().miss(SourceMiss::New));
            }
            let explain = explain && summary.is_some();
            // The builder's copy, in the seed's order (before the content), when the version
            // explained against was built here: the same check a hit on it makes
            // (`engine/outputs.rs`); a pulled version has no copy to miss.
            if explain
                && current.is_some_and(|c| c.origin == Origin::Built)
                && let Some(rootfs) = src.rootfs_path
                && let Some(missing) = outputs::builder_copy(&src.ident, rootfs)
            {
                reasons.push(missing.reason());
            }
            let checked = SourceCheck {
                store: &self.cache.store,
                txn,
                layer,
                source: &src,
                summary,
                observe,
                verify: reasons.mode.verify,
                progress: &self.cache.progress,
            }
            .run(refresh)?;
            self.counters.walk.add(&checked.counters);
            walked.lied.extend(checked.lied);
            if let (Some(all), Some(o)) = (walked.observed.as_mut(), checked.observed) {
                all.push(o);
            }
            if explain
                && !reasons.stop()
                && let Some(r) = checked.reason
            {
                reasons.push(r);
            }
            walked.trees.push((src.role, src.ident, checked.tree));
        }
        Ok(walked)
    }
}

/// The (role, key) set of a version's sources.
fn source_keys(v: &VersionRecord) -> BTreeSet<(SourceRole, Cow<'_, str>)> {
    crate::version::sources_of(&v.imports, &v.overlay_dirs)
        .into_iter()
        .map(|s| (s.role, Cow::Borrowed(s.key)))
        .collect()
}

/// The input digest of the layer as walked; `None` when a source was not walked, is gone, or
/// its walk vouches for nothing.
fn digest_of(
    inputs: &LayerInputs,
    builder: Option<&str>,
    definition_digest: [u8; 32],
    base_hash: &[u8],
    walked: &Walked<'_>,
) -> Option<[u8; 32]> {
    if walked.trees.len() != cached_sources(inputs).count() {
        return None;
    }
    let mut sources = Vec::with_capacity(walked.trees.len());
    for (role, key, tree) in &walked.trees {
        let t = tree.as_ref().filter(|t| t.trusted)?;
        sources.push(SourceInput {
            role: *role,
            key,
            root_kind: t.root_kind,
            root_digest: t.root_digest,
        });
    }
    Some(input_digest(&Inputs {
        definition_digest,
        base_kind: inputs.base.kind(),
        base_hash,
        source_date_epoch: inputs.source_date_epoch,
        build_only: inputs.build_only,
        builder,
        sources,
    }))
}

/// 2. The definition: its digest, and on a change the top-level fields that differ.
fn check_definition(rec: &VersionRecord, inputs: &LayerInputs, reasons: &mut Reasons) {
    if inputs.definition_digest() != rec.definition_digest {
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
            if !still && !reasons.stop() {
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
