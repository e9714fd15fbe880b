//! What a put and the engine's version bookkeeping write: a walked tree as the rows of one
//! (layer, source), writing only the rows that differ from the stored ones; the rows of the
//! sources a layer no longer has; dropping one version (with its pointer and rows when it is
//! the current one); and the panic guard the engine's entry points run under.
//!
//! Owns: the merge of a walk against the stored rows of (layer, source) ([`Batch::write_tree`]),
//! the raw stored rows it merges with ([`StoredRows`], read from a [`Snapshot`]), and what it
//! counts ([`RowWrites`]).
//!
//! Must never: decide whether a walk may be stored (that is the engine's put) or whether a
//! stored row still stands for a walked entry (the caller's rule, handed in: the stat rules are
//! [`crate::tree::fastpath`]'s), keep a stored row that does not decode, or read and write the
//! same open table at once (the stored rows come from a snapshot, see [`Batch::write_tree`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::schema::Row;
use crate::tree::{TreeHasher, WalkedEntry};

use redb::ReadableTable;

use super::DbResultExt;
use super::guard::guarded;
use super::rows::{
    RowKey, RowRange, RowTable, decode_row, encode_row, guarded_next, validate_source,
};
use super::tables::{LAYERS, ROWS};
use super::{Batch, Snapshot, Store, TreeSummary, versions};

/// What writing a tree did to the rows table: rows inserted (new paths), replaced (a path whose
/// row differs), removed (paths gone) and left as they were. A put of a tree with 1% of its
/// files changed writes about 1% of its rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RowWrites {
    /// Rows of paths that had none.
    pub(crate) inserted: u64,
    /// Rows replaced because the stored one does not stand for the walked entry.
    pub(crate) replaced: u64,
    /// Stored rows of paths the walk did not see.
    pub(crate) removed: u64,
    /// Stored rows that stand for the walked entry: not written.
    pub(crate) unchanged: u64,
}

/// The raw range scan behind [`StoredRows`].
type RawRange = redb::Range<'static, RowKey<'static>, &'static [u8]>;

/// The stored rows of one (layer, source) as they are in the file, in key order: each path key
/// with its encoded row, neither decoded. Read from a [`Snapshot`] ([`Snapshot::stored_rows`]).
pub(crate) struct StoredRows {
    path: PathBuf,
    range: Option<RawRange>,
}

impl Iterator for StoredRows {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        guarded_next(&self.path, &mut self.range, |k, v| {
            Ok((k.value().2.to_vec(), v.value().to_vec()))
        })
    }
}

/// Replaces the rows of (layer, source) with the entries of a walk, inside a raw `txn`: a full
/// rewrite, every row written (the tests' and benches' `RawTransactions::write_tree`; the
/// library writes through [`Batch::write_tree`]).
pub(super) fn write_tree_raw(
    txn: &redb::WriteTransaction,
    db: &Path,
    (layer, source): (&str, &str),
    root: &Path,
    entries: impl IntoIterator<Item = Result<WalkedEntry>>,
) -> Result<TreeSummary> {
    let rows = Rows {
        txn,
        db,
        layer,
        source,
    };
    Ok(rows.write(root, entries, None, &|_, _| false)?.0)
}

impl Store {
    /// Runs `f` with a panic inside redb (a damaged page) turned into [`Error::Db`] naming this
    /// file, and the damage recorded (see `store/guard.rs`).
    pub(crate) fn guarded<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        guarded(self.path(), f)
    }
}

impl Snapshot {
    /// The stored rows of (layer, source), raw, in key order (none when the rows table does
    /// not exist yet).
    pub(crate) fn stored_rows(&self, layer: &str, source: &str) -> Result<StoredRows> {
        let path = self.path().to_path_buf();
        let range = match self.txn().open_table(ROWS) {
            Ok(table) => Some(
                table
                    .range(RowRange::source(layer, source).bounds())
                    .db(&path)?,
            ),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e).db(&path),
        };
        Ok(StoredRows { path, range })
    }
}

impl Snapshot {
    /// Every version's key (layer, input digest), in key order.
    pub(crate) fn version_keys(&self) -> Result<Vec<versions::VersionKey>> {
        versions::all_keys(self.txn(), self.path())
    }

    /// What GC needs of every version, and the keys of damaged versions.
    pub(crate) fn uses(&self) -> Result<(Vec<crate::gc::VersionUse>, Vec<versions::VersionKey>)> {
        versions::uses(self.txn(), self.path())
    }
}

impl Batch {
    /// Writes the entries of a walk as the rows of (layer, source) and returns the tree's
    /// summary and what was written. An entry that changed while it was hashed aborts with
    /// [`Error::ChangedWhileReading`] (the batch is then dropped, storing nothing).
    ///
    /// `stored` are the rows of (layer, source) this batch began from, read from a [`Snapshot`]
    /// taken while this batch is open: the batch holds the write lock (redb lets one write
    /// transaction at a time, across processes), so no commit comes between the state this
    /// batch began from and that snapshot. The walk and the stored rows are both in key order
    /// and are merged: a stored row is left alone when its bytes are the walked row's or when
    /// `stands(stored, entry)` says it stands for the walked entry (equal in what is compared,
    /// stat data that vouches for it as well as the new would); any other walked row is written,
    /// and a stored path the walk did not see is removed. `None` (the stored rows vouch for
    /// nothing: damaged) removes every row of (layer, source) first and writes every entry.
    /// Either way the rows afterwards are the walk's, up to the stat data `stands` accepts.
    pub(crate) fn write_tree(
        &self,
        layer: &str,
        source: &str,
        root: &Path,
        entries: impl IntoIterator<Item = Result<WalkedEntry>>,
        stored: Option<StoredRows>,
        stands: &dyn Fn(&Row, &WalkedEntry) -> bool,
    ) -> Result<(TreeSummary, RowWrites)> {
        let rows = Rows {
            txn: self.txn(),
            db: self.path(),
            layer,
            source,
        };
        rows.write(root, entries, stored, stands)
    }

    /// Removes the rows of every source of `layer` not in `keep` (a put's layer no longer has
    /// them); one range probe per stored source, not a scan.
    pub(crate) fn remove_rows_except(&self, layer: &str, keep: &BTreeSet<String>) -> Result<()> {
        let db = self.path();
        let sources = versions::row_sources(self.txn(), db, layer)?;
        let mut table = self.txn().open_table(ROWS).db(db)?;
        for s in sources.iter().filter(|s| !keep.contains(*s)) {
            RowRange::source(layer, s).delete(db, &mut table)?;
        }
        Ok(())
    }

    /// Removes one version; when it is the layer's current one, the layer's pointer and rows go
    /// too (they described it), so the next lookup walks afresh and may still hit another
    /// version.
    pub(crate) fn drop_version(&self, layer: &str, digest: &[u8; 32]) -> Result<()> {
        let db = self.path();
        let current = matches!(self.pointer(layer)?, Some(Ok(p)) if p.current == *digest);
        self.remove_version(layer, digest)?;
        if current {
            self.txn().open_table(LAYERS).db(db)?.remove(layer).db(db)?;
            RowRange::layer(layer).delete(db, &mut self.txn().open_table(ROWS).db(db)?)?;
        }
        Ok(())
    }
}

/// The rows of one (layer, source) in a write transaction of the file `db`.
struct Rows<'a> {
    txn: &'a redb::WriteTransaction,
    db: &'a Path,
    layer: &'a str,
    source: &'a str,
}

impl Rows<'_> {
    /// [`Batch::write_tree`].
    fn write(
        &self,
        root: &Path,
        entries: impl IntoIterator<Item = Result<WalkedEntry>>,
        stored: Option<StoredRows>,
        stands: &dyn Fn(&Row, &WalkedEntry) -> bool,
    ) -> Result<(TreeSummary, RowWrites)> {
        let (db, layer, source) = (self.db, self.layer, self.source);
        validate_source(source)?;
        let mut table = self.txn.open_table(ROWS).db(db)?;
        if stored.is_none() {
            RowRange::source(layer, source).delete(db, &mut table)?;
        }
        let mut merge = Merge::new(self, stored)?;
        let mut hasher = TreeHasher::new();
        let mut root_kind = None;
        let mut entries = entries.into_iter().map(|entry| {
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
            Ok(entry)
        });
        let writes = if merge.next.is_none() && self.is_empty(&table)? {
            // Nothing stored to merge with (a cold put, or rows removed first): every row is
            // new, and they come in key order, so they go in through one cursor that appends
            // them a leaf at a time (~4x fewer cycles than a `Table::insert` per row).
            self.append(&mut table, &mut entries)?
        } else {
            for entry in entries.by_ref() {
                merge.put(&mut table, &entry?, stands)?;
            }
            merge.finish(&mut table)?
        };
        drop(entries);
        let (root_digest, rows) = hasher.finish();
        let summary = TreeSummary {
            root_digest,
            rows,
            root_kind,
        };
        Ok((summary, writes))
    }
}

impl Rows<'_> {
    /// True when `table` holds no row of (layer, source) in this transaction.
    fn is_empty(&self, table: &RowTable<'_>) -> Result<bool> {
        let range = RowRange::source(self.layer, self.source);
        let mut rows = table.range(range.bounds()).db(self.db)?;
        Ok(rows.next().is_none())
    }

    /// Writes `entries` (in key order) as the rows of (layer, source), which has none: one
    /// cursor at the gap where they go, each row inserted before it. A key out of order, or one
    /// already stored, is refused by the cursor (an error, nothing silently overwritten).
    fn append(
        &self,
        table: &mut RowTable<'_>,
        entries: impl Iterator<Item = Result<WalkedEntry>>,
    ) -> Result<RowWrites> {
        let (db, layer, source) = (self.db, self.layer, self.source);
        let start: RowKey<'_> = (layer, source, &[]);
        let mut cursor = table
            .lower_bound_mut(std::ops::Bound::Included(start))
            .db(db)?;
        let mut writes = RowWrites::default();
        for entry in entries {
            let e = entry?;
            let bytes = encode_row(db, &e.path, &e.row)?;
            cursor
                .insert_before((layer, source, e.path.key()), bytes.as_slice())
                .db(db)?;
            writes.inserted += 1;
        }
        cursor.close().db(db)?;
        Ok(writes)
    }
}

/// [`Batch::write_tree`]'s merge of the walk against the stored rows of one (layer, source):
/// the next stored row not yet met, and what was written so far.
struct Merge<'a> {
    rows: &'a Rows<'a>,
    stored: Option<StoredRows>,
    next: Option<(Vec<u8>, Vec<u8>)>,
    writes: RowWrites,
}

impl<'a> Merge<'a> {
    fn new(rows: &'a Rows<'a>, stored: Option<StoredRows>) -> Result<Self> {
        let mut m = Merge {
            rows,
            stored,
            next: None,
            writes: RowWrites::default(),
        };
        m.advance()?;
        Ok(m)
    }

    fn advance(&mut self) -> Result<()> {
        self.next = match self.stored.as_mut() {
            Some(s) => s.next().transpose()?,
            None => None,
        };
        Ok(())
    }

    /// Removes the stored row of `key`.
    fn remove(&mut self, table: &mut RowTable<'_>, key: &[u8]) -> Result<()> {
        let r = self.rows;
        table.remove((r.layer, r.source, key)).db(r.db)?;
        self.writes.removed += 1;
        Ok(())
    }

    /// The walk saw `e`: stored paths before it were not walked (removed); the stored row of
    /// its path is left alone when it is the same bytes or `stands` for `e`, else replaced.
    fn put(
        &mut self,
        table: &mut RowTable<'_>,
        e: &WalkedEntry,
        stands: &dyn Fn(&Row, &WalkedEntry) -> bool,
    ) -> Result<()> {
        let r = self.rows;
        let key = e.path.key();
        while let Some((k, _)) = self.next.take_if(|(k, _)| k.as_slice() < key) {
            self.remove(table, &k)?;
            self.advance()?;
        }
        let bytes = encode_row(r.db, &e.path, &e.row)?;
        let stored = self.next.take_if(|(k, _)| k.as_slice() == key);
        let kept = stored.as_ref().is_some_and(|(_, v)| {
            *v == bytes || decode_row(r.db, &e.path, v).is_ok_and(|old| stands(&old, e))
        });
        if kept {
            self.writes.unchanged += 1;
        } else {
            table
                .insert((r.layer, r.source, key), bytes.as_slice())
                .db(r.db)?;
            if stored.is_some() {
                self.writes.replaced += 1;
            } else {
                self.writes.inserted += 1;
            }
        }
        if stored.is_some() {
            self.advance()?;
        }
        Ok(())
    }

    /// Removes the stored rows after the last walked path; what was written in all.
    fn finish(mut self, table: &mut RowTable<'_>) -> Result<RowWrites> {
        while let Some((k, _)) = self.next.take() {
            self.remove(table, &k)?;
            self.advance()?;
        }
        Ok(self.writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::RelPath;
    use crate::schema::EntryKind;
    use crate::tree::StatData;

    fn entry(path: &str) -> Result<WalkedEntry> {
        Ok(WalkedEntry {
            path: RelPath::from_key(path.as_bytes()),
            row: Row {
                kind: EntryKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                rdev: 0,
                link_target: Vec::new(),
                xattrs: Vec::new(),
                digest: [0; 32],
                stat: None,
            },
            stat: StatData::default(),
            unstable: false,
        })
    }

    /// Rows written into an empty (layer, source) go in through the appending cursor: all of
    /// them, readable in order, the rows of the source beside them untouched; walked paths out
    /// of key order are refused (an error, never a row silently dropped or overwritten).
    #[test]
    fn rows_appended_to_an_empty_source_are_all_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("c.redb")).unwrap();
        let root = dir.path();
        let batch = store.batch().unwrap();
        let never = |_: &Row, _: &WalkedEntry| false;
        for source in ["a", "c"] {
            let (_, w) = batch
                .write_tree("l", source, root, [entry(""), entry("x")], None, &never)
                .unwrap();
            assert_eq!(w.inserted, 2);
        }
        let paths = ["", "a", "a/b", "b"];
        let (summary, w) = batch
            .write_tree("l", "b", root, paths.map(entry), None, &never)
            .unwrap();
        assert_eq!((summary.rows, w.inserted), (4, 4));
        let out_of_order = batch.write_tree("l", "d", root, [entry("b"), entry("a")], None, &never);
        assert!(out_of_order.is_err());
        drop(batch);

        let batch = store.batch().unwrap();
        for source in ["a", "c"] {
            batch
                .write_tree("l", source, root, [entry(""), entry("x")], None, &never)
                .unwrap();
        }
        batch
            .write_tree("l", "b", root, paths.map(entry), None, &never)
            .unwrap();
        batch.commit().unwrap();
        let snap = store.snapshot().unwrap();
        let got: Vec<_> = snap
            .rows("l", "b")
            .unwrap()
            .map(|r| r.unwrap().0.key().to_vec())
            .collect();
        let want: Vec<_> = paths.iter().map(|p| p.as_bytes().to_vec()).collect();
        assert_eq!(got, want);
        for source in ["a", "c"] {
            assert_eq!(snap.rows("l", source).unwrap().count(), 2);
        }
        // A second write of the same source merges with what is stored.
        let batch = store.batch().unwrap();
        let stored = snap.stored_rows("l", "b").unwrap();
        let (_, w) = batch
            .write_tree("l", "b", root, paths.map(entry), Some(stored), &never)
            .unwrap();
        assert_eq!((w.inserted, w.unchanged), (0, 4));
    }
}
