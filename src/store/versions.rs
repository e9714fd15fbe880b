//! Reading and writing the schema-v3 tables `versions`, `layers` and `last_used` inside a
//! caller's transaction. Every read verifies the record's checksum and that it sits under its
//! own key; damage is [`Error::Corrupt`] naming the table and key (the cache turns it into a
//! `DamagedEntry` miss of that layer). Nothing here decides hits or policies.

use std::path::Path;

use redb::{ReadableTable, TableError};

use super::codec;
use crate::error::{Error, Result};
use crate::gc::VersionUse;
use crate::path::{escape_bytes, hex};
use crate::schema::{LayerRecord, VersionRecord};
use crate::store::DbResultExt;
use crate::store::tables::{LAST_USED, LAYERS, ROWS, VERSIONS};

use super::guard::note_damage;
use super::rows::RowRange;

/// `layer@<first 16 hex digits>` for messages.
pub fn version_key(layer: &str, digest: &[u8; 32]) -> String {
    let h = hex(digest);
    format!(
        "{}@{}",
        escape_bytes(layer.as_bytes()),
        h.get(..16).unwrap_or(&h)
    )
}

fn damaged(path: &Path, table: &'static str, key: String, detail: String) -> Error {
    note_damage(path);
    Error::Corrupt {
        path: path.to_path_buf(),
        table,
        key,
        detail,
    }
}

/// Decodes a `versions` value stored under (layer, digest).
pub fn decode_version(
    path: &Path,
    layer: &str,
    digest: &[u8; 32],
    bytes: &[u8],
) -> Result<VersionRecord> {
    let key = || version_key(layer, digest);
    let rec: VersionRecord = codec::decode_checked::<_, { codec::ENTRY_LIMIT }>(bytes)
        .map_err(|e| damaged(path, "versions", key(), e.to_string()))?;
    if !rec.matches_key(layer, digest) {
        return Err(damaged(
            path,
            "versions",
            key(),
            format!(
                "the record is of {}, not of this key",
                version_key(&rec.name, &rec.input_digest)
            ),
        ));
    }
    Ok(rec)
}

/// Decodes a `layers` value stored under `layer`.
pub fn decode_layer(path: &Path, layer: &str, bytes: &[u8]) -> Result<LayerRecord> {
    codec::decode_checked::<_, { codec::ENTRY_LIMIT }>(bytes).map_err(|e| {
        damaged(
            path,
            "layers",
            escape_bytes(layer.as_bytes()),
            e.to_string(),
        )
    })
}

/// Opens a table of a read transaction; `None` when the file does not have it yet.
fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    path: &Path,
    def: redb::TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e).db(path),
    }
}

fn get_pointer<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
    path: &Path,
    layer: &str,
) -> Result<Option<Result<LayerRecord>>> {
    Ok(table
        .get(layer)
        .db(path)?
        .map(|v| decode_layer(path, layer, v.value())))
}

fn get_version<T: ReadableTable<(&'static str, &'static [u8; 32]), &'static [u8]>>(
    table: &T,
    path: &Path,
    layer: &str,
    digest: &[u8; 32],
) -> Result<Option<Result<VersionRecord>>> {
    Ok(table
        .get((layer, digest))
        .db(path)?
        .map(|v| decode_version(path, layer, digest, v.value())))
}

/// The layer's pointer record: `None` if the layer has none; `Some(Err(Corrupt))` if damaged.
pub fn pointer(
    txn: &redb::ReadTransaction,
    path: &Path,
    layer: &str,
) -> Result<Option<Result<LayerRecord>>> {
    match open_read(txn, path, LAYERS)? {
        Some(t) => get_pointer(&t, path, layer),
        None => Ok(None),
    }
}

/// The pointer record, read inside a write transaction.
pub fn pointer_in_write(
    txn: &redb::WriteTransaction,
    path: &Path,
    layer: &str,
) -> Result<Option<Result<LayerRecord>>> {
    get_pointer(&txn.open_table(LAYERS).db(path)?, path, layer)
}

/// One version: `None` if not stored; `Some(Err(Corrupt))` if damaged.
pub fn version(
    txn: &redb::ReadTransaction,
    path: &Path,
    layer: &str,
    digest: &[u8; 32],
) -> Result<Option<Result<VersionRecord>>> {
    match open_read(txn, path, VERSIONS)? {
        Some(t) => get_version(&t, path, layer, digest),
        None => Ok(None),
    }
}

/// One version, read inside a write transaction.
pub fn version_in_write(
    txn: &redb::WriteTransaction,
    path: &Path,
    layer: &str,
    digest: &[u8; 32],
) -> Result<Option<Result<VersionRecord>>> {
    get_version(&txn.open_table(VERSIONS).db(path)?, path, layer, digest)
}

/// Every version of a layer, in digest order, each decoded or its damage.
pub fn versions_of(
    txn: &redb::ReadTransaction,
    path: &Path,
    layer: &str,
) -> Result<Vec<([u8; 32], Result<VersionRecord>)>> {
    let Some(t) = open_read(txn, path, VERSIONS)? else {
        return Ok(Vec::new());
    };
    let lo: (&str, &[u8; 32]) = (layer, &[0; 32]);
    let hi: (&str, &[u8; 32]) = (layer, &[0xff; 32]);
    let mut out = Vec::new();
    for item in t.range(lo..=hi).db(path)? {
        let (k, v) = item.db(path)?;
        let (_, digest) = k.value();
        out.push((*digest, decode_version(path, layer, digest, v.value())));
    }
    Ok(out)
}

/// Every (layer, digest) key of `versions`, in key order (no record decoded).
pub fn all_keys(txn: &redb::ReadTransaction, path: &Path) -> Result<Vec<VersionKey>> {
    let Some(t) = open_read(txn, path, VERSIONS)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in t.iter().db(path)? {
        let (k, _) = item.db(path)?;
        let (layer, digest) = k.value();
        out.push((layer.to_string(), *digest));
    }
    Ok(out)
}

/// Last use of a version, ms since the Unix epoch.
pub fn last_used(
    txn: &redb::ReadTransaction,
    path: &Path,
    layer: &str,
    digest: &[u8; 32],
) -> Result<Option<u64>> {
    let Some(t) = open_read(txn, path, LAST_USED)? else {
        return Ok(None);
    };
    Ok(t.get((layer, digest)).db(path)?.map(|v| v.value()))
}

/// A (layer, input digest) key of `versions`.
pub type VersionKey = (String, [u8; 32]);

/// What GC needs of every version, and the keys of damaged versions (which GC reports and may
/// remove: they can never hit).
pub fn uses(
    txn: &redb::ReadTransaction,
    path: &Path,
) -> Result<(Vec<VersionUse>, Vec<VersionKey>)> {
    let Some(vt) = open_read(txn, path, VERSIONS)? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut uses = Vec::new();
    let mut bad = Vec::new();
    for item in vt.iter().db(path)? {
        let (k, v) = item.db(path)?;
        let (layer, digest) = k.value();
        let rec = match decode_version(path, layer, digest, v.value()) {
            Ok(r) => r,
            Err(_) => {
                bad.push((layer.to_string(), *digest));
                continue;
            }
        };
        let current = matches!(pointer(txn, path, layer)?, Some(Ok(p)) if p.current == *digest);
        let last = last_used(txn, path, layer, digest)?.unwrap_or(rec.created_unix_ms);
        uses.push(VersionUse {
            layer: layer.to_string(),
            input_digest: *digest,
            created_unix_ms: rec.created_unix_ms,
            last_used_unix_ms: last.max(rec.created_unix_ms),
            current,
            blobs: rec.blobs(),
        });
    }
    Ok((uses, bad))
}

/// Stores a version (replacing one with the same key).
pub fn write_version(txn: &redb::WriteTransaction, path: &Path, rec: &VersionRecord) -> Result<()> {
    let key = version_key(&rec.name, &rec.input_digest);
    let bytes =
        codec::encode_checked(rec).map_err(|d| damaged(path, "versions", key.clone(), d))?;
    // A reader decodes with this limit: a record over it could never be read back.
    let size = bytes.len().saturating_sub(codec::CHECKSUM_LEN);
    if size > codec::ENTRY_LIMIT {
        return Err(crate::error::Error::RecordTooLarge {
            path: path.to_path_buf(),
            what: format!(
                "the entry record of layer {} (definition, {} manifest(s))",
                escape_bytes(rec.name.as_bytes()),
                rec.manifests.len()
            ),
            size,
            limit: codec::ENTRY_LIMIT,
        });
    }
    // bincode's decode limit also counts what the record's fields claim to allocate, which
    // can exceed the encoded size near the limit: decode it as every reader will, so a record
    // that could not be read back is refused here rather than stored as a layer that never
    // hits again.
    match codec::decode_checked::<VersionRecord, { codec::ENTRY_LIMIT }>(&bytes) {
        Ok(_) => {}
        Err(e)
            if matches!(e, codec::DecodeError::TooLarge { .. })
                || e.to_string().contains("LimitExceeded") =>
        {
            return Err(crate::error::Error::RecordTooLarge {
                path: path.to_path_buf(),
                what: format!(
                    "the entry record of layer {} (definition, {} manifest(s); counting what \
                     its fields allocate when read)",
                    escape_bytes(rec.name.as_bytes()),
                    rec.manifests.len()
                ),
                size,
                limit: codec::ENTRY_LIMIT,
            });
        }
        Err(e) => {
            return Err(damaged(
                path,
                "versions",
                key,
                format!("a record just encoded does not decode ({e}); nothing was written"),
            ));
        }
    }
    txn.open_table(VERSIONS)
        .db(path)?
        .insert((rec.name.as_str(), &rec.input_digest), bytes.as_slice())
        .db(path)?;
    Ok(())
}

/// Stores a layer's pointer record.
pub fn write_pointer(
    txn: &redb::WriteTransaction,
    path: &Path,
    layer: &str,
    rec: &LayerRecord,
) -> Result<()> {
    let bytes = codec::encode_checked(rec)
        .map_err(|d| damaged(path, "layers", escape_bytes(layer.as_bytes()), d))?;
    txn.open_table(LAYERS)
        .db(path)?
        .insert(layer, bytes.as_slice())
        .db(path)?;
    Ok(())
}

/// Records a use of a version.
pub fn touch(
    txn: &redb::WriteTransaction,
    path: &Path,
    layer: &str,
    digest: &[u8; 32],
    now_unix_ms: u64,
) -> Result<()> {
    txn.open_table(LAST_USED)
        .db(path)?
        .insert((layer, digest), now_unix_ms)
        .db(path)?;
    Ok(())
}

/// Removes one version and its last use (not the pointer or rows).
pub fn remove_version(
    txn: &redb::WriteTransaction,
    path: &Path,
    layer: &str,
    digest: &[u8; 32],
) -> Result<bool> {
    let existed = txn
        .open_table(VERSIONS)
        .db(path)?
        .remove((layer, digest))
        .db(path)?
        .is_some();
    txn.open_table(LAST_USED)
        .db(path)?
        .remove((layer, digest))
        .db(path)?;
    Ok(existed)
}

/// Removes every trace of a layer: its versions, last uses, pointer and rows. Returns whether
/// it had any version or pointer.
pub fn remove_layer(txn: &redb::WriteTransaction, path: &Path, layer: &str) -> Result<bool> {
    let lo: (&str, &[u8; 32]) = (layer, &[0; 32]);
    let hi: (&str, &[u8; 32]) = (layer, &[0xff; 32]);
    let mut existed = false;
    {
        let mut vt = txn.open_table(VERSIONS).db(path)?;
        vt.retain_in(lo..=hi, |_, _| {
            existed = true;
            false
        })
        .db(path)?;
    }
    txn.open_table(LAST_USED)
        .db(path)?
        .retain_in(lo..=hi, |_, _| false)
        .db(path)?;
    existed |= txn
        .open_table(LAYERS)
        .db(path)?
        .remove(layer)
        .db(path)?
        .is_some();
    RowRange::layer(layer).delete(path, &mut txn.open_table(ROWS).db(path)?)?;
    Ok(existed)
}

/// The distinct source names of a layer's rows (one range probe per source, not a scan).
pub fn row_sources(txn: &redb::WriteTransaction, path: &Path, layer: &str) -> Result<Vec<String>> {
    let rows = txn.open_table(ROWS).db(path)?;
    let upper = format!("{layer}\0");
    let hi: (&str, &str, &[u8]) = (upper.as_str(), "", &[]);
    let mut out: Vec<String> = Vec::new();
    loop {
        let after = out.last().map(|s| format!("{s}\0"));
        let lo: (&str, &str, &[u8]) = (layer, after.as_deref().unwrap_or(""), &[]);
        let next = rows.range(lo..hi).db(path)?.next();
        match next {
            None => break,
            Some(item) => {
                let (k, _) = item.db(path)?;
                out.push(k.value().1.to_string());
            }
        }
    }
    Ok(out)
}
