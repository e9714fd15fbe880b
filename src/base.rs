//! Resolution of the base hash of tar, oci and docker bases (built bases are resolved by the
//! cache session, which memoizes them within a build).

use std::path::Path;

use crate::error::{Error, Result};
use crate::fsread;
use crate::inputs::Base;
use crate::path::show_path;
use crate::reason::BaseChange;

/// Annotation naming a manifest's tag in an OCI layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The base hash of a base that is not built, or why there is none right now.
pub(crate) enum External {
    /// The base hash.
    Hash(Vec<u8>),
    /// The base is not there; a miss at lookup, an error at put.
    Missing(BaseChange),
}

/// Resolves tar (blake3 of the tarball), oci and docker (manifest digest of the tag), scratch
/// (empty). `layer` names the dependent layer in errors.
pub(crate) fn resolve_external(layer: &str, base: &Base) -> Result<External> {
    match base {
        Base::Scratch => Ok(External::Hash(Vec::new())),
        Base::Built { .. } => Err(Error::Base {
            layer: layer.to_string(),
            detail: "a built base is resolved by the session".into(),
        }),
        // A base that is not a regular file (a device would hash as empty input, a FIFO would
        // hang) is an error naming it, never hashed.
        Base::Tar { path } => match fsread::hash_regular("base tarball", path) {
            Ok(d) => Ok(External::Hash(d.to_vec())),
            Err(e) if fsread::is_not_found(&e) => {
                Ok(External::Missing(BaseChange::TarballMissing {
                    path: show_path(path),
                }))
            }
            Err(e) => Err(e),
        },
        Base::Oci { layout, tag } | Base::Docker { layout, tag } => {
            match resolve_tag(layout, tag)? {
                Some(digest) => Ok(External::Hash(digest.into_bytes())),
                None => Ok(External::Missing(BaseChange::TagNotFound {
                    tag: tag.clone(),
                })),
            }
        }
    }
}

/// The manifest digest (`sha256:<hex>`) that `tag` resolves to in the OCI layout's
/// `index.json`; `None` when no manifest carries the tag (or the layout or its index does not
/// exist); an error when several do (as in stacker) or when the index cannot be read.
///
/// The layout must be a directory and its `index.json` a regular file of at most
/// [`fsread::INDEX_LIMIT`] (16 MiB), else [`Error::WrongFileType`] or [`Error::TooLarge`]:
/// a FIFO is never read, so this never waits.
pub fn resolve_tag(layout: &Path, tag: &str) -> Result<Option<String>> {
    match fsread::require_dir("OCI layout", layout) {
        Ok(()) => {}
        Err(e) if fsread::is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    }
    let index_path = layout.join("index.json");
    let bytes = match fsread::read_capped("OCI index", &index_path, fsread::INDEX_LIMIT) {
        Ok(b) => b,
        Err(e) if fsread::is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let index: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::Parse {
        what: "OCI index",
        path: index_path.clone(),
        detail: e.to_string(),
    })?;
    let manifests = index
        .get("manifests")
        .and_then(|m| m.as_array())
        .ok_or_else(|| Error::Parse {
            what: "OCI index",
            path: index_path.clone(),
            detail: "no \"manifests\" array".into(),
        })?;
    let mut found: Vec<String> = Vec::new();
    for m in manifests {
        let name = m
            .get("annotations")
            .and_then(|a| a.get(REF_NAME))
            .and_then(|n| n.as_str());
        if name == Some(tag) {
            let digest = m
                .get("digest")
                .and_then(|d| d.as_str())
                .ok_or_else(|| Error::Parse {
                    what: "OCI index",
                    path: index_path.clone(),
                    detail: format!("the manifest tagged {tag:?} has no digest"),
                })?;
            found.push(digest.to_string());
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        n => Err(Error::Parse {
            what: "OCI index",
            path: index_path,
            detail: format!(
                "{n} manifests are tagged {tag:?} (duplicate manifests); remove all but one"
            ),
        }),
    }
}
