//! Why a layer missed: typed reasons, serializable for tools, with one human `Display` each,
//! worded like stacker's log lines ("cache miss because ...").

use std::fmt;

use serde::Serialize;

use crate::diff::TreeDiff;
use crate::schema::EntryKind;

/// One top-level field of a layer definition whose value changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// The field name (`(definition)` when the definition is not an object).
    pub field: String,
    /// Stored value (`null` when the field is new).
    pub old: serde_json::Value,
    /// Current value (`null` when the field was removed).
    pub new: serde_json::Value,
}

/// How a layer's base changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum BaseChange {
    /// The kind or reference of the base changed (e.g. another base layer, another tag).
    Replaced {
        /// Stored `kind:reference`.
        old: String,
        /// Current `kind:reference`.
        new: String,
    },
    /// The base layer (built) does not hit now.
    BaseLayerMissed {
        /// The base layer.
        layer: String,
    },
    /// The base hash differs from the one recorded at put (the base was rebuilt, the tarball
    /// changed, the tag moved).
    HashChanged {
        /// Recorded hash, hex.
        old: String,
        /// Current hash, hex.
        new: String,
    },
    /// The tarball is missing.
    TarballMissing {
        /// Its path, escaped.
        path: String,
    },
    /// The tag is not in the OCI layout's index.
    TagNotFound {
        /// The tag.
        tag: String,
    },
}

/// Why a lookup missed. Reasons come in the order of the checks: not cached, definition, base,
/// SOURCE_DATE_EPOCH, imports, overlay dirs. ([`MissReason::NotCacheable`] comes alone, before
/// any check; [`MissReason::BuilderChanged`] comes right after the definition: the builder is
/// part of what was built, and part of the input digest.)
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum MissReason {
    /// No entry for the layer.
    NotCached,
    /// The stored entry cannot be decoded; it costs this layer, not the cache.
    DamagedEntry {
        /// What was wrong.
        detail: String,
    },
    /// The layer definition changed.
    DefinitionChanged {
        /// The top-level fields that differ.
        fields: Vec<FieldChange>,
    },
    /// The base changed.
    BaseChanged {
        /// How.
        change: BaseChange,
    },
    /// SOURCE_DATE_EPOCH differs.
    SourceDateEpochChanged {
        /// Recorded value.
        old: Option<i64>,
        /// Current value.
        new: Option<i64>,
    },
    /// An import that is not in the cached entry.
    ImportNew {
        /// Import key.
        key: String,
    },
    /// An import recorded in the entry that the layer no longer has (an import with a `dest`
    /// is keyed by the key and the destination, so a new destination is a new import).
    ImportRemoved {
        /// Import key.
        key: String,
    },
    /// An import missing on disk.
    ImportMissing {
        /// Import key.
        key: String,
        /// Where it should be, escaped.
        path: String,
    },
    /// An import changed between file and directory (or another type).
    ImportTypeChanged {
        /// Import key.
        key: String,
        /// Recorded type.
        old: EntryKind,
        /// Type on disk.
        new: EntryKind,
    },
    /// An import's content changed; for a file import the one path is `.`.
    ImportContentChanged {
        /// Import key.
        key: String,
        /// What differs.
        diff: TreeDiff,
    },
    /// An overlay dir that is not in the cached entry.
    OverlayDirNew {
        /// Overlay dir key.
        key: String,
    },
    /// An overlay dir recorded in the entry that the layer no longer has.
    OverlayDirRemoved {
        /// Overlay dir key.
        key: String,
    },
    /// The overlay dir's copy is missing from the rootfs.
    OverlayDirMissing {
        /// Overlay dir key.
        key: String,
        /// The rootfs path, escaped.
        rootfs_path: String,
    },
    /// An overlay dir's content changed.
    OverlayDirContentChanged {
        /// Overlay dir key.
        key: String,
        /// What differs.
        diff: TreeDiff,
    },
    /// The layer is never cached: its inputs include something the cache cannot see (a
    /// stacker layer with `binds` is built with host directories), so it always misses and is
    /// never put ([`crate::LayerInputs::uncacheable`]).
    NotCacheable {
        /// Why, e.g. "layer has binds".
        why: String,
    },
    /// The builder (its identity and version, [`crate::Build::builder`]) differs from the one
    /// that built the cached entry.
    BuilderChanged {
        /// Recorded builder; `None` when none was given.
        old: Option<String>,
        /// Current builder; `None` when none is given.
        new: Option<String>,
    },
    /// The layer was put as build-only (kept as a rootfs directory, no outputs) and is now
    /// looked up as exported, or the other way round.
    BuildOnlyChanged {
        /// Recorded.
        old: bool,
        /// Now.
        new: bool,
    },
    /// Every input matches a stored version, but the outputs it points at are not there (or
    /// cannot be checked, because no OCI layout or rootfs directory is configured): a hit never
    /// points at outputs that do not exist. Rebuild the layer and put it.
    OutputsMissing {
        /// What is missing, escaped.
        what: String,
    },
    /// A registry has an entry for these inputs, but trusted keys are set and the entry is not
    /// signed by one of them, or is not what was signed: it was not used, nothing of it was
    /// downloaded and nothing was recorded. Comes after the local reasons.
    RemoteUntrusted {
        /// The registry and repository (`REGISTRY/REPO`).
        remote: String,
        /// Why, as a word: `unsigned`, `malformed`, `unknown_key`, `bad_signature`,
        /// `replayed` or `outputs_differ`.
        why: String,
        /// Why, as a sentence.
        detail: String,
    },
}

fn hex_short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

/// A name from the plan (a key, a field name, a layer or tag) as shown in text: escaped like
/// paths, so a newline or an escape sequence in it cannot forge lines or drive a terminal.
fn esc(s: &str) -> String {
    crate::path::escape_bytes(s.as_bytes())
}

impl fmt::Display for MissReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cache miss because ")?;
        match self {
            MissReason::NotCached => f.write_str("the layer was not cached"),
            MissReason::DamagedEntry { detail } => {
                write!(f, "the cached entry is damaged ({detail})")
            }
            MissReason::DefinitionChanged { fields } => {
                f.write_str("layer definition was changed:")?;
                for c in fields {
                    write!(f, " {} ({} -> {})", esc(&c.field), c.old, c.new)?;
                }
                Ok(())
            }
            MissReason::BaseChanged { change } => {
                f.write_str("base layer was changed: ")?;
                match change {
                    BaseChange::Replaced { old, new } => write!(f, "{} -> {}", esc(old), esc(new)),
                    BaseChange::BaseLayerMissed { layer } => {
                        write!(f, "base layer {} is not cached as it is now", esc(layer))
                    }
                    BaseChange::HashChanged { old, new } => {
                        write!(f, "base hash {} -> {}", hex_short(old), hex_short(new))
                    }
                    BaseChange::TarballMissing { path } => write!(f, "tarball {path} is missing"),
                    BaseChange::TagNotFound { tag } => {
                        write!(f, "tag {} is not in the OCI layout", esc(tag))
                    }
                }
            }
            MissReason::SourceDateEpochChanged { old, new } => write!(
                f,
                "SOURCE_DATE_EPOCH changed: {} -> {}",
                old.map_or("unset".into(), |v| v.to_string()),
                new.map_or("unset".into(), |v| v.to_string())
            ),
            MissReason::ImportNew { key } => write!(f, "of new import: {}", esc(key)),
            MissReason::ImportRemoved { key } => write!(f, "import was removed: {}", esc(key)),
            MissReason::OverlayDirRemoved { key } => {
                write!(f, "overlay_dir was removed: {}", esc(key))
            }
            MissReason::ImportMissing { key, path } => {
                write!(f, "import was missing: {} (expected at {path})", esc(key))
            }
            MissReason::ImportTypeChanged { key, old, new } => {
                write!(f, "import type changed: {} ({old} -> {new})", esc(key))
            }
            MissReason::ImportContentChanged { key, diff } => {
                write!(f, "import content changed: {}\n{diff}", esc(key))
            }
            MissReason::OverlayDirNew { key } => write!(f, "of new overlay_dir: {}", esc(key)),
            MissReason::OverlayDirMissing { key, rootfs_path } => {
                write!(
                    f,
                    "overlay_dir was missing: {} (expected at {rootfs_path})",
                    esc(key)
                )
            }
            MissReason::OverlayDirContentChanged { key, diff } => {
                write!(f, "overlay_dir content changed: {}\n{diff}", esc(key))
            }
            MissReason::NotCacheable { why } => write!(f, "{why}: not cacheable"),
            MissReason::BuilderChanged { old, new } => write!(
                f,
                "builder was changed: {} -> {}",
                old.as_deref().unwrap_or("unset"),
                new.as_deref().unwrap_or("unset")
            ),
            MissReason::BuildOnlyChanged { old, new } => {
                write!(f, "build_only changed: {old} -> {new}")
            }
            MissReason::OutputsMissing { what } => {
                write!(f, "the cached outputs are gone: {what}")
            }
            MissReason::RemoteUntrusted { remote, detail, .. } => write!(
                f,
                "the entry in the shared cache {} is not trusted: {}",
                esc(remote),
                esc(detail)
            ),
        }
    }
}

/// The top-level fields whose values differ between two definitions.
pub fn definition_changes(old: &serde_json::Value, new: &serde_json::Value) -> Vec<FieldChange> {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter_map(|k| {
                    let o = a.get(k).cloned().unwrap_or(Value::Null);
                    let n = b.get(k).cloned().unwrap_or(Value::Null);
                    (o != n || a.contains_key(k) != b.contains_key(k)).then(|| FieldChange {
                        field: k.clone(),
                        old: o,
                        new: n,
                    })
                })
                .collect()
        }
        _ if old != new => vec![FieldChange {
            field: "(definition)".into(),
            old: old.clone(),
            new: new.clone(),
        }],
        _ => Vec::new(),
    }
}

/// One input a put found changed since its lookup saw it ([`crate::Error::InputsChanged`]): the
/// put stored nothing. Typed as miss reasons are; `Display` gives the sentence a person reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "what", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PutChange {
    /// The layer definition (its canonical JSON's digest).
    Definition,
    /// The builder identity.
    Builder {
        /// At lookup.
        old: Option<String>,
        /// At put.
        new: Option<String>,
    },
    /// SOURCE_DATE_EPOCH.
    SourceDateEpoch {
        /// At lookup.
        old: Option<i64>,
        /// At put.
        new: Option<i64>,
    },
    /// Whether the layer is build-only.
    BuildOnly {
        /// At lookup.
        old: bool,
        /// At put.
        new: bool,
    },
    /// A base (`kind:reference`) the lookup could not resolve.
    BaseUnresolved {
        /// The base, `kind:reference`.
        base: String,
    },
    /// A base whose hash differs (a rebuilt base, another tarball, a moved tag).
    BaseHash {
        /// The base, `kind:reference`.
        base: String,
        /// Its hash at lookup.
        old: Vec<u8>,
        /// Its hash now.
        new: Vec<u8>,
    },
    /// A source the lookup saw that the layer no longer has.
    SourceRemoved {
        /// Import or overlay dir.
        role: crate::version::SourceRole,
        /// Its key.
        key: String,
    },
    /// A path of a source added, removed or modified since the lookup walked it.
    Path {
        /// Import or overlay dir.
        role: crate::version::SourceRole,
        /// The source's key.
        key: String,
        /// The path on disk, escaped for printing.
        path: String,
    },
    /// A file of the source changed while the lookup read it, so the lookup could not vouch
    /// for it.
    ChangedWhileRead {
        /// Import or overlay dir.
        role: crate::version::SourceRole,
        /// The source's key.
        key: String,
    },
    /// A source's content as a lookup in another process summarised it (a record without a
    /// walk log: Merkle root and row count) differs.
    SourceContent {
        /// Import or overlay dir.
        role: crate::version::SourceRole,
        /// The source's key.
        key: String,
        /// Rows at lookup.
        old_rows: u64,
        /// Merkle root at lookup.
        old_root: [u8; 32],
        /// Rows now.
        new_rows: u64,
        /// Merkle root now.
        new_root: [u8; 32],
    },
    /// The input digest, when every part above compared equal (a belt to those braces).
    InputDigest {
        /// At lookup.
        old: [u8; 32],
        /// Now.
        new: [u8; 32],
    },
}

impl fmt::Display for PutChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::path::{display_hash, escape_bytes};
        let unset = |v: &Option<String>| escape_bytes(v.as_deref().unwrap_or("unset").as_bytes());
        match self {
            PutChange::Definition => write!(f, "the layer definition"),
            PutChange::Builder { old, new } => {
                write!(f, "the builder ({} -> {})", unset(old), unset(new))
            }
            PutChange::SourceDateEpoch { old, new } => {
                write!(f, "SOURCE_DATE_EPOCH ({old:?} -> {new:?})")
            }
            PutChange::BuildOnly { old, new } => write!(f, "build_only ({old} -> {new})"),
            PutChange::BaseUnresolved { base } => {
                write!(f, "base {base} (it could not be resolved at lookup)")
            }
            PutChange::BaseHash { base, old, new } => write!(
                f,
                "base {base} (hash {} at lookup, {} now)",
                display_hash(old),
                display_hash(new)
            ),
            PutChange::SourceRemoved { role, key } => write!(
                f,
                "{} {}: no longer in the layer",
                role.noun(),
                escape_bytes(key.as_bytes())
            ),
            PutChange::Path { role, key, path } => {
                write!(
                    f,
                    "{} {}: {path}",
                    role.noun(),
                    escape_bytes(key.as_bytes())
                )
            }
            PutChange::ChangedWhileRead { role, key } => write!(
                f,
                "{} {}: a file changed while the lookup read it",
                role.noun(),
                escape_bytes(key.as_bytes())
            ),
            PutChange::SourceContent {
                role,
                key,
                old_rows,
                old_root,
                new_rows,
                new_root,
            } => write!(
                f,
                "{} {}: its content ({old_rows} rows, root {} at lookup; {new_rows} rows, root {} \
                 now)",
                role.noun(),
                escape_bytes(key.as_bytes()),
                display_hash(old_root),
                display_hash(new_root)
            ),
            PutChange::InputDigest { old, new } => write!(
                f,
                "the input digest ({} at lookup, {} now)",
                display_hash(old),
                display_hash(new)
            ),
        }
    }
}

impl PutChange {
    /// The changes as one line, `, `-separated.
    pub fn join(changes: &[PutChange]) -> String {
        changes
            .iter()
            .map(PutChange::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why a put was refused before it compared anything ([`crate::Error::PutRefused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PutRefusal {
    /// The lookup saw nothing to record (the layer was not cacheable then).
    NothingObserved,
    /// No output manifests for a layer that is not build-only: a hit would point at outputs
    /// that were never produced.
    NoOutputs,
}

impl fmt::Display for PutRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PutRefusal::NothingObserved => {
                "its lookup saw nothing (the layer was not cacheable then); look it up again"
            }
            PutRefusal::NoOutputs => {
                "no output manifests for a layer that is not build-only (a hit would point at \
                 outputs that were never produced); pass its outputs, or mark the layer \
                 build_only"
            }
        })
    }
}
