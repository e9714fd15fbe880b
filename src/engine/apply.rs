//! Every write a lookup makes, in one step once it has decided (schema v3), from its
//! [`Verdict`] and its observations (`engine/observe.rs`); nothing is written while the lookup
//! reads or observes:
//!
//! * a hit on the current version: the stat refresh (git's index refresh) — rows whose content
//!   was verified equal but whose stat data could not vouch for them next time get the stat
//!   data they were verified under, in write transactions of up to [`REFRESH_BATCH`] rows, so
//!   the next lookup reads nothing — and the coarse record of last use
//!   ([`LAST_USE_GRANULARITY_MS`]);
//! * a hit on another stored version: the switch of the rows and the pointer to it, in one
//!   write transaction guarded by the pointer the lookup read;
//! * rows a verify lookup caught lying (stat matched, content differed): their stat data
//!   cleared, so no later walk reuses their digest (the one write a miss may cause, and it only
//!   makes the cache trust less).
//!
//! Owns: those writes, the crash points around them (`refresh::*`, `switch::*`), and the rule
//! that a refreshed row must still be the row verified (`refresh_stat`).
//!
//! Must never: write after a miss (except the clearing), decide a hit or walk to decide
//! anything (that is `engine/lookup.rs` and `engine/observe.rs`), change anything but a row's
//! stat data (except in a version switch, which writes the rows as walked), or touch a row that
//! is no longer, in every compared property, the row the lookup verified. Its one walk is the
//! switch's walk of a source the lookup walked but did not diff, written only if it gives the
//! same Merkle root. Depends on `engine/observe.rs` (what was seen) and nothing else of the
//! engine but the session.

use std::collections::BTreeSet;

use crate::error::Result;
use crate::failpoint::crash_point;
use crate::path::{RelPath, escape_bytes};
use crate::schema::{LayerRecord, Row, VersionRecord};
use crate::store::Batch;
use crate::tree::TreeWalk;

use super::observe::Observation;
use super::source::LyingRow;
use super::{Session, now_ms};

/// Rows refreshed per write transaction: a refresh of 10^6 touched files never holds all of
/// its dirty pages at once.
pub(crate) const REFRESH_BATCH: usize = 65_536;

/// Last use is recorded at most once per this many ms per version, or whenever a write happens
/// anyway (a stat refresh, a version switch, a put). One write transaction costs about as much
/// as a no-change lookup of a 1000-file layer (16 ms against 22 ms,
/// `tests/testsuite/last_use_cost.rs`), so writing on every hit would nearly double the cost of
/// a cache that is all hits; GC policies count in days, so an hour of slack costs nothing.
pub(crate) const LAST_USE_GRANULARITY_MS: u64 = 3_600_000;

/// What a lookup decided, as far as writing goes.
pub(crate) enum Verdict<'a> {
    /// A miss: nothing is written but the clearing of rows that lied.
    Miss,
    /// A hit on the layer's current version.
    HitCurrent(&'a VersionRecord),
    /// A hit on another stored version.
    HitOther {
        /// The version hit.
        rec: &'a VersionRecord,
        /// The pointer the lookup read (`None`: none, or a damaged one). The switch is
        /// written only if the layer still has it: otherwise another session put or switched
        /// the layer meanwhile and its rows stay.
        from: Option<&'a LayerRecord>,
    },
}

impl Session<'_> {
    /// Writes what `verdict` and `observed` call for (see the module doc). A read-only store
    /// writes nothing (and says so of lying rows).
    pub(crate) fn apply(
        &mut self,
        layer: &str,
        verdict: Verdict<'_>,
        observed: &[Observation<'_>],
    ) -> Result<()> {
        if !self.cache.store.is_read_only() {
            match verdict {
                Verdict::Miss => {}
                Verdict::HitCurrent(rec) => self.hit_on_current(layer, rec, observed)?,
                Verdict::HitOther { rec, from } => self.switch_to(layer, rec, from, observed)?,
            }
        }
        let lied: Vec<&LyingRow> = observed.iter().flat_map(|o| &o.lied).collect();
        if !lied.is_empty() {
            self.distrust_rows(layer, &lied)?;
        }
        Ok(())
    }

    /// After a hit on the current version: refresh stale stat data, and record the use if the
    /// stored one is older than [`LAST_USE_GRANULARITY_MS`].
    fn hit_on_current(
        &mut self,
        layer: &str,
        rec: &VersionRecord,
        observed: &[Observation<'_>],
    ) -> Result<()> {
        let store = &self.cache.store;
        let now = now_ms();
        let stale_use = store
            .snapshot()?
            .last_used(layer, &rec.input_digest)?
            .is_none_or(|t| now.saturating_sub(t) >= LAST_USE_GRANULARITY_MS);
        if observed.iter().all(|o| o.stale.is_empty()) {
            // Only the use to record: optional, skipped when the write lock is busy.
            if stale_use && let Some(batch) = store.try_batch()? {
                batch.touch(layer, &rec.input_digest, now)?;
                batch.commit()?;
                self.counters.writes_committed += 1;
            }
            return Ok(());
        }
        self.refresh_rows(layer, observed, &rec.input_digest)
    }

    /// Records the current stat data of rows whose content was equal but whose stat was stale,
    /// missing or racy, so the next lookup reads nothing; and, in the first transaction, the
    /// use of `touch`. Each refreshed row is true on its own (this stat, this verified
    /// digest), so the rows are written in batches of their own transactions.
    fn refresh_rows(
        &mut self,
        layer: &str,
        observed: &[Observation<'_>],
        touch: &[u8; 32],
    ) -> Result<()> {
        let store = &self.cache.store;
        let mut done = 0u64;
        let mut touch = Some(touch);
        let mut items = stale_rows(observed).peekable();
        loop {
            crash_point!("refresh::before_batch");
            // Optional: never wait for another process's write.
            let Some(batch) = store.try_batch()? else {
                self.counters.writes_skipped_busy += 1;
                tracing::debug!(
                    layer,
                    "stat refresh skipped: another process holds the write lock"
                );
                break;
            };
            if let Some(d) = touch.take() {
                batch.touch(layer, d, now_ms())?;
            }
            done += batch.update_rows_expecting(
                layer,
                items.by_ref().take(REFRESH_BATCH),
                refresh_stat,
            )?;
            crash_point!("refresh::before_commit");
            batch.commit()?;
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
    /// flipped back): in one write transaction, the rows are brought to the trees as walked
    /// (`write_switched_rows`), stale stat data is refreshed, the pointer moves to `rec` with a
    /// new generation and the use is recorded. Skipped, the hit standing, when the write lock
    /// is busy or the layer changed since the lookup read it.
    fn switch_to(
        &mut self,
        layer: &str,
        rec: &VersionRecord,
        from: Option<&LayerRecord>,
        observed: &[Observation<'_>],
    ) -> Result<()> {
        crash_point!("switch::before_write");
        // Optional: when a put or another lookup holds the write lock, the hit stands and the
        // rows stay as they are (the next lookup hashes what differs again), rather than
        // queueing every lookup of two trees taking turns behind each other's writes.
        let Some(batch) = self.cache.store.try_batch()? else {
            tracing::debug!(layer, "write lock busy; version switch skipped");
            return Ok(());
        };
        let unchanged = match (from, batch.pointer(layer)?) {
            (Some(a), Some(Ok(b))) => *a == b,
            (None, None | Some(Err(_))) => true,
            _ => false,
        };
        if !unchanged {
            tracing::debug!(
                layer,
                "the layer changed since the lookup; rows left as they are"
            );
            return Ok(());
        }
        // `None`: a source cannot be written as it was seen; the batch is dropped unwritten.
        let Some(rewritten) = self.write_switched_rows(&batch, layer, observed)? else {
            return Ok(());
        };
        let done = batch.update_rows_expecting(layer, stale_rows(observed), refresh_stat)?;
        let generation = from.map_or(0, |p| p.generation).wrapping_add(1);
        let pointer = LayerRecord {
            current: rec.input_digest,
            generation,
        };
        batch.write_pointer(layer, &pointer)?;
        batch.touch(layer, &rec.input_digest, now_ms())?;
        crash_point!("switch::before_commit");
        batch.commit()?;
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

    /// Makes the rows in `batch` describe every source as observed: the rows of sources the
    /// layer no longer has are removed, a diffed source gets only the rows that differ, and a
    /// source that was not diffed (none stored for it, or its root type changed) is walked
    /// again into rows and must give the Merkle root the lookup walked. Returns the rows
    /// written or removed; `None` when a source is gone or changed since the lookup.
    fn write_switched_rows(
        &mut self,
        batch: &Batch,
        layer: &str,
        observed: &[Observation<'_>],
    ) -> Result<Option<u64>> {
        let keep: BTreeSet<String> = observed.iter().map(|o| o.row_source.clone()).collect();
        batch.remove_rows_except(layer, &keep)?;
        let mut rewritten = 0u64;
        for o in observed {
            let Some(tree) = &o.tree else {
                return Ok(None);
            };
            if let Some(changes) = &tree.changes {
                rewritten +=
                    batch.write_rows(layer, &o.row_source, &changes.removed, &changes.upserts)?;
                continue;
            }
            let mut walk = TreeWalk::new(o.path)?;
            // Every row written (no stored rows to merge with: they describe another version).
            let (summary, _) = batch.write_tree(
                layer,
                &o.row_source,
                o.path,
                walk.by_ref(),
                None,
                &|_, _| false,
            )?;
            self.counters.walk.add(&walk.counters());
            rewritten += summary.rows;
            if summary.root_digest != tree.root_digest {
                tracing::debug!(layer, "a source changed during the lookup; rows kept");
                return Ok(None);
            }
        }
        Ok(Some(rewritten))
    }

    /// Clears the stat data of rows that a verify lookup found lying, so neither a later lookup
    /// nor a put's walk reuses their digest (the content is read again). Only stat data
    /// changes: the Merkle roots do not cover it, so the version stays consistent with its
    /// rows. A read-only store skips it (and says so).
    fn distrust_rows(&mut self, layer: &str, lied: &[&LyingRow]) -> Result<()> {
        let store = &self.cache.store;
        if store.is_read_only() {
            tracing::warn!(
                layer = %escape_bytes(layer.as_bytes()),
                rows = lied.len(),
                "rows with lying stat data found, but the cache is open read-only: not cleared"
            );
            return Ok(());
        }
        let batch = store.batch()?;
        let rows = lied.iter().map(|l| (l.source.as_str(), l.path.clone(), ()));
        batch.update_rows(layer, rows, |row, ()| Some(Row { stat: None, ..row }))?;
        batch.commit()?;
        self.counters.writes_committed += 1;
        tracing::warn!(
            layer = %escape_bytes(layer.as_bytes()),
            rows = lied.len(),
            "stat data matched but content differed: cleared the stat data of those rows"
        );
        Ok(())
    }
}

/// The rows a hit refreshes, with their rows-table source name, source by source in walk
/// order: each the row the lookup verified, with the stat data it was verified under.
fn stale_rows<'a>(
    observed: &'a [Observation<'_>],
) -> impl Iterator<Item = (&'a str, RelPath, Row)> + 'a {
    observed.iter().flat_map(|o| {
        o.stale
            .entries()
            .map(move |e| (o.row_source.as_str(), e.path, e.row))
    })
}

/// The stored row with the stat data `verified` was verified under — only when it is still
/// equal, in every compared property, to the row this lookup verified on disk (another
/// session may have put the layer from another tree meanwhile).
fn refresh_stat(stored: Row, verified: &Row) -> Option<Row> {
    let stat = verified.stat?;
    stored.compared_eq(verified).then_some(Row {
        stat: Some(stat),
        ..stored
    })
}
