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
}

impl TreeHasher {
    /// A hasher with no rows yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn node(path_kind: &str, row: &Row) -> blake3::Hasher {
        let mut h = blake3::Hasher::new();
        h.update(path_kind.as_bytes());
        row.hash_into(&mut h);
        h
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
            self.stack.push((path.clone(), Self::node("dir", row)));
        } else {
            let digest = *Self::node("leaf", row).finalize().as_bytes();
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
