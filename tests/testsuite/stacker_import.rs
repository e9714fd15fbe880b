//! `layercache import-stacker`: adopting a stacker cache keeps its hits, and only those its
//! records vouch for.
//!
//! The fixtures are written the way stacker writes them: `.stacker/build.cache` as Go's
//! `json.Marshal` of stacker's `BuildCache` (format 16: JSON tags, omitempty; format 12: Go
//! field names, every field), a file import's hash as `lib.HashFile` makes it (sha256 of the
//! content, then Go's text of the mode), a directory's as a base64 go-mtree spec (the layout
//! of go-mtree's `Walk` output: signature comments, the `keywords:` header, `/set`, `.`,
//! indented files, `# ./dir` comments, `..`), checked against a spec copied from go-mtree's
//! own test data. Everything else goes through the real binary and a real redb file.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;

const BIN: &str = env!("CARGO_BIN_EXE_layercache");

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Go's `fs.FileMode.String()` for the plain permission modes the fixtures use.
fn go_mode(mode: u32) -> String {
    let mut s = String::from("-");
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if mode & (1 << (8 - i)) != 0 { c } else { '-' });
    }
    s
}

/// stacker's `lib.HashFile(path, true)`.
fn stacker_hash_file(path: &Path) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    bytes.extend_from_slice(go_mode(mode).as_bytes());
    format!("sha256:{}", sha256_hex(&bytes))
}

/// go-mtree's vis encoding of a name (`VisWhite | VisOctal | VisGlob`) for the characters the
/// fixtures use: anything but letters, digits and `._-+,:@%` as `\ooo`.
fn vis(name: &[u8]) -> String {
    let mut s = String::new();
    for &b in name {
        if b.is_ascii_alphanumeric() || b"._-+,:@%".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\{b:03o}"));
        }
    }
    s
}

/// A go-mtree spec of `root` with stacker's keywords, laid out as go-mtree's `Walk` writes it.
fn mtree_spec(root: &Path) -> String {
    let meta = std::fs::symlink_metadata(root).unwrap();
    let mut out = format!(
        "#          user: stacker\n#       machine: fixture\n#          tree: {}\n#          \
         date: Mon Dec  7 10:00:00 2026\n#      keywords: type,link,uid,gid,xattr,mode,\
         sha256digest\n\n# .\n/set type=file uid={} gid={} mode=0664\n",
        root.display(),
        meta.uid(),
        meta.gid()
    );
    let set = (meta.uid(), meta.gid());
    out.push_str(&format!(". type=dir{}\n", own(root, set, true)));
    dir_body(root, root, set, &mut out);
    out.push_str("..\n");
    out
}

/// The keyvals of one entry that differ from the `/set` line (as go-mtree omits them).
fn own(path: &Path, set: (u32, u32), is_dir: bool) -> String {
    let meta = std::fs::symlink_metadata(path).unwrap();
    let mut kv = String::new();
    if meta.uid() != set.0 {
        kv.push_str(&format!(" uid={}", meta.uid()));
    }
    if meta.gid() != set.1 {
        kv.push_str(&format!(" gid={}", meta.gid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode != 0o664 || is_dir {
        // Go's `%#o`: a leading 0 (Rust's `{:#o}` would write 0o).
        kv.push_str(&format!(" mode=0{mode:o}"));
    }
    // go-mtree reads xattrs of files and directories only.
    if meta.is_file() || meta.is_dir() {
        for name in xattr::list(path).unwrap() {
            if let Some(value) = xattr::get(path, &name).unwrap() {
                let value = base64::engine::general_purpose::STANDARD.encode(value);
                kv.push_str(&format!(" xattr.{}={value}", vis(name.as_encoded_bytes())));
            }
        }
    }
    kv
}

fn dir_body(root: &Path, dir: &Path, set: (u32, u32), out: &mut String) {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let (dirs, files): (Vec<_>, Vec<_>) = names
        .into_iter()
        .partition(|p| std::fs::symlink_metadata(p).unwrap().is_dir());
    for f in files {
        let meta = std::fs::symlink_metadata(&f).unwrap();
        let name = vis(f.file_name().unwrap().as_encoded_bytes());
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&f).unwrap();
            out.push_str(&format!(
                "    {name} type=link{} link={}\n",
                own(&f, set, false),
                vis(target.as_os_str().as_encoded_bytes())
            ));
        } else {
            let sum = sha256_hex(&std::fs::read(&f).unwrap());
            out.push_str(&format!(
                "    {name}{} sha256digest={sum}\n",
                own(&f, set, false)
            ));
        }
    }
    for d in dirs {
        let rel = d.strip_prefix(root).unwrap();
        out.push_str(&format!("\n# ./{}\n", rel.display()));
        let name = vis(d.file_name().unwrap().as_encoded_bytes());
        out.push_str(&format!("{name} type=dir{}\n", own(&d, set, true)));
        dir_body(root, &d, set, out);
        out.push_str("..\n");
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn write(path: &Path, content: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A project as stacker leaves it after `stacker build`: the stackerfile's inputs, stacker's
/// directory (imports, the tar base), the output layout, the rootfs copies; and a plan
/// describing the same build to layercache.
struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    version: u32,
}

impl Project {
    fn new(version: u32) -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let p = Project {
            _tmp: tmp,
            dir,
            version,
        };
        p.write_inputs();
        p.write_plan(&p.base_definition(), &p.app_definition(), None);
        p
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn write_inputs(&self) {
        write(
            &self.p(".stacker/layer-bases/rootfs.tar"),
            b"a tarball",
            0o644,
        );
        write(
            &self.p(".stacker/imports/base/tool.sh"),
            b"#!/bin/sh\necho hi\n",
            0o755,
        );
        write(
            &self.p(".stacker/imports/base/pkg/a.txt"),
            b"alpha\n",
            0o644,
        );
        write(
            &self.p(".stacker/imports/base/pkg/with space.txt"),
            b"spaced\n",
            0o664,
        );
        write(
            &self.p(".stacker/imports/base/pkg/sub/b.txt"),
            b"beta\n",
            0o600,
        );
        std::os::unix::fs::symlink("a.txt", self.p(".stacker/imports/base/pkg/link")).unwrap();
        if self.version >= 13 {
            write(
                &self.p("src/main.c"),
                b"int main(void) { return 0; }\n",
                0o644,
            );
            std::fs::create_dir_all(self.p("roots/base/overlay_dirs/src/src")).unwrap();
        }
        for layer in ["base", "app"] {
            let blob = format!("{layer} layer blob");
            write(
                &self.p(&format!("oci/blobs/sha256/{}", sha256_hex(blob.as_bytes()))),
                blob.as_bytes(),
                0o644,
            );
        }
    }

    /// The stackerfile layer `base` as JSON (what the plan's definition holds).
    fn base_definition(&self) -> Value {
        let mut d = json!({
            "from": {"type": "tar", "url": "https://example.com/rootfs.tar"},
            "imports": ["https://example.com/tool.sh", "pkg"],
            "run": "make install",
        });
        if self.version == 12 {
            // Format 12's stackerfiles wrote `import`.
            let imports = d.as_object_mut().unwrap().remove("imports").unwrap();
            d["import"] = imports;
        } else {
            d["overlay_dirs"] = json!([{"source": "src", "dest": "/src"}]);
        }
        d
    }

    fn app_definition(&self) -> Value {
        json!({"from": {"type": "built", "tag": "base"}, "run": ["make app"]})
    }

    fn write_plan(&self, base: &Value, app: &Value, epoch: Option<i64>) {
        let mut base_layer = json!({
            "definition": base,
            "base": {"type": "tar", "path": ".stacker/layer-bases/rootfs.tar"},
            "imports": [
                {"key": "https://example.com/tool.sh", "path": ".stacker/imports/base/tool.sh"},
                {"key": "pkg", "path": ".stacker/imports/base/pkg"}
            ],
        });
        if self.version >= 13 {
            base_layer["overlay_dirs"] = json!([
                {"key": "src", "source": "src", "rootfs_path": "roots/base/overlay_dirs/src/src"}
            ]);
        }
        let plan = json!({
            "oci_layout": "oci",
            "rootfs_dir": "roots",
            "source_date_epoch": epoch,
            "layers": {
                "base": base_layer,
                "app": {"definition": app, "base": {"type": "built", "layer": "base"}},
            },
        });
        std::fs::write(self.p("plan.json"), plan.to_string()).unwrap();
    }

    /// The `Layer` stacker records for a stackerfile layer: parsed, paths made absolute, `os`
    /// and `arch` defaulted (format 13 on), serialized by Go.
    fn recorded_layer(&self, def: &Value) -> Value {
        let abs = |p: &str| {
            if p.contains("://") {
                p.to_string()
            } else {
                self.dir.join(p).display().to_string()
            }
        };
        // A string import is `{path}`; an object keeps its fields; the path made absolute.
        let imports: Vec<Value> = def
            .get("imports")
            .or_else(|| def.get("import"))
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .map(|i| match i {
                        Value::String(s) => json!({"path": abs(s)}),
                        o => {
                            let mut o = o.clone();
                            o["path"] = json!(abs(o["path"].as_str().unwrap()));
                            o
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let run: Vec<Value> = match def.get("run") {
            Some(Value::String(s)) => vec![Value::String(s.clone())],
            Some(Value::Array(a)) => a.clone(),
            _ => vec![],
        };
        let from = &def["from"];
        if self.version == 12 {
            let str_or = |v: &Value| v.as_str().unwrap_or("").to_string();
            return json!({
                "From": {"Type": str_or(&from["type"]), "Url": str_or(&from["url"]),
                         "Tag": str_or(&from["tag"]), "Insecure": false},
                "Imports": if imports.is_empty() { Value::Null } else {
                    imports.iter().map(|i| json!({"Path": i["path"], "Hash": ""})).collect() },
                "OverlayDirs": null, "Run": run, "Cmd": null, "Entrypoint": null,
                "FullCommand": null, "BuildEnvPt": null, "BuildEnv": null, "Environment": null,
                "Volumes": null, "Labels": null, "GenerateLabels": null, "WorkingDir": "",
                "BuildOnly": false, "Binds": null, "RuntimeUser": "",
            });
        }
        let (os, arch) = layercache::testing::stacker::host_platform();
        let mut l = json!({"from": from, "run": run, "os": os, "arch": arch});
        if !imports.is_empty() {
            l["imports"] = Value::Array(imports);
        }
        if let Some(Value::Array(o)) = def.get("overlay_dirs") {
            l["overlay_dirs"] = o
                .iter()
                .map(|o| json!({"Source": abs(o["source"].as_str().unwrap()), "Dest": o["dest"]}))
                .collect();
        }
        l
    }

    fn manifests(&self, layer: &str) -> Value {
        let blob = format!("{layer} layer blob");
        let key = if self.version == 12 {
            "tar"
        } else {
            "tar+false"
        };
        json!({key: {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{}", sha256_hex(blob.as_bytes())),
            "size": blob.len(),
        }})
    }

    /// stacker's entry of `base`, its inputs hashed as they are on disk now.
    fn base_entry(&self, def: &Value, epoch: Option<i64>) -> Value {
        let mut e = json!({
            "Manifests": self.manifests("base"),
            "Imports": {
                "https://example.com/tool.sh":
                    {"Type": 0, "Hash": stacker_hash_file(&self.p(".stacker/imports/base/tool.sh"))},
                self.dir.join("pkg").display().to_string():
                    {"Type": 1, "Hash": b64(&mtree_spec(&self.p(".stacker/imports/base/pkg")))},
            },
            "OverlayDirs": {},
            "Name": "base",
            "Layer": self.recorded_layer(def),
            "Base": stacker_hash_file(&self.p(".stacker/layer-bases/rootfs.tar")),
        });
        if self.version >= 13 {
            e["OverlayDirs"] = json!({
                self.dir.join("src").display().to_string():
                    {"Hash": b64(&mtree_spec(&self.p("src")))}
            });
        }
        if let Some(epoch) = epoch {
            e["source_date_epoch"] = epoch.into();
        }
        e
    }

    /// stacker's entry of `app`, built on the base entry `base`.
    fn app_entry(&self, base: &Value, epoch: Option<i64>) -> Value {
        let base_hash =
            layercache::testing::stacker_import::gohash::entry_hash(self.version, base).unwrap();
        let mut e = json!({
            "Manifests": self.manifests("app"),
            "Imports": {},
            "OverlayDirs": {},
            "Name": "app",
            "Layer": self.recorded_layer(&self.app_definition()),
            "Base": base_hash.to_string(),
        });
        if let Some(epoch) = epoch {
            e["source_date_epoch"] = epoch.into();
        }
        e
    }

    /// Writes `.stacker/build.cache` as stacker does after building both layers.
    fn write_stacker_cache(&self, epoch: Option<i64>) {
        let base = self.base_entry(&self.base_definition(), epoch);
        let app = self.app_entry(&base, epoch);
        self.write_cache_entries(json!({"base": base, "app": app}));
    }

    fn write_cache_entries(&self, cache: Value) {
        let file = json!({"cache": cache, "version": self.version});
        std::fs::write(self.cache_file(), serde_json::to_vec(&file).unwrap()).unwrap();
    }

    fn cache_file(&self) -> PathBuf {
        self.p(".stacker/build.cache")
    }

    fn db(&self) -> PathBuf {
        self.p("cache.redb")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("LAYERCACHE_LOG", "warn")
            .env_remove("LAYERCACHE_DB")
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }

    fn import(&self) -> Output {
        let db = self.db();
        let plan = self.p("plan.json");
        let cache = self.cache_file();
        self.run(&[
            "import-stacker",
            "--db",
            db.to_str().unwrap(),
            "--plan",
            plan.to_str().unwrap(),
            cache.to_str().unwrap(),
        ])
    }

    /// The `--json` report's layers by name, the command asserted to succeed.
    fn import_json(&self) -> BTreeMap<String, Value> {
        let v = self.import_report();
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["layer"].as_str().unwrap().to_string(), l.clone()))
            .collect()
    }

    /// The whole `--json` report, the command asserted to succeed.
    fn import_report(&self) -> Value {
        let db = self.db();
        let plan = self.p("plan.json");
        let cache = self.cache_file();
        let out = self.run(&[
            "import-stacker",
            "--json",
            "--db",
            db.to_str().unwrap(),
            "--plan",
            plan.to_str().unwrap(),
            cache.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "import-stacker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `layercache lookup`: true on a hit (exit 0), false on a miss (exit 1).
    fn hits(&self, layer: &str) -> bool {
        let db = self.db();
        let plan = self.p("plan.json");
        let out = self.run(&[
            "lookup",
            "--db",
            db.to_str().unwrap(),
            "--plan",
            plan.to_str().unwrap(),
            layer,
        ]);
        match out.status.code() {
            Some(0) => true,
            Some(1) => false,
            other => panic!(
                "lookup {layer} exited {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

fn status(report: &BTreeMap<String, Value>, layer: &str) -> String {
    report[layer]["status"].as_str().unwrap().to_string()
}

fn why(report: &BTreeMap<String, Value>, layer: &str) -> String {
    report[layer]["why"].as_str().unwrap_or("").to_string()
}

#[test]
fn v16_matching_layers_hit_after_import() {
    let p = Project::new(16);
    p.write_stacker_cache(None);
    assert!(!p.hits("base"), "nothing is cached before the import");
    // Inputs written an hour ago (as after a stacker build), so no row is racy and the count
    // below is the files' reads alone.
    let old = filetime::FileTime::from_system_time(
        std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
    );
    for dir in [".stacker/imports", "src"] {
        for e in walkdir::WalkDir::new(p.p(dir)) {
            filetime::set_symlink_file_times(e.unwrap().path(), old, old).unwrap();
        }
    }
    // Past the tick of the last status change: nothing is ctime-racy.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let full = p.import_report();
    // base's 5 files (tool.sh; pkg: a.txt, with space.txt, sub/b.txt; src: main.c) are read
    // once by the lookup (blake3) and once against stacker's hashes (sha256); the put reuses
    // the lookup's digests and reads none again.
    assert_eq!(full["counters"]["walk"]["files_hashed"], json!(5), "{full}");
    assert_eq!(full["verified"]["files"], json!(5), "{full}");
    assert_eq!(full["verified"]["sources"], json!(3), "{full}");
    let report: BTreeMap<String, Value> = full["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["layer"].as_str().unwrap().to_string(), l.clone()))
        .collect();
    assert_eq!(status(&report, "base"), "imported", "{:?}", report["base"]);
    assert_eq!(status(&report, "app"), "imported", "{:?}", report["app"]);
    assert_eq!(report["base"]["manifests"], json!(["tar"]));
    assert!(p.hits("base"));
    assert!(p.hits("app"));
    // A second import finds both cached already, with stacker's outputs.
    let again = p.import_json();
    assert_eq!(status(&again, "base"), "already_cached");
    assert_eq!(status(&again, "app"), "already_cached");
}

#[test]
fn v16_text_report_says_imported_and_skipped_why() {
    let p = Project::new(16);
    p.write_stacker_cache(None);
    write(
        &p.p(".stacker/imports/base/tool.sh"),
        b"#!/bin/sh\necho changed\n",
        0o755,
    );
    let out = p.import();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("(format 16): 0 of 2 layer(s) imported"),
        "{text}"
    );
    assert!(
        text.contains("base: skipped: its import https://example.com/tool.sh changed"),
        "{text}"
    );
    assert!(
        text.contains("app: skipped: it is built on base, which was not imported"),
        "{text}"
    );
}

#[test]
fn v12_fixture_imports_and_hits() {
    let p = Project::new(12);
    p.write_stacker_cache(None);
    let report = p.import_json();
    assert_eq!(status(&report, "base"), "imported", "{:?}", report["base"]);
    assert_eq!(status(&report, "app"), "imported", "{:?}", report["app"]);
    assert!(p.hits("base"));
    assert!(p.hits("app"));
}

#[test]
fn v12_does_not_vouch_for_source_date_epoch() {
    let p = Project::new(12);
    p.write_stacker_cache(None);
    p.write_plan(
        &p.base_definition(),
        &p.app_definition(),
        Some(1_700_000_000),
    );
    let report = p.import_json();
    assert_eq!(status(&report, "base"), "skipped");
    assert!(
        why(&report, "base").contains("predates SOURCE_DATE_EPOCH"),
        "{report:?}"
    );
    assert!(!p.hits("base"));
}

#[test]
fn v16_source_date_epoch_must_match() {
    let p = Project::new(16);
    p.write_stacker_cache(Some(1_600_000_000));
    p.write_plan(
        &p.base_definition(),
        &p.app_definition(),
        Some(1_700_000_000),
    );
    let report = p.import_json();
    assert!(why(&report, "base").contains("SOURCE_DATE_EPOCH is 1700000000 now, 1600000000"));
    assert!(!p.hits("base"));
    // The epoch stacker built with imports.
    p.write_plan(
        &p.base_definition(),
        &p.app_definition(),
        Some(1_600_000_000),
    );
    let report = p.import_json();
    assert_eq!(status(&report, "base"), "imported", "{:?}", report["base"]);
    assert_eq!(status(&report, "app"), "imported", "{:?}", report["app"]);
    assert!(p.hits("app"));
}

#[test]
fn file_changed_since_stackers_build_keeps_layer_and_dependents_out() {
    for version in [12, 16] {
        let p = Project::new(version);
        p.write_stacker_cache(None);
        // Same size, same mode, other content, in the imported directory.
        write(
            &p.p(".stacker/imports/base/pkg/sub/b.txt"),
            b"BETA\n",
            0o600,
        );
        let report = p.import_json();
        assert_eq!(status(&report, "base"), "skipped");
        assert!(
            why(&report, "base").contains("sub/b.txt (content)"),
            "format {version}: {report:?}"
        );
        assert!(why(&report, "app").contains("built on base"), "{report:?}");
        assert!(!p.hits("base"));
        assert!(!p.hits("app"));
    }
}

#[test]
fn mode_change_of_a_file_import_keeps_layer_out() {
    let p = Project::new(16);
    p.write_stacker_cache(None);
    std::fs::set_permissions(
        p.p(".stacker/imports/base/tool.sh"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let report = p.import_json();
    assert!(
        why(&report, "base").contains("tool.sh changed since stacker's build (content or mode)"),
        "{report:?}"
    );
    assert!(why(&report, "app").contains("built on base"));
    assert!(!p.hits("base"));
}

#[test]
fn mode_change_in_an_imported_directory_keeps_layer_out() {
    let p = Project::new(16);
    p.write_stacker_cache(None);
    std::fs::set_permissions(
        p.p(".stacker/imports/base/pkg/a.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let report = p.import_json();
    assert!(why(&report, "base").contains("a.txt (mode)"), "{report:?}");
    assert!(!p.hits("base"));
    assert!(!p.hits("app"));
}

#[test]
fn file_removed_from_an_overlay_dir_keeps_layer_out() {
    let p = Project::new(16);
    p.write_stacker_cache(None);
    std::fs::remove_file(p.p("src/main.c")).unwrap();
    let report = p.import_json();
    assert!(
        why(&report, "base").contains("overlay dir src changed since stacker's build")
            && why(&report, "base").contains("main.c (gone since stacker's build)"),
        "{report:?}"
    );
    assert!(!p.hits("base"));
}

#[test]
fn changed_definition_keeps_layer_and_dependents_out() {
    let p = Project::new(16);
    p.write_stacker_cache(None);
    let mut def = p.base_definition();
    def["run"] = json!("make install-all");
    p.write_plan(&def, &p.app_definition(), None);
    let report = p.import_json();
    assert!(
        why(&report, "base")
            .contains("definition differs from the one stacker built (fields: run)"),
        "{report:?}"
    );
    assert!(why(&report, "app").contains("built on base"));
    assert!(!p.hits("base"));
    assert!(!p.hits("app"));
}

#[test]
fn changed_tar_base_keeps_layer_and_dependents_out() {
    let p = Project::new(16);
    p.write_stacker_cache(None);
    write(
        &p.p(".stacker/layer-bases/rootfs.tar"),
        b"another tarball",
        0o644,
    );
    let report = p.import_json();
    assert!(
        why(&report, "base").contains("its tar base changed"),
        "{report:?}"
    );
    assert!(why(&report, "app").contains("built on base"));
    assert!(!p.hits("base"));
    assert!(!p.hits("app"));
}

#[test]
fn dependent_built_on_an_older_build_of_its_base_is_not_imported() {
    // stacker rebuilt base (other outputs) after app was built on the earlier base: app's
    // recorded base hash is of the earlier entry, so its outputs are not built on today's base.
    let p = Project::new(16);
    let base = p.base_entry(&p.base_definition(), None);
    let mut earlier = base.clone();
    earlier["Manifests"]["tar+false"]["size"] = json!(1);
    let app = p.app_entry(&earlier, None);
    p.write_cache_entries(json!({"base": base, "app": app}));
    let report = p.import_json();
    assert_eq!(status(&report, "base"), "imported", "{report:?}");
    assert!(
        why(&report, "app").contains("another build of base"),
        "{report:?}"
    );
    assert!(p.hits("base"));
    assert!(!p.hits("app"));
}

#[test]
fn import_with_dest_is_not_vouched_for() {
    let p = Project::new(16);
    p.write_stacker_cache(None);
    let plan: Value = serde_json::from_slice(&std::fs::read(p.p("plan.json")).unwrap()).unwrap();
    let mut plan = plan;
    plan["layers"]["base"]["imports"][0]["dest"] = json!("/usr/bin/");
    std::fs::write(p.p("plan.json"), plan.to_string()).unwrap();
    let report = p.import_json();
    assert!(why(&report, "base").contains("has a dest"), "{report:?}");
    assert!(!p.hits("base"));
    // A dest import in the definition that the plan does not list as an input: stacker did
    // not hash it, so nothing vouches for the content the outputs were built from.
    let mut def = p.base_definition();
    def["imports"]
        .as_array_mut()
        .unwrap()
        .push(json!({"path": "doc/README", "dest": "/usr/share/doc/"}));
    p.write_plan(&def, &p.app_definition(), None);
    let base = p.base_entry(&def, None);
    p.write_cache_entries(json!({"base": base}));
    let report = p.import_json();
    assert!(
        why(&report, "base").contains("doc/README has a dest"),
        "{report:?}"
    );
    assert!(!p.hits("base"));
}

#[test]
fn mtree_spec_without_stackers_keywords_is_not_vouched_for() {
    let p = Project::new(16);
    let mut base = p.base_entry(&p.base_definition(), None);
    let spec = mtree_spec(&p.p(".stacker/imports/base/pkg")).replace(",xattr,", ",");
    let key = p.dir.join("pkg").display().to_string();
    base["Imports"][&key]["Hash"] = json!(b64(&spec));
    let app = p.app_entry(&base, None);
    p.write_cache_entries(json!({"base": base, "app": app}));
    let report = p.import_json();
    assert!(
        why(&report, "base").contains("not made with the keyword \"xattr\""),
        "{report:?}"
    );
    // A spec that is not base64 of a spec at all.
    let mut base = p.base_entry(&p.base_definition(), None);
    base["Imports"][&key]["Hash"] = json!("not base64!");
    p.write_cache_entries(json!({"base": base}));
    let report = p.import_json();
    assert!(
        why(&report, "base").contains("not valid base64"),
        "{report:?}"
    );
    assert!(!p.hits("base"));
}

/// Every byte of the database file.
fn snapshot(db: &Path) -> Vec<u8> {
    std::fs::read(db).unwrap()
}

#[test]
fn damaged_or_truncated_stacker_file_is_an_error_and_changes_nothing() {
    let p = Project::new(16);
    p.write_stacker_cache(None);
    // A database with something in it: `base` imported, then its import changed.
    let full = std::fs::read(p.cache_file()).unwrap();
    let report = p.import_json();
    assert_eq!(status(&report, "base"), "imported");
    let before = snapshot(&p.db());
    for (what, bytes) in [
        ("truncated", full[..full.len() / 2].to_vec()),
        ("damaged", {
            // The first `:` (after `"cache"`) made a `#`.
            let mut b = full.clone();
            let colon = b.iter().position(|&c| c == b':').unwrap();
            b[colon] = b'#';
            b
        }),
        ("empty", Vec::new()),
    ] {
        std::fs::write(p.cache_file(), &bytes).unwrap();
        let out = p.import();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains("invalid stacker cache file") && stderr.contains("not valid JSON"),
            "{what}: {stderr}"
        );
        assert!(
            stderr.contains("build.cache"),
            "{what}: names the file: {stderr}"
        );
        assert_eq!(snapshot(&p.db()), before, "{what}: the database changed");
        assert_eq!(
            std::fs::read(p.cache_file()).unwrap(),
            bytes,
            "the stacker file changed"
        );
    }
}

#[test]
fn unknown_format_version_is_refused_and_changes_nothing() {
    let p = Project::new(16);
    p.write_stacker_cache(None);
    p.import_json();
    let before = snapshot(&p.db());
    for version in [11, 17] {
        let mut file: Value =
            serde_json::from_slice(&std::fs::read(p.cache_file()).unwrap()).unwrap();
        file["version"] = json!(version);
        std::fs::write(p.cache_file(), file.to_string()).unwrap();
        let out = p.import();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("has format version {version}"))
                && stderr.contains("versions 12 to 16"),
            "{stderr}"
        );
        assert_eq!(snapshot(&p.db()), before);
    }
    // A file that does not exist yet creates no database either.
    std::fs::remove_file(p.cache_file()).unwrap();
    std::fs::remove_file(p.db()).unwrap();
    let out = p.import();
    assert_eq!(out.status.code(), Some(2));
    assert!(!p.db().exists(), "a failed import created the database");
}

/// go-mtree's own test spec (`hierarchy_test.go`, `TestUsedKeywords`, "xattrs"), parsed by
/// the importer, and the fixture writer's spec of the same tree parsed alike.
#[test]
fn parses_go_mtree_test_spec_like_the_fixture_writer_writes() {
    use layercache::testing::stacker_import::mtree;
    let upstream = "
#          user: cyphar
#       machine: ryuk
#          tree: xattr
#          date: Fri Sep 29 21:00:41 2017
#      keywords: size,type,uid,gid,mode,link,nlink,time,xattr

# .
/set type=file nlink=1 mode=0664 uid=1000 gid=100 xattr.user.kira=SSdsbCB0YWtlIGEgcG90YXRvIGNoaXAuLi4gYW5kIGVhdCBpdCE=
. size=8 type=dir mode=0755 time=1506666472.255992830
    file size=0 mode=0644 time=1506666472.255992830 xattr.user.something=dGVzdA==
..
";
    let spec = mtree::parse(upstream.as_bytes()).unwrap();
    assert_eq!(
        spec.header_keywords.as_deref(),
        Some(
            &[
                "size", "type", "uid", "gid", "mode", "link", "nlink", "time", "xattr"
            ]
            .map(String::from)[..]
        )
    );
    let file = &spec.entries[&b"file".to_vec()].keywords;
    assert_eq!(file["type"], "file");
    assert_eq!(file["mode"], "0644");
    assert_eq!(file["uid"], "1000");
    assert_eq!(file["gid"], "100");
    assert!(file.contains_key("xattr.user.kira") && file.contains_key("xattr.user.something"));
    let root = &spec.entries[&Vec::new()].keywords;
    assert_eq!(
        (root["type"].as_str(), root["mode"].as_str()),
        ("dir", "0755")
    );

    // The same tree written by the fixture writer: the same entries, types and modes.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("xattr");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&dir.join("file"), b"", 0o644);
    let ours = mtree::parse(mtree_spec(&dir).as_bytes()).unwrap();
    assert_eq!(
        ours.entries.keys().collect::<Vec<_>>(),
        spec.entries.keys().collect::<Vec<_>>()
    );
    for (path, e) in &ours.entries {
        for k in ["type", "mode"] {
            assert_eq!(
                e.keywords[k], spec.entries[path].keywords[k],
                "{path:?} {k}"
            );
        }
    }
    assert_eq!(
        mtree::check_dir(&dir, &ours, &mut mtree::Hashed::default()).unwrap(),
        mtree::Verdict::Matches
    );
}

/// A `docker` base (the manifest digest its tag resolves to in `layer-bases/oci`) and a
/// build-only layer on `scratch` (no outputs; its rootfs directory must exist).
#[test]
fn docker_base_and_build_only_scratch_layer() {
    let p = Project::new(16);
    let layout = p.p(".stacker/layer-bases/oci");
    let index = |digest: &str| {
        json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": 7,
            "annotations": {"org.opencontainers.image.ref.name": "ubuntu"}}]})
        .to_string()
    };
    let ubuntu = sha256_hex(b"ubuntu manifest");
    write(
        &layout.join("index.json"),
        index(&format!("sha256:{ubuntu}")).as_bytes(),
        0o644,
    );
    std::fs::create_dir_all(p.p("roots/builder")).unwrap();
    let tools_def = json!({"from": {"type": "docker", "url": "docker://ubuntu:22.04"},
                           "run": ["apt-get install -y make"]});
    let builder_def = json!({"from": {"type": "scratch"}, "build_only": true});
    let plan = json!({
        "oci_layout": "oci", "rootfs_dir": "roots",
        "layers": {
            "tools": {"definition": tools_def,
                      "base": {"type": "docker", "layout": ".stacker/layer-bases/oci", "tag": "ubuntu"}},
            "builder": {"definition": builder_def, "base": {"type": "scratch"}, "build_only": true},
        },
    });
    std::fs::write(p.p("plan.json"), plan.to_string()).unwrap();
    let mut recorded_builder = p.recorded_layer(&builder_def);
    recorded_builder["build_only"] = json!(true);
    let entries = json!({
        "tools": {"Manifests": p.manifests("base"), "Imports": {}, "OverlayDirs": {},
                  "Name": "tools", "Layer": p.recorded_layer(&tools_def), "Base": ubuntu},
        "builder": {"Manifests": {}, "Imports": {}, "OverlayDirs": {}, "Name": "builder",
                    "Layer": recorded_builder, "Base": ""},
    });
    p.write_cache_entries(entries);
    let report = p.import_json();
    assert_eq!(status(&report, "tools"), "imported", "{report:?}");
    assert_eq!(status(&report, "builder"), "imported", "{report:?}");
    assert_eq!(report["builder"]["manifests"], json!([]));
    assert!(p.hits("tools"));
    assert!(p.hits("builder"));

    // The tag now resolves to another image: stacker's outputs are not of today's base.
    let p2 = Project::new(16);
    std::fs::write(p2.p("plan.json"), plan.to_string()).unwrap();
    std::fs::create_dir_all(p2.p("roots/builder")).unwrap();
    let other = sha256_hex(b"another ubuntu manifest");
    write(
        &p2.p(".stacker/layer-bases/oci/index.json"),
        index(&format!("sha256:{other}")).as_bytes(),
        0o644,
    );
    std::fs::write(p2.cache_file(), std::fs::read(p.cache_file()).unwrap()).unwrap();
    let report = p2.import_json();
    assert!(
        why(&report, "tools").contains("its base image changed"),
        "{report:?}"
    );
    assert!(!p2.hits("tools"));
    // The build-only layer whose rootfs is gone is not imported either.
    std::fs::remove_dir(p2.p("roots/builder")).unwrap();
    let report = p2.import_json();
    assert!(
        why(&report, "builder").contains("build-only rootfs"),
        "{report:?}"
    );
}

/// Formats 13 to 15 (JSON tags; `source_date_epoch` from 15) import and hit as 16 does, and
/// a changed file keeps the layer out in each.
#[test]
fn formats_13_to_15_import_and_hit() {
    for version in [13, 14, 15] {
        let p = Project::new(version);
        p.write_stacker_cache(None);
        let report = p.import_json();
        assert_eq!(
            status(&report, "base"),
            "imported",
            "format {version}: {report:?}"
        );
        assert_eq!(
            status(&report, "app"),
            "imported",
            "format {version}: {report:?}"
        );
        assert!(p.hits("app"), "format {version}");

        let p = Project::new(version);
        p.write_stacker_cache(None);
        write(&p.p("src/main.c"), b"int main(void) { return 1; }\n", 0o644);
        let report = p.import_json();
        assert!(
            why(&report, "base").contains("main.c (content)"),
            "format {version}: {report:?}"
        );
        assert!(!p.hits("base"), "format {version}");
    }
}

/// The library call a Rust builder makes, on the same fixture: the report says what the
/// binary prints, and the cache hits afterwards.
#[test]
fn library_import_then_lookup_hits() {
    let p = Project::new(16);
    p.write_stacker_cache(None);
    let stacker = layercache::StackerCache::read(p.cache_file()).unwrap();
    assert_eq!(stacker.version, 16);
    let plan = layercache::testing::plan::Plan::load(p.p("plan.json")).unwrap();
    let cache = layercache::Cache::open(plan.cache_config(p.db())).unwrap();
    let options = layercache::ImportOptions::for_cache_file(&p.cache_file());
    assert_eq!(options.stackerfile_dir, p.dir);
    let report =
        layercache::import_stacker_cache(&cache, plan.build(), &stacker, &options).unwrap();
    assert_eq!(report.imported(), 2, "{report:?}");
    let names: Vec<&str> = report.layers.iter().map(|l| l.layer.as_str()).collect();
    assert_eq!(names, ["base", "app"], "bases first");
    let mut session = cache.session(plan.build()).unwrap();
    assert!(session.lookup("app").unwrap().is_hit());
    assert!(session.lookup("base").unwrap().is_hit());
}

/// stacker made relative paths absolute against the stackerfile's directory: a cache file
/// kept elsewhere than `<project>/.stacker/` needs `--stackerfile-dir`, or its layers'
/// definitions differ (their import paths are another directory's).
#[test]
fn stackerfile_dir_option() {
    let p = Project::new(16);
    p.write_stacker_cache(None);
    let elsewhere = p.p("saved/state/build.cache");
    std::fs::create_dir_all(elsewhere.parent().unwrap()).unwrap();
    std::fs::copy(p.cache_file(), &elsewhere).unwrap();
    let (db, plan) = (p.db(), p.p("plan.json"));
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["import-stacker", "--json", "--db", db.to_str().unwrap()]
            .map(String::from)
            .to_vec();
        a.extend(["--plan".to_string(), plan.display().to_string()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(elsewhere.display().to_string());
        a
    };
    let run = |a: Vec<String>| -> Value {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = p.run(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let report = run(args(&[]));
    let why = report["layers"][0]["why"].as_str().unwrap_or("");
    assert!(
        why.contains("definition differs") && why.contains("imports"),
        "{report}"
    );
    assert!(!p.hits("base"));
    let dir = p.dir.display().to_string();
    let report = run(args(&["--stackerfile-dir", &dir]));
    assert_eq!(report["layers"][0]["status"], "imported", "{report}");
    assert!(p.hits("app"));
}

/// A layer layercache already built itself, with other outputs than stacker's, keeps its own
/// version; the layers stacker built on stacker's build of it are not imported.
#[test]
fn layer_already_cached_with_other_outputs_keeps_dependents_out() {
    let p = Project::new(16);
    p.write_stacker_cache(None);
    let blob = b"layercache's own build of base";
    let hex = sha256_hex(blob);
    write(&p.p(&format!("oci/blobs/sha256/{hex}")), blob, 0o644);
    let manifests = json!({"tar": {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                   "digest": format!("sha256:{hex}"), "size": blob.len()}});
    std::fs::write(p.p("own.json"), manifests.to_string()).unwrap();
    let (db, plan, own) = (p.db(), p.p("plan.json"), p.p("own.json"));
    let out = p.run(&[
        "put",
        "--db",
        db.to_str().unwrap(),
        "--plan",
        plan.to_str().unwrap(),
        "--manifests",
        own.to_str().unwrap(),
        "--inputs-as-of-now",
        "base",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = p.import_json();
    assert!(
        why(&report, "base").contains("already hits on a version with other outputs"),
        "{report:?}"
    );
    assert!(why(&report, "app").contains("built on base"), "{report:?}");
    assert!(p.hits("base"), "its own version still hits");
    assert!(!p.hits("app"));
}
