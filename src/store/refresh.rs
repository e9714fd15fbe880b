//! The row writes a lookup makes after it decided (`engine/apply.rs`): the stat refresh of
//! verified rows and the clearing of rows that lied (both a read-modify-write of stored rows in
//! place), and a version switch's rows written or removed by path (a switch's full rewrite of a
//! source and its dropping of sources the layer no longer has are `store/put.rs`'s
//! [`Batch::write_tree`] and [`Batch::remove_rows_except`], as for a put).
//!
//! Owns: those typed [`Batch`] methods, on top of the rows table's one row codec ([`decode_row`], [`encode_row`]).
//!
//! Must never: decide which rows to write or what a row must still be to be written (the
//! caller's `f` decides, from what its lookup verified), or hand a table out.

use redb::ReadableTable;

use crate::error::Result;
use crate::path::RelPath;
use crate::schema::Row;
use crate::store::DbResultExt;
use crate::store::tables::ROWS;

use super::Batch;
use super::rows::{decode_row, encode_row, validate_source};

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
}
