//! The wire format of a pushed entry and the tag rule (see the module doc of [`super`]).

use std::collections::BTreeMap;

use oci_spec::image::Descriptor;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Media type of the config blob of an entry artifact (the `Envelope`), and the manifest's
/// `artifactType`.
pub const ENTRY_MEDIA_TYPE: &str = "application/vnd.layercache.entry.v1+json";
/// Media type of the manifest itself: a plain OCI image manifest.
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Manifest annotation: the layer name.
pub const ANNOTATION_LAYER: &str = "dev.layercache.layer";
/// Manifest annotation: the input digest, 64 lowercase hex digits.
pub const ANNOTATION_INPUT_DIGEST: &str = "dev.layercache.input-digest";
/// The version of the envelope this code writes and accepts.
pub const ENVELOPE_VERSION: u32 = 1;
/// The blake3 key-derivation context of the tag hash.
pub const TAG_CONTEXT: &str = "layercache 2026 remote entry tag v1";

/// Longest readable prefix of a tag (the layer name, sanitized).
const TAG_PREFIX_MAX: usize = 60;
/// Manifests and configs larger than this are refused before parsing.
pub(crate) const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Entry records (config blobs) larger than this are refused.
pub(crate) const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The tag under which the entry for (`layer`, `input_digest`) is pushed and found.
///
/// `<prefix>-<hex>` where `hex` is the 64-digit blake3 (key derived from [`TAG_CONTEXT`]) of
/// `layer ‖ 0x00 ‖ input_digest`, and `prefix` is the layer name with every byte outside
/// `[A-Za-z0-9_.-]` replaced by `_`, cut to 60 bytes, with a leading `.` or `-` replaced by
/// `_` (an empty name gives `_`). The result always matches
/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`. The prefix is only for people reading a tag list:
/// [`super::Remote::find_entry`] trusts the annotations and the config, never the tag.
pub fn entry_tag(layer: &str, input_digest: &[u8; 32]) -> String {
    let mut h = blake3::Hasher::new_derive_key(TAG_CONTEXT);
    h.update(layer.as_bytes());
    h.update(&[0]);
    h.update(input_digest);
    let hash = h.finalize();
    let mut prefix: String = layer
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(TAG_PREFIX_MAX)
        .collect();
    if prefix.is_empty() || prefix.starts_with(['.', '-']) {
        prefix.replace_range(..prefix.chars().next().map_or(0, char::len_utf8), "_");
    }
    format!("{prefix}-{}", hash.to_hex())
}

/// The config blob of an entry artifact: who it is for, and the record.
#[derive(Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// [`ENVELOPE_VERSION`].
    pub(crate) layercache_entry: u32,
    /// The layer name.
    pub(crate) layer: String,
    /// The input digest, hex.
    pub(crate) input_digest: String,
    /// The entry record, verbatim.
    pub(crate) record: Box<RawValue>,
    /// Every blob the entry carries (the manifest's `layers`, in order), so that a signature
    /// over this envelope covers them too. Absent in entries pushed before signing existed;
    /// when present, the manifest's `layers` must be exactly these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) blobs: Option<Vec<BlobRef>>,
}

/// A blob as the envelope lists it: what a hit hands to the builder, and nothing else.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlobRef {
    /// Its media type.
    #[serde(rename = "mediaType")]
    pub(crate) media_type: String,
    /// `sha256:HEX`.
    pub(crate) digest: String,
    /// Its size in bytes.
    pub(crate) size: u64,
}

impl BlobRef {
    pub(crate) fn of(d: &Descriptor) -> BlobRef {
        BlobRef {
            media_type: d.media_type().to_string(),
            digest: d.digest().to_string(),
            size: d.size(),
        }
    }
}

/// An OCI image manifest as read back; unknown fields are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestIn {
    pub(crate) schema_version: u32,
    #[serde(default)]
    pub(crate) media_type: Option<String>,
    pub(crate) config: Descriptor,
    #[serde(default)]
    pub(crate) layers: Vec<Descriptor>,
    #[serde(default)]
    pub(crate) annotations: BTreeMap<String, String>,
}

/// The manifest pushed for an entry (keys sorted: serde_json's map is ordered).
pub(crate) fn manifest_json(
    layer: &str,
    input_hex: &str,
    config_digest: &str,
    config_size: u64,
    layers: &[Descriptor],
    signature: Option<&str>,
) -> serde_json::Result<Vec<u8>> {
    let mut value = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_MEDIA_TYPE,
        "artifactType": ENTRY_MEDIA_TYPE,
        "config": {
            "mediaType": ENTRY_MEDIA_TYPE,
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers,
        "annotations": {
            ANNOTATION_LAYER: layer,
            ANNOTATION_INPUT_DIGEST: input_hex,
        },
    });
    if let (Some(sig), Some(a)) = (signature, value.get_mut("annotations")) {
        a[super::sign::ANNOTATION_SIGNATURE] = sig.into();
    }
    serde_json::to_vec(&value)
}

/// The lowercase hex of a `sha256:<64 lowercase hex>` digest, `None` for anything else (so a
/// digest from the registry can never name a path outside `blobs/sha256/`).
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_tag(t: &str) -> bool {
        let b = t.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    }

    #[test]
    fn tags_are_valid_for_any_layer_name() {
        let long = "x".repeat(500);
        for name in [
            "",
            "a",
            ".hidden",
            "-dash",
            "ünïcode",
            "sp ace",
            "a:b@c",
            &long,
            "é",
            "--",
            "..",
            "\u{10FFFF}",
        ] {
            let t = entry_tag(name, &[7; 32]);
            assert!(valid_tag(&t), "{name:?} -> {t:?}");
        }
    }

    #[test]
    fn tags_depend_on_layer_and_digest() {
        let a = entry_tag("a", &[0; 32]);
        assert_eq!(a, entry_tag("a", &[0; 32]));
        assert_ne!(a, entry_tag("a", &[1; 32]));
        // Same sanitized prefix, different names: different hashes.
        assert_ne!(entry_tag("a b", &[0; 32]), entry_tag("a_b", &[0; 32]));
    }

    #[test]
    fn only_sha256_digests_name_blob_paths() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert!(sha256_hex(&ok).is_some());
        assert!(sha256_hex(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(sha256_hex(&format!("sha256:../{}", "a".repeat(61))).is_none());
        assert!(sha256_hex(&format!("sha512:{}", "a".repeat(64))).is_none());
    }
}
