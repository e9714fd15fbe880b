//! One source of a layer: its identity, its walk and diff against the stored rows, and what a
//! lookup observed of it.
//!
//! Owns: [`SourceRole`] and [`SourceId`], the one spelling of a source (`import:KEY` /
//! `overlay:KEY` in the rows table, `import` / `overlay_dir` in messages, and the miss reasons
//! of each role); the cached sources of a layer; [`SourceCheck`], which walks one source and
//! diffs it against its stored rows; the tee that feeds the walk's stat fast path and the diff
//! from one range scan; [`Observed`], what a lookup saw for a later put (its walk log), and how a
//! put's entry is compared with it ([`same_as_observed`]).
//!
//! Must never: write to the database, or decide what stat data vouches for (that is
//! [`crate::tree::fastpath`]).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use serde::Serialize;

use crate::diff::{TreeDiff, diff_trees};
use crate::error::{Error, Result};
use crate::inputs::LayerInputs;
use crate::path::{RelPath, escape_bytes, show_path};
use crate::reason::MissReason;
use crate::schema::{EntryKind, Row, SourceSummary, VersionRecord};
use crate::store::{RowIter, Store};
use crate::tree::{
    FastPath, Progress, SealedLog, TreeHasher, TreeWalk, WalkCounters, WalkLog, WalkedEntry,
    fastpath,
};

use super::refresh::RefreshList;

pub use crate::version::SourceRole;

/// The identity of one source of a layer: its role and key. Every spelling of a source goes
/// through here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SourceId<'a> {
    /// Import or overlay dir.
    pub(crate) role: SourceRole,
    /// The key the builder gave it.
    pub(crate) key: &'a str,
}

/// What happened to a source, whichever its role: [`SourceId::miss`] turns it into the
/// role's [`MissReason`].
pub(crate) enum SourceMiss {
    /// The entry has no source of this key.
    New,
    /// The entry has it, the layer no longer does.
    Removed,
    /// It is gone from the disk (`path` as displayed).
    Gone {
        /// Where it was looked for.
        path: String,
    },
    /// Its tree differs from the stored rows.
    ContentChanged(TreeDiff),
}

impl<'a> SourceId<'a> {
    /// The source name of its rows in the rows table: `import:KEY` or `overlay:KEY`.
    pub(crate) fn row_source(&self) -> String {
        match self.role {
            SourceRole::Import => format!("import:{}", self.key),
            SourceRole::OverlayDir => format!("overlay:{}", self.key),
        }
    }

    /// The identity behind a rows-table source name (the inverse of [`Self::row_source`]).
    pub(crate) fn parse(row_source: &'a str) -> Option<Self> {
        if let Some(key) = row_source.strip_prefix("import:") {
            return Some(SourceId {
                role: SourceRole::Import,
                key,
            });
        }
        row_source.strip_prefix("overlay:").map(|key| SourceId {
            role: SourceRole::OverlayDir,
            key,
        })
    }

    /// How messages name the role: `import` or `overlay_dir` (the plan's field names).
    /// The miss reason of this source's role for `what`. An overlay dir gone from the disk is
    /// reported as its whole tree removed.
    pub(crate) fn miss(&self, what: SourceMiss) -> MissReason {
        let key = self.key.to_string();
        match (self.role, what) {
            (SourceRole::Import, SourceMiss::New) => MissReason::ImportNew { key },
            (SourceRole::OverlayDir, SourceMiss::New) => MissReason::OverlayDirNew { key },
            (SourceRole::Import, SourceMiss::Removed) => MissReason::ImportRemoved { key },
            (SourceRole::OverlayDir, SourceMiss::Removed) => MissReason::OverlayDirRemoved { key },
            (SourceRole::Import, SourceMiss::Gone { path }) => {
                MissReason::ImportMissing { key, path }
            }
            (SourceRole::OverlayDir, SourceMiss::Gone { .. }) => {
                MissReason::OverlayDirContentChanged {
                    key,
                    diff: TreeDiff {
                        removed: vec![RelPath::root()],
                        ..Default::default()
                    },
                }
            }
            (SourceRole::Import, SourceMiss::ContentChanged(diff)) => {
                MissReason::ImportContentChanged { key, diff }
            }
            (SourceRole::OverlayDir, SourceMiss::ContentChanged(diff)) => {
                MissReason::OverlayDirContentChanged { key, diff }
            }
        }
    }
}

/// One cached source of a layer: an import (with or without a `dest`), or an overlay dir.
pub(crate) struct SourceRef<'a> {
    /// Import or overlay dir.
    pub(crate) role: SourceRole,
    /// Its identity key: the builder's key, or for an import with a `dest` the key and the
    /// destination together ([`import_identity`]).
    pub(crate) ident: Cow<'a, str>,
    /// The tree that is walked and cached.
    pub(crate) path: &'a Path,
    /// For an overlay dir, its builder's copy in the rootfs (an output: `engine/outputs.rs`).
    pub(crate) rootfs_path: Option<&'a Path>,
}

impl SourceRef<'_> {
    /// Its identity.
    pub(crate) fn id(&self) -> SourceId<'_> {
        SourceId {
            role: self.role,
            key: &self.ident,
        }
    }
}

/// The identity key of an import: its key, or for an import with a destination the JSON array
/// `["KEY","DEST"]`, so the same URL imported to two destinations is two sources (and a dest
/// change is a new import). JSON quoting makes the pair unambiguous; a key without a `dest`
/// that looks like such a pair is refused by [`check_import_keys`].
pub(crate) fn import_identity<'a>(key: &'a str, dest: Option<&str>) -> Cow<'a, str> {
    match dest {
        None => Cow::Borrowed(key),
        Some(dest) => Cow::Owned(serde_json::json!([key, dest]).to_string()),
    }
}

/// Refuses an import key (without a `dest`) that could be mistaken for the identity of an
/// import with one, and a `dest` holding a NUL byte.
pub(crate) fn check_import_keys(inputs: &LayerInputs) -> Result<()> {
    for i in &inputs.imports {
        match &i.dest {
            None if i.key.starts_with("[\"") => {
                return Err(Error::InvalidName {
                    what: "import key",
                    value: escape_bytes(i.key.as_bytes()),
                    why: "a key starting with [\" is reserved for imports with a dest; \
                          rename the import",
                });
            }
            Some(d) if d.contains('\0') => {
                return Err(Error::InvalidName {
                    what: "import dest",
                    value: escape_bytes(d.as_bytes()),
                    why: "it contains a NUL byte",
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// The cached sources of a layer, imports first, in the order the builder gave them. Every
/// import is an input, with or without a `dest`.
pub(crate) fn cached_sources(inputs: &LayerInputs) -> impl Iterator<Item = SourceRef<'_>> {
    let imports = inputs.imports.iter().map(|i| SourceRef {
        role: SourceRole::Import,
        ident: import_identity(&i.key, i.dest.as_deref()),
        path: &i.path,
        rootfs_path: None,
    });
    let overlays = inputs.overlay_dirs.iter().map(|o| SourceRef {
        role: SourceRole::OverlayDir,
        ident: Cow::Borrowed(o.key.as_str()),
        path: &o.source,
        rootfs_path: Some(&o.rootfs_path),
    });
    imports.chain(overlays)
}

/// The summaries an entry recorded for one role.
pub(crate) fn summaries(rec: &VersionRecord, role: SourceRole) -> &[SourceSummary] {
    match role {
        SourceRole::Import => &rec.imports,
        SourceRole::OverlayDir => &rec.overlay_dirs,
    }
}

/// What a lookup saw of one source: its Merkle root and row count and a compact copy of its
/// walk ([`SealedLog`]: every path's row with the stat data it was taken under, in key order).
/// Put walks the source again with the log as its stat cache (a file whose stat data is
/// unchanged since the lookup hashed it, and not racy under [`crate::tree::fastpath`], is not
/// read again) and compares its own walk against it, so inputs that change between lookup and
/// put are caught and named.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Import or overlay dir.
    pub role: SourceRole,
    /// Its identity key (for an import with a dest, the key and dest together).
    pub key: String,
    /// Merkle root of the walked tree ([`TreeHasher`]); `None` when an entry changed while the
    /// lookup read it (then it vouches for nothing, and a put is refused).
    pub root_digest: Option<[u8; 32]>,
    /// Rows walked.
    pub row_count: u64,
    /// The walk, entry by entry (~70 bytes an entry, one allocation). `None` when read back
    /// from a [`LookupRecord`](super::LookupRecord) without a sound walk log: the put then
    /// reads every file and compares the root and row count.
    pub(crate) log: Option<SealedLog>,
}

impl Observed {
    /// Entries the lookup walked and kept (0 when it kept no walk log).
    pub fn logged_entries(&self) -> u64 {
        self.log.as_ref().map_or(0, SealedLog::len)
    }

    /// Bytes the kept walk log takes in memory.
    pub fn logged_bytes(&self) -> usize {
        self.log.as_ref().map_or(0, SealedLog::bytes)
    }
}

/// A stored row whose stat data matched the file on disk (so the fast path would have reused
/// its digest) while the content differed: found by a verify lookup
/// ([`LookupMode::verify`](super::LookupMode::verify)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LyingRow {
    /// The row source (`import:KEY`, `overlay:KEY`).
    pub source: String,
    /// The path, relative to the source's root.
    pub path: RelPath,
}

/// True when a put's walked entry equals what the lookup observed of the same path: both
/// stable and equal in every compared property. An entry that changed while either walk read
/// it is never taken as unchanged.
pub(crate) fn same_as_observed(seen: &Row, seen_unstable: bool, now: &WalkedEntry) -> bool {
    !seen_unstable && !now.unstable && seen.compared_eq(&now.row)
}

/// Walks one source of a layer: diffs it against its stored rows when `summary` is given,
/// keeps what was seen when `observe` is set, and queues rows whose stat data a hit should
/// refresh.
pub(crate) struct SourceCheck<'s> {
    /// The store holding the rows.
    pub(crate) store: &'s Store,
    /// The lookup's read transaction.
    pub(crate) txn: &'s redb::ReadTransaction,
    /// The layer.
    pub(crate) layer: &'s str,
    /// The source.
    pub(crate) source: &'s SourceRef<'s>,
    /// What the entry recorded for it; `None` to walk without deciding anything.
    pub(crate) summary: Option<&'s SourceSummary>,
    /// Keep what was seen, for a put.
    pub(crate) observe: bool,
    /// Hash every file whatever its stat data, and report stored rows whose stat data matched
    /// while the content differed.
    pub(crate) verify: bool,
    /// Where the walks report their work (see [`Progress`]).
    pub(crate) progress: &'s Arc<Progress>,
}

/// What [`SourceCheck::run`] found.
pub(crate) struct Checked {
    /// The miss reason, when a summary was given and the source differs from it.
    pub(crate) reason: Option<MissReason>,
    /// What was seen, when asked to observe and the source exists.
    pub(crate) observed: Option<Observed>,
    /// The walk's work.
    pub(crate) counters: WalkCounters,
    /// The tree as walked, for the input digest; `None` when the source is gone from the disk.
    pub(crate) tree: Option<WalkedTree>,
    /// Stored rows whose stat data lied (verify only).
    pub(crate) lied: Vec<LyingRow>,
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

/// Collects, per walked entry, the observation, the rows to refresh, the Merkle root of the
/// walk, and the rows that differ from the stored ones.
struct Recorder<'r> {
    observe: bool,
    verify: bool,
    lied: Vec<RelPath>,
    log: WalkLog,
    refresh: &'r mut RefreshList,
    src_index: u32,
    hasher: TreeHasher,
    root_kind: Option<EntryKind>,
    unstable: bool,
    upserts: Vec<(Box<[u8]>, Row)>,
}

impl Recorder<'_> {
    fn record(&mut self, e: &WalkedEntry, stored: Option<&Row>) {
        if self.observe {
            self.log.push(e);
        }
        self.hasher.push(&e.path, &e.row);
        if e.path.is_root() {
            self.root_kind = Some(e.row.kind);
        }
        self.unstable |= e.unstable;
        match stored {
            Some(stored) => {
                if self.verify && lies(stored, e) {
                    self.lied.push(e.path.clone());
                }
                self.refresh.consider(self.src_index, stored, e);
                if !stored.compared_eq(&e.row) {
                    self.upserts.push((e.path.key().into(), e.row.clone()));
                }
            }
            None => self.upserts.push((e.path.key().into(), e.row.clone())),
        }
    }

    /// Forgets what was recorded of the walk so far (not the refresh queue), for a walk again.
    fn restart(&mut self) {
        self.log = WalkLog::new();
        self.hasher = TreeHasher::new();
        self.root_kind = None;
        self.unstable = false;
    }

    /// Records the rest of the walk (for the observation and the root; not diffed, so no
    /// row changes are kept).
    fn drain(&mut self, walk: &mut TreeWalk) -> Result<()> {
        for e in walk.by_ref() {
            let e = e?;
            if self.observe {
                self.log.push(&e);
            }
            self.hasher.push(&e.path, &e.row);
            if e.path.is_root() {
                self.root_kind = Some(e.row.kind);
            }
            self.unstable |= e.unstable;
        }
        Ok(())
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

/// How [`SourceCheck::compare`] ended.
struct Compared {
    reason: Option<MissReason>,
    /// The stored paths gone from the disk, when the diff ran to its end on sound rows.
    removed: Option<Vec<RelPath>>,
    /// The stored rows were damaged (the fast path may have used them).
    damaged: bool,
}

impl SourceCheck<'_> {
    /// Walks the source; see [`SourceCheck`].
    pub(crate) fn run(&self, refresh: &mut RefreshList) -> Result<Checked> {
        let id = self.source.id();
        let path = self.source.path;
        let kind_now = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => EntryKind::Dir,
            Ok(_) => EntryKind::File,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let path = show_path(path);
                return Ok(Checked {
                    reason: self.summary.map(|_| id.miss(SourceMiss::Gone { path })),
                    observed: None,
                    counters: WalkCounters::default(),
                    tree: None,
                    lied: Vec::new(),
                });
            }
            Err(e) => return Err(Error::io("cannot stat", path, e)),
        };
        let sid = id.row_source();
        let mut rec = Recorder {
            observe: self.observe,
            verify: self.verify,
            lied: Vec::new(),
            log: WalkLog::new(),
            src_index: refresh.add_source(sid.clone()),
            refresh,
            hasher: TreeHasher::new(),
            root_kind: None,
            unstable: false,
            upserts: Vec::new(),
        };
        // With stored rows, the walk reuses their digests where the stat data allows.
        // One range scan of the stored rows feeds both the walk's stat fast path and the diff.
        let (compared, mut counters) = match self.summary {
            Some(summary) => {
                let (for_walk, for_diff) = tee_rows(self.store.rows(self.txn, self.layer, &sid)?);
                // A verify walk takes nothing from the stored rows: every file is read.
                let mut walk = if self.verify {
                    drop(for_walk);
                    TreeWalk::new(path)?
                } else {
                    TreeWalk::with_prior(path, Box::new(for_walk))?
                };
                walk.report_to(Arc::clone(self.progress));
                self.progress.expect(summary.rows);
                let c = self.compare(summary, kind_now, for_diff, &mut walk, &mut rec)?;
                (c, walk.counters())
            }
            None => {
                let mut walk = TreeWalk::new(path)?;
                walk.report_to(Arc::clone(self.progress));
                rec.drain(&mut walk)?;
                let c = Compared {
                    reason: None,
                    removed: None,
                    damaged: false,
                };
                (c, walk.counters())
            }
        };
        let (root_digest, row_count) =
            std::mem::replace(&mut rec.hasher, TreeHasher::new()).finish();
        let trusted = !rec.unstable && !compared.damaged;
        let tree = WalkedTree {
            root_kind: rec.root_kind.unwrap_or(kind_now),
            root_digest,
            trusted,
            changes: compared.removed.map(|removed| RowChanges {
                upserts: std::mem::take(&mut rec.upserts),
                removed,
            }),
        };
        let observed = if !self.observe {
            None
        } else if compared.damaged {
            // The walk's fast path may have taken digests from damaged rows: what a put is
            // checked against comes from a walk that reads every file.
            rec.restart();
            let mut walk = TreeWalk::new(path)?;
            rec.drain(&mut walk)?;
            counters.add(&walk.counters());
            let (root, rows) = std::mem::replace(&mut rec.hasher, TreeHasher::new()).finish();
            Some(Observed {
                role: id.role,
                key: id.key.to_string(),
                root_digest: (!rec.unstable).then_some(root),
                row_count: rows,
                log: Some(std::mem::take(&mut rec.log).seal()),
            })
        } else {
            Some(Observed {
                role: id.role,
                key: id.key.to_string(),
                root_digest: (!rec.unstable).then_some(root_digest),
                row_count,
                log: Some(std::mem::take(&mut rec.log).seal()),
            })
        };
        let lied = rec
            .lied
            .into_iter()
            .map(|path| LyingRow {
                source: sid.clone(),
                path,
            })
            .collect();
        Ok(Checked {
            reason: compared.reason,
            observed,
            counters,
            tree: Some(tree),
            lied,
        })
    }

    /// Compares the source's walk with its stored rows and the entry's summary of them.
    fn compare(
        &self,
        summary: &SourceSummary,
        kind_now: EntryKind,
        stored: TeeDiff,
        walk: &mut TreeWalk,
        rec: &mut Recorder<'_>,
    ) -> Result<Compared> {
        let id = self.source.id();
        if id.role == SourceRole::Import
            && summary.root_kind != kind_now
            && matches!(summary.root_kind, EntryKind::File | EntryKind::Dir)
        {
            // Nothing is queued for the diff's side once it is dropped.
            drop(stored);
            rec.drain(walk)?;
            return Ok(Compared {
                reason: Some(MissReason::ImportTypeChanged {
                    key: id.key.to_string(),
                    old: summary.root_kind,
                    new: kind_now,
                }),
                removed: None,
                damaged: false,
            });
        }
        // A damaged row ends the stored stream and makes this a miss (it costs this entry, not the
        // lookup); the walk still runs to its end for the observation. The stored rows are also
        // checked against the entry's summary (row count and Merkle root): bincode has no checksum,
        // and a row lost or altered by damage to the file must not turn into a hit (a lost row of a
        // file deleted since would).
        let mut damage: Option<String> = None;
        let mut hasher = TreeHasher::new();
        let stored = stored.map_while(|r| match r {
            Err(e @ Error::Corrupt { .. }) => {
                damage = Some(e.to_string());
                None
            }
            Ok((p, row)) => {
                hasher.push(&p, &row);
                Some(Ok((p, row)))
            }
            other => Some(other),
        });
        let diff = diff_trees(stored, walk.by_ref(), |e, s| rec.record(e, s))?;
        let (root, n) = hasher.finish();
        if damage.is_none() && (root, n) != (summary.root_digest, summary.rows) {
            damage = Some(format!(
                "the stored rows of {} do not match the entry ({n} rows stored, {} recorded, or a \
                 different Merkle root): the database is damaged",
                escape_bytes(id.row_source().as_bytes()),
                summary.rows
            ));
        }
        if let Some(detail) = damage {
            rec.drain(walk)?;
            return Ok(Compared {
                reason: Some(MissReason::DamagedEntry { detail }),
                removed: None,
                damaged: true,
            });
        }
        let removed = diff.removed.clone();
        Ok(Compared {
            reason: (!diff.is_empty()).then(|| id.miss(SourceMiss::ContentChanged(diff))),
            removed: Some(removed),
            damaged: false,
        })
    }
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
