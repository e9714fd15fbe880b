//! What `crate::inspect` needs of the file beyond the shared [`Snapshot`] methods: whole-table
//! reads for the listing and the checker, per-table statistics, and the maintenance operations
//! that need the writable handle (the storage engine's own integrity check, compaction, its
//! exact accounting of the file).
//!
//! Owns: those typed methods, and the two plain statistics types they return
//! ([`TableStats`], [`FileStats`]). Must never: decide what a finding means or how it is
//! reported (that is `inspect`'s), write a record, or wait for a build beyond the store's
//! [`WriteWait`](super::WriteWait).

use redb::{ReadableTable, ReadableTableMetadata};

use super::rows::{RowIter, RowRange};
use super::tables::{LAST_USED, LAYERS, META, META_WRITER, ROWS, VERSIONS};
use super::{Batch, DbResultExt, Snapshot, Store, versions};
use crate::error::{Error, Result};
use crate::schema::LayerRecord;

/// What one table holds and how much of the file it uses, from the table's own statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableStats {
    /// The table's name (`meta`, `layers`, `versions`, `last_used`, `rows`).
    pub name: &'static str,
    /// Number of keys (0 for a table the file does not have).
    pub len: u64,
    /// Bytes of keys and values.
    pub stored_bytes: u64,
    /// Bytes of the table's own structure (branch keys, page headers).
    pub metadata_bytes: u64,
    /// Bytes of its pages that hold nothing.
    pub fragmented_bytes: u64,
    /// Pages it occupies.
    pub pages: u64,
}

/// The storage engine's exact accounting of the whole file, which it gives only to a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStats {
    /// Page size in bytes.
    pub page_size: u64,
    /// Pages in use.
    pub allocated_pages: u64,
    /// Bytes of keys and values, over every table.
    pub stored_bytes: u64,
    /// Bytes of structure, the engine's own tables included.
    pub metadata_bytes: u64,
    /// Bytes of allocated pages that hold nothing.
    pub fragmented_bytes: u64,
}

impl Snapshot {
    /// Every layer pointer in name order, each decoded (the inner error: damage, named by its
    /// key, so one damaged pointer never hides the others).
    pub(crate) fn pointers(&self) -> Result<Vec<(String, Result<LayerRecord>)>> {
        let path = self.path();
        let mut out = Vec::new();
        for item in self.txn().open_table(LAYERS).db(path)?.iter().db(path)? {
            let (k, v) = item.db(path)?;
            let name = k.value().to_string();
            let rec = versions::decode_layer(path, &name, v.value());
            out.push((name, rec));
        }
        Ok(out)
    }

    /// Every layer name that has a pointer, in name order (pointers not decoded).
    pub(crate) fn pointer_names(&self) -> Result<Vec<String>> {
        let path = self.path();
        let mut out = Vec::new();
        for item in self.txn().open_table(LAYERS).db(path)?.iter().db(path)? {
            let (k, _) = item.db(path)?;
            out.push(k.value().to_string());
        }
        Ok(out)
    }

    /// True when the `meta` table records the version of layercache that last wrote the file.
    pub(crate) fn writer_recorded(&self) -> Result<bool> {
        let path = self.path();
        let meta = self.txn().open_table(META).db(path)?;
        Ok(meta.get(META_WRITER).db(path)?.is_some())
    }

    /// The stored rows of every source of `layer`, in key order (source by source).
    pub(crate) fn layer_rows(&self, layer: &str) -> Result<RowIter> {
        RowIter::open(self.path(), self.txn(), &RowRange::layer(layer))
    }

    /// Every stored row of the file, in key order (layer by layer, source by source).
    pub(crate) fn all_rows(&self) -> Result<RowIter> {
        RowIter::open(self.path(), self.txn(), &RowRange::table())
    }

    /// The statistics of each table, in the order `meta`, `layers`, `versions`, `last_used`,
    /// `rows`; a table the file does not have counts as empty.
    pub(crate) fn table_stats(&self) -> Result<Vec<TableStats>> {
        let (txn, path) = (self.txn(), self.path());
        let mut out = Vec::new();
        macro_rules! usage {
            ($def:expr, $name:literal) => {
                match txn.open_table($def) {
                    Ok(t) => {
                        let s = t.stats().db(path)?;
                        out.push(TableStats {
                            name: $name,
                            len: t.len().db(path)?,
                            stored_bytes: s.stored_bytes(),
                            metadata_bytes: s.metadata_bytes(),
                            fragmented_bytes: s.fragmented_bytes(),
                            pages: s.leaf_pages() + s.branch_pages(),
                        });
                    }
                    Err(redb::TableError::TableDoesNotExist(_)) => out.push(TableStats {
                        name: $name,
                        len: 0,
                        stored_bytes: 0,
                        metadata_bytes: 0,
                        fragmented_bytes: 0,
                        pages: 0,
                    }),
                    Err(e) => return Err(e).db(path),
                }
            };
        }
        usage!(META, "meta");
        usage!(LAYERS, "layers");
        usage!(VERSIONS, "versions");
        usage!(LAST_USED, "last_used");
        usage!(ROWS, "rows");
        Ok(out)
    }
}

impl Batch {
    /// Ends the batch writing nothing, reporting a failure to do so (dropping it aborts too,
    /// silently).
    pub(crate) fn abort(self) -> Result<()> {
        let path = self.path().to_path_buf();
        self.into_txn().abort().db(&path)
    }
}

impl Store {
    /// Opens the writable handle now if it is not open yet, waiting silently up to the store's
    /// [`WriteWait`](super::WriteWait) ([`Error::Busy`] after it); fails on a store opened
    /// read-only. For maintenance, which must know it can write before it starts.
    pub(crate) fn open_writer(&mut self) -> Result<()> {
        self.database_mut().map(|_| ())
    }

    /// The storage engine's exact accounting of the file, read in a write transaction that
    /// writes nothing (it waits for the write lock like [`Store::batch`]).
    pub(crate) fn file_stats(&self) -> Result<FileStats> {
        let path = self.path().to_path_buf();
        let txn = self.begin_write()?;
        let s = txn.stats().db(&path)?;
        txn.abort().db(&path)?;
        Ok(FileStats {
            page_size: s.page_size() as u64,
            allocated_pages: s.allocated_pages(),
            stored_bytes: s.stored_bytes(),
            metadata_bytes: s.metadata_bytes(),
            fragmented_bytes: s.fragmented_bytes(),
        })
    }

    /// Compacts the file until the storage engine has nothing left to move; returns the passes
    /// that moved something. [`Error::InUse`] while any transaction (of any process) is open
    /// on it: then nothing was changed.
    pub(crate) fn compact(&mut self) -> Result<u64> {
        let path = self.path().to_path_buf();
        let db = self.database_mut()?;
        let mut passes = 0;
        // Each pass moves pages toward the start of the file; the engine says when none is
        // left. The bound only guards against a pass that keeps reporting progress.
        while passes < 100_000 {
            match db.compact() {
                Ok(true) => passes += 1,
                Ok(false) => break,
                Err(redb::CompactionError::TransactionInProgress) => {
                    return Err(Error::InUse { path });
                }
                Err(e) => return Err(e).db(&path),
            }
        }
        Ok(passes)
    }

    /// The storage engine's own integrity check (page checksums, allocator state) through the
    /// writable handle. The outer error: the handle could not be opened. The inner result:
    /// `Ok(true)` passed, `Ok(false)` the file needed a repair and the engine made it,
    /// `Err(detail)` the check failed.
    pub fn check_integrity(&mut self) -> Result<std::result::Result<bool, String>> {
        let db = self.database_mut()?;
        Ok(db.check_integrity().map_err(|e| e.to_string()))
    }
}
