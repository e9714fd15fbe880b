//! The stacker directory layout, mapped onto layer inputs.
//!
//! stacker (the seed, `shared/seed/`) does not tell its cache where a layer's inputs are: the
//! cache derives every path from three directories and the layer definition. [`StackerLayout`]
//! does the same derivation and produces the [`LayerInputs`] the rest of this crate works on, so
//! a builder that keeps stacker's directories can use the cache without a plan file.
//!
//! | input | cache key | on-disk path |
//! |---|---|---|
//! | import | the import's `path` (its URL) as written | `<stacker_dir>/imports/<layer>/<basename of the import>` |
//! | overlay dir | `source` as written | source: `source`, made absolute against the stackerfile's directory; rootfs copy: `<rootfs_dir>/<layer>/overlay_dirs/<basename of source>/<dest>` |
//! | `tar` base | — | `<stacker_dir>/layer-bases/<basename of url>` |
//! | `oci` / `docker` base | — | layout `<stacker_dir>/layer-bases/oci`, tag from the URL (below) |
//! | `built` base | — | the layer named by `from.tag` |
//!
//! **Base names** are taken like Go's `path.Base`, which stacker uses: trailing `/` are
//! dropped and the last `/`-separated element is kept (`https://example.com/x.tar?v=1` →
//! `x.tar?v=1`). A base name that is empty, `.`, `..` or `/`, or that holds a NUL byte, cannot
//! name a file under `imports/<layer>/` or `layer-bases/` and is an [`Error::InvalidName`]
//! (stacker would silently read the directory itself).
//!
//! **An overlay dir's `dest`** is joined component by component: empty and `.` components are
//! skipped, `..` removes the previous component, and a `..` that would leave the
//! `overlay_dirs/<basename>` directory is an [`Error::InvalidName`] (Go's `path.Join` would
//! silently clean it out of that directory).
//!
//! **Tags of `oci` and `docker` bases** follow stacker's `ImageSource.ParseTag`, because stacker
//! copies the image into `layer-bases/oci` under exactly that name and the cache must resolve
//! the same name:
//!
//! * `oci`: the url has the form `<layout path>:<tag>` (an `oci:` prefix, as in the
//!   containers-image form `oci:<path>:<tag>`, is dropped first); the tag is everything after the
//!   first `:`. `/images/layout:1.0` → `1.0`. A url without `:` is an error.
//! * `docker`: the *image name*, not the version after the last `:` — stacker names the copy
//!   in `layer-bases/oci` after the image. After `docker://`, if the rest has a `/`, the tag is
//!   the base name of the path up to its first `:` (`docker://docker.io/library/ubuntu:22.04` →
//!   `ubuntu`, `docker://localhost:5000/team/app:1` → `app`); otherwise it is the host part up
//!   to its first `:` (`docker://ubuntu:latest` → `ubuntu`). A url without `://` is taken as a
//!   path (`ubuntu:latest` → `ubuntu`). Two urls that differ only in their version still
//!   differ in the layer definition, so changing the version is a miss all the same.
//!
//! **Paths are relative to the stackerfile**, as in stacker (`Layer.absolutify`): a relative
//! overlay dir source is joined to [`StackerLayout::stackerfile_dir`] and cleaned lexically
//! (Go's `filepath.Abs`), so the directory hashed is the one stacker copies, whatever the
//! process's working directory. Imports need no such step here: their on-disk copy is found by
//! base name under `<stacker_dir>/imports/<layer>/`. Cache keys stay the paths as written (a
//! key never holds an absolute path, so moving the project keeps its cache).
//!
//! **The definition compared** is the whole layer as given (every field, including those this
//! module does not read; kept in [`StackerLayer::definition`]), as the seed compares the whole
//! layer, plus the platform: newer stacker defaults a layer's `os` and `arch` to its own
//! platform, so [`StackerLayout::layer_inputs`] adds `"os"` and `"arch"` from
//! [`StackerLayout::os`] / [`StackerLayout::arch`] (the host's, in OCI names, by default) to a
//! definition that does not set them. A cache therefore never hits across platforms.
//!
//! **Binds** (`binds`: a list of `"source -> dest"` or `"path"` strings, or `{source, dest}`
//! objects, `dest` defaulting to `source`, as stacker parses them) mount host directories into
//! the build that the cache never sees; stacker always rebuilds such a layer. A layer with binds
//! gets [`LayerInputs::uncacheable`] = `"layer has binds"`: it always misses
//! ([`crate::MissReason::NotCacheable`]) and is never put.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::CacheConfig;
use crate::error::{Error, Result};
use crate::inputs::{Base, Build, Import, LayerInputs, OverlayDir};
use crate::path::{escape_bytes, validate_layer_name};

/// The kind of a layer's base (`from.type` in a stackerfile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FromType {
    /// Another layer of the same stackerfile, named by `from.tag`.
    Built,
    /// A tarball, downloaded by stacker to `layer-bases/<basename of url>`.
    Tar,
    /// An image in an OCI layout, copied by stacker into `layer-bases/oci`.
    Oci,
    /// An image from a registry, copied by stacker into `layer-bases/oci`.
    Docker,
    /// No base.
    Scratch,
}

/// The `from` section of a stacker layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackerFrom {
    /// The base kind (`type`).
    #[serde(rename = "type")]
    pub kind: FromType,
    /// The base's URL (tar, oci, docker).
    #[serde(default)]
    pub url: Option<String>,
    /// The base layer's name (built).
    #[serde(default)]
    pub tag: Option<String>,
}

/// One import of a stacker layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackerImport {
    /// The import as written (a URL or path); its cache key.
    pub path: String,
    /// Where the builder copies it in the rootfs; imports with a destination are not cached, as
    /// in stacker. An empty `dest` counts as none (Go's zero value).
    pub dest: Option<String>,
}

/// One bind of a stacker layer: a host directory mounted into the build container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackerBind {
    /// The host path.
    pub source: String,
    /// Where it is mounted in the container (the source's path when not given).
    pub dest: String,
}

/// One overlay dir of a stacker layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackerOverlayDir {
    /// The source directory as written; its cache key and the directory whose content is
    /// cached. A relative source is relative to the process's working directory.
    pub source: String,
    /// Where it goes in the layer's rootfs (default: the rootfs root).
    #[serde(default)]
    pub dest: String,
}

/// A stacker layer definition: the fields the cache derives inputs from, plus the whole
/// definition as it was given.
///
/// Built from JSON with [`StackerLayer::from_definition`] or through serde (it deserializes from
/// the definition and serializes back to it). The parsed fields are views of `definition`;
/// `definition` is what the cache compares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub struct StackerLayer {
    /// The base (`from`).
    pub from: StackerFrom,
    /// Imports (`imports`, followed by the legacy `import`).
    pub imports: Vec<StackerImport>,
    /// Overlay dirs (`overlay_dirs`).
    pub overlay_dirs: Vec<StackerOverlayDir>,
    /// `build_only`: the layer is kept as a rootfs directory and never exported.
    pub build_only: bool,
    /// Binds (`binds`); a layer with any is not cacheable (see the module doc).
    pub binds: Vec<StackerBind>,
    /// The layer definition exactly as given, every field kept.
    pub definition: serde_json::Value,
}

/// An import as a stackerfile may write it: a string, or an object with `path` and `dest`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ImportSpec {
    Url(String),
    Full {
        path: String,
        #[serde(default)]
        dest: Option<String>,
    },
}

/// One item or a list of them (stacker accepts both for imports).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The fields read from a definition; everything else is only kept.
#[derive(Deserialize)]
struct Fields {
    from: StackerFrom,
    #[serde(default)]
    imports: Option<OneOrMany<ImportSpec>>,
    #[serde(default)]
    import: Option<OneOrMany<ImportSpec>>,
    #[serde(default)]
    overlay_dirs: Option<Vec<StackerOverlayDir>>,
    #[serde(default)]
    build_only: Option<bool>,
    #[serde(default)]
    binds: Option<Vec<BindSpec>>,
}

/// A bind as a stackerfile may write it: `"path"`, `"source -> dest"`, or `{source, dest}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum BindSpec {
    Text(String),
    Full {
        #[serde(default)]
        source: String,
        #[serde(default)]
        dest: String,
    },
}

impl BindSpec {
    /// The bind, checked as stacker checks it.
    fn into_bind(self) -> Result<StackerBind, serde_json::Error> {
        use serde::de::Error as _;
        match self {
            BindSpec::Full { source, .. } if source.is_empty() => Err(serde_json::Error::custom(
                "a bind needs a non-empty \"source\"",
            )),
            BindSpec::Full { source, dest } => Ok(StackerBind {
                dest: if dest.is_empty() {
                    source.clone()
                } else {
                    dest
                },
                source,
            }),
            BindSpec::Text(text) => {
                let tokens: Vec<&str> = text.split_whitespace().collect();
                match tokens.as_slice() {
                    [path] => Ok(StackerBind {
                        source: path.to_string(),
                        dest: path.to_string(),
                    }),
                    [source, "->", dest] => Ok(StackerBind {
                        source: source.to_string(),
                        dest: dest.to_string(),
                    }),
                    _ => Err(serde_json::Error::custom(format_args!(
                        "invalid bind {text:?}: write \"source -> dest\" or \"path\""
                    ))),
                }
            }
        }
    }
}

impl StackerLayer {
    /// Parses a layer definition (the JSON form of one layer of a stackerfile), keeping it
    /// whole as [`StackerLayer::definition`]. A bind without a source, or a bind string that
    /// is neither `"path"` nor `"source -> dest"`, is an error, as in stacker.
    pub fn from_definition(definition: serde_json::Value) -> Result<Self, serde_json::Error> {
        let fields = Fields::deserialize(&definition)?;
        let binds = fields
            .binds
            .unwrap_or_default()
            .into_iter()
            .map(BindSpec::into_bind)
            .collect::<Result<Vec<_>, _>>()?;
        let imports = fields
            .imports
            .into_iter()
            .chain(fields.import)
            .flat_map(OneOrMany::into_vec)
            .map(|spec| match spec {
                ImportSpec::Url(path) => StackerImport { path, dest: None },
                ImportSpec::Full { path, dest } => StackerImport {
                    path,
                    dest: dest.filter(|d| !d.is_empty()),
                },
            })
            .collect();
        Ok(StackerLayer {
            from: fields.from,
            imports,
            overlay_dirs: fields.overlay_dirs.unwrap_or_default(),
            build_only: fields.build_only.unwrap_or(false),
            binds,
            definition,
        })
    }
}

impl TryFrom<serde_json::Value> for StackerLayer {
    type Error = serde_json::Error;

    fn try_from(value: serde_json::Value) -> Result<Self, Self::Error> {
        StackerLayer::from_definition(value)
    }
}

impl From<StackerLayer> for serde_json::Value {
    fn from(layer: StackerLayer) -> Self {
        layer.definition
    }
}

/// stacker's directories: the stackerfile's directory (relative paths in layers are relative
/// to it), where stacker keeps imports and base images, the layers' root filesystems, and the
/// OCI layout the built layers are written to; and the platform the build is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackerLayout {
    /// The directory holding the stackerfile: relative overlay dir sources are resolved
    /// against it (give it absolute; a relative one is taken against the working directory).
    pub stackerfile_dir: PathBuf,
    /// stacker's state directory (`stacker_dir`, `.stacker` by default): holds `imports/` and
    /// `layer-bases/`.
    pub stacker_dir: PathBuf,
    /// The directory of the layers' root filesystems (`rootfs_dir`, `roots` by default).
    pub rootfs_dir: PathBuf,
    /// The OCI layout the built layers are written to (`oci_dir`, `oci` by default); the cache
    /// prunes entries whose blobs are gone from it.
    pub oci_dir: PathBuf,
    /// The OS the build is for, in OCI / Go names (`linux`); the host's by default
    /// ([`host_platform`]). Put into a definition that sets no `os`.
    pub os: String,
    /// The architecture the build is for, in OCI / Go names (`amd64`, `arm64`); the host's
    /// by default ([`host_platform`]). Put into a definition that sets no `arch`.
    pub arch: String,
}

/// The host's OS and architecture in OCI / Go names (`GOOS`, `GOARCH`), as stacker defaults
/// them: Rust's `x86_64` is `amd64`, `aarch64` is `arm64`, `x86` is `386`, `macos` is
/// `darwin`; other names are the same in both (`linux`, `s390x`, `riscv64`).
pub fn host_platform() -> (String, String) {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "loongarch64" => "loong64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        other => other,
    };
    (os.to_string(), arch.to_string())
}

impl StackerLayout {
    /// A layout from the stackerfile's directory and stacker's three directories, for the
    /// host's platform ([`host_platform`]; change it with [`StackerLayout::with_platform`]).
    pub fn new(
        stackerfile_dir: impl Into<PathBuf>,
        stacker_dir: impl Into<PathBuf>,
        rootfs_dir: impl Into<PathBuf>,
        oci_dir: impl Into<PathBuf>,
    ) -> Self {
        let (os, arch) = host_platform();
        StackerLayout {
            stackerfile_dir: stackerfile_dir.into(),
            stacker_dir: stacker_dir.into(),
            rootfs_dir: rootfs_dir.into(),
            oci_dir: oci_dir.into(),
            os,
            arch,
        }
    }

    /// stacker's default layout for a stackerfile in a project directory: `.stacker`, `roots`
    /// and `oci` beside it.
    pub fn in_project(dir: &Path) -> Self {
        StackerLayout::new(
            dir,
            dir.join(".stacker"),
            dir.join("roots"),
            dir.join("oci"),
        )
    }

    /// The same layout for a build for another platform (`os`, `arch` in OCI names).
    pub fn with_platform(mut self, os: impl Into<String>, arch: impl Into<String>) -> Self {
        self.os = os.into();
        self.arch = arch.into();
        self
    }

    /// Where an overlay dir's source is on disk: as written when absolute (or a URL), else
    /// joined to the stackerfile's directory and cleaned lexically, as stacker does.
    pub fn overlay_source_path(&self, source: &str) -> PathBuf {
        let path = Path::new(source);
        if path.is_absolute() || source.contains("://") {
            return path.to_path_buf();
        }
        let joined = self.stackerfile_dir.join(path);
        let base = if joined.is_absolute() {
            joined
        } else {
            std::path::absolute(&joined).unwrap_or(joined)
        };
        clean(&base)
    }

    /// The definition the cache compares for `layer`: its definition with `os` and `arch`
    /// added from this layout when it does not set them (a definition that is not an object
    /// is kept as it is).
    pub fn canonical_definition(&self, layer: &StackerLayer) -> serde_json::Value {
        let mut definition = layer.definition.clone();
        if let serde_json::Value::Object(map) = &mut definition {
            map.entry("os")
                .or_insert_with(|| serde_json::Value::String(self.os.clone()));
            map.entry("arch")
                .or_insert_with(|| serde_json::Value::String(self.arch.clone()));
        }
        definition
    }

    /// The OCI layout holding the built layers' blobs (for [`CacheConfig::oci_layout`]).
    pub fn oci_layout(&self) -> &Path {
        &self.oci_dir
    }

    /// The directory of the layers' root filesystems (for [`CacheConfig::rootfs_dir`]).
    pub fn rootfs_dir(&self) -> &Path {
        &self.rootfs_dir
    }

    /// A cache configuration for a database file, pruning against this layout's OCI layout and
    /// rootfs directory.
    pub fn cache_config(&self, db: impl Into<PathBuf>) -> CacheConfig {
        CacheConfig {
            db: db.into(),
            oci_layout: Some(self.oci_dir.clone()),
            rootfs_dir: Some(self.rootfs_dir.clone()),
            ..CacheConfig::default()
        }
    }

    /// `<stacker_dir>/layer-bases`: where stacker keeps base tarballs and images.
    pub fn layer_bases_dir(&self) -> PathBuf {
        self.stacker_dir.join("layer-bases")
    }

    /// `<stacker_dir>/layer-bases/oci`: the OCI layout oci and docker bases are copied into.
    pub fn bases_oci_layout(&self) -> PathBuf {
        self.layer_bases_dir().join("oci")
    }

    /// `<stacker_dir>/imports/<layer>/<basename of the import>`: where stacker puts an import.
    pub fn import_path(&self, layer: &str, import: &str) -> Result<PathBuf> {
        validate_layer_name(layer)?;
        let name = file_base_name("import", import)?;
        Ok(self.stacker_dir.join("imports").join(layer).join(name))
    }

    /// `<rootfs_dir>/<layer>/overlay_dirs/<basename of source>/<dest>`: where stacker copies an
    /// overlay dir in the layer's rootfs.
    pub fn overlay_rootfs_path(&self, layer: &str, source: &str, dest: &str) -> Result<PathBuf> {
        validate_layer_name(layer)?;
        let name = file_base_name("overlay_dir source", source)?;
        let mut path = self.rootfs_dir.join(layer).join("overlay_dirs").join(name);
        let mut depth = 0usize;
        for component in dest.split('/') {
            match component {
                "" | "." => {}
                ".." if depth == 0 => {
                    return Err(Error::InvalidName {
                        what: "overlay_dir dest",
                        value: escape_bytes(dest.as_bytes()),
                        why: "its '..' leaves the overlay dir's directory in the rootfs",
                    });
                }
                ".." => {
                    path.pop();
                    depth -= 1;
                }
                c if c.contains('\0') => {
                    return Err(Error::InvalidName {
                        what: "overlay_dir dest",
                        value: escape_bytes(dest.as_bytes()),
                        why: "it contains a NUL byte",
                    });
                }
                c => {
                    path.push(c);
                    depth += 1;
                }
            }
        }
        Ok(path)
    }

    /// `<stacker_dir>/layer-bases/<basename of url>`: where stacker downloads a tar base.
    pub fn tarball_path(&self, url: &str) -> Result<PathBuf> {
        let name = file_base_name("tar base url", url)?;
        Ok(self.layer_bases_dir().join(name))
    }

    /// The base of a layer named `layer` (used in errors).
    pub fn base(&self, layer: &str, from: &StackerFrom) -> Result<Base> {
        let missing = |field: &str| Error::Base {
            layer: layer.to_string(),
            detail: format!(
                "a {} base needs `from.{field}`; add it to the layer definition",
                from_type_name(from.kind)
            ),
        };
        let url = || {
            from.url
                .as_deref()
                .filter(|u| !u.is_empty())
                .ok_or_else(|| missing("url"))
        };
        Ok(match from.kind {
            FromType::Scratch => Base::Scratch,
            FromType::Built => Base::Built {
                layer: from
                    .tag
                    .clone()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| missing("tag"))?,
            },
            FromType::Tar => Base::Tar {
                path: self.tarball_path(url()?)?,
            },
            FromType::Oci => Base::Oci {
                layout: self.bases_oci_layout(),
                tag: oci_tag(layer, url()?)?,
            },
            FromType::Docker => Base::Docker {
                layout: self.bases_oci_layout(),
                tag: docker_tag(layer, url()?)?,
            },
        })
    }

    /// The cache inputs of the stacker layer `name`.
    pub fn layer_inputs(
        &self,
        name: &str,
        layer: &StackerLayer,
        source_date_epoch: Option<i64>,
    ) -> Result<LayerInputs> {
        validate_layer_name(name)?;
        let base = self.base(name, &layer.from)?;
        let imports = layer
            .imports
            .iter()
            .map(|i| {
                Ok(Import {
                    key: i.path.clone(),
                    path: self.import_path(name, &i.path)?,
                    dest: i.dest.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let overlay_dirs = layer
            .overlay_dirs
            .iter()
            .map(|o| {
                Ok(OverlayDir {
                    key: o.source.clone(),
                    source: self.overlay_source_path(&o.source),
                    rootfs_path: self.overlay_rootfs_path(name, &o.source, &o.dest)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LayerInputs {
            definition: self.canonical_definition(layer),
            base,
            imports,
            overlay_dirs,
            source_date_epoch,
            build_only: layer.build_only,
            uncacheable: (!layer.binds.is_empty()).then(|| "layer has binds".to_string()),
        })
    }

    /// The inputs of every layer of a stackerfile, checked as a whole (names, keys, built
    /// bases that exist, no cycle).
    pub fn build(
        &self,
        layers: &BTreeMap<String, StackerLayer>,
        source_date_epoch: Option<i64>,
    ) -> Result<Build> {
        let mut build = Build::new();
        for (name, layer) in layers {
            build.add(
                name.clone(),
                self.layer_inputs(name, layer, source_date_epoch)?,
            );
        }
        build.validate()?;
        Ok(build)
    }
}

/// `path` with `.` removed and `..` applied lexically (Go's `filepath.Clean` of an absolute
/// path: `..` at the root stays at the root).
fn clean(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn from_type_name(kind: FromType) -> &'static str {
    match kind {
        FromType::Built => "built",
        FromType::Tar => "tar",
        FromType::Oci => "oci",
        FromType::Docker => "docker",
        FromType::Scratch => "scratch",
    }
}

/// The last element of a `/`-separated path, as Go's `path.Base` takes it.
fn go_base_name(path: &str) -> &str {
    if path.is_empty() {
        return ".";
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/";
    }
    match trimmed.rfind('/') {
        Some(i) => trimmed.get(i + 1..).unwrap_or(trimmed),
        None => trimmed,
    }
}

/// The base name of `value`, refused when it cannot name a file in a directory.
fn file_base_name<'a>(what: &'static str, value: &'a str) -> Result<&'a str> {
    let name = go_base_name(value);
    let why = match name {
        "" | "." | ".." | "/" => {
            Some("its base name is empty, '.', '..' or '/', so it names no file")
        }
        n if n.contains('\0') => Some("it contains a NUL byte"),
        _ => None,
    };
    match why {
        Some(why) => Err(Error::InvalidName {
            what,
            value: escape_bytes(value.as_bytes()),
            why,
        }),
        None => Ok(name),
    }
}

/// The tag of an `oci` base url (`[oci:]<path>:<tag>`): everything after the first `:`.
pub fn oci_tag(layer: &str, url: &str) -> Result<String> {
    let rest = url.strip_prefix("oci:").unwrap_or(url);
    match rest.split_once(':') {
        Some((_, tag)) if !tag.is_empty() => Ok(tag.to_string()),
        _ => Err(Error::Base {
            layer: layer.to_string(),
            detail: format!(
                "oci base url {:?} has no tag; write it as <layout path>:<tag>",
                escape_bytes(url.as_bytes())
            ),
        }),
    }
}

/// The tag under which stacker stores a `docker` base in `layer-bases/oci`: the image name
/// (see the module doc).
pub fn docker_tag(layer: &str, url: &str) -> Result<String> {
    let before_colon = |s: &str| s.split(':').next().unwrap_or_default().to_string();
    let tag = match url.split_once("://") {
        None => go_base_name(&before_colon(url)).to_string(),
        Some((_, rest)) => match rest.split_once('/') {
            Some((_, path)) => go_base_name(&before_colon(&format!("/{path}"))).to_string(),
            None => before_colon(rest),
        },
    };
    if matches!(tag.as_str(), "" | "." | ".." | "/") {
        return Err(Error::Base {
            layer: layer.to_string(),
            detail: format!(
                "docker base url {:?} names no image; write it as docker://[host/]name[:version]",
                escape_bytes(url.as_bytes())
            ),
        });
    }
    Ok(tag)
}
