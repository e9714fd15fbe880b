//! The read-only snapshot: [`Inspector`] lists entries, shows one in full, streams a layer's
//! rows and counts storage use, all from one read snapshot taken at open.
//!
//! Owns the snapshot and the one door to it, `Inspector::read`, which applies the library's
//! panic guard (`store::guarded`) to every read. Everything is read through the store's typed
//! snapshot methods; rows are streamed with the store's row iterator ([`RowIter`]). It must
//! never write, never open the file for writing, never decode a stored value itself, never
//! name a table or the storage engine, and never hold a whole source's rows in memory.

use std::path::Path;

use super::{
    BaseView, EntryDetail, EntryLine, ListedEntry, Listing, ListingTotals, ManifestView, RowLine,
    RowSelection, SourceView, Stats, TableUsage, VersionLine, format_utc_ms,
};
use crate::error::{Error, Result};
use crate::path::{escape_bytes, hex, show_path};
use crate::schema::VersionRecord;
use crate::store::rows::RowIter;
use crate::store::{Snapshot, Store, guarded};

/// A read-only view of a cache file: one read snapshot, held for the life of the value.
pub struct Inspector {
    pub(super) snap: Snapshot,
    store: Store,
}

impl Inspector {
    /// Opens `path` read-only (see the module doc: works while a builder writes to it).
    pub fn open(path: impl AsRef<Path>) -> Result<Inspector> {
        Inspector::new(Store::open_read_only(path)?)
    }

    /// Wraps an open store, taking the read snapshot now.
    fn new(store: Store) -> Result<Inspector> {
        let snap = store.snapshot()?;
        Ok(Inspector { snap, store })
    }

    pub(super) fn path(&self) -> &Path {
        self.store.path()
    }

    /// Runs `f` on the snapshot under the library's one panic guard (`store::guarded`): the
    /// database's read path trusts page contents, so a damaged page can make it panic instead
    /// of returning an error, and a person inspecting a damaged file must get a report or an
    /// error naming the file, never a crash. Every read of the snapshot goes through here.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Snapshot, &Path) -> Result<T>) -> Result<T> {
        let path = self.path();
        guarded(path, || f(&self.snap, path))
    }

    /// Every entry, sorted by name, with totals. A damaged record is listed as such rather
    /// than failing the listing.
    pub fn list(&self) -> Result<Listing> {
        self.read(|snap, path| {
            let mut entries = Vec::new();
            let mut totals = ListingTotals::default();
            let mut layers: Vec<String> =
                snap.version_keys()?.into_iter().map(|(l, _)| l).collect();
            layers.extend(snap.pointer_names()?);
            layers.sort();
            layers.dedup();
            for name in layers {
                totals.entries += 1;
                let listed = self.versions_of(&name)?;
                totals.versions += listed.len() as u64;
                match self.record(&name) {
                    Err(e) => {
                        totals.damaged += 1;
                        entries.push(ListedEntry::Damaged {
                            name,
                            damaged: e.to_string(),
                        });
                    }
                    Ok(None) => {
                        // Versions without a current one (its pointer was pruned or collected).
                        entries.push(ListedEntry::Damaged {
                            name,
                            damaged: "no current version (its rows describe nothing stored)".into(),
                        });
                    }
                    Ok(Some(rec)) => {
                        let rows = rec
                            .imports
                            .iter()
                            .chain(&rec.overlay_dirs)
                            .map(|s| s.rows)
                            .fold(0u64, u64::saturating_add);
                        totals.imports += rec.imports.len() as u64;
                        totals.overlay_dirs += rec.overlay_dirs.len() as u64;
                        totals.rows = totals.rows.saturating_add(rows);
                        entries.push(ListedEntry::Entry(EntryLine {
                            name,
                            output_types: rec
                                .manifests
                                .iter()
                                .map(|m| m.layer_type.clone())
                                .collect(),
                            base: BaseView::of(&rec.base),
                            imports: rec.imports.len(),
                            overlay_dirs: rec.overlay_dirs.len(),
                            rows,
                            build_only: rec.build_only,
                            created_unix_ms: rec.created_unix_ms,
                            created: format_utc_ms(rec.created_unix_ms),
                            versions: listed,
                        }));
                    }
                }
            }
            Ok(Listing {
                db: show_path(path),
                entries,
                totals,
            })
        })
    }

    /// Every stored version of `layer`, most recently used first.
    pub fn versions_of(&self, layer: &str) -> Result<Vec<VersionLine>> {
        self.read(|snap, _| {
            let current = match snap.pointer(layer)? {
                Some(Ok(p)) => Some(p.current),
                _ => None,
            };
            let mut out = Vec::new();
            for (digest, rec) in snap.versions_of(layer)? {
                let used = snap.last_used(layer, &digest)?;
                let line = match rec {
                    Ok(rec) => {
                        let last = used.unwrap_or(rec.created_unix_ms);
                        VersionLine {
                            input_digest: hex(&digest),
                            current: current == Some(digest),
                            definition_digest: hex(&rec.definition_digest),
                            base: BaseView::of(&rec.base),
                            output_types: rec
                                .manifests
                                .iter()
                                .map(|m| m.layer_type.clone())
                                .collect(),
                            output_bytes: rec.blobs().iter().map(|(_, n)| n).sum(),
                            created_unix_ms: rec.created_unix_ms,
                            created: format_utc_ms(rec.created_unix_ms),
                            last_used_unix_ms: last,
                            last_used: format_utc_ms(last),
                            damaged: None,
                        }
                    }
                    Err(e) => VersionLine {
                        input_digest: hex(&digest),
                        current: current == Some(digest),
                        definition_digest: String::new(),
                        base: BaseView::of(&crate::schema::BaseRecord {
                            kind: crate::schema::BaseKind::Scratch,
                            reference: String::new(),
                            hash: Vec::new(),
                        }),
                        output_types: Vec::new(),
                        output_bytes: 0,
                        created_unix_ms: 0,
                        created: String::new(),
                        last_used_unix_ms: used.unwrap_or(0),
                        last_used: used.map(format_utc_ms).unwrap_or_default(),
                        damaged: Some(e.to_string()),
                    },
                };
                out.push(line);
            }
            out.sort_by_key(|v| std::cmp::Reverse((v.current, v.last_used_unix_ms)));
            Ok(out)
        })
    }

    /// The current version of `layer`, if it has one.
    pub fn record(&self, layer: &str) -> Result<Option<VersionRecord>> {
        self.read(|snap, _| {
            let Some(pointer) = snap.pointer(layer)? else {
                return Ok(None);
            };
            let pointer = pointer?;
            snap.version(layer, &pointer.current)?.transpose()
        })
    }

    /// One entry in full, if `layer` has an entry.
    pub fn entry(&self, layer: &str) -> Result<Option<EntryDetail>> {
        let listed = self.versions_of(layer)?;
        Ok(self.record(layer)?.map(|rec| EntryDetail {
            name: rec.name.clone(),
            input_digest: hex(&rec.input_digest),
            versions: listed,
            definition: json_or_escaped(&rec.definition_json),
            definition_digest: hex(&rec.definition_digest),
            base: BaseView::of(&rec.base),
            source_date_epoch: rec.source_date_epoch,
            build_only: rec.build_only,
            origin: rec.origin.as_str(),
            created_unix_ms: rec.created_unix_ms,
            created: format_utc_ms(rec.created_unix_ms),
            manifests: rec
                .manifests
                .iter()
                .map(|m| ManifestView {
                    layer_type: m.layer_type.clone(),
                    descriptor: json_or_escaped(&m.descriptor_json),
                })
                .collect(),
            imports: rec.imports.iter().map(SourceView::of).collect(),
            overlay_dirs: rec.overlay_dirs.iter().map(SourceView::of).collect(),
        }))
    }

    /// Resolves what a person typed after `--files` to a row source id of `record`: a source id
    /// as stored (`import:<key>`, `overlay:<key>`), or a bare import or overlay dir key.
    pub fn resolve_source(record: &VersionRecord, given: &str) -> Result<String> {
        let all = || record.imports.iter().chain(&record.overlay_dirs);
        if let Some(s) = all().find(|s| s.source == given) {
            return Ok(s.source.clone());
        }
        let mut by_key = all().filter(|s| s.key == given);
        match (by_key.next(), by_key.next()) {
            (Some(s), None) => Ok(s.source.clone()),
            (Some(_), Some(_)) => Err(Error::InvalidName {
                what: "source",
                value: escape_bytes(given.as_bytes()),
                why: "both an import and an overlay dir of this layer have that key; write \
                      import:KEY or overlay:KEY",
            }),
            (None, _) => Err(Error::InvalidName {
                what: "source",
                value: escape_bytes(given.as_bytes()),
                why: "the layer has no import or overlay dir with that key; dumping the \
                      layer lists its sources",
            }),
        }
    }

    /// Streams the stored rows of `layer` in key order (source by source, each in walk order),
    /// decoding one at a time. A row that does not decode is an `Err` item; iteration goes on.
    pub fn rows(&self, layer: &str, which: &RowSelection) -> Result<LayerRows> {
        let scan = self.read(|snap, _| match which {
            RowSelection::All => snap.layer_rows(layer),
            RowSelection::Source(source) => snap.rows(layer, source),
        })?;
        Ok(LayerRows { scan })
    }

    /// Counts and storage use, read-only: exact for the tables, an upper bound for what
    /// `compact` could reclaim (the database reports free pages only to a writer; see
    /// [`stats_exact`](super::stats_exact)).
    pub fn stats(&self) -> Result<Stats> {
        self.read(|snap, path| {
            let file_bytes = std::fs::metadata(path)
                .map_err(|e| Error::io("cannot stat", path, e))?
                .len();
            let tables: Vec<TableUsage> = snap
                .table_stats()?
                .into_iter()
                .map(|t| TableUsage {
                    name: t.name,
                    len: t.len,
                    stored_bytes: t.stored_bytes,
                    metadata_bytes: t.metadata_bytes,
                    fragmented_bytes: t.fragmented_bytes,
                    pages: t.pages,
                })
                .collect();
            let len_of = |n: &str| tables.iter().find(|t| t.name == n).map_or(0, |t| t.len);
            let table_bytes: u64 = tables
                .iter()
                .map(|t| t.stored_bytes + t.metadata_bytes + t.fragmented_bytes)
                .sum();
            let table_fragmented_bytes = tables.iter().map(|t| t.fragmented_bytes).sum();
            Ok(Stats {
                db: show_path(path),
                file_bytes,
                schema_version: self.store.schema_version()?,
                entries: len_of("layers"),
                rows: len_of("rows"),
                versions: len_of("versions"),
                bytes_per_version: tables
                    .iter()
                    .find(|t| t.name == "versions")
                    .map_or(0, |t| t.stored_bytes.checked_div(t.len).unwrap_or(0)),
                table_bytes,
                table_fragmented_bytes,
                outside_tables_bytes: file_bytes.saturating_sub(table_bytes),
                tables,
                exact: None,
            })
        })
    }
}

/// Streamed rows of one layer (see [`Inspector::rows`]).
pub struct LayerRows {
    scan: RowIter,
}

impl Iterator for LayerRows {
    type Item = Result<RowLine>;

    fn next(&mut self) -> Option<Self::Item> {
        self.scan.next_with(|r| {
            let source = r.source.to_string();
            r.decoded().map(|(path, row)| RowLine { source, path, row })
        })
    }
}

fn json_or_escaped(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| serde_json::Value::String(escape_bytes(bytes)))
}
