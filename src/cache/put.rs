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
use crate::inputs::{LayerInputs, canonical_json, canonical_json_of};
use crate::path::{RelPath, escape_bytes, validate_layer_name};
use crate::reason::MissReason;
use crate::schema::{
    BaseRecord, EntryKind, EntryRecord, LayerRecord, ManifestRecord, ROWS, SourceSummary,
    VersionRecord,
};
use crate::store::guard::guard_redb;
use crate::store::rows::{RowRange, encode_row, validate_source};
use crate::store::versions;
use crate::store::{Store, TreeSummary};
use crate::tree::{TreeHasher, TreeWalk, WalkedEntry};
use crate::version::{Inputs, entry_digest_of, input_digest};

use super::session::{BaseNow, Memo};
use super::source::{ObservedRow, SourceRef, SourceRole, cached_sources, observation_digest};
use super::{Lookup, Session, now_ms};

/// What a put's walks produced: the summaries per role, and the paths that differ from the
/// lookup's observation (`import KEY: PATH` / `overlay_dir KEY: PATH`).
#[derive(Default)]
struct Written {
    imports: Vec<SourceSummary>,
    overlay_dirs: Vec<SourceSummary>,
    changes: Vec<String>,
}

impl Session<'_> {
    /// Records a layer: walks its imports and overlay dirs into rows, and stores a version (or
    /// re-uses an identical one), the rows, the layer's pointer and the use in one write
    /// transaction. `lookup` is the lookup this build did of
    /// the layer: if any input differs from what it saw, nothing is stored and
    /// [`Error::InputsChanged`] names the paths. A lookup without observations (see
    /// [`LookupMode::observe`](crate::LookupMode::observe)) skips that check. A layer marked
    /// [`uncacheable`](crate::LayerInputs::uncacheable) is refused ([`Error::NotCacheable`]).
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
        if let Some(why) = &inputs.uncacheable {
            return Err(Error::NotCacheable {
                layer: layer.to_string(),
                why: why.clone(),
            });
        }
        self.resolve_bases_below(layer)?;
        let base_hash = self.base_hash_for_put(layer, inputs)?;
        let manifests = manifest_records(manifests)?;
        let store = &self.cache.store;
        let path = store.path();
        let txn = store.begin_write()?;
        crash_point!("put::before_rows");
        // Drop rows of sources the layer no longer has.
        RowRange::layer(layer).delete(path, &mut txn.open_table(ROWS).db(path)?)?;
        let written = self.write_sources(&txn, lookup, inputs)?;
        crash_point!("put::after_rows");
        if !written.changes.is_empty() {
            // Dropping the transaction without commit stores nothing.
            txn.abort().db(path)?;
            return Err(Error::InputsChanged {
                layer: layer.to_string(),
                changes: written.changes,
            });
        }
        let definition_json = canonical_json(&inputs.definition);
        let mut record = VersionRecord {
            name: layer.to_string(),
            input_digest: [0; 32],
            definition_digest: *blake3::hash(&definition_json).as_bytes(),
            definition_json,
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
        };
        record.input_digest = input_digest(&Inputs::of_record(&record));
        crash_point!("put::before_entry");
        let record = store_version(path, &txn, record)?;
        crash_point!("put::before_commit");
        txn.commit().db(path)?;
        crash_point!("put::after_commit");
        let digest = entry_digest_of(&record);
        self.memo.insert(layer.to_string(), Memo::Hit(digest));
        // Layers built on this one must be evaluated again.
        self.forget_dependents_of(layer);
        Ok(record)
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

    /// Walks every cached source of the layer into its rows inside `txn`.
    fn write_sources(
        &mut self,
        txn: &redb::WriteTransaction,
        lookup: &Lookup,
        inputs: &LayerInputs,
    ) -> Result<Written> {
        // The rows stored so far, read from the committed state, let the put's walk reuse the
        // digests of files whose stat data is unchanged; rows the lookup found damaged vouch
        // for nothing: then every file is read.
        let prior_txn = self.cache.store.begin_read()?;
        let damaged = lookup
            .reasons()
            .iter()
            .any(|r| matches!(r, MissReason::DamagedEntry { .. }));
        let mut written = Written::default();
        for src in cached_sources(inputs) {
            let seen = lookup.observed.as_ref().map(|obs| {
                obs.iter()
                    .find(|o| o.role == src.role && o.key == src.ident)
                    .map(|o| o.rows.as_slice())
                    .unwrap_or(&[])
            });
            let prior = (!damaged).then_some(&prior_txn);
            let summary = self.write_source(txn, prior, &lookup.layer, &src, seen, &mut written)?;
            match src.role {
                SourceRole::Import => written.imports.push(summary),
                SourceRole::OverlayDir => written.overlay_dirs.push(summary),
            }
        }
        Ok(written)
    }

    /// Walks one source into its rows inside `txn`, reusing digests from the rows in `prior`
    /// where the stat allows, and notes in `written` every path that differs from `seen`.
    fn write_source(
        &mut self,
        txn: &redb::WriteTransaction,
        prior: Option<&redb::ReadTransaction>,
        layer: &str,
        src: &SourceRef<'_>,
        seen: Option<&[ObservedRow]>,
        written: &mut Written,
    ) -> Result<SourceSummary> {
        let store = &self.cache.store;
        let sid = src.id().row_source();
        let mut walk = match prior {
            None => TreeWalk::new(src.path)?,
            Some(prior_txn) => {
                let prior = store.rows(prior_txn, layer, &sid)?;
                TreeWalk::with_prior(src.path, Box::new(prior))?
            }
        };
        let mut checker = seen.map(ObservationCheck::new);
        let entries = walk.by_ref().inspect(|e| {
            if let (Ok(e), Some(c)) = (e, checker.as_mut()) {
                c.push(e);
            }
        });
        let summary = store.write_tree(txn, layer, &sid, src.path, entries)?;
        self.counters.walk.add(&walk.counters());
        for p in checker.map(ObservationCheck::finish).unwrap_or_default() {
            written.changes.push(format!(
                "{} {}: {}",
                src.id().noun(),
                src.ident,
                escape_bytes(&p.under(src.path).into_os_string().into_encoded_bytes())
            ));
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
/// layer at it with a new rows generation, and records its use. Returns the version stored.
fn store_version(
    path: &Path,
    txn: &redb::WriteTransaction,
    record: VersionRecord,
) -> Result<VersionRecord> {
    let layer = record.name.clone();
    let layer = layer.as_str();
    let same = |old: &VersionRecord| {
        VersionRecord {
            created_unix_ms: record.created_unix_ms,
            ..old.clone()
        } == record
    };
    let record = match versions::version_in_write(txn, path, layer, &record.input_digest)? {
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
    Ok(record)
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

/// Merges a put's walk against what the lookup observed, collecting paths that differ.
struct ObservationCheck<'s> {
    seen: std::slice::Iter<'s, ObservedRow>,
    next: Option<&'s ObservedRow>,
    changed: Vec<RelPath>,
}

impl<'s> ObservationCheck<'s> {
    fn new(seen: &'s [ObservedRow]) -> Self {
        let mut it = seen.iter();
        let next = it.next();
        ObservationCheck {
            seen: it,
            next,
            changed: Vec::new(),
        }
    }

    fn push(&mut self, e: &WalkedEntry) {
        let h = observation_digest(e);
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
