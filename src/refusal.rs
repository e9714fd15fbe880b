//! Why a put refused to store: typed refusals ([`PutChange`], [`PutRefusal`]), serializable
//! for tools, with one human `Display` each — the put's side of what `reason.rs` is for misses.
//!
//! Owns: those types and their wording. Must never: depend on the tree diff or on the error
//! type (the error type carries these, so they sit below it: no import cycle).

use std::fmt;

use serde::Serialize;

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
