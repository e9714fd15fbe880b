//! One source of a layer: its identity, and what a lookup observed of it for a later put.
//!
//! Owns: [`SourceRole`] and [`SourceId`], the one spelling of a source (`import:KEY` /
//! `overlay:KEY` in the rows table, `import` / `overlay_dir` in messages, and the miss reasons
//! of each role); the cached sources of a layer ([`cached_sources`], [`import_identity`]);
//! [`Observed`], what a lookup saw for a later put (its walk log), and how a put's entry is
//! compared with it ([`same_as_observed`]); [`LyingRow`].
//!
//! Must never: walk a tree (that is `engine/observe.rs`), touch the database, or depend on any
//! other module of the engine: everything that walks, decides or writes depends on this one.

use std::borrow::Cow;
use std::path::Path;

use serde::Serialize;

use crate::diff::TreeDiff;
use crate::error::{Error, Result};
use crate::inputs::LayerInputs;
use crate::path::{RelPath, escape_bytes};
use crate::reason::MissReason;
use crate::schema::{Row, SourceSummary, VersionRecord};
use crate::tree::{SealedLog, WalkedEntry};

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
