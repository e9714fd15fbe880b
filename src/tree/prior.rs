//! The prior rows of a walk, read once in key order with a bounded look-ahead: each walked entry
//! is matched with its stored row, and the walker asks which names a directory had.
//!
//! Owns: [`PriorCursor`] (the one reader of a walk's `PriorRows`) and [`ChildrenOf`] (what the
//! stored rows say about a directory's entries).
//!
//! Must never: decide whether stored rows vouch for anything (that is `tree/fastpath.rs`), hold
//! more than [`LOOKAHEAD_ROWS`] rows, or answer for a directory's names once a stored row failed
//! to decode (a name lost to a damaged row would be a dropped entry: after one, every directory
//! is read).
//!
//! The rows come in key order, which is the walk's order (see `crate::path`): the cursor keeps
//! the rows it has read but the walk has not reached yet, in a buffer of at most
//! [`LOOKAHEAD_ROWS`], so the walker can look at a directory's rows before it gets there (to
//! queue a proven read ahead, see `tree/walker.rs`). A directory's direct children are the rows
//! of its subtree one component below it; they are known only when its whole stored subtree
//! fits in the buffer after it, so a directory with more stored rows below it than that is read
//! (`getdents`), never proven. Memory is bounded by the buffer: about 200 bytes a row without
//! xattrs, 6 MiB at most.

use std::collections::VecDeque;

use super::PriorRows;
use crate::path::RelPath;
use crate::schema::{EntryKind, Row};

/// Stored rows a cursor reads ahead of the walk at most.
#[cfg(not(test))]
pub const LOOKAHEAD_ROWS: usize = 1 << 15;
/// Small in unit tests, so a small tree exercises both answers.
#[cfg(test)]
pub const LOOKAHEAD_ROWS: usize = 64;

/// The names of a directory's entries according to its stored rows, in key order, in one
/// buffer.
#[derive(Debug, Default)]
pub struct KnownNames {
    /// The names, back to back.
    pub names: Vec<u8>,
    /// (start, end) of each name in `names`.
    pub spans: Vec<(usize, usize)>,
}

/// Stored rows of a subtree at most that [`PriorCursor::children_below`] describes
/// directory by directory (so a walker can hand a whole small subtree to one job).
#[cfg(not(test))]
pub const SUBTREE_ROWS: usize = LOOKAHEAD_ROWS / 8;
/// Small in unit tests.
#[cfg(test)]
pub const SUBTREE_ROWS: usize = 8;

/// A directory below another one, as its stored rows describe it: its row (for the proof of
/// its names, `fastpath::vouches_for_listing`) and its direct children's names.
#[derive(Debug)]
pub struct KnownDir {
    /// Its path.
    pub path: RelPath,
    /// Its stored row.
    pub row: Row,
    /// The names of its direct children according to the stored rows.
    pub names: KnownNames,
}

/// What the stored rows say about a directory's entries.
#[derive(Debug)]
pub enum ChildrenOf {
    /// Its direct children, all of them.
    Known(KnownNames),
    /// Not known now, but may be once the walk has moved on (the buffer holds rows before the
    /// directory's subtree that it will drop).
    NotYet,
    /// Never known in this walk: its subtree does not fit the buffer, or a stored row failed to
    /// decode.
    Unknown,
}

/// The one reader of a walk's prior rows; see the module doc.
pub struct PriorCursor {
    stream: PriorRows,
    buf: VecDeque<(RelPath, Row)>,
    ended: bool,
    damaged: bool,
    dropped: u64,
}

impl PriorCursor {
    /// A cursor at the start of `stream` (rows in key order).
    pub fn new(stream: PriorRows) -> Self {
        PriorCursor {
            stream,
            buf: VecDeque::new(),
            ended: false,
            damaged: false,
            dropped: 0,
        }
    }

    /// Reads one more row into the buffer; false at the end of the stream or when the buffer
    /// is full. A row that fails to decode is skipped and ends every listing proof.
    fn fill_one(&mut self) -> bool {
        if self.ended || self.buf.len() >= LOOKAHEAD_ROWS {
            return false;
        }
        loop {
            match self.stream.next() {
                None => {
                    self.ended = true;
                    return false;
                }
                Some(Ok(row)) => {
                    self.buf.push_back(row);
                    return true;
                }
                Some(Err(_)) => self.damaged = true,
            }
        }
    }

    /// Rows the walk has passed since the cursor began (a clock for retrying [`ChildrenOf::NotYet`]).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The stored row of `path`, which the walk has reached; rows of paths before it (gone
    /// since) are dropped. Paths must be asked for in key order.
    pub fn take(&mut self, path: &RelPath) -> Option<Row> {
        self.take_by(|p| p.cmp(path)).map(|(_, r)| r)
    }

    /// [`PriorCursor::take`] for the entry `name` of directory `dir` (`dir.join(name)`), with
    /// the stored path when there is a row, so the walk need not build the path again:
    /// `(path, row)`.
    pub fn take_child(&mut self, dir: &RelPath, name: &[u8]) -> (RelPath, Option<Row>) {
        match self.take_by(|p| cmp_joined(p.key(), dir.key(), name)) {
            Some((path, row)) => (path, Some(row)),
            None => (dir.join(name), None),
        }
    }

    /// The row whose path `order` finds equal (`order(p)` is `p.cmp(wanted)`), dropping the
    /// rows before it.
    fn take_by(
        &mut self,
        order: impl Fn(&RelPath) -> std::cmp::Ordering,
    ) -> Option<(RelPath, Row)> {
        loop {
            if self.buf.is_empty() {
                // With a full buffer impossible here, the stream is read one row at a time.
                if !self.fill_one() {
                    return None;
                }
            }
            let front = self.buf.front()?;
            match order(&front.0) {
                std::cmp::Ordering::Less => {
                    self.buf.pop_front();
                    self.dropped += 1;
                }
                std::cmp::Ordering::Equal => {
                    self.dropped += 1;
                    return self.buf.pop_front();
                }
                std::cmp::Ordering::Greater => return None,
            }
        }
    }

    /// Reads ahead until the buffer holds a row after `path`, or the stream ended, or the
    /// buffer is full; the index of the first buffered row not before `path`.
    fn seek(&mut self, path: &RelPath) -> Option<usize> {
        while self.buf.back().is_none_or(|(p, _)| p <= path) {
            if !self.fill_one() {
                break;
            }
        }
        let i = self.buf.partition_point(|(p, _)| p < path);
        // Past the end of a full buffer: not known yet.
        (i < self.buf.len() || self.ended).then_some(i)
    }

    /// The stored row of `path` (`Some(None)`: there is none), which the walk has not reached
    /// yet; `None` when the buffer cannot hold the rows up to it (yet).
    pub fn peek(&mut self, path: &RelPath) -> Option<Option<&Row>> {
        let i = self.seek(path)?;
        Some(self.buf.get(i).filter(|(p, _)| p == path).map(|(_, r)| r))
    }

    /// The direct children of directory `dir` according to the stored rows (see
    /// [`ChildrenOf`]). `dir`'s own row may have been taken already or be still ahead.
    pub fn children(&mut self, dir: &RelPath) -> ChildrenOf {
        self.children_below(dir, None)
    }

    /// [`PriorCursor::children`], and when `below` is given and `dir`'s stored subtree holds
    /// at most [`SUBTREE_ROWS`] rows, every directory of that subtree (in key order, with its
    /// stored row and its direct children's names) pushed to `below` (left empty otherwise, or
    /// when the answer is not [`ChildrenOf::Known`]). A subtree is a contiguous run of the
    /// buffer: the names of a directory are found by skipping each child's own subtree (a
    /// binary search), not by looking at every row below it.
    pub fn children_below(
        &mut self,
        dir: &RelPath,
        below: Option<&mut Vec<KnownDir>>,
    ) -> ChildrenOf {
        if self.damaged {
            return ChildrenOf::Unknown;
        }
        let Some(start) = self.seek(dir) else {
            return ChildrenOf::NotYet;
        };
        let first = start + usize::from(self.buf.get(start).is_some_and(|(p, _)| p == dir));
        if let Err(answer) = self.fill_subtree(dir, start) {
            return answer;
        }
        if self.damaged {
            return ChildrenOf::Unknown;
        }
        let end = self.subtree_end(dir, first, self.buf.len());
        let names = self.names_in(dir, first, end);
        if let Some(b) = below
            && end - first <= SUBTREE_ROWS
        {
            self.describe_dirs(first, end, b);
        }
        ChildrenOf::Known(names)
    }

    /// Reads ahead until the buffer holds a row after `dir`'s subtree, or the stream ended;
    /// the answer for `dir` when the buffer fills up first (`start`: where `dir`'s rows begin
    /// in it).
    fn fill_subtree(&mut self, dir: &RelPath, start: usize) -> Result<(), ChildrenOf> {
        while self
            .buf
            .back()
            .is_some_and(|(p, _)| p == dir || dir.is_ancestor_of(p))
        {
            if !self.fill_one() {
                if self.ended {
                    break;
                }
                // The subtree does not fit what the buffer can hold after it.
                return Err(if start == 0 || self.damaged {
                    ChildrenOf::Unknown
                } else {
                    ChildrenOf::NotYet
                });
            }
        }
        Ok(())
    }

    /// The end of `dir`'s stored subtree in the buffer, searched in `from..to` (its rows
    /// start at `from`: descendants are one contiguous run of keys, right after `dir`).
    fn subtree_end(&self, dir: &RelPath, from: usize, to: usize) -> usize {
        let inside = |i: usize| self.buf.get(i).is_some_and(|(p, _)| dir.is_ancestor_of(p));
        // Most entries are files: their subtree is empty.
        if !inside(from) {
            return from;
        }
        let (mut lo, mut hi) = (from + 1, to);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if inside(mid) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The names of `dir`'s direct children among the buffered rows `from..to` (its subtree),
    /// each child's own subtree skipped.
    fn names_in(&self, dir: &RelPath, from: usize, to: usize) -> KnownNames {
        let mut out = KnownNames::default();
        let mut i = from;
        while i < to {
            let Some((p, _)) = self.buf.get(i) else {
                break;
            };
            i += 1;
            // A deeper row without its directory's row (damage) names nothing here.
            if let Some(name) = direct_child_name(dir, p) {
                let s = out.names.len();
                out.names.extend_from_slice(name);
                out.spans.push((s, out.names.len()));
                i = self.subtree_end(p, i, to);
            }
        }
        out
    }

    /// Every directory among the buffered rows `from..to`, in key order, with its stored row
    /// and its direct children's names, pushed to `out`.
    fn describe_dirs(&self, from: usize, to: usize, out: &mut Vec<KnownDir>) {
        for i in from..to {
            let Some((p, row)) = self.buf.get(i) else {
                break;
            };
            if row.kind != EntryKind::Dir {
                continue;
            }
            let end = self.subtree_end(p, i + 1, to);
            out.push(KnownDir {
                path: p.clone(),
                row: row.clone(),
                names: self.names_in(p, i + 1, end),
            });
        }
    }
}

/// `key` compared with the key of `dir.join(name)`, without building it.
fn cmp_joined(key: &[u8], dir: &[u8], name: &[u8]) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    if dir.is_empty() {
        return key.cmp(name);
    }
    let (head, tail) = key.split_at(key.len().min(dir.len()));
    match head.cmp(dir) {
        Ordering::Equal => {}
        other => return other,
    }
    match tail.split_first() {
        // `key` is `dir`: before its entries.
        None => Ordering::Less,
        Some((0, rest)) => rest.cmp(name),
        Some(_) => Ordering::Greater,
    }
}

/// The name of `p` when it is a direct child of `dir` (below the root a child's key is
/// `dir \0 name`; below the root, just `name`), `None` for a deeper descendant.
fn direct_child_name<'p>(dir: &RelPath, p: &'p RelPath) -> Option<&'p [u8]> {
    let rest = p.key().get(dir.key().len()..).unwrap_or_default();
    let name = if dir.is_root() {
        rest
    } else {
        rest.get(1..).unwrap_or_default()
    };
    (!name.contains(&0)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn row(kind: EntryKind) -> Row {
        Row {
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            rdev: 0,
            link_target: Vec::new(),
            xattrs: Vec::new(),
            digest: [0; 32],
            stat: None,
        }
    }

    fn cursor(paths: &[&str]) -> PriorCursor {
        let rows: Vec<_> = paths
            .iter()
            .map(|p| {
                Ok((
                    RelPath::from_slash_bytes(p.as_bytes()),
                    row(EntryKind::File),
                ))
            })
            .collect();
        PriorCursor::new(Box::new(rows.into_iter()))
    }

    fn names(c: ChildrenOf) -> Vec<String> {
        match c {
            ChildrenOf::Known(k) => k
                .spans
                .iter()
                .map(|&(s, e)| String::from_utf8_lossy(&k.names[s..e]).into_owned())
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    /// Direct children only, in key order, around names that sort near `/`; taken and
    /// not-yet-reached directories alike.
    #[test]
    fn children_are_the_direct_rows_below() {
        let mut c = cursor(&["", "a", "a/b", "a/b/c", "a/d", "a-b", "a.txt", "z"]);
        assert_eq!(
            names(c.children(&RelPath::root())),
            ["a", "a-b", "a.txt", "z"]
        );
        let a = RelPath::from_slash_bytes(b"a");
        assert_eq!(names(c.children(&a)), ["b", "d"]);
        assert!(c.take(&RelPath::root()).is_some());
        assert!(c.take(&a).is_some());
        assert_eq!(names(c.children(&a)), ["b", "d"]);
        assert!(names(c.children(&RelPath::from_slash_bytes(b"a/d"))).is_empty());
        // A row of a path the walk does not meet is dropped, not handed to the next.
        assert!(c.take(&RelPath::from_slash_bytes(b"a/c")).is_none());
        assert!(c.take(&RelPath::from_slash_bytes(b"a/d")).is_some());
    }

    /// `cmp_joined` orders a key exactly as the key of the joined path would, around names
    /// that sort near `/`; `take_child` hands out the stored path and drops gone rows.
    #[test]
    fn take_child_matches_take_of_the_joined_path() {
        let keys = [
            "", "a", "a/b", "a/b/c", "a/bc", "a/b-x", "a-b", "a.txt", "ab", "b", "z",
        ];
        let dirs = ["", "a", "a/b", "ab"];
        let names: [&[u8]; 6] = [b"a", b"b", b"b-x", b"bc", b"c", b"zz"];
        for k in keys {
            let key = RelPath::from_slash_bytes(k.as_bytes());
            for d in dirs {
                let dir = RelPath::from_slash_bytes(d.as_bytes());
                for n in names {
                    assert_eq!(
                        cmp_joined(key.key(), dir.key(), n),
                        key.cmp(&dir.join(n)),
                        "{k:?} vs {d:?} + {n:?}"
                    );
                }
            }
        }
        let mut c = cursor(&["", "a", "a/b", "a/c", "a/d"]);
        let a = RelPath::from_slash_bytes(b"a");
        assert!(c.take(&RelPath::root()).is_some());
        let (p, row) = c.take_child(&RelPath::root(), b"a");
        assert!(row.is_some() && p == a);
        // `a/b` is gone from the walk: dropped, and `a/c` found.
        let (p, row) = c.take_child(&a, b"c");
        assert!(row.is_some() && p == RelPath::from_slash_bytes(b"a/c"));
        assert_eq!(c.dropped(), 4);
        // A new name: no row, the path built.
        let (p, row) = c.take_child(&a, b"cc");
        assert!(row.is_none() && p == RelPath::from_slash_bytes(b"a/cc"));
        assert!(c.take(&RelPath::from_slash_bytes(b"a/d")).is_some());
    }

    /// `children_below` names every stored directory of a small subtree with its direct
    /// children (in key order, around names that sort near `/`), and none of a subtree larger
    /// than [`SUBTREE_ROWS`].
    #[test]
    fn children_below_describes_each_directory_of_a_small_subtree() {
        let dirs = ["", "a", "a/b", "a/b/c", "a/b-x", "big"];
        let mut paths: Vec<String> = [
            "", "a", "a/b", "a/b/c", "a/b/c/f", "a/b/g", "a/b-x", "a/b-x/h", "a/b.txt", "big",
        ]
        .iter()
        .map(|p| p.to_string())
        .collect();
        paths.extend((0..=SUBTREE_ROWS).map(|i| format!("big/f{i:03}")));
        let rows: Vec<_> = paths
            .iter()
            .map(|p| {
                let kind = if dirs.contains(&p.as_str()) {
                    EntryKind::Dir
                } else {
                    EntryKind::File
                };
                Ok((RelPath::from_slash_bytes(p.as_bytes()), row(kind)))
            })
            .collect();
        let mut c = PriorCursor::new(Box::new(rows.into_iter()));
        let a = RelPath::from_slash_bytes(b"a");
        let mut below = Vec::new();
        assert_eq!(
            names(c.children_below(&a, Some(&mut below))),
            ["b", "b-x", "b.txt"]
        );
        let got: Vec<(String, Vec<String>)> = below
            .into_iter()
            .map(|d| (d.path.to_string(), names(ChildrenOf::Known(d.names))))
            .collect();
        let want: Vec<(String, Vec<String>)> = [
            ("a/b", vec!["c", "g"]),
            ("a/b/c", vec!["f"]),
            ("a/b-x", vec!["h"]),
        ]
        .iter()
        .map(|(p, n)| (p.to_string(), n.iter().map(|s| s.to_string()).collect()))
        .collect();
        assert_eq!(got, want);
        let mut below = Vec::new();
        let big = RelPath::from_slash_bytes(b"big");
        assert_eq!(
            names(c.children_below(&big, Some(&mut below))).len(),
            SUBTREE_ROWS + 1
        );
        assert!(
            below.is_empty(),
            "a subtree over the bound is not described"
        );
    }

    /// A subtree larger than the buffer is never known; one behind rows the walk will pass is
    /// not known yet; a damaged row ends every answer.
    #[test]
    fn bounded_and_damage_aware() {
        let mut big: Vec<String> = vec![String::new(), "d".into()];
        big.extend((0..LOOKAHEAD_ROWS).map(|i| format!("d/f{i:05}")));
        big.push("e".into());
        big.push("e/x".into());
        let refs: Vec<&str> = big.iter().map(String::as_str).collect();
        let mut c = cursor(&refs);
        assert!(c.take(&RelPath::root()).is_some());
        assert!(c.take(&RelPath::from_slash_bytes(b"d")).is_some());
        let d = RelPath::from_slash_bytes(b"d");
        assert!(matches!(c.children(&d), ChildrenOf::Unknown));
        let e = RelPath::from_slash_bytes(b"e");
        assert!(matches!(c.children(&e), ChildrenOf::NotYet));
        assert!(c.peek(&e).is_none());
        assert!(c.take(&RelPath::from_slash_bytes(b"d/f99999")).is_none());
        assert!(c.peek(&e).flatten().is_some());
        assert_eq!(names(c.children(&e)), ["x"]);

        let rows: Vec<crate::error::Result<(RelPath, Row)>> = vec![
            Ok((RelPath::root(), row(EntryKind::Dir))),
            Err(Error::ChangedWhileReading { path: "x".into() }),
            Ok((RelPath::from_slash_bytes(b"b"), row(EntryKind::File))),
        ];
        let mut c = PriorCursor::new(Box::new(rows.into_iter()));
        assert!(matches!(c.children(&RelPath::root()), ChildrenOf::Unknown));
        assert!(c.take(&RelPath::from_slash_bytes(b"b")).is_some());
    }
}
