//! Raw transactions for this crate's own tests, benches and fixture makers, through the hidden
//! `layercache::testing` module: tests that damage a file on purpose or read a table the
//! library has no typed reader for open the storage engine's transactions themselves.
//!
//! Owns: the [`RawTransactions`] trait. Must never: be used by library code (which reads
//! through `Snapshot` and writes through `Batch`), or be
//! re-exported anywhere but the `#[doc(hidden)]` `testing` module: it is not part of the API.

use std::path::Path;

use super::rows::RowIter;
use super::{Store, TreeSummary};
use crate::error::Result;
use crate::tree::WalkedEntry;

/// The store's raw transactions, for tests only (see the module doc). Each method is the
/// store's own (`pub(crate)`) one of the same name: same waiting, same quick repair.
pub trait RawTransactions {
    /// A read transaction on the last commit.
    fn begin_read(&self) -> Result<redb::ReadTransaction>;
    /// A write transaction, waiting for the write lock up to the store's wait.
    fn begin_write(&self) -> Result<redb::WriteTransaction>;
    /// A write transaction if no other process writes now; never waits.
    fn try_begin_write(&self) -> Result<Option<redb::WriteTransaction>>;
    /// The stored rows of (layer, source) in key order, read in `txn`.
    fn rows(&self, txn: &redb::ReadTransaction, layer: &str, source: &str) -> Result<RowIter>;
    /// Replaces the rows of (layer, source) with the entries of a walk of `root`, in `txn`
    /// (every row written), and returns the tree's summary.
    fn write_tree(
        &self,
        txn: &redb::WriteTransaction,
        layer: &str,
        source: &str,
        root: &Path,
        entries: impl IntoIterator<Item = Result<WalkedEntry>>,
    ) -> Result<TreeSummary>;
}

impl RawTransactions for Store {
    fn begin_read(&self) -> Result<redb::ReadTransaction> {
        Store::begin_read(self)
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction> {
        Store::begin_write(self)
    }

    fn try_begin_write(&self) -> Result<Option<redb::WriteTransaction>> {
        Store::try_begin_write(self)
    }

    fn rows(&self, txn: &redb::ReadTransaction, layer: &str, source: &str) -> Result<RowIter> {
        Store::rows(self, txn, layer, source)
    }

    fn write_tree(
        &self,
        txn: &redb::WriteTransaction,
        layer: &str,
        source: &str,
        root: &Path,
        entries: impl IntoIterator<Item = Result<WalkedEntry>>,
    ) -> Result<TreeSummary> {
        super::put::write_tree_raw(txn, self.path(), (layer, source), root, entries)
    }
}
