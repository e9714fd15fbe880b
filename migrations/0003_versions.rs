//! Step v2 → v3: one version per v2 entry, keyed by its input digest; `entries` and `bases`
//! give way to `versions`, `layers` and `last_used`. See the note beside this file.
//!
//! Everything here is frozen: the v2 record layout ([`EntryV2`]), the v2 entry digest
//! ([`entry_digest_v2`]) and the v3 record layout it writes ([`VersionV3`]) are copies of what
//! the v2 code wrote and compared and the v3 code read, so that later changes to the live code
//! never change what this step does to an old file.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::path::escape_bytes;
use crate::schema::{
    BaseKind, BaseRecord, LayerRecord, ManifestRecord, Origin, SourceSummary, VersionRecord,
};
use crate::store::DbResultExt;
use crate::store::codec;
use crate::store::tables::{BASES, ENTRIES, LAST_USED, LAYERS, ROWS, VERSIONS};
use crate::version::{Inputs, entry_digest_of, input_digest};

/// An entry as schemas v1 and v2 stored it in `entries` (fields as in [`VersionRecord`], without
/// the builder and the input digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryV2 {
    /// Layer name.
    pub name: String,
    /// Canonical definition JSON.
    pub definition_json: Vec<u8>,
    /// blake3 of `definition_json`.
    pub definition_digest: [u8; 32],
    /// The base recorded at put (a tar base's reference: an absolute path in the oldest code).
    pub base: BaseRecord,
    /// SOURCE_DATE_EPOCH.
    pub source_date_epoch: Option<i64>,
    /// Import summaries.
    pub imports: Vec<SourceSummary>,
    /// Overlay dir summaries.
    pub overlay_dirs: Vec<SourceSummary>,
    /// Output manifests.
    pub manifests: Vec<ManifestRecord>,
    /// build_only.
    pub build_only: bool,
    /// Time of the put, ms.
    pub created_unix_ms: u64,
}

/// A version as schema v3 stored it in `versions` (checksummed): the live
/// [`VersionRecord`] of schema v3, without the `origin` that v4 added. This step writes it; the
/// v3 → v4 step (`migrations/0004_origin.rs`) reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionV3 {
    /// Layer name.
    pub name: String,
    /// The input digest it is stored under.
    pub input_digest: [u8; 32],
    /// Canonical definition JSON.
    pub definition_json: Vec<u8>,
    /// blake3 of `definition_json`.
    pub definition_digest: [u8; 32],
    /// The base recorded at put.
    pub base: BaseRecord,
    /// SOURCE_DATE_EPOCH.
    pub source_date_epoch: Option<i64>,
    /// The builder identity.
    pub builder: Option<String>,
    /// Import summaries.
    pub imports: Vec<SourceSummary>,
    /// Overlay dir summaries.
    pub overlay_dirs: Vec<SourceSummary>,
    /// Output manifests.
    pub manifests: Vec<ManifestRecord>,
    /// build_only.
    pub build_only: bool,
    /// Time of the put, ms.
    pub created_unix_ms: u64,
}

impl From<&VersionRecord> for VersionV3 {
    fn from(v: &VersionRecord) -> VersionV3 {
        VersionV3 {
            name: v.name.clone(),
            input_digest: v.input_digest,
            definition_json: v.definition_json.clone(),
            definition_digest: v.definition_digest,
            base: v.base.clone(),
            source_date_epoch: v.source_date_epoch,
            builder: v.builder.clone(),
            imports: v.imports.clone(),
            overlay_dirs: v.overlay_dirs.clone(),
            manifests: v.manifests.clone(),
            build_only: v.build_only,
            created_unix_ms: v.created_unix_ms,
        }
    }
}

/// The v2 base hash of an entry: what layers built on it recorded and compared (a frozen copy of
/// the v2 code's `cache::entry_digest`).
pub fn entry_digest_v2(e: &EntryV2) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let field = |h: &mut blake3::Hasher, b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(&mut h, e.name.as_bytes());
    field(&mut h, &e.definition_digest);
    field(&mut h, &[e.base.kind as u8]);
    field(&mut h, e.base.reference.as_bytes());
    field(&mut h, &e.base.hash);
    field(&mut h, format!("{:?}", e.source_date_epoch).as_bytes());
    for list in [&e.imports, &e.overlay_dirs] {
        h.update(&(list.len() as u64).to_le_bytes());
        for s in list {
            field(&mut h, s.key.as_bytes());
            field(&mut h, s.root_kind.as_str().as_bytes());
            field(&mut h, &s.root_digest);
            h.update(&s.rows.to_le_bytes());
        }
    }
    h.update(&(e.manifests.len() as u64).to_le_bytes());
    for m in &e.manifests {
        field(&mut h, m.layer_type.as_bytes());
        field(&mut h, &m.descriptor_json);
    }
    h.update(&[e.build_only as u8]);
    *h.finalize().as_bytes()
}

/// Prefix of the base hash given to a migrated built layer whose v2 base hash did not match its
/// base's entry (it would have missed in v2). The result is longer than 32 bytes, so it can
/// never equal an entry digest: the version can never hit, as the v2 entry could not.
pub const STALE_BASE_PREFIX: &[u8] = b"layercache v2 base hash that matched no entry:";

/// The tar reference the current code records for what the oldest code recorded: the file name
/// of the tarball (what `Base::reference` returns since commit 743a078), computed on the
/// escaped path exactly as `Path::file_name` would on the raw one (escaping never adds `/`).
pub fn normalise_tar_reference(reference: &str) -> String {
    let p = Path::new(reference);
    p.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(reference)
        .to_string()
}

/// What the step did, for the caller and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Versions written (one per decodable v2 entry).
    pub versions: u64,
    /// Layers whose v2 entry did not decode (they miss until put again).
    pub dropped: Vec<String>,
    /// Built layers whose recorded base hash matched no base entry (they could not hit in v2
    /// and cannot in v3).
    pub stale_bases: Vec<String>,
    /// Tar references rewritten from a path to a file name.
    pub tar_references_normalised: u64,
}

/// Runs the step; returns the number of versions written.
pub fn run(txn: &redb::WriteTransaction, db: &Path) -> Result<u64> {
    migrate(txn, db).map(|o| o.versions)
}

fn corrupt(db: &Path, table: &'static str, key: &str, detail: String) -> Error {
    Error::Corrupt {
        path: db.to_path_buf(),
        table,
        key: escape_bytes(key.as_bytes()),
        detail,
    }
}

/// Runs the step and says what it did (see the note beside this file).
pub fn migrate(txn: &redb::WriteTransaction, db: &Path) -> Result<Outcome> {
    let mut out = Outcome::default();
    // 1. Every v2 entry that decodes; the others are dropped (that layer misses), never fatal.
    let mut entries: BTreeMap<String, EntryV2> = BTreeMap::new();
    {
        let table = txn.open_table(ENTRIES).db(db)?;
        for item in table.iter().db(db)? {
            let (k, v) = item.db(db)?;
            let layer = k.value().to_string();
            match codec::decode::<EntryV2, { codec::ENTRY_LIMIT }>(v.value()) {
                Ok(e) if e.name == layer => {
                    entries.insert(layer, e);
                }
                Ok(e) => {
                    tracing::warn!(
                        "{}: dropped the v2 entry under {layer:?}: it names layer {:?}; that \
                         layer will miss until it is put again",
                        db.display(),
                        e.name
                    );
                    out.dropped.push(layer);
                }
                Err(detail) => {
                    tracing::warn!(
                        "{}: dropped the undecodable v2 entry of layer {layer:?} ({detail}); \
                         that layer will miss until it is put again",
                        db.display()
                    );
                    out.dropped.push(layer);
                }
            }
        }
    }
    // The v2 base hash of every entry, over the record as stored (before normalising).
    let v2_digests: HashMap<&str, [u8; 32]> = entries
        .iter()
        .map(|(name, e)| (name.as_str(), entry_digest_v2(e)))
        .collect();

    // 2. Versions in dependency order: a built layer after its base, so that its base hash can
    //    become the v3 entry digest of the base's migrated version when it matched in v2.
    let mut v3_digests: HashMap<String, [u8; 32]> = HashMap::new();
    let mut versions: Vec<VersionRecord> = Vec::with_capacity(entries.len());
    let mut pending: Vec<&str> = entries.keys().map(String::as_str).collect();
    while !pending.is_empty() {
        let mut progressed = false;
        let mut still = Vec::new();
        for name in pending.iter().copied() {
            let Some(e) = entries.get(name) else { continue };
            let base_hash = if e.base.kind == BaseKind::Built {
                let b = e.base.reference.as_str();
                match (v2_digests.get(b), v3_digests.get(b)) {
                    // The base is migrated: the hash carries over if it would have hit.
                    (Some(v2), Some(v3)) if v2.as_slice() == e.base.hash.as_slice() => {
                        Some(v3.to_vec())
                    }
                    (Some(_), Some(_)) | (None, _) => None,
                    // The base is not migrated yet: later in this pass or the next.
                    (Some(_), None) if b != name => {
                        still.push(name);
                        continue;
                    }
                    (Some(_), None) => None,
                }
            } else {
                Some(e.base.hash.clone())
            };
            let v = version_of(e, base_hash, &mut out);
            v3_digests.insert(name.to_string(), entry_digest_of(&v));
            versions.push(v);
            progressed = true;
        }
        if !progressed {
            // Built bases in a cycle (only a damaged or hand-made file has one): none of them
            // could hit in v2. Break the cycle at its first layer.
            if let Some(e) = still.first().and_then(|n| entries.get(*n)) {
                let v = version_of(e, None, &mut out);
                v3_digests.insert(e.name.clone(), entry_digest_of(&v));
                versions.push(v);
                still.remove(0);
            }
        }
        pending = still;
    }

    // 3. Write versions, the layer pointers and last use (= creation), in key order.
    versions.sort_by(|a, b| a.name.cmp(&b.name));
    {
        let mut vt = txn.open_table(VERSIONS).db(db)?;
        let mut lt = txn.open_table(LAYERS).db(db)?;
        let mut ut = txn.open_table(LAST_USED).db(db)?;
        for v in &versions {
            // The v3 layout: the v3 -> v4 step that follows reads it as such.
            let bytes = codec::encode_checked(&VersionV3::from(v))
                .map_err(|d| corrupt(db, "versions", &v.name, d))?;
            vt.insert((v.name.as_str(), &v.input_digest), bytes.as_slice())
                .db(db)?;
            let pointer = codec::encode_checked(&LayerRecord {
                current: v.input_digest,
                generation: 0,
            })
            .map_err(|d| corrupt(db, "layers", &v.name, d))?;
            lt.insert(v.name.as_str(), pointer.as_slice()).db(db)?;
            ut.insert((v.name.as_str(), &v.input_digest), v.created_unix_ms)
                .db(db)?;
        }
    }
    out.versions = versions.len() as u64;

    // 4. Rows of dropped layers describe no version: remove them. Then the v2 tables go.
    if !out.dropped.is_empty() {
        let mut rows = txn.open_table(ROWS).db(db)?;
        for layer in &out.dropped {
            let upper = format!("{layer}\0");
            let lo: (&str, &str, &[u8]) = (layer.as_str(), "", &[]);
            let hi: (&str, &str, &[u8]) = (upper.as_str(), "", &[]);
            rows.retain_in(lo..hi, |_, _| false).db(db)?;
        }
    }
    txn.delete_table(ENTRIES).db(db)?;
    txn.delete_table(BASES).db(db)?;
    Ok(out)
}

/// The v3 version of a v2 entry. `base_hash` is `None` for a built layer whose recorded base
/// hash matched no migrated base entry: it gets [`STALE_BASE_PREFIX`] + the old hash.
fn version_of(e: &EntryV2, base_hash: Option<Vec<u8>>, out: &mut Outcome) -> VersionRecord {
    let hash = base_hash.unwrap_or_else(|| {
        out.stale_bases.push(e.name.clone());
        [STALE_BASE_PREFIX, e.base.hash.as_slice()].concat()
    });
    let reference = if e.base.kind == BaseKind::Tar {
        let r = normalise_tar_reference(&e.base.reference);
        if r != e.base.reference {
            out.tar_references_normalised += 1;
        }
        r
    } else {
        e.base.reference.clone()
    };
    let mut v = VersionRecord {
        name: e.name.clone(),
        input_digest: [0; 32],
        definition_json: e.definition_json.clone(),
        definition_digest: e.definition_digest,
        base: BaseRecord {
            kind: e.base.kind,
            reference,
            hash,
        },
        source_date_epoch: e.source_date_epoch,
        builder: None,
        imports: e.imports.clone(),
        overlay_dirs: e.overlay_dirs.clone(),
        manifests: e.manifests.clone(),
        build_only: e.build_only,
        created_unix_ms: e.created_unix_ms,
        // Not written (the v3 layout has no origin); v3 -> v4 makes every version `Built`.
        origin: Origin::Built,
    };
    v.input_digest = input_digest(&Inputs::of_record(&v));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_references_become_file_names() {
        for (old, new) in [
            ("/tmp/x/layer-bases/base.tar", "base.tar"),
            ("base.tar", "base.tar"),
            ("rel/dir/b.tar", "b.tar"),
            ("/a/caf\\xe9.tar", "caf\\xe9.tar"),
            ("/a/b/", "b"),
        ] {
            assert_eq!(normalise_tar_reference(old), new, "{old}");
        }
    }
}
