//! Observing one source of a layer: walk it, diff it against its stored rows, and return what
//! was seen as an [`Observation`]. As gix-status does, the stat updates are delegated to the
//! caller: the observation carries the verified rows whose stat data a hit should refresh, the
//! rows that differ from the stored ones (what a version switch writes), the rows whose stat
//! data lied (verify), and what a put is checked against ([`Observed`]).
//!
//! Owns: the walk and diff of one source ([`Observer::observe`]); the tee that feeds the walk's
//! stat fast path and the diff from one range scan; the check of the stored rows against the
//! version's summary of them (row count and Merkle root); the rule that queues a verified row
//! for a stat refresh (`worth_refreshing`, which defers to [`fastpath::needs_refresh`]) and
//! the rule that a stored row lied (`lies`).
//!
//! Must never: write to the database (that is `engine/apply.rs`, from the observations), decide
//! a hit or the order of miss reasons (that is `engine/lookup.rs`), or decide what stat data
//! vouches for (that is [`crate::tree::fastpath`]). Depends on `engine/source.rs` (what a
//! source is) and nothing else of the engine.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use crate::diff::{Merged, diff_trees_visit};
use crate::error::{Error, Result};
use crate::path::{RelPath, escape_bytes, show_path};
use crate::reason::MissReason;
use crate::schema::{EntryKind, Row, SourceSummary};
use crate::store::{RowIter, Snapshot};
use crate::tree::{
    FastPath, PairedHasher, Progress, TreeWalk, WalkCounters, WalkLog, WalkedEntry, fastpath,
};

use super::source::{LyingRow, Observed, SourceId, SourceMiss, SourceRef, SourceRole};

/// How one lookup observes its sources: the same snapshot, layer and mode for each.
pub(crate) struct Observer<'s> {
    /// The lookup's read snapshot.
    pub(crate) snapshot: &'s Snapshot,
    /// The layer.
    pub(crate) layer: &'s str,
    /// Keep what was seen (the walk log), for a put.
    pub(crate) keep: bool,
    /// Hash every file whatever its stat data, and report stored rows whose stat data matched
    /// while the content differed.
    pub(crate) verify: bool,
    /// Where the walks report their work (see [`Progress`]).
    pub(crate) progress: &'s Arc<Progress>,
}

/// What observing one source saw. Nothing is written while observing: a later apply step
/// takes what it needs from here.
pub(crate) struct Observation<'i> {
    /// Import or overlay dir.
    pub(crate) role: SourceRole,
    /// Its identity key.
    pub(crate) key: Cow<'i, str>,
    /// The source name of its rows (`import:KEY`, `overlay:KEY`).
    pub(crate) row_source: String,
    /// Where it is on disk (a version switch walks a source it did not diff again, into rows).
    pub(crate) path: &'i Path,
    /// The miss reason, when diffed against stored rows and it differs (or is gone, changed
    /// its root type, or its rows are damaged).
    pub(crate) reason: Option<MissReason>,
    /// What was seen, for a put (when asked to keep it and the source exists).
    pub(crate) seen: Option<Observed>,
    /// The walk's work.
    pub(crate) counters: WalkCounters,
    /// The tree as walked, for the input digest; `None` when the source is gone from the disk.
    pub(crate) tree: Option<WalkedTree>,
    /// Stored rows whose stat data lied (verify only).
    pub(crate) lied: Vec<LyingRow>,
    /// Walked entries verified equal to their stored row whose stat data cannot vouch for them
    /// next time: what a hit refreshes (see `worth_refreshing`). A compact log (~70 bytes an
    /// entry): a touched 10^6-file tree holds one item per file until the lookup ends.
    pub(crate) stale: WalkLog,
}

/// One source's tree as the lookup walked it: what the input digest takes from it, and the
/// rows that differ from the stored ones (for a hit on another version, which makes the rows
/// describe the tree as it is now).
pub(crate) struct WalkedTree {
    /// Type of the root.
    pub(crate) root_kind: EntryKind,
    /// Merkle root over the walked rows (what a put of this tree would record).
    pub(crate) root_digest: [u8; 32],
    /// False when an entry changed while it was read, or the stored rows the fast path used
    /// turned out damaged: then the root vouches for nothing and cannot hit.
    pub(crate) trusted: bool,
    /// The walked rows that differ from the stored ones (new or changed) and the stored paths
    /// that are gone; `None` when the walk was not diffed against the rows.
    pub(crate) changes: Option<RowChanges>,
}

/// The difference between the stored rows of a source and its walk, as rows to write.
#[derive(Default)]
pub(crate) struct RowChanges {
    /// (path key, walked row) of paths new or changed since the rows were stored.
    pub(crate) upserts: Vec<(Box<[u8]>, Row)>,
    /// Stored paths no longer on disk.
    pub(crate) removed: Vec<RelPath>,
}

/// How the diff against the stored rows ended.
struct Compared {
    reason: Option<MissReason>,
    /// The stored paths gone from the disk, when the diff ran to its end on sound rows.
    removed: Option<Vec<RelPath>>,
    /// The stored rows were damaged (the fast path may have used them).
    damaged: bool,
}

impl Compared {
    /// Not diffed (no stored rows to diff against).
    const NOT_DIFFED: Compared = Compared {
        reason: None,
        removed: None,
        damaged: false,
    };
}

impl<'i> Observation<'i> {
    /// The observation of `source` before (or without) a walk: nothing seen yet.
    fn unwalked(source: SourceRef<'i>) -> Self {
        Observation {
            role: source.role,
            row_source: source.id().row_source(),
            path: source.path,
            reason: None,
            seen: None,
            counters: WalkCounters::default(),
            tree: None,
            lied: Vec::new(),
            stale: WalkLog::new(),
            key: source.ident,
        }
    }
}

impl Observer<'_> {
    /// Walks `source`: diffs it against its stored rows when `summary` (the current version's
    /// summary of it) is given, keeps what was seen when asked to, and notes the rows a hit
    /// should refresh. Writes nothing.
    pub(crate) fn observe<'i>(
        &self,
        source: SourceRef<'i>,
        summary: Option<&SourceSummary>,
    ) -> Result<Observation<'i>> {
        let mut obs = Observation::unwalked(source);
        let id = SourceId {
            role: obs.role,
            key: &obs.key,
        };
        let Some(kind_now) = root_kind(obs.path)? else {
            let path = show_path(obs.path);
            obs.reason = summary.map(|_| id.miss(SourceMiss::Gone { path }));
            return Ok(obs);
        };
        let mut rec = Recorder::new(self.keep, self.verify);
        let compared = match summary {
            Some(summary) => self.walk_diffed(&id, obs.path, summary, kind_now, &mut rec)?,
            None => {
                let mut walk = TreeWalk::new(obs.path)?;
                walk.report_to(Arc::clone(self.progress));
                rec.drain(&mut walk)?;
                rec.counters.add(&walk.counters());
                Compared::NOT_DIFFED
            }
        };
        let (root_digest, row_count) = rec.finish();
        obs.tree = Some(WalkedTree {
            root_kind: rec.root_kind.unwrap_or(kind_now),
            root_digest,
            trusted: !rec.unstable && !compared.damaged,
            changes: compared.removed.map(|removed| RowChanges {
                upserts: std::mem::take(&mut rec.upserts),
                removed,
            }),
        });
        obs.seen = match (self.keep, compared.damaged) {
            (false, _) => None,
            // The walk's fast path may have taken digests from damaged rows: what a put is
            // checked against comes from a walk that reads every file.
            (true, true) => Some(rec.observe_again(&id, obs.path)?),
            (true, false) => Some(rec.observed(&id, root_digest, row_count)),
        };
        obs.reason = compared.reason;
        obs.lied = rec.lied_rows(&obs.row_source);
        obs.counters = rec.counters;
        obs.stale = rec.stale;
        Ok(obs)
    }

    /// Walks the source with its stored rows (one range scan feeds both the walk's stat fast
    /// path and the diff) and compares the two.
    fn walk_diffed(
        &self,
        id: &SourceId<'_>,
        path: &Path,
        summary: &SourceSummary,
        kind_now: EntryKind,
        rec: &mut Recorder,
    ) -> Result<Compared> {
        let scan = self.snapshot.rows(self.layer, &id.row_source())?;
        let (for_walk, for_diff) = tee_rows(scan);
        // A verify walk takes nothing from the stored rows: every file is read.
        let mut walk = if self.verify {
            drop(for_walk);
            TreeWalk::new(path)?
        } else {
            TreeWalk::with_prior(path, Box::new(for_walk))?
        };
        walk.report_to(Arc::clone(self.progress));
        self.progress.expect(summary.rows);
        let compared = compare(id, summary, kind_now, for_diff, &mut walk, rec)?;
        rec.counters.add(&walk.counters());
        Ok(compared)
    }
}

/// The type of the source's root, `None` when it is gone from the disk.
fn root_kind(path: &Path) -> Result<Option<EntryKind>> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(Some(EntryKind::Dir)),
        Ok(_) => Ok(Some(EntryKind::File)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot stat", path, e)),
    }
}

/// Compares the source's walk with its stored rows and the version's summary of them.
fn compare(
    id: &SourceId<'_>,
    summary: &SourceSummary,
    kind_now: EntryKind,
    stored: TeeDiff,
    walk: &mut TreeWalk,
    rec: &mut Recorder,
) -> Result<Compared> {
    if let Some(reason) = root_type_changed(id, summary, kind_now) {
        // Nothing is queued for the diff's side once it is dropped.
        drop(stored);
        rec.drain(walk)?;
        return Ok(Compared {
            reason: Some(reason),
            ..Compared::NOT_DIFFED
        });
    }
    // A damaged row ends the stored stream and makes this a miss (it costs this entry, not the
    // lookup); the walk still runs to its end for the observation. The stored rows are also
    // checked against the entry's summary (row count and Merkle root): bincode has no checksum,
    // and a row lost or altered by damage to the file must not turn into a hit (a lost row of a
    // file deleted since would).
    let mut damage: Option<String> = None;
    let stored = stored.map_while(|r| match r {
        Err(e @ Error::Corrupt { .. }) => {
            damage = Some(e.to_string());
            None
        }
        other => Some(other),
    });
    // Every stored row the merge reads is hashed in one of its steps (gone, or with the walked
    // entry of its path), in key order; while they agree, one hasher stands for both roots.
    let diff = diff_trees_visit(stored, walk.by_ref(), |step| match step {
        Merged::Removed(p, row) => {
            rec.hasher.push_stored(p, row);
            false
        }
        Merged::Fresh(e, s) => rec.record(e, s),
    })?;
    let stored_root = rec.hasher.finish_stored();
    if let Some(detail) = damage.or_else(|| summary_mismatch(id, summary, stored_root)) {
        rec.drain(walk)?;
        return Ok(Compared {
            reason: Some(MissReason::DamagedEntry { detail }),
            removed: None,
            damaged: true,
        });
    }
    Ok(Compared {
        removed: Some(diff.removed.clone()),
        reason: (!diff.is_empty()).then(|| id.miss(SourceMiss::ContentChanged(diff))),
        damaged: false,
    })
}

/// The miss of an import whose root changed between file and directory, if it did.
fn root_type_changed(
    id: &SourceId<'_>,
    summary: &SourceSummary,
    kind_now: EntryKind,
) -> Option<MissReason> {
    (id.role == SourceRole::Import
        && summary.root_kind != kind_now
        && matches!(summary.root_kind, EntryKind::File | EntryKind::Dir))
    .then(|| MissReason::ImportTypeChanged {
        key: id.key.to_string(),
        old: summary.root_kind,
        new: kind_now,
    })
}

/// Why the stored rows (their Merkle root and count, `stored_root`) do not match the version's
/// summary of them, if they do not.
fn summary_mismatch(
    id: &SourceId<'_>,
    summary: &SourceSummary,
    stored_root: ([u8; 32], u64),
) -> Option<String> {
    let (root, n) = stored_root;
    ((root, n) != (summary.root_digest, summary.rows)).then(|| {
        format!(
            "the stored rows of {} do not match the entry ({n} rows stored, {} recorded, or a \
             different Merkle root): the database is damaged",
            escape_bytes(id.row_source().as_bytes()),
            summary.rows
        )
    })
}

/// Collects, per walked entry, the observation, the rows to refresh, the Merkle root of the
/// walk, and the rows that differ from the stored ones.
struct Recorder {
    keep: bool,
    verify: bool,
    lied: Vec<RelPath>,
    log: WalkLog,
    stale: WalkLog,
    /// The walk's Merkle root and, in a diff, the stored rows' (each row hashed once while the
    /// two agree).
    hasher: PairedHasher,
    root_kind: Option<EntryKind>,
    unstable: bool,
    upserts: Vec<(Box<[u8]>, Row)>,
    counters: WalkCounters,
}

impl Recorder {
    fn new(keep: bool, verify: bool) -> Self {
        Recorder {
            keep,
            verify,
            lied: Vec::new(),
            log: WalkLog::new(),
            stale: WalkLog::new(),
            hasher: PairedHasher::new(),
            root_kind: None,
            unstable: false,
            upserts: Vec::new(),
            counters: WalkCounters::default(),
        }
    }

    /// Records one walked entry (for the observation; the caller hashes it).
    fn note(&mut self, e: &WalkedEntry) {
        if self.keep {
            self.log.push(e);
        }
        if e.path.is_root() {
            self.root_kind = Some(e.row.kind);
        }
        self.unstable |= e.unstable;
    }

    /// Records one walked entry (for the observation and the walk's root).
    fn push(&mut self, e: &WalkedEntry) {
        self.note(e);
        self.hasher.push_walked(&e.path, &e.row);
    }

    /// Records one walked entry matched with its stored row (if any); returns
    /// `stored.compared_eq(&e.row)` (false without a stored row), computed once here for the
    /// Merkle roots, the refresh, the row changes and the diff.
    fn record(&mut self, e: &WalkedEntry, stored: Option<&Row>) -> bool {
        self.note(e);
        match stored {
            Some(stored) => {
                let same = stored.compared_eq(&e.row);
                self.hasher.push_both(&e.path, stored, &e.row, same);
                if self.verify && lies(stored, e) {
                    self.lied.push(e.path.clone());
                }
                if worth_refreshing(stored, e, same) {
                    self.stale.push(e);
                }
                if !same {
                    self.upserts.push((e.path.key().into(), e.row.clone()));
                }
                same
            }
            None => {
                self.hasher.push_walked(&e.path, &e.row);
                self.upserts.push((e.path.key().into(), e.row.clone()));
                false
            }
        }
    }

    /// Records the rest of the walk (for the observation and the root; not diffed, so no
    /// row changes are kept).
    fn drain(&mut self, walk: &mut TreeWalk) -> Result<()> {
        for e in walk.by_ref() {
            self.push(&e?);
        }
        Ok(())
    }

    /// The Merkle root and row count of what was recorded; the hasher starts again.
    fn finish(&mut self) -> ([u8; 32], u64) {
        std::mem::take(&mut self.hasher).finish_walked()
    }

    /// What a put is checked against, from what was recorded.
    fn observed(&mut self, id: &SourceId<'_>, root: [u8; 32], rows: u64) -> Observed {
        Observed {
            role: id.role,
            key: id.key.to_string(),
            root_digest: (!self.unstable).then_some(root),
            row_count: rows,
            log: Some(std::mem::take(&mut self.log).seal()),
        }
    }

    /// Forgets the walk recorded so far (not the rows to refresh) and observes the source
    /// again with a walk that reads every file.
    fn observe_again(&mut self, id: &SourceId<'_>, path: &Path) -> Result<Observed> {
        self.log = WalkLog::new();
        self.root_kind = None;
        self.unstable = false;
        self.hasher = PairedHasher::new();
        let mut walk = TreeWalk::new(path)?;
        self.drain(&mut walk)?;
        self.counters.add(&walk.counters());
        let (root, rows) = self.finish();
        Ok(self.observed(id, root, rows))
    }

    /// The rows that lied, named with their source.
    fn lied_rows(&mut self, row_source: &str) -> Vec<LyingRow> {
        std::mem::take(&mut self.lied)
            .into_iter()
            .map(|path| LyingRow {
                source: row_source.to_string(),
                path,
            })
            .collect()
    }
}

/// True when `stored`'s stat data vouches for the content of `e` (the fast path would have
/// reused its digest) while the content read now differs: the stat data lied.
fn lies(stored: &Row, e: &WalkedEntry) -> bool {
    !e.unstable
        && e.row.kind == EntryKind::File
        && stored.kind == EntryKind::File
        && stored.digest != e.row.digest
        && fastpath::content(stored, &e.row, &e.stat) == FastPath::Reuse
}

/// True when `e` matched `stored` in content (a stable entry, equal in every compared property:
/// `same`, which is [`Row::compared_eq`], computed once by the caller) but `stored`'s stat data
/// cannot vouch for it next time; that part is [`fastpath::needs_refresh`], defined by the
/// fast path's own conditions.
fn worth_refreshing(stored: &Row, e: &WalkedEntry, same: bool) -> bool {
    debug_assert_eq!(same, stored.compared_eq(&e.row));
    same && !e.unstable
        && e.row.kind == stored.kind
        && e.row.stat.is_some()
        && fastpath::needs_refresh(stored, &e.row, &e.stat)
}

/// The two readers of one scan of stored rows: the walk (for the stat fast path) and the diff.
/// Each takes rows in key order; whichever is ahead pulls from the scan and queues a copy for
/// the other, so rows are read and decoded once. The walk runs at most a couple of windows ahead
/// of the diff, which bounds the queue, except after a damaged row ends the diff's stream (then
/// the rest of that one source is queued until the lookup ends). Nothing is queued for a side
/// that was dropped. A row that fails to decode goes to the diff only (the walk ignores it).
struct Tee {
    scan: RowIter,
    for_walk: VecDeque<(RelPath, Row)>,
    for_diff: VecDeque<Result<(RelPath, Row)>>,
}

/// The walk's side of a [`Tee`].
struct TeeWalk(Rc<RefCell<Tee>>);
/// The diff's side of a [`Tee`].
struct TeeDiff(Rc<RefCell<Tee>>);

fn tee_rows(scan: RowIter) -> (TeeWalk, TeeDiff) {
    let t = Rc::new(RefCell::new(Tee {
        scan,
        for_walk: VecDeque::new(),
        for_diff: VecDeque::new(),
    }));
    (TeeWalk(t.clone()), TeeDiff(t))
}

impl Iterator for TeeWalk {
    type Item = Result<(RelPath, Row)>;

    fn next(&mut self) -> Option<Self::Item> {
        // Nothing is queued for a side that was dropped.
        let diff_alive = Rc::strong_count(&self.0) > 1;
        let mut t = self.0.borrow_mut();
        if let Some(row) = t.for_walk.pop_front() {
            return Some(Ok(row));
        }
        loop {
            match t.scan.next()? {
                Ok(row) => {
                    if diff_alive {
                        t.for_diff.push_back(Ok(row.clone()));
                    }
                    return Some(Ok(row));
                }
                Err(e) if diff_alive => t.for_diff.push_back(Err(e)),
                Err(_) => {}
            }
        }
    }
}

impl Iterator for TeeDiff {
    type Item = Result<(RelPath, Row)>;

    fn next(&mut self) -> Option<Self::Item> {
        let walk_alive = Rc::strong_count(&self.0) > 1;
        let mut t = self.0.borrow_mut();
        if let Some(item) = t.for_diff.pop_front() {
            return Some(item);
        }
        match t.scan.next()? {
            Ok(row) => {
                if walk_alive {
                    t.for_walk.push_back(row.clone());
                }
                Some(Ok(row))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert!(!worth_refreshing(&stored, &entry(stored.clone()), true));
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
        assert!(worth_refreshing(&stored, &e, stored.compared_eq(&e.row)));
    }

    #[test]
    fn a_racy_row_is_refreshed() {
        let racy = RowStat {
            snapshot_ns: 1_000_000_001,
            ..settled()
        };
        let stored = file_row(racy);
        assert!(worth_refreshing(&stored, &entry(stored.clone()), true));
    }

    /// A row that differs in a compared property is never refreshed, however stale its stat
    /// data (its stat data would then vouch for content it was not verified under).
    #[test]
    fn a_row_that_differs_is_not_refreshed() {
        let racy = RowStat {
            snapshot_ns: 1_000_000_001,
            ..settled()
        };
        let stored = file_row(racy);
        let mut now = stored.clone();
        now.mode ^= 0o100;
        assert!(!worth_refreshing(&stored, &entry(now), false));
    }
}
