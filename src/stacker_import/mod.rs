//! Adopting a stacker cache: import the layers stacker's `build.cache` vouches for, so the first
//! layercache build hits where stacker would have.
//!
//! Owns: [`import_stacker_cache`], which for every layer of a [`Build`] that the stacker file
//! ([`StackerCache`]) holds checks today's inputs against what stacker recorded and, only where
//! everything matches, records a version through the ordinary lookup and put
//! ([`Session::lookup`], then [`Session::put`] with stacker's output manifests), so the stored
//! version is exactly what a fresh put of those inputs stores; and the [`ImportReport`].
//!
//! What is checked, per layer, in this order (the first failure is the layer's
//! [`ImportStatus::Skipped`] reason):
//!
//! 1. the layer is cacheable and stacker has a readable entry for it;
//! 2. the definition: the plan's definition read as a stackerfile layer equals the layer
//!    stacker recorded ([`format::normal_plan`], [`format::normal_recorded`]); a layer with
//!    binds is never imported (stacker always rebuilds it, layercache never caches it);
//! 3. SOURCE_DATE_EPOCH: equal to the one stacker recorded (format 15 on); formats 12 to 14
//!    predate stacker's SOURCE_DATE_EPOCH, so they vouch only for a layer without one;
//! 4. the base: `scratch` — stacker recorded none; `tar` — stacker's hash (sha256 of the
//!    tarball with its mode appended) of the plan's tarball today; `oci`/`docker` — the
//!    manifest digest the tag resolves to today; `built` — the base layer was imported (or
//!    already cached with stacker's outputs) *and* the layer's recorded base hash is stacker's
//!    hash of the base's entry ([`gohash`]), so it was built on exactly that build of its base;
//! 5. every import and overlay dir of the plan has a hash in stacker's entry and vice versa;
//!    an import with a `dest` (stacker does not hash those) is never vouched for; an overlay
//!    dir's rootfs copy exists;
//! 6. the outputs exist: every manifest's blob in the cache's OCI layout, or
//!    `<rootfs_dir>/<layer>` for a build-only layer;
//! 7. the layercache lookup (which walks and observes every source); a hit on a version with
//!    stacker's outputs is [`ImportStatus::AlreadyCached`];
//! 8. every source today against stacker's record: a file's sha256 with its mode, a
//!    directory entry by entry against its mtree spec ([`mtree::check_dir`]);
//! 9. the put: it refuses, naming the paths, if anything changed since step 7.
//!
//! Layers built on a layer that was not imported are skipped. The stacker file is only read;
//! it is parsed and checked whole before the database is touched.
//!
//! Must never: create a hit that a fresh put would not (a version is stored only by a put, and
//! only after every check passed), nor a hit on outputs stacker built from other inputs.

pub mod format;
pub mod gohash;
pub mod mtree;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use sha2::Digest as _;

use crate::engine::{Cache, Outcome, SessionCounters};
use crate::error::{Error, Result};
use crate::inputs::{Base, Build, LayerInputs, canonical_json_of};
use crate::path::escape_bytes;
pub use format::{StackerCache, StackerEntry};

/// How to read the plan against stacker's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// The stackerfile's directory: stacker made relative import paths and overlay dir
    /// sources absolute against it before recording them.
    pub stackerfile_dir: PathBuf,
    /// The OS stacker built for (Go name; the host's by default), which stacker put into a
    /// layer that sets none.
    pub os: String,
    /// The architecture stacker built for (Go name; the host's by default).
    pub arch: String,
}

impl ImportOptions {
    /// Options for a stacker cache file at `<project>/<stacker_dir>/build.cache`: the
    /// stackerfile's directory is taken to be `<project>` (stacker's default layout, with
    /// `.stacker` beside the stackerfile), the platform the host's.
    pub fn for_cache_file(stacker_cache: &Path) -> ImportOptions {
        let abs = std::path::absolute(stacker_cache).unwrap_or_else(|_| stacker_cache.into());
        let project = abs
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let (os, arch) = crate::stacker::host_platform();
        ImportOptions {
            stackerfile_dir: project,
            os,
            arch,
        }
    }
}

/// What became of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ImportStatus {
    /// Recorded with stacker's outputs: the next lookup hits.
    Imported {
        /// The layer types of the outputs recorded.
        manifests: Vec<String>,
    },
    /// layercache already hits on a version with stacker's outputs: nothing to record.
    AlreadyCached,
    /// Not imported, and why.
    Skipped {
        /// Why (a sentence).
        why: String,
    },
}

/// One layer's line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerImport {
    /// The layer.
    pub layer: String,
    /// What became of it.
    #[serde(flatten)]
    pub status: ImportStatus,
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The stacker cache file read.
    pub stacker_cache: PathBuf,
    /// Its format version.
    pub format: u32,
    /// One line per layer of the build, bases before the layers built on them.
    pub layers: Vec<LayerImport>,
    /// Layers stacker's file holds that the build does not define (left alone).
    pub not_in_build: Vec<String>,
    /// Files read (sha256) to check them against stacker's records, and their bytes.
    pub verified: VerifyCounters,
    /// The lookups' and puts' work.
    pub counters: SessionCounters,
}

impl ImportReport {
    /// How many layers were imported.
    pub fn imported(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| matches!(l.status, ImportStatus::Imported { .. }))
            .count()
    }
}

/// Work done checking sources against stacker's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VerifyCounters {
    /// Imports and overlay dirs checked.
    pub sources: u64,
    /// Files read (sha256) to compare them with stacker's hashes and specs, and their bytes.
    #[serde(flatten)]
    pub hashed: mtree::Hashed,
}

/// Whether a layer's base vouches for the layers built on it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vouched {
    Yes,
    No,
}

/// Imports the layers of `build` that the stacker cache `stacker` vouches for into `cache`
/// (see the module doc). Layers whose checks fail are reported as skipped; an error (an
/// unreadable input, a database error) stops the import, keeping the layers imported before it
/// (each one put, one transaction, exactly what a fresh put stores).
pub fn import_stacker_cache(
    cache: &Cache,
    build: &Build,
    stacker: &StackerCache,
    options: &ImportOptions,
) -> Result<ImportReport> {
    build.validate()?;
    let mut session = cache.session(build)?;
    let order = build.build_order(&[], true)?;
    let mut status: BTreeMap<&str, Vouched> = BTreeMap::new();
    let mut layers = Vec::new();
    let mut verified = VerifyCounters::default();
    for name in order.iter().map(String::as_str) {
        let Some(inputs) = build.layers.get(name) else {
            continue;
        };
        let outcome = import_layer(
            &mut session,
            cache,
            name,
            inputs,
            stacker,
            options,
            &status,
            &mut verified,
        )?;
        let vouched = match &outcome {
            ImportStatus::Imported { .. } | ImportStatus::AlreadyCached => Vouched::Yes,
            ImportStatus::Skipped { .. } => Vouched::No,
        };
        status.insert(name, vouched);
        layers.push(LayerImport {
            layer: name.to_string(),
            status: outcome,
        });
    }
    let not_in_build = stacker
        .entries
        .keys()
        .filter(|k| !build.layers.contains_key(*k))
        .cloned()
        .collect();
    Ok(ImportReport {
        stacker_cache: stacker.path.clone(),
        format: stacker.version,
        layers,
        not_in_build,
        verified,
        counters: session.counters(),
    })
}

fn show_path(p: &Path) -> String {
    escape_bytes(p.as_os_str().as_encoded_bytes())
}

fn skip(why: impl Into<String>) -> ImportStatus {
    ImportStatus::Skipped { why: why.into() }
}

/// The result of one check: `Err(status)` ends the layer's import with that status.
type Check<T = ()> = std::result::Result<T, ImportStatus>;

#[allow(clippy::too_many_arguments)]
fn import_layer(
    session: &mut crate::Session<'_>,
    cache: &Cache,
    name: &str,
    inputs: &LayerInputs,
    stacker: &StackerCache,
    options: &ImportOptions,
    status: &BTreeMap<&str, Vouched>,
    verified: &mut VerifyCounters,
) -> Result<ImportStatus> {
    let (sources, manifests) = match precheck(cache, name, inputs, stacker, options, status)? {
        Ok(v) => v,
        Err(s) => return Ok(s),
    };
    let lookup = session.lookup(name)?;
    if let Outcome::Hit(hit) = &lookup.outcome {
        return Ok(if same_manifests(&hit.manifests, &manifests) {
            ImportStatus::AlreadyCached
        } else {
            skip(
                "layercache already hits on a version with other outputs than stacker's \
                 (layers built on it are not imported)",
            )
        });
    }
    for source in &sources {
        verified.sources += 1;
        if let Err(s) = verify_source(source, &mut verified.hashed)? {
            return Ok(s);
        }
    }
    match session.put(&lookup, &manifests) {
        Ok(_) => Ok(ImportStatus::Imported {
            manifests: manifests.keys().cloned().collect(),
        }),
        Err(Error::InputsChanged { changes, .. }) => Ok(skip(format!(
            "its inputs changed while it was imported: {}",
            crate::refusal::PutChange::join(&changes)
        ))),
        Err(Error::Base { detail, .. }) => Ok(skip(format!("its base does not hit: {detail}"))),
        Err(e) => Err(e),
    }
}

type Manifests = BTreeMap<String, oci_spec::image::Descriptor>;

/// Steps 1 to 6 of the module doc: everything that needs no walk of the sources.
fn precheck<'a>(
    cache: &Cache,
    name: &str,
    inputs: &'a LayerInputs,
    stacker: &'a StackerCache,
    options: &ImportOptions,
    status: &BTreeMap<&str, Vouched>,
) -> Result<Check<(Vec<SourceCheck<'a>>, Manifests)>> {
    if let Some(why) = &inputs.uncacheable {
        return Ok(Err(skip(format!("layercache never caches it ({why})"))));
    }
    let entry = match stacker.entries.get(name) {
        None => return Ok(Err(skip("stacker's cache has no entry for it"))),
        Some(Err(why)) => return Ok(Err(skip(why.clone()))),
        Some(Ok(e)) => e,
    };
    if let Err(s) = check_definition(stacker.version, entry, inputs, options) {
        return Ok(Err(s));
    }
    if let Err(s) = check_epoch(stacker.version, entry, inputs) {
        return Ok(Err(s));
    }
    if let Err(s) = check_base(stacker, entry, inputs, status)? {
        return Ok(Err(s));
    }
    let sources = match match_sources(entry, inputs, options) {
        Ok(s) => s,
        Err(s) => return Ok(Err(s)),
    };
    Ok(outputs(cache, stacker.version, name, entry, inputs).map(|m| (sources, m)))
}

fn same_manifests(
    a: &BTreeMap<String, oci_spec::image::Descriptor>,
    b: &BTreeMap<String, oci_spec::image::Descriptor>,
) -> bool {
    let canon = |m: &BTreeMap<String, oci_spec::image::Descriptor>| {
        m.iter()
            .map(|(k, d)| (k.clone(), canonical_json_of(d).ok()))
            .collect::<Vec<_>>()
    };
    canon(a) == canon(b)
}

fn check_definition(
    version: u32,
    entry: &StackerEntry,
    inputs: &LayerInputs,
    options: &ImportOptions,
) -> Check {
    let cx = format::PlanContext {
        stackerfile_dir: &options.stackerfile_dir,
        os: &options.os,
        arch: &options.arch,
    };
    let plan = format::normal_plan(version, &inputs.definition, &cx)
        .map_err(|why| skip(format!("cannot compare its definition: {why}")))?;
    let recorded = format::normal_recorded(version, &entry.layer).map_err(|why| {
        skip(format!(
            "cannot read the definition stacker recorded: {why}"
        ))
    })?;
    if plan.get("binds").is_some() {
        return Err(skip(
            "it has binds (host directories the cache never sees): stacker always rebuilds it",
        ));
    }
    let dest_import = plan
        .get("imports")
        .and_then(Value::as_array)
        .and_then(|l| l.iter().find(|i| i.get("dest").is_some()));
    if let Some(i) = dest_import {
        let path = i.get("path").and_then(Value::as_str).unwrap_or_default();
        return Err(skip(format!(
            "its import {} has a dest: stacker copies such imports without hashing them, so \
             its cache cannot vouch for the content its outputs were built from",
            escape_bytes(path.as_bytes())
        )));
    }
    let fields = format::differing_fields(&plan, &recorded);
    if !fields.is_empty() {
        return Err(skip(format!(
            "its definition differs from the one stacker built (fields: {})",
            fields.join(", ")
        )));
    }
    let build_only = recorded.get("build_only") == Some(&Value::Bool(true));
    if build_only != inputs.build_only {
        return Err(skip(format!(
            "the plan says build_only {}, stacker's layer {}",
            inputs.build_only, build_only
        )));
    }
    Ok(())
}

fn check_epoch(version: u32, entry: &StackerEntry, inputs: &LayerInputs) -> Check {
    if version < 15 {
        return match inputs.source_date_epoch {
            None => Ok(()),
            Some(e) => Err(skip(format!(
                "its SOURCE_DATE_EPOCH is {e}, but stacker's format {version} predates \
                 SOURCE_DATE_EPOCH: its outputs were not built with one"
            ))),
        };
    }
    if entry.source_date_epoch != inputs.source_date_epoch {
        let show = |e: Option<i64>| e.map_or("unset".to_string(), |e| e.to_string());
        return Err(skip(format!(
            "SOURCE_DATE_EPOCH is {} now, {} in stacker's build",
            show(inputs.source_date_epoch),
            show(entry.source_date_epoch)
        )));
    }
    Ok(())
}

fn check_base(
    stacker: &StackerCache,
    entry: &StackerEntry,
    inputs: &LayerInputs,
    status: &BTreeMap<&str, Vouched>,
) -> Result<Check> {
    Ok(match &inputs.base {
        Base::Scratch if entry.base.is_empty() => Ok(()),
        Base::Scratch => Err(skip("stacker recorded a base hash for a scratch layer")),
        Base::Tar { path } => {
            let now = match std::fs::metadata(path) {
                Ok(m) if m.is_file() => go_hash_file(path)?,
                Ok(_) => return Ok(Err(skip("its tar base is not a regular file"))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Err(skip(format!(
                        "its tar base {} is missing",
                        show_path(path)
                    ))));
                }
                Err(e) => return Err(Error::io("cannot read", path, e)),
            };
            if now == entry.base {
                Ok(())
            } else {
                Err(skip(format!(
                    "its tar base changed since stacker's build ({now} now, {} then)",
                    escape_bytes(entry.base.as_bytes())
                )))
            }
        }
        Base::Oci { layout, tag } | Base::Docker { layout, tag } => {
            match crate::base::resolve_tag(layout, tag)? {
                None => Err(skip(format!(
                    "its base tag {tag:?} is not in {}",
                    show_path(layout)
                ))),
                Some(d) if d.strip_prefix("sha256:") == Some(entry.base.as_str()) => Ok(()),
                Some(d) => Err(skip(format!(
                    "its base image changed since stacker's build ({} now, {} then)",
                    escape_bytes(d.as_bytes()),
                    escape_bytes(entry.base.as_bytes())
                ))),
            }
        }
        Base::Built { layer } => {
            if status.get(layer.as_str()) != Some(&Vouched::Yes) {
                return Ok(Err(skip(format!(
                    "it is built on {}, which was not imported",
                    escape_bytes(layer.as_bytes())
                ))));
            }
            let Some(Ok(base_entry)) = stacker.entries.get(layer) else {
                return Ok(Err(skip("stacker's cache has no entry for its base")));
            };
            match gohash::base_hash_matches(stacker.version, &base_entry.raw, &entry.base) {
                Ok(true) => Ok(()),
                Ok(false) => Err(skip(format!(
                    "stacker built it on another build of {} than the one its cache holds",
                    escape_bytes(layer.as_bytes())
                ))),
                Err(why) => Err(skip(format!(
                    "stacker's hash of its base cannot be reproduced: {why}"
                ))),
            }
        }
    })
}

/// One source to check: where it is today and what stacker recorded.
struct SourceCheck<'a> {
    noun: &'static str,
    key: &'a str,
    path: &'a Path,
    /// For an import: stacker's hash; for an overlay dir: its spec.
    recorded: Recorded<'a>,
}

enum Recorded<'a> {
    Import(&'a format::ImportHash),
    Spec(&'a str),
}

fn match_sources<'a>(
    entry: &'a StackerEntry,
    inputs: &'a LayerInputs,
    options: &ImportOptions,
) -> Check<Vec<SourceCheck<'a>>> {
    let abs = |k: &str| format::absolutify(k, &options.stackerfile_dir);
    let mut out = Vec::new();
    let mut used_imports = std::collections::BTreeSet::new();
    for i in &inputs.imports {
        let key = escape_bytes(i.key.as_bytes());
        if i.dest.is_some() {
            return Err(skip(format!(
                "its import {key} has a dest: stacker copies such imports without hashing them, \
                 so its cache cannot vouch for them"
            )));
        }
        let found = entry
            .imports
            .get_key_value(&i.key)
            .or_else(|| entry.imports.get_key_value(&abs(&i.key)));
        let Some((k, hash)) = found else {
            return Err(skip(format!(
                "stacker recorded no hash of its import {key}"
            )));
        };
        used_imports.insert(k.as_str());
        out.push(SourceCheck {
            noun: "import",
            key: &i.key,
            path: &i.path,
            recorded: Recorded::Import(hash),
        });
    }
    if let Some(k) = entry
        .imports
        .keys()
        .find(|k| !used_imports.contains(k.as_str()))
    {
        return Err(skip(format!(
            "stacker's build had an import {} the plan does not",
            escape_bytes(k.as_bytes())
        )));
    }
    let mut used = std::collections::BTreeSet::new();
    for o in &inputs.overlay_dirs {
        let key = escape_bytes(o.key.as_bytes());
        let found = entry
            .overlay_dirs
            .get_key_value(&o.key)
            .or_else(|| entry.overlay_dirs.get_key_value(&abs(&o.key)));
        let Some((k, spec)) = found else {
            return Err(skip(format!(
                "stacker recorded no spec of its overlay dir {key}"
            )));
        };
        used.insert(k.as_str());
        if !o.rootfs_path.exists() {
            return Err(skip(format!(
                "the rootfs copy of its overlay dir {key} is missing"
            )));
        }
        out.push(SourceCheck {
            noun: "overlay dir",
            key: &o.key,
            path: &o.source,
            recorded: Recorded::Spec(spec),
        });
    }
    if let Some(k) = entry
        .overlay_dirs
        .keys()
        .find(|k| !used.contains(k.as_str()))
    {
        return Err(skip(format!(
            "stacker's build had an overlay dir {} the plan does not",
            escape_bytes(k.as_bytes())
        )));
    }
    Ok(out)
}

/// Checks one source against stacker's record.
fn verify_source(source: &SourceCheck<'_>, hashed: &mut mtree::Hashed) -> Result<Check> {
    let key = escape_bytes(source.key.as_bytes());
    let noun = source.noun;
    let meta = match std::fs::symlink_metadata(source.path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(skip(format!("its {noun} {key} is missing on disk"))));
        }
        Err(e) => return Err(Error::io("cannot stat", source.path, e)),
    };
    if meta.file_type().is_symlink() {
        return Ok(Err(skip(format!(
            "its {noun} {key} is a symlink, which stacker followed and layercache records as a \
             link"
        ))));
    }
    let spec = match source.recorded {
        Recorded::Import(h) if !h.is_dir => {
            if !meta.is_file() {
                return Ok(Err(skip(format!(
                    "its import {key} was a file in stacker's build and is not one now"
                ))));
            }
            hashed.files += 1;
            hashed.bytes += meta.len();
            let now = go_hash_file(source.path)?;
            return Ok(if now == h.hash {
                Ok(())
            } else {
                Err(skip(format!(
                    "its import {key} changed since stacker's build (content or mode)"
                )))
            });
        }
        Recorded::Import(h) => &h.hash,
        Recorded::Spec(s) => s,
    };
    if !meta.is_dir() {
        return Ok(Err(skip(format!(
            "its {noun} {key} was a directory in stacker's build and is not one now"
        ))));
    }
    let spec = match mtree::parse_base64(spec) {
        Ok(s) => s,
        Err(why) => {
            return Ok(Err(skip(format!(
                "stacker's spec of its {noun} {key}: {why}"
            ))));
        }
    };
    Ok(match mtree::check_dir(source.path, &spec, hashed)? {
        mtree::Verdict::Matches => Ok(()),
        mtree::Verdict::Differs { paths, count } => Err(skip(format!(
            "its {noun} {key} changed since stacker's build ({count} path(s): {}{})",
            paths.join(", "),
            if count > paths.len() { ", ..." } else { "" }
        ))),
        mtree::Verdict::CannotVouch(why) => Err(skip(format!(
            "stacker's spec of its {noun} {key} cannot vouch for it: {why}"
        ))),
    })
}

/// stacker's `lib.HashFile(path, true)`: `sha256:` and the hex sha256 of the content followed
/// by Go's text of the file mode (`-rw-r--r--`), symlinks followed.
pub fn go_hash_file(path: &Path) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: a FIFO swapped in since the caller's stat is refused below, never waited on.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("cannot open", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", path, e))?;
    if !meta.is_file() {
        return Err(Error::WrongFileType {
            what: "stacker-hashed file",
            path: path.to_path_buf(),
            found: crate::fsread::describe_type(meta.file_type()),
            expected: "a regular file".to_string(),
        });
    }
    let mut h = sha2::Sha256::new();
    crate::fsread::for_each_chunk(&mut file, path, |chunk| h.update(chunk))?;
    h.update(go_mode_string(meta.permissions().mode()).as_bytes());
    Ok(format!("sha256:{}", mtree::hex(&h.finalize())))
}

/// Go's `fs.FileMode.String()` of a regular file's mode: `u`, `g`, `t` for setuid, setgid,
/// sticky (else `-`), then `rwxrwxrwx` with `-` for unset bits.
pub fn go_mode_string(mode: u32) -> String {
    let mut s = String::new();
    if mode & 0o4000 != 0 {
        s.push('u');
    }
    if mode & 0o2000 != 0 {
        s.push('g');
    }
    if mode & 0o1000 != 0 {
        s.push('t');
    }
    if s.is_empty() {
        s.push('-');
    }
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if mode & (1 << (8 - i)) != 0 { c } else { '-' });
    }
    s
}

/// stacker's output manifests as layercache records them (layer type: stacker's own name of it,
/// `tar`, `squashfs`, `squashfs+verity`), checked to exist where a hit will look.
fn outputs(
    cache: &Cache,
    version: u32,
    name: &str,
    entry: &StackerEntry,
    inputs: &LayerInputs,
) -> Check<BTreeMap<String, oci_spec::image::Descriptor>> {
    let mut object = serde_json::Map::new();
    for (key, desc) in &entry.manifests {
        let layer_type = if version == 12 {
            key.clone()
        } else {
            match key.split_once('+') {
                None => key.clone(),
                Some((t, "false")) => t.to_string(),
                Some((t, "true")) => format!("{t}+verity"),
                Some(_) => {
                    return Err(skip(format!(
                        "stacker's output layer type {} is not TYPE+BOOL",
                        escape_bytes(key.as_bytes())
                    )));
                }
            }
        };
        object.insert(layer_type, desc.clone());
    }
    let text = Value::Object(object).to_string();
    let manifests = crate::plan::parse_manifests(&text, "stacker cache entry")
        .map_err(|e| skip(format!("stacker's output descriptors: {e}")))?;
    let config = cache.config();
    if inputs.build_only {
        let Some(dir) = &config.rootfs_dir else {
            return Err(skip(
                "no rootfs_dir is configured to find its build-only rootfs in",
            ));
        };
        if !dir.join(name).is_dir() {
            return Err(skip(format!(
                "its build-only rootfs {} is gone",
                show_path(&dir.join(name))
            )));
        }
        return Ok(manifests);
    }
    if manifests.is_empty() {
        return Err(skip("stacker recorded no outputs for it"));
    }
    let Some(layout) = &config.oci_layout else {
        return Err(skip("no oci_layout is configured to find its outputs in"));
    };
    for (t, d) in &manifests {
        let digest = d.digest().to_string();
        let present = crate::path::blob_path(layout, &digest).is_some_and(|p| p.is_file());
        if !present {
            return Err(skip(format!(
                "its {} output {digest} is not in {}",
                escape_bytes(t.as_bytes()),
                show_path(layout)
            )));
        }
    }
    Ok(manifests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_mode_strings() {
        assert_eq!(go_mode_string(0o644), "-rw-r--r--");
        assert_eq!(go_mode_string(0o755), "-rwxr-xr-x");
        assert_eq!(go_mode_string(0o4755), "urwxr-xr-x");
        assert_eq!(go_mode_string(0o7000), "ugt---------");
    }
}
