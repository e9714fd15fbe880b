//! The two ways the rest of the crate touches the file: a read [`Snapshot`] and a write
//! [`Batch`], each with typed methods (pointer, versions, rows, touch, …). No redb type crosses
//! this boundary: code outside `store/` names neither a transaction nor a table.
//!
//! Owns: the wrappers and the methods every room needs. A room that needs more adds its typed
//! methods in a file of `store/` of its own (an `impl Snapshot` / `impl Batch` block), never by
//! reaching the transaction.
//!
//! Must never: hand out the redb transaction (only `store/` modules see it, through
//! `Snapshot::txn` / `Batch::txn`), or commit a batch implicitly: a [`Batch`] dropped without
//! [`Batch::commit`] writes nothing.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::schema::{LayerRecord, VersionRecord};
use crate::store::DbResultExt;
use crate::store::rows::{RowIter, RowRange};
use crate::store::versions;

/// A read snapshot of the last commit: every read of one lookup or one report sees the same
/// state, whatever other processes commit meanwhile.
pub(crate) struct Snapshot {
    txn: redb::ReadTransaction,
    path: PathBuf,
}

/// One write transaction: everything done through it is committed at once by
/// [`Batch::commit`], or not at all.
pub(crate) struct Batch {
    txn: redb::WriteTransaction,
    path: PathBuf,
}

impl Snapshot {
    pub(super) fn new(txn: redb::ReadTransaction, path: &Path) -> Self {
        Self {
            txn,
            path: path.to_path_buf(),
        }
    }

    /// The redb transaction, for `store/` modules only.
    pub(super) fn txn(&self) -> &redb::ReadTransaction {
        &self.txn
    }

    /// The database file this snapshot reads.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The layer's pointer: `None` when the layer has none; the inner error when its bytes do
    /// not decode (damage, named by key).
    pub(crate) fn pointer(&self, layer: &str) -> Result<Option<Result<LayerRecord>>> {
        versions::pointer(&self.txn, &self.path, layer)
    }

    /// One stored version of `layer`, by input digest.
    pub(crate) fn version(
        &self,
        layer: &str,
        digest: &[u8; 32],
    ) -> Result<Option<Result<VersionRecord>>> {
        versions::version(&self.txn, &self.path, layer, digest)
    }

    /// Every stored version of `layer`, in digest order.
    pub(crate) fn versions_of(
        &self,
        layer: &str,
    ) -> Result<Vec<([u8; 32], Result<VersionRecord>)>> {
        versions::versions_of(&self.txn, &self.path, layer)
    }

    /// When a version was last used (ms since the epoch), if recorded.
    pub(crate) fn last_used(&self, layer: &str, digest: &[u8; 32]) -> Result<Option<u64>> {
        versions::last_used(&self.txn, &self.path, layer, digest)
    }

    /// The stored rows of (layer, source) in key order, decoded lazily from one range scan.
    pub(crate) fn rows(&self, layer: &str, source: &str) -> Result<RowIter> {
        RowIter::open(&self.path, &self.txn, &RowRange::source(layer, source))
    }
}

impl Batch {
    pub(super) fn new(txn: redb::WriteTransaction, path: &Path) -> Self {
        Self {
            txn,
            path: path.to_path_buf(),
        }
    }

    /// The redb transaction, for `store/` modules only.
    pub(super) fn txn(&self) -> &redb::WriteTransaction {
        &self.txn
    }

    /// The redb transaction itself, for `store/` modules that end it another way than
    /// [`Batch::commit`].
    pub(super) fn into_txn(self) -> redb::WriteTransaction {
        self.txn
    }

    /// The database file this batch writes.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Commits everything written through this batch, durably, at once.
    pub(crate) fn commit(self) -> Result<()> {
        self.txn.commit().db(&self.path)
    }

    /// The layer's pointer as this batch sees it (its own writes included).
    pub(crate) fn pointer(&self, layer: &str) -> Result<Option<Result<LayerRecord>>> {
        versions::pointer_in_write(&self.txn, &self.path, layer)
    }

    /// One stored version as this batch sees it (its own writes included).
    pub(crate) fn version(
        &self,
        layer: &str,
        digest: &[u8; 32],
    ) -> Result<Option<Result<VersionRecord>>> {
        versions::version_in_write(&self.txn, &self.path, layer, digest)
    }

    /// Stores (or replaces) a version record.
    pub(crate) fn write_version(&self, rec: &VersionRecord) -> Result<()> {
        versions::write_version(&self.txn, &self.path, rec)
    }

    /// Points `layer` at a version.
    pub(crate) fn write_pointer(&self, layer: &str, rec: &LayerRecord) -> Result<()> {
        versions::write_pointer(&self.txn, &self.path, layer, rec)
    }

    /// Records that a version was used now (`now_unix_ms`).
    pub(crate) fn touch(&self, layer: &str, digest: &[u8; 32], now_unix_ms: u64) -> Result<()> {
        versions::touch(&self.txn, &self.path, layer, digest, now_unix_ms)
    }

    /// Removes one version and its last use (not the pointer or rows); true when it existed.
    pub(crate) fn remove_version(&self, layer: &str, digest: &[u8; 32]) -> Result<bool> {
        versions::remove_version(&self.txn, &self.path, layer, digest)
    }

    /// Removes a layer: its pointer, every version, rows and last use; true when it existed.
    pub(crate) fn remove_layer(&self, layer: &str) -> Result<bool> {
        versions::remove_layer(&self.txn, &self.path, layer)
    }
}
