//! The row writes a lookup makes after it decided (`engine/apply.rs`): the stat refresh of
//! verified rows and the clearing of rows that lied (both a read-modify-write of stored rows in
//! place), and a version switch (rows written or removed by path, a source's rows replaced by a
//! walk, the rows of sources no longer in the layer dropped).
//!
//! Owns: those typed [`Batch`] methods, on top of the rows table's one key range
//! ([`RowRange`]) and its one row codec ([`decode_row`], [`encode_row`]).
//!
//! Must never: decide which rows to write or what a row must still be to be written (the
//! caller's `f` decides, from what its lookup verified), or hand a table out.

use std::path::Path;

use redb::ReadableTable;

use crate::error::{DbResultExt, Error, Result};
use crate::path::RelPath;
use crate::schema::{ROWS, Row};
use crate::tree::{TreeHasher, WalkedEntry};

use super::rows::{RowRange, decode_row, encode_row, validate_source};
use super::{Batch, TreeSummary, versions};

impl Batch {
    /// Rewrites stored rows of `layer` in place: for each `(source, path, item)` whose row is
    /// stored and decodes, `f(row, item)` says what to write instead (`None`: leave it). A row
    /// that is gone or does not decode is left alone. Returns the rows written.
    pub(crate) fn update_rows<'a, T>(
        &self,
        layer: &str,
        items: impl IntoIterator<Item = (&'a str, RelPath, T)>,
        mut f: impl FnMut(Row, T) -> Option<Row>,
    ) -> Result<u64> {
        let db = self.path();
        let mut rows = self.txn().open_table(ROWS).db(db)?;
        let mut written = 0;
        for (source, path, item) in items {
            let key = path.key();
            let stored = rows
                .get((layer, source, key))
                .db(db)?
                .and_then(|v| decode_row(db, &path, v.value()).ok());
            let Some(new) = stored.and_then(|row| f(row, item)) else {
                continue;
            };
            let bytes = encode_row(db, &path, &new)?;
            rows.insert((layer, source, key), bytes.as_slice()).db(db)?;
            written += 1;
        }
        Ok(written)
    }

    /// Removes the rows of (`layer`, `source`) at `removed`, then writes `upserts` (path key,
    /// row). Returns the rows removed and written.
    pub(crate) fn write_rows(
        &self,
        layer: &str,
        source: &str,
        removed: &[RelPath],
        upserts: &[(Box<[u8]>, Row)],
    ) -> Result<u64> {
        validate_source(source)?;
        let db = self.path();
        let mut rows = self.txn().open_table(ROWS).db(db)?;
        for p in removed {
            rows.remove((layer, source, p.key())).db(db)?;
        }
        for (k, row) in upserts {
            let bytes = encode_row(db, &RelPath::from_key(k), row)?;
            rows.insert((layer, source, &k[..]), bytes.as_slice())
                .db(db)?;
        }
        Ok((removed.len() + upserts.len()) as u64)
    }

    /// Replaces the rows of (`layer`, `source`) with the entries of a walk of `root`, and
    /// returns the tree's summary. An entry that changed while it was hashed fails with
    /// [`Error::ChangedWhileReading`] (drop the batch: it then stores nothing).
    pub(crate) fn replace_rows(
        &self,
        layer: &str,
        source: &str,
        root: &Path,
        entries: impl IntoIterator<Item = Result<WalkedEntry>>,
    ) -> Result<TreeSummary> {
        validate_source(source)?;
        let db = self.path();
        let mut table = self.txn().open_table(ROWS).db(db)?;
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

    /// The distinct source names of `layer`'s rows (one range probe per source, not a scan).
    pub(crate) fn row_sources(&self, layer: &str) -> Result<Vec<String>> {
        versions::row_sources(self.txn(), self.path(), layer)
    }

    /// Removes every row of (`layer`, `source`).
    pub(crate) fn remove_source_rows(&self, layer: &str, source: &str) -> Result<()> {
        let db = self.path();
        let mut rows = self.txn().open_table(ROWS).db(db)?;
        RowRange::source(layer, source).delete(db, &mut rows)
    }
}
