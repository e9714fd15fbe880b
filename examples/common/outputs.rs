//! Shared by the test-helper examples (`crash_child`, `put_loop`): the one output blob every
//! put of theirs records.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

/// The OCI layout beside the database (`<dir>/oci`), holding the one output blob every put
/// records (a layer that is not build-only records outputs; the tests open the cache with this
/// layout and the same blob, `tests/common`'s `output_layout`), and the manifests naming it.
pub fn outputs(
    db: &Path,
) -> Result<BTreeMap<String, oci_spec::image::Descriptor>, Box<dyn std::error::Error>> {
    const OUTPUT: &[u8] = b"test output";
    let hex = blake3::hash(OUTPUT).to_hex().to_string();
    let blobs = db
        .parent()
        .unwrap_or(Path::new("."))
        .join("oci/blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(blobs.join(&hex), OUTPUT)?;
    let d = serde_json::from_value(json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": format!("sha256:{hex}"),
        "size": OUTPUT.len(),
    }))?;
    Ok(BTreeMap::from([("tar".to_string(), d)]))
}
