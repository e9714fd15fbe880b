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
