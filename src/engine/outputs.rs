//! The one "outputs exist" rule: what a version's outputs must be, at the moment of a hit, for
//! the hit to hand them to the builder. `docs/guarantees.md` states it for users; this is where
//! it is implemented, once.
//!
//! Owns: the rule ([`missing`]), the blobs an output reaches ([`reached`]: what a hit checks and
//! what `push` sends), and what counts as a directory ([`directory`]).
//!
//! Must never: read a layer or config blob (they are checked by `stat`, whatever their size),
//! read a manifest or index without a size limit or without checking it against its digest,
//! follow a digest outside `blobs/`, or answer "there" for anything it could not look at (an
//! unconfigured location, an unreadable directory: those are missing).
//!
//! ## The rule
//!
//! A version's outputs are there when:
//!
//! 1. the location its outputs live in is configured: `oci_layout`, or for a build-only layer
//!    `rootfs_dir` (otherwise nothing can be checked, and nothing hits); a layer that is not
//!    build-only records at least one output;
//! 2. for a build-only layer, `<rootfs_dir>/<layer>` is a directory;
//! 3. every blob each output manifest reaches is in the layout as a regular file of the size
//!    its descriptor gives ([`reached`]): an image manifest (OCI or Docker v2) reaches its
//!    config and its layers, an index (OCI or Docker manifest list) its manifests and what they
//!    reach; any other media type (a layer given directly as the output) is just that blob.
//!    Manifests and indexes are read (at most [`MANIFEST_LIMIT`] bytes, regular files only)
//!    and must hash to their sha256 digest, so the list of children checked is the one the
//!    digest names; every other blob is only `stat`ed;
//! 4. for a version built on this machine ([`Origin::Built`]), every overlay dir's
//!    `rootfs_path` — the builder's copy, made while it built the layer — is a directory.
//!    A pulled version ([`Origin::Pulled`]) has none (this machine never built it), and its
//!    hit does not ask for one.
//!
//! "A directory" ([`directory`]) follows symlinks: a symlink to a directory is one (a builder
//! may keep its rootfs on another volume); a symlink to anything else or to nothing, a regular
//! file, a FIFO, a socket or a device is not, and is named with what it is. Nothing at all at
//! an overlay dir's `rootfs_path` is the seed's own reason, [`MissReason::OverlayDirMissing`];
//! every other failure is [`MissReason::OutputsMissing`] naming what is missing and where.
//!
//! Pruning (only when asked: `Cache::prune`, `Cache::gc`; no open prunes, and no other
//! mechanism decides whether outputs exist) applies the same rule to what a version itself names (2–3), and removes a
//! version only when a blob is gone (one there but wrong is kept: the lookup names it and
//! `push` reports it); the builder's copies are named by the build, not by the version, so
//! only a hit checks them ([`gone`]).
//!
//! Cost: one `stat` per blob plus one small read per manifest or index — for a layer of 10^5
//! files whose image has 100 layers, measured by
//! `cargo test --release --test outputs_rule -- --ignored --nocapture outputs_rule_cost`:
//! 0.44 ms against 466 ms for the no-change lookup that makes the check (see docs/design.md).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;
use serde::Deserialize;
use sha2::Digest as _;

use crate::config::CacheConfig;
use crate::error::{Error, Result};
use crate::fsread;
use crate::inputs::OverlayDir;
use crate::path::{blob_path, escape_bytes, hex, show_path};
use crate::reason::MissReason;
use crate::schema::{Origin, VersionRecord};

/// The largest manifest or index read: 4 MiB (a manifest of 1,000 layers is about 200 KiB).
pub const MANIFEST_LIMIT: u64 = 4 << 20;

/// How many manifests and indexes one chain may read: an index of an index of an index of a
/// manifest is 4 (three levels of index above a manifest).
const MAX_DEPTH: usize = 4;

/// Media types of an image manifest: its config and layers are checked.
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// Media types of an index: its manifests are checked.
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Why an output's blobs are not usable: one is gone, or one is there but wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// True when a blob is not there at all (pruning removes such a version); false when one is
    /// there but wrong (its size, its type, a manifest that does not parse or match its
    /// digest, a digest that cannot name a blob): damage a person should see, kept.
    pub gone: bool,
    /// What, and where (escaped).
    pub why: String,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// What is missing of a version's outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Missing {
    /// Nothing at all at an overlay dir's `rootfs_path` (the seed's "overlay_dir was missing").
    CopyGone {
        /// The overlay dir's key.
        key: String,
        /// Its `rootfs_path`.
        path: PathBuf,
    },
    /// Anything else, said in words (escaped): what is missing, and where.
    Other(String),
    /// A blob an output reaches is gone (`gone`) or wrong, with the output's layer type.
    Blob {
        /// The layer type of the output.
        layer_type: String,
        /// What is wrong.
        problem: Unusable,
    },
}

impl Missing {
    /// The miss reason a lookup gives for it.
    pub(crate) fn reason(self) -> MissReason {
        match self {
            Missing::CopyGone { key, path } => MissReason::OverlayDirMissing {
                key,
                rootfs_path: show_path(&path),
            },
            Missing::Other(what) => MissReason::OutputsMissing { what },
            blob @ Missing::Blob { .. } => MissReason::OutputsMissing { what: blob.text() },
        }
    }

    /// What it says, in words (why a version is pruned).
    pub(crate) fn text(&self) -> String {
        match self {
            Missing::CopyGone { key, path } => format!(
                "overlay_dir {}: the builder's copy {} is gone",
                escape_bytes(key.as_bytes()),
                show_path(path)
            ),
            Missing::Other(what) => what.clone(),
            Missing::Blob {
                layer_type,
                problem,
            } => format!(
                "missing build for layer type {}: {problem}",
                escape_bytes(layer_type.as_bytes())
            ),
        }
    }
}

/// What is at a path that should be a directory, symlinks followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// A directory, or a symlink (chain) to one.
    Directory,
    /// Nothing at all (not even a symlink).
    Nothing,
    /// Something that is not a directory: what it is ("a regular file", "a symbolic link to
    /// nothing", ...), or why it could not be looked at.
    Not(&'static str),
}

/// What is at `path` (see [`Dir`]); never reads anything.
pub(crate) fn directory(path: &Path) -> Dir {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Dir::Nothing,
        Err(_) => return Dir::Not("something that cannot be looked at"),
    };
    if meta.is_dir() {
        return Dir::Directory;
    }
    if !meta.file_type().is_symlink() {
        return Dir::Not(fsread::describe_type(meta.file_type()));
    }
    match std::fs::metadata(path) {
        Ok(t) if t.is_dir() => Dir::Directory,
        Ok(t) => Dir::Not(match fsread::describe_type(t.file_type()) {
            "a regular file" => "a symbolic link to a regular file",
            "a FIFO" => "a symbolic link to a FIFO",
            "a socket" => "a symbolic link to a socket",
            "a character device" | "a block device" => "a symbolic link to a device",
            _ => "a symbolic link to something that is not a directory",
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Dir::Not("a symbolic link to nothing")
        }
        Err(_) => Dir::Not("a symbolic link that cannot be followed"),
    }
}

/// One blob an output reaches, there with its size.
#[derive(Debug, Clone)]
pub struct OutputBlob {
    /// Its descriptor (from the output manifests, or from the manifest or index naming it).
    pub descriptor: Descriptor,
    /// Its file in the layout (`blobs/<algorithm>/<hex>`).
    pub path: PathBuf,
}

/// The children named by a manifest or an index (unknown fields are ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Parent {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// Every blob that the output `output` reaches in `layout` (see the module doc, rule 3): the
/// output's own blob first, then what it names, depth first, each once. `Err` says (escaped)
/// the first that is gone, or there but of the wrong size, not a regular file, or — for a
/// manifest or index — unreadable, not what its media type says, or not matching its digest.
pub fn reached(
    layout: &Path,
    output: &Descriptor,
) -> std::result::Result<Vec<OutputBlob>, Unusable> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    visit(layout, output, 0, &mut seen, &mut out)?;
    Ok(out)
}

fn visit(
    layout: &Path,
    d: &Descriptor,
    depth: usize,
    seen: &mut BTreeSet<String>,
    out: &mut Vec<OutputBlob>,
) -> std::result::Result<(), Unusable> {
    let digest = d.digest().to_string();
    if !seen.insert(digest.clone()) {
        return Ok(());
    }
    let shown = escape_bytes(digest.as_bytes());
    let wrong = |why: String| Unusable { gone: false, why };
    let path = blob_path(layout, &digest).ok_or_else(|| {
        wrong(format!(
            "blob {shown} has no valid digest, so it cannot be in the layout"
        ))
    })?;
    present(&path, d.size()).map_err(|(gone, why)| Unusable {
        gone,
        why: format!("blob {shown} {why}"),
    })?;
    out.push(OutputBlob {
        descriptor: d.clone(),
        path: path.clone(),
    });
    let media = d.media_type().to_string();
    let is_manifest = MANIFEST_TYPES.contains(&media.as_str());
    let is_index = INDEX_TYPES.contains(&media.as_str());
    if !is_manifest && !is_index {
        return Ok(());
    }
    if depth >= MAX_DEPTH {
        return Err(wrong(format!(
            "index {shown} nests more than {} levels of index above a manifest",
            MAX_DEPTH - 1
        )));
    }
    let parent = read_parent(&path, &digest, &media, is_manifest).map_err(|why| {
        wrong(format!(
            "{} {shown} ({}) {why}",
            kind(is_manifest),
            show_path(&path)
        ))
    })?;
    let children: Vec<&Descriptor> = if is_manifest {
        parent.config.iter().chain(&parent.layers).collect()
    } else {
        parent.manifests.iter().collect()
    };
    for c in children {
        visit(layout, c, depth + 1, seen, out)?;
    }
    Ok(())
}

fn kind(is_manifest: bool) -> &'static str {
    if is_manifest {
        "image manifest"
    } else {
        "index"
    }
}

/// `path` is a regular file (symlinks followed) of `size` bytes; else whether it is gone, and
/// why not.
fn present(path: &Path, size: u64) -> std::result::Result<(), (bool, String)> {
    let at = show_path(path);
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err((true, format!("is gone ({at})")))
        }
        Err(e) => Err((false, format!("cannot be looked at ({at}: {e})"))),
        Ok(m) if !m.is_file() => Err((
            false,
            format!(
                "is {}, not a regular file ({at})",
                fsread::describe_type(m.file_type())
            ),
        )),
        Ok(m) if m.len() != size => Err((
            false,
            format!("has {} bytes, its descriptor says {size} ({at})", m.len()),
        )),
        Ok(_) => Ok(()),
    }
}

/// Reads a manifest or index blob (bounded, regular files only), checks it against its sha256
/// digest and parses what it names.
fn read_parent(
    path: &Path,
    digest: &str,
    media: &str,
    is_manifest: bool,
) -> std::result::Result<Parent, String> {
    let Some(expected) = digest.strip_prefix("sha256:") else {
        return Err("is not addressed by sha256, so its content cannot be checked".into());
    };
    let bytes = fsread::read_capped("OCI manifest", path, MANIFEST_LIMIT).map_err(|e| match e {
        Error::TooLarge { limit, .. } => format!("is larger than {limit} bytes"),
        other => format!("cannot be read: {other}"),
    })?;
    let got = hex(&sha2::Sha256::digest(&bytes));
    if got != expected {
        return Err(format!(
            "does not match its digest (its content hashes to sha256:{got})"
        ));
    }
    let parent: Parent = serde_json::from_slice(&bytes)
        .map_err(|e| format!("is not an {} ({e})", kind(is_manifest)))?;
    if parent.schema_version != 2 || parent.media_type.as_deref().is_some_and(|m| m != media) {
        return Err(format!(
            "is not the {} its descriptor says (schemaVersion {}, mediaType {})",
            kind(is_manifest),
            parent.schema_version,
            escape_bytes(parent.media_type.as_deref().unwrap_or("unset").as_bytes())
        ));
    }
    if is_manifest && parent.config.is_none() {
        return Err("is not an image manifest (it names no config)".into());
    }
    Ok(parent)
}

/// Where `rec`'s outputs live (rule 1): its setting's name and the configured directory.
fn location_of<'c>(
    config: &'c CacheConfig,
    rec: &VersionRecord,
) -> (&'static str, Option<&'c Path>) {
    if rec.build_only {
        ("rootfs_dir", config.rootfs_dir.as_deref())
    } else {
        ("oci_layout", config.oci_layout.as_deref())
    }
}

/// The rule (see the module doc): `None` when every output of `rec` is there now, else the
/// first thing missing. `overlay_dirs` are the layer's overlay dirs as the build gives them
/// (their builder's copies are checked for a version built here); pruning passes none. A
/// configured location that does not exist at all is an error naming it (a typo in a plan or
/// an unmounted volume must not read as "every output is gone"), checked only once something
/// is found missing.
pub(crate) fn missing(
    config: &CacheConfig,
    rec: &VersionRecord,
    overlay_dirs: &[OverlayDir],
) -> Result<Option<Missing>> {
    let (what, location) = location_of(config, rec);
    let Some(location) = location else {
        return Ok(Some(Missing::Other(format!(
            "no {what} is configured, so the outputs cannot be checked (configure {what} to get \
             hits)"
        ))));
    };
    if !rec.build_only && rec.manifests.is_empty() {
        return Ok(Some(Missing::Other(
            "the version records no outputs, and the layer is not build-only".into(),
        )));
    }
    let found = of_version(config, rec, location).or_else(|| {
        (rec.origin == Origin::Built)
            .then(|| {
                overlay_dirs
                    .iter()
                    .find_map(|o| builder_copy(&o.key, &o.rootfs_path))
            })
            .flatten()
    });
    if found.is_some() {
        location_exists(what, location)?;
    }
    Ok(found)
}

/// What pruning removes a version for: rules 2 and 3 (what the version itself names:
/// its blobs, a build-only layer's rootfs directory) finding a blob **gone**, a build-only
/// layer's rootfs not a directory, or a stored descriptor that does not decode, when its
/// location is configured. A blob that is there but wrong (a manifest that does not parse or
/// match its digest, a wrong size) is damage a person should see: the version is kept, never
/// hits, and `push` reports it. Nothing is pruned for a location that is not configured, for a
/// version without outputs, or for a pulled build-only version (its rootfs was never here); a
/// configured location that does not exist is an error, as in [`missing`].
pub(crate) fn gone(config: &CacheConfig, rec: &VersionRecord) -> Result<Option<Missing>> {
    let (what, location) = location_of(config, rec);
    let Some(location) = location else {
        return Ok(None);
    };
    // A pulled build-only version names no blob, and its rootfs was never here: nothing is
    // gone. It stays (never a hit without its directory) as the base of the layers built on it.
    if rec.build_only && rec.origin == Origin::Pulled {
        return Ok(None);
    }
    // A blob there but wrong is kept; a build-only layer's rootfs that is not a directory, or
    // a stored descriptor that does not decode, is pruned (as it always was).
    let found = of_version(config, rec, location).filter(|m| match m {
        Missing::Blob { problem, .. } => problem.gone,
        Missing::CopyGone { .. } | Missing::Other(_) => true,
    });
    if found.is_some() {
        location_exists(what, location)?;
    }
    Ok(found)
}

/// Rules 2 and 3: what the version itself names.
fn of_version(config: &CacheConfig, rec: &VersionRecord, location: &Path) -> Option<Missing> {
    if rec.build_only {
        let dir = location.join(&rec.name);
        match directory(&dir) {
            Dir::Directory => {}
            Dir::Nothing => {
                return Some(Missing::Other(format!(
                    "rootfs directory {} is gone",
                    show_path(&dir)
                )));
            }
            Dir::Not(found) => {
                return Some(Missing::Other(format!(
                    "rootfs directory {} is {found}, not a directory",
                    show_path(&dir)
                )));
            }
        }
    }
    let layout = config.oci_layout.as_deref()?;
    for m in &rec.manifests {
        let layer_type = escape_bytes(m.layer_type.as_bytes());
        let d = match serde_json::from_slice::<Descriptor>(&m.descriptor_json) {
            Ok(d) => d,
            Err(e) => {
                return Some(Missing::Other(format!(
                    "the {layer_type} descriptor is not a descriptor ({e})"
                )));
            }
        };
        if let Err(problem) = reached(layout, &d) {
            return Some(Missing::Blob {
                layer_type: m.layer_type.clone(),
                problem,
            });
        }
    }
    None
}

/// Rule 4 for one overlay dir: its builder's copy at `rootfs_path`.
pub(crate) fn builder_copy(key: &str, rootfs_path: &Path) -> Option<Missing> {
    match directory(rootfs_path) {
        Dir::Directory => None,
        Dir::Nothing => Some(Missing::CopyGone {
            key: key.to_string(),
            path: rootfs_path.to_path_buf(),
        }),
        Dir::Not(found) => Some(Missing::Other(format!(
            "overlay_dir {}: the builder's copy {} is {found}, not a directory",
            escape_bytes(key.as_bytes()),
            show_path(rootfs_path)
        ))),
    }
}

/// The configured `oci_layout` or `rootfs_dir` must be a directory.
fn location_exists(what: &'static str, dir: &Path) -> Result<()> {
    let found = match directory(dir) {
        Dir::Directory => return Ok(()),
        Dir::Nothing => "missing",
        Dir::Not(found) => found,
    };
    Err(Error::WrongFileType {
        what: if what == "oci_layout" {
            "OCI layout (oci_layout)"
        } else {
            "rootfs directory (rootfs_dir)"
        },
        path: dir.to_path_buf(),
        found,
        expected: "an existing directory (nothing was pruned)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `bytes` as a blob of `layout`; returns its descriptor.
    fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Descriptor {
        let hex = hex(&sha2::Sha256::digest(bytes));
        let dir = layout.join("blobs/sha256");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&hex), bytes).unwrap();
        serde_json::from_value(serde_json::json!({
            "mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()
        }))
        .unwrap()
    }

    #[test]
    fn a_child_digest_never_names_a_file_outside_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let l = tmp.path();
        for (digest, why) in [
            // Refused by the descriptor's own digest grammar.
            ("sha256:../../../etc/passwd", "is not an image manifest"),
            // Valid OCI grammar, but not a name `blob_path` will build.
            ("foo:ABC", "no valid digest"),
        ] {
            let manifest = serde_json::json!({"schemaVersion": 2,
                "config": {"mediaType": "x", "digest": digest, "size": 1}, "layers": []});
            let d = blob(l, MANIFEST_TYPES[0], manifest.to_string().as_bytes());
            let e = reached(l, &d).unwrap_err();
            assert!(!e.gone && e.why.contains(why), "{digest}: {e}");
        }
    }

    #[test]
    fn indexes_nest_at_most_three_levels_above_a_manifest_and_repeats_are_checked_once() {
        let tmp = tempfile::tempdir().unwrap();
        let l = tmp.path();
        let config = blob(l, "application/vnd.oci.image.config.v1+json", b"{}");
        let manifest = serde_json::json!({"schemaVersion": 2, "config": config, "layers": []});
        let mut d = blob(l, MANIFEST_TYPES[0], manifest.to_string().as_bytes());
        let mut depth_ok = None;
        for depth in 1..=5 {
            let index = serde_json::json!({"schemaVersion": 2, "manifests": [d]});
            d = blob(l, INDEX_TYPES[0], index.to_string().as_bytes());
            let r = reached(l, &d);
            if depth <= 3 {
                assert_eq!(r.unwrap().len(), depth + 2, "{depth}");
                depth_ok = Some(depth);
            } else {
                assert!(
                    r.unwrap_err().why.contains("nests more than 3 levels"),
                    "{depth}"
                );
            }
        }
        assert_eq!(depth_ok, Some(3));
        // The same blob named twice is checked once.
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [config, config]});
        let d = blob(l, INDEX_TYPES[0], index.to_string().as_bytes());
        assert_eq!(reached(l, &d).unwrap().len(), 2);
    }
}
