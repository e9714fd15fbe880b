//! Evaluating one layer, in stacker's order: not cached, definition, base, SOURCE_DATE_EPOCH,
//! each cached source, sources no longer in the layer.
//!
//! Owns: that order, and what each step compares; the outcome (hit with the decoded entry, or
//! miss with typed reasons). Each step is a short function; a source's walk and diff is
//! `cache/source.rs`.
//!
//! Must never: write to the database on a miss (a hit may refresh stat data through
//! `cache/refresh.rs`, after the read transaction ends), or memoize (the session does).

use crate::error::{DbResultExt, Result};
use crate::inputs::{LayerInputs, canonical_json};
use crate::path::{display_hash, show_path};
use crate::reason::{BaseChange, MissReason, definition_changes};
use crate::schema::{ENTRIES, EntryRecord};

use super::refresh::RefreshList;
use super::session::BaseNow;
use super::source::{Observed, SourceCheck, SourceMiss, SourceRole, cached_sources, summaries};
use super::{CachedEntry, Lookup, LookupMode, Outcome, Session, decode_entry, decode_manifests};

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

impl Session<'_> {
    /// Evaluates one layer (see the module doc for the order).
    pub(super) fn evaluate(
        &mut self,
        layer: &str,
        inputs: &LayerInputs,
        mode: LookupMode,
    ) -> Result<Lookup> {
        self.counters.lookups += 1;
        let txn = self.cache.store.begin_read()?;
        let mut reasons = Reasons {
            mode,
            list: Vec::new(),
        };
        let record = self.read_entry(&txn, layer, &mut reasons)?;
        if let Some(rec) = &record {
            check_definition(rec, inputs, &mut reasons);
            if !reasons.stop() {
                self.check_base(layer, rec, inputs, &mut reasons)?;
            }
            if !reasons.stop() {
                check_epoch(rec, inputs, &mut reasons);
            }
        }
        let mut refresh = RefreshList::default();
        let observed = self.check_sources(
            &txn,
            layer,
            inputs,
            record.as_ref(),
            &mut reasons,
            &mut refresh,
        )?;
        if let Some(rec) = &record {
            check_removed_sources(rec, inputs, &mut reasons);
        }
        let mut reasons = reasons.list;
        if !mode.explain {
            reasons.truncate(1);
        }
        drop(txn);
        if reasons.is_empty() && record.is_some() && !refresh.is_empty() {
            self.refresh_rows(layer, &refresh)?;
        }
        Ok(Lookup {
            layer: layer.to_string(),
            outcome: outcome(record, reasons),
            observed,
        })
    }

    /// 1. The stored entry: none is "not cached", one that does not decode is "damaged".
    fn read_entry(
        &mut self,
        txn: &redb::ReadTransaction,
        layer: &str,
        reasons: &mut Reasons,
    ) -> Result<Option<EntryRecord>> {
        let path = self.cache.store.path();
        let table = txn.open_table(ENTRIES).db(path)?;
        let Some(v) = table.get(layer).db(path)? else {
            reasons.push(MissReason::NotCached);
            return Ok(None);
        };
        match decode_entry(path, layer, v.value()) {
            Ok(r) => {
                self.counters.entries_read += 1;
                Ok(Some(r))
            }
            Err(e) => {
                reasons.push(MissReason::DamagedEntry {
                    detail: e.to_string(),
                });
                Ok(None)
            }
        }
    }

    /// 3. The base: the same kind and reference, and the same hash now as at put.
    fn check_base(
        &self,
        layer: &str,
        rec: &EntryRecord,
        inputs: &LayerInputs,
        reasons: &mut Reasons,
    ) -> Result<()> {
        let kind = inputs.base.kind();
        let reference = inputs.base.reference();
        if kind != rec.base.kind || reference != rec.base.reference {
            reasons.push(MissReason::BaseChanged {
                change: BaseChange::Replaced {
                    old: format!("{}:{}", rec.base.kind.as_str(), rec.base.reference),
                    new: format!("{}:{}", kind.as_str(), reference),
                },
            });
            return Ok(());
        }
        match self.base_now(layer, &inputs.base, false)? {
            BaseNow::Miss(change) => reasons.push(MissReason::BaseChanged { change }),
            BaseNow::Hash(h) if h != rec.base.hash => reasons.push(MissReason::BaseChanged {
                change: BaseChange::HashChanged {
                    old: display_hash(&rec.base.hash),
                    new: display_hash(&h),
                },
            }),
            BaseNow::Hash(_) => {}
        }
        Ok(())
    }

    /// 5 and 6: imports and overlay dirs. Walked when they can still decide the outcome, or
    /// when the caller wants them observed for a put.
    fn check_sources(
        &mut self,
        txn: &redb::ReadTransaction,
        layer: &str,
        inputs: &LayerInputs,
        record: Option<&EntryRecord>,
        reasons: &mut Reasons,
        refresh: &mut RefreshList,
    ) -> Result<Option<Vec<Observed>>> {
        let observe = reasons.mode.observe;
        let mut observed = observe.then(Vec::new);
        for src in cached_sources(inputs) {
            let decide = !reasons.stop() && record.is_some();
            if !decide && !observe {
                break;
            }
            let summary = record.and_then(|r| {
                summaries(r, src.id.role)
                    .iter()
                    .find(|s| s.key == src.id.key)
            });
            if decide && summary.is_none() {
                reasons.push(src.id.miss(SourceMiss::New));
            }
            let mut decide = decide && summary.is_some();
            if let Some(rootfs) = src.rootfs_path
                && decide
                && std::fs::symlink_metadata(rootfs).is_err()
            {
                reasons.push(MissReason::OverlayDirMissing {
                    key: src.id.key.to_string(),
                    rootfs_path: show_path(rootfs),
                });
                decide = reasons.mode.explain;
            }
            let checked = SourceCheck {
                store: &self.cache.store,
                txn,
                layer,
                source: &src,
                summary: summary.filter(|_| decide),
                observe,
            }
            .run(refresh)?;
            self.counters.walk.add(&checked.counters);
            if let (Some(all), Some(o)) = (observed.as_mut(), checked.observed) {
                all.push(o);
            }
            if decide && let Some(r) = checked.reason {
                reasons.push(r);
            }
        }
        Ok(observed)
    }
}

/// 2. The definition: its digest, and on a change the top-level fields that differ.
fn check_definition(rec: &EntryRecord, inputs: &LayerInputs, reasons: &mut Reasons) {
    let def = canonical_json(&inputs.definition);
    if *blake3::hash(&def).as_bytes() != rec.definition_digest {
        let old: serde_json::Value =
            serde_json::from_slice(&rec.definition_json).unwrap_or(serde_json::Value::Null);
        reasons.push(MissReason::DefinitionChanged {
            fields: definition_changes(&old, &inputs.definition),
        });
    }
}

/// 4. SOURCE_DATE_EPOCH.
fn check_epoch(rec: &EntryRecord, inputs: &LayerInputs, reasons: &mut Reasons) {
    if rec.source_date_epoch != inputs.source_date_epoch {
        reasons.push(MissReason::SourceDateEpochChanged {
            old: rec.source_date_epoch,
            new: inputs.source_date_epoch,
        });
    }
}

/// Sources recorded at put that the layer no longer has. In stacker they are part of the
/// definition; here the builder passes them apart, so they are checked apart — after the
/// current ones, so a renamed key reports the new name first ("new import").
fn check_removed_sources(rec: &EntryRecord, inputs: &LayerInputs, reasons: &mut Reasons) {
    for role in [SourceRole::Import, SourceRole::OverlayDir] {
        for s in summaries(rec, role) {
            let id = super::SourceId { role, key: &s.key };
            let still = cached_sources(inputs).any(|c| c.id == id);
            if !still && !reasons.stop() {
                reasons.push(id.miss(SourceMiss::Removed));
            }
        }
    }
}

/// A hit when the entry exists and nothing differs (and its manifests decode), else a miss.
fn outcome(record: Option<EntryRecord>, reasons: Vec<MissReason>) -> Outcome {
    match (record, reasons.is_empty()) {
        (Some(rec), true) => match decode_manifests(&rec) {
            Ok(manifests) => Outcome::Hit(Box::new(CachedEntry {
                record: rec,
                manifests,
            })),
            Err(detail) => Outcome::Miss(vec![MissReason::DamagedEntry { detail }]),
        },
        _ => Outcome::Miss(reasons),
    }
}
