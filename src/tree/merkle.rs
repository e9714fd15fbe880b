//! The Merkle root of a tree, computed from its rows in key order.
//!
//! Owns: [`TreeHasher`], what a tree digest covers and how directories nest, and
//! [`PairedHasher`], the roots of two trees that are mostly equal (stored rows and their walk)
//! computed once for as long as they agree.
//!
//! Must never: cover stat data (mtime, ctime, inode, device), absolute paths, or anything not in
//! a row's compared properties ([`Row::hash_into`]).

use crate::path::RelPath;
use crate::schema::{EntryKind, Row};

/// Computes the Merkle root of a tree from its rows, fed in key (walk) order.
///
/// Each directory's node hash covers its own row and, in order, the name and node hash of each
/// child; a leaf's node hash covers its row ([`Row::hash_into`]: type, mode, owner, device
/// number, link target, xattrs, and for files size and content digest). So the root digest
/// summarizes every compared property of every entry, and nothing else: no mtime, no inode, no
/// absolute path. Equal trees have equal roots; any compared change changes the root.
#[derive(Default, Clone)]
pub struct TreeHasher {
    /// Open directories, outermost first: (path key, hasher). Only the first `depth` are
    /// open; the slots after them are kept to be reused (a `blake3::Hasher` is ~2 KB: one per
    /// level of the tree, not one per directory, and no path allocated per directory).
    stack: Vec<(Vec<u8>, blake3::Hasher)>,
    depth: usize,
    root: Option<[u8; 32]>,
    rows: u64,
    /// Reused for each leaf's canonical bytes: a leaf is hashed with `blake3::hash` over it,
    /// with no `blake3::Hasher` (2 KB, moved around) per row.
    scratch: Vec<u8>,
}

impl TreeHasher {
    /// A hasher with no rows yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the node of directory `key`: its own row now, its children's names and hashes
    /// as they come (the bytes `dir`, then the row's canonical form, as [`Row::hash_into`]).
    fn open_dir(&mut self, key: &[u8], row: &Row) {
        self.scratch.clear();
        self.scratch.extend_from_slice(b"dir");
        row.write_canonical(&mut self.scratch);
        match self.stack.get_mut(self.depth) {
            Some((k, h)) => {
                k.clear();
                k.extend_from_slice(key);
                h.reset();
                h.update(&self.scratch);
            }
            None => {
                let mut h = blake3::Hasher::new();
                h.update(&self.scratch);
                self.stack.push((key.to_vec(), h));
            }
        }
        self.depth += 1;
    }

    /// The node hash of a leaf: blake3 of `leaf` and its row's canonical form (the same bytes
    /// a streaming hasher would be fed).
    fn leaf_digest(&mut self, row: &Row) -> [u8; 32] {
        self.scratch.clear();
        self.scratch.extend_from_slice(b"leaf");
        row.write_canonical(&mut self.scratch);
        *blake3::hash(&self.scratch).as_bytes()
    }

    fn close_top(&mut self) {
        let Some(top) = self.depth.checked_sub(1) else {
            return;
        };
        self.depth = top;
        let (open, rest) = self.stack.split_at_mut(top);
        if let Some((key, h)) = rest.first() {
            let digest = *h.finalize().as_bytes();
            Self::attach_to(open.last_mut(), &mut self.root, file_name(key), &digest);
        }
    }

    /// Adds a child's name and node hash to its parent, the innermost open directory (none:
    /// it is the root).
    fn attach_to(
        parent: Option<&mut (Vec<u8>, blake3::Hasher)>,
        root: &mut Option<[u8; 32]>,
        name: &[u8],
        digest: &[u8; 32],
    ) {
        match parent {
            Some((_, parent)) => {
                parent.update(&(name.len() as u64).to_le_bytes());
                parent.update(name);
                parent.update(digest);
            }
            None => *root = Some(*digest),
        }
    }

    /// Adds the next row in key order.
    pub fn push(&mut self, path: &RelPath, row: &Row) {
        self.rows += 1;
        let key = path.key();
        while let Some(top) = self.depth.checked_sub(1) {
            if self
                .stack
                .get(top)
                .is_some_and(|(k, _)| is_ancestor(k, key))
            {
                break;
            }
            self.close_top();
        }
        if row.kind == EntryKind::Dir {
            self.open_dir(key, row);
        } else {
            let digest = self.leaf_digest(row);
            let parent = self
                .depth
                .checked_sub(1)
                .and_then(|i| self.stack.get_mut(i));
            Self::attach_to(parent, &mut self.root, path.file_name(), &digest);
        }
    }

    /// The root digest and the number of rows. An empty sequence has the all-zero digest.
    pub fn finish(mut self) -> ([u8; 32], u64) {
        while self.depth > 0 {
            self.close_top();
        }
        (self.root.unwrap_or([0; 32]), self.rows)
    }
}

/// True when the path key `dir` is a strict ancestor of the path key `key` (as
/// [`RelPath::is_ancestor_of`]).
fn is_ancestor(dir: &[u8], key: &[u8]) -> bool {
    if dir.is_empty() {
        return !key.is_empty();
    }
    key.len() > dir.len() && key.starts_with(dir) && key.get(dir.len()) == Some(&0)
}

/// The last component of a path key (as [`RelPath::file_name`]).
fn file_name(key: &[u8]) -> &[u8] {
    match key.iter().rposition(|&b| b == 0) {
        Some(i) => key.get(i + 1..).unwrap_or(&[]),
        None => key,
    }
}

/// The Merkle roots of two trees fed in one merge, in key order: the stored rows of a source
/// and its walk. While every row pushed so far went to both sides at the same path and was
/// equal in every compared property, the two hashers would be in the same state, so one
/// [`TreeHasher`] stands for both and each row is hashed once; the first row that goes to one
/// side only, or differs, forks a copy (the stack of open directories: one hasher per level),
/// and from then on each side is hashed alone. The roots are exactly those of two
/// [`TreeHasher`]s fed the same rows (a root covers only paths and compared properties,
/// [`Row::compared_eq`] is equality of those, tested in `schema`).
#[derive(Default)]
pub struct PairedHasher {
    /// The stored side; while `walked` is `None`, both.
    stored: TreeHasher,
    /// The walked side once it forked.
    walked: Option<TreeHasher>,
}

impl PairedHasher {
    /// A pair with no rows yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The walked side, forked from the stored one first if they still agree.
    fn walked_mut(&mut self) -> &mut TreeHasher {
        let stored = &self.stored;
        self.walked.get_or_insert_with(|| stored.clone())
    }

    /// A row of the stored side only (a stored path gone from the walk).
    pub fn push_stored(&mut self, path: &RelPath, row: &Row) {
        self.walked_mut();
        self.stored.push(path, row);
    }

    /// A row of the walked side only (a path new in the walk, or the walk after the stored
    /// rows ended).
    pub fn push_walked(&mut self, path: &RelPath, row: &Row) {
        self.walked_mut().push(path, row);
    }

    /// The stored row and the walked row of one path; `same` must be
    /// `stored.compared_eq(walked)` (passed in because the caller computed it anyway).
    pub fn push_both(&mut self, path: &RelPath, stored: &Row, walked: &Row, same: bool) {
        debug_assert_eq!(same, stored.compared_eq(walked));
        match &mut self.walked {
            None if same => self.stored.push(path, stored),
            _ => {
                self.walked_mut().push(path, walked);
                self.stored.push(path, stored);
            }
        }
    }

    /// True while the two sides agree (one hasher stands for both).
    pub fn in_step(&self) -> bool {
        self.walked.is_none()
    }

    /// The stored side's root and row count; the walked side keeps its state (forked now if
    /// it still agreed) and can still be pushed and finished with [`Self::finish_walked`].
    pub fn finish_stored(&mut self) -> ([u8; 32], u64) {
        self.walked_mut();
        std::mem::take(&mut self.stored).finish()
    }

    /// The walked side's root and row count (the stored side is dropped).
    pub fn finish_walked(self) -> ([u8; 32], u64) {
        self.walked.unwrap_or(self.stored).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: EntryKind, n: u8) -> Row {
        Row {
            kind,
            mode: 0o644,
            uid: 1,
            gid: 2,
            size: u64::from(n),
            rdev: 0,
            link_target: if kind == EntryKind::Symlink {
                vec![n]
            } else {
                Vec::new()
            },
            xattrs: Vec::new(),
            digest: [n; 32],
            stat: None,
        }
    }

    /// The node hash of a streaming hasher fed `kind` then the row, as the Merkle root has
    /// always been defined.
    fn streamed(kind: &[u8], r: &Row) -> blake3::Hasher {
        let mut h = blake3::Hasher::new();
        h.update(kind);
        r.hash_into(&mut h);
        h
    }

    fn child(parent: &mut blake3::Hasher, name: &[u8], digest: &[u8; 32]) {
        parent.update(&(name.len() as u64).to_le_bytes());
        parent.update(name);
        parent.update(digest);
    }

    /// The root of a small tree equals the one computed by hand with streaming hashers (the
    /// leaf shortcut changes no digest).
    #[test]
    fn root_is_the_streamed_merkle_root() {
        let (root, d, f, l, g) = (
            row(EntryKind::Dir, 0),
            row(EntryKind::Dir, 1),
            row(EntryKind::File, 2),
            row(EntryKind::Symlink, 3),
            row(EntryKind::File, 4),
        );
        let mut t = TreeHasher::new();
        t.push(&RelPath::root(), &root);
        t.push(&RelPath::from_slash_bytes(b"d"), &d);
        t.push(&RelPath::from_slash_bytes(b"d/f"), &f);
        t.push(&RelPath::from_slash_bytes(b"d/l"), &l);
        t.push(&RelPath::from_slash_bytes(b"g"), &g);
        let (got, n) = t.finish();
        assert_eq!(n, 5);

        let mut hd = streamed(b"dir", &d);
        child(&mut hd, b"f", streamed(b"leaf", &f).finalize().as_bytes());
        child(&mut hd, b"l", streamed(b"leaf", &l).finalize().as_bytes());
        let mut hr = streamed(b"dir", &root);
        child(&mut hr, b"d", hd.finalize().as_bytes());
        child(&mut hr, b"g", streamed(b"leaf", &g).finalize().as_bytes());
        assert_eq!(got, *hr.finalize().as_bytes());
    }

    /// A `PairedHasher` gives both sides the roots two independent hashers give, whichever
    /// step the sides part at (a changed row, a stored row gone, a walked row new) and when
    /// the stored side is finished first and the walk goes on.
    #[test]
    fn paired_roots_are_the_independent_roots() {
        let paths: Vec<(RelPath, Row)> = [
            ("", EntryKind::Dir),
            ("a", EntryKind::Dir),
            ("a/f", EntryKind::File),
            ("a/g", EntryKind::Symlink),
            ("b", EntryKind::File),
            ("c", EntryKind::Dir),
            ("c/h", EntryKind::File),
        ]
        .iter()
        .enumerate()
        .map(|(i, (p, k))| (RelPath::from_slash_bytes(p.as_bytes()), row(*k, i as u8)))
        .collect();
        // What happens at step `at`: 0 changed row, 1 stored only, 2 walked only.
        for at in 0..=paths.len() {
            for how in 0..3 {
                let (mut s, mut w, mut p) =
                    (TreeHasher::new(), TreeHasher::new(), PairedHasher::new());
                for (i, (path, r)) in paths.iter().enumerate() {
                    if i == at && i > 0 {
                        match how {
                            0 => {
                                let mut other = r.clone();
                                other.mode ^= 0o111;
                                s.push(path, r);
                                w.push(path, &other);
                                p.push_both(path, r, &other, false);
                            }
                            1 => {
                                s.push(path, r);
                                p.push_stored(path, r);
                            }
                            _ => {
                                w.push(path, r);
                                p.push_walked(path, r);
                            }
                        }
                        assert!(!p.in_step());
                    } else {
                        s.push(path, r);
                        w.push(path, r);
                        // Stat data is not compared: a row with other stat data is the same.
                        let mut restat = r.clone();
                        restat.stat = Some(crate::schema::RowStat {
                            mtime_ns: 1,
                            ctime_ns: 2,
                            ino: i as u64,
                            dev: 4,
                            snapshot_ns: 5,
                        });
                        p.push_both(path, r, &restat, true);
                    }
                }
                let walked_extra = (RelPath::from_slash_bytes(b"d"), row(EntryKind::File, 99));
                let stored_root = p.finish_stored();
                assert_eq!(stored_root, s.finish(), "stored side, step {at} how {how}");
                // The walk goes on after the stored side is finished.
                w.push(&walked_extra.0, &walked_extra.1);
                p.push_walked(&walked_extra.0, &walked_extra.1);
                assert_eq!(
                    p.finish_walked(),
                    w.finish(),
                    "walked side, step {at} how {how}"
                );
            }
        }
    }
}
