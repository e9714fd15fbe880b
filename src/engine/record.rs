//! The lookup record: what a build's lookup saw, in a file, for a put in another process.
//!
//! Owns: [`LookupRecord`] and its file format. A shell-driven build runs `layercache lookup
//! --record FILE` and, after building, `layercache put --from FILE`; the put compares what it
//! sees with the record and refuses, naming what changed, when they differ — as
//! [`Session::put`](super::Session::put) does within one process with the lookup's full
//! observation.
//!
//! The file is one JSON object (format version [`LOOKUP_RECORD_VERSION`]):
//!
//! ```json
//! {"format": "layercache lookup record", "version": 2, "layer": "app",
//!  "definition_digest": "HEX", "builder": null, "base_hash": "HEX" | null,
//!  "source_date_epoch": 1700000000 | null, "build_only": false, "damaged": false,
//!  "input_digest": "HEX" | null,
//!  "sources": [{"role": "import" | "overlay_dir", "key": "KEY", "root_digest": "HEX" | null,
//!               "row_count": 6,
//!               "walk": {"entries": 6, "blake3": "HEX", "log": "BASE64"}}],
//!  "mac": "HEX"}
//! ```
//!
//! Digests are lower-case hex (`base_hash` is the hex of the base hash's bytes); `root_digest`
//! is `null` when a file of that source changed while the lookup read it, `base_hash` when the
//! base did not resolve, `input_digest` when either happened or a source was missing. Per source
//! it keeps the Merkle root and row count and, under `walk`, the lookup's walk log
//! ([`crate::tree::WalkLog`], base64, ~70 bytes an entry before encoding: the file grows with
//! the tree, ~95 bytes a file; it is read whole, up to 1 GiB) with its entry count
//! and blake3 checksum.
//!
//! The put always records what its own walk sees. The walk log is that walk's stat cache: a
//! file whose stat data (type, mode, owner, size, inode, device, mtime, ctime) is unchanged
//! since the lookup logged it, and whose logged row is not racy, is not read again by the put
//! (so `lookup --record` + `put --from` read every file once), and the put's walk is compared
//! with the log path by path, naming what changed. A walk log whose checksum does not match
//! (damaged, edited) is not used: the put then reads every file and compares the root and row
//! count. The checksum guards against damage, not against edits: a log edited with its blake3
//! recomputed would supply digests the put does not read. So the whole record is bound to the
//! database by `mac`: a keyed blake3 (key derived from the per-cache secret in the `meta`
//! table, `store/secret.rs`, under [`MAC_CONTEXT`]) of the blake3 of the record's compact JSON
//! without `mac`. A put refuses a record whose `mac` does not match
//! ([`Error::RecordNotFromThisCache`]) before it reads anything else of it: a record edited
//! (even with its checksums recomputed), written by hand, or looked up in another cache is
//! never used. Whoever can read the database can still forge one (the secret is in it): the
//! database stays the root of trust, the record file no longer needs to be. Version 1 records
//! (no `mac`) are refused by their version. The file is written to a temporary name in the same
//! directory, synced and renamed (mode 0600), so a reader never sees half a record.
//!
//! Must never: be produced by a lookup that observed nothing (a record exists only through a
//! [`BuildLookup`](super::BuildLookup)), or be read without a size limit.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use base64::Engine;

use crate::error::{Error, Result};
use crate::tree::SealedLog;

use super::session::Proof;
use super::{Observed, Seen, SourceRole};
use crate::inputs::{Base, LayerInputs, canonical_json};

/// The format version of the lookup record file; a record of another version is refused.
/// Version 2 added `mac`.
pub const LOOKUP_RECORD_VERSION: u32 = 2;
/// The blake3 key-derivation context of the record's MAC key (from the per-cache secret).
pub const MAC_CONTEXT: &str = "layercache 2026 lookup record mac v2";
/// The `format` field of every lookup record.
const FORMAT: &str = "layercache lookup record";
/// The largest record file read: with its walk logs a record grows with the tree (~95 bytes a
/// file, so ~95 MB for 10^6 files).
pub const RECORD_LIMIT: u64 = 1 << 30;

/// What a build's lookup of one layer saw, as a value a put in another process can check
/// against ([`Session::put_recorded`](super::Session::put_recorded)): the definition digest,
/// the builder, the base hash, SOURCE_DATE_EPOCH, build_only, whether the stored version was
/// damaged, the input digest, and per source its role, key, Merkle root and row count. Made by
/// [`BuildLookup::record`](super::BuildLookup::record), written with [`LookupRecord::write`] and
/// read back with [`LookupRecord::read`]; serialized as the JSON object in the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupRecord {
    format: String,
    version: u32,
    layer: String,
    #[serde(with = "hex32")]
    definition_digest: [u8; 32],
    builder: Option<String>,
    #[serde(with = "hex_opt")]
    base_hash: Option<Vec<u8>>,
    source_date_epoch: Option<i64>,
    build_only: bool,
    damaged: bool,
    #[serde(with = "hex32_opt")]
    input_digest: Option<[u8; 32]>,
    sources: Vec<RecordedSource>,
    /// For a built base that resolved at lookup: the base version's entry digest and the base
    /// layer's pointer read with it (the put re-checks them instead of walking the base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<RecordedProof>,
    /// This layer's own result in this build: the version its lookup hit, or its put stored,
    /// with the pointer read with it (what the lookups of the layers built on it trust).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<RecordedProof>,
    /// The MAC binding the record to its database; `None` only while it is computed.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex32_opt")]
    mac: Option<[u8; 32]>,
    /// blake3 of the record's compact JSON without `mac` (computed, never stored).
    #[serde(skip)]
    content: [u8; 32],
}

/// One source of a [`LookupRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedSource {
    role: SourceRole,
    key: String,
    #[serde(with = "hex32_opt")]
    root_digest: Option<[u8; 32]>,
    row_count: u64,
    /// The lookup's walk log; absent when it kept none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    walk: Option<RecordedWalk>,
}

/// A version and the layer's pointer read with it ([`Proof`]), in a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedProof {
    /// The layer (for `base`: the base layer's name).
    layer: String,
    #[serde(with = "hex32")]
    entry_digest: [u8; 32],
    #[serde(with = "hex32")]
    current: [u8; 32],
    generation: u64,
}

impl RecordedProof {
    fn of(layer: &str, p: &Proof) -> RecordedProof {
        RecordedProof {
            layer: layer.to_string(),
            entry_digest: p.entry_digest,
            current: p.current,
            generation: p.generation,
        }
    }

    fn proof(&self) -> Proof {
        Proof {
            entry_digest: self.entry_digest,
            current: self.current,
            generation: self.generation,
        }
    }
}

/// A lookup's walk log in a record: its entry count, the blake3 of its bytes, and the bytes
/// in base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedWalk {
    entries: u64,
    #[serde(with = "hex32")]
    blake3: [u8; 32],
    log: String,
}

impl RecordedWalk {
    fn of(log: &SealedLog) -> RecordedWalk {
        RecordedWalk {
            entries: log.len(),
            blake3: *blake3::hash(log.as_bytes()).as_bytes(),
            log: base64::engine::general_purpose::STANDARD.encode(log.as_bytes()),
        }
    }

    /// The log, when it decodes and its checksum matches; else `None` (then nothing of it is
    /// used).
    fn log(&self, layer: &str, key: &str) -> Option<SealedLog> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.log)
            .ok()
            .filter(|b| *blake3::hash(b).as_bytes() == self.blake3);
        if bytes.is_none() {
            tracing::warn!(
                layer,
                source = key,
                "the walk log in the lookup record does not match its checksum; the put reads \
                 every file of this source"
            );
        }
        bytes.map(|b| SealedLog::from_bytes(b, self.entries))
    }
}

impl LookupRecord {
    /// The record of what a build's lookup of `layer` saw, bound to the cache `key` is of.
    pub(crate) fn new(
        layer: &str,
        seen: &Seen,
        result: Option<Proof>,
        key: &RecordKey,
    ) -> LookupRecord {
        let mut r = LookupRecord {
            format: FORMAT.to_string(),
            version: LOOKUP_RECORD_VERSION,
            layer: layer.to_string(),
            definition_digest: seen.definition_digest,
            builder: seen.builder.clone(),
            base_hash: seen.base_hash.clone(),
            source_date_epoch: seen.source_date_epoch,
            build_only: seen.build_only,
            damaged: seen.damaged,
            input_digest: seen.input_digest,
            sources: seen
                .sources
                .iter()
                .map(|o| RecordedSource {
                    role: o.role,
                    key: o.key.clone(),
                    root_digest: o.root_digest,
                    row_count: o.row_count,
                    walk: o.log.as_ref().map(RecordedWalk::of),
                })
                .collect(),
            base: None,
            result: result.map(|p| RecordedProof::of(layer, &p)),
            mac: None,
            content: [0; 32],
        };
        r.base = seen
            .base_proof
            .and_then(|p| seen.base_layer.as_deref().map(|b| RecordedProof::of(b, &p)));
        r.content = r.content_hash();
        r.mac = Some(key.mac(&r.content));
        r
    }

    /// This record with `result` as the layer's result in this build (a put's), bound again
    /// to the cache `key` is of.
    pub(crate) fn with_result(&self, result: Proof, key: &RecordKey) -> LookupRecord {
        let mut r = self.clone();
        r.result = Some(RecordedProof::of(&self.layer, &result));
        r.mac = None;
        r.content = r.content_hash();
        r.mac = Some(key.mac(&r.content));
        r
    }

    /// The layer's result in this build, if the record holds one (see [`Proof`]).
    pub(crate) fn result(&self) -> Option<Proof> {
        self.result
            .as_ref()
            .filter(|r| r.layer == self.layer)
            .map(RecordedProof::proof)
    }

    /// Whether the lookup was of the layer as `inputs` describe it now: the same definition,
    /// builder, SOURCE_DATE_EPOCH and build_only.
    pub(crate) fn same_layer_as(&self, inputs: &LayerInputs, builder: Option<&str>) -> bool {
        *blake3::hash(&canonical_json(&inputs.definition)).as_bytes() == self.definition_digest
            && self.builder.as_deref() == builder
            && self.source_date_epoch == inputs.source_date_epoch
            && self.build_only == inputs.build_only
    }

    /// The base proof of the record, if it names `inputs`' built base.
    fn base_proof_for(&self, inputs: Option<&LayerInputs>) -> Option<Proof> {
        let b = self.base.as_ref()?;
        match inputs.map(|i| &i.base) {
            Some(Base::Built { layer }) if *layer == b.layer => Some(b.proof()),
            _ => None,
        }
    }

    /// blake3 of the compact JSON of the record without its `mac` (streamed into the hasher:
    /// no copy of the walk logs).
    fn content_hash(&mut self) -> [u8; 32] {
        let mac = self.mac.take();
        let mut h = blake3::Hasher::new();
        // Writing into a hasher cannot fail, and every field serializes.
        let _ = serde_json::to_writer(&mut h, &*self);
        self.mac = mac;
        *h.finalize().as_bytes()
    }

    /// Whether the record was made by a lookup of the cache `key` is of, and not changed
    /// since (constant-time comparison).
    pub(crate) fn is_from(&self, key: &RecordKey) -> bool {
        self.mac.is_some_and(|m| {
            blake3::Hash::from_bytes(m) == blake3::Hash::from_bytes(key.mac(&self.content))
        })
    }

    /// The layer the lookup was of.
    pub fn layer(&self) -> &str {
        &self.layer
    }

    /// The input digest of what the lookup saw (`crate::version`), when it had one.
    pub fn input_digest(&self) -> Option<[u8; 32]> {
        self.input_digest
    }

    /// What the put compares with: the record as a lookup's observation (with its walk logs
    /// where they are sound).
    pub(crate) fn seen(&self, inputs: Option<&LayerInputs>) -> Seen {
        Seen {
            base_proof: self.base_proof_for(inputs),
            base_layer: self.base.as_ref().map(|b| b.layer.clone()),
            definition_digest: self.definition_digest,
            builder: self.builder.clone(),
            base_hash: self.base_hash.clone(),
            source_date_epoch: self.source_date_epoch,
            build_only: self.build_only,
            damaged: self.damaged,
            input_digest: self.input_digest,
            sources: self
                .sources
                .iter()
                .map(|s| Observed {
                    role: s.role,
                    key: s.key.clone(),
                    root_digest: s.root_digest,
                    row_count: s.row_count,
                    log: s.walk.as_ref().and_then(|w| w.log(&self.layer, &s.key)),
                })
                .collect(),
        }
    }

    /// Writes the record to `path` atomically (a temporary file in the same directory, fsync,
    /// rename), created with mode 0600.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Parse {
            what: "lookup record",
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        bytes.push(b'\n');
        let tmp = temp_name(path);
        let written = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io("cannot write the lookup record", path, e)
        })
    }

    /// Reads a record written by [`LookupRecord::write`]. A file that is not a regular file, is
    /// larger than 1 GiB, is not such a JSON object, or is of another format version is refused
    /// with [`Error::Parse`] naming it.
    pub fn read(path: &Path) -> Result<LookupRecord> {
        Self::read_limited(path, RECORD_LIMIT)
    }

    /// [`LookupRecord::read`], and the record must be of `layer` (a put from it, or the base
    /// record of a layer built on `layer`): a record of another layer is
    /// [`Error::RecordOfAnotherLayer`], before anything is looked up or stored.
    pub fn read_for(path: &Path, layer: &str) -> Result<LookupRecord> {
        let rec = Self::read(path)?;
        if rec.layer() != layer {
            return Err(Error::RecordOfAnotherLayer {
                path: path.to_path_buf(),
                layer: layer.to_string(),
                found: rec.layer().to_string(),
            });
        }
        Ok(rec)
    }

    /// [`LookupRecord::read`] with a size limit of `limit` bytes: a larger file is refused
    /// from its stat size, before a byte is read (nothing is allocated for it), and at most
    /// `limit` bytes are read, so a file that grows meanwhile cannot make the read unbounded.
    fn read_limited(path: &Path, limit: u64) -> Result<LookupRecord> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io("cannot read the lookup record", path, e))?;
        if !meta.is_file() {
            return Err(parse_error(path, "it is not a regular file".to_string()));
        }
        if meta.len() > limit {
            return Err(parse_error(
                path,
                format!(
                    "it is {} bytes, larger than the {limit}-byte limit",
                    meta.len()
                ),
            ));
        }
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(limit).read_to_end(&mut bytes))
            .map_err(|e| Error::io("cannot read the lookup record", path, e))?;
        // The format and version first, so another version says so instead of a field error.
        #[derive(Deserialize)]
        struct Head {
            format: Option<String>,
            version: Option<u32>,
        }
        let head: Head = serde_json::from_slice(&bytes)
            .map_err(|e| parse_error(path, format!("it is not a lookup record ({e})")))?;
        if head.format.as_deref() != Some(FORMAT) {
            return Err(parse_error(
                path,
                "it is not a layercache lookup record".to_string(),
            ));
        }
        if head.version != Some(LOOKUP_RECORD_VERSION) {
            return Err(parse_error(
                path,
                format!(
                    "it is of format version {}, this layercache reads version {LOOKUP_RECORD_VERSION}",
                    head.version
                        .map_or_else(|| "(none)".to_string(), |v| v.to_string())
                ),
            ));
        }
        let mut record: LookupRecord =
            serde_json::from_slice(&bytes).map_err(|e| parse_error(path, e.to_string()))?;
        drop(bytes);
        record.content = record.content_hash();
        Ok(record)
    }
}

/// The key of lookup records of one cache, derived from its secret. Its `Debug` shows nothing
/// of it.
#[derive(Clone)]
pub(crate) struct RecordKey([u8; 32]);

impl RecordKey {
    /// The record key of the cache whose secret is `secret`.
    pub(crate) fn of(secret: &[u8; 32]) -> RecordKey {
        RecordKey(blake3::derive_key(MAC_CONTEXT, secret))
    }

    /// The MAC of a record's content hash.
    fn mac(&self, content: &[u8; 32]) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, content).as_bytes()
    }
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKey(..)")
    }
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

fn parse_error(path: &Path, detail: String) -> Error {
    Error::Parse {
        what: "lookup record",
        path: path.to_path_buf(),
        detail: format!(
            "{detail}; look the layer up again for this build, recording that lookup, and put \
             from that record"
        ),
    }
}

/// The bytes of a lower-case hex field.
fn from_hex(s: &str) -> std::result::Result<Vec<u8>, String> {
    crate::path::unhex(s).ok_or_else(|| format!("{s:?} is not lower-case hex"))
}

fn to_32(v: Vec<u8>) -> std::result::Result<[u8; 32], String> {
    <[u8; 32]>::try_from(v).map_err(|v| format!("a digest of {} bytes, not 32", v.len()))
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::path::hex(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        super::from_hex(&s)
            .and_then(super::to_32)
            .map_err(serde::de::Error::custom)
    }
}

mod hex32_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&crate::path::hex(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::from_hex(&s).and_then(super::to_32))
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&crate::path::hex(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::from_hex(&s))
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> LookupRecord {
        let mut r = LookupRecord {
            format: FORMAT.to_string(),
            version: LOOKUP_RECORD_VERSION,
            layer: "app".to_string(),
            definition_digest: [7; 32],
            builder: Some("stacker 1.1.0".to_string()),
            base_hash: Some(b"sha256:abc".to_vec()),
            source_date_epoch: Some(1_700_000_000),
            build_only: false,
            damaged: false,
            input_digest: None,
            sources: vec![RecordedSource {
                role: SourceRole::OverlayDir,
                key: "src".to_string(),
                root_digest: Some([9; 32]),
                row_count: 3,
                walk: None,
            }],
            base: None,
            result: None,
            mac: None,
            content: [0; 32],
        };
        r.content = r.content_hash();
        r.mac = Some(RecordKey::of(&[5; 32]).mac(&r.content));
        r
    }

    /// A record is bound to its cache's secret: any change to any field, the MAC itself, or
    /// another secret is refused; the MAC is over the content, not the file's whitespace.
    #[test]
    fn a_record_is_bound_to_its_secret_and_refused_after_any_edit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        let r = record();
        assert!(r.is_from(&RecordKey::of(&[5; 32])));
        assert!(!r.is_from(&RecordKey::of(&[6; 32])));
        r.write(&p).unwrap();
        let back = LookupRecord::read(&p).unwrap();
        assert!(back.is_from(&RecordKey::of(&[5; 32])));
        let text = std::fs::read_to_string(&p).unwrap();
        // Re-indented: the same content, still accepted.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(
            LookupRecord::read(&p)
                .unwrap()
                .is_from(&RecordKey::of(&[5; 32]))
        );
        for (from, to) in [
            ("\"row_count\": 3", "\"row_count\": 4"),
            ("\"build_only\": false", "\"build_only\": true"),
            ("0909", "0908"),
            ("\"app\"", "\"apq\""),
        ] {
            assert!(text.contains(from), "{from}");
            std::fs::write(&p, text.replace(from, to)).unwrap();
            let edited = LookupRecord::read(&p).unwrap();
            assert!(
                !edited.is_from(&RecordKey::of(&[5; 32])),
                "{from} -> {to} accepted"
            );
        }
        // Without a MAC at all.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v.as_object_mut().unwrap().remove("mac");
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(
            !LookupRecord::read(&p)
                .unwrap()
                .is_from(&RecordKey::of(&[5; 32]))
        );
    }

    #[test]
    fn a_record_round_trips_and_another_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        let r = record();
        r.write(&p).unwrap();
        assert_eq!(LookupRecord::read(&p).unwrap(), r);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"root_digest\": \"0909"), "{text}");
        std::fs::write(&p, text.replace("\"version\": 2", "\"version\": 1")).unwrap();
        let err = LookupRecord::read(&p).unwrap_err().to_string();
        assert!(err.contains("format version 1"), "{err}");
        std::fs::write(&p, b"{\"format\": \"something else\"}").unwrap();
        let err = LookupRecord::read(&p).unwrap_err().to_string();
        assert!(err.contains("not a layercache lookup record"), "{err}");
        std::fs::write(&p, text.replace("0909", "0g09")).unwrap();
        assert!(LookupRecord::read(&p).is_err());
    }

    /// A record of exactly the size limit is read whole; one byte more is refused from its
    /// stat size, saying so (not a parse error of a cut file).
    #[test]
    fn a_record_of_exactly_the_limit_is_read_and_one_byte_more_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        let r = record();
        r.write(&p).unwrap();
        let size = std::fs::metadata(&p).unwrap().len();
        assert_eq!(LookupRecord::read_limited(&p, size).unwrap(), r);
        let err = LookupRecord::read_limited(&p, size - 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "it is {size} bytes, larger than the {}-byte limit",
                size - 1
            )),
            "{err}"
        );
    }

    /// A path that is not a regular file (a directory, a FIFO) is refused before it is opened:
    /// a FIFO would block the put for ever.
    #[test]
    fn a_record_path_that_is_not_a_regular_file_is_refused_unopened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for p in [dir.path(), fifo.as_path()] {
            let err = LookupRecord::read(p).unwrap_err().to_string();
            assert!(err.contains("it is not a regular file"), "{err}");
        }
    }
}
