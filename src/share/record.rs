//! Shared entries: the record of a cached layer as it travels through a registry, the input
//! digest that addresses it, and the checks a record found there must pass before a lookup
//! may take it.
//!
//! Owns: the wire record ([`SharedRecord`], versioned JSON, carried verbatim as the `record` of
//! a [`crate::share::registry::RemoteEntry`]), the rule that turns it into outputs this machine may
//! reuse ([`accept`]). The input digest itself is [`crate::version::input_digest`].
//!
//! Must never: talk to a registry (that is [`crate::share::registry`]), touch the database (that is
//! [`crate::engine`]), or take anything from a remote record but its outputs. A pulled layer is
//! recorded from **this machine's** walk of its inputs; the remote record only names the output
//! manifests, and it is used only when the input digest recomputed from its own fields equals
//! the digest this machine computed from its inputs. So a record pushed for other inputs — by
//! mistake, collision or forgery of a tag — is never a hit here.
//!
//! ## What the wire record holds
//!
//! `{"layercache_record": 1, "layer", "input_digest", "definition_digest", "base": {"kind",
//! "hash"}, "source_date_epoch", "build_only", "builder", "sources": [{"role", "key", "root_kind",
//! "root_digest"}], "manifests": {TYPE: DESCRIPTOR}}`, digests in lowercase hex. Never in it:
//! absolute paths, row counts, stat data, times, the definition text. Unknown fields are refused:
//! a record of another version is named as such, never half read.

use std::collections::BTreeMap;

use oci_spec::image::Descriptor;
use serde::{Deserialize, Serialize};

use crate::schema::{BaseKind, EntryKind, ManifestRecord, VersionRecord};
use crate::share::registry::FoundEntry;
use crate::version::{Inputs, SourceInput, SourceRole, input_digest, sources_of};

/// The version of [`SharedRecord`] this code writes and reads.
pub const SHARED_RECORD_VERSION: u32 = 1;
/// The largest wire record read (the registry layer also bounds the config blob).
pub const MAX_RECORD_BYTES: usize = 4 << 20;

/// Why a record found in a registry was not taken. Each says which layer and digest were asked
/// for; none is a local error: the lookup answers from the local cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record is not a wire record this version reads.
    #[error(
        "the remote entry for layer {layer:?} (input digest {input_digest}) is unreadable: {detail}; push it again with this layercache"
    )]
    Unreadable {
        /// The layer asked for.
        layer: String,
        /// The input digest asked for (hex).
        input_digest: String,
        /// What is wrong.
        detail: String,
    },
    /// The record does not describe the inputs asked for.
    #[error(
        "the remote entry for layer {layer:?} (input digest {input_digest}) was refused: {detail}; whoever can push to that repository published it, check who"
    )]
    Mismatch {
        /// The layer asked for.
        layer: String,
        /// The input digest asked for (hex).
        input_digest: String,
        /// What differs.
        detail: String,
    },
}

/// The base of a shared record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedBase {
    /// Kind of base.
    pub kind: BaseKind,
    /// The base hash, hex (empty for scratch).
    pub hash: String,
}

/// One cached source of a shared record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedSource {
    /// `import` or `overlay_dir`.
    pub role: String,
    /// The key it is cached under.
    pub key: String,
    /// The type of its root.
    pub root_kind: EntryKind,
    /// The Merkle root of its tree, hex.
    pub root_digest: String,
}

/// A cached layer as pushed to a registry (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedRecord {
    /// [`SHARED_RECORD_VERSION`].
    pub layercache_record: u32,
    /// The layer name.
    pub layer: String,
    /// The input digest, hex.
    pub input_digest: String,
    /// blake3 of the canonical definition JSON, hex.
    pub definition_digest: String,
    /// The base.
    pub base: SharedBase,
    /// SOURCE_DATE_EPOCH.
    pub source_date_epoch: Option<i64>,
    /// build_only.
    pub build_only: bool,
    /// The builder identity.
    pub builder: Option<String>,
    /// The cached sources, sorted by (role, key).
    pub sources: Vec<SharedSource>,
    /// Output manifests by layer type (OCI descriptors).
    pub manifests: BTreeMap<String, serde_json::Value>,
}

pub use crate::path::hex;
use crate::path::unhex;

fn unhex32(s: &str) -> Option<[u8; 32]> {
    unhex(s).and_then(|v| <[u8; 32]>::try_from(v).ok())
}

/// The wire record of a stored record, as JSON bytes. Fails only when a stored descriptor is
/// not JSON (a damaged record: push nothing for it).
pub fn encode(rec: &VersionRecord) -> Result<Vec<u8>, serde_json::Error> {
    let mut sources: Vec<SharedSource> = sources_of(&rec.imports, &rec.overlay_dirs)
        .into_iter()
        .map(|s| SharedSource {
            role: s.role.as_str().to_string(),
            key: s.key.to_string(),
            root_kind: s.root_kind,
            root_digest: hex(&s.root_digest),
        })
        .collect();
    sources.sort_by(|a, b| (&a.role, &a.key).cmp(&(&b.role, &b.key)));
    let manifests = rec
        .manifests
        .iter()
        .map(|m: &ManifestRecord| {
            serde_json::from_slice(&m.descriptor_json).map(|v| (m.layer_type.clone(), v))
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    serde_json::to_vec(&SharedRecord {
        layercache_record: SHARED_RECORD_VERSION,
        layer: rec.name.clone(),
        input_digest: hex(&rec.input_digest),
        definition_digest: hex(&rec.definition_digest),
        base: SharedBase {
            kind: rec.base.kind,
            hash: hex(&rec.base.hash),
        },
        source_date_epoch: rec.source_date_epoch,
        build_only: rec.build_only,
        builder: rec.builder.clone(),
        sources,
        manifests,
    })
}

/// The input digest a wire record's own fields hash to, or why they cannot be read.
fn recompute(r: &SharedRecord) -> Result<[u8; 32], String> {
    let definition = unhex32(&r.definition_digest)
        .ok_or_else(|| format!("definition digest {:?} is not hex", r.definition_digest))?;
    let base_hash =
        unhex(&r.base.hash).ok_or_else(|| format!("base hash {:?} is not hex", r.base.hash))?;
    let mut roots = Vec::with_capacity(r.sources.len());
    for s in &r.sources {
        let role = match s.role.as_str() {
            "import" => SourceRole::Import,
            "overlay_dir" => SourceRole::OverlayDir,
            other => return Err(format!("source role {other:?} is unknown")),
        };
        let root_digest = unhex32(&s.root_digest)
            .ok_or_else(|| format!("root digest of {} {:?} is not hex", s.role, s.key))?;
        roots.push(SourceInput {
            role,
            key: s.key.as_str(),
            root_kind: s.root_kind,
            root_digest,
        });
    }
    Ok(input_digest(&Inputs {
        definition_digest: definition,
        base_kind: r.base.kind,
        base_hash: &base_hash,
        source_date_epoch: r.source_date_epoch,
        build_only: r.build_only,
        builder: r.builder.as_deref(),
        sources: roots,
    }))
}

/// Takes a record found in a registry for `layer` and the input digest `asked` (computed from
/// this machine's inputs), or says why not. It must: be a wire record of this version; name
/// `layer` and `asked`; hash, from its own fields, to `asked`; give every output manifest as a
/// `sha256:` descriptor that is among the blobs the entry carries (so fetching them brings
/// every output). Returns the output manifests by layer type.
pub fn accept(
    found: &FoundEntry,
    layer: &str,
    asked: &[u8; 32],
) -> Result<BTreeMap<String, Descriptor>, RecordError> {
    let asked_hex = hex(asked);
    let unreadable = |detail: String| RecordError::Unreadable {
        layer: layer.to_string(),
        input_digest: asked_hex.clone(),
        detail,
    };
    let mismatch = |detail: String| RecordError::Mismatch {
        layer: layer.to_string(),
        input_digest: asked_hex.clone(),
        detail,
    };
    if found.record.len() > MAX_RECORD_BYTES {
        return Err(unreadable(format!("{} bytes", found.record.len())));
    }
    let version: serde_json::Value =
        serde_json::from_slice(&found.record).map_err(|e| unreadable(format!("not JSON ({e})")))?;
    let v = version.get("layercache_record").and_then(|v| v.as_u64());
    if v != Some(u64::from(SHARED_RECORD_VERSION)) {
        return Err(unreadable(format!(
            "record version {v:?}, this layercache reads {SHARED_RECORD_VERSION}"
        )));
    }
    let rec: SharedRecord =
        serde_json::from_value(version).map_err(|e| unreadable(format!("not a record ({e})")))?;
    if rec.layer != layer || rec.input_digest != asked_hex {
        return Err(mismatch(format!(
            "it names layer {:?} and input digest {}",
            rec.layer, rec.input_digest
        )));
    }
    let recomputed = recompute(&rec).map_err(unreadable)?;
    if recomputed != *asked {
        return Err(mismatch(format!(
            "its inputs hash to {}, not to the digest it names",
            hex(&recomputed)
        )));
    }
    let carried: Vec<String> = found.blobs.iter().map(|d| d.digest().to_string()).collect();
    let mut manifests = BTreeMap::new();
    for (layer_type, value) in rec.manifests {
        let d: Descriptor = serde_json::from_value(value).map_err(|e| {
            unreadable(format!("manifest {layer_type:?} is not a descriptor ({e})"))
        })?;
        let digest = d.digest().to_string();
        let sha256 = digest
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && unhex(h).is_some());
        if !sha256 {
            return Err(mismatch(format!(
                "manifest {layer_type:?} has digest {digest}, not sha256"
            )));
        }
        if !carried.contains(&digest) {
            return Err(mismatch(format!(
                "manifest {layer_type:?} ({digest}) is not among the blobs it carries"
            )));
        }
        manifests.insert(layer_type, d);
    }
    Ok(manifests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_upper_case() {
        assert_eq!(unhex32(&hex(&[0xab; 32])), Some([0xab; 32]));
        assert_eq!(unhex("AB"), None);
        assert_eq!(unhex("abc"), None);
    }

    fn record() -> VersionRecord {
        use crate::schema::{BaseRecord, SourceSummary};
        let desc = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", "a".repeat(64)),
            "size": 3,
        });
        let mut rec = VersionRecord {
            name: "l1".into(),
            input_digest: [0; 32],
            definition_json: b"{}".to_vec(),
            definition_digest: [7; 32],
            base: BaseRecord {
                kind: BaseKind::Scratch,
                reference: String::new(),
                hash: Vec::new(),
            },
            source_date_epoch: None,
            imports: vec![SourceSummary {
                key: "a".into(),
                source: "import:a".into(),
                root_kind: EntryKind::Dir,
                root_digest: [9; 32],
                rows: 3,
            }],
            overlay_dirs: Vec::new(),
            manifests: vec![ManifestRecord {
                layer_type: "tar".into(),
                descriptor_json: serde_json::to_vec(&desc).unwrap_or_default(),
            }],
            build_only: false,
            builder: Some("stacker 1.1.0".into()),
            created_unix_ms: 1,
            origin: crate::schema::Origin::Built,
        };
        rec.input_digest = input_digest(&Inputs::of_record(&rec));
        rec
    }

    fn found(record: Vec<u8>) -> FoundEntry {
        let blob: Descriptor = serde_json::from_value(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", "a".repeat(64)),
            "size": 3,
        }))
        .expect("descriptor");
        FoundEntry {
            layer: "l1".into(),
            input_digest: [0; 32],
            tag: "t".into(),
            manifest_digest: "m".into(),
            record,
            blobs: vec![blob],
        }
    }

    /// Edits the encoded record of [`record`] as JSON.
    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v: serde_json::Value =
            serde_json::from_slice(&encode(&record()).expect("encode")).expect("json");
        edit(&mut v);
        serde_json::to_vec(&v).expect("json")
    }

    #[test]
    fn a_record_is_taken_only_for_the_inputs_it_hashes_to() {
        let rec = record();
        let asked = rec.input_digest;
        let ok = accept(&found(encode(&rec).expect("encode")), "l1", &asked).expect("accepted");
        assert_eq!(ok.len(), 1);
        // Another layer, or another digest asked for.
        let e = accept(&found(encode(&rec).expect("encode")), "l2", &asked);
        assert!(matches!(e, Err(RecordError::Mismatch { .. })), "{e:?}");
        let e = accept(&found(encode(&rec).expect("encode")), "l1", &[1; 32]);
        assert!(matches!(e, Err(RecordError::Mismatch { .. })), "{e:?}");
        // Fields that do not hash to the digest the record names (a forgery).
        for edit in [
            |v: &mut serde_json::Value| v["definition_digest"] = "00".repeat(32).into(),
            |v: &mut serde_json::Value| v["sources"][0]["root_digest"] = "11".repeat(32).into(),
            |v: &mut serde_json::Value| v["build_only"] = true.into(),
            |v: &mut serde_json::Value| v["builder"] = serde_json::Value::Null,
            |v: &mut serde_json::Value| v["sources"] = serde_json::json!([]),
        ] {
            let e = accept(&found(edited(edit)), "l1", &asked);
            assert!(matches!(e, Err(RecordError::Mismatch { .. })), "{e:?}");
        }
        // Outputs not carried, or not sha256; another version; unknown fields.
        let e = accept(
            &found(edited(|v| {
                v["manifests"]["tar"]["digest"] = format!("sha256:{}", "b".repeat(64)).into()
            })),
            "l1",
            &asked,
        );
        assert!(matches!(e, Err(RecordError::Mismatch { .. })), "{e:?}");
        let e = accept(
            &found(edited(|v| {
                v["manifests"]["tar"]["digest"] = format!("sha512:{}", "b".repeat(128)).into()
            })),
            "l1",
            &asked,
        );
        assert!(e.is_err(), "{e:?}");
        let e = accept(
            &found(edited(|v| v["layercache_record"] = 2.into())),
            "l1",
            &asked,
        );
        assert!(matches!(e, Err(RecordError::Unreadable { .. })), "{e:?}");
        let e = accept(&found(edited(|v| v["extra"] = 1.into())), "l1", &asked);
        assert!(matches!(e, Err(RecordError::Unreadable { .. })), "{e:?}");
        let e = accept(&found(b"not json".to_vec()), "l1", &asked);
        assert!(matches!(e, Err(RecordError::Unreadable { .. })), "{e:?}");
    }
}
