//! The plan file: a JSON description of a build's layers for the `layercache` binary.
//!
//! A shell-driven builder cannot hand the library a [`Build`] value, so it writes one as JSON:
//!
//! ```json
//! {
//!   "builder": "mybuilder 2.3.0",
//!   "oci_layout": "oci",
//!   "rootfs_dir": "roots",
//!   "source_date_epoch": 1700000000,
//!   "layers": {
//!     "base": {
//!       "definition": {"from": {"type": "scratch"}, "run": ["make"]},
//!       "base": {"type": "scratch"},
//!       "imports": [{"key": "stacker://x/y.tar", "path": "imports/base/y.tar"}],
//!       "overlay_dirs": [{"key": "src", "source": "src",
//!                         "rootfs_path": "roots/base/overlay_dirs/src"}]
//!     },
//!     "app": {"definition": {"from": {"type": "built", "tag": "base"}},
//!             "base": {"type": "built", "layer": "base"}, "source_date_epoch": null}
//!   }
//! }
//! ```
//!
//! * Top level: `layers` (required, layer name → layer), `oci_layout` and `rootfs_dir` (where
//!   the outputs are: see below; checked at every hit, see [`crate::CacheConfig`]),
//!   `source_date_epoch` (optional; the default of every layer that does not set its own), and
//!   `builder` (optional; the builder's identity and version, e.g. `"stacker 1.1.0"`, which a
//!   hit requires to be unchanged: [`Build::builder`]).
//! * A layer: `base` (required), `definition` (required: any JSON; see below), `imports`,
//!   `overlay_dirs` (default empty), `source_date_epoch` (a number; `null` to have none even
//!   when the plan sets a default; absent to take the plan's), `build_only` (default false).
//!
//! **The definition is required.** It is what the builder builds the layer from (its `run`
//! lines, environment, ...), and a changed definition is the first thing a lookup checks: a
//! layer written without one would be compared as `null` and its changes never seen, so a
//! missing `definition` is refused, naming the layer. A builder that really has no definition
//! beyond the inputs writes `"definition": null` explicitly.
//!
//! **Where the outputs are is required.** A hit tells the builder to reuse outputs, so the
//! cache must be able to check that they still exist: a plan with any layer that is not
//! build-only must name `oci_layout` (its output blobs live there), and a plan with any
//! build-only layer must name `rootfs_dir` (its output is the directory `<rootfs_dir>/<layer>`).
//! A plan without them is refused.
//! * `base`: `{"type": "scratch"}`, `{"type": "built", "layer": NAME}`,
//!   `{"type": "tar", "path": FILE}`, `{"type": "oci" | "docker", "layout": DIR, "tag": TAG}`.
//! * An import: `key` (the URL as written in the definition), `path` (where it is on disk),
//!   `dest` (optional; an import with a destination is an input like any other, cached under
//!   its key and destination).
//! * An overlay dir: `key`, `source` (the directory whose content is cached) and `rootfs_path`
//!   (where the builder copied it while building; a hit on a version built here requires it to
//!   be a directory, see `docs/guarantees.md`).
//!
//! Relative paths (import `path`, overlay `source` and `rootfs_path`, tar `path`, oci/docker
//! `layout`, top-level `oci_layout` and `rootfs_dir`) are relative to the directory holding the
//! plan file, not to the working directory. Unknown fields are refused at every level, and a
//! layer name given twice is refused, so a typo is an error instead of a silently ignored
//! setting. The build is validated ([`Build::validate`]) when the plan is loaded.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use crate::config::CacheConfig;
use crate::error::{Error, Result};
use crate::fsread;
use crate::inputs::{Base, Build, Import, LayerInputs, OverlayDir};
use crate::path::escape_bytes;
use oci_spec::image::Descriptor;

/// A loaded, resolved and validated plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    path: PathBuf,
    oci_layout: Option<PathBuf>,
    rootfs_dir: Option<PathBuf>,
    source_date_epoch: Option<i64>,
    build: Build,
}

impl Plan {
    /// Reads, parses, resolves and validates the plan file at `path`.
    ///
    /// An unreadable file or invalid JSON (with its line and column) is [`Error::Parse`]; a
    /// path that is not a regular file (a FIFO, a device, a directory) is
    /// [`Error::WrongFileType`] and is never read; a file larger than
    /// [`fsread::PLAN_LIMIT`] (64 MiB) is [`Error::TooLarge`]; an invalid build is the error
    /// of [`Build::validate`] ([`Error::InvalidName`], [`Error::MissingBase`],
    /// [`Error::BaseCycle`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Plan> {
        let path = path.as_ref();
        let text = match fsread::read_capped_text("plan file", path, fsread::PLAN_LIMIT) {
            Ok(text) => text,
            Err(Error::Io { source, .. }) => {
                return Err(Error::Parse {
                    what: "plan file",
                    path: path.to_path_buf(),
                    detail: format!("cannot read it ({source}); check the path"),
                });
            }
            Err(e) => return Err(e),
        };
        Plan::parse(&text, path)
    }

    /// Parses a plan given as text; `path` is where it would be (relative paths in it resolve
    /// against its directory, and errors name it).
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Plan> {
        let path = path.as_ref();
        let raw: RawPlan = serde_json::from_str(text).map_err(|e| Error::Parse {
            what: "plan file",
            path: path.to_path_buf(),
            detail: format!("{e}; fix the plan (its format: docs/cli.md, \"The plan file\")"),
        })?;
        let parent = path.parent().unwrap_or(Path::new(""));
        let dir = std::path::absolute(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        })
        .map_err(|e| Error::io("cannot resolve the directory of", path, e))?;
        // Names, keys and bases are checked first (their errors are the more basic ones).
        let complete = raw.check_complete(path);
        let plan = raw.resolve(path, &dir);
        plan.build.validate()?;
        complete?;
        Ok(plan)
    }

    /// The plan file this plan was loaded from, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The build it describes, paths resolved and SOURCE_DATE_EPOCH defaults applied.
    pub fn build(&self) -> &Build {
        &self.build
    }

    /// The build, by value.
    pub fn into_build(self) -> Build {
        self.build
    }

    /// The OCI layout holding the layers' output blobs, resolved; `None` when not set.
    pub fn oci_layout(&self) -> Option<&Path> {
        self.oci_layout.as_deref()
    }

    /// The directory of per-layer rootfs directories, resolved; `None` when not set.
    pub fn rootfs_dir(&self) -> Option<&Path> {
        self.rootfs_dir.as_deref()
    }

    /// The plan-level SOURCE_DATE_EPOCH (the default of layers that set none).
    pub fn source_date_epoch(&self) -> Option<i64> {
        self.source_date_epoch
    }

    /// The cache configuration for a database at `db`, pruning with this plan's OCI layout and
    /// rootfs directory.
    pub fn cache_config(&self, db: impl Into<PathBuf>) -> CacheConfig {
        CacheConfig {
            db: db.into(),
            oci_layout: self.oci_layout.clone(),
            rootfs_dir: self.rootfs_dir.clone(),
            ..CacheConfig::default()
        }
    }
}

/// The plan as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    #[serde(default)]
    oci_layout: Option<PathBuf>,
    #[serde(default)]
    rootfs_dir: Option<PathBuf>,
    #[serde(default)]
    source_date_epoch: Option<i64>,
    #[serde(default)]
    builder: Option<String>,
    #[serde(deserialize_with = "unique_layers")]
    layers: BTreeMap<String, RawLayer>,
}

/// A layer as written. Mirrors [`LayerInputs`], refusing unknown fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayer {
    /// Absent: refused; `null`: the layer has none.
    #[serde(default, deserialize_with = "present_value")]
    definition: Option<serde_json::Value>,
    base: RawBase,
    #[serde(default)]
    imports: Vec<RawImport>,
    #[serde(default)]
    overlay_dirs: Vec<RawOverlayDir>,
    /// Absent: the plan's default; `null`: none; a number: that.
    #[serde(default, deserialize_with = "present")]
    source_date_epoch: Option<Option<i64>>,
    #[serde(default)]
    build_only: bool,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum RawBase {
    Built { layer: String },
    Tar { path: PathBuf },
    Oci { layout: PathBuf, tag: String },
    Docker { layout: PathBuf, tag: String },
    Scratch,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImport {
    key: String,
    path: PathBuf,
    #[serde(default)]
    dest: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverlayDir {
    key: String,
    source: PathBuf,
    rootfs_path: PathBuf,
}

/// Distinguishes a field given as `null` (`Some(None)`) from an absent one (`None`, via
/// `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

/// Distinguishes a `definition` given (even as `null`: `Some(Value::Null)`) from an absent one
/// (`None`, via `#[serde(default)]`). A key given twice in any object of the definition is
/// refused, naming it (serde_json would keep the last silently, and a hit would then vouch for
/// a definition the builder may read differently).
fn present_value<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<serde_json::Value>, D::Error> {
    use serde::de::DeserializeSeed;
    StrictValue { path: "definition" }.deserialize(d).map(Some)
}

/// A JSON value that refuses an object key given twice, at any depth; `path` names where it
/// is (`definition.env[0]`) in the error.
struct StrictValue<'p> {
    path: &'p str,
}

impl<'de> serde::de::DeserializeSeed<'de> for StrictValue<'_> {
    type Value = serde_json::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, out.len());
            match seq.next_element_seed(StrictValue { path: &path })? {
                Some(v) => out.push(v),
                None => return Ok(serde_json::Value::Array(out)),
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "key \"{}\" is given twice in {} (a definition is compared as written, so \
                     each key must appear once); remove one",
                    escape_bytes(key.as_bytes()),
                    self.path
                )));
            }
            let path = format!("{}.{}", self.path, escape_bytes(key.as_bytes()));
            let v = map.next_value_seed(StrictValue { path: &path })?;
            out.insert(key, v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// The `layers` object, refusing a layer name given twice (serde would keep the last).
fn unique_layers<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, RawLayer>, D::Error> {
    struct Layers;
    impl<'de> Visitor<'de> for Layers {
        type Value = BTreeMap<String, RawLayer>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of layers by name")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                if out.contains_key(&name) {
                    return Err(serde::de::Error::custom(format_args!(
                        "layer {name:?} is defined twice"
                    )));
                }
                let layer = map.next_value::<RawLayer>().map_err(|e| {
                    serde::de::Error::custom(format_args!(
                        "layer \"{}\": {e}",
                        escape_bytes(name.as_bytes())
                    ))
                })?;
                out.insert(name, layer);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Layers)
}

impl RawPlan {
    /// Refuses a layer without a definition, and a plan that does not say where its layers'
    /// outputs are (see the module doc).
    fn check_complete(&self, path: &Path) -> Result<()> {
        let refuse = |detail: String| Error::Parse {
            what: "plan file",
            path: path.to_path_buf(),
            detail,
        };
        for (name, l) in &self.layers {
            let name = escape_bytes(name.as_bytes());
            if l.definition.is_none() {
                return Err(refuse(format!(
                    "layer \"{name}\" has no \"definition\", so a change to it could never be \
                     seen; give the layer's definition (what the builder builds it from), or \
                     \"definition\": null if the builder has none"
                )));
            }
            if l.build_only && self.rootfs_dir.is_none() {
                return Err(refuse(format!(
                    "layer \"{name}\" is build-only, but the plan names no \"rootfs_dir\", so \
                     a hit could not check that its rootfs still exists; add \"rootfs_dir\""
                )));
            }
            if !l.build_only && self.oci_layout.is_none() {
                return Err(refuse(format!(
                    "layer \"{name}\" has outputs (it is not build-only), but the plan names no \
                     \"oci_layout\", so a hit could not check that its output blobs still \
                     exist; add \"oci_layout\""
                )));
            }
        }
        Ok(())
    }

    fn resolve(self, path: &Path, dir: &Path) -> Plan {
        let at = |p: PathBuf| dir.join(p);
        let default_epoch = self.source_date_epoch;
        let layers = self
            .layers
            .into_iter()
            .map(|(name, l)| {
                let base = match l.base {
                    RawBase::Built { layer } => Base::Built { layer },
                    RawBase::Tar { path } => Base::Tar { path: at(path) },
                    RawBase::Oci { layout, tag } => Base::Oci {
                        layout: at(layout),
                        tag,
                    },
                    RawBase::Docker { layout, tag } => Base::Docker {
                        layout: at(layout),
                        tag,
                    },
                    RawBase::Scratch => Base::Scratch,
                };
                let inputs = LayerInputs {
                    definition: l.definition.unwrap_or_default(),
                    base,
                    imports: l
                        .imports
                        .into_iter()
                        .map(|i| Import {
                            key: i.key,
                            path: at(i.path),
                            dest: i.dest,
                        })
                        .collect(),
                    overlay_dirs: l
                        .overlay_dirs
                        .into_iter()
                        .map(|o| OverlayDir {
                            key: o.key,
                            source: at(o.source),
                            rootfs_path: at(o.rootfs_path),
                        })
                        .collect(),
                    source_date_epoch: l.source_date_epoch.unwrap_or(default_epoch),
                    build_only: l.build_only,
                    uncacheable: None,
                };
                (name, inputs)
            })
            .collect();
        Plan {
            path: path.to_path_buf(),
            oci_layout: self.oci_layout.map(at),
            rootfs_dir: self.rootfs_dir.map(at),
            source_date_epoch: default_epoch,
            build: Build {
                layers,
                builder: self.builder,
            },
        }
    }
}

/// Reads a manifests file: a JSON object of layer type (`"tar"`, `"squashfs"`, ...) → the OCI
/// descriptor of that output, as `layercache put --manifests` takes it.
///
/// Refused, each as [`Error::Parse`] naming the file (and the layer type where there is one):
/// invalid JSON or descriptors, an empty layer type, a layer type given twice (serde would keep
/// the last silently), and a digest that is not `sha256:` followed by 64 lowercase hex digits.
/// An empty object `{}` is allowed here (a build-only layer has no outputs; the cache decides
/// whether the layer may have none). The file must be a regular file of at most
/// [`fsread::MANIFESTS_LIMIT`] (16 MiB), else [`Error::WrongFileType`] or [`Error::TooLarge`];
/// a missing or unreadable file is [`Error::Parse`].
pub fn read_manifests(path: impl AsRef<Path>) -> Result<BTreeMap<String, Descriptor>> {
    let path = path.as_ref();
    let text = match fsread::read_capped_text("manifests file", path, fsread::MANIFESTS_LIMIT) {
        Ok(text) => text,
        Err(Error::Io { source, .. }) => {
            return Err(Error::Parse {
                what: "manifests file",
                path: path.to_path_buf(),
                detail: format!("cannot read it ({source}); check the manifests file's path"),
            });
        }
        Err(e) => return Err(e),
    };
    parse_manifests(&text, path)
}

/// Parses the text of a manifests file ([`read_manifests`]); `path` names it in errors.
pub fn parse_manifests(text: &str, path: impl AsRef<Path>) -> Result<BTreeMap<String, Descriptor>> {
    let path = path.as_ref();
    let parse = |detail: String| Error::Parse {
        what: "manifests file",
        path: path.to_path_buf(),
        detail,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let manifests = UniqueManifests::deserialize(&mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| {
            parse(format!(
                "{e}; expected an object of layer type -> OCI descriptor \
                 ({{\"mediaType\", \"digest\": \"sha256:<64 hex>\", \"size\"}})"
            ))
        })?
        .0;
    for (layer_type, d) in &manifests {
        if layer_type.is_empty() {
            return Err(parse(format!(
                "the layer type {layer_type:?} is empty; name each layer type"
            )));
        }
        let digest = d.digest().to_string();
        if !is_sha256_digest(&digest) {
            return Err(parse(format!(
                "the digest of layer type {:?} is {:?}, not sha256: followed by 64 lowercase \
                 hex digits; give the sha256 digest of the output blob",
                escape_bytes(layer_type.as_bytes()),
                escape_bytes(digest.as_bytes())
            )));
        }
    }
    Ok(manifests)
}

/// `sha256:` followed by exactly 64 lowercase hex digits.
fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The manifests object, refusing a layer type given twice.
struct UniqueManifests(BTreeMap<String, Descriptor>);

impl<'de> Deserialize<'de> for UniqueManifests {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Manifests;
        impl<'de> Visitor<'de> for Manifests {
            type Value = UniqueManifests;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of layer type -> OCI descriptor")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(layer_type) = map.next_key::<String>()? {
                    if out.contains_key(&layer_type) {
                        return Err(serde::de::Error::custom(format_args!(
                            "layer type {:?} is given twice",
                            escape_bytes(layer_type.as_bytes())
                        )));
                    }
                    let descriptor = map.next_value::<Descriptor>()?;
                    out.insert(layer_type, descriptor);
                }
                Ok(UniqueManifests(out))
            }
        }
        d.deserialize_map(Manifests)
    }
}
