//! Step v3 → v4: every version gets an [`Origin`], `Built`. See the note beside this file.
//!
//! Frozen: it reads the v3 layout ([`VersionV3`], kept by the v2 → v3 step that writes it) and
//! writes the v4 one.

use redb::ReadableTable;

use crate::error::{Error, Result};
use crate::path::escape_bytes;
use crate::schema::{Origin, VersionRecord};
use crate::store::DbResultExt;
use crate::store::codec;
use crate::store::tables::VERSIONS;

use super::v0003::VersionV3;

/// Rewrites every version record that decodes; returns how many. One that does not decode is
/// left as it is: it was a damaged entry (a miss) in v3 and stays one, never fatal.
pub fn run(txn: &redb::WriteTransaction, db: &std::path::Path) -> Result<u64> {
    let mut table = txn.open_table(VERSIONS).db(db)?;
    let mut rewritten: Vec<(String, [u8; 32], Vec<u8>)> = Vec::new();
    for item in table.iter().db(db)? {
        let (k, v) = item.db(db)?;
        let (layer, digest) = k.value();
        let Ok(old) = codec::decode_checked::<VersionV3, { codec::ENTRY_LIMIT }>(v.value()) else {
            tracing::warn!(
                "{}: a v3 version of layer {} does not decode; it is left as it was (a damaged \
                 entry: that version misses)",
                db.display(),
                escape_bytes(layer.as_bytes())
            );
            continue;
        };
        let new = upgrade(old);
        let bytes = codec::encode_checked(&new).map_err(|detail| Error::Corrupt {
            path: db.to_path_buf(),
            table: "versions",
            key: escape_bytes(layer.as_bytes()),
            detail,
        })?;
        rewritten.push((layer.to_string(), *digest, bytes));
    }
    for (layer, digest, bytes) in &rewritten {
        table
            .insert((layer.as_str(), digest), bytes.as_slice())
            .db(db)?;
    }
    Ok(rewritten.len() as u64)
}

/// The v4 record of a v3 one: the same fields, `origin: Built`. Schema v3 recorded a version
/// only after a build here, or from a remote hit on a machine whose overlay dirs' rootfs copies
/// existed (a v3 hit required them).
pub fn upgrade(old: VersionV3) -> VersionRecord {
    VersionRecord {
        name: old.name,
        input_digest: old.input_digest,
        definition_json: old.definition_json,
        definition_digest: old.definition_digest,
        base: old.base,
        source_date_epoch: old.source_date_epoch,
        builder: old.builder,
        imports: old.imports,
        overlay_dirs: old.overlay_dirs,
        manifests: old.manifests,
        build_only: old.build_only,
        created_unix_ms: old.created_unix_ms,
        origin: Origin::Built,
    }
}
