//! The table definitions of the cache file and the keys of its `meta` table: which table
//! holds what (the layout is documented in `crate::schema`, beside the record types).
//!
//! Owns: every table name and key/value type. Must never be named outside `store/` (the rest
//! of the crate reads and writes through `Snapshot` and
//! `Batch`); the record types stored in these tables are `crate::schema`'s,
//! pure data with no storage engine in them.

use redb::TableDefinition;

/// Small facts about the file: `schema_version` (u32 little endian), `writer` (crate version).
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Schema v1/v2 only (read by the v2 → v3 step): layer name → encoded entry.
pub const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
/// (layer, source, path key) → encoded `Row`.
pub const ROWS: TableDefinition<(&str, &str, &[u8]), &[u8]> = TableDefinition::new("rows");
/// Schema v1/v2 only (dropped by the v2 → v3 step): layer name → the base hash of its entry.
pub const BASES: TableDefinition<&str, &[u8; 32]> = TableDefinition::new("bases");

/// (layer, input digest) → checksummed `VersionRecord` (schema v3).
pub const VERSIONS: TableDefinition<(&str, &[u8; 32]), &[u8]> = TableDefinition::new("versions");
/// Layer name → checksummed `LayerRecord`: which version the layer's rows describe (v3).
pub const LAYERS: TableDefinition<&str, &[u8]> = TableDefinition::new("layers");
/// (layer, input digest) → last use of that version, ms since the Unix epoch (v3). A table of
/// its own so that recording a use never rewrites a version record.
pub const LAST_USED: TableDefinition<(&str, &[u8; 32]), u64> = TableDefinition::new("last_used");

/// `meta` key of the schema version.
pub const META_SCHEMA_VERSION: &str = "schema_version";
/// `meta` key of the version of the crate that last wrote the file.
pub const META_WRITER: &str = "writer";
// The `meta` key `record_secret` (32 random bytes that bind lookup records to the file) is
// owned by `store/secret.rs`: never read or written anywhere else.
