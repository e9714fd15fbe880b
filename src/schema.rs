//! The schema version and the record types stored in the cache file: pure data, no storage
//! engine (the table definitions are `store/tables.rs`'s, and only `store/` names them).
//!
//! Schema v4 (versions: many per layer, see [`crate::version`]; v4 added [`Origin`]):
//!
//! | table       | key                                    | value                                  |
//! |-------------|----------------------------------------|----------------------------------------|
//! | `meta`      | `&str` fact name                       | `&[u8]` (version: u32 LE)              |
//! | `versions`  | `(&str layer, &[u8; 32] input digest)` | checksummed [`VersionRecord`]          |
//! | `layers`    | `&str` layer name                      | checksummed [`LayerRecord`]            |
//! | `last_used` | `(&str layer, &[u8; 32] input digest)` | `u64` ms since the Unix epoch          |
//! | `rows`      | `(&str layer, &str source, &[u8] path key)` | encoded [`Row`]                   |
//!
//! Schemas v1 and v2 had `entries` (layer → one entry) and `bases` (layer → base hash) instead
//! of the first three; the v2 → v3 step (`migrations/0003_versions.rs`) replaces them. Schema v3
//! had the same tables with a [`VersionRecord`] without its `origin`; the v3 → v4 step
//! (`migrations/0004_origin.rs`) gives every v3 version [`Origin::Built`].
//!
//! `rows` stays as it is: the last seen state of each source (git's index), described by the
//! version that `layers` points at. Recording a use writes 8 bytes in `last_used`, never a
//! version record. "Checksummed" means the store codec's `encode_checked`: a damaged record is a
//! typed error, never a different value.
//!
//! Values are encoded by `store/codec.rs` only. Path keys use the `\0` encoding of
//! [`crate::RelPath`], so a range scan of `(layer, source, ..)` yields rows in walk order.

use serde::{Deserialize, Serialize};

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: u32 = 4;

/// The type of a tree entry. Never opened unless `File`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Regular file: its content digest is recorded.
    File,
    /// Directory.
    Dir,
    /// Symbolic link: its target is recorded, never followed.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device: its device number is recorded.
    CharDevice,
    /// Block device: its device number is recorded.
    BlockDevice,
}

impl EntryKind {
    /// A short name for display (`file`, `dir`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Fifo => "fifo",
            EntryKind::Socket => "socket",
            EntryKind::CharDevice => "char_device",
            EntryKind::BlockDevice => "block_device",
        }
    }

    pub(crate) fn tag(self) -> u8 {
        match self {
            EntryKind::File => 1,
            EntryKind::Dir => 2,
            EntryKind::Symlink => 3,
            EntryKind::Fifo => 4,
            EntryKind::Socket => 5,
            EntryKind::CharDevice => 6,
            EntryKind::BlockDevice => 7,
        }
    }
}

impl std::fmt::Display for EntryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored tree entry: everything that is compared, nothing that is not (no mtime, no
/// absolute path, no inode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Entry type.
    pub kind: EntryKind,
    /// Permission bits plus setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (regular files; informational for other types).
    pub size: u64,
    /// Device number for character and block devices, 0 otherwise.
    pub rdev: u64,
    /// Symlink target as raw bytes, empty otherwise.
    pub link_target: Vec<u8>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// blake3 of the content for regular files, zero otherwise.
    pub digest: [u8; 32],
    /// The stat data the row was taken under (schema v2; `None` for rows carried over from v1,
    /// which are read once and then refreshed). Never compared and never part of a tree digest:
    /// it only lets a lookup skip reading an unchanged file's content (same size, inode, device,
    /// mtime, ctime) or an unchanged entry's xattrs and link target (same inode, device, ctime).
    pub stat: Option<RowStat>,
}

/// The stat data a row was taken under, and when its snapshot began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowStat {
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device of the file system holding it.
    pub dev: u64,
    /// When the walk that took this row began (coarse real-time clock, ns): the racy rule
    /// compares the mtime to it.
    pub snapshot_ns: i64,
}

impl Row {
    /// True when the two rows agree in every compared property — exactly what
    /// [`Row::hash_into`] covers (type, mode, owner, device number, link target, xattrs, and for
    /// regular files size and content digest), so it is true exactly when their hashes are
    /// equal, without hashing. Stat data is never compared.
    pub fn compared_eq(&self, other: &Row) -> bool {
        self.kind == other.kind
            && self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && self.rdev == other.rdev
            && (self.kind != EntryKind::File
                || (self.size == other.size && self.digest == other.digest))
            && bytes_eq(&self.link_target, &other.link_target)
            && self.xattrs.len() == other.xattrs.len()
            && (self.xattrs.is_empty() || self.xattrs == other.xattrs)
    }

    /// Feeds the canonical form of this row ([`Row::write_canonical`]) into a hasher.
    pub fn hash_into(&self, h: &mut blake3::Hasher) {
        let mut buf = Vec::with_capacity(CANONICAL_TYPICAL);
        self.write_canonical(&mut buf);
        h.update(&buf);
    }

    /// Appends the canonical form of this row's compared properties to `out`: the bytes every
    /// row digest and Merkle node hashes. This encoding is fixed by hand (not the codec's), so
    /// digests stay stable across codec changes; each variable-length field is length-prefixed.
    /// Hot paths keep one buffer and hash it with `blake3::hash`, which needs no 2 KB
    /// `blake3::Hasher` per row.
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        out.push(self.kind.tag());
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&self.rdev.to_le_bytes());
        out.extend_from_slice(&(self.link_target.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.link_target);
        out.extend_from_slice(&(self.xattrs.len() as u64).to_le_bytes());
        for (k, v) in &self.xattrs {
            out.extend_from_slice(&(k.len() as u64).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend_from_slice(v);
        }
        if self.kind == EntryKind::File {
            out.extend_from_slice(&self.size.to_le_bytes());
            out.extend_from_slice(&self.digest);
        }
    }
}

/// Byte-slice equality that calls no `memcmp` for two empty slices (most rows have no link
/// target): the same answer as `a == b`.
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// The canonical form of a row without link target or xattrs: 1 + 4 + 4 + 4 + 8 + 8 + 8, and
/// size and digest for a file.
const CANONICAL_TYPICAL: usize = 37 + 8 + 32;

/// How a layer's base is identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseKind {
    /// Another layer of the same build.
    Built,
    /// A tarball.
    Tar,
    /// An image in a local OCI layout.
    Oci,
    /// A docker image, resolved in the local OCI layout.
    Docker,
    /// Nothing.
    Scratch,
}

impl BaseKind {
    /// A short name for display (`built`, `tar`, `oci`, `docker`, `scratch`).
    pub fn as_str(self) -> &'static str {
        match self {
            BaseKind::Built => "built",
            BaseKind::Tar => "tar",
            BaseKind::Oci => "oci",
            BaseKind::Docker => "docker",
            BaseKind::Scratch => "scratch",
        }
    }
}

/// The base a layer was built on, as recorded at put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRecord {
    /// Kind of base.
    pub kind: BaseKind,
    /// The base layer name, tarball path or image reference, as given.
    pub reference: String,
    /// The base hash (empty for scratch).
    pub hash: Vec<u8>,
}

/// Summary of one import or overlay dir of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSummary {
    /// The import key (URL as written) or overlay_dir source.
    pub key: String,
    /// The `source` component of the row keys holding this tree.
    pub source: String,
    /// Type of the tree's root (a file import is a one-row tree).
    pub root_kind: EntryKind,
    /// Merkle root over the rows (see [`crate::tree::TreeHasher`]).
    pub root_digest: [u8; 32],
    /// Number of rows.
    pub rows: u64,
}

/// One output manifest of a layer: the layer type and the OCI descriptor as canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    /// Layer type (`tar`, `squashfs`, ...).
    pub layer_type: String,
    /// The descriptor as canonical JSON (sorted keys).
    pub descriptor_json: Vec<u8>,
}

/// Where a version came from (schema v4). It decides one thing: whether a hit on the version
/// requires the builder's copies of its overlay dirs (see `crate::engine`'s outputs rule and
/// `docs/guarantees.md`). It is part of no digest: a version pulled from a registry and the
/// same version built here have the same input and entry digests, so the layers built on it
/// hit either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Put after a build on this machine (or migrated from schema v3 and older, which recorded
    /// only such versions): its overlay dirs' `rootfs_path` copies were made by the builder
    /// here, and a hit requires each to be a directory.
    Built,
    /// Recorded from a registry entry by a remote hit: this machine never built it, so it has
    /// no builder's copies and a hit does not ask for them. Its outputs are the image blobs,
    /// which a hit requires like any other's.
    Pulled,
}

impl Origin {
    /// `built` or `pulled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Built => "built",
            Origin::Pulled => "pulled",
        }
    }
}

/// One version of a layer (schema v4): everything recorded for one evaluation of its inputs,
/// keyed by `(name, input_digest)`. The same as the v2 entry plus the builder identity and the
/// input digest itself (so a record copied under a wrong key is detected), and (v4) its
/// [`Origin`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Layer name.
    pub name: String,
    /// The input digest this version is stored under ([`crate::version::input_digest`]).
    pub input_digest: [u8; 32],
    /// The layer definition as canonical JSON (sorted keys).
    pub definition_json: Vec<u8>,
    /// blake3 of `definition_json`.
    pub definition_digest: [u8; 32],
    /// The base recorded at put. For a `built` base, `hash` is the entry digest
    /// ([`crate::version::entry_digest`]) of the base's version this one was built on.
    pub base: BaseRecord,
    /// SOURCE_DATE_EPOCH of the build, if set.
    pub source_date_epoch: Option<i64>,
    /// The builder identity (e.g. `stacker 1.1.0`), if the build named one.
    pub builder: Option<String>,
    /// One summary per cached import.
    pub imports: Vec<SourceSummary>,
    /// One summary per overlay dir.
    pub overlay_dirs: Vec<SourceSummary>,
    /// Output manifests per layer type.
    pub manifests: Vec<ManifestRecord>,
    /// Whether the layer is build-only (kept only as a rootfs directory).
    pub build_only: bool,
    /// Time of the put (or of the v2 entry it was migrated from), ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Built here or pulled from a registry (schema v4).
    pub origin: Origin,
}

impl VersionRecord {
    /// True when this record belongs under the key it was read from: a record that decodes and
    /// checks out but sits under another layer or digest is damage too.
    pub fn matches_key(&self, layer: &str, input_digest: &[u8; 32]) -> bool {
        self.name == layer && self.input_digest == *input_digest
    }

    /// The digests and sizes of the output blobs its manifests name (`sha256:<hex>`, size from
    /// the descriptor), in manifest order; descriptors without a digest are skipped.
    pub fn blobs(&self) -> Vec<(String, u64)> {
        self.manifests
            .iter()
            .filter_map(|m| {
                let v: serde_json::Value = serde_json::from_slice(&m.descriptor_json).ok()?;
                let digest = v.get("digest")?.as_str()?.to_string();
                let size = v.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
                Some((digest, size))
            })
            .collect()
    }
}

/// What the `layers` table holds for a layer (schema v3): the version its per-source rows
/// currently describe — the most recently used one, against which a miss is explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Input digest of the current version (a key of `versions` under this layer).
    pub current: [u8; 32],
    /// Bumped by every write that changes the layer's rows in a compared property (a put, a
    /// hit on another version); never by a stat refresh. A lookup that read generation G
    /// rewrites rows only if the layer is still at G, so it never applies its diff on top of
    /// rows another session replaced meanwhile.
    pub generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(r: &Row) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        r.hash_into(&mut h);
        *h.finalize().as_bytes()
    }

    /// The canonical form is fixed: a digest recorded by an older release must not change.
    #[test]
    fn canonical_form_is_stable() {
        let r = Row {
            kind: EntryKind::File,
            mode: 0o644,
            uid: 1,
            gid: 2,
            size: 3,
            rdev: 0,
            link_target: b"t".to_vec(),
            xattrs: vec![(b"user.a".to_vec(), b"1".to_vec())],
            digest: [7; 32],
            stat: None,
        };
        let mut h = blake3::Hasher::new();
        h.update(&[1]);
        h.update(&0o644u32.to_le_bytes());
        h.update(&1u32.to_le_bytes());
        h.update(&2u32.to_le_bytes());
        h.update(&0u64.to_le_bytes());
        h.update(&1u64.to_le_bytes());
        h.update(b"t");
        h.update(&1u64.to_le_bytes());
        h.update(&6u64.to_le_bytes());
        h.update(b"user.a");
        h.update(&1u64.to_le_bytes());
        h.update(b"1");
        h.update(&3u64.to_le_bytes());
        h.update(&[7; 32]);
        assert_eq!(hash(&r), *h.finalize().as_bytes());
        let mut buf = Vec::new();
        r.write_canonical(&mut buf);
        assert_eq!(*blake3::hash(&buf).as_bytes(), hash(&r));
    }

    /// `compared_eq` is true exactly when the `hash_into` digests are equal: one switch per
    /// compared property, and stat data and a non-file's size ignored by both.
    #[test]
    fn compared_eq_agrees_with_hash_into() {
        let base = Row {
            kind: EntryKind::File,
            mode: 0o644,
            uid: 1,
            gid: 2,
            size: 3,
            rdev: 0,
            link_target: Vec::new(),
            xattrs: vec![(b"user.a".to_vec(), b"1".to_vec())],
            digest: [7; 32],
            stat: None,
        };
        type Change = Box<dyn Fn(&mut Row)>;
        let variants: Vec<(&str, Change)> = vec![
            ("kind", Box::new(|r| r.kind = EntryKind::Fifo)),
            ("mode", Box::new(|r| r.mode = 0o755)),
            ("uid", Box::new(|r| r.uid = 9)),
            ("gid", Box::new(|r| r.gid = 9)),
            ("size", Box::new(|r| r.size = 4)),
            ("rdev", Box::new(|r| r.rdev = 5)),
            ("link", Box::new(|r| r.link_target = b"x".to_vec())),
            ("xattrs", Box::new(|r| r.xattrs.clear())),
            ("digest", Box::new(|r| r.digest = [8; 32])),
            (
                "stat",
                Box::new(|r| {
                    r.stat = Some(RowStat {
                        mtime_ns: 1,
                        ctime_ns: 2,
                        ino: 3,
                        dev: 4,
                        snapshot_ns: 5,
                    })
                }),
            ),
        ];
        for kind in [EntryKind::File, EntryKind::Dir] {
            let a = Row {
                kind,
                ..base.clone()
            };
            for (what, change) in &variants {
                let mut b = a.clone();
                change(&mut b);
                assert_eq!(
                    a.compared_eq(&b),
                    hash(&a) == hash(&b),
                    "{what} on a {kind:?}"
                );
                assert_eq!(b.compared_eq(&a), a.compared_eq(&b), "{what}: symmetric");
            }
            assert!(a.compared_eq(&a.clone()));
        }
    }
}
