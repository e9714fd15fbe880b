//! Put: record a layer from its inputs, checked against what its lookup observed, in one write
//! transaction.
//!
//! Owns: [`Session::put`], writing a walked tree as the rows of one (layer, source)
//! ([`Store::write_tree`], here rather than in the store so that the store never depends on the
//! walk), and the merge of a put's walk against the lookup's observation.
//!
//! Must never: store anything when an input changed since the lookup, or a file that changed
//! while it was hashed; commit more than one transaction per put.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;

use crate::error::{DbResultExt, Error, Result};
use crate::failpoint::crash_point;
use crate::inputs::Base;
use crate::inputs::{LayerInputs, canonical_json_of};
use crate::path::{RelPath, escape_bytes, validate_layer_name};
use crate::reason::{MissReason, PutChange, PutRefusal};
use crate::schema::{
    BaseRecord, EntryKind, LayerRecord, ManifestRecord, Origin, ROWS, SourceSummary, VersionRecord,
};
use crate::store::guard::guard_redb;
use crate::store::rows::{RowRange, encode_row, validate_source};
use crate::store::versions;
use crate::store::{Store, TreeSummary};
use crate::tree::{LogReader, LoggedEntry, SealedLog, TreeHasher, TreeWalk, WalkedEntry};
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

impl Session<'_> {
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
        let db = self.cache.store.path().to_path_buf();
        guard_redb(&db, || {
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
        let db = self.cache.store.path().to_path_buf();
        let key = super::record::RecordKey::of(&self.cache.store.secret()?);
        if !record.is_from(&key) {
            return Err(Error::RecordNotFromThisCache {
                db,
                layer: record.layer().to_string(),
            });
        }
        let seen = record.seen(self.build.layer(record.layer()).ok());
        guard_redb(&db, || {
            self.put_unguarded(record.layer(), Some(&seen), manifests, Origin::Built)
        })
    }

    fn put_unguarded(
        &mut self,
        layer: &str,
        seen: Option<&Seen>,
        manifests: &BTreeMap<String, Descriptor>,
        origin: Origin,
    ) -> Result<VersionRecord> {
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
        let manifests = manifest_records(manifests)?;
        // The base: trusted from the lookup's proof when it still holds inside this write
        // transaction, else resolved by walking the bases (it must hit now).
        let (txn, base_hash) = match self.trusted_base(inputs, seen)? {
            Some(t) => t,
            None => {
                self.resolve_bases_below(layer)?;
                let h = self.base_hash_for_put(layer, inputs)?;
                (self.cache.store.begin_write()?, h)
            }
        };
        let mut changes = self.layer_changes(seen, inputs, &base_hash);
        let store = &self.cache.store;
        let path = store.path();
        crash_point!("put::before_rows");
        // Drop rows of sources the layer no longer has.
        RowRange::layer(layer).delete(path, &mut txn.open_table(ROWS).db(path)?)?;
        let written = self.write_sources(&txn, layer, seen, inputs)?;
        crash_point!("put::after_rows");
        changes.extend(written.changes);
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
            // Dropping the transaction without commit stores nothing.
            txn.abort().db(path)?;
            return Err(Error::InputsChanged {
                layer: layer.to_string(),
                changes,
            });
        }
        crash_point!("put::before_entry");
        let (record, generation) = store_version(path, &txn, record)?;
        crash_point!("put::before_commit");
        txn.commit().db(path)?;
        crash_point!("put::after_commit");
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
    /// transaction the proof was checked in: `None` (and no transaction) when the layer's
    /// base is not built, the lookup formed no proof, or the proof no longer holds — the base
    /// layer was put, switched, removed or collected since the lookup read it.
    fn trusted_base(
        &mut self,
        inputs: &LayerInputs,
        seen: &Seen,
    ) -> Result<Option<(redb::WriteTransaction, Vec<u8>)>> {
        let (Base::Built { layer: b }, Some(p)) = (&inputs.base, seen.base_proof) else {
            return Ok(None);
        };
        if seen.base_hash.as_deref() != Some(p.entry_digest.as_slice()) {
            return Ok(None);
        }
        let txn = self.cache.store.begin_write()?;
        if p.holds_in_write(self.cache, &txn, b)? {
            self.memo.insert(b.clone(), Memo::Hit(p.entry_digest));
            self.proofs.insert(b.clone(), p);
            self.counters.bases_trusted += 1;
            return Ok(Some((txn, p.entry_digest.to_vec())));
        }
        txn.abort().db(self.cache.store.path())?;
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

    /// Walks every cached source of the layer into its rows inside `txn`, noting what differs
    /// from what the lookup saw (`seen`).
    fn write_sources(
        &mut self,
        txn: &redb::WriteTransaction,
        layer: &str,
        seen: &Seen,
        inputs: &LayerInputs,
    ) -> Result<Written> {
        // What the lookup walked (its log), else the rows stored so far, read from the
        // committed state, lets the put's walk reuse the digests of files whose stat data is
        // unchanged (see `write_source`); after the lookup found damaged rows nothing vouches:
        // then every file is read.
        let prior_txn = self.cache.store.begin_read()?;
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
            let prior = (!seen.damaged).then_some(&prior_txn);
            let summary = self.write_source(txn, prior, layer, &src, observed, &mut written)?;
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

    /// Walks one source into its rows inside `txn`, reusing digests where the stat data allows,
    /// and notes in `written` what differs from `observed` (every path the lookup saw, or its
    /// Merkle root and row count; `None`: the lookup did not see it).
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
        txn: &redb::WriteTransaction,
        prior: Option<&redb::ReadTransaction>,
        layer: &str,
        src: &SourceRef<'_>,
        observed: Option<&Observed>,
        written: &mut Written,
    ) -> Result<SourceSummary> {
        let store = &self.cache.store;
        let sid = src.id().row_source();
        let log = observed.and_then(|o| o.log.as_ref());
        let mut walk = match (prior, log) {
            (None, _) => TreeWalk::new(src.path)?,
            (Some(_), Some(log)) => TreeWalk::with_prior(src.path, log.as_prior())?,
            (Some(prior_txn), None) => {
                let prior = store.rows(prior_txn, layer, &sid)?;
                TreeWalk::with_prior(src.path, Box::new(prior))?
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
        let summary = store.write_tree(txn, layer, &sid, src.path, entries)?;
        self.counters.walk.add(&walk.counters());
        let (role, key) = (src.role, src.ident.to_string());
        for p in checker.map(ObservationCheck::finish).unwrap_or_default() {
            written.changes.push(PutChange::Path {
                role,
                key: key.clone(),
                path: escape_bytes(&p.under(src.path).into_os_string().into_encoded_bytes()),
            });
        }
        // Seen by a lookup in another process: its root and row count.
        if let Some(o) = observed.filter(|o| o.log.is_none()) {
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
        Ok(SourceSummary {
            key: src.ident.to_string(),
            source: sid,
            root_kind: summary.root_kind.unwrap_or(EntryKind::Dir),
            root_digest: summary.root_digest,
            rows: summary.rows,
        })
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

/// Stores a version inside `txn` — or keeps the stored one with the same input digest when it
/// records the same outputs (a put of inputs seen before re-uses its version) — points the
/// layer at it with a new rows generation, and records its use. Returns the version stored and
/// the pointer's new generation.
///
/// A version this machine built stays [`Origin::Built`] when a remote hit records it again
/// (its blobs came back from a registry, but its hits still need the builder's copies this
/// machine made: the local rule is not lifted by asking a registry).
fn store_version(
    path: &Path,
    txn: &redb::WriteTransaction,
    mut record: VersionRecord,
) -> Result<(VersionRecord, u64)> {
    let layer = record.name.clone();
    let layer = layer.as_str();
    let old = versions::version_in_write(txn, path, layer, &record.input_digest)?;
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
            versions::write_version(txn, path, &record)?;
            record
        }
    };
    let generation = match versions::pointer_in_write(txn, path, layer)? {
        Some(Ok(p)) => p.generation.wrapping_add(1),
        _ => 0,
    };
    versions::write_pointer(
        txn,
        path,
        layer,
        &LayerRecord {
            current: record.input_digest,
            generation,
        },
    )?;
    versions::touch(txn, path, layer, &record.input_digest, now_ms())?;
    Ok((record, generation))
}

impl Store {
    /// Replaces the rows of (layer, source) with the entries of a walk, inside `txn`, and returns
    /// the tree's summary. An entry that changed while it was hashed aborts with
    /// [`Error::ChangedWhileReading`] (the caller's transaction is then dropped, storing nothing).
    pub fn write_tree(
        &self,
        txn: &redb::WriteTransaction,
        layer: &str,
        source: &str,
        root: &Path,
        entries: impl IntoIterator<Item = Result<WalkedEntry>>,
    ) -> Result<TreeSummary> {
        validate_source(source)?;
        let db = self.path();
        let mut table = txn.open_table(ROWS).db(db)?;
        RowRange::source(layer, source).delete(db, &mut table)?;
        let mut hasher = TreeHasher::new();
        let mut root_kind = None;
        for entry in entries {
            let entry = entry?;
            if entry.unstable {
                return Err(Error::ChangedWhileReading {
                    path: entry.path.under(root),
                });
            }
            if entry.path.is_root() {
                root_kind = Some(entry.row.kind);
            }
            hasher.push(&entry.path, &entry.row);
            let bytes = encode_row(db, &entry.path, &entry.row)?;
            table
                .insert((layer, source, entry.path.key()), bytes.as_slice())
                .db(db)?;
        }
        let (root_digest, rows) = hasher.finish();
        Ok(TreeSummary {
            root_digest,
            rows,
            root_kind,
        })
    }
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
