//! What a builder tells the cache about a layer: its definition, base, imports, overlay dirs,
//! SOURCE_DATE_EPOCH and build_only flag; and a whole build's layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::path::{escape_bytes, validate_layer_name};

/// The base a layer is built on (`Scratch` by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Base {
    /// Another layer of the same build. It must itself hit, and its entry must be the one this
    /// layer was built on.
    Built {
        /// Name of the base layer.
        layer: String,
    },
    /// A tarball; its blake3 digest is the base hash.
    Tar {
        /// Path of the tarball on disk.
        path: PathBuf,
    },
    /// An image in a local OCI layout; the manifest digest its tag resolves to is the base hash.
    Oci {
        /// The OCI image layout directory (holding `index.json`).
        layout: PathBuf,
        /// The tag (`org.opencontainers.image.ref.name`).
        tag: String,
    },
    /// A docker image pulled into a local OCI layout; resolved like [`Base::Oci`].
    Docker {
        /// The OCI image layout directory (holding `index.json`).
        layout: PathBuf,
        /// The tag (`org.opencontainers.image.ref.name`).
        tag: String,
    },
    /// No base.
    #[default]
    Scratch,
}

impl Base {
    /// The kind recorded in an entry.
    pub fn kind(&self) -> crate::schema::BaseKind {
        use crate::schema::BaseKind;
        match self {
            Base::Built { .. } => BaseKind::Built,
            Base::Tar { .. } => BaseKind::Tar,
            Base::Oci { .. } => BaseKind::Oci,
            Base::Docker { .. } => BaseKind::Docker,
            Base::Scratch => BaseKind::Scratch,
        }
    }

    /// The reference recorded in an entry: base layer name, tarball file name, or tag (never an
    /// absolute path).
    pub fn reference(&self) -> String {
        match self {
            Base::Built { layer } => layer.clone(),
            // The tarball's file name, as stacker keys it (`layer-bases/<basename>`): moving the
            // build directory must not change the reference; its content is the base hash.
            Base::Tar { path } => escape_bytes(
                path.file_name()
                    .unwrap_or(path.as_os_str())
                    .as_encoded_bytes(),
            ),
            Base::Oci { tag, .. } | Base::Docker { tag, .. } => tag.clone(),
            Base::Scratch => String::new(),
        }
    }
}

/// An import of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Import {
    /// The import as written in the layer definition (its URL); the key it is cached under.
    pub key: String,
    /// Where the imported file or directory is on disk.
    pub path: PathBuf,
    /// Where the builder copies the import in the rootfs, if not the default place. It is an
    /// input like any other import (stacker does not hash it; we do): the same key imported to
    /// two destinations is two sources.
    #[serde(default)]
    pub dest: Option<String>,
}

/// An overlay dir of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayDir {
    /// The source directory as written in the definition; the key it is cached under.
    pub key: String,
    /// The source directory on disk, whose content is cached.
    pub source: PathBuf,
    /// Where the builder copied it in the rootfs while building: an output of building here, so
    /// a hit on a version built on this machine requires it to be a directory (a version pulled
    /// from a registry does not; see `docs/guarantees.md`).
    pub rootfs_path: PathBuf,
}

/// Everything the cache needs to know about one layer. `..Default::default()` fills what a
/// layer does not set: a `scratch` base, no sources, no SOURCE_DATE_EPOCH, cacheable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerInputs {
    /// The layer definition (any JSON value); compared in canonical form.
    #[serde(default)]
    pub definition: serde_json::Value,
    /// The base.
    pub base: Base,
    /// Imports.
    #[serde(default)]
    pub imports: Vec<Import>,
    /// Overlay dirs.
    #[serde(default)]
    pub overlay_dirs: Vec<OverlayDir>,
    /// SOURCE_DATE_EPOCH of this build, if set.
    #[serde(default)]
    pub source_date_epoch: Option<i64>,
    /// A build-only layer is never exported; it is kept as a rootfs directory.
    #[serde(default)]
    pub build_only: bool,
    /// `Some(why)` when the layer must never be cached, because something it is built from is
    /// invisible to the cache (e.g. `"layer has binds"`: a stacker layer that bind-mounts host
    /// directories, which stacker itself always rebuilds). A lookup of such a layer misses with
    /// [`crate::MissReason::NotCacheable`] and a put of it is refused.
    #[serde(default)]
    pub uncacheable: Option<String>,
}

impl LayerInputs {
    /// The definition in canonical JSON (sorted keys, no whitespace): what a version stores
    /// and what its digest is taken over.
    pub(crate) fn definition_json(&self) -> Vec<u8> {
        canonical_json(&self.definition)
    }

    /// The definition digest: blake3 of [`LayerInputs::definition_json`]. Two definitions that
    /// differ only in key order or whitespace have the same digest.
    pub(crate) fn definition_digest(&self) -> [u8; 32] {
        *blake3::hash(&self.definition_json()).as_bytes()
    }
}

/// The layers of one build, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Build {
    /// Layers by name.
    pub layers: BTreeMap<String, LayerInputs>,
    /// The builder's identity and version (e.g. `"stacker 1.1.0"`), as cargo puts the compiler
    /// version into every fingerprint: a builder whose own behaviour changed can need a
    /// rebuild with identical inputs, so a hit requires the builder recorded at put to be this
    /// one ([`crate::MissReason::BuilderChanged`]). `None`: the builder does not say.
    #[serde(default)]
    pub builder: Option<String>,
}

impl Build {
    /// The order a build runs in: the layers named in `only` (every layer when it is empty)
    /// and, with `with_bases`, the built bases below them, each built base before the layers
    /// built on it, chains taken by name. Without `with_bases` only the named layers are
    /// listed, still bases first. A name the build does not define is an error.
    pub fn build_order(&self, only: &[String], with_bases: bool) -> Result<Vec<String>> {
        for name in only {
            self.layer(name)?;
        }
        let wanted: BTreeSet<&str> = if only.is_empty() {
            self.layers.keys().map(String::as_str).collect()
        } else {
            only.iter().map(String::as_str).collect()
        };
        let mut order = Vec::with_capacity(wanted.len());
        let mut placed = BTreeSet::new();
        for start in &wanted {
            // Down the chain of built bases to the first placed (or external) one, then place
            // it bottom up. Cycles were refused when the build was validated; a chain is at
            // most as long as the build.
            let mut chain = Vec::new();
            let mut cur = *start;
            while !placed.contains(cur) && chain.len() <= self.layers.len() {
                chain.push(cur);
                match self.layers.get(cur).map(|l| &l.base) {
                    Some(Base::Built { layer }) => cur = layer.as_str(),
                    _ => break,
                }
            }
            for l in chain.into_iter().rev() {
                if (with_bases || wanted.contains(l)) && placed.insert(l) {
                    order.push(l.to_string());
                }
            }
        }
        Ok(order)
    }

    /// An empty build.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty build by the builder `builder` ([`Build::builder`]).
    pub fn with_builder(builder: impl Into<String>) -> Self {
        Build {
            layers: BTreeMap::new(),
            builder: Some(builder.into()),
        }
    }

    /// Adds (or replaces) a layer.
    pub fn add(&mut self, name: impl Into<String>, layer: LayerInputs) -> &mut Self {
        self.layers.insert(name.into(), layer);
        self
    }

    /// The inputs of a layer.
    pub fn layer(&self, name: &str) -> Result<&LayerInputs> {
        self.layers.get(name).ok_or_else(|| Error::UnknownLayer {
            name: name.to_string(),
        })
    }

    /// Checks every name, every key, every `built` base (it must exist) and that built bases
    /// form no cycle.
    pub fn validate(&self) -> Result<()> {
        for (name, layer) in &self.layers {
            validate_layer_name(name)?;
            let mut keys = std::collections::BTreeSet::new();
            for i in &layer.imports {
                validate_key("import key", &i.key)?;
                if !keys.insert(("i", i.key.as_str(), i.dest.as_deref())) {
                    return Err(Error::InvalidName {
                        what: "import key",
                        value: i.key.clone(),
                        why: "it appears twice in the layer",
                    });
                }
            }
            for o in &layer.overlay_dirs {
                validate_key("overlay_dir key", &o.key)?;
                if !keys.insert(("o", o.key.as_str(), None)) {
                    return Err(Error::InvalidName {
                        what: "overlay_dir key",
                        value: o.key.clone(),
                        why: "it appears twice in the layer",
                    });
                }
            }
            if let Base::Built { layer: base } = &layer.base
                && !self.layers.contains_key(base)
            {
                return Err(Error::MissingBase {
                    layer: name.clone(),
                    base: base.clone(),
                });
            }
        }
        // Cycle check: follow each chain of built bases, marking every layer once, so a chain
        // of n layers costs O(n) (walking each chain from every layer was O(n^3) and never
        // finished at n = 10^5). `Done` layers lead to no cycle; `OnPath(i)` is the i-th layer
        // of the chain being followed.
        #[derive(Clone, Copy)]
        enum Mark {
            OnPath(usize),
            Done,
        }
        let mut marks: std::collections::HashMap<&str, Mark> =
            std::collections::HashMap::with_capacity(self.layers.len());
        for name in self.layers.keys() {
            let mut path: Vec<&str> = Vec::new();
            let mut cur = name.as_str();
            loop {
                match marks.get(cur) {
                    Some(Mark::Done) => break,
                    Some(Mark::OnPath(i)) => {
                        let mut chain: Vec<String> = path
                            .get(*i..)
                            .unwrap_or(&[])
                            .iter()
                            .map(|s| s.to_string())
                            .collect();
                        chain.push(cur.to_string());
                        return Err(Error::BaseCycle { chain });
                    }
                    None => {}
                }
                marks.insert(cur, Mark::OnPath(path.len()));
                path.push(cur);
                match self.layers.get(cur) {
                    Some(LayerInputs {
                        base: Base::Built { layer: next },
                        ..
                    }) => cur = next.as_str(),
                    _ => break,
                }
            }
            for p in path {
                marks.insert(p, Mark::Done);
            }
        }
        Ok(())
    }
}

fn validate_key(what: &'static str, key: &str) -> Result<()> {
    if key.contains('\0') {
        return Err(Error::InvalidName {
            what,
            value: escape_bytes(key.as_bytes()),
            why: "it contains a NUL byte",
        });
    }
    if key.is_empty() {
        return Err(Error::InvalidName {
            what,
            value: String::new(),
            why: "it is empty",
        });
    }
    Ok(())
}

/// The canonical form of a JSON value: object keys sorted (serde_json's default map is
/// ordered), no insignificant white space. Equal values have equal canonical bytes.
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    // serde_json::Value's Map is a BTreeMap (no `preserve_order` feature), so keys serialize
    // sorted; writing a Value to a Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Canonicalizes any serializable value through a JSON value (sorts map keys, such as OCI
/// annotations held in a HashMap).
pub fn canonical_json_of<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    Ok(canonical_json(&serde_json::to_value(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(base: Option<&str>) -> LayerInputs {
        LayerInputs {
            base: base.map_or(Base::Scratch, |b| Base::Built {
                layer: b.to_string(),
            }),
            ..Default::default()
        }
    }

    /// `z` ← `b` ← `a` (a chain whose bottom sorts last), and `m` alone.
    fn chain() -> Build {
        let mut b = Build::new();
        b.add("a", on(Some("b")))
            .add("b", on(Some("z")))
            .add("z", on(None))
            .add("m", on(None));
        b
    }

    #[test]
    fn build_order_puts_every_built_base_before_its_dependents() {
        let b = chain();
        assert_eq!(b.build_order(&[], true).unwrap(), ["z", "b", "a", "m"]);
        let only = ["a".to_string()];
        assert_eq!(b.build_order(&only, true).unwrap(), ["z", "b", "a"]);
        assert_eq!(b.build_order(&only, false).unwrap(), ["a"]);
        let two = ["a".to_string(), "z".to_string()];
        assert_eq!(b.build_order(&two, false).unwrap(), ["z", "a"]);
        assert!(b.build_order(&["nope".to_string()], true).is_err());
    }
}
