//! What a version of a layer is: its **input digest** (the key a lookup finds it by) and its
//! **entry digest** (the base hash of the layers built on it). Both are pure functions of stored
//! or computed facts; nothing here touches the database or the file system.
//!
//! ## The input digest
//!
//! One blake3 hash in derive-key mode (context [`INPUT_DIGEST_CONTEXT`]) over, in this order,
//! each variable-length field prefixed with its length as u64 little endian:
//!
//! 1. the definition digest (blake3 of the canonical JSON of the layer definition);
//! 2. the base: its kind as a fixed tag byte (built 1, tar 2, oci 3, docker 4, scratch 5) and
//!    its base hash (length-prefixed): for `built` the **entry digest** of the base layer's
//!    version that the base's own lookup resolved to (so a rebuilt base with other outputs
//!    misses above it), for `tar` blake3 of the tarball, for `oci`/`docker` the manifest
//!    digest (`sha256:…` as bytes) the tag resolves to, for `scratch` nothing;
//! 3. SOURCE_DATE_EPOCH: tag 0, or tag 1 and the i64 little endian;
//! 4. build_only: one byte, 0 or 1;
//! 5. the builder identity: tag 0, or tag 1 and the length-prefixed UTF-8 string;
//! 6. the number of cached sources, then for each source **sorted by (role, key)**: the role
//!    (`import` or `overlay_dir`, length-prefixed), the key (length-prefixed), the root's type
//!    tag byte ([`EntryKind`]) and the 32-byte Merkle root of its tree
//!    ([`crate::tree::TreeHasher`]), which covers every compared property of every entry.
//!
//! Never in it: absolute paths (of sources, rootfs copies or tarballs), the base's reference
//! (a tarball's file name or an image tag: the content is what counts; the reference is kept in
//! the record to explain a miss), times, inode numbers or any other stat data, row counts
//! (the Merkle root already covers every row), the layer name (it is the other half of the
//! key). Hence the same tree in another directory, or touched, has the same input digest, and
//! a branch switched back finds the version it built before.
//!
//! ## The entry digest
//!
//! blake3 (context [`ENTRY_DIGEST_CONTEXT`]) over the layer name, the input digest, build_only
//! and the output manifests (layer type and canonical descriptor JSON, in stored order). It
//! covers the inputs (through the input digest) and the outputs, never the times: layers built
//! on a base record it, and a base rebuilt with different outputs misses above it.

use crate::schema::{BaseKind, EntryKind, ManifestRecord, SourceSummary, VersionRecord};

/// blake3 derive-key context of the input digest. Changing anything this module feeds into the
/// digest changes what every stored key means: that is a migration step, never an edit here.
pub const INPUT_DIGEST_CONTEXT: &str = "layercache 2026-12 input digest v1";
/// blake3 derive-key context of the entry digest.
pub const ENTRY_DIGEST_CONTEXT: &str = "layercache 2026-12 entry digest v1";

/// Whether a source is an import or an overlay dir: its role in the input digest, in the
/// lookup record and in `--json` (`import`, `overlay_dir`: the one spelling of each). Imports
/// sort before overlay dirs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SourceRole {
    /// An import.
    Import,
    /// An overlay dir.
    OverlayDir,
}

impl SourceRole {
    /// How a person reads the role in a message (`import`, `overlay_dir`).
    pub fn noun(self) -> &'static str {
        self.as_str()
    }

    /// The name hashed into the digest.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceRole::Import => "import",
            SourceRole::OverlayDir => "overlay_dir",
        }
    }
}

/// One cached source as the input digest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInput<'a> {
    /// Import or overlay dir.
    pub role: SourceRole,
    /// The key it is cached under.
    pub key: &'a str,
    /// The type of its root.
    pub root_kind: EntryKind,
    /// The Merkle root of its tree.
    pub root_digest: [u8; 32],
}

/// Everything an input digest is computed from (see the module doc for the exact encoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs<'a> {
    /// blake3 of the canonical definition JSON.
    pub definition_digest: [u8; 32],
    /// Kind of base.
    pub base_kind: BaseKind,
    /// The base hash (see the module doc).
    pub base_hash: &'a [u8],
    /// SOURCE_DATE_EPOCH.
    pub source_date_epoch: Option<i64>,
    /// build_only.
    pub build_only: bool,
    /// The builder identity.
    pub builder: Option<&'a str>,
    /// The cached sources, in any order (the digest sorts them).
    pub sources: Vec<SourceInput<'a>>,
}

impl<'a> Inputs<'a> {
    /// The inputs a stored version records (its summaries hold the Merkle roots).
    pub fn of_record(rec: &'a VersionRecord) -> Inputs<'a> {
        Inputs {
            definition_digest: rec.definition_digest,
            base_kind: rec.base.kind,
            base_hash: &rec.base.hash,
            source_date_epoch: rec.source_date_epoch,
            build_only: rec.build_only,
            builder: rec.builder.as_deref(),
            sources: sources_of(&rec.imports, &rec.overlay_dirs),
        }
    }
}

/// The sources of stored summaries, imports then overlay dirs.
pub fn sources_of<'a>(
    imports: &'a [SourceSummary],
    overlay_dirs: &'a [SourceSummary],
) -> Vec<SourceInput<'a>> {
    let one = |role| {
        move |s: &'a SourceSummary| SourceInput {
            role,
            key: &s.key,
            root_kind: s.root_kind,
            root_digest: s.root_digest,
        }
    };
    imports
        .iter()
        .map(one(SourceRole::Import))
        .chain(overlay_dirs.iter().map(one(SourceRole::OverlayDir)))
        .collect()
}

fn base_tag(kind: BaseKind) -> u8 {
    match kind {
        BaseKind::Built => 1,
        BaseKind::Tar => 2,
        BaseKind::Oci => 3,
        BaseKind::Docker => 4,
        BaseKind::Scratch => 5,
    }
}

fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The input digest of a layer evaluation (see the module doc for exactly what goes in).
pub fn input_digest(inputs: &Inputs<'_>) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(INPUT_DIGEST_CONTEXT);
    h.update(&inputs.definition_digest);
    h.update(&[base_tag(inputs.base_kind)]);
    field(&mut h, inputs.base_hash);
    match inputs.source_date_epoch {
        None => {
            h.update(&[0]);
        }
        Some(e) => {
            h.update(&[1]);
            h.update(&e.to_le_bytes());
        }
    }
    h.update(&[inputs.build_only as u8]);
    match inputs.builder {
        None => {
            h.update(&[0]);
        }
        Some(b) => {
            h.update(&[1]);
            field(&mut h, b.as_bytes());
        }
    }
    let mut sources: Vec<&SourceInput<'_>> = inputs.sources.iter().collect();
    sources.sort_by(|a, b| (a.role, a.key).cmp(&(b.role, b.key)));
    h.update(&(sources.len() as u64).to_le_bytes());
    for s in sources {
        field(&mut h, s.role.as_str().as_bytes());
        field(&mut h, s.key.as_bytes());
        h.update(&[s.root_kind.tag()]);
        h.update(&s.root_digest);
    }
    *h.finalize().as_bytes()
}

/// The entry digest of a version: what layers built on it record as their base hash.
pub fn entry_digest(
    layer: &str,
    input_digest: &[u8; 32],
    build_only: bool,
    manifests: &[ManifestRecord],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(ENTRY_DIGEST_CONTEXT);
    field(&mut h, layer.as_bytes());
    h.update(input_digest);
    h.update(&[build_only as u8]);
    h.update(&(manifests.len() as u64).to_le_bytes());
    for m in manifests {
        field(&mut h, m.layer_type.as_bytes());
        field(&mut h, &m.descriptor_json);
    }
    *h.finalize().as_bytes()
}

/// The entry digest of a stored version.
pub fn entry_digest_of(rec: &VersionRecord) -> [u8; 32] {
    entry_digest(&rec.name, &rec.input_digest, rec.build_only, &rec.manifests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Inputs<'static> {
        Inputs {
            definition_digest: [1; 32],
            base_kind: BaseKind::Tar,
            base_hash: &[2; 32],
            source_date_epoch: Some(5),
            build_only: false,
            builder: None,
            sources: vec![
                SourceInput {
                    role: SourceRole::OverlayDir,
                    key: "b",
                    root_kind: EntryKind::Dir,
                    root_digest: [3; 32],
                },
                SourceInput {
                    role: SourceRole::Import,
                    key: "a",
                    root_kind: EntryKind::File,
                    root_digest: [4; 32],
                },
            ],
        }
    }

    #[test]
    fn source_order_does_not_matter_but_every_field_does() {
        let d = input_digest(&base());
        let mut swapped = base();
        swapped.sources.reverse();
        assert_eq!(input_digest(&swapped), d);

        let mut variants: Vec<Inputs<'static>> = Vec::new();
        let mut v = base();
        v.definition_digest[0] ^= 1;
        variants.push(v);
        let mut v = base();
        v.base_kind = BaseKind::Oci;
        variants.push(v);
        let mut v = base();
        v.base_hash = &[2; 31];
        variants.push(v);
        let mut v = base();
        v.source_date_epoch = None;
        variants.push(v);
        let mut v = base();
        v.source_date_epoch = Some(6);
        variants.push(v);
        let mut v = base();
        v.build_only = true;
        variants.push(v);
        let mut v = base();
        v.builder = Some("");
        variants.push(v);
        let mut v = base();
        v.builder = Some("stacker 1.1.0");
        variants.push(v);
        let mut v = base();
        v.sources[0].role = SourceRole::Import;
        variants.push(v);
        let mut v = base();
        v.sources[0].key = "c";
        variants.push(v);
        let mut v = base();
        v.sources[1].root_kind = EntryKind::Dir;
        variants.push(v);
        let mut v = base();
        v.sources[1].root_digest[31] ^= 1;
        variants.push(v);
        let mut v = base();
        v.sources.pop();
        variants.push(v);
        let mut seen = std::collections::HashSet::from([d]);
        for (i, v) in variants.iter().enumerate() {
            assert!(seen.insert(input_digest(v)), "variant {i} collides");
        }
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        // Moving a byte from one key to the next must change the digest.
        let mut a = base();
        a.sources[0].key = "ab";
        a.sources[1].key = "c";
        a.sources[0].role = SourceRole::Import;
        let mut b = a.clone();
        b.sources[0].key = "a";
        b.sources[1].key = "bc";
        assert_ne!(input_digest(&a), input_digest(&b));
    }

    #[test]
    fn entry_digest_covers_outputs_and_inputs() {
        let m = |j: &str| ManifestRecord {
            layer_type: "tar".into(),
            descriptor_json: j.as_bytes().to_vec(),
        };
        let d = entry_digest("l", &[1; 32], false, &[m("{}")]);
        assert_ne!(d, entry_digest("l", &[1; 32], false, &[m("{ }")]));
        assert_ne!(d, entry_digest("l", &[2; 32], false, &[m("{}")]));
        assert_ne!(d, entry_digest("k", &[1; 32], false, &[m("{}")]));
        assert_ne!(d, entry_digest("l", &[1; 32], true, &[m("{}")]));
        assert_ne!(d, entry_digest("l", &[1; 32], false, &[]));
    }
}
