//! The stat refresh after a hit (git's index refresh): rows whose content was verified equal but
//! whose stat data could not vouch for them next time get the stat data they were verified
//! under, so the next lookup reads nothing.
//!
//! Owns: the list of rows to refresh that a lookup collects ([`RefreshList`]), the decision to
//! queue a row (which defers to [`fastpath::needs_refresh`], the same rules the walk's fast path
//! applies), and the write transactions of up to [`REFRESH_BATCH`] rows.
//!
//! Must never: run after a miss, change anything but a row's stat data, or touch a row that is
//! no longer, in every compared property, the row the lookup verified.

use redb::ReadableTable;

use crate::diff::compare_rows;
use crate::error::{DbResultExt, Result};
use crate::failpoint::crash_point;
use crate::path::RelPath;
use crate::schema::{ROWS, Row, RowStat};
use crate::store::rows::{decode_row, encode_row};
use crate::tree::WalkedEntry;
use crate::tree::fastpath;

use super::Session;
use super::source::compared_digest;

/// Rows refreshed per write transaction.
pub(super) const REFRESH_BATCH: usize = 65_536;

/// Rows whose stat data a hit will bring up to date, kept compact (a touched 10^6-file tree
/// holds one item per file until the lookup ends): source index, path key, the stat the
/// digest was verified under, and that digest.
#[derive(Debug, Default)]
pub(super) struct RefreshList {
    sources: Vec<String>,
    items: Vec<RefreshItem>,
}

/// (source index, path key, stat, [`compared_digest`] of the verified row).
type RefreshItem = (u32, Box<[u8]>, RowStat, [u8; 32]);

impl RefreshList {
    /// Registers the rows-table name of a source; returns its index for [`Self::consider`].
    pub(super) fn add_source(&mut self, row_source: String) -> u32 {
        self.sources.push(row_source);
        (self.sources.len() - 1) as u32
    }

    /// Queues `e` when it should refresh `stored` (see [`worth_refreshing`]).
    pub(super) fn consider(&mut self, src: u32, stored: &Row, e: &WalkedEntry) {
        if worth_refreshing(stored, e)
            && let Some(stat) = e.row.stat
        {
            self.items
                .push((src, e.path.key().into(), stat, compared_digest(&e.row)));
        }
    }

    /// True when nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// True when `e` matched `stored` in content (a stable entry, equal in every compared property)
/// but `stored`'s stat data cannot vouch for it next time; that part is
/// [`fastpath::needs_refresh`], defined by the fast path's own conditions.
fn worth_refreshing(stored: &Row, e: &WalkedEntry) -> bool {
    !e.unstable
        && e.row.kind == stored.kind
        && e.row.stat.is_some()
        && compare_rows(stored, &e.row).is_empty()
        && fastpath::needs_refresh(stored, &e.row, &e.stat)
}

impl Session<'_> {
    /// After a hit, records the current stat data of rows whose content was equal but whose
    /// stat was stale, missing or racy, so the next lookup reads nothing. A row is only updated
    /// if it is still, in every compared property, the row the lookup verified (another session
    /// may have put the layer from another tree meanwhile). A read-only store skips it. A miss
    /// never gets here.
    pub(super) fn refresh_rows(&mut self, layer: &str, refresh: &RefreshList) -> Result<()> {
        let store = &self.cache.store;
        if store.is_read_only() {
            return Ok(());
        }
        let path = store.path();
        let mut done = 0u64;
        // Each refreshed row is true on its own (this stat, this verified digest), so the rows
        // are written in batches of their own transactions: a refresh of 10^6 touched files
        // never holds all of redb's dirty pages at once.
        for batch in refresh.items.chunks(REFRESH_BATCH) {
            crash_point!("refresh::before_batch");
            let txn = store.begin_write()?;
            {
                let mut rows = txn.open_table(ROWS).db(path)?;
                for (src, key, stat, verified) in batch {
                    let Some(source) = refresh.sources.get(*src as usize) else {
                        continue;
                    };
                    let rel = RelPath::from_key(key);
                    let current = rows
                        .get((layer, source.as_str(), &key[..]))
                        .db(path)?
                        .and_then(|v| decode_row(path, &rel, v.value()).ok());
                    // Only a row still equal, in every compared property, to what this lookup
                    // verified on disk gets the new stat data.
                    let Some(mut row) = current.filter(|r| compared_digest(r) == *verified) else {
                        continue;
                    };
                    row.stat = Some(*stat);
                    let bytes = encode_row(path, &rel, &row)?;
                    rows.insert((layer, source.as_str(), &key[..]), bytes.as_slice())
                        .db(path)?;
                    done += 1;
                }
            }
            crash_point!("refresh::before_commit");
            txn.commit().db(path)?;
            crash_point!("refresh::after_commit");
        }
        self.counters.rows_refreshed += done;
        tracing::debug!(layer, rows = done, "refreshed stat data of unchanged files");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::EntryKind;
    use crate::tree::StatData;

    fn file_row(stat: RowStat) -> Row {
        Row {
            kind: EntryKind::File,
            mode: 0o644,
            uid: 1,
            gid: 1,
            size: 3,
            rdev: 0,
            link_target: Vec::new(),
            xattrs: Vec::new(),
            digest: [7; 32],
            stat: Some(stat),
        }
    }

    fn entry(row: Row) -> WalkedEntry {
        let s = row.stat.expect("a walked row has stat data");
        WalkedEntry {
            path: RelPath::from_slash_bytes(b"f"),
            stat: StatData {
                size: row.size,
                mtime_ns: s.mtime_ns,
                ctime_ns: s.ctime_ns,
                ino: s.ino,
                dev: s.dev,
            },
            row,
            unstable: false,
        }
    }

    /// Not racy: taken long after the file's last change.
    fn settled() -> RowStat {
        RowStat {
            mtime_ns: 1_000_000_001,
            ctime_ns: 1_000_000_001,
            ino: 42,
            dev: 7,
            snapshot_ns: 100_000_000_000,
        }
    }

    #[test]
    fn a_settled_row_with_the_same_stat_is_not_refreshed() {
        let stored = file_row(settled());
        assert!(!worth_refreshing(&stored, &entry(stored.clone())));
    }

    /// The fast path requires the same device; a row whose device changed (the tree moved to
    /// another file system, a volume remounted) must be refreshed, or it is re-hashed at every
    /// lookup.
    #[test]
    fn a_row_whose_device_changed_is_refreshed() {
        let stored = file_row(settled());
        let mut now = stored.clone();
        now.stat = Some(RowStat {
            dev: 8,
            ..settled()
        });
        let e = entry(now);
        assert_eq!(
            fastpath::content(&stored, &e.row, &e.stat),
            fastpath::FastPath::Stale
        );
        assert!(worth_refreshing(&stored, &e));
    }

    #[test]
    fn a_racy_row_is_refreshed() {
        let racy = RowStat {
            snapshot_ns: 1_000_000_001,
            ..settled()
        };
        let stored = file_row(racy);
        assert!(worth_refreshing(&stored, &entry(stored.clone())));
    }
}
