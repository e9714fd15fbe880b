//! The stat refresh after a hit (git's index refresh): rows whose content was verified equal but
//! whose stat data could not vouch for them next time get the stat data they were verified
//! under, so the next lookup reads nothing.
//!
//! Owns: the list of rows to refresh that a lookup collects ([`RefreshList`]), the decision to
//! queue a row (which defers to [`fastpath::needs_refresh`], the same rules the walk's fast path
//! applies), and the write transactions of up to [`REFRESH_BATCH`] rows.
//!
//! Also owns what else a hit writes (schema v3): the coarse record of last use
//! ([`LAST_USE_GRANULARITY_MS`]) and the switch of the rows and pointer to another stored
//! version ([`Switch`]).
//!
//! Also owns the opposite: clearing the stat data of rows a verify lookup caught lying (stat
//! matched, content differed), so no later walk reuses their digest ([`Session::distrust_rows`];
//! the one write a miss may cause, and it only makes the cache trust less).
//!
//! Must never: run after a miss, change anything but a row's stat data (except in a version
//! switch, which writes the rows as walked, guarded by the layer's pointer generation), or
//! touch a row that is no longer, in every compared property, the row the lookup verified.

use redb::ReadableTable;

use crate::diff::compare_rows;
use crate::error::{DbResultExt, Result};
use crate::failpoint::crash_point;
use crate::path::RelPath;
use crate::schema::{LayerRecord, Row, VersionRecord};
use crate::store::rows::{RowRange, decode_row, encode_row};
use crate::store::tables::ROWS;
use crate::store::versions;
use crate::tree::fastpath;
use crate::tree::{LoggedEntry, TreeWalk, WalkLog, WalkedEntry};

use super::source::{SourceRole, WalkedTree, cached_sources};
use super::{Session, SourceId, now_ms};

/// Rows refreshed per write transaction.
pub(crate) const REFRESH_BATCH: usize = 65_536;

/// Rows whose stat data a hit will bring up to date, kept compact (a touched 10^6-file tree
/// holds one item per file until the lookup ends): per source, the verified entries in a
/// [`WalkLog`] (~70 bytes an entry with prefix-compressed keys, one buffer per source; a
/// `Vec` of boxed keys, stat data and digests took ~150 with an allocation per item). The row
/// logged is the one the lookup verified equal to the stored row, so the stored row must
/// still be [`Row::compared_eq`] to it, and its stat data is what gets written.
#[derive(Debug, Default)]
pub(crate) struct RefreshList {
    sources: Vec<(String, WalkLog)>,
}

impl RefreshList {
    /// Registers the rows-table name of a source; returns its index for [`Self::consider`].
    pub(crate) fn add_source(&mut self, row_source: String) -> u32 {
        self.sources.push((row_source, WalkLog::new()));
        (self.sources.len() - 1) as u32
    }

    /// Queues `e` when it should refresh `stored` (see [`worth_refreshing`]).
    pub(crate) fn consider(&mut self, src: u32, stored: &Row, e: &WalkedEntry) {
        if worth_refreshing(stored, e)
            && e.row.stat.is_some()
            && let Some((_, log)) = self.sources.get_mut(src as usize)
        {
            log.push(e);
        }
    }

    /// True when nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.sources.iter().all(|(_, log)| log.is_empty())
    }

    /// The queued entries with their rows-table source name, source by source in walk order.
    fn items(&self) -> impl Iterator<Item = (&str, LoggedEntry)> + '_ {
        self.sources
            .iter()
            .flat_map(|(s, log)| log.entries().map(move |e| (s.as_str(), e)))
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

/// Last use is recorded at most once per this many ms per version, or whenever a write happens
/// anyway (a stat refresh, a version switch, a put). One write transaction costs about as much
/// as a no-change lookup of a 1000-file layer (16 ms against 22 ms, `tests/testsuite/last_use_cost.rs`),
/// so writing on every hit would nearly double the cost of a cache that is all hits; GC policies
/// count in days, so an hour of slack costs nothing.
pub(crate) const LAST_USE_GRANULARITY_MS: u64 = 3_600_000;

/// A hit on a version other than the current one: what the lookup read and walked, so the
/// rows can be made to describe the tree as it is now.
pub(crate) struct Switch<'i> {
    /// The pointer the lookup read (`None`: none, or a damaged one). The switch is written only
    /// if the layer still has it: otherwise another session put or switched the layer meanwhile
    /// and its rows stay.
    pub(crate) from: Option<LayerRecord>,
    /// Every cached source with its walked tree, in the order walked.
    pub(crate) trees: Vec<(SourceRole, std::borrow::Cow<'i, str>, Option<WalkedTree>)>,
}

impl Session<'_> {
    /// After a hit on `rec`: on the current version, refresh stale stat data and record the use
    /// if the stored one is older than [`LAST_USE_GRANULARITY_MS`]; on another version, switch
    /// the rows and the pointer to it ([`Session::switch_rows`]). A read-only store writes
    /// nothing. A miss never gets here.
    pub(crate) fn after_hit(
        &mut self,
        layer: &str,
        rec: &VersionRecord,
        refresh: &RefreshList,
        switch: Option<Switch<'_>>,
    ) -> Result<()> {
        let store = &self.cache.store;
        if store.is_read_only() {
            return Ok(());
        }
        if let Some(sw) = switch {
            return self.switch_rows(layer, rec, refresh, sw);
        }
        let path = store.path();
        let now = now_ms();
        let stale_use = {
            let txn = store.begin_read()?;
            versions::last_used(&txn, path, layer, &rec.input_digest)?
                .is_none_or(|t| now.saturating_sub(t) >= LAST_USE_GRANULARITY_MS)
        };
        if refresh.is_empty() {
            // Only the use to record: optional, skipped when the write lock is busy.
            if stale_use && let Some(txn) = store.try_begin_write()? {
                versions::touch(&txn, path, layer, &rec.input_digest, now)?;
                txn.commit().db(path)?;
                self.counters.writes_committed += 1;
            }
            return Ok(());
        }
        self.refresh_rows(layer, refresh, &rec.input_digest)
    }

    /// Records the current stat data of rows whose content was equal but whose stat was stale,
    /// missing or racy, so the next lookup reads nothing; and, in the first transaction, the
    /// use of `touch`. A row is only updated if it is still, in every compared property, the
    /// row the lookup verified (another session may have put the layer from another tree
    /// meanwhile).
    fn refresh_rows(&mut self, layer: &str, refresh: &RefreshList, touch: &[u8; 32]) -> Result<()> {
        let store = &self.cache.store;
        let path = store.path();
        let mut done = 0u64;
        let mut touch = Some(touch);
        // Each refreshed row is true on its own (this stat, this verified digest), so the rows
        // are written in batches of their own transactions: a refresh of 10^6 touched files
        // never holds all of redb's dirty pages at once.
        let mut items = refresh.items().peekable();
        loop {
            crash_point!("refresh::before_batch");
            // Optional: never wait for another process's write.
            let Some(txn) = store.try_begin_write()? else {
                self.counters.writes_skipped_busy += 1;
                tracing::debug!(
                    layer,
                    "stat refresh skipped: another process holds the write lock"
                );
                break;
            };
            if let Some(d) = touch.take() {
                versions::touch(&txn, path, layer, d, now_ms())?;
            }
            done += apply_refresh(path, &txn, layer, items.by_ref().take(REFRESH_BATCH))?;
            crash_point!("refresh::before_commit");
            txn.commit().db(path)?;
            self.counters.writes_committed += 1;
            crash_point!("refresh::after_commit");
            if items.peek().is_none() {
                break;
            }
        }
        self.counters.rows_refreshed += done;
        tracing::debug!(layer, rows = done, "refreshed stat data of unchanged files");
        Ok(())
    }

    /// A hit on a version that is not the current one (a branch switched back, a definition
    /// flipped back): in one write transaction, the rows are brought to the tree as walked
    /// (only the rows that differ are written; a source the rows did not hold is walked
    /// again into rows and must give the same Merkle root), stale stat data is refreshed, the
    /// pointer moves to `rec` with a new generation and the use is recorded. Skipped, the hit
    /// standing, when the layer changed since the lookup read it.
    fn switch_rows(
        &mut self,
        layer: &str,
        rec: &VersionRecord,
        refresh: &RefreshList,
        sw: Switch<'_>,
    ) -> Result<()> {
        crash_point!("switch::before_write");
        let store = &self.cache.store;
        let path = store.path();
        // Optional: when a put or another lookup holds the write lock, the hit stands and the
        // rows stay as they are (the next lookup hashes what differs again), rather than
        // queueing every lookup of two trees taking turns behind each other's writes.
        let Some(txn) = store.try_begin_write()? else {
            tracing::debug!(layer, "write lock busy; version switch skipped");
            return Ok(());
        };
        let unchanged = match (&sw.from, versions::pointer_in_write(&txn, path, layer)?) {
            (Some(a), Some(Ok(b))) => *a == b,
            (None, None | Some(Err(_))) => true,
            _ => false,
        };
        if !unchanged {
            txn.abort().db(path)?;
            tracing::debug!(
                layer,
                "the layer changed since the lookup; rows left as they are"
            );
            return Ok(());
        }
        let wanted: Vec<String> = sw
            .trees
            .iter()
            .map(|(role, key, _)| SourceId { role: *role, key }.row_source())
            .collect();
        {
            // Rows of sources the new version does not have describe nothing any more.
            let mut stale_sources = Vec::new();
            for s in versions::row_sources(&txn, path, layer)? {
                if !wanted.contains(&s) {
                    stale_sources.push(s);
                }
            }
            let mut rows = txn.open_table(ROWS).db(path)?;
            for s in &stale_sources {
                RowRange::source(layer, s).delete(path, &mut rows)?;
            }
        }
        let mut rewritten = 0u64;
        for ((role, key, tree), sid) in sw.trees.iter().zip(&wanted) {
            let Some(tree) = tree else {
                txn.abort().db(path)?;
                return Ok(());
            };
            match &tree.changes {
                Some(changes) => {
                    let mut rows = txn.open_table(ROWS).db(path)?;
                    for p in &changes.removed {
                        rows.remove((layer, sid.as_str(), p.key())).db(path)?;
                    }
                    for (k, row) in &changes.upserts {
                        let bytes = encode_row(path, &RelPath::from_key(k), row)?;
                        rows.insert((layer, sid.as_str(), &k[..]), bytes.as_slice())
                            .db(path)?;
                    }
                    rewritten += (changes.removed.len() + changes.upserts.len()) as u64;
                }
                None => {
                    // Not diffed against rows (none stored for it, or its root type changed):
                    // walk it into rows; it must still be the tree the digest was taken of.
                    let Some(src) = rec_source_path(self.build.layer(layer)?, *role, key) else {
                        txn.abort().db(path)?;
                        return Ok(());
                    };
                    let mut walk = TreeWalk::new(src)?;
                    let summary = store.write_tree(&txn, layer, sid, src, walk.by_ref())?;
                    self.counters.walk.add(&walk.counters());
                    rewritten += summary.rows;
                    if summary.root_digest != tree.root_digest {
                        txn.abort().db(path)?;
                        tracing::debug!(layer, "a source changed during the lookup; rows kept");
                        return Ok(());
                    }
                }
            }
        }
        let done = apply_refresh(path, &txn, layer, refresh.items())?;
        let generation = sw.from.as_ref().map_or(0, |p| p.generation).wrapping_add(1);
        versions::write_pointer(
            &txn,
            path,
            layer,
            &LayerRecord {
                current: rec.input_digest,
                generation,
            },
        )?;
        versions::touch(&txn, path, layer, &rec.input_digest, now_ms())?;
        crash_point!("switch::before_commit");
        txn.commit().db(path)?;
        crash_point!("switch::after_commit");
        self.counters.writes_committed += 1;
        self.counters.rows_refreshed += done;
        self.counters.rows_switched += rewritten;
        tracing::debug!(
            layer,
            rows = rewritten,
            "switched to another stored version"
        );
        Ok(())
    }
}

/// The path on disk of a cached source of a layer.
impl Session<'_> {
    /// Clears the stat data of rows that a verify lookup found lying, so neither a later lookup
    /// nor a put's walk reuses their digest (the content is read again). Only stat data
    /// changes: the Merkle roots do not cover it, so the version stays consistent with its
    /// rows. A read-only store skips it (and says so).
    pub(crate) fn distrust_rows(&mut self, layer: &str, lied: &[super::LyingRow]) -> Result<()> {
        let store = &self.cache.store;
        if store.is_read_only() {
            tracing::warn!(
                layer = %crate::path::escape_bytes(layer.as_bytes()),
                rows = lied.len(),
                "rows with lying stat data found, but the cache is open read-only: not cleared"
            );
            return Ok(());
        }
        let path = store.path();
        let txn = store.begin_write()?;
        {
            let mut rows = txn.open_table(ROWS).db(path)?;
            for l in lied {
                let key = l.path.key();
                let current = rows
                    .get((layer, l.source.as_str(), key))
                    .db(path)?
                    .and_then(|v| decode_row(path, &l.path, v.value()).ok());
                let Some(mut row) = current else {
                    continue;
                };
                row.stat = None;
                let bytes = encode_row(path, &l.path, &row)?;
                rows.insert((layer, l.source.as_str(), key), bytes.as_slice())
                    .db(path)?;
            }
        }
        txn.commit().db(path)?;
        self.counters.writes_committed += 1;
        tracing::warn!(
            layer = %crate::path::escape_bytes(layer.as_bytes()),
            rows = lied.len(),
            "stat data matched but content differed: cleared the stat data of those rows"
        );
        Ok(())
    }
}

fn rec_source_path<'a>(
    inputs: &'a crate::inputs::LayerInputs,
    role: SourceRole,
    key: &str,
) -> Option<&'a std::path::Path> {
    cached_sources(inputs)
        .find(|s| s.role == role && s.ident == key)
        .map(|s| s.path)
}

/// Writes the new stat data of one batch of refresh items inside `txn`, each only onto a row
/// still equal to the one verified. Returns the rows written.
fn apply_refresh<'a>(
    path: &std::path::Path,
    txn: &redb::WriteTransaction,
    layer: &str,
    batch: impl Iterator<Item = (&'a str, LoggedEntry)>,
) -> Result<u64> {
    let mut rows = txn.open_table(ROWS).db(path)?;
    let mut done = 0;
    for (source, item) in batch {
        let Some(stat) = item.row.stat else {
            continue;
        };
        let key = item.path.key();
        let current = rows
            .get((layer, source, key))
            .db(path)?
            .and_then(|v| decode_row(path, &item.path, v.value()).ok());
        // Only a row still equal, in every compared property, to what this lookup verified on
        // disk gets the new stat data.
        let Some(mut row) = current.filter(|r| r.compared_eq(&item.row)) else {
            continue;
        };
        row.stat = Some(stat);
        let bytes = encode_row(path, &item.path, &row)?;
        rows.insert((layer, source, key), bytes.as_slice())
            .db(path)?;
        done += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::EntryKind;
    use crate::schema::RowStat;
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
