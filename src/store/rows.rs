//! The per-path rows table: the one row-key range type and the one row iterator.
//!
//! Owns: how the rows of the table, of a layer, or of one (layer, source), are bounded as a key
//! range ([`RowRange`]); the guarded step of a redb range scan ([`guarded_next`]); the lazy
//! decoding of rows in key order ([`RowIter`], [`ScannedRow`]), the one place a row value is
//! decoded; deleting a range.
//!
//! Must never: know what a source is (an import or an overlay dir: that is the cache's) or
//! compare rows (that is the diff's). A row range is built here and nowhere else.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use super::codec;
use crate::error::{Error, Result};
use crate::path::{RelPath, escape_bytes};
use crate::schema::Row;
use crate::store::DbResultExt;

use super::guard::{guarded, note_damage};

/// A key of the rows table: (layer, source, path key).
pub(crate) type RowKey<'a> = (&'a str, &'a str, &'a [u8]);

/// The rows table as opened in a write transaction.
pub(crate) type RowTable<'t> = redb::Table<'t, RowKey<'static>, &'static [u8]>;

/// The half-open key range of every row of a layer, or of one (layer, source), or of the
/// whole table.
///
/// Neither layer names nor source names contain NUL (both are validated), so `x + "\0"` is the
/// smallest string above `x`: `[(layer, source, []), (layer, source + "\0", []))` holds exactly
/// the rows of (layer, source), and `[(layer, "", []), (layer + "\0", "", []))` exactly those of
/// the layer.
#[derive(Debug, Clone)]
pub(crate) struct RowRange<'a> {
    scope: Scope<'a>,
    /// The name right above the last one in range: `source + "\0"` or `layer + "\0"` (empty
    /// for the whole table).
    upper: String,
}

#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    Table,
    Layer(&'a str),
    Source(&'a str, &'a str),
}

impl<'a> RowRange<'a> {
    /// Every row of the table, in key order (layer by layer, source by source).
    pub(crate) fn table() -> Self {
        RowRange {
            scope: Scope::Table,
            upper: String::new(),
        }
    }

    /// Every row of `layer`.
    pub(crate) fn layer(layer: &'a str) -> Self {
        RowRange {
            scope: Scope::Layer(layer),
            upper: format!("{layer}\0"),
        }
    }

    /// The rows of (`layer`, `source`).
    pub(crate) fn source(layer: &'a str, source: &'a str) -> Self {
        RowRange {
            scope: Scope::Source(layer, source),
            upper: format!("{source}\0"),
        }
    }

    /// The bounds to hand to redb's `range` / `retain_in`.
    pub(crate) fn bounds(&self) -> (Bound<RowKey<'_>>, Bound<RowKey<'_>>) {
        let upper = self.upper.as_str();
        match self.scope {
            Scope::Table => (Bound::Unbounded, Bound::Unbounded),
            Scope::Layer(layer) => (
                Bound::Included((layer, "", &[])),
                Bound::Excluded((upper, "", &[])),
            ),
            Scope::Source(layer, source) => (
                Bound::Included((layer, source, &[])),
                Bound::Excluded((layer, upper, &[])),
            ),
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
    let step = guarded(path, || match r.next() {
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

/// Stored rows of a key range (the table, a layer, or one source of it), in key order,
/// decoded lazily from one range scan.
pub struct RowIter {
    path: PathBuf,
    range: Option<RawRows>,
}

/// One stored row as the scan meets it: its key, and its value decoded.
pub(crate) struct ScannedRow<'k> {
    /// The database file scanned.
    db: &'k Path,
    /// The layer of the row.
    pub(crate) layer: &'k str,
    /// Its source name (`import:KEY`, `overlay:KEY`).
    pub(crate) source: &'k str,
    /// Its path within the source.
    pub(crate) path: RelPath,
    /// The row, or why its value does not decode.
    pub(crate) row: std::result::Result<Row, String>,
}

impl ScannedRow<'_> {
    /// The path and row, or [`Error::Corrupt`] naming the database file and the row's key.
    pub(crate) fn decoded(self) -> Result<(RelPath, Row)> {
        match self.row {
            Ok(row) => Ok((self.path, row)),
            Err(detail) => {
                let key = format!(
                    "{} {} {}",
                    escape_bytes(self.layer.as_bytes()),
                    escape_bytes(self.source.as_bytes()),
                    self.path
                );
                Err(corrupt_row(self.db, key, detail))
            }
        }
    }
}

impl RowIter {
    /// The rows of `range` in `txn` (none when the rows table does not exist yet).
    pub(crate) fn open(path: &Path, txn: &redb::ReadTransaction, range: &RowRange) -> Result<Self> {
        let range = match txn.open_table(super::tables::ROWS) {
            Ok(table) => Some(table.range(range.bounds()).db(path)?),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e).db(path),
        };
        Ok(RowIter {
            path: path.to_path_buf(),
            range,
        })
    }

    /// The next row, handed to `f` with its key; `f`'s [`Error::Corrupt`] (a row that does not
    /// decode) is an item and the scan goes on, any other error ends it (see [`guarded_next`]).
    pub(crate) fn next_with<T>(
        &mut self,
        f: impl FnOnce(ScannedRow<'_>) -> Result<T>,
    ) -> Option<Result<T>> {
        let db = self.path.as_path();
        guarded_next(db, &mut self.range, |k, v| {
            let (layer, source, key) = k.value();
            f(ScannedRow {
                db,
                layer,
                source,
                path: RelPath::from_key(key),
                row: decode(v.value()),
            })
        })
    }
}

impl Iterator for RowIter {
    type Item = Result<(RelPath, Row)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_with(|r| r.decoded())
    }
}

/// Decodes one stored row value: the one place the rows table's values are decoded.
fn decode(bytes: &[u8]) -> std::result::Result<Row, String> {
    codec::decode_row(bytes)
}

/// Decodes one stored row; a row that does not decode is [`Error::Corrupt`] naming its path.
pub(crate) fn decode_row(db: &Path, path: &RelPath, bytes: &[u8]) -> Result<Row> {
    decode(bytes).map_err(|detail| corrupt_row(db, path.to_string(), detail))
}

/// Encodes one row for storage.
pub(crate) fn encode_row(db: &Path, path: &RelPath, row: &Row) -> Result<Vec<u8>> {
    let bytes = codec::encode(row).map_err(|detail| corrupt_row(db, path.to_string(), detail))?;
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

/// The error of a row of `db` that does not encode or decode; `key` names the row.
fn corrupt_row(db: &Path, key: String, detail: String) -> Error {
    Error::Corrupt {
        path: db.to_path_buf(),
        table: "rows",
        key,
        detail,
    }
}
