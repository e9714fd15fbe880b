//! `cargo run --example builder -- PLAN [--db FILE]`: a reference image builder that embeds the
//! cache, and makes real OCI images with `umoci` (and `skopeo` for an `oci` base).
//!
//! It reads the plan file of the command line (`layercache::Plan`, the format in the README)
//! and builds every layer, bases first, into the plan's `oci_layout`, tagging layer `L`'s image
//! `L`. One process, one [`Cache`], one [`layercache::Session`]: before each layer it asks the
//! cache ([`layercache::Session::lookup`]); on a hit it reuses the image already tagged in the
//! layout; on a miss it builds the layer and gives the cache the real descriptors of what it
//! produced ([`layercache::Session::put`]).
//!
//! Building layer `L`:
//!
//! 1. its bundle is `<rootfs_dir>/L` (removed first, then made by `umoci unpack`), whose rootfs
//!    is `<rootfs_dir>/L/rootfs`; the base decides what is unpacked: `scratch` an empty image
//!    (`umoci new --image LAYOUT:L`), `built` the image tagged with the base layer's name,
//!    `oci` / `docker` the base image copied into the layout first (`skopeo copy oci:DIR:TAG
//!    oci:LAYOUT:L`); a `tar` base is refused;
//! 2. each import is copied (`cp -a`) into the rootfs at its `dest`, or at
//!    `/stacker/imports/<file name>` when it has none;
//! 3. each overlay dir is copied into its `rootfs_path`, which must lie inside the rootfs: the
//!    place in the image is that path relative to the rootfs (so the copy the cache checks at a
//!    hit is the one the image was made from);
//! 4. `umoci repack --image LAYOUT:L` makes the layer and tags the image; its descriptors are
//!    read back from the layout: `tar` → the new layer blob (the last layer of the manifest)
//!    and `oci-manifest` → the image manifest. Both are checked by the cache at every hit, so a
//!    hit never points at an image whose layer or manifest blob is gone.
//!
//! The definition's `run` is not executed (there is no container runtime in a test); it goes
//! into the image history as `created_by`. Build-only layers are refused (nothing here keeps a
//! rootfs as an output).
//!
//! The cache is opened with [`Cache::open`]: a version whose outputs are gone
//! then misses with [`MissReason::OutputsMissing`] ("the cached outputs are gone: blob ... is
//! gone"), which says why the layer is rebuilt, instead of being pruned at open and missing as
//! "not cached". `layercache gc` drops old versions.
//!
//! `tests/testsuite/builder.rs` runs [`build`] on a generated monorepo through the real tools.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use layercache::{Base, Cache, Descriptor, LayerInputs, MissReason, Plan};

/// What happened to one layer.
#[derive(Debug, Clone)]
pub struct LayerOutcome {
    /// The layer.
    pub layer: String,
    /// Whether the builder built it (a miss, or a hit whose tag no longer named its image).
    pub built: bool,
    /// The cache's first miss reason (`None` on a hit).
    pub reason: Option<MissReason>,
    /// Why the builder rebuilt a layer the cache hit, if it did.
    pub builder_reason: Option<String>,
    /// Time of the cache lookup.
    pub lookup: Duration,
    /// Time of the build and put (zero when reused).
    pub build: Duration,
    /// The digest of the layer's image manifest (tag `layer` in the layout) after this build.
    pub manifest: String,
}

/// What a build did.
#[derive(Debug, Clone, Default)]
pub struct BuildSummary {
    /// Every layer, in build order (bases first).
    pub layers: Vec<LayerOutcome>,
    /// `umoci repack` runs.
    pub repacks: u64,
    /// `umoci unpack` runs.
    pub unpacks: u64,
    /// Wall time of the whole build, open of the cache included.
    pub total: Duration,
}

impl BuildSummary {
    /// The layers that were built, in build order.
    pub fn built(&self) -> Vec<&str> {
        self.layers
            .iter()
            .filter(|l| l.built)
            .map(|l| l.layer.as_str())
            .collect()
    }

    /// One layer's outcome.
    pub fn layer(&self, name: &str) -> Option<&LayerOutcome> {
        self.layers.iter().find(|l| l.layer == name)
    }
}

/// Runs a tool, failing with its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown} (is it installed? .ci/install-deps)"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `umoci`, rootless when not run as root.
fn umoci(args: &[&str]) -> Command {
    let mut cmd = Command::new("umoci");
    if let Some((first, rest)) = args.split_first() {
        cmd.arg(first);
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root && *first == "unpack" {
            cmd.arg("--rootless");
        }
        cmd.args(rest);
    }
    cmd
}

fn utf8(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8 (umoci takes it as text)", p.display()))
}

/// The descriptor of the manifest tagged `tag` in `layout`'s `index.json`, if any.
pub fn tagged_manifest(layout: &Path, tag: &str) -> Result<Option<serde_json::Value>> {
    let index = layout.join("index.json");
    let text = std::fs::read_to_string(&index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", index.display()))?;
    let found = v
        .get("manifests")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .find(|m| {
            m.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(|n| n.as_str())
                == Some(tag)
        })
        .cloned();
    Ok(found)
}

/// The path of a blob `sha256:<hex>` in `layout`.
fn blob(layout: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .with_context(|| format!("{digest:?} is not a sha256 digest"))?;
    Ok(layout.join("blobs/sha256").join(hex))
}

/// A descriptor with only what names the blob (media type, digest, size).
fn plain_descriptor(v: &serde_json::Value) -> Result<Descriptor> {
    let plain = serde_json::json!({
        "mediaType": v.get("mediaType"),
        "digest": v.get("digest"),
        "size": v.get("size"),
    });
    serde_json::from_value(plain).context("a descriptor in the OCI layout is invalid")
}

/// The outputs of image `tag`: its last layer blob (`tar`) and its manifest (`oci-manifest`).
fn outputs_of(layout: &Path, tag: &str) -> Result<BTreeMap<String, Descriptor>> {
    let manifest = tagged_manifest(layout, tag)?
        .with_context(|| format!("umoci repack left no tag {tag:?} in {}", layout.display()))?;
    let digest = manifest
        .get("digest")
        .and_then(|d| d.as_str())
        .context("a manifest descriptor has no digest")?;
    let path = blob(layout, digest)?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let m: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let layer = m
        .get("layers")
        .and_then(|l| l.as_array())
        .and_then(|l| l.last())
        .with_context(|| format!("image {tag:?} has no layer"))?;
    Ok(BTreeMap::from([
        ("tar".to_string(), plain_descriptor(layer)?),
        ("oci-manifest".to_string(), plain_descriptor(&manifest)?),
    ]))
}

/// `dest` (an absolute path in the image) under `rootfs`, refusing `..`.
fn in_rootfs(rootfs: &Path, dest: &str) -> Result<PathBuf> {
    let rel = Path::new(dest.trim_start_matches('/'));
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        bail!("destination {dest:?} leaves the rootfs");
    }
    Ok(rootfs.join(rel))
}

/// Copies `src` (a file or a directory's content) to `dst` with `cp -a` (modes, owners,
/// symlinks, xattrs and times kept).
fn copy_into(src: &Path, dst: &Path) -> Result<()> {
    if src.is_dir() {
        std::fs::create_dir_all(dst).with_context(|| format!("cannot create {}", dst.display()))?;
        let mut from = src.as_os_str().to_owned();
        from.push("/.");
        run(Command::new("cp").arg("-a").arg(from).arg(dst))?;
    } else {
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        run(Command::new("cp").arg("-a").arg(src).arg(dst))?;
    }
    Ok(())
}

/// The builder: the layout, the bundles, and the work counters.
struct Builder {
    layout: PathBuf,
    roots: PathBuf,
    repacks: u64,
    unpacks: u64,
}

impl Builder {
    fn image(&self, tag: &str) -> Result<String> {
        Ok(format!("{}:{tag}", utf8(&self.layout)?))
    }

    /// Builds one layer's image (see the module doc); returns its outputs.
    fn build_layer(
        &mut self,
        name: &str,
        inputs: &LayerInputs,
    ) -> Result<BTreeMap<String, Descriptor>> {
        if inputs.build_only {
            bail!("layer {name:?} is build-only, which this builder does not support");
        }
        let bundle = self.roots.join(name);
        if bundle.exists() {
            std::fs::remove_dir_all(&bundle)
                .with_context(|| format!("cannot remove the old bundle {}", bundle.display()))?;
        }
        let image = self.image(name)?;
        let unpack_from = match &inputs.base {
            Base::Scratch => {
                run(&mut umoci(&["new", "--image", &image]))?;
                image.clone()
            }
            Base::Built { layer } => self.image(layer)?,
            Base::Oci { layout, tag } | Base::Docker { layout, tag } => {
                let from = format!("oci:{}:{tag}", utf8(layout)?);
                run(Command::new("skopeo")
                    .args(["copy", "--quiet", &from])
                    .arg(format!("oci:{image}")))?;
                image.clone()
            }
            Base::Tar { path } => bail!(
                "layer {name:?} is built on the tarball {}: tar bases are not supported by this builder",
                path.display()
            ),
        };
        run(&mut umoci(&[
            "unpack",
            "--image",
            &unpack_from,
            utf8(&bundle)?,
        ]))?;
        self.unpacks += 1;
        let rootfs = bundle.join("rootfs");
        for i in &inputs.imports {
            let dest = match &i.dest {
                Some(d) => d.clone(),
                None => {
                    let file = i.path.file_name().with_context(|| {
                        format!("import {:?} has no file name", i.path.display())
                    })?;
                    format!("/stacker/imports/{}", file.to_string_lossy())
                }
            };
            copy_into(&i.path, &in_rootfs(&rootfs, &dest)?)
                .with_context(|| format!("import {} of layer {name:?}", i.key))?;
        }
        for o in &inputs.overlay_dirs {
            let inside = o.rootfs_path.strip_prefix(&rootfs).map_err(|_| {
                anyhow::anyhow!(
                    "overlay dir {} of layer {name:?}: its rootfs_path {} is not inside the \
                     layer's rootfs {} (this builder copies an overlay dir to its place in the \
                     image, <rootfs_dir>/<layer>/rootfs/<place>)",
                    o.key,
                    o.rootfs_path.display(),
                    rootfs.display()
                )
            })?;
            copy_into(&o.source, &rootfs.join(inside))
                .with_context(|| format!("overlay dir {} of layer {name:?}", o.key))?;
        }
        let created_by = match inputs.definition.get("run") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => format!("layercache reference builder: {name}"),
        };
        run(&mut umoci(&[
            "repack",
            "--image",
            &image,
            "--history.created_by",
            &created_by,
            utf8(&bundle)?,
        ]))?;
        self.repacks += 1;
        outputs_of(&self.layout, name)
    }
}

/// Builds every layer of the plan at `plan_path` with the cache at `db`.
pub fn build(plan_path: &Path, db: &Path) -> Result<BuildSummary> {
    let started = Instant::now();
    let plan = Plan::load(plan_path)?;
    let layout = plan
        .oci_layout()
        .context("the plan names no oci_layout: the builder writes its images there")?
        .to_path_buf();
    let roots = plan
        .rootfs_dir()
        .context("the plan names no rootfs_dir: the builder keeps its bundles there")?
        .to_path_buf();
    if !layout.join("index.json").is_file() {
        run(&mut umoci(&["init", "--layout", utf8(&layout)?]))?;
    }
    std::fs::create_dir_all(&roots)
        .with_context(|| format!("cannot create {}", roots.display()))?;
    let cache = Cache::open(plan.cache_config(db))?;
    let build = plan.build();
    let mut session = cache.session(build)?;
    let mut builder = Builder {
        layout,
        roots,
        repacks: 0,
        unpacks: 0,
    };
    let mut layers = Vec::new();
    for name in build.build_order(&[], true)? {
        let inputs = build.layer(&name)?;
        let t = Instant::now();
        let lookup = session.lookup(&name)?;
        let lookup_time = t.elapsed();
        // A hit names the image's manifest; the layer's tag must still point at it (dependents
        // unpack the tag). Else the builder rebuilds it, and says why.
        let builder_reason = match lookup.entry() {
            None => None,
            Some(e) => {
                let recorded = e
                    .manifests
                    .get("oci-manifest")
                    .map(|d| d.digest().to_string());
                let tagged = tagged_manifest(&builder.layout, &name)?
                    .and_then(|m| m.get("digest").and_then(|d| d.as_str()).map(str::to_string));
                match (recorded, tagged) {
                    (Some(r), Some(t)) if r == t => None,
                    (None, _) => Some("the cached version records no image manifest".to_string()),
                    (Some(_), _) => {
                        Some(format!("the tag {name:?} no longer names the cached image"))
                    }
                }
            }
        };
        let rebuild = !lookup.is_hit() || builder_reason.is_some();
        let t = Instant::now();
        if rebuild {
            let outputs = builder
                .build_layer(&name, inputs)
                .with_context(|| format!("building layer {name:?}"))?;
            session
                .put(&lookup, &outputs)
                .with_context(|| format!("recording layer {name:?}"))?;
        }
        let build_time = if rebuild { t.elapsed() } else { Duration::ZERO };
        let manifest = tagged_manifest(&builder.layout, &name)?
            .and_then(|m| m.get("digest").and_then(|d| d.as_str()).map(str::to_string))
            .unwrap_or_default();
        layers.push(LayerOutcome {
            layer: name,
            built: rebuild,
            reason: lookup.reasons().first().cloned(),
            builder_reason,
            lookup: lookup_time,
            build: build_time,
            manifest,
        });
    }
    Ok(BuildSummary {
        layers,
        repacks: builder.repacks,
        unpacks: builder.unpacks,
        total: started.elapsed(),
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mut plan = None;
    let mut db = std::env::var_os("LAYERCACHE_DB").map(PathBuf::from);
    while let Some(a) = args.next() {
        if a == "--db" {
            db = args.next().map(PathBuf::from);
        } else if a == "--help" || a == "-h" {
            println!(
                "usage: builder PLAN [--db FILE]   (default db: LAYERCACHE_DB, else cache.redb beside PLAN)"
            );
            return ExitCode::SUCCESS;
        } else {
            plan = Some(PathBuf::from(a));
        }
    }
    let Some(plan) = plan else {
        eprintln!("usage: builder PLAN [--db FILE]");
        return ExitCode::from(2);
    };
    let db = db.unwrap_or_else(|| plan.with_file_name("cache.redb"));
    match build(&plan, &db) {
        Ok(s) => {
            for l in &s.layers {
                let what = match (&l.reason, &l.builder_reason) {
                    (_, Some(b)) => format!("BUILT  ({b})"),
                    (Some(r), None) => {
                        let text = r.to_string();
                        format!("BUILT  ({})", text.lines().next().unwrap_or_default())
                    }
                    (None, None) => "reused".to_string(),
                };
                println!(
                    "{:<12} lookup {:>9}  build+put {:>9}  {what}",
                    layercache::escape_bytes(l.layer.as_bytes()),
                    ms(l.lookup),
                    ms(l.build)
                );
            }
            println!(
                "{} layer(s), {} built, {} repack(s), {} unpack(s), total {}",
                s.layers.len(),
                s.built().len(),
                s.repacks,
                s.unpacks,
                ms(s.total)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("builder: {e:#}");
            ExitCode::from(2)
        }
    }
}
