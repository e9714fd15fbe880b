//! The Merkle root of a tree, computed from its rows in key order.
//!
//! Owns: [`TreeHasher`], what a tree digest covers and how directories nest.
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
#[derive(Default)]
pub struct TreeHasher {
    /// Open directories, outermost first: (path, hasher).
    stack: Vec<(RelPath, blake3::Hasher)>,
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

    /// The node of a directory: its own row now, its children's names and hashes as they come.
    fn dir_node(row: &Row) -> blake3::Hasher {
        let mut h = blake3::Hasher::new();
        h.update(b"dir");
        row.hash_into(&mut h);
        h
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
        if let Some((path, h)) = self.stack.pop() {
            let digest = *h.finalize().as_bytes();
            self.attach(&path, digest);
        }
    }

    fn attach(&mut self, path: &RelPath, digest: [u8; 32]) {
        match self.stack.last_mut() {
            Some((_, parent)) => {
                let name = path.file_name();
                parent.update(&(name.len() as u64).to_le_bytes());
                parent.update(name);
                parent.update(&digest);
            }
            None => self.root = Some(digest),
        }
    }

    /// Adds the next row in key order.
    pub fn push(&mut self, path: &RelPath, row: &Row) {
        self.rows += 1;
        while let Some((top, _)) = self.stack.last() {
            if top.is_ancestor_of(path) {
                break;
            }
            self.close_top();
        }
        if row.kind == EntryKind::Dir {
            self.stack.push((path.clone(), Self::dir_node(row)));
        } else {
            let digest = self.leaf_digest(row);
            self.attach(path, digest);
        }
    }

    /// The root digest and the number of rows. An empty sequence has the all-zero digest.
    pub fn finish(mut self) -> ([u8; 32], u64) {
        while !self.stack.is_empty() {
            self.close_top();
        }
        (self.root.unwrap_or([0; 32]), self.rows)
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
}
