//! A generated monorepo project for the reference builder (`examples/builder.rs`): sources,
//! imports, an `oci` base image made by umoci, and a plan file of six layers.
//!
//! ```text
//! base      scratch; imports toolchain/ (at /opt/toolchain) and build.conf
//! ├─ deps   overlay dir vendor/ at /opt/vendor
//! │  └─ app      overlay dir monorepo/ at /src
//! │     └─ release  overlay dir config/ at /etc/app
//! └─ docs   overlay dir docs/ at /usr/share/doc/app
//! runtime   oci base (bases:runtime, made by umoci); overlay dir runtime-etc/ at /etc/runtime
//! ```

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::json;

/// The file the tests edit, relative to the monorepo root.
pub const EDITED: &str = "services/payments/src/ledger/entry_5.rs";

/// Every layer of the plan.
pub const LAYERS: [&str; 6] = ["base", "deps", "app", "release", "docs", "runtime"];

/// The generated project.
pub struct Project {
    /// Holds everything; removed when dropped.
    pub dir: tempfile::TempDir,
    /// Input files generated.
    pub files: u64,
}

/// A tiny deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs a tool and panics with its stderr when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Project {
    /// Generates the project (about 2,900 input files) and its plan.
    pub fn generate() -> Project {
        let dir = tempfile::Builder::new()
            .prefix("layercache-builder-")
            .tempdir()
            .unwrap();
        let mut p = Project { dir, files: 0 };
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for b in ["cc", "ld", "ar", "as", "strip", "objcopy", "nm", "ranlib"] {
            p.file(&format!("imports/toolchain/bin/{b}"), &mut rng, 400);
        }
        for i in 0..120 {
            p.file(&format!("imports/toolchain/lib/obj{i:03}.o"), &mut rng, 900);
        }
        p.file("imports/build.conf", &mut rng, 60);
        for c in 0..40 {
            p.file(&format!("vendor/crate{c:02}/Cargo.toml"), &mut rng, 80);
            for f in 0..12 {
                p.file(&format!("vendor/crate{c:02}/src/m{f}.rs"), &mut rng, 700);
            }
        }
        let services = [
            "api", "auth", "billing", "payments", "search", "web", "mail", "queue",
        ];
        let modules = ["core", "ledger", "handlers", "storage", "util", "proto"];
        for s in services {
            p.file(&format!("monorepo/services/{s}/README.md"), &mut rng, 100);
            p.file(&format!("monorepo/services/{s}/BUILD"), &mut rng, 60);
            for m in modules {
                for f in 0..40 {
                    p.file(
                        &format!("monorepo/services/{s}/src/{m}/entry_{f}.rs"),
                        &mut rng,
                        800,
                    );
                }
            }
        }
        for s in ["guide", "reference", "ops", "design", "faq", "api"] {
            for page in 0..40 {
                p.file(&format!("docs/{s}/page{page:02}.md"), &mut rng, 600);
            }
        }
        for i in 0..12 {
            p.file(&format!("config/app{i:02}.toml"), &mut rng, 120);
        }
        for i in 0..6 {
            p.file(&format!("runtime-etc/conf{i}.d"), &mut rng, 120);
        }
        p.base_image();
        p.write_plan(&[]);
        p
    }

    /// A path in the project.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The plan file.
    pub fn plan(&self) -> PathBuf {
        self.p("plan.json")
    }

    /// The cache database.
    pub fn db(&self) -> PathBuf {
        self.p("cache.redb")
    }

    /// The output OCI layout.
    pub fn layout(&self) -> PathBuf {
        self.p("oci")
    }

    /// `LAYOUT:TAG` of an output image.
    pub fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.layout().display())
    }

    /// Writes one input file of about `size` bytes, dated an hour back (a file changed in the
    /// last 2 s is racy and always hashed; an older checkout is the common case).
    fn file(&mut self, rel: &str, rng: &mut Rng, size: usize) {
        let path = self.p(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut body = format!("// {rel}\n");
        while body.len() < size {
            body.push_str(&format!("let v{} = {};\n", rng.next() % 1000, rng.next()));
        }
        std::fs::write(&path, body).unwrap();
        date_back(&path);
        self.files += 1;
    }

    /// The `oci` base: an image `runtime` in `bases/`, made by umoci.
    fn base_image(&self) {
        let bases = self.p("bases");
        let image = format!("{}:runtime", bases.display());
        run(Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(&bases));
        run(Command::new("umoci").args(["new", "--image", &image]));
        let src = self.p("base-image-src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/os-release"), "ID=layercache-test\n").unwrap();
        run(Command::new("umoci")
            .args(["insert", "--image", &image])
            .arg(&src)
            .arg("/"));
    }

    /// Writes the plan: the six layers, plus `extra` (name → JSON layer).
    pub fn write_plan(&self, extra: &[(&str, serde_json::Value)]) {
        let overlay = |key: &str, layer: &str, place: &str| json!({"key": key, "source": key, "rootfs_path": format!("roots/{layer}/rootfs{place}")});
        let mut layers = serde_json::Map::new();
        layers.insert(
            "base".into(),
            json!({
                "definition": {"from": {"type": "scratch"}, "run": "install toolchain"},
                "base": {"type": "scratch"},
                "imports": [
                    {"key": "https://dl.example.com/toolchain", "path": "imports/toolchain",
                     "dest": "/opt/toolchain"},
                    {"key": "https://dl.example.com/build.conf", "path": "imports/build.conf"}
                ]
            }),
        );
        for (name, base, key, place) in [
            ("deps", "base", "vendor", "/opt/vendor"),
            ("app", "deps", "monorepo", "/src"),
            ("release", "app", "config", "/etc/app"),
            ("docs", "base", "docs", "/usr/share/doc/app"),
        ] {
            layers.insert(
                name.into(),
                json!({
                    "definition": {"from": {"type": "built", "tag": base}, "run": format!("build {name}")},
                    "base": {"type": "built", "layer": base},
                    "overlay_dirs": [overlay(key, name, place)]
                }),
            );
        }
        layers.insert(
            "runtime".into(),
            json!({
                "definition": {"from": {"type": "oci", "url": "bases:runtime"}, "run": "configure"},
                "base": {"type": "oci", "layout": "bases", "tag": "runtime"},
                "overlay_dirs": [overlay("runtime-etc", "runtime", "/etc/runtime")]
            }),
        );
        for (name, layer) in extra {
            layers.insert(name.to_string(), layer.clone());
        }
        let plan = json!({
            "builder": "layercache reference builder 1",
            "oci_layout": "oci",
            "rootfs_dir": "roots",
            "source_date_epoch": 1_700_000_000,
            "layers": layers,
        });
        std::fs::write(self.plan(), serde_json::to_vec_pretty(&plan).unwrap()).unwrap();
    }

    /// Appends a line to the edited file of the monorepo; returns its new content.
    pub fn edit(&self) -> Vec<u8> {
        let path = self.p("monorepo").join(EDITED);
        let mut content = std::fs::read(&path).unwrap();
        content.extend_from_slice(b"let fixed = ledger.total();\n");
        std::fs::write(&path, &content).unwrap();
        content
    }

    /// The digest of the manifest tagged `tag` in the output layout.
    pub fn manifest_digest(&self, tag: &str) -> String {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.layout().join("index.json")).unwrap())
                .unwrap();
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no tag {tag}"))["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The manifest of image `tag`, read from its blob.
    pub fn manifest(&self, tag: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.blob(&self.manifest_digest(tag))).unwrap())
            .unwrap()
    }

    /// The path of blob `sha256:<hex>` in the output layout.
    pub fn blob(&self, digest: &str) -> PathBuf {
        self.layout()
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    }
}

/// Dates a file an hour back.
pub fn date_back(path: &Path) {
    let earlier =
        filetime::FileTime::from_system_time(SystemTime::now() - Duration::from_secs(3600));
    filetime::set_file_mtime(path, earlier).unwrap();
}
