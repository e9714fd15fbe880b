//! The diff of stored rows against a fresh walk: one merge of two streams sorted by key.
//!
//! [`diff_trees`] is a pure function of its two input streams: it reads each once, in order,
//! holds nothing but the current pair, and returns the paths added, removed and modified (with
//! what changed about each). The caller decides what to do with the result.

use std::fmt;

use serde::Serialize;

use crate::error::Result;
use crate::path::{RelPath, escape_bytes};
use crate::schema::{EntryKind, Row};
use crate::tree::WalkedEntry;

/// One property of a tree entry that differs between the stored row and the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Change {
    /// The entry type changed (e.g. a file replaced by a directory).
    Type {
        /// Stored type.
        old: EntryKind,
        /// Type on disk.
        new: EntryKind,
    },
    /// Regular file content (or a device number) changed.
    Content,
    /// The file changed while it was being read: its content cannot be trusted.
    ChangedWhileRead,
    /// Permission bits (including setuid/setgid/sticky) changed.
    Mode {
        /// Stored mode.
        old: u32,
        /// Mode on disk.
        new: u32,
    },
    /// Owner changed.
    Uid {
        /// Stored uid.
        old: u32,
        /// uid on disk.
        new: u32,
    },
    /// Group changed.
    Gid {
        /// Stored gid.
        old: u32,
        /// gid on disk.
        new: u32,
    },
    /// Symlink target changed.
    LinkTarget {
        /// Stored target, escaped.
        old: String,
        /// Target on disk, escaped.
        new: String,
    },
    /// Extended attributes changed (added, removed or new values).
    Xattrs,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Type { old, new } => write!(f, "type {old} -> {new}"),
            Change::Content => f.write_str("content"),
            Change::ChangedWhileRead => f.write_str("changed while being read"),
            Change::Mode { old, new } => write!(f, "mode {old:04o} -> {new:04o}"),
            Change::Uid { old, new } => write!(f, "uid {old} -> {new}"),
            Change::Gid { old, new } => write!(f, "gid {old} -> {new}"),
            Change::LinkTarget { old, new } => write!(f, "link target {old} -> {new}"),
            Change::Xattrs => f.write_str("xattrs"),
        }
    }
}

/// Compares a stored row with the row on disk; empty when equal in every compared property.
pub fn compare_rows(old: &Row, new: &Row) -> Vec<Change> {
    if old.kind != new.kind {
        return vec![Change::Type {
            old: old.kind,
            new: new.kind,
        }];
    }
    let mut changes = Vec::new();
    let content_differs = match old.kind {
        EntryKind::File => old.digest != new.digest || old.size != new.size,
        EntryKind::CharDevice | EntryKind::BlockDevice => old.rdev != new.rdev,
        _ => false,
    };
    if content_differs {
        changes.push(Change::Content);
    }
    if old.mode != new.mode {
        changes.push(Change::Mode {
            old: old.mode,
            new: new.mode,
        });
    }
    if old.uid != new.uid {
        changes.push(Change::Uid {
            old: old.uid,
            new: new.uid,
        });
    }
    if old.gid != new.gid {
        changes.push(Change::Gid {
            old: old.gid,
            new: new.gid,
        });
    }
    if old.link_target != new.link_target {
        changes.push(Change::LinkTarget {
            old: escape_bytes(&old.link_target),
            new: escape_bytes(&new.link_target),
        });
    }
    if old.xattrs != new.xattrs {
        changes.push(Change::Xattrs);
    }
    changes
}

/// A path present on both sides whose compared properties differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Modified {
    /// The path relative to the root.
    pub path: RelPath,
    /// What changed.
    pub changes: Vec<Change>,
}

/// The result of a diff: what differs between the stored rows and the disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TreeDiff {
    /// Paths on disk with no stored row.
    pub added: Vec<RelPath>,
    /// Stored paths no longer on disk.
    pub removed: Vec<RelPath>,
    /// Paths on both sides that differ.
    pub modified: Vec<Modified>,
}

impl TreeDiff {
    /// True when the tree on disk equals the stored tree.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
    }

    /// Number of differing paths.
    pub fn len(&self) -> usize {
        self.added.len() + self.removed.len() + self.modified.len()
    }
}

impl fmt::Display for TreeDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.added {
            writeln!(f, "  added    {p}")?;
        }
        for p in &self.removed {
            writeln!(f, "  removed  {p}")?;
        }
        for m in &self.modified {
            write!(f, "  modified {} (", m.path)?;
            for (i, c) in m.changes.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{c}")?;
            }
            writeln!(f, ")")?;
        }
        Ok(())
    }
}

/// Merges stored rows (sorted by key) with a fresh walk (in walk order, which is key order) and
/// returns what differs. Each stream is read once; an error from either stops the diff.
///
/// `on_fresh` sees every fresh entry in order with the stored row it was matched with (if any),
/// so a caller can record the walk (for a later put) without walking twice.
pub fn diff_trees<S, F>(
    stored: S,
    fresh: F,
    mut on_fresh: impl FnMut(&WalkedEntry, Option<&Row>),
) -> Result<TreeDiff>
where
    S: IntoIterator<Item = Result<(RelPath, Row)>>,
    F: IntoIterator<Item = Result<WalkedEntry>>,
{
    diff_trees_visit(stored, fresh, |step| {
        if let Merged::Fresh(e, row) = step {
            on_fresh(e, row);
        }
        false
    })
}

/// One step of the merge in [`diff_trees_visit`], in key order.
pub(crate) enum Merged<'a> {
    /// A stored row with no fresh entry (removed).
    Removed(&'a RelPath, &'a Row),
    /// A fresh entry, with the stored row of its path if there is one.
    Fresh(&'a WalkedEntry, Option<&'a Row>),
}

/// [`diff_trees`] with a visitor of every step, stored rows gone included, in key order. For a
/// fresh entry with a stored row, the visitor returns `stored.compared_eq(&entry.row)` if it
/// computed that anyway (then the rows are not compared again), or `false` (then they are):
/// `true` for rows that differ would hide the change, so a `true` is checked in debug builds.
pub(crate) fn diff_trees_visit<S, F>(
    stored: S,
    fresh: F,
    mut visit: impl FnMut(Merged<'_>) -> bool,
) -> Result<TreeDiff>
where
    S: IntoIterator<Item = Result<(RelPath, Row)>>,
    F: IntoIterator<Item = Result<WalkedEntry>>,
{
    let mut stored = stored.into_iter();
    let mut fresh = fresh.into_iter();
    let mut diff = TreeDiff::default();
    let mut s = stored.next().transpose()?;
    let mut w = fresh.next().transpose()?;
    loop {
        match (s.take(), w.take()) {
            (None, None) => break,
            (Some((path, row)), None) => {
                visit(Merged::Removed(&path, &row));
                diff.removed.push(path);
                s = stored.next().transpose()?;
            }
            (None, Some(entry)) => {
                visit(Merged::Fresh(&entry, None));
                diff.added.push(entry.path);
                w = fresh.next().transpose()?;
            }
            (Some((path, row)), Some(entry)) => match path.cmp(&entry.path) {
                std::cmp::Ordering::Less => {
                    visit(Merged::Removed(&path, &row));
                    diff.removed.push(path);
                    s = stored.next().transpose()?;
                    w = Some(entry);
                }
                std::cmp::Ordering::Greater => {
                    visit(Merged::Fresh(&entry, None));
                    diff.added.push(entry.path);
                    s = Some((path, row));
                    w = fresh.next().transpose()?;
                }
                std::cmp::Ordering::Equal => {
                    let same = visit(Merged::Fresh(&entry, Some(&row)));
                    let changes = changes_of(&row, &entry, same);
                    if !changes.is_empty() {
                        diff.modified.push(Modified {
                            path: entry.path,
                            changes,
                        });
                    }
                    s = stored.next().transpose()?;
                    w = fresh.next().transpose()?;
                }
            },
        }
    }
    Ok(diff)
}

/// What differs between a stored row and the fresh entry of its path; `same` is the visitor's
/// `stored.compared_eq(&entry.row)` when it computed it (see [`diff_trees_visit`]). An entry
/// that changed while it was read says so instead of "content" (unless its type changed).
fn changes_of(row: &Row, entry: &WalkedEntry, same: bool) -> Vec<Change> {
    debug_assert!(!same || row.compared_eq(&entry.row));
    // Equal in every compared property: compare_rows would find nothing (it compares a
    // subset of what compared_eq does).
    let mut changes = if same {
        Vec::new()
    } else {
        compare_rows(row, &entry.row)
    };
    if entry.unstable && !changes.iter().any(|c| matches!(c, Change::Type { .. })) {
        changes.retain(|c| *c != Change::Content);
        changes.insert(0, Change::ChangedWhileRead);
    }
    changes
}
