//! Put: record a layer from its inputs, checked against what its lookup observed, in one write
//! transaction.
//!
//! Owns: [`Session::put`], the merge of a put's walk against the lookup's observation, and
//! what a put's version record holds. The rows are written by the store
//! (`Batch::write_tree`), which writes only the rows that differ from the stored ones.
//!
//! Must never: store anything when an input changed since the lookup, or a file that changed
//! while it was hashed; commit more than one transaction per put; name a storage-engine type (that is the
//! store's).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use oci_spec::image::Descriptor;

use crate::error::{Error, Result};
use crate::failpoint::crash_point;
use crate::inputs::Base;
use crate::inputs::{LayerInputs, canonical_json_of};
use crate::path::{RelPath, escape_bytes, validate_layer_name};
use crate::reason::MissReason;
use crate::refusal::{PutChange, PutRefusal};
use crate::schema::{
    BaseRecord, EntryKind, LayerRecord, ManifestRecord, Origin, Row, SourceSummary, VersionRecord,
};
use crate::store::{Batch, Snapshot, TreeSummary};
use crate::tree::{LogReader, LoggedEntry, SealedLog, TreeWalk, WalkedEntry, fastpath};
use crate::version::{Inputs, entry_digest_of, input_digest};

use super::session::{BaseNow, Memo, Proof};
use super::source::{Observed, SourceId, SourceRef, SourceRole, cached_sources, same_as_observed};
use super::{BuildLookup, LookupRecord, Seen, Session, now_ms};

/// What a put's walks produced: the summaries per role, and the paths that differ from the
/// lookup's observation (`import KEY: PATH` / `overlay_dir KEY: PATH`).
#[derive(Default)]
struct Written {
    imports: Vec<SourceSummary>,
    overlay_dirs: Vec<SourceSummary>,
    changes: Vec<PutChange>,
}

impl<'a> Session<'a> {
    /// Records a layer: walks its imports and overlay dirs into rows, and stores a version (or
    /// re-uses an identical one), the rows, the layer's pointer and the use in one write
    /// transaction. `lookup` is the lookup this build did of the layer: if any input differs
    /// from what it saw — the definition, the builder, the base hash, SOURCE_DATE_EPOCH,
    /// build_only, any path of any source, the input digest — nothing is stored and
    /// [`Error::InputsChanged`] names what changed. Manifests `{}` are refused
    /// ([`Error::PutRefused`]) unless the layer is build-only; a layer marked
    /// [`uncacheable`](crate::LayerInputs::uncacheable) is refused ([`Error::NotCacheable`]).
    pub fn put(
        &mut self,
        lookup: &BuildLookup,
        manifests: &BTreeMap<String, Descriptor>,
    ) -> Result<VersionRecord> {
        self.put_as(lookup, manifests, Origin::Built)
    }

    /// [`Session::put`] recorded with `origin`: [`Origin::Pulled`] for a version taken from a
    /// registry entry (a remote hit) — the same checks and the same transaction, so that its
    /// hits do not ask for builder's copies this machine never made.
    pub(crate) fn put_as(
        &mut self,
        lookup: &BuildLookup,
        manifests: &BTreeMap<String, Descriptor>,
        origin: Origin,
    ) -> Result<VersionRecord> {
        let cache = self.cache;
        cache.store.guarded(|| {
            self.put_unguarded(
                &lookup.lookup.layer,
                lookup.seen.as_ref(),
                manifests,
                origin,
            )
        })
    }

    /// [`Session::put`] checked against a [`LookupRecord`]: what a lookup in another process
    /// saw (`layercache lookup --record FILE`, then `layercache put --from FILE`). The record
    /// keeps each source's Merkle root and row count, not its paths: a source that differs is
    /// named, with its row counts and roots. The record must be of this layer, and made by a
    /// lookup of this cache and unchanged since (its MAC under the cache's secret, see
    /// [`LookupRecord`]), else [`Error::RecordNotFromThisCache`] and nothing is read of it.
    pub fn put_recorded(
        &mut self,
        record: &LookupRecord,
        manifests: &BTreeMap<String, Descriptor>,
    ) -> Result<VersionRecord> {
        let cache = self.cache;
        let key = super::record::RecordKey::of(&cache.store.secret()?);
        if !record.is_from(&key) {
            return Err(Error::RecordNotFromThisCache {
                db: cache.store.path().to_path_buf(),
                layer: record.layer().to_string(),
            });
        }
        let seen = record.seen(self.build.layer(record.layer()).ok());
        cache
            .store
            .guarded(|| self.put_unguarded(record.layer(), Some(&seen), manifests, Origin::Built))
    }

    fn put_unguarded(
        &mut self,
        layer: &str,
        seen: Option<&Seen>,
        manifests: &BTreeMap<String, Descriptor>,
        origin: Origin,
    ) -> Result<VersionRecord> {
        let (inputs, seen) = self.may_put(layer, seen, manifests)?;
        let manifests = manifest_records(manifests)?;
        // The base: trusted from the lookup's proof when it still holds inside this write
        // transaction, else resolved by walking the bases (it must hit now).
        let (batch, base_hash) = match self.trusted_base(inputs, seen)? {
            Some(t) => t,
            None => {
                self.resolve_bases_below(layer)?;
                let h = self.base_hash_for_put(layer, inputs)?;
                (self.cache.store.batch()?, h)
            }
        };
        let mut changes = self.layer_changes(seen, inputs, &base_hash);
        crash_point!("put::before_rows");
        let mut written = self.write_sources(&batch, layer, seen, inputs)?;
        crash_point!("put::after_rows");
        changes.extend(std::mem::take(&mut written.changes));
        let record = self.version_record(layer, inputs, base_hash, written, manifests, origin);
        if let Some(d) = seen.input_digest
            && d != record.input_digest
            && changes.is_empty()
        {
            // Every part was compared above; this is the belt to those braces.
            changes.push(PutChange::InputDigest {
                old: d,
                new: record.input_digest,
            });
        }
        if !changes.is_empty() {
            // A batch dropped without commit stores nothing.
            drop(batch);
            return Err(Error::InputsChanged {
                layer: layer.to_string(),
                changes,
            });
        }
        self.commit_version(batch, record)
    }

    /// The version a put stores, its input digest computed from what it holds.
    fn version_record(
        &self,
        layer: &str,
        inputs: &LayerInputs,
        base_hash: Vec<u8>,
        written: Written,
        manifests: Vec<ManifestRecord>,
        origin: Origin,
    ) -> VersionRecord {
        let mut record = VersionRecord {
            name: layer.to_string(),
            input_digest: [0; 32],
            definition_digest: inputs.definition_digest(),
            definition_json: inputs.definition_json(),
            base: BaseRecord {
                kind: inputs.base.kind(),
                reference: inputs.base.reference(),
                hash: base_hash,
            },
            source_date_epoch: inputs.source_date_epoch,
            builder: self.build.builder.clone(),
            imports: written.imports,
            overlay_dirs: written.overlay_dirs,
            manifests,
            build_only: inputs.build_only,
            created_unix_ms: now_ms(),
            origin,
        };
        record.input_digest = input_digest(&Inputs::of_record(&record));
        record
    }

    /// The checks before anything is walked: the layer's name, that it is cacheable, that a
    /// lookup observed it, and that it has outputs (or is build-only).
    fn may_put<'s>(
        &self,
        layer: &str,
        seen: Option<&'s Seen>,
        manifests: &BTreeMap<String, Descriptor>,
    ) -> Result<(&'a LayerInputs, &'s Seen)> {
        validate_layer_name(layer)?;
        let inputs = self.build.layer(layer)?;
        if let Some(why) = &inputs.uncacheable {
            return Err(Error::NotCacheable {
                layer: layer.to_string(),
                why: why.clone(),
            });
        }
        let Some(seen) = seen else {
            return Err(Error::PutRefused {
                layer: layer.to_string(),
                why: PutRefusal::NothingObserved,
            });
        };
        if manifests.is_empty() && !inputs.build_only {
            return Err(Error::PutRefused {
                layer: layer.to_string(),
                why: PutRefusal::NoOutputs,
            });
        }
        Ok((inputs, seen))
    }

    /// Stores the version, points the layer at it and commits; then remembers the result for
    /// the layers built on it.
    fn commit_version(&mut self, batch: Batch, record: VersionRecord) -> Result<VersionRecord> {
        crash_point!("put::before_entry");
        let (record, generation) = store_version(&batch, record)?;
        crash_point!("put::before_commit");
        batch.commit()?;
        crash_point!("put::after_commit");
        let layer = record.name.as_str();
        let digest = entry_digest_of(&record);
        self.memo.insert(layer.to_string(), Memo::Hit(digest));
        // Layers built on this one must be evaluated again.
        self.forget_dependents_of(layer);
        // What this put left: the result its dependents' lookups may trust.
        self.proofs.insert(
            layer.to_string(),
            Proof {
                entry_digest: digest,
                current: record.input_digest,
                generation,
            },
        );
        Ok(record)
    }

    /// The base hash from the lookup's proof of its built base ([`Proof`]), with the write
    /// batch the proof was checked in: `None` (and no batch) when the layer's base is not
    /// built, the lookup formed no proof, or the proof no longer holds — the base layer was
    /// put, switched, removed or collected since the lookup read it.
    fn trusted_base(
        &mut self,
        inputs: &LayerInputs,
        seen: &Seen,
    ) -> Result<Option<(Batch, Vec<u8>)>> {
        let (Base::Built { layer: b }, Some(p)) = (&inputs.base, seen.base_proof) else {
            return Ok(None);
        };
        if seen.base_hash.as_deref() != Some(p.entry_digest.as_slice()) {
            return Ok(None);
        }
        let batch = self.cache.store.batch()?;
        if p.holds_in(&batch, b)? {
            self.memo.insert(b.clone(), Memo::Hit(p.entry_digest));
            self.proofs.insert(b.clone(), p);
            self.counters.bases_trusted += 1;
            return Ok(Some((batch, p.entry_digest.to_vec())));
        }
        drop(batch);
        tracing::info!(
            base = %escape_bytes(b.as_bytes()),
            "the base layer changed since the lookup read it: its sources are walked"
        );
        Ok(None)
    }

    /// The base hash a put records: the base must hit now.
    fn base_hash_for_put(&self, layer: &str, inputs: &LayerInputs) -> Result<Vec<u8>> {
        match self.base_now(layer, &inputs.base, true)? {
            BaseNow::Hash(h) => Ok(h),
            BaseNow::Miss(change) => Err(Error::Base {
                layer: layer.to_string(),
                detail: MissReason::BaseChanged { change }.to_string(),
            }),
        }
    }

    /// What differs between the layer as its lookup saw it and as the put sees it, apart from
    /// the sources: definition, builder, SOURCE_DATE_EPOCH, build_only, base hash.
    fn layer_changes(&self, seen: &Seen, inputs: &LayerInputs, base_hash: &[u8]) -> Vec<PutChange> {
        let mut changes = Vec::new();
        if inputs.definition_digest() != seen.definition_digest {
            changes.push(PutChange::Definition);
        }
        if seen.builder != self.build.builder {
            changes.push(PutChange::Builder {
                old: seen.builder.clone(),
                new: self.build.builder.clone(),
            });
        }
        if seen.source_date_epoch != inputs.source_date_epoch {
            changes.push(PutChange::SourceDateEpoch {
                old: seen.source_date_epoch,
                new: inputs.source_date_epoch,
            });
        }
        if seen.build_only != inputs.build_only {
            changes.push(PutChange::BuildOnly {
                old: seen.build_only,
                new: inputs.build_only,
            });
        }
        let base = format!(
            "{}:{}",
            inputs.base.kind().as_str(),
            escape_bytes(inputs.base.reference().as_bytes())
        );
        match &seen.base_hash {
            // A built base that missed at lookup is built before this layer (the build order);
            // the put records the base version that hits now. Any other base must have resolved.
            None if matches!(inputs.base, Base::Built { .. }) => {}
            None => changes.push(PutChange::BaseUnresolved { base }),
            Some(h) if h.as_slice() != base_hash => changes.push(PutChange::BaseHash {
                base,
                old: h.clone(),
                new: base_hash.to_vec(),
            }),
            Some(_) => {}
        }
        changes
    }

    /// Walks every cached source of the layer into its rows inside `batch` (only the rows
    /// that differ from the stored ones are written; rows of sources the layer no longer has
    /// are removed), noting what differs from what the lookup saw (`seen`).
    fn write_sources(
        &mut self,
        batch: &Batch,
        layer: &str,
        seen: &Seen,
        inputs: &LayerInputs,
    ) -> Result<Written> {
        let keep: BTreeSet<String> = cached_sources(inputs)
            .map(|s| s.id().row_source())
            .collect();
        batch.remove_rows_except(layer, &keep)?;
        // The stored rows, read from a snapshot taken while the batch holds the write lock
        // (the state the batch began from: see `Batch::write_tree`), are what the walk is
        // merged with; they also let the walk reuse the digests of files whose stat data is
        // unchanged when the lookup left no log (see `write_source`). After the lookup found
        // damaged rows nothing vouches: then every file is read and every row written.
        let snapshot = self.cache.store.snapshot()?;
        let same_state =
            snapshot.pointer(layer)?.map(Result::ok) == batch.pointer(layer)?.map(Result::ok);
        let prior = (!seen.damaged && same_state).then_some(&snapshot);
        let mut written = Written::default();
        let mut matched = vec![false; seen.sources.len()];
        for src in cached_sources(inputs) {
            let found = seen
                .sources
                .iter()
                .position(|o| o.role == src.role && o.key == src.ident);
            if let Some(m) = found.and_then(|i| matched.get_mut(i)) {
                *m = true;
            }
            // A source the lookup did not see (it was missing then): every path is a change.
            let observed = found.and_then(|i| seen.sources.get(i));
            let summary = self.write_source(batch, prior, layer, &src, observed, &mut written)?;
            match src.role {
                SourceRole::Import => written.imports.push(summary),
                SourceRole::OverlayDir => written.overlay_dirs.push(summary),
            }
        }
        for (o, _) in seen.sources.iter().zip(&matched).filter(|(_, m)| !**m) {
            let id = SourceId {
                role: o.role,
                key: &o.key,
            };
            written.changes.push(PutChange::SourceRemoved {
                role: id.role,
                key: id.key.to_string(),
            });
        }
        Ok(written)
    }

    /// Walks one source into its rows inside `batch`, reusing digests where the stat data
    /// allows, and notes in `written` what differs from `observed` (every path the lookup saw,
    /// or its Merkle root and row count; `None`: the lookup did not see it).
    ///
    /// The digests reused come from the lookup's walk log when there is one (a stat cache of
    /// this very build: a file the lookup hashed, whose type, mode, owner, size, inode, device,
    /// mtime and ctime are unchanged since and whose logged row is not racy by
    /// [`crate::tree::fastpath`]'s rule, is not read again — so a cold put after its lookup
    /// reads no file), else from the stored rows in `prior`; with `prior` `None` (damaged
    /// rows) from nothing. Either way the walk is checked entry by entry against the log, so a
    /// change since the lookup refuses the put.
    fn write_source(
        &mut self,
        batch: &Batch,
        prior: Option<&Snapshot>,
        layer: &str,
        src: &SourceRef<'_>,
        observed: Option<&Observed>,
        written: &mut Written,
    ) -> Result<SourceSummary> {
        let sid = src.id().row_source();
        let log = observed.and_then(|o| o.log.as_ref());
        let mut walk = match (prior, log) {
            (None, _) => TreeWalk::new(src.path)?,
            (Some(_), Some(log)) => TreeWalk::with_prior(src.path, log.as_prior())?,
            (Some(snapshot), None) => {
                TreeWalk::with_prior(src.path, Box::new(snapshot.rows(layer, &sid)?))?
            }
        };
        walk.report_to(self.cache.progress());
        if let Some(o) = observed {
            self.cache.progress.expect(o.row_count);
        }
        let mut checker = match observed {
            // The lookup did not see the source: every path is a change.
            None => Some(ObservationCheck::new(&SealedLog::default())),
            Some(o) => o.log.as_ref().map(ObservationCheck::new),
        };
        let entries = walk.by_ref().inspect(|e| {
            if let (Ok(e), Some(c)) = (e, checker.as_mut()) {
                c.push(e);
            }
        });
        let stored = prior.map(|s| s.stored_rows(layer, &sid)).transpose()?;
        let (summary, writes) =
            batch.write_tree(layer, &sid, src.path, entries, stored, &still_stands)?;
        self.counters.walk.add(&walk.counters());
        self.counters.rows_put += writes.inserted + writes.replaced + writes.removed;
        let paths = checker.map(ObservationCheck::finish).unwrap_or_default();
        note_changes(written, src, observed, paths, &summary);
        Ok(SourceSummary {
            key: src.ident.to_string(),
            source: sid,
            root_kind: summary.root_kind.unwrap_or(EntryKind::Dir),
            root_digest: summary.root_digest,
            rows: summary.rows,
        })
    }
}

/// Whether the stored row of a path still stands for the entry a put's walk saw, so that the
/// put need not write it: equal in every compared property, and stat data that vouches for the
/// entry at the next walk as well as the new would — [`fastpath::needs_refresh`] false, the
/// rule a hit's stat refresh uses. Only the snapshot time of its stat data can then differ from
/// the walked row's, and no decision depends on that beyond the racy rule, which it passes.
fn still_stands(stored: &Row, e: &WalkedEntry) -> bool {
    !e.unstable
        && stored.kind == e.row.kind
        && e.row.stat.is_some()
        && stored.compared_eq(&e.row)
        && !fastpath::needs_refresh(stored, &e.row, &e.stat)
}

/// Notes in `written` what of one source differs from what the lookup saw: the `paths` its
/// walk log disagrees with, or (seen by a lookup in another process, no log) its root and row
/// count against the tree just written.
fn note_changes(
    written: &mut Written,
    src: &SourceRef<'_>,
    observed: Option<&Observed>,
    paths: Vec<RelPath>,
    summary: &TreeSummary,
) {
    let (role, key) = (src.role, src.ident.to_string());
    for p in paths {
        written.changes.push(PutChange::Path {
            role,
            key: key.clone(),
            path: escape_bytes(&p.under(src.path).into_os_string().into_encoded_bytes()),
        });
    }
    let Some(o) = observed.filter(|o| o.log.is_none()) else {
        return;
    };
    match o.root_digest {
        None => written
            .changes
            .push(PutChange::ChangedWhileRead { role, key }),
        Some(root) if (root, o.row_count) != (summary.root_digest, summary.rows) => {
            written.changes.push(PutChange::SourceContent {
                role,
                key,
                old_rows: o.row_count,
                old_root: root,
                new_rows: summary.rows,
                new_root: summary.root_digest,
            })
        }
        Some(_) => {}
    }
}

/// The manifests as stored: canonical JSON per layer type.
fn manifest_records(manifests: &BTreeMap<String, Descriptor>) -> Result<Vec<ManifestRecord>> {
    manifests
        .iter()
        .map(|(layer_type, desc)| {
            let json = canonical_json_of(desc).map_err(|e| Error::Parse {
                what: "manifest descriptor",
                path: PathBuf::from(layer_type),
                detail: e.to_string(),
            })?;
            Ok(ManifestRecord {
                layer_type: layer_type.clone(),
                descriptor_json: json,
            })
        })
        .collect()
}

/// Stores a version inside `batch` — or keeps the stored one with the same input digest when it
/// records the same outputs (a put of inputs seen before re-uses its version) — points the
/// layer at it with a new rows generation, and records its use. Returns the version stored and
/// the pointer's new generation.
///
/// A version this machine built stays [`Origin::Built`] when a remote hit records it again
/// (its blobs came back from a registry, but its hits still need the builder's copies this
/// machine made: the local rule is not lifted by asking a registry).
fn store_version(batch: &Batch, mut record: VersionRecord) -> Result<(VersionRecord, u64)> {
    let layer = record.name.clone();
    let layer = layer.as_str();
    let old = batch.version(layer, &record.input_digest)?;
    if let Some(Ok(old)) = &old
        && old.origin == Origin::Built
    {
        record.origin = Origin::Built;
    }
    let same = |old: &VersionRecord| {
        VersionRecord {
            created_unix_ms: record.created_unix_ms,
            ..old.clone()
        } == record
    };
    let record = match old {
        Some(Ok(old)) if same(&old) => old,
        _ => {
            batch.write_version(&record)?;
            record
        }
    };
    let generation = match batch.pointer(layer)? {
        Some(Ok(p)) => p.generation.wrapping_add(1),
        _ => 0,
    };
    batch.write_pointer(
        layer,
        &LayerRecord {
            current: record.input_digest,
            generation,
        },
    )?;
    batch.touch(layer, &record.input_digest, now_ms())?;
    Ok((record, generation))
}

/// Merges a put's walk against what the lookup observed (its walk log), collecting paths that
/// differ.
struct ObservationCheck {
    seen: LogReader,
    next: Option<LoggedEntry>,
    changed: Vec<RelPath>,
}

impl ObservationCheck {
    fn new(seen: &SealedLog) -> Self {
        let mut seen = seen.reader();
        let next = seen.next();
        ObservationCheck {
            seen,
            next,
            changed: Vec::new(),
        }
    }

    fn push(&mut self, e: &WalkedEntry) {
        loop {
            match self.next.take() {
                Some(o) if o.path < e.path => {
                    self.changed.push(o.path);
                    self.next = self.seen.next();
                }
                Some(o) if o.path == e.path => {
                    if !same_as_observed(&o.row, o.unstable, e) {
                        self.changed.push(o.path);
                    }
                    self.next = self.seen.next();
                    return;
                }
                other => {
                    self.next = other;
                    self.changed.push(e.path.clone());
                    return;
                }
            }
        }
    }

    fn finish(mut self) -> Vec<RelPath> {
        while let Some(o) = self.next.take() {
            self.changed.push(o.path);
            self.next = self.seen.next();
        }
        self.changed
    }
}
