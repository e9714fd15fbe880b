//! stacker's base hash of a `built` layer: `hashstructure.Hash(baseEntry)` (mitchellh's
//! hashstructure v1.1.0, default options) of the base layer's cache entry, printed in decimal.
//!
//! Owns: rebuilding the Go value of a stacker `CacheEntry` from its JSON, per cache format
//! version (the Go types differ: fields were added, and JSON drops fields Go fills with zero
//! values), and hashing it as hashstructure does: FNV-1 64 (not 1a) over little-endian
//! integers (`int` as int64, `bool` as int8, a nil pointer as int64 0) and string bytes; a
//! slice folds its elements in order (`fnv(h ‖ e)`), a map XORs `fnv(key ‖ value)` per pair, a
//! struct starts from the hash of its type name and XORs `fnv(field name ‖ value)` per
//! exported field.
//!
//! The Go types are checked against stacker's own test vectors (`TestCacheEntryChanged`: the
//! hash of a zero `CacheEntry`, per version). Fields the zero value does not reach (an image
//! spec `Descriptor`'s fields changed between image-spec releases within one stacker format;
//! `Bom` gained `Namespace` within format 13) are tried in each form a stacker release of that
//! format used: a 64-bit hash reproduced by one of a handful of candidates identifies the base
//! entry the layer was built on.
//!
//! Must never: report a match it did not compute.

use serde_json::Value;

/// A Go value as hashstructure sees it.
#[derive(Debug, Clone)]
pub enum GoValue {
    /// A string (or a named string type).
    Str(String),
    /// `int`, `int64`: 8 bytes.
    I64(i64),
    /// `bool`: 1 byte.
    Bool(bool),
    /// `uint32` (`fs.FileMode`): 4 bytes.
    U32(u32),
    /// `uint8` (an element of `[]byte`): 1 byte.
    U8(u8),
    /// A nil pointer: hashed as int 0.
    Nil,
    /// A slice.
    Slice(Vec<GoValue>),
    /// A map (pairs in any order).
    Map(Vec<(GoValue, GoValue)>),
    /// A struct: type name and exported fields.
    Struct(&'static str, Vec<(&'static str, GoValue)>),
}

const OFFSET: u64 = 14_695_981_039_346_656_037;
const PRIME: u64 = 1_099_511_628_211;

fn fnv1(bytes: &[u8]) -> u64 {
    let mut h = OFFSET;
    for &b in bytes {
        h = h.wrapping_mul(PRIME);
        h ^= u64::from(b);
    }
    h
}

fn ordered(a: u64, b: u64) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    fnv1(&bytes)
}

/// hashstructure v1's hash of a value.
pub fn hash(v: &GoValue) -> u64 {
    match v {
        GoValue::Str(s) => fnv1(s.as_bytes()),
        GoValue::I64(i) => fnv1(&i.to_le_bytes()),
        GoValue::Bool(b) => fnv1(&[u8::from(*b)]),
        GoValue::U32(u) => fnv1(&u.to_le_bytes()),
        GoValue::U8(u) => fnv1(&[*u]),
        GoValue::Nil => fnv1(&0i64.to_le_bytes()),
        GoValue::Slice(items) => items.iter().fold(0, |h, e| ordered(h, hash(e))),
        GoValue::Map(pairs) => pairs
            .iter()
            .fold(0, |h, (k, v)| h ^ ordered(hash(k), hash(v))),
        GoValue::Struct(name, fields) => fields.iter().fold(fnv1(name.as_bytes()), |h, (f, v)| {
            h ^ ordered(fnv1(f.as_bytes()), hash(v))
        }),
    }
}

/// The shape of a Go type, enough to rebuild a value from its JSON.
#[derive(Debug, Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    /// `*fs.FileMode` (uint32 behind a pointer).
    PtrU32,
    /// `*int64`.
    PtrI64,
    /// `*string`.
    PtrStr,
    /// `[]byte`: base64 in JSON.
    Bytes,
    Slice(&'static Ty),
    /// `map[string]V`.
    MapStr(&'static Ty),
    /// A struct behind a pointer.
    Ptr(&'static Struct),
    Struct(&'static Struct),
}

#[derive(Debug)]
struct Struct {
    name: &'static str,
    /// Go field name, JSON name, type.
    fields: &'static [(&'static str, &'static str, Ty)],
}

/// The variations of the Go types between cache formats (and between stacker releases of one
/// format, see the module doc).
#[derive(Debug, Clone, Copy)]
struct Shape {
    version: u32,
    descriptor: &'static Struct,
    bom: &'static Struct,
}

const PLATFORM: Struct = Struct {
    name: "Platform",
    fields: &[
        ("Architecture", "architecture", Ty::Str),
        ("OS", "os", Ty::Str),
        ("OSVersion", "os.version", Ty::Str),
        ("OSFeatures", "os.features", Ty::Slice(&Ty::Str)),
        ("Variant", "variant", Ty::Str),
    ],
};

const DESCRIPTOR_1_0: Struct = Struct {
    name: "Descriptor",
    fields: &[
        ("MediaType", "mediaType", Ty::Str),
        ("Digest", "digest", Ty::Str),
        ("Size", "size", Ty::Int),
        ("URLs", "urls", Ty::Slice(&Ty::Str)),
        ("Annotations", "annotations", Ty::MapStr(&Ty::Str)),
        ("Platform", "platform", Ty::Ptr(&PLATFORM)),
    ],
};

const DESCRIPTOR_1_1_DATA: Struct = Struct {
    name: "Descriptor",
    fields: &[
        ("MediaType", "mediaType", Ty::Str),
        ("Digest", "digest", Ty::Str),
        ("Size", "size", Ty::Int),
        ("URLs", "urls", Ty::Slice(&Ty::Str)),
        ("Annotations", "annotations", Ty::MapStr(&Ty::Str)),
        ("Data", "data", Ty::Bytes),
        ("Platform", "platform", Ty::Ptr(&PLATFORM)),
    ],
};

const DESCRIPTOR_1_1: Struct = Struct {
    name: "Descriptor",
    fields: &[
        ("MediaType", "mediaType", Ty::Str),
        ("Digest", "digest", Ty::Str),
        ("Size", "size", Ty::Int),
        ("URLs", "urls", Ty::Slice(&Ty::Str)),
        ("Annotations", "annotations", Ty::MapStr(&Ty::Str)),
        ("Data", "data", Ty::Bytes),
        ("Platform", "platform", Ty::Ptr(&PLATFORM)),
        ("ArtifactType", "artifactType", Ty::Str),
    ],
};

const PACKAGE: Struct = Struct {
    name: "Package",
    fields: &[
        ("Name", "Name", Ty::Str),
        ("Version", "Version", Ty::Str),
        ("License", "License", Ty::Str),
        ("Paths", "Paths", Ty::Slice(&Ty::Str)),
    ],
};

const BOM_OLD: Struct = Struct {
    name: "Bom",
    fields: &[
        ("Generate", "generate", Ty::Bool),
        ("Packages", "packages", Ty::Slice(&Ty::Struct(&PACKAGE))),
    ],
};

const BOM: Struct = Struct {
    name: "Bom",
    fields: &[
        ("Generate", "generate", Ty::Bool),
        ("Namespace", "namespace", Ty::Str),
        ("Packages", "packages", Ty::Slice(&Ty::Struct(&PACKAGE))),
    ],
};

const IMAGE_SOURCE_12: Struct = Struct {
    name: "ImageSource",
    fields: &[
        ("Type", "Type", Ty::Str),
        ("Url", "Url", Ty::Str),
        ("Tag", "Tag", Ty::Str),
        ("Insecure", "Insecure", Ty::Bool),
    ],
};

const IMAGE_SOURCE: Struct = Struct {
    name: "ImageSource",
    fields: &[
        ("Type", "type", Ty::Str),
        ("Url", "url", Ty::Str),
        ("Tag", "tag", Ty::Str),
        ("Insecure", "insecure", Ty::Bool),
    ],
};

const IMPORT_12: Struct = Struct {
    name: "Import",
    fields: &[("Path", "Path", Ty::Str), ("Hash", "Hash", Ty::Str)],
};

const IMPORT: Struct = Struct {
    name: "Import",
    fields: &[
        ("Path", "path", Ty::Str),
        ("Hash", "hash", Ty::Str),
        ("Dest", "dest", Ty::Str),
        ("Mode", "mode", Ty::PtrU32),
        ("Uid", "uid", Ty::Int),
        ("Gid", "gid", Ty::Int),
    ],
};

const OVERLAY_DIR: Struct = Struct {
    name: "OverlayDir",
    fields: &[("Source", "Source", Ty::Str), ("Dest", "Dest", Ty::Str)],
};

const BIND_12: Struct = Struct {
    name: "Bind",
    fields: &[("Source", "Source", Ty::Str), ("Dest", "Dest", Ty::Str)],
};

const BIND: Struct = Struct {
    name: "Bind",
    fields: &[("Source", "source", Ty::Str), ("Dest", "dest", Ty::Str)],
};

const LAYER_12: Struct = Struct {
    name: "Layer",
    fields: &[
        ("From", "From", Ty::Struct(&IMAGE_SOURCE_12)),
        ("Imports", "Imports", Ty::Slice(&Ty::Struct(&IMPORT_12))),
        (
            "OverlayDirs",
            "OverlayDirs",
            Ty::Slice(&Ty::Struct(&OVERLAY_DIR)),
        ),
        ("Run", "Run", Ty::Slice(&Ty::Str)),
        ("Cmd", "Cmd", Ty::Slice(&Ty::Str)),
        ("Entrypoint", "Entrypoint", Ty::Slice(&Ty::Str)),
        ("FullCommand", "FullCommand", Ty::Slice(&Ty::Str)),
        ("BuildEnvPt", "BuildEnvPt", Ty::Slice(&Ty::Str)),
        ("BuildEnv", "BuildEnv", Ty::MapStr(&Ty::Str)),
        ("Environment", "Environment", Ty::MapStr(&Ty::Str)),
        ("Volumes", "Volumes", Ty::Slice(&Ty::Str)),
        ("Labels", "Labels", Ty::MapStr(&Ty::Str)),
        ("GenerateLabels", "GenerateLabels", Ty::Slice(&Ty::Str)),
        ("WorkingDir", "WorkingDir", Ty::Str),
        ("BuildOnly", "BuildOnly", Ty::Bool),
        ("Binds", "Binds", Ty::Slice(&Ty::Struct(&BIND_12))),
        ("RuntimeUser", "RuntimeUser", Ty::Str),
    ],
};

/// The fields of `Layer` from format 13 on; `WasLegacyImport` (14+) and `WasBom` (16+) are
/// added by [`layer_fields`]. The `Bom` pointer's struct varies ([`Shape::bom`]), so it is
/// handled there too.
const LAYER_13_COMMON: &[(&str, &str, Ty)] = &[
    ("From", "from", Ty::Struct(&IMAGE_SOURCE)),
    ("Imports", "imports", Ty::Slice(&Ty::Struct(&IMPORT))),
    ("LegacyImport", "import", Ty::Slice(&Ty::Struct(&IMPORT))),
    (
        "OverlayDirs",
        "overlay_dirs",
        Ty::Slice(&Ty::Struct(&OVERLAY_DIR)),
    ),
    ("Run", "run", Ty::Slice(&Ty::Str)),
    ("Cmd", "cmd", Ty::Slice(&Ty::Str)),
    ("Entrypoint", "entrypoint", Ty::Slice(&Ty::Str)),
    ("FullCommand", "full_command", Ty::Slice(&Ty::Str)),
    ("BuildEnvPt", "build_env_passthrough", Ty::Slice(&Ty::Str)),
    ("BuildEnv", "build_env", Ty::MapStr(&Ty::Str)),
    ("Environment", "environment", Ty::MapStr(&Ty::Str)),
    ("Volumes", "volumes", Ty::Slice(&Ty::Str)),
    ("Labels", "labels", Ty::MapStr(&Ty::Str)),
    ("GenerateLabels", "generate_labels", Ty::Slice(&Ty::Str)),
    ("WorkingDir", "working_dir", Ty::Str),
    ("BuildOnly", "build_only", Ty::Bool),
    ("Binds", "binds", Ty::Slice(&Ty::Struct(&BIND))),
    ("RuntimeUser", "runtime_user", Ty::Str),
    ("Annotations", "annotations", Ty::MapStr(&Ty::Str)),
    ("OS", "os", Ty::PtrStr),
    ("Arch", "arch", Ty::PtrStr),
];

const IMPORT_HASH: Struct = Struct {
    name: "ImportHash",
    fields: &[("Type", "Type", Ty::Int), ("Hash", "Hash", Ty::Str)],
};

const OVERLAY_DIR_HASH: Struct = Struct {
    name: "OverlayDirHash",
    fields: &[("Hash", "Hash", Ty::Str)],
};

/// A JSON value that does not have the shape of the Go type.
fn shape_error(what: &str, v: &Value) -> String {
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("stacker's entry has {kind} where {what} belongs")
}

fn value_of(ty: Ty, v: Option<&Value>) -> Result<GoValue, String> {
    let v = match v {
        None | Some(Value::Null) => return Ok(zero(ty)),
        Some(v) => v,
    };
    Ok(match ty {
        Ty::Str | Ty::PtrStr => GoValue::Str(
            v.as_str()
                .ok_or_else(|| shape_error("a string", v))?
                .to_string(),
        ),
        Ty::Int | Ty::PtrI64 => GoValue::I64(v.as_i64().ok_or_else(|| shape_error("an int", v))?),
        Ty::Bool => GoValue::Bool(v.as_bool().ok_or_else(|| shape_error("a bool", v))?),
        Ty::PtrU32 => GoValue::U32(
            v.as_u64()
                .and_then(|u| u32::try_from(u).ok())
                .ok_or_else(|| shape_error("a file mode", v))?,
        ),
        Ty::Bytes => {
            use base64::Engine as _;
            let s = v.as_str().ok_or_else(|| shape_error("base64 bytes", v))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| shape_error("base64 bytes", v))?;
            GoValue::Slice(bytes.into_iter().map(GoValue::U8).collect())
        }
        Ty::Slice(elem) => GoValue::Slice(
            v.as_array()
                .ok_or_else(|| shape_error("a list", v))?
                .iter()
                .map(|e| value_of(*elem, Some(e)))
                .collect::<Result<_, _>>()?,
        ),
        Ty::MapStr(elem) => GoValue::Map(
            v.as_object()
                .ok_or_else(|| shape_error("a map", v))?
                .iter()
                .map(|(k, e)| Ok((GoValue::Str(k.clone()), value_of(*elem, Some(e))?)))
                .collect::<Result<_, String>>()?,
        ),
        Ty::Ptr(s) | Ty::Struct(s) => struct_of(s.name, s.fields, v)?,
    })
}

fn zero(ty: Ty) -> GoValue {
    match ty {
        Ty::Str => GoValue::Str(String::new()),
        Ty::Int => GoValue::I64(0),
        Ty::Bool => GoValue::Bool(false),
        Ty::PtrU32 | Ty::PtrI64 | Ty::PtrStr | Ty::Ptr(_) => GoValue::Nil,
        Ty::Bytes | Ty::Slice(_) => GoValue::Slice(Vec::new()),
        Ty::MapStr(_) => GoValue::Map(Vec::new()),
        Ty::Struct(s) => GoValue::Struct(
            s.name,
            s.fields.iter().map(|(f, _, t)| (*f, zero(*t))).collect(),
        ),
    }
}

fn struct_of(
    name: &'static str,
    fields: &[(&'static str, &'static str, Ty)],
    v: &Value,
) -> Result<GoValue, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| shape_error(&format!("a {name}"), v))?;
    for key in obj.keys() {
        if !fields.iter().any(|(_, j, _)| j == key) {
            return Err(format!(
                "stacker's entry has a field {key:?} in a {name}, which this format's {name} \
                 does not have"
            ));
        }
    }
    let values = fields
        .iter()
        .map(|(f, j, t)| Ok((*f, value_of(*t, obj.get(*j))?)))
        .collect::<Result<_, String>>()?;
    Ok(GoValue::Struct(name, values))
}

fn layer_fields(shape: Shape) -> Vec<(&'static str, &'static str, Ty)> {
    if shape.version == 12 {
        return LAYER_12.fields.to_vec();
    }
    let mut fields = LAYER_13_COMMON.to_vec();
    fields.push(("Bom", "bom", Ty::Ptr(shape.bom)));
    if shape.version >= 14 {
        fields.push(("WasLegacyImport", "was_legacy_import", Ty::Bool));
    }
    if shape.version >= 16 {
        fields.push(("WasBom", "was_bom", Ty::Bool));
    }
    fields
}

/// The Go value of a manifests key: `LayerType` (a string in format 12; from 13 a struct of
/// `Type` and `Verity`, written `TYPE+BOOL`).
fn layer_type_of(version: u32, key: &str) -> Result<GoValue, String> {
    if version == 12 {
        return Ok(GoValue::Str(key.to_string()));
    }
    let mut parts = key.split('+');
    let ty = parts.next().unwrap_or_default().to_string();
    let verity = match parts.next() {
        None => false,
        Some("true" | "1" | "t" | "T" | "TRUE" | "True") => true,
        Some("false" | "0" | "f" | "F" | "FALSE" | "False") => false,
        Some(other) => return Err(format!("manifest layer type {key:?}: bad verity {other:?}")),
    };
    if parts.next().is_some() {
        return Err(format!("manifest layer type {key:?} has more than one '+'"));
    }
    Ok(GoValue::Struct(
        "LayerType",
        vec![
            ("Type", GoValue::Str(ty)),
            ("Verity", GoValue::Bool(verity)),
        ],
    ))
}

/// The Go value of a stacker `CacheEntry` given as JSON, for one shape.
fn entry_value(shape: Shape, entry: &Value) -> Result<GoValue, String> {
    let obj = entry
        .as_object()
        .ok_or_else(|| shape_error("a cache entry", entry))?;
    let known: &[&str] = if shape.version >= 15 {
        &[
            "Manifests",
            "Imports",
            "OverlayDirs",
            "Name",
            "Layer",
            "Base",
            "source_date_epoch",
        ]
    } else {
        &[
            "Manifests",
            "Imports",
            "OverlayDirs",
            "Name",
            "Layer",
            "Base",
        ]
    };
    if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!(
            "stacker's entry has a field {k:?} that format {} does not have",
            shape.version
        ));
    }
    let manifests = match obj.get("Manifests") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, d)| {
                Ok((
                    layer_type_of(shape.version, k)?,
                    value_of(Ty::Struct(shape.descriptor), Some(d))?,
                ))
            })
            .collect::<Result<_, String>>()?,
        Some(other) => return Err(shape_error("the manifests", other)),
    };
    let layer_fields = layer_fields(shape);
    let layer = match obj.get("Layer") {
        None | Some(Value::Null) => GoValue::Struct(
            "Layer",
            layer_fields
                .iter()
                .map(|(f, _, t)| (*f, zero(*t)))
                .collect(),
        ),
        Some(l) => struct_of("Layer", &layer_fields, l)?,
    };
    let mut fields = vec![
        ("Manifests", GoValue::Map(manifests)),
        (
            "Imports",
            value_of(Ty::MapStr(&Ty::Struct(&IMPORT_HASH)), obj.get("Imports"))?,
        ),
        (
            "OverlayDirs",
            value_of(
                Ty::MapStr(&Ty::Struct(&OVERLAY_DIR_HASH)),
                obj.get("OverlayDirs"),
            )?,
        ),
        ("Name", value_of(Ty::Str, obj.get("Name"))?),
        ("Layer", layer),
        ("Base", value_of(Ty::Str, obj.get("Base"))?),
    ];
    if shape.version >= 15 {
        fields.push((
            "SourceDateEpoch",
            value_of(Ty::PtrI64, obj.get("source_date_epoch"))?,
        ));
    }
    Ok(GoValue::Struct("CacheEntry", fields))
}

/// The shapes stacker releases of a format used (see the module doc); empty for a format this
/// module does not know.
fn shapes(version: u32) -> Vec<Shape> {
    let s = |descriptor, bom| Shape {
        version,
        descriptor,
        bom,
    };
    match version {
        12 => vec![s(&DESCRIPTOR_1_0, &BOM_OLD)],
        13 => vec![
            s(&DESCRIPTOR_1_1, &BOM_OLD),
            s(&DESCRIPTOR_1_1, &BOM),
            s(&DESCRIPTOR_1_1_DATA, &BOM_OLD),
            s(&DESCRIPTOR_1_1_DATA, &BOM),
        ],
        14 => vec![s(&DESCRIPTOR_1_1, &BOM), s(&DESCRIPTOR_1_1_DATA, &BOM)],
        15 | 16 => vec![s(&DESCRIPTOR_1_1, &BOM)],
        _ => Vec::new(),
    }
}

/// Whether `recorded` (a dependent's `Base`, decimal) is stacker's hash of the base entry
/// `entry` (its JSON as stored) in cache format `version`. `Err` when the entry does not have
/// the shape of that format's Go type, so the hash cannot be reproduced.
pub fn base_hash_matches(version: u32, entry: &Value, recorded: &str) -> Result<bool, String> {
    let Ok(recorded) = recorded.parse::<u64>() else {
        return Ok(false);
    };
    let mut last_err = None;
    let mut computed = false;
    for shape in shapes(version) {
        match entry_value(shape, entry) {
            Ok(v) => {
                computed = true;
                if hash(&v) == recorded {
                    return Ok(true);
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    match (computed, last_err) {
        (false, Some(e)) => Err(e),
        (false, None) => Err(format!(
            "no Go type of stacker cache format {version} is known"
        )),
        (true, _) => Ok(false),
    }
}

/// stacker's base hash of an entry (its JSON as stored) for the layers built on it, in cache
/// format `version`, as the stacker releases of the newest Go types of that format computed
/// it (the first shape; [`base_hash_matches`] tries every shape).
pub fn entry_hash(version: u32, entry: &Value) -> Result<u64, String> {
    let shape = *shapes(version)
        .first()
        .ok_or_else(|| format!("no Go type of stacker cache format {version} is known"))?;
    entry_value(shape, entry).map(|v| hash(&v))
}

/// hashstructure's hash of the zero `CacheEntry` of a format (stacker's
/// `TestCacheEntryChanged` vector), for the first shape of that format.
pub fn zero_entry_hash(version: u32) -> Option<u64> {
    let shape = *shapes(version).first()?;
    entry_value(shape, &Value::Object(Default::default()))
        .ok()
        .map(|v| hash(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// stacker's `TestCacheEntryChanged` vectors (`pkg/stacker/cache_test.go`, and
    /// `cache_test.go` at format 12), one per cache format.
    #[test]
    fn zero_entry_hashes_are_stackers() {
        for (version, expected) in [
            (12, 0x99dd_94c0_23d7_ccc6_u64),
            (13, 0x4ef4_3252_8243_e356),
            (14, 0xa266_96f3_3521_1127),
            (15, 0x717c_35e7_2019_12fb),
            (16, 0x9fa3_e20d_827f_5ae5),
        ] {
            assert_eq!(
                zero_entry_hash(version),
                Some(expected),
                "format {version}: {:#x?}",
                zero_entry_hash(version)
            );
        }
    }

    #[test]
    fn every_field_counts() {
        let base =
            serde_json::json!({"Name": "a", "Base": "", "Layer": {"from": {"type": "scratch"}}});
        let h = |v: &Value| hash(&entry_value(shapes(16)[0], v).unwrap());
        let mut other = base.clone();
        other["Name"] = "b".into();
        assert_ne!(h(&base), h(&other));
        let mut other = base.clone();
        other["Layer"]["run"] = serde_json::json!(["x"]);
        assert_ne!(h(&base), h(&other));
        let mut other = base.clone();
        other["source_date_epoch"] = 0.into();
        // A pointer to 0 and a nil pointer hash alike in hashstructure (both int64 0).
        assert_eq!(h(&base), h(&other));
    }
}
