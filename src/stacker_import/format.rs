//! stacker's cache file (`.stacker/build.cache`) as stacker writes it, formats 12 to 16, and
//! the comparison of a plan's layer definition with the layer stacker recorded.
//!
//! Owns: reading the file (only reading), refusing an unknown format, the per-entry fields
//! (`Manifests`, `Imports`, `OverlayDirs`, `Name`, `Layer`, `Base`, and from format 15
//! `source_date_epoch`), and [`normal_recorded`] / [`normal_plan`], which bring stacker's
//! recorded `Layer` (Go field names in format 12, JSON tags from 13) and a plan definition (a
//! stackerfile layer as JSON) to one form so they can be compared.
//!
//! The normal form is the layer as stacker's parser leaves it: `import`/`imports` as a list of
//! `{path, hash, dest, mode, uid, gid}` objects (a bare string is `{path}`), `run` and
//! `generate_labels` as lists (a string is a one-element list), relative import paths and
//! overlay dir sources made absolute against the stackerfile's directory as stacker does
//! (`Layer.absolutify`), `os` and `arch` defaulted to the host's (from format 13; format 12 had
//! neither), the legacy `import` key noted as `was_legacy_import` (from format 14), a `bom`
//! replaced by `was_bom` (format 16); then every Go zero value (`null`, `""`, `false`, `0`, `[]`,
//! `{}`) is dropped on both sides, since Go cannot tell them from an absent field. A `cmd`,
//! `entrypoint` or `full_command` given as one string is split by stacker with a shell lexer;
//! only a string without quotes or backslashes is split here (on white space), anything else is
//! "cannot be compared", never a guess.
//!
//! Must never: call two definitions equal that stacker would not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::fsread;

/// The cache formats this module reads.
pub const VERSIONS: std::ops::RangeInclusive<u32> = 12..=16;

/// Largest stacker cache file read (stacker keeps one JSON file for all layers, with a
/// base64 mtree spec of every imported directory).
pub const FILE_LIMIT: u64 = 1 << 30;

/// One import hash as stacker records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportHash {
    /// stacker's `ImportType`: a directory (an mtree spec) or a file (sha256 with its mode).
    pub is_dir: bool,
    /// `sha256:<hex>` of a file with its mode appended, or a base64 mtree spec.
    pub hash: String,
}

/// One layer's entry in stacker's cache file.
#[derive(Debug, Clone)]
pub struct StackerEntry {
    /// The entry exactly as stored (stacker's base hash of dependents is computed from it).
    pub raw: Value,
    /// Output descriptors by stacker's layer type key (`tar`, `squashfs+true`, ...).
    pub manifests: BTreeMap<String, Value>,
    /// Import hashes by import path as stacker recorded it.
    pub imports: BTreeMap<String, ImportHash>,
    /// Overlay dir mtree specs (base64) by source as stacker recorded it.
    pub overlay_dirs: BTreeMap<String, String>,
    /// The layer definition stacker built from (`Layer`).
    pub layer: Value,
    /// The base hash stacker recorded (`Base`).
    pub base: String,
    /// SOURCE_DATE_EPOCH of the build (format 15 and later; `None` before, or unset).
    pub source_date_epoch: Option<i64>,
}

/// A stacker cache file, read and checked.
#[derive(Debug, Clone)]
pub struct StackerCache {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its format version (`version`).
    pub version: u32,
    /// Entries by layer name; an entry that does not have stacker's shape is `Err(why)` (that
    /// layer is not imported; the others are).
    pub entries: BTreeMap<String, std::result::Result<StackerEntry, String>>,
}

impl StackerCache {
    /// Reads and checks a stacker cache file. Only reads it. A file that is not JSON (damaged,
    /// truncated), whose top level is not `{"version": N, "cache": {...}}`, or whose format is
    /// not 12 to 16, is an error naming the file; nothing is imported from it.
    pub fn read(path: impl AsRef<Path>) -> Result<StackerCache> {
        let path = path.as_ref();
        let bytes = match fsread::read_capped("stacker cache file", path, FILE_LIMIT) {
            Ok(b) => b,
            Err(Error::Io { source, .. }) => {
                return Err(Error::Parse {
                    what: "stacker cache file",
                    path: path.to_path_buf(),
                    detail: format!(
                        "cannot read it ({source}); give the path of stacker's build.cache \
                         (in its stacker_dir, `.stacker` by default)"
                    ),
                });
            }
            Err(e) => return Err(e),
        };
        StackerCache::parse(&bytes, path)
    }

    /// Parses the bytes of a stacker cache file; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: impl AsRef<Path>) -> Result<StackerCache> {
        let path = path.as_ref();
        let bad = |detail: String| Error::Parse {
            what: "stacker cache file",
            path: path.to_path_buf(),
            detail,
        };
        let top: Value = serde_json::from_slice(bytes).map_err(|e| {
            bad(format!(
                "it is not valid JSON ({e}): damaged or truncated; nothing was imported. Let \
                 stacker rewrite it (a stacker build), or build without importing"
            ))
        })?;
        let obj = top
            .as_object()
            .ok_or_else(|| bad("its top level is not a JSON object".to_string()))?;
        let version = obj.get("version").and_then(Value::as_u64).ok_or_else(|| {
            bad("it has no numeric \"version\"; is it stacker's build.cache?".into())
        })?;
        let version = u32::try_from(version).unwrap_or(u32::MAX);
        if !VERSIONS.contains(&version) {
            return Err(Error::UnsupportedStackerFormat {
                path: path.to_path_buf(),
                version: u64::from(version),
            });
        }
        let cache = match obj.get("cache") {
            Some(Value::Object(m)) => m,
            // Go writes a nil map as null: an empty cache.
            Some(Value::Null) => &Map::new(),
            _ => return Err(bad("it has no \"cache\" object".to_string())),
        };
        let entries = cache
            .iter()
            .map(|(name, e)| (name.clone(), entry(version, e)))
            .collect();
        Ok(StackerCache {
            path: path.to_path_buf(),
            version,
            entries,
        })
    }
}

fn entry(version: u32, v: &Value) -> std::result::Result<StackerEntry, String> {
    let obj = v
        .as_object()
        .ok_or("stacker's entry is not a JSON object")?;
    let string_map = |key: &str| -> std::result::Result<Map<String, Value>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(_) => Err(format!("stacker's entry has a {key} that is not an object")),
        }
    };
    let manifests = string_map("Manifests")?.into_iter().collect();
    let imports = string_map("Imports")?
        .into_iter()
        .map(|(k, h)| {
            let kind = h.get("Type").and_then(Value::as_i64).unwrap_or(0);
            let hash = h
                .get("Hash")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("stacker's hash of import {k:?} has no Hash"))?;
            let is_dir = match kind {
                0 => false,
                1 => true,
                other => return Err(format!("import {k:?} has an unknown type {other}")),
            };
            Ok((
                k,
                ImportHash {
                    is_dir,
                    hash: hash.to_string(),
                },
            ))
        })
        .collect::<std::result::Result<_, String>>()?;
    let overlay_dirs = string_map("OverlayDirs")?
        .into_iter()
        .map(|(k, h)| {
            let hash = h
                .get("Hash")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("stacker's spec of overlay dir {k:?} has no Hash"))?;
            Ok((k, hash.to_string()))
        })
        .collect::<std::result::Result<_, String>>()?;
    let base = match obj.get("Base") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("stacker's entry has a Base that is not a string".into()),
    };
    let source_date_epoch = match obj.get("source_date_epoch") {
        None | Some(Value::Null) => None,
        Some(v) if version >= 15 => Some(
            v.as_i64()
                .ok_or("stacker's source_date_epoch is not an integer")?,
        ),
        Some(_) => return Err(format!("format {version} has no source_date_epoch")),
    };
    Ok(StackerEntry {
        raw: v.clone(),
        manifests,
        imports,
        overlay_dirs,
        layer: obj.get("Layer").cloned().unwrap_or(Value::Null),
        base,
        source_date_epoch,
    })
}

/// Go field names of format 12's `Layer` (no JSON tags then) → stackerfile names.
const FIELDS_12: &[(&str, &str)] = &[
    ("From", "from"),
    ("Imports", "imports"),
    ("OverlayDirs", "overlay_dirs"),
    ("Run", "run"),
    ("Cmd", "cmd"),
    ("Entrypoint", "entrypoint"),
    ("FullCommand", "full_command"),
    ("BuildEnvPt", "build_env_passthrough"),
    ("BuildEnv", "build_env"),
    ("Environment", "environment"),
    ("Volumes", "volumes"),
    ("Labels", "labels"),
    ("GenerateLabels", "generate_labels"),
    ("WorkingDir", "working_dir"),
    ("BuildOnly", "build_only"),
    ("Binds", "binds"),
    ("RuntimeUser", "runtime_user"),
];

/// Stackerfile field names of a layer (from format 13 on).
const FIELDS: &[&str] = &[
    "from",
    "imports",
    "import",
    "overlay_dirs",
    "run",
    "cmd",
    "entrypoint",
    "full_command",
    "build_env_passthrough",
    "build_env",
    "environment",
    "volumes",
    "labels",
    "generate_labels",
    "working_dir",
    "build_only",
    "binds",
    "runtime_user",
    "annotations",
    "os",
    "arch",
    "bom",
    "was_legacy_import",
    "was_bom",
];

fn rename_keys(v: &Value, names: &[(&str, &str)]) -> std::result::Result<Value, String> {
    match v {
        Value::Null => Ok(Value::Null),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                names
                    .iter()
                    .find(|(go, _)| go == k)
                    .map(|(_, y)| (y.to_string(), v.clone()))
                    .ok_or_else(|| format!("stacker recorded an unknown field {k:?}"))
            })
            .collect::<std::result::Result<Map<_, _>, _>>()
            .map(Value::Object),
        _ => Err("stacker recorded a field that is not an object".into()),
    }
}

fn rename_list(v: Option<&Value>, names: &[(&str, &str)]) -> std::result::Result<Value, String> {
    match v {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| rename_keys(i, names))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Value::Array),
        Some(_) => Err("stacker recorded a list field that is not a list".into()),
    }
}

/// stacker's recorded `Layer`, in the normal form (see the module doc).
pub fn normal_recorded(version: u32, layer: &Value) -> std::result::Result<Value, String> {
    let mut m = if version == 12 {
        let Value::Object(m) = rename_keys(layer, FIELDS_12)? else {
            return Err("stacker recorded no layer".into());
        };
        let mut m = m;
        if let Some(from) = m.get("from") {
            let from = rename_keys(
                from,
                &[
                    ("Type", "type"),
                    ("Url", "url"),
                    ("Tag", "tag"),
                    ("Insecure", "insecure"),
                ],
            )?;
            m.insert("from".into(), from);
        }
        let imports = rename_list(m.get("imports"), &[("Path", "path"), ("Hash", "hash")])?;
        m.insert("imports".into(), imports);
        let binds = rename_list(m.get("binds"), &[("Source", "source"), ("Dest", "dest")])?;
        m.insert("binds".into(), binds);
        m
    } else {
        match layer {
            Value::Object(m) => {
                if let Some(k) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
                    return Err(format!("stacker recorded an unknown layer field {k:?}"));
                }
                m.clone()
            }
            _ => return Err("stacker recorded no layer".into()),
        }
    };
    // OverlayDir has no JSON tags in any format.
    let overlays = rename_list(
        m.get("overlay_dirs"),
        &[("Source", "source"), ("Dest", "dest")],
    )?;
    m.insert("overlay_dirs".into(), overlays);
    if let Some(Value::Object(bom)) = m.get_mut("bom") {
        let packages = rename_list(
            bom.get("packages"),
            &[
                ("Name", "name"),
                ("Version", "version"),
                ("License", "license"),
                ("Paths", "paths"),
            ],
        )?;
        bom.insert("packages".into(), packages);
    }
    Ok(drop_zero(Value::Object(m)))
}

/// What the plan's layer definition needs to be compared with stacker's.
pub struct PlanContext<'a> {
    /// The stackerfile's directory: relative import paths and overlay dir sources are made
    /// absolute against it, as stacker does.
    pub stackerfile_dir: &'a Path,
    /// The host's OS and architecture in Go names (stacker's default `os`, `arch`).
    pub os: &'a str,
    /// See `os`.
    pub arch: &'a str,
}

/// A plan's layer definition (a stackerfile layer as JSON), in the normal form for format
/// `version` (see the module doc).
pub fn normal_plan(
    version: u32,
    definition: &Value,
    cx: &PlanContext<'_>,
) -> std::result::Result<Value, String> {
    let Value::Object(def) = definition else {
        return Err("the plan's definition is not an object (a stackerfile layer)".into());
    };
    if let Some(k) = def.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "the plan's definition has a field {k:?} that no stacker layer has"
        ));
    }
    let mut m = def.clone();
    let new = m.remove("imports").filter(|v| !is_zero(v));
    let legacy = m.remove("import").filter(|v| !is_zero(v));
    if new.is_some() && legacy.is_some() {
        return Err("the plan's definition has both `import` and `imports`".into());
    }
    let was_legacy = legacy.is_some();
    if let Some(list) = new.or(legacy) {
        m.insert("imports".into(), imports(&list, cx)?);
    }
    if version >= 14 && was_legacy {
        m.insert("was_legacy_import".into(), Value::Bool(true));
    }
    if let Some(list) = m.get("overlay_dirs") {
        let Value::Array(items) = list else {
            return Err("the plan's overlay_dirs is not a list".into());
        };
        let items = items
            .iter()
            .map(|o| {
                let mut o = o
                    .as_object()
                    .cloned()
                    .ok_or("an overlay dir of the plan is not an object")?;
                if let Some(Value::String(s)) = o.get("source") {
                    let abs = absolutify(s, cx.stackerfile_dir);
                    o.insert("source".into(), Value::String(abs));
                }
                Ok(Value::Object(o))
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        m.insert("overlay_dirs".into(), Value::Array(items));
    }
    for key in ["run", "generate_labels"] {
        if let Some(Value::String(s)) = m.get(key) {
            let one = Value::Array(vec![Value::String(s.clone())]);
            m.insert(key.into(), one);
        }
    }
    for key in ["cmd", "entrypoint", "full_command"] {
        if let Some(Value::String(s)) = m.get(key) {
            if s.contains(['"', '\'', '\\']) {
                return Err(format!(
                    "the plan's {key} is a string with quotes or backslashes, whose split by \
                     stacker's shell lexer is not reproduced; write it as a list"
                ));
            }
            let words = s
                .split_whitespace()
                .map(|w| Value::String(w.to_string()))
                .collect();
            m.insert(key.into(), Value::Array(words));
        }
    }
    if version == 12 {
        // Format 12 had no os or arch: stacker built for its host.
        for (key, host) in [("os", cx.os), ("arch", cx.arch)] {
            match m.remove(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s == host => {}
                Some(other) => {
                    return Err(format!(
                        "the plan's {key} is {other}, but stacker of format 12 built for its \
                         host ({host})"
                    ));
                }
            }
        }
        for key in ["annotations", "bom", "was_legacy_import", "was_bom"] {
            if m.get(key).is_some_and(|v| !is_zero(v)) {
                return Err(format!("stacker of format 12 had no layer field {key:?}"));
            }
        }
    } else {
        for (key, host) in [("os", cx.os), ("arch", cx.arch)] {
            if m.get(key).is_none_or(Value::is_null) {
                m.insert(key.into(), Value::String(host.to_string()));
            }
        }
        if version >= 16 && m.remove("bom").is_some_and(|b| !b.is_null()) {
            m.insert("was_bom".into(), Value::Bool(true));
        }
    }
    Ok(drop_zero(Value::Object(m)))
}

fn imports(list: &Value, cx: &PlanContext<'_>) -> std::result::Result<Value, String> {
    let items = match list {
        Value::Array(items) => items.clone(),
        one => vec![one.clone()],
    };
    items
        .iter()
        .map(|i| {
            let mut o = match i {
                Value::String(s) => {
                    let mut o = Map::new();
                    o.insert("path".into(), Value::String(s.clone()));
                    o
                }
                Value::Object(o) => o.clone(),
                _ => return Err("an import of the plan is neither a string nor an object".into()),
            };
            if let Some(Value::String(p)) = o.get("path") {
                let abs = absolutify(p, cx.stackerfile_dir);
                o.insert("path".into(), Value::String(abs));
            }
            Ok(Value::Object(o))
        })
        .collect::<std::result::Result<Vec<_>, String>>()
        .map(Value::Array)
}

/// stacker's `getAbsPath`: a URL (a scheme) or an absolute path as it is; a relative path
/// joined to the stackerfile's directory and cleaned, keeping a trailing `/`.
pub fn absolutify(path: &str, dir: &Path) -> String {
    if path.is_empty() || path.starts_with('/') || has_scheme(path) {
        return path.to_string();
    }
    let joined = dir.join(path);
    let mut out: Vec<String> = Vec::new();
    for c in joined.to_string_lossy().split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_string()),
        }
    }
    let mut s = format!("/{}", out.join("/"));
    if path.ends_with('/') && !s.ends_with('/') {
        s.push('/');
    }
    s
}

/// Go's `url.Parse` scheme rule: a letter, then letters, digits, `+`, `-`, `.`, then `:`.
fn has_scheme(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Drops Go zero values inside objects, recursively (list elements are kept: their positions
/// count).
pub fn drop_zero(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, drop_zero(v)))
                .filter(|(_, v)| !is_zero(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(drop_zero).collect()),
        other => other,
    }
}

/// The top-level fields that differ between two normal forms.
pub fn differing_fields(a: &Value, b: &Value) -> Vec<String> {
    let empty = Map::new();
    let a = a.as_object().unwrap_or(&empty);
    let b = b.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}
