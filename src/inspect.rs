//! Reading a cache for people and tools: entry listings, one entry in full, streamed per-path
//! rows, stats, integrity checks and compaction. The `layercache dump | stats | check | compact`
//! commands are thin shells over this module.
//!
//! ## Reading while a build runs
//!
//! [`Inspector`] opens the file with [`Store::open_read_only`] (redb's `SingleWriter` mode), so it
//! can read while a builder holds the file through [`Store::open`], even in another process. It
//! takes one read transaction at open and answers everything from that snapshot: a dump is
//! consistent even while the builder commits. (A snapshot pins the pages it reads; a dump left
//! paused for hours in a pager makes the writer's file grow meanwhile, as any long read does.)
//!
//! Only [`compact`], [`check`]'s redb-level integrity check and [`stats_exact`] need a writable
//! open. They never wait: if a builder holds the file they report it ([`Error::InUse`], or for
//! [`check`] [`Integrity::SkippedInUse`] while every other check still runs read-only). The
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

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use redb::{ReadableTable, ReadableTableMetadata};
use serde::Serialize;

use crate::cache::{decode_entry, entry_digest};
use crate::codec;
use crate::error::{DbResultExt, Error, Result};
use crate::path::{RelPath, display_hash, escape_bytes, hex, show_path};
use crate::schema::{
    BASES, BaseKind, BaseRecord, ENTRIES, EntryKind, EntryRecord, META, ROWS, Row, SourceSummary,
};
use crate::store::Store;
use crate::tree::TreeHasher;

/// Problems listed in full by [`check`]; beyond this they are only counted, so a badly damaged
/// file of 10^6 rows does not make the report itself huge.
pub const MAX_LISTED_PROBLEMS: usize = 1000;

/// Characters of a base hash shown in the one-line listing (after any `algorithm:` prefix).
const SHORT_HASH: usize = 12;

/// A read-only view of a cache file: one read transaction, held for the life of the value.
pub struct Inspector {
    txn: redb::ReadTransaction,
    store: Store,
}

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

    fn short(&self) -> String {
        match (self.kind, self.short_hash.is_empty()) {
            ("scratch", _) => "scratch".to_string(),
            (_, true) => format!("{}:{}", self.kind, self.reference),
            _ => format!("{}:{} {}", self.kind, self.reference, self.short_hash),
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
    /// Time of the put, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Time of the put, UTC, ISO 8601.
    pub created: String,
    /// The output manifests.
    pub manifests: Vec<ManifestView>,
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

impl RowLine {
    /// One line: type, mode (octal), uid:gid, size, digest (files; `-` otherwise), path, and
    /// ` -> target` for symlinks, ` dev major,minor` for devices, ` xattrs{..}` when present.
    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        let r = &self.row;
        let digest = if r.kind == EntryKind::File {
            hex(&r.digest)
        } else {
            "-".to_string()
        };
        let owner = format!("{}:{}", r.uid, r.gid);
        write!(
            w,
            "{:<12} {:04o} {:>11} {:>12} {:<64} {}",
            r.kind.as_str(),
            r.mode,
            owner,
            r.size,
            digest,
            self.path
        )?;
        match r.kind {
            EntryKind::Symlink => write!(w, " -> {}", escape_bytes(&r.link_target))?,
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                let (major, minor) = (libc::major(r.rdev), libc::minor(r.rdev));
                write!(w, " dev {major},{minor}")?
            }
            _ => {}
        }
        if !r.xattrs.is_empty() {
            let list: Vec<String> = r
                .xattrs
                .iter()
                .map(|(k, v)| format!("{}={}", escape_bytes(k), escape_bytes(v)))
                .collect();
            write!(w, " xattrs{{{}}}", list.join(", "))?;
        }
        writeln!(w)
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

/// redb's own accounting, available only through a writable open ([`stats_exact`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExactUsage {
    /// Page size.
    pub page_size: u64,
    /// Pages allocated in the file.
    pub allocated_pages: u64,
    /// Bytes of keys and values in user tables.
    pub stored_bytes: u64,
    /// Metadata bytes (branch keys, redb's system tables).
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
    /// Entries.
    pub entries: u64,
    /// Per-path rows.
    pub rows: u64,
    /// Base hashes.
    pub bases: u64,
    /// Storage use of each table.
    pub tables: Vec<TableUsage>,
    /// Bytes in the pages of layercache's tables (stored + metadata + fragmented).
    pub table_bytes: u64,
    /// Fragmented bytes inside those pages.
    pub table_fragmented_bytes: u64,
    /// The rest of the file: free pages, redb's own tables and header. With
    /// `table_fragmented_bytes`, an upper bound of what `compact` can reclaim.
    pub outside_tables_bytes: u64,
    /// redb's exact accounting, when the file could be opened for writing.
    pub exact: Option<ExactUsage>,
}

/// The outcome of redb's own integrity check (page checksums, allocator state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum Integrity {
    /// Not run (only the read-only checks were asked for).
    NotRun,
    /// The check passed.
    Passed,
    /// The file needed a repair, and redb repaired it.
    Repaired,
    /// The check failed.
    Failed(String),
    /// Not run: another process (a build) holds the file for writing, and the check needs a
    /// writable open.
    SkippedInUse,
    /// Not run: the file cannot be opened for writing (permissions, read-only file system).
    SkippedNotWritable(String),
}

/// What kind of problem [`check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// redb's integrity check failed, or redb could not open the file for it.
    RedbIntegrity,
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
    /// An entry without a base hash, or whose base hash differs from its record.
    BaseHash,
    /// A base hash of a layer that has no entry.
    OrphanBaseHash,
    /// A layer built on a layer that has no entry or no base hash.
    MissingBase,
}

/// One problem found by [`check`].
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

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", serde_name(&self.kind))?;
        if let Some(l) = &self.layer {
            write!(f, ": layer {}", escape_bytes(l.as_bytes()))?;
        }
        if let Some(s) = &self.source {
            write!(f, ", {}", escape_bytes(s.as_bytes()))?;
        }
        if let Some(p) = &self.path {
            write!(f, ", path {p}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The database file.
    pub db: String,
    /// redb's integrity check.
    pub integrity: Integrity,
    /// Entries examined.
    pub entries_checked: u64,
    /// Sources (import and overlay dir summaries) compared with their rows.
    pub sources_checked: u64,
    /// Rows decoded.
    pub rows_checked: u64,
    /// Base hashes examined.
    pub bases_checked: u64,
    /// The problems found (at most [`MAX_LISTED_PROBLEMS`]).
    pub problems: Vec<Problem>,
    /// Problems found beyond those listed.
    pub problems_not_listed: u64,
}

impl CheckReport {
    /// True when nothing is wrong (a skipped redb check is not a problem).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.problems_not_listed == 0
    }

    /// An empty report whose redb check has not run.
    fn new(path: &Path) -> Self {
        CheckReport {
            db: show_path(path),
            integrity: Integrity::NotRun,
            entries_checked: 0,
            sources_checked: 0,
            rows_checked: 0,
            bases_checked: 0,
            problems: Vec::new(),
            problems_not_listed: 0,
        }
    }

    fn push(&mut self, p: Problem) {
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(p);
        } else {
            self.problems_not_listed += 1;
        }
    }

    /// Human form: what was checked, the redb check's outcome, then one line per problem.
    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(w, "checked {}", self.db)?;
        let integrity = match &self.integrity {
            Integrity::NotRun => "not run".to_string(),
            Integrity::Passed => "passed".to_string(),
            Integrity::Repaired => "the file needed a repair, and redb repaired it".to_string(),
            Integrity::Failed(d) => format!("FAILED: {d}"),
            Integrity::SkippedInUse => "skipped: the file is in use by another process (a build \
                holds it for writing); every other check ran read-only. Run `layercache check` \
                again when no build is running for the page-level check"
                .to_string(),
            Integrity::SkippedNotWritable(d) => format!(
                "skipped: the file cannot be opened for writing ({d}); every other check ran \
                 read-only"
            ),
        };
        writeln!(w, "redb integrity check: {integrity}")?;
        writeln!(
            w,
            "records: {} entries, {} sources, {} rows, {} base hashes",
            self.entries_checked, self.sources_checked, self.rows_checked, self.bases_checked
        )?;
        if self.is_clean() {
            return writeln!(w, "no problems found");
        }
        let total = self.problems.len() as u64 + self.problems_not_listed;
        writeln!(w, "{total} problem(s):")?;
        for p in &self.problems {
            writeln!(w, "  {p}")?;
        }
        if self.problems_not_listed > 0 {
            writeln!(w, "  ... and {} more", self.problems_not_listed)?;
        }
        Ok(())
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

impl CompactReport {
    /// Human form: sizes before and after.
    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(
            w,
            "compacted {}: {} -> {}, {} reclaimed in {} pass(es)",
            self.db,
            human_bytes(self.bytes_before),
            human_bytes(self.bytes_after),
            human_bytes(self.bytes_before.saturating_sub(self.bytes_after)),
            self.passes
        )
    }
}

impl Inspector {
    /// Opens `path` read-only (see the module doc: works while a builder writes to it).
    pub fn open(path: impl AsRef<Path>) -> Result<Inspector> {
        Inspector::new(Store::open_read_only(path)?)
    }

    /// Wraps an open store, taking the read snapshot now.
    pub fn new(store: Store) -> Result<Inspector> {
        let txn = store.begin_read()?;
        Ok(Inspector { txn, store })
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn path(&self) -> &Path {
        self.store.path()
    }

    /// Every entry, sorted by name, with totals. A damaged record is listed as such rather
    /// than failing the listing.
    pub fn list(&self) -> Result<Listing> {
        crate::cache::guard_redb(self.path(), || self.list_unguarded())
    }

    fn list_unguarded(&self) -> Result<Listing> {
        let path = self.path();
        let table = self.txn.open_table(ENTRIES).db(path)?;
        let mut entries = Vec::new();
        let mut totals = ListingTotals::default();
        for item in table.iter().db(path)? {
            let (k, v) = item.db(path)?;
            let name = k.value().to_string();
            totals.entries += 1;
            match decode_entry(path, &name, v.value()) {
                Err(e) => {
                    totals.damaged += 1;
                    entries.push(ListedEntry::Damaged {
                        name,
                        damaged: e.to_string(),
                    });
                }
                Ok(rec) => {
                    let rows = rec
                        .imports
                        .iter()
                        .chain(&rec.overlay_dirs)
                        .map(|s| s.rows)
                        .fold(0u64, u64::saturating_add);
                    totals.imports += rec.imports.len() as u64;
                    totals.overlay_dirs += rec.overlay_dirs.len() as u64;
                    totals.rows = totals.rows.saturating_add(rows);
                    entries.push(ListedEntry::Entry(EntryLine {
                        name,
                        output_types: rec.manifests.iter().map(|m| m.layer_type.clone()).collect(),
                        base: BaseView::of(&rec.base),
                        imports: rec.imports.len(),
                        overlay_dirs: rec.overlay_dirs.len(),
                        rows,
                        build_only: rec.build_only,
                        created_unix_ms: rec.created_unix_ms,
                        created: format_utc_ms(rec.created_unix_ms),
                    }));
                }
            }
        }
        Ok(Listing {
            db: show_path(path),
            entries,
            totals,
        })
    }

    /// The stored record of `layer`, if it has an entry.
    pub fn record(&self, layer: &str) -> Result<Option<EntryRecord>> {
        crate::cache::guard_redb(self.path(), || self.record_unguarded(layer))
    }

    fn record_unguarded(&self, layer: &str) -> Result<Option<EntryRecord>> {
        let path = self.path();
        let table = self.txn.open_table(ENTRIES).db(path)?;
        let Some(v) = table.get(layer).db(path)? else {
            return Ok(None);
        };
        decode_entry(path, layer, v.value()).map(Some)
    }

    /// One entry in full, if `layer` has an entry.
    pub fn entry(&self, layer: &str) -> Result<Option<EntryDetail>> {
        crate::cache::guard_redb(self.path(), || self.entry_unguarded(layer))
    }

    fn entry_unguarded(&self, layer: &str) -> Result<Option<EntryDetail>> {
        Ok(self.record(layer)?.map(|rec| EntryDetail {
            name: rec.name.clone(),
            definition: json_or_escaped(&rec.definition_json),
            definition_digest: hex(&rec.definition_digest),
            base: BaseView::of(&rec.base),
            source_date_epoch: rec.source_date_epoch,
            build_only: rec.build_only,
            created_unix_ms: rec.created_unix_ms,
            created: format_utc_ms(rec.created_unix_ms),
            manifests: rec
                .manifests
                .iter()
                .map(|m| ManifestView {
                    layer_type: m.layer_type.clone(),
                    descriptor: json_or_escaped(&m.descriptor_json),
                })
                .collect(),
            imports: rec.imports.iter().map(SourceView::of).collect(),
            overlay_dirs: rec.overlay_dirs.iter().map(SourceView::of).collect(),
        }))
    }

    /// Resolves what a person typed after `--files` to a row source id of `record`: a source id
    /// as stored (`import:<key>`, `overlay:<key>`), or a bare import or overlay dir key.
    pub fn resolve_source(record: &EntryRecord, given: &str) -> Result<String> {
        let all = || record.imports.iter().chain(&record.overlay_dirs);
        if let Some(s) = all().find(|s| s.source == given) {
            return Ok(s.source.clone());
        }
        let mut by_key = all().filter(|s| s.key == given);
        match (by_key.next(), by_key.next()) {
            (Some(s), None) => Ok(s.source.clone()),
            (Some(_), Some(_)) => Err(Error::InvalidName {
                what: "source",
                value: escape_bytes(given.as_bytes()),
                why: "both an import and an overlay dir of this layer have that key; write \
                      import:KEY or overlay:KEY",
            }),
            (None, _) => Err(Error::InvalidName {
                what: "source",
                value: escape_bytes(given.as_bytes()),
                why: "the layer has no import or overlay dir with that key; `layercache dump \
                      --db FILE LAYER` lists its sources",
            }),
        }
    }

    /// Streams the stored rows of `layer` in key order (source by source, each in walk order),
    /// decoding one at a time. A row that does not decode is an `Err` item; iteration goes on.
    pub fn rows(&self, layer: &str, which: &RowSelection) -> Result<LayerRows> {
        let path = self.path();
        let table = match self.txn.open_table(ROWS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(LayerRows {
                    path: path.to_path_buf(),
                    range: None,
                });
            }
            Err(e) => return Err(e).db(path),
        };
        // Neither layer names nor source ids contain NUL, so `x + "\0"` is the smallest string
        // above `x`: these half-open ranges hold exactly the rows of the layer (or source).
        let range = match which {
            RowSelection::All => {
                let upper = format!("{layer}\0");
                let lo: (&str, &str, &[u8]) = (layer, "", &[]);
                let hi: (&str, &str, &[u8]) = (upper.as_str(), "", &[]);
                table.range(lo..hi).db(path)?
            }
            RowSelection::Source(source) => {
                let upper = format!("{source}\0");
                let lo: (&str, &str, &[u8]) = (layer, source.as_str(), &[]);
                let hi: (&str, &str, &[u8]) = (layer, upper.as_str(), &[]);
                table.range(lo..hi).db(path)?
            }
        };
        Ok(LayerRows {
            path: path.to_path_buf(),
            range: Some(range),
        })
    }

    /// Counts and storage use, read-only: exact for the tables, an upper bound for what
    /// `compact` could reclaim (redb reports free pages only to a writer; see [`stats_exact`]).
    pub fn stats(&self) -> Result<Stats> {
        crate::cache::guard_redb(self.path(), || self.stats_unguarded())
    }

    fn stats_unguarded(&self) -> Result<Stats> {
        let path = self.path();
        let file_bytes = std::fs::metadata(path)
            .map_err(|e| Error::io("cannot stat", path, e))?
            .len();
        let mut tables = Vec::new();
        macro_rules! usage {
            ($def:expr, $name:literal) => {
                match self.txn.open_table($def) {
                    Ok(t) => {
                        let s = t.stats().db(path)?;
                        tables.push(TableUsage {
                            name: $name,
                            len: t.len().db(path)?,
                            stored_bytes: s.stored_bytes(),
                            metadata_bytes: s.metadata_bytes(),
                            fragmented_bytes: s.fragmented_bytes(),
                            pages: s.leaf_pages() + s.branch_pages(),
                        });
                    }
                    Err(redb::TableError::TableDoesNotExist(_)) => tables.push(TableUsage {
                        name: $name,
                        len: 0,
                        stored_bytes: 0,
                        metadata_bytes: 0,
                        fragmented_bytes: 0,
                        pages: 0,
                    }),
                    Err(e) => return Err(e).db(path),
                }
            };
        }
        usage!(META, "meta");
        usage!(ENTRIES, "entries");
        usage!(ROWS, "rows");
        usage!(BASES, "bases");
        let len_of = |n: &str| tables.iter().find(|t| t.name == n).map_or(0, |t| t.len);
        let table_bytes: u64 = tables
            .iter()
            .map(|t| t.stored_bytes + t.metadata_bytes + t.fragmented_bytes)
            .sum();
        let table_fragmented_bytes = tables.iter().map(|t| t.fragmented_bytes).sum();
        Ok(Stats {
            db: show_path(path),
            file_bytes,
            schema_version: self.store.schema_version()?,
            entries: len_of("entries"),
            rows: len_of("rows"),
            bases: len_of("bases"),
            table_bytes,
            table_fragmented_bytes,
            outside_tables_bytes: file_bytes.saturating_sub(table_bytes),
            tables,
            exact: None,
        })
    }

    /// Every check that needs only reading: records decode, summaries agree with their rows
    /// (count and recomputed Merkle root), base hashes exist and agree, no orphans. The
    /// report's redb check is [`Integrity::NotRun`]; [`check`] runs both.
    pub fn check_records(&self) -> Result<CheckReport> {
        crate::cache::guard_redb(self.path(), || self.check_records_unguarded())
    }

    fn check_records_unguarded(&self) -> Result<CheckReport> {
        let mut report = CheckReport::new(self.path());
        self.check_meta(&mut report)?;
        let layers = self.check_entries(&mut report)?;
        self.check_bases(&mut report, &layers)?;
        self.check_rows(&mut report, layers)?;
        Ok(report)
    }

    fn check_meta(&self, report: &mut CheckReport) -> Result<()> {
        let path = self.path();
        let meta = self.txn.open_table(META).db(path)?;
        if meta.get(crate::schema::META_WRITER).db(path)?.is_none() {
            report.push(problem(
                ProblemKind::Meta,
                None,
                None,
                "the meta table has no `writer` fact".into(),
            ));
        }
        Ok(())
    }

    /// Decodes every entry; returns what each one expects of the rows and bases tables.
    fn check_entries(&self, report: &mut CheckReport) -> Result<BTreeMap<String, Expect>> {
        let path = self.path();
        let mut layers = BTreeMap::new();
        let table = self.txn.open_table(ENTRIES).db(path)?;
        let bases = self.txn.open_table(BASES).db(path)?;
        for item in table.iter().db(path)? {
            let (k, v) = item.db(path)?;
            let name = k.value().to_string();
            report.entries_checked += 1;
            let lay = Some(name.as_str());
            if let Err(e) = crate::path::validate_layer_name(&name) {
                report.push(problem(ProblemKind::EntryName, lay, None, e.to_string()));
            }
            let rec = match decode_entry(path, &name, v.value()) {
                Ok(r) => r,
                Err(e) => {
                    report.push(problem(ProblemKind::DamagedEntry, lay, None, e.to_string()));
                    layers.insert(name, Expect::Damaged);
                    continue;
                }
            };
            if rec.name != name {
                let detail = format!(
                    "the record names layer {}",
                    escape_bytes(rec.name.as_bytes())
                );
                report.push(problem(ProblemKind::EntryName, lay, None, detail));
            }
            match serde_json::from_slice::<serde_json::Value>(&rec.definition_json) {
                Err(e) => {
                    let detail = format!("the stored definition is not JSON: {e}");
                    report.push(problem(ProblemKind::Definition, lay, None, detail));
                }
                Ok(_)
                    if *blake3::hash(&rec.definition_json).as_bytes() != rec.definition_digest =>
                {
                    let detail = "the definition digest does not match the stored definition";
                    report.push(problem(ProblemKind::Definition, lay, None, detail.into()));
                }
                Ok(_) => {}
            }
            for m in &rec.manifests {
                if let Err(e) =
                    serde_json::from_slice::<oci_spec::image::Descriptor>(&m.descriptor_json)
                {
                    let detail = format!(
                        "the {} manifest is not an OCI descriptor: {e}",
                        escape_bytes(m.layer_type.as_bytes())
                    );
                    report.push(problem(ProblemKind::Manifest, lay, None, detail));
                }
            }
            let mut sources = BTreeMap::new();
            let roles = [("import", &rec.imports), ("overlay", &rec.overlay_dirs)];
            for (prefix, list) in roles {
                for s in list {
                    let expected_id = format!("{prefix}:{}", s.key);
                    if s.source != expected_id {
                        let detail = format!(
                            "summary of key {} has source id {}, expected {}",
                            escape_bytes(s.key.as_bytes()),
                            escape_bytes(s.source.as_bytes()),
                            escape_bytes(expected_id.as_bytes())
                        );
                        report.push(problem(ProblemKind::SourceId, lay, None, detail));
                    }
                    let summary = SeenSource {
                        summary: s.clone(),
                        seen: false,
                    };
                    if sources.insert(s.source.clone(), summary).is_some() {
                        let detail = "two summaries of the entry name this source".to_string();
                        report.push(problem(
                            ProblemKind::SourceId,
                            lay,
                            Some(s.source.as_str()),
                            detail,
                        ));
                    }
                }
            }
            match bases.get(name.as_str()).db(path)? {
                None => report.push(problem(
                    ProblemKind::BaseHash,
                    lay,
                    None,
                    "the entry has no base hash in the bases table".into(),
                )),
                Some(h) if h.value() != &entry_digest(&rec) => report.push(problem(
                    ProblemKind::BaseHash,
                    lay,
                    None,
                    "its base hash differs from the hash of its entry".into(),
                )),
                Some(_) => {}
            }
            let built_on = (rec.base.kind == BaseKind::Built).then(|| rec.base.reference.clone());
            layers.insert(name, Expect::Entry { sources, built_on });
        }
        Ok(layers)
    }

    fn check_bases(
        &self,
        report: &mut CheckReport,
        layers: &BTreeMap<String, Expect>,
    ) -> Result<()> {
        let path = self.path();
        let bases = self.txn.open_table(BASES).db(path)?;
        for item in bases.iter().db(path)? {
            let (k, _) = item.db(path)?;
            report.bases_checked += 1;
            if !layers.contains_key(k.value()) {
                report.push(problem(
                    ProblemKind::OrphanBaseHash,
                    Some(k.value()),
                    None,
                    "a base hash is stored for a layer that has no entry".into(),
                ));
            }
        }
        for (name, expect) in layers {
            let Expect::Entry {
                built_on: Some(base),
                ..
            } = expect
            else {
                continue;
            };
            let detail = if !layers.contains_key(base) {
                format!(
                    "it is built from layer {}, which has no entry",
                    escape_bytes(base.as_bytes())
                )
            } else if bases.get(base.as_str()).db(path)?.is_none() {
                format!(
                    "it is built from layer {}, which has no base hash",
                    escape_bytes(base.as_bytes())
                )
            } else {
                continue;
            };
            report.push(problem(ProblemKind::MissingBase, Some(name), None, detail));
        }
        Ok(())
    }

    /// One scan of the rows table, in key order: every row decodes, and each (layer, source)
    /// run is counted and hashed and compared with its entry's summary.
    fn check_rows(
        &self,
        report: &mut CheckReport,
        mut layers: BTreeMap<String, Expect>,
    ) -> Result<()> {
        let path = self.path();
        let table = self.txn.open_table(ROWS).db(path)?;
        let mut run: Option<Run> = None;
        for item in table.iter().db(path)? {
            let (k, v) = item.db(path)?;
            let (layer, source, key) = k.value();
            report.rows_checked += 1;
            let same = run
                .as_ref()
                .is_some_and(|r| r.layer == layer && r.source == source);
            if !same {
                if let Some(done) = run.take() {
                    done.finish(report, &mut layers);
                }
                run = Some(Run::new(layer, source));
            }
            let Some(r) = run.as_mut() else { continue };
            let rel = RelPath::from_key(key);
            match codec::decode::<Row, { codec::ROW_LIMIT }>(v.value()) {
                Ok(row) => {
                    if r.rows == 0 && !rel.is_root() {
                        r.first_not_root = true;
                    }
                    if rel.is_root() {
                        r.root_kind = Some(row.kind);
                    }
                    r.hasher.push(&rel, &row);
                }
                Err(detail) => {
                    r.damaged = true;
                    report.push(Problem {
                        kind: ProblemKind::DamagedRow,
                        layer: Some(layer.to_string()),
                        source: Some(source.to_string()),
                        path: Some(rel.to_string()),
                        detail,
                    });
                }
            }
            r.rows += 1;
        }
        if let Some(done) = run.take() {
            done.finish(report, &mut layers);
        }
        for (name, expect) in layers {
            let Expect::Entry { sources, .. } = expect else {
                continue;
            };
            for (source, s) in sources.into_iter().filter(|(_, s)| !s.seen) {
                report.sources_checked += 1;
                let detail = format!(
                    "no rows are stored for this source; the entry records {} rows",
                    s.summary.rows
                );
                report.push(Problem {
                    kind: ProblemKind::RowCount,
                    layer: Some(name.clone()),
                    source: Some(source),
                    path: None,
                    detail,
                });
            }
        }
        Ok(())
    }
}

/// What an entry expects of the other tables.
enum Expect {
    /// The record does not decode: its rows cannot be checked, and are not orphans.
    Damaged,
    Entry {
        sources: BTreeMap<String, SeenSource>,
        built_on: Option<String>,
    },
}

struct SeenSource {
    summary: SourceSummary,
    seen: bool,
}

/// The rows of one (layer, source) seen so far during the scan.
struct Run {
    layer: String,
    source: String,
    hasher: TreeHasher,
    rows: u64,
    root_kind: Option<EntryKind>,
    first_not_root: bool,
    damaged: bool,
}

impl Run {
    fn new(layer: &str, source: &str) -> Self {
        Run {
            layer: layer.to_string(),
            source: source.to_string(),
            hasher: TreeHasher::new(),
            rows: 0,
            root_kind: None,
            first_not_root: false,
            damaged: false,
        }
    }

    fn finish(self, report: &mut CheckReport, layers: &mut BTreeMap<String, Expect>) {
        let lay = Some(self.layer.as_str());
        let src = Some(self.source.as_str());
        let sources = match layers.get_mut(&self.layer) {
            None => {
                let detail = format!("{} rows of a layer that has no entry", self.rows);
                report.push(problem(ProblemKind::OrphanRows, lay, src, detail));
                return;
            }
            Some(Expect::Damaged) => return,
            Some(Expect::Entry { sources, .. }) => sources,
        };
        let Some(expected) = sources.get_mut(&self.source) else {
            let detail = format!(
                "{} rows of a source the entry does not list; putting the layer again \
                 replaces them",
                self.rows
            );
            report.push(problem(ProblemKind::StraySource, lay, src, detail));
            return;
        };
        expected.seen = true;
        report.sources_checked += 1;
        let s = &expected.summary;
        if self.rows != s.rows {
            let detail = format!(
                "{} rows are stored, the entry records {}",
                self.rows, s.rows
            );
            report.push(problem(ProblemKind::RowCount, lay, src, detail));
        }
        if self.first_not_root {
            let detail = "the source has no root row (`.`)".to_string();
            report.push(problem(ProblemKind::RootKind, lay, src, detail));
        } else if let Some(k) = self.root_kind
            && k != s.root_kind
        {
            let detail = format!("the root row is a {k}, the entry records a {}", s.root_kind);
            report.push(problem(ProblemKind::RootKind, lay, src, detail));
        }
        if self.damaged {
            // The damaged rows are listed; a root over the rest would only repeat that.
            return;
        }
        let (root, _) = self.hasher.finish();
        if self.rows == s.rows && root != s.root_digest {
            let detail = format!(
                "the Merkle root of the stored rows is {}, the entry records {}",
                hex(&root),
                hex(&s.root_digest)
            );
            report.push(problem(ProblemKind::RootDigest, lay, src, detail));
        }
    }
}

/// Streamed rows of one layer (see [`Inspector::rows`]).
pub struct LayerRows {
    path: PathBuf,
    range: Option<RowRange>,
}

/// The raw range scan behind [`LayerRows`].
type RowRange = redb::Range<'static, (&'static str, &'static str, &'static [u8]), &'static [u8]>;

impl Iterator for LayerRows {
    type Item = Result<RowLine>;

    fn next(&mut self) -> Option<Self::Item> {
        let db = self.path.clone();
        crate::store::guarded_next(&db, &mut self.range, |k, v| {
            let (_, source, key) = k.value();
            let path = RelPath::from_key(key);
            match codec::decode::<Row, { codec::ROW_LIMIT }>(v.value()) {
                Ok(row) => Ok(RowLine {
                    source: source.to_string(),
                    path,
                    row,
                }),
                Err(detail) => Err(Error::Corrupt {
                    path: db.clone(),
                    table: "rows",
                    key: format!("{} {path}", escape_bytes(source.as_bytes())),
                    detail,
                }),
            }
        })
    }
}

/// A clearer one-line message for an error that means the file itself is damaged (truncated or
/// overwritten): redb's "corrupted" and short reads. `None` for every other error, whose
/// `Display` is already the message to show.
pub fn damaged_file_message(e: &Error) -> Option<String> {
    let Error::Db { path, source } = e else {
        return None;
    };
    let what = match source.as_ref() {
        redb::Error::Corrupted(d) => d.clone(),
        // layercache never aborts a repair itself: redb gave up on one.
        redb::Error::RepairAborted => "it needs a repair that redb could not complete".to_string(),
        redb::Error::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            "it is shorter than its own header says: truncated".to_string()
        }
        _ => return None,
    };
    Some(format!(
        "cache database {} is damaged ({what}); move it away (the next build then creates a new \
         cache) or restore it from a backup",
        show_path(path)
    ))
}

/// Refuses a path that does not exist (a maintenance command must never create a database).
fn must_exist(path: &Path) -> Result<()> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| Error::io("cannot open", path, e))
}

/// Opens for writing a file that is already known to be a layercache database of this schema
/// (a read-only open checks that first, so a writable open never initializes a foreign or
/// empty file).
fn open_writable(path: &Path) -> Result<Store> {
    must_exist(path)?;
    drop(Store::open_read_only(path)?);
    Store::open(path)
}

/// True for errors that mean "this process may not write the file" rather than damage.
fn not_writable(e: &Error) -> Option<String> {
    let io = match e {
        Error::Io { source, .. } => Some(source),
        Error::Db { source, .. } => match source.as_ref() {
            redb::Error::Io(io) => Some(io),
            _ => None,
        },
        _ => None,
    }?;
    matches!(
        io.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
    )
    .then(|| io.to_string())
}

/// Runs every read-only check ([`Inspector::check_records`]), then redb's integrity check when
/// the file can be opened for writing. If a build holds the file, the redb-level check is
/// skipped ([`Integrity::SkippedInUse`]) and the rest still runs. The read-only checks run
/// first, so they see the file exactly as it was (a writable open of a damaged file can leave
/// it marked as needing a repair); the writable handle is opened last and only for the redb
/// check, so a build is kept out only for that long.
///
/// A damaged file is a finding, not a failure: if redb cannot open it, or reading a record
/// panics inside redb (its read path trusts page contents, so an overwritten page can make it
/// index out of bounds), the report says so and [`CheckReport::is_clean`] is false. An error is
/// returned only when nothing could be checked for another reason (not a cache, newer schema,
/// missing file, held exclusively by another program, ...).
pub fn check(path: impl AsRef<Path>) -> Result<CheckReport> {
    let path = path.as_ref();
    must_exist(path)?;
    let mut report = match Inspector::open(path) {
        Ok(ins) => {
            let run = std::panic::AssertUnwindSafe(|| ins.check_records());
            std::panic::catch_unwind(run).unwrap_or_else(|payload| {
                let mut report = CheckReport::new(path);
                let detail = format!(
                    "reading the records failed inside redb ({}): the file is damaged",
                    panic_message(payload.as_ref())
                );
                report.push(problem(ProblemKind::Unreadable, None, None, detail));
                Ok(report)
            })?
        }
        Err(e) => match damaged_file_message(&e) {
            Some(detail) => {
                let mut report = CheckReport::new(path);
                report.push(problem(ProblemKind::Unreadable, None, None, detail));
                report
            }
            None => return Err(e),
        },
    };
    report.integrity = match open_writable(path) {
        Ok(mut store) => match store.database_mut().map(|db| db.check_integrity()) {
            Some(Ok(true)) => Integrity::Passed,
            Some(Ok(false)) => Integrity::Repaired,
            Some(Err(e)) => Integrity::Failed(e.to_string()),
            None => Integrity::SkippedNotWritable("opened read-only".into()),
        },
        Err(Error::InUse { .. }) => Integrity::SkippedInUse,
        Err(e) => match (not_writable(&e), damaged_file_message(&e)) {
            (Some(why), _) => Integrity::SkippedNotWritable(why),
            (None, Some(damage)) => Integrity::Failed(damage),
            (None, None) => Integrity::Failed(e.to_string()),
        },
    };
    if let Integrity::Failed(d) = &report.integrity {
        let p = problem(ProblemKind::RedbIntegrity, None, None, d.clone());
        report.problems.insert(0, p);
        if report.problems.len() > MAX_LISTED_PROBLEMS {
            report.problems.pop();
            report.problems_not_listed += 1;
        }
    }
    Ok(report)
}

/// The message of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

/// [`Inspector::stats`] plus redb's exact accounting, through a brief writable open: fails
/// with [`Error::InUse`] while a build holds the file.
pub fn stats_exact(path: impl AsRef<Path>) -> Result<Stats> {
    let path = path.as_ref();
    let exact = {
        let store = open_writable(path)?;
        let txn = store.begin_write()?;
        let s = txn.stats().db(path)?;
        txn.abort().db(path)?;
        ExactUsage {
            page_size: s.page_size() as u64,
            allocated_pages: s.allocated_pages(),
            stored_bytes: s.stored_bytes(),
            metadata_bytes: s.metadata_bytes(),
            fragmented_bytes: s.fragmented_bytes(),
        }
    };
    let mut stats = Inspector::open(path)?.stats()?;
    stats.exact = Some(exact);
    Ok(stats)
}

/// Compacts the file: runs redb's `compact` until it has nothing left to move. Needs a
/// writable open and no transaction of any other process: while a build (or a dump) uses the
/// file, fails with [`Error::InUse`] and changes nothing.
pub fn compact(path: impl AsRef<Path>) -> Result<CompactReport> {
    let path = path.as_ref();
    let size = |p: &Path| -> Result<u64> {
        Ok(std::fs::metadata(p)
            .map_err(|e| Error::io("cannot stat", p, e))?
            .len())
    };
    let mut store = open_writable(path)?;
    let bytes_before = size(path)?;
    let mut passes = 0;
    if let Some(db) = store.database_mut() {
        // Each pass moves pages toward the start of the file; redb says when none is left.
        // The bound only guards against a pass that keeps reporting progress.
        while passes < 100_000 {
            match db.compact() {
                Ok(true) => passes += 1,
                Ok(false) => break,
                Err(redb::CompactionError::TransactionInProgress) => {
                    return Err(Error::InUse {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) => return Err(e).db(path),
            }
        }
    }
    drop(store);
    Ok(CompactReport {
        db: show_path(path),
        bytes_before,
        bytes_after: size(path)?,
        passes,
    })
}

impl Listing {
    /// Human form: a header, one aligned line per entry, and the totals.
    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        let cols: Vec<[String; 7]> = self
            .entries
            .iter()
            .map(|e| match e {
                ListedEntry::Entry(l) => [
                    escape_bytes(l.name.as_bytes()),
                    if l.output_types.is_empty() {
                        if l.build_only { "(build-only)" } else { "-" }.to_string()
                    } else {
                        escape_bytes(l.output_types.join(",").as_bytes())
                    },
                    escape_bytes(l.base.short().as_bytes()),
                    l.imports.to_string(),
                    l.overlay_dirs.to_string(),
                    l.rows.to_string(),
                    l.created.clone(),
                ],
                ListedEntry::Damaged { name, damaged } => [
                    escape_bytes(name.as_bytes()),
                    format!("DAMAGED: {damaged}"),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ],
            })
            .collect();
        let header = [
            "LAYER", "OUTPUTS", "BASE", "IMPORTS", "OVERLAYS", "ROWS", "RECORDED",
        ];
        let mut widths = header.map(str::len);
        for row in &cols {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |w: &mut dyn Write, c: [&str; 7]| -> io::Result<()> {
            let [n, o, b, i, ov, r, t] = c;
            let [wn, wo, wb, wi, wov, wr, _] = widths;
            let text = format!("{n:<wn$}  {o:<wo$}  {b:<wb$}  {i:>wi$}  {ov:>wov$}  {r:>wr$}  {t}");
            writeln!(w, "{}", text.trim_end())
        };
        line(w, header)?;
        for c in &cols {
            line(w, c.each_ref().map(String::as_str))?;
        }
        let t = &self.totals;
        write!(
            w,
            "{} entries, {} imports, {} overlay dirs, {} rows",
            t.entries, t.imports, t.overlay_dirs, t.rows
        )?;
        if t.damaged > 0 {
            write!(w, ", {} DAMAGED (see `layercache check`)", t.damaged)?;
        }
        writeln!(w)
    }
}

impl EntryDetail {
    /// Human form: the entry field by field, the definition and descriptors pretty-printed.
    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(
            w,
            "layer              {}",
            escape_bytes(self.name.as_bytes())
        )?;
        writeln!(
            w,
            "recorded           {} ({} ms since the epoch)",
            self.created, self.created_unix_ms
        )?;
        let b = &self.base;
        if b.kind == "scratch" {
            writeln!(w, "base               scratch")?;
        } else {
            writeln!(
                w,
                "base               {} {}",
                b.kind,
                escape_bytes(b.reference.as_bytes())
            )?;
            writeln!(w, "base hash          {}", escape_bytes(b.hash.as_bytes()))?;
        }
        match self.source_date_epoch {
            Some(s) => writeln!(w, "SOURCE_DATE_EPOCH  {s}")?,
            None => writeln!(w, "SOURCE_DATE_EPOCH  unset")?,
        }
        writeln!(
            w,
            "build_only         {}",
            if self.build_only { "yes" } else { "no" }
        )?;
        writeln!(w, "definition digest  {}", self.definition_digest)?;
        writeln!(w, "definition")?;
        write_indented(w, &self.definition)?;
        if self.manifests.is_empty() {
            writeln!(w, "manifests          none")?;
        } else {
            writeln!(w, "manifests")?;
            for m in &self.manifests {
                writeln!(w, "  {}", escape_bytes(m.layer_type.as_bytes()))?;
                write_indented(w, &m.descriptor)?;
            }
        }
        for (title, list) in [
            ("imports", &self.imports),
            ("overlay_dirs", &self.overlay_dirs),
        ] {
            if list.is_empty() {
                writeln!(w, "{title:<19}none")?;
                continue;
            }
            writeln!(w, "{title}")?;
            for s in list {
                writeln!(
                    w,
                    "  {}  {}, {} rows, root {}",
                    escape_bytes(s.source.as_bytes()),
                    s.kind,
                    s.rows,
                    s.root_digest
                )?;
            }
        }
        Ok(())
    }
}

impl Stats {
    /// Human form: counts, per-table use, and what is outside the tables.
    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(w, "file               {}", self.db)?;
        writeln!(w, "size               {}", human_bytes(self.file_bytes))?;
        writeln!(w, "schema version     {}", self.schema_version)?;
        writeln!(w, "entries            {}", self.entries)?;
        writeln!(w, "rows               {}", self.rows)?;
        writeln!(w, "base hashes        {}", self.bases)?;
        writeln!(
            w,
            "{:<8} {:>10} {:>12} {:>12} {:>12} {:>8}",
            "table", "records", "stored", "metadata", "fragmented", "pages"
        )?;
        for t in &self.tables {
            writeln!(
                w,
                "{:<8} {:>10} {:>12} {:>12} {:>12} {:>8}",
                t.name, t.len, t.stored_bytes, t.metadata_bytes, t.fragmented_bytes, t.pages
            )?;
        }
        writeln!(
            w,
            "in tables          {}, of which {} fragmented",
            human_bytes(self.table_bytes),
            human_bytes(self.table_fragmented_bytes)
        )?;
        writeln!(
            w,
            "outside tables     {} (free pages, redb's own tables and header)",
            human_bytes(self.outside_tables_bytes)
        )?;
        match &self.exact {
            Some(e) => {
                writeln!(
                    w,
                    "allocated          {} ({} pages of {} bytes)",
                    human_bytes(e.allocated_pages.saturating_mul(e.page_size)),
                    e.allocated_pages,
                    e.page_size
                )?;
                writeln!(
                    w,
                    "reclaimable        about {} (fragmented and free; `layercache compact`)",
                    human_bytes(e.fragmented_bytes)
                )?;
            }
            None => writeln!(
                w,
                "reclaimable        at most {} (`layercache stats --exact` asks redb, when no \
                 build holds the file)",
                human_bytes(self.table_fragmented_bytes + self.outside_tables_bytes)
            )?,
        }
        Ok(())
    }
}

fn write_indented(w: &mut impl Write, v: &serde_json::Value) -> io::Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(io::Error::other)?;
    for l in text.lines() {
        writeln!(w, "    {l}")?;
    }
    Ok(())
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

fn serde_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn json_or_escaped(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| serde_json::Value::String(escape_bytes(bytes)))
}

fn prefix(s: &str, n: usize) -> &str {
    s.char_indices()
        .nth(n)
        .map_or(s, |(i, _)| s.get(..i).unwrap_or(s))
}

/// `1.5 MiB (1572864 bytes)`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit} ({n} bytes)")
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, proleptic Gregorian).
pub fn format_utc_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 12:34:56.789 UTC, a leap day.
        assert_eq!(format_utc_ms(951_827_696_789), "2000-02-29T12:34:56.789Z");
        assert_eq!(format_utc_ms(1_735_689_600_000), "2025-01-01T00:00:00.000Z");
    }

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
