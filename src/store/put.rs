//! What a put and the engine's version bookkeeping write: a walked tree as the rows of one
//! (layer, source), writing only the rows that differ from the stored ones; the rows of the
//! sources a layer no longer has; dropping one version (with its pointer and rows when it is
//! the current one); and the panic guard the engine's entry points run under.
//!
//! Owns: the merge of a walk against the stored rows of (layer, source) ([`Batch::write_tree`]),
//! the raw stored rows it merges with ([`StoredRows`], read from a [`Snapshot`]), and what it
//! counts ([`RowWrites`]).
//!
//! Must never: decide whether a walk may be stored (that is the engine's put), decode a stored
//! row to compare it (rows are compared as their encoded bytes: a row that does not decode
//! differs from every row, and is rewritten), or read and write the same open table at once
//! (the stored rows come from a snapshot, see [`Batch::write_tree`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{DbResultExt, Error, Result};
use crate::schema::{LAYERS, ROWS};
use crate::tree::{TreeHasher, WalkedEntry};

use super::guard::guard_redb;
use super::rows::{RowKey, RowRange, RowTable, encode_row, guarded_next, validate_source};
use super::{Batch, Snapshot, Store, TreeSummary, versions};

/// What writing a tree did to the rows table: rows inserted (new paths), replaced (a path whose
/// row differs), removed (paths gone) and left as they were. A put of a tree with 1% of its
/// files changed writes about 1% of its rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RowWrites {
    /// Rows of paths that had none.
    pub(crate) inserted: u64,
    /// Rows replaced because they differ (as encoded bytes) from the stored one.
    pub(crate) replaced: u64,
    /// Stored rows of paths the walk did not see.
    pub(crate) removed: u64,
    /// Stored rows equal to the walked one: not written.
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

impl Store {
    /// Replaces the rows of (layer, source) with the entries of a walk, inside `txn`, and
    /// returns the tree's summary: a full rewrite (every row written), for the rooms not yet
    /// moved onto [`Batch`] (#21). An entry that changed while it was hashed aborts with
    /// [`Error::ChangedWhileReading`] (the caller's transaction is then dropped, storing
    /// nothing).
    pub fn write_tree(
        &self,
        txn: &redb::WriteTransaction,
        layer: &str,
        source: &str,
        root: &Path,
        entries: impl IntoIterator<Item = Result<WalkedEntry>>,
    ) -> Result<TreeSummary> {
        Ok(write_rows(txn, self.path(), layer, source, root, entries, None)?.0)
    }

    /// Runs `f` with a panic inside redb (a damaged page) turned into [`Error::Db`] naming this
    /// file, and the damage recorded (see `store/guard.rs`).
    pub(crate) fn guarded<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        guard_redb(self.path(), f)
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
    /// and are merged: only a path whose encoded row differs is written, a stored path the walk
    /// did not see is removed, an equal row is left alone. `None` (the stored rows vouch for
    /// nothing: damaged) removes every row of (layer, source) first and writes every entry.
    /// Either way the rows afterwards are exactly the walk's.
    pub(crate) fn write_tree(
        &self,
        layer: &str,
        source: &str,
        root: &Path,
        entries: impl IntoIterator<Item = Result<WalkedEntry>>,
        stored: Option<StoredRows>,
    ) -> Result<(TreeSummary, RowWrites)> {
        write_rows(
            self.txn(),
            self.path(),
            layer,
            source,
            root,
            entries,
            stored,
        )
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

/// [`Batch::write_tree`] in `txn` of the file `db`.
fn write_rows(
    txn: &redb::WriteTransaction,
    db: &Path,
    layer: &str,
    source: &str,
    root: &Path,
    entries: impl IntoIterator<Item = Result<WalkedEntry>>,
    stored: Option<StoredRows>,
) -> Result<(TreeSummary, RowWrites)> {
    validate_source(source)?;
    let mut table = txn.open_table(ROWS).db(db)?;
    if stored.is_none() {
        RowRange::source(layer, source).delete(db, &mut table)?;
    }
    let mut merge = Merge::new(db, layer, source, stored)?;
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
        merge.put(&mut table, entry.path.key(), &bytes)?;
    }
    let writes = merge.finish(&mut table)?;
    let (root_digest, rows) = hasher.finish();
    let summary = TreeSummary {
        root_digest,
        rows,
        root_kind,
    };
    Ok((summary, writes))
}

/// [`Batch::write_tree`]'s merge of the walk against the stored rows of one (layer, source):
/// the next stored row not yet met, and what was written so far.
struct Merge<'a> {
    db: &'a Path,
    layer: &'a str,
    source: &'a str,
    stored: Option<StoredRows>,
    next: Option<(Vec<u8>, Vec<u8>)>,
    writes: RowWrites,
}

impl<'a> Merge<'a> {
    fn new(
        db: &'a Path,
        layer: &'a str,
        source: &'a str,
        stored: Option<StoredRows>,
    ) -> Result<Self> {
        let mut m = Merge {
            db,
            layer,
            source,
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

    /// The walked row of `key` is `bytes`: stored paths before it were not walked (removed);
    /// a stored row of `key` equal to `bytes` is left alone, any other is replaced.
    fn put(&mut self, table: &mut RowTable<'_>, key: &[u8], bytes: &[u8]) -> Result<()> {
        while let Some((k, _)) = self.next.as_ref().filter(|(k, _)| k.as_slice() < key) {
            table
                .remove((self.layer, self.source, k.as_slice()))
                .db(self.db)?;
            self.writes.removed += 1;
            self.advance()?;
        }
        let stored = self.next.as_ref().filter(|(k, _)| k.as_slice() == key);
        let same = stored.is_some_and(|(_, v)| v.as_slice() == bytes);
        let replaced = stored.is_some();
        if same {
            self.writes.unchanged += 1;
        } else {
            table
                .insert((self.layer, self.source, key), bytes)
                .db(self.db)?;
            if replaced {
                self.writes.replaced += 1;
            } else {
                self.writes.inserted += 1;
            }
        }
        if replaced {
            self.advance()?;
        }
        Ok(())
    }

    /// Removes the stored rows after the last walked path; what was written in all.
    fn finish(mut self, table: &mut RowTable<'_>) -> Result<RowWrites> {
        while let Some((k, _)) = self.next.take() {
            table
                .remove((self.layer, self.source, k.as_slice()))
                .db(self.db)?;
            self.writes.removed += 1;
            self.advance()?;
        }
        Ok(self.writes)
    }
}
