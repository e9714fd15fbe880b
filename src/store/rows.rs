//! The per-path rows table: the one row-key range type and the one row iterator.
//!
//! Owns: how the rows of a layer, or of one (layer, source), are bounded as a half-open key range
//! ([`RowRange`]); the guarded step of a redb range scan ([`guarded_next`]); the lazy decoding of
//! rows in key order ([`RowIter`]); deleting a range.
//!
//! Must never: know what a source is (an import or an overlay dir: that is the cache's) or
//! compare rows (that is the diff's). A row range is built here and nowhere else.

use std::path::{Path, PathBuf};

use crate::codec;
use crate::error::{DbResultExt, Error, Result};
use crate::path::{RelPath, escape_bytes};
use crate::schema::Row;

use super::guard::{guard_redb, note_damage};

/// A key of the rows table: (layer, source, path key).
pub(crate) type RowKey<'a> = (&'a str, &'a str, &'a [u8]);

/// The rows table as opened in a write transaction.
pub(crate) type RowTable<'t> = redb::Table<'t, RowKey<'static>, &'static [u8]>;

/// The half-open key range of every row of a layer, or of one (layer, source).
///
/// Neither layer names nor source names contain NUL (both are validated), so `x + "\0"` is the
/// smallest string above `x`: `[(layer, source, []), (layer, source + "\0", []))` holds exactly
/// the rows of (layer, source), and `[(layer, "", []), (layer + "\0", "", []))` exactly those of
/// the layer.
#[derive(Debug, Clone)]
pub(crate) struct RowRange<'a> {
    layer: &'a str,
    /// `None` for every source of the layer.
    source: Option<&'a str>,
    /// The name right above the last one in range: `source + "\0"` or `layer + "\0"`.
    upper: String,
}

impl<'a> RowRange<'a> {
    /// Every row of `layer`.
    pub(crate) fn layer(layer: &'a str) -> Self {
        RowRange {
            layer,
            source: None,
            upper: format!("{layer}\0"),
        }
    }

    /// The rows of (`layer`, `source`).
    pub(crate) fn source(layer: &'a str, source: &'a str) -> Self {
        RowRange {
            layer,
            source: Some(source),
            upper: format!("{source}\0"),
        }
    }

    /// The bounds to hand to redb's `range` / `retain_in`.
    pub(crate) fn bounds(&self) -> std::ops::Range<RowKey<'_>> {
        match self.source {
            Some(source) => (self.layer, source, &[][..])..(self.layer, self.upper.as_str(), &[]),
            None => (self.layer, "", &[][..])..(self.upper.as_str(), "", &[]),
        }
    }

    /// Deletes every row in this range.
    pub(crate) fn delete(&self, db_path: &Path, table: &mut RowTable<'_>) -> Result<()> {
        table.retain_in(self.bounds(), |_, _| false).db(db_path)
    }
}

/// A source name is a key component: no NUL (it would break the range bounds).
pub(crate) fn validate_source(source: &str) -> Result<()> {
    if source.contains('\0') {
        return Err(Error::InvalidName {
            what: "source name",
            value: escape_bytes(source.as_bytes()),
            why: "it contains a NUL byte",
        });
    }
    Ok(())
}

/// The raw range scan behind [`RowIter`].
type RawRows = redb::Range<'static, RowKey<'static>, &'static [u8]>;

/// One step of a redb range scan, `convert` applied to the item, with redb's errors and its
/// panics on damaged pages (in the scan or in decoding a key or value) turned into
/// [`Error::Db`] naming the file; after either, the scan ends (the range is dropped).
pub(crate) fn guarded_next<K: redb::Key + 'static, V: redb::Value + 'static, T>(
    path: &Path,
    range: &mut Option<redb::Range<'static, K, V>>,
    convert: impl FnOnce(redb::AccessGuard<'static, K>, redb::AccessGuard<'static, V>) -> Result<T>,
) -> Option<Result<T>> {
    let r = range.as_mut()?;
    let step = guard_redb(path, || match r.next() {
        None => Ok(None),
        Some(Err(e)) => Err(e).db(path),
        Some(Ok((k, v))) => convert(k, v).map(Some),
    });
    match step {
        Ok(Some(item)) => Some(Ok(item)),
        Ok(None) => {
            *range = None;
            None
        }
        Err(e) => {
            note_damage(path);
            // A damaged record (our decoding) does not end the scan; redb's failures do.
            if !matches!(e, Error::Corrupt { .. }) {
                *range = None;
            }
            Some(Err(e))
        }
    }
}

/// Stored rows of one (layer, source), in key order, decoded lazily from one range scan.
pub struct RowIter {
    path: PathBuf,
    range: Option<RawRows>,
}

impl RowIter {
    /// The rows of `range` in `txn` (none when the rows table does not exist yet).
    pub(crate) fn open(path: &Path, txn: &redb::ReadTransaction, range: &RowRange) -> Result<Self> {
        let range = match txn.open_table(crate::schema::ROWS) {
            Ok(table) => Some(table.range(range.bounds()).db(path)?),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e).db(path),
        };
        Ok(RowIter {
            path: path.to_path_buf(),
            range,
        })
    }
}

impl Iterator for RowIter {
    type Item = Result<(RelPath, Row)>;

    fn next(&mut self) -> Option<Self::Item> {
        let db = self.path.clone();
        guarded_next(&db, &mut self.range, |k, v| {
            let (_, _, key) = k.value();
            let path = RelPath::from_key(key);
            decode_row(&db, &path, v.value()).map(|row| (path, row))
        })
    }
}

/// Decodes one stored row; a row that does not decode is [`Error::Corrupt`] naming its path.
pub(crate) fn decode_row(db: &Path, path: &RelPath, bytes: &[u8]) -> Result<Row> {
    codec::decode::<Row, { codec::ROW_LIMIT }>(bytes).map_err(|detail| Error::Corrupt {
        path: db.to_path_buf(),
        table: "rows",
        key: path.to_string(),
        detail,
    })
}

/// Encodes one row for storage.
pub(crate) fn encode_row(db: &Path, path: &RelPath, row: &Row) -> Result<Vec<u8>> {
    let bytes = codec::encode(row).map_err(|detail| Error::Corrupt {
        path: db.to_path_buf(),
        table: "rows",
        key: path.to_string(),
        detail,
    })?;
    // What the reader would refuse is never written.
    if bytes.len() > codec::ROW_LIMIT {
        return Err(Error::RecordTooLarge {
            path: db.to_path_buf(),
            what: format!("the row of {path} (its extended attributes)"),
            size: bytes.len(),
            limit: codec::ROW_LIMIT,
        });
    }
    Ok(bytes)
}
