//! `cargo run --example demo`: layercache doing its main job on a generated build, with no
//! set-up beyond cargo.
//!
//! In a fresh temporary directory the demo lays out a small stacker-style project: a
//! monorepo-like source tree (a few hundred files in nested directories, generated
//! deterministically), stacker's `.stacker/imports/<layer>/` with a toolchain directory and a
//! config file, a `roots/` directory and an output OCI layout. It defines five layers as stacker
//! definitions and maps them to cache inputs with [`layercache::testing::stacker::StackerLayout`]:
//!
//! ```text
//! base     scratch, imports a toolchain directory and build.conf
//! ├─ deps  built on base, overlay dir vendor/
//! │  └─ app      built on deps, overlay dir monorepo/ (the source tree)
//! │     └─ release  built on app
//! └─ docs  built on base, overlay dir docs/
//! ```
//!
//! It then runs three builds against one redb cache file, each in a new cache open and session:
//! 1. every layer misses ("not cached"), is "built" (a fake output blob and its descriptor) and
//!    put;
//! 2. nothing changed: every layer hits;
//! 3. one file deep in the source tree is edited: exactly `app` misses, with a reason naming
//!    that file, and `release` (built on it) misses because its base changed; the others hit.
//!
//! It prints each step with its wall time and the session counters, and exits non-zero when the
//! pattern above does not happen.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use layercache::testing::stacker::{StackerLayer, StackerLayout};
use layercache::{Base, BaseChange, Build, Cache, Change, MissReason, RelPath, SessionCounters};
use oci_spec::image::Descriptor;
use serde_json::json;

/// The layers, in build order (every built base before the layers built on it).
pub const LAYERS: [&str; 5] = ["base", "deps", "docs", "app", "release"];

/// The file the demo edits before round 3, relative to the monorepo root.
pub const EDITED: &str = "services/payments/src/ledger/entry_5.rs";

/// What happened to one layer in one round.
#[derive(Debug, Clone)]
pub struct LayerResult {
    /// The layer.
    pub layer: String,
    /// Whether the lookup hit.
    pub hit: bool,
    /// The miss reasons (empty on a hit).
    pub reasons: Vec<MissReason>,
    /// Time of the lookup.
    pub lookup: Duration,
    /// Time of the fake build plus the put, after a miss.
    pub build_put: Option<Duration>,
}

/// One build against the cache.
#[derive(Debug, Clone)]
pub struct Round {
    /// What the round is.
    pub title: &'static str,
    /// Time to open the cache (with pruning).
    pub open: Duration,
    /// Per layer, in build order.
    pub layers: Vec<LayerResult>,
    /// Work done by the session.
    pub counters: SessionCounters,
    /// Time of the whole round.
    pub total: Duration,
}

/// Everything the demo did, for the self-check and for tests.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The three rounds.
    pub rounds: Vec<Round>,
    /// The overlay dir key of `app` (the monorepo path as written in its definition).
    pub app_key: String,
    /// Layers that must miss after the edit: `app` and every layer built on it.
    pub affected: Vec<String>,
}

impl Summary {
    /// Checks the expected pattern; on a deviation, says which.
    pub fn check(&self) -> std::result::Result<(), String> {
        let [first, second, third] = self.rounds.as_slice() else {
            return Err(format!("expected 3 rounds, ran {}", self.rounds.len()));
        };
        let mut problems = Vec::new();
        for r in &first.layers {
            if r.hit || r.reasons != [MissReason::NotCached] {
                problems.push(format!("round 1: {} should miss as not cached", r.layer));
            }
        }
        for r in &second.layers {
            if !r.hit {
                problems.push(format!("round 2: {} should hit", r.layer));
            }
        }
        let edited = RelPath::from_slash_bytes(EDITED.as_bytes());
        for r in &third.layers {
            let expect_miss = self.affected.contains(&r.layer);
            match (r.layer.as_str(), r.reasons.as_slice()) {
                (_, []) if !expect_miss && r.hit => {}
                ("app", [MissReason::OverlayDirContentChanged { key, diff }])
                    if *key == self.app_key
                        && diff.added.is_empty()
                        && diff.removed.is_empty()
                        && diff.modified.len() == 1
                        && diff
                            .modified
                            .iter()
                            .all(|m| m.path == edited && m.changes.contains(&Change::Content)) => {}
                (
                    _,
                    [
                        MissReason::BaseChanged {
                            change: BaseChange::HashChanged { .. },
                        },
                    ],
                ) if expect_miss && r.layer != "app" => {}
                _ => problems.push(format!(
                    "round 3: {} should {}, got {}",
                    r.layer,
                    if r.layer == "app" {
                        format!("miss naming only {EDITED} as modified")
                    } else if expect_miss {
                        "miss because its base (app) was rebuilt".to_string()
                    } else {
                        "hit".to_string()
                    },
                    if r.hit {
                        "a hit".to_string()
                    } else {
                        r.reasons
                            .iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    }
                )),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// The project: its directories and the stacker layout over them.
struct Project {
    dir: PathBuf,
    layout: StackerLayout,
}

/// A small deterministic generator (xorshift64*), so every run makes the same tree.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const WORDS: [&str; 16] = [
    "let", "fn", "match", "value", "ledger", "entry", "total", "account", "ok", "err", "self",
    "map", "into", "iter", "sum", "return",
];

/// Text of roughly `size` bytes, deterministic for a given generator state.
fn text(rng: &mut Rng, size: u64) -> String {
    let mut s = String::with_capacity(size as usize + 16);
    while (s.len() as u64) < size {
        let n = 3 + rng.below(8);
        for i in 0..n {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        }
        s.push_str(";\n");
    }
    s
}

fn write_file(path: &Path, content: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))
}

/// Generated files and bytes.
#[derive(Default)]
struct Generated {
    files: u64,
    bytes: u64,
}

impl Generated {
    /// Writes one input file, dated an hour back as a checkout made earlier would be: a file
    /// changed in the last 2 s is racy (a write may still be in flight, `tree::fastpath`), and
    /// its stat data would not vouch for it in round 2.
    fn file(&mut self, path: &Path, content: &[u8]) -> Result<()> {
        write_file(path, content)?;
        let earlier = filetime::FileTime::from_system_time(
            std::time::SystemTime::now() - Duration::from_secs(3600),
        );
        filetime::set_file_mtime(path, earlier)
            .with_context(|| format!("cannot date {}", path.display()))?;
        self.files += 1;
        self.bytes += content.len() as u64;
        Ok(())
    }
}

impl Project {
    /// Generates the inputs: imports of `base`, vendor/, monorepo/, docs/, and the output OCI
    /// layout.
    fn generate(dir: &Path) -> Result<(Project, Generated)> {
        let layout = StackerLayout::in_project(dir);
        let mut g = Generated::default();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

        // stacker has already fetched base's imports into .stacker/imports/base/.
        let imports = layout.stacker_dir.join("imports/base");
        for tool in ["cc", "ld", "ar", "as", "strip", "objcopy"] {
            let body = format!("#!/bin/sh\n# {tool}\n{}", text(&mut rng, 300));
            g.file(&imports.join("toolchain/bin").join(tool), body.as_bytes())?;
        }
        for i in 0..18 {
            let size = 2_000 + rng.below(20_000);
            let path = imports.join(format!("toolchain/lib/gcc/x86_64/13/obj{i:02}.o"));
            g.file(&path, text(&mut rng, size).as_bytes())?;
        }
        g.file(&imports.join("build.conf"), b"opt-level = 2\nlto = true\n")?;

        // Third-party sources.
        for c in 0..16 {
            let root = dir.join(format!("vendor/crate{c:02}"));
            g.file(
                &root.join("Cargo.toml"),
                format!("[package]\nname = \"crate{c:02}\"\n").as_bytes(),
            )?;
            for f in ["lib.rs", "util.rs", "error.rs"] {
                let size = 300 + rng.below(4_000);
                g.file(&root.join("src").join(f), text(&mut rng, size).as_bytes())?;
            }
        }

        // The monorepo: services, each with modules of source files.
        let services = ["api", "auth", "billing", "payments", "search", "web"];
        let modules = ["core", "ledger", "handlers", "storage", "util"];
        for svc in services {
            let root = dir.join("monorepo/services").join(svc);
            g.file(&root.join("README.md"), format!("# {svc}\n").as_bytes())?;
            g.file(
                &root.join("BUILD"),
                format!("service(name = \"{svc}\")\n").as_bytes(),
            )?;
            for m in modules {
                for f in 0..8 {
                    let size = 200 + rng.below(6_000);
                    let path = root.join(format!("src/{m}/entry_{f}.rs"));
                    g.file(&path, text(&mut rng, size).as_bytes())?;
                }
            }
        }

        // Documentation.
        for section in ["guide", "reference", "ops", "design", "faq"] {
            for page in 0..6 {
                let size = 500 + rng.below(3_000);
                let path = dir.join(format!("docs/{section}/page{page}.md"));
                g.file(&path, text(&mut rng, size).as_bytes())?;
            }
        }

        // The output OCI layout.
        write_file(
            &layout.oci_dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        std::fs::create_dir_all(layout.oci_dir.join("blobs/blake3"))
            .context("cannot create the OCI layout's blobs directory")?;
        std::fs::create_dir_all(&layout.rootfs_dir).context("cannot create roots/")?;
        Ok((
            Project {
                dir: dir.to_path_buf(),
                layout,
            },
            g,
        ))
    }

    fn source(&self, rel: &str) -> Result<String> {
        let p = self.dir.join(rel);
        p.to_str()
            .map(str::to_string)
            .with_context(|| format!("{} is not UTF-8", p.display()))
    }

    /// The stacker definitions of the five layers.
    fn layers(&self) -> Result<BTreeMap<String, StackerLayer>> {
        let defs = [
            (
                "base",
                json!({
                    "from": {"type": "scratch"},
                    "imports": ["https://dl.example.com/toolchain", "https://dl.example.com/build.conf"],
                    "run": "cp -a /stacker/imports/toolchain /opt/toolchain"
                }),
            ),
            (
                "deps",
                json!({
                    "from": {"type": "built", "tag": "base"},
                    "overlay_dirs": [{"source": self.source("vendor")?, "dest": "/opt/vendor"}],
                    "run": "cargo fetch --offline"
                }),
            ),
            (
                "docs",
                json!({
                    "from": {"type": "built", "tag": "base"},
                    "overlay_dirs": [{"source": self.source("docs")?, "dest": "/usr/share/doc/app"}],
                    "run": "mdbook build /usr/share/doc/app"
                }),
            ),
            (
                "app",
                json!({
                    "from": {"type": "built", "tag": "deps"},
                    "overlay_dirs": [{"source": self.source("monorepo")?, "dest": "/src"}],
                    "run": "make -C /src all"
                }),
            ),
            (
                "release",
                json!({
                    "from": {"type": "built", "tag": "app"},
                    "run": "strip /usr/local/bin/*"
                }),
            ),
        ];
        defs.into_iter()
            .map(|(name, def)| {
                let layer = StackerLayer::from_definition(def)
                    .with_context(|| format!("definition of {name}"))?;
                Ok((name.to_string(), layer))
            })
            .collect()
    }

    /// "Builds" a layer: makes its rootfs with the overlay dirs' copies (empty directories
    /// stand in for the copies) and writes a fake output blob; returns its descriptors.
    fn build_layer(
        &self,
        build: &Build,
        layer: &str,
        round: usize,
    ) -> Result<BTreeMap<String, Descriptor>> {
        let inputs = build.layer(layer)?;
        std::fs::create_dir_all(self.layout.rootfs_dir.join(layer))
            .with_context(|| format!("cannot create the rootfs of {layer}"))?;
        for od in &inputs.overlay_dirs {
            std::fs::create_dir_all(&od.rootfs_path)
                .with_context(|| format!("cannot create {}", od.rootfs_path.display()))?;
        }
        let blob = format!("fake layer tarball of {layer}, built in round {round}\n");
        let hex = blake3::hash(blob.as_bytes()).to_hex().to_string();
        write_file(
            &self.layout.oci_dir.join("blobs/blake3").join(&hex),
            blob.as_bytes(),
        )?;
        let descriptor: Descriptor = serde_json::from_value(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("blake3:{hex}"),
            "size": blob.len(),
            "annotations": {"org.opencontainers.image.ref.name": layer}
        }))
        .context("building a descriptor")?;
        Ok(BTreeMap::from([("tar".to_string(), descriptor)]))
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// Indents the continuation lines of a reason (a diff's paths) under its first line.
fn indent(reason: &str, pad: &str) -> String {
    reason.trim_end().replace('\n', &format!("\n{pad}"))
}

fn run_round(
    project: &Project,
    build: &Build,
    round: usize,
    title: &'static str,
    out: &mut dyn Write,
) -> Result<Round> {
    let started = Instant::now();
    writeln!(out, "\nround {round}: {title}")?;
    let t = Instant::now();
    let db = project.dir.join("cache.redb");
    let cache = Cache::open(project.layout.cache_config(&db))?;
    let report = cache.prune()?;
    let open = t.elapsed();
    writeln!(
        out,
        "  open {:<26} {:>9}  ({} entries checked for pruning, {} pruned)",
        "cache.redb",
        ms(open),
        report.examined,
        report.pruned.len()
    )?;
    let mut session = cache.session(build)?;
    let mut layers = Vec::new();
    for name in LAYERS {
        let t = Instant::now();
        let lookup = session.lookup(name)?;
        let lookup_time = t.elapsed();
        let mut result = LayerResult {
            layer: name.to_string(),
            hit: lookup.is_hit(),
            reasons: lookup.reasons().to_vec(),
            lookup: lookup_time,
            build_put: None,
        };
        if result.hit {
            writeln!(out, "  {name:<8} hit   lookup {:>9}", ms(lookup_time))?;
        } else {
            let t = Instant::now();
            let manifests = project.build_layer(build, name, round)?;
            session.put(&lookup, &manifests)?;
            let build_put = t.elapsed();
            result.build_put = Some(build_put);
            let pad = " ".repeat(8);
            let why = result
                .reasons
                .iter()
                .map(|r| indent(&r.to_string(), &pad))
                .collect::<Vec<_>>()
                .join("\n      ");
            writeln!(
                out,
                "  {name:<8} MISS  lookup {:>9}  build+put {:>9}\n      {why}",
                ms(lookup_time),
                ms(build_put)
            )?;
        }
        layers.push(result);
    }
    let counters = session.counters();
    let total = started.elapsed();
    writeln!(
        out,
        "  round total {}: {} lookups, {} entries walked, {} files hashed, {} hashed",
        ms(total),
        counters.lookups,
        counters.walk.entries_walked,
        counters.walk.files_hashed,
        size(counters.walk.bytes_hashed)
    )?;
    Ok(Round {
        title,
        open,
        layers,
        counters,
        total,
    })
}

/// Layers that are `layer` or built (directly or not) on it.
fn built_on(build: &Build, layer: &str) -> Vec<String> {
    LAYERS
        .iter()
        .filter(|name| {
            let mut cur = name.to_string();
            loop {
                if cur == layer {
                    return true;
                }
                match build.layers.get(&cur).map(|l| &l.base) {
                    Some(Base::Built { layer: next }) => cur = next.clone(),
                    _ => return false,
                }
            }
        })
        .map(|s| s.to_string())
        .collect()
}

/// Runs the demo in `dir` (which should be empty), printing to `out`.
pub fn run(dir: &Path, out: &mut dyn Write) -> Result<Summary> {
    writeln!(
        out,
        "layercache demo: a {}-layer stacker-style build over a generated tree",
        LAYERS.len()
    )?;
    writeln!(out, "  project dir: {}", dir.display())?;
    let t = Instant::now();
    let (project, generated) = Project::generate(dir)?;
    writeln!(
        out,
        "  generated {} files ({}) in {}: .stacker/imports/base/{{toolchain/,build.conf}}, vendor/, monorepo/, docs/",
        generated.files,
        size(generated.bytes),
        ms(t.elapsed())
    )?;
    let build = project
        .layout
        .build(&project.layers()?, Some(1_700_000_000))?;
    writeln!(
        out,
        "  layers: base (scratch + imports) <- deps (vendor/) <- app (monorepo/) <- release; base <- docs (docs/)"
    )?;

    let mut rounds = vec![run_round(
        &project,
        &build,
        1,
        "first build, empty cache",
        out,
    )?];
    rounds.push(run_round(&project, &build, 2, "nothing changed", out)?);

    let edited = dir.join("monorepo").join(EDITED);
    let t = Instant::now();
    let mut content =
        std::fs::read(&edited).with_context(|| format!("cannot read {}", edited.display()))?;
    content.extend_from_slice(b"let fixed = ledger.total();\n");
    write_file(&edited, &content)?;
    writeln!(
        out,
        "\nedit: appended a line to monorepo/{EDITED} ({})",
        ms(t.elapsed())
    )?;
    rounds.push(run_round(&project, &build, 3, "one file edited", out)?);

    let app = build.layer("app")?;
    let app_key = app
        .overlay_dirs
        .first()
        .map(|o| o.key.clone())
        .context("app has no overlay dir")?;
    Ok(Summary {
        rounds,
        app_key,
        affected: built_on(&build, "app"),
    })
}

fn main() -> ExitCode {
    let dir = match tempfile::Builder::new()
        .prefix("layercache-demo-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("demo: cannot create a temporary directory: {e}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let summary = match run(dir.path(), &mut stdout) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            return ExitCode::from(2);
        }
    };
    match summary.check() {
        Ok(()) => {
            let _ = writeln!(
                stdout,
                "\nas expected: round 1 every layer missed (not cached), round 2 every layer hit, \
                 round 3 only {} missed.",
                summary.affected.join(" and ")
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("\nunexpected cache behaviour:\n{problems}");
            ExitCode::FAILURE
        }
    }
}
