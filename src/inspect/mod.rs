//! Reading a cache for people and tools: entry listings, one entry in full, streamed per-path
//! rows, stats, integrity checks and compaction. The `layercache dump | stats | check | compact`
//! commands are thin shells over this module.
//!
//! This module owns the report types (what every command returns, `Serialize` for `--json`);
//! the jobs live in one submodule each:
//!
//! * `reader`: [`Inspector`], the read-only snapshot: listing, one entry, streamed rows,
//!   stats. Never writes.
//! * `check`: the integrity checker over that snapshot ([`check()`]). Never writes; the
//!   storage engine's own page-level check is asked of `maintain`.
//! * `maintain`: the only writable opens ([`stats_exact`], [`compact`], the database's
//!   integrity check). Never waits for a build, never creates a file.
//! * `render`: the human text form of every report. Never reads the database.
//!
//! ## Reading while a build runs
//!
//! [`Inspector`] opens the file with `Store::open_read_only` (its read-only handle), so it
//! can read while a builder holds the file through `Store::open`, even in another process. It
//! takes one read transaction at open and answers everything from that snapshot: a dump is
//! consistent even while the builder commits. (A snapshot pins the pages it reads; a dump left
//! paused for hours in a pager makes the writer's file grow meanwhile, as any long read does.)
//!
//! Only [`compact`], [`check()`]'s page-level integrity check and [`stats_exact`] need a writable
//! open. They never wait: if a builder holds the file they report it ([`Error::InUse`], or for
//! [`check()`] [`Integrity::SkippedInUse`] while every other check still runs read-only). The
//! plain [`Inspector::stats`] is read-only on purpose, so a person looking at a cache can never
//! make a build that starts at that moment fail to open it.
//!
//! ## Output forms
//!
//! Every report is a `Serialize` value (the `--json` form) with a `write_text` method (the human
//! form). Paths print in the escaped form of [`RelPath`]'s `Display` in both: UTF-8 kept, `\` as
//! `\\`, control characters and non-UTF-8 bytes as `\xNN`; [`RelPath::parse_escaped`] inverts it.
//! Symlink targets and xattrs are escaped the same way ([`escape_bytes`]). Rows are streamed
//! ([`Inspector::rows`]): nothing holds a whole source in memory.
//!
//! [`Error::InUse`]: crate::Error::InUse

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::path::{RelPath, display_hash, escape_bytes, hex, show_path};
use crate::schema::{BaseRecord, EntryKind, Row, SourceSummary};

mod check;
mod maintain;
mod reader;
mod render;

pub use check::{check, damaged_file_message};
pub use maintain::{compact, repair, stats_exact};
pub use reader::{Inspector, LayerRows};
pub use render::format_utc_ms;

/// Problems listed in full by [`check()`]; beyond this they are only counted, so a badly
/// damaged file of 10^6 rows does not make the report itself huge.
pub const MAX_LISTED_PROBLEMS: usize = 1000;

/// Characters of a base hash shown in the one-line listing (after any `algorithm:` prefix).
const SHORT_HASH: usize = 12;

/// A base as shown: kind, reference, full and short hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseView {
    /// `built`, `tar`, `oci`, `docker` or `scratch`.
    pub kind: &'static str,
    /// The base layer name, tarball path or image tag, as recorded.
    pub reference: String,
    /// The recorded base hash: hex, or the text digest for OCI bases; empty for scratch.
    pub hash: String,
    /// The first characters of `hash` (after any `sha256:` prefix).
    pub short_hash: String,
}

impl BaseView {
    fn of(b: &BaseRecord) -> Self {
        let hash = display_hash(&b.hash);
        let short_hash = match hash.split_once(':') {
            Some((algo, rest)) => format!("{algo}:{}", prefix(rest, SHORT_HASH)),
            None => prefix(&hash, SHORT_HASH).to_string(),
        };
        BaseView {
            kind: b.kind.as_str(),
            reference: b.reference.clone(),
            hash,
            short_hash,
        }
    }
}

/// One line of the entry listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryLine {
    /// Layer name.
    pub name: String,
    /// Layer types with an output manifest (`tar`, `squashfs`, ...).
    pub output_types: Vec<String>,
    /// The base recorded at put.
    pub base: BaseView,
    /// Number of cached imports.
    pub imports: usize,
    /// Number of overlay dirs.
    pub overlay_dirs: usize,
    /// Rows of all its sources, as its summaries record.
    pub rows: u64,
    /// Whether the layer is build-only.
    pub build_only: bool,
    /// Time of the put, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Time of the put, UTC, ISO 8601.
    pub created: String,
    /// Every stored version of the layer, most recently used first.
    pub versions: Vec<VersionLine>,
}

/// One stored version of a layer, as `dump` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionLine {
    /// Its input digest, hex (the key it is found by).
    pub input_digest: String,
    /// True for the layer's current version (the one its rows describe).
    pub current: bool,
    /// The definition digest, hex.
    pub definition_digest: String,
    /// The base it was built on.
    pub base: BaseView,
    /// Layer types with an output manifest.
    pub output_types: Vec<String>,
    /// Bytes of its output blobs (from the descriptors).
    pub output_bytes: u64,
    /// When it was recorded, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// When it was recorded, UTC.
    pub created: String,
    /// When it was last used, ms since the Unix epoch (recorded to the hour).
    pub last_used_unix_ms: u64,
    /// When it was last used, UTC.
    pub last_used: String,
    /// Why it does not decode, for a damaged version (then the other fields are empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

/// One item of the entry listing: an entry, or a stored value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ListedEntry {
    /// A decodable entry.
    Entry(EntryLine),
    /// An entry whose record is damaged.
    Damaged {
        /// Layer name (the key).
        name: String,
        /// Why it does not decode.
        damaged: String,
    },
}

/// Sums over the listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ListingTotals {
    /// Entries listed (damaged ones included).
    pub entries: u64,
    /// Stored versions over all layers.
    pub versions: u64,
    /// Entries whose record is damaged.
    pub damaged: u64,
    /// Cached imports over all entries.
    pub imports: u64,
    /// Overlay dirs over all entries.
    pub overlay_dirs: u64,
    /// Rows over all entries (from their summaries).
    pub rows: u64,
}

/// Every entry, sorted by layer name, with totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// The database file.
    pub db: String,
    /// The entries, sorted by name.
    pub entries: Vec<ListedEntry>,
    /// Sums.
    pub totals: ListingTotals,
}

/// One import or overlay dir of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceView {
    /// The import key or overlay dir source, as written in the definition.
    pub key: String,
    /// The row source id (`import:<key>` or `overlay:<key>`), what `--files SOURCE` takes.
    pub source: String,
    /// Type of the tree's root.
    pub kind: EntryKind,
    /// Number of rows.
    pub rows: u64,
    /// Merkle root over the rows, hex.
    pub root_digest: String,
}

impl SourceView {
    fn of(s: &SourceSummary) -> Self {
        SourceView {
            key: s.key.clone(),
            source: s.source.clone(),
            kind: s.root_kind,
            rows: s.rows,
            root_digest: hex(&s.root_digest),
        }
    }
}

/// One output manifest of an entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ManifestView {
    /// Layer type.
    pub layer_type: String,
    /// The OCI descriptor (or, if the stored JSON is damaged, its escaped bytes as a string).
    pub descriptor: serde_json::Value,
}

/// One entry in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntryDetail {
    /// Layer name.
    pub name: String,
    /// The layer definition (or, if the stored JSON is damaged, its escaped bytes as a string).
    pub definition: serde_json::Value,
    /// blake3 of the canonical definition, hex.
    pub definition_digest: String,
    /// The base recorded at put.
    pub base: BaseView,
    /// SOURCE_DATE_EPOCH of the build that put it.
    pub source_date_epoch: Option<i64>,
    /// Whether the layer is build-only.
    pub build_only: bool,
    /// Built here, or pulled from a registry (`built`, `pulled`).
    pub origin: &'static str,
    /// Time of the put, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Time of the put, UTC, ISO 8601.
    pub created: String,
    /// The output manifests.
    pub manifests: Vec<ManifestView>,
    /// Its input digest, hex.
    pub input_digest: String,
    /// Every stored version of the layer, most recently used first.
    pub versions: Vec<VersionLine>,
    /// Cached imports.
    pub imports: Vec<SourceView>,
    /// Overlay dirs.
    pub overlay_dirs: Vec<SourceView>,
}

/// One stored per-path row, with the source it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowLine {
    /// The row source id (`import:<key>` or `overlay:<key>`).
    pub source: String,
    /// The path relative to the source's root (`.` for the root).
    pub path: RelPath,
    /// The stored row.
    pub row: Row,
}

#[derive(Serialize)]
struct RowJson<'a> {
    source: &'a str,
    path: &'a RelPath,
    #[serde(rename = "type")]
    kind: EntryKind,
    mode: String,
    uid: u32,
    gid: u32,
    size: u64,
    digest: Option<String>,
    link_target: Option<String>,
    rdev: Option<u64>,
    xattrs: BTreeMap<String, String>,
}

impl Serialize for RowLine {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let r = &self.row;
        RowJson {
            source: &self.source,
            path: &self.path,
            kind: r.kind,
            mode: format!("{:04o}", r.mode),
            uid: r.uid,
            gid: r.gid,
            size: r.size,
            digest: (r.kind == EntryKind::File).then(|| hex(&r.digest)),
            link_target: (r.kind == EntryKind::Symlink).then(|| escape_bytes(&r.link_target)),
            rdev: matches!(r.kind, EntryKind::CharDevice | EntryKind::BlockDevice)
                .then_some(r.rdev),
            xattrs: r
                .xattrs
                .iter()
                .map(|(k, v)| (escape_bytes(k), escape_bytes(v)))
                .collect(),
        }
        .serialize(s)
    }
}

/// Which rows [`Inspector::rows`] streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowSelection {
    /// Every row of the layer, source by source.
    All,
    /// The rows of one source id (`import:<key>` or `overlay:<key>`).
    Source(String),
}

/// Storage use of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableUsage {
    /// Table name.
    pub name: &'static str,
    /// Number of key/value pairs.
    pub len: u64,
    /// Bytes of keys and values.
    pub stored_bytes: u64,
    /// Bytes of b-tree branch keys and other metadata.
    pub metadata_bytes: u64,
    /// Unused bytes inside the table's pages.
    pub fragmented_bytes: u64,
    /// Leaf plus branch pages.
    pub pages: u64,
}

/// The storage engine's own accounting, available only through a writable open ([`stats_exact`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExactUsage {
    /// Page size.
    pub page_size: u64,
    /// Pages allocated in the file.
    pub allocated_pages: u64,
    /// Bytes of keys and values in user tables.
    pub stored_bytes: u64,
    /// Metadata bytes (branch keys, the database's system tables).
    pub metadata_bytes: u64,
    /// Fragmented bytes including free pages: about what `compact` reclaims.
    pub fragmented_bytes: u64,
}

/// What a cache file holds and how much of it is in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// The database file.
    pub db: String,
    /// Size of the file in bytes.
    pub file_bytes: u64,
    /// Schema version stored in the file.
    pub schema_version: u32,
    /// Layers with a current version.
    pub entries: u64,
    /// Per-path rows (the last seen state of each layer's sources).
    pub rows: u64,
    /// Stored versions over all layers.
    pub versions: u64,
    /// Bytes per version in the versions table (stored bytes / versions): what keeping one
    /// more version costs — one record, never a copy of the rows.
    pub bytes_per_version: u64,
    /// Storage use of each table.
    pub tables: Vec<TableUsage>,
    /// Bytes in the pages of layercache's tables (stored + metadata + fragmented).
    pub table_bytes: u64,
    /// Fragmented bytes inside those pages.
    pub table_fragmented_bytes: u64,
    /// The rest of the file: free pages, the database's own tables and header. With
    /// `table_fragmented_bytes`, an upper bound of what `compact` can reclaim.
    pub outside_tables_bytes: u64,
    /// The storage engine's exact accounting, when the file could be opened for writing.
    pub exact: Option<ExactUsage>,
}

/// The outcome of the storage engine's own integrity check (page checksums, allocator state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum Integrity {
    /// Not run (only the read-only checks were asked for).
    NotRun,
    /// The check passed.
    Passed,
    /// The file needed a repair, and the database repaired it.
    Repaired,
    /// The check failed.
    Failed(String),
    /// Not run: another process (a build) holds the file for writing, and the check needs a
    /// writable open.
    SkippedInUse,
    /// Not run: the file cannot be opened for writing (permissions, read-only file system).
    SkippedNotWritable(String),
    /// Not run: the file was not closed cleanly (a writing process was killed). That is not
    /// damage: nothing committed is lost, and the next writable open (a build, or
    /// `check --repair`) repairs it; until then the database allows no read-only view.
    NeedsRepair,
}

/// What kind of problem [`check()`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The database's integrity check failed, or the file could not be opened for it.
    DatabaseIntegrity,
    /// The file was not closed cleanly; it needs the database's repair, which loses nothing committed.
    /// Not damage.
    NotClosedCleanly,
    /// The records could not be read at all (the file is damaged).
    Unreadable,
    /// The `meta` table is missing a fact or holds a damaged one.
    Meta,
    /// An entry record does not decode.
    DamagedEntry,
    /// An entry's stored name differs from its key, or the name is not a valid layer name.
    EntryName,
    /// The stored definition is not JSON, or its digest differs.
    Definition,
    /// A stored manifest is not an OCI descriptor.
    Manifest,
    /// Two summaries of one entry name the same row source, or a summary's source id is wrong.
    SourceId,
    /// A row does not decode, or its key is invalid.
    DamagedRow,
    /// A source's row count differs from its summary.
    RowCount,
    /// A source's recomputed Merkle root differs from its summary.
    RootDigest,
    /// A source's root row has another type than its summary records.
    RootKind,
    /// Rows of a layer that has no entry.
    OrphanRows,
    /// Rows of a source its entry does not list.
    StraySource,
    /// A version whose input digest, recomputed from its record, differs from its key.
    VersionKey,
    /// A layer pointer naming a version that is not stored.
    Pointer,
    /// A layer built on a version of its base that is not stored.
    MissingBase,
}

/// One problem found by [`check()`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// The layer concerned.
    pub layer: Option<String>,
    /// The row source concerned.
    pub source: Option<String>,
    /// The path concerned (escaped form).
    pub path: Option<String>,
    /// What is wrong.
    pub detail: String,
}

/// The result of [`check()`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The database file.
    pub db: String,
    /// The database's integrity check.
    pub integrity: Integrity,
    /// Entries examined.
    pub entries_checked: u64,
    /// Sources (import and overlay dir summaries) compared with their rows.
    pub sources_checked: u64,
    /// Rows decoded.
    pub rows_checked: u64,
    /// Versions examined (checksum, key, input digest).
    pub versions_checked: u64,
    /// The problems found (at most [`MAX_LISTED_PROBLEMS`]).
    pub problems: Vec<Problem>,
    /// Problems found beyond those listed.
    pub problems_not_listed: u64,
    /// `check --repair` found the file not closed cleanly and repaired it before checking.
    pub repaired: bool,
}

impl CheckReport {
    /// True when nothing is wrong (a skipped integrity check is not a problem).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.problems_not_listed == 0
    }

    /// An empty report whose integrity check has not run.
    fn new(path: &Path) -> Self {
        CheckReport {
            db: show_path(path),
            integrity: Integrity::NotRun,
            entries_checked: 0,
            sources_checked: 0,
            rows_checked: 0,
            versions_checked: 0,
            problems: Vec::new(),
            problems_not_listed: 0,
            repaired: false,
        }
    }

    fn push(&mut self, p: Problem) {
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(p);
        } else {
            self.problems_not_listed += 1;
        }
    }
}

/// The result of [`compact`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    /// The database file.
    pub db: String,
    /// File size before.
    pub bytes_before: u64,
    /// File size after.
    pub bytes_after: u64,
    /// Compaction passes that moved something.
    pub passes: u64,
}

fn problem(
    kind: ProblemKind,
    layer: Option<&str>,
    source: Option<&str>,
    detail: String,
) -> Problem {
    Problem {
        kind,
        layer: layer.map(str::to_string),
        source: source.map(str::to_string),
        path: None,
        detail,
    }
}

fn prefix(s: &str, n: usize) -> &str {
    s.char_indices()
        .nth(n)
        .map_or(s, |(i, _)| s.get(..i).unwrap_or(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::BaseKind;

    #[test]
    fn short_hashes() {
        let oci = BaseView::of(&BaseRecord {
            kind: BaseKind::Oci,
            reference: "img:1".into(),
            hash: format!("sha256:{}", "ab".repeat(32)).into_bytes(),
        });
        assert_eq!(oci.short_hash, "sha256:abababababab");
        let built = BaseView::of(&BaseRecord {
            kind: BaseKind::Built,
            reference: "base".into(),
            hash: vec![0x01; 32],
        });
        assert_eq!(built.short_hash, "010101010101");
        assert_eq!(built.short(), "built:base 010101010101");
    }
}
