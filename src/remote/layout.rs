//! The blobs of an image in a local OCI layout, as an entry carries them.

use std::path::Path;

use oci_spec::image::{Descriptor, ImageManifest};

use super::error::RemoteError;
use super::wire::{MAX_MANIFEST_BYTES, sha256_hex};
use super::{LocalBlob, Result};

/// The blobs that make up the image whose manifest is `manifest` in `oci_layout`: the
/// manifest itself, its config and its layers, in that order, each with its path under
/// `blobs/sha256/`. This is what [`super::RemoteEntry::blobs`] holds for one output manifest
/// of an entry. An index (multi-platform manifest list) is not followed.
pub fn image_blobs(oci_layout: &Path, manifest: &Descriptor) -> Result<Vec<LocalBlob>> {
    let path_of = |d: &Descriptor| -> Result<std::path::PathBuf> {
        let digest = d.digest().to_string();
        let hex = sha256_hex(&digest).ok_or_else(|| RemoteError::Io {
            what: "blob digest is not sha256 in layout",
            path: oci_layout.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, digest.clone()),
        })?;
        Ok(oci_layout.join("blobs").join("sha256").join(hex))
    };
    let manifest_path = path_of(manifest)?;
    let bytes = std::fs::read(&manifest_path)
        .map_err(|e| RemoteError::io("cannot read manifest blob", &manifest_path, e))?;
    let invalid = |detail: String| {
        RemoteError::io(
            "cannot parse manifest blob",
            &manifest_path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, detail),
        )
    };
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(invalid(format!("{} bytes", bytes.len())));
    }
    let parsed: ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    let mut out = vec![LocalBlob {
        descriptor: manifest.clone(),
        path: manifest_path.clone(),
    }];
    for d in std::iter::once(parsed.config()).chain(parsed.layers()) {
        out.push(LocalBlob {
            descriptor: d.clone(),
            path: path_of(d)?,
        });
    }
    Ok(out)
}
