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

    /// [`Batch::update_rows`] for updates that almost always give the item's own row (a stat
    /// refresh: the stored row with the verified row's stat data, which is the verified row
    /// whenever the two are equal in every field): for each `(source, path, row)` the item's
    /// `row` is written first, and the row it replaced decides what stays — `f(stored, &row)`
    /// when it is stored and decodes, written instead when it is not `row` itself; the stored
    /// bytes put back when `f` says `None` or they do not decode; the path removed again when
    /// nothing was stored. So the rows afterwards are exactly [`Batch::update_rows`]'s, at one
    /// B-tree descent a row instead of two (a `get`, then an `insert`) in the usual case.
    /// Returns the rows written (those `f` updated).
    pub(crate) fn update_rows_expecting<'a>(
        &self,
        layer: &str,
        items: impl IntoIterator<Item = (&'a str, RelPath, Row)>,
        mut f: impl FnMut(Row, &Row) -> Option<Row>,
    ) -> Result<u64> {
        /// What the first write replaced, and so what is left to do.
        enum Then {
            Done,
            Remove,
            Restore(Vec<u8>),
            Write(Row),
        }
        let db = self.path();
        let mut rows = self.txn().open_table(ROWS).db(db)?;
        let mut written = 0;
        for (source, path, row) in items {
            let key = path.key();
            let bytes = encode_row(db, &path, &row)?;
            let then = match rows.insert((layer, source, key), bytes.as_slice()).db(db)? {
                None => Then::Remove,
                Some(old) => {
                    let old = old.value();
                    match decode_row(db, &path, old).ok().and_then(|s| f(s, &row)) {
                        None => Then::Restore(old.to_vec()),
                        Some(new) if new == row => Then::Done,
                        Some(new) => Then::Write(new),
                    }
                }
            };
            match then {
                Then::Done => written += 1,
                Then::Remove => {
                    rows.remove((layer, source, key)).db(db)?;
                }
                Then::Restore(old) => {
                    rows.insert((layer, source, key), old.as_slice()).db(db)?;
                }
                Then::Write(new) => {
                    let bytes = encode_row(db, &path, &new)?;
                    rows.insert((layer, source, key), bytes.as_slice()).db(db)?;
                    written += 1;
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{EntryKind, RowStat};
    use crate::store::Store;

    fn row(kind: EntryKind, size: u64, digest: u8, mtime: i64) -> Row {
        Row {
            kind,
            mode: 0o644,
            uid: 1,
            gid: 1,
            size,
            rdev: 0,
            link_target: Vec::new(),
            xattrs: Vec::new(),
            digest: [digest; 32],
            stat: Some(RowStat {
                mtime_ns: mtime,
                ctime_ns: mtime,
                ino: 7,
                dev: 8,
                snapshot_ns: mtime + 10,
            }),
        }
    }

    fn stored(store: &Store, key: &str) -> Option<Vec<u8>> {
        let batch = store.batch().unwrap();
        let rows = batch.txn().open_table(ROWS).unwrap();
        rows.get(("l", "s", key.as_bytes()))
            .unwrap()
            .map(|v| v.value().to_vec())
    }

    fn refresh(stored: Row, verified: &Row) -> Option<Row> {
        let stat = verified.stat?;
        stored.compared_eq(verified).then_some(Row {
            stat: Some(stat),
            ..stored
        })
    }

    /// The one-descent refresh leaves exactly what `update_rows` (get, decide, insert) leaves,
    /// for every case: the usual one (written), a row that differs (left), a row that is gone
    /// (still gone), a row that does not decode (its bytes kept), and a row equal in what is
    /// compared but not in every field (the stored fields kept, the new stat data written).
    #[test]
    fn expecting_leaves_what_update_rows_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let mut results = Vec::new();
        for expecting in [false, true] {
            let store = Store::open(dir.path().join(format!("{expecting}.redb"))).unwrap();
            let batch = store.batch().unwrap();
            let file = row(EntryKind::File, 5, 1, 100);
            let dir_row = row(EntryKind::Dir, 4096, 0, 100);
            {
                let mut rows = batch.txn().open_table(ROWS).unwrap();
                let p = |k: &str| RelPath::from_key(k.as_bytes());
                for (k, r) in [("equal", &file), ("differs", &file), ("dir", &dir_row)] {
                    let bytes = encode_row(batch.path(), &p(k), r).unwrap();
                    rows.insert(("l", "s", k.as_bytes()), bytes.as_slice())
                        .unwrap();
                }
                rows.insert(("l", "s", b"damaged".as_slice()), [0xffu8; 3].as_slice())
                    .unwrap();
            }
            let touched = |r: &Row| Row {
                stat: Some(RowStat {
                    mtime_ns: 200,
                    ..r.stat.unwrap()
                }),
                ..r.clone()
            };
            let items = vec![
                ("s", RelPath::from_key(b"damaged"), touched(&file)),
                (
                    "s",
                    RelPath::from_key(b"differs"),
                    row(EntryKind::File, 5, 2, 200),
                ),
                (
                    "s",
                    RelPath::from_key(b"dir"),
                    Row {
                        size: 8192,
                        ..touched(&dir_row)
                    },
                ),
                ("s", RelPath::from_key(b"equal"), touched(&file)),
                ("s", RelPath::from_key(b"gone"), touched(&file)),
            ];
            let written = if expecting {
                batch.update_rows_expecting("l", items, refresh).unwrap()
            } else {
                batch
                    .update_rows("l", items, |s, v: Row| refresh(s, &v))
                    .unwrap()
            };
            batch.commit().unwrap();
            assert_eq!(written, 2, "equal and dir are refreshed");
            let keys = ["damaged", "differs", "dir", "equal", "gone"];
            let now: Vec<_> = keys.iter().map(|k| stored(&store, k)).collect();
            assert_eq!(now[0].as_deref(), Some([0xffu8; 3].as_slice()));
            assert_eq!(now[4], None);
            let dir_now = decode_row(store.path(), &RelPath::root(), now[2].as_ref().unwrap());
            let dir_now = dir_now.unwrap();
            assert_eq!((dir_now.size, dir_now.stat.unwrap().mtime_ns), (4096, 200));
            results.push(now);
        }
        assert_eq!(results[0], results[1]);
    }
}
