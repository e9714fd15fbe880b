//! The chain of built layers a shell-driven build runs through the `layercache` binary, shared
//! by the bench that times it (`benches/chain.rs`) and the test that counts its work
//! (`tests/testsuite/cli_chain.rs`): the plan and its sources, and the two steps of each layer
//! (`lookup LAYER --record R --base-record R_BELOW`, `put LAYER --from R`). It only writes the
//! tree it is given and runs the binary; it decides nothing about what is measured.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_layercache");
/// Layers of the chain: `l0` … `l9`.
pub const LAYERS: usize = 10;

/// Writes the sources and `plan.json` under `root`: a chain `l0` (scratch) ← `l1` ← … ←
/// `l9`, each importing its own directory `src<k>` of `files(k)` files, file `i` at
/// `src<k>/<dir(k, i)>/f<i>.txt` holding `layer <k> file <i>\n`; the plan's `oci_layout` is
/// `oci`. Returns the plan.
pub fn write_chain(
    root: &Path,
    files: impl Fn(usize) -> usize,
    dir: impl Fn(usize, usize) -> String,
) -> std::io::Result<Value> {
    let mut layers = serde_json::Map::new();
    for k in 0..LAYERS {
        let mut made = None;
        for i in 0..files(k) {
            let d = root.join(format!("src{k}")).join(dir(k, i));
            if made.as_ref() != Some(&d) {
                std::fs::create_dir_all(&d)?;
                made = Some(d.clone());
            }
            std::fs::write(d.join(format!("f{i}.txt")), format!("layer {k} file {i}\n"))?;
        }
        let base = if k == 0 {
            json!({"type": "scratch"})
        } else {
            json!({"type": "built", "layer": format!("l{}", k - 1)})
        };
        layers.insert(
            format!("l{k}"),
            json!({
                "definition": {"run": format!("step {k}")},
                "base": base,
                "imports": [{"key": "src", "path": format!("src{k}")}]
            }),
        );
    }
    let plan = json!({"oci_layout": "oci", "layers": layers});
    std::fs::write(root.join("plan.json"), plan.to_string())?;
    Ok(plan)
}

/// The steps of a build against one database: each a `layercache` process, as a shell
/// script runs them.
pub struct Shell {
    /// The directory holding the plans, the records and the manifests files.
    pub root: PathBuf,
    /// The database.
    pub db: PathBuf,
}

impl Shell {
    /// `layercache <args[0]> --db DB --plan <root>/<plan> --json <args[1..]>`, logging
    /// warnings only, with no registry from the environment.
    pub fn run(&self, plan: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg(args[0])
            .arg("--db")
            .arg(&self.db)
            .arg("--plan")
            .arg(self.root.join(plan))
            .arg("--json")
            .args(&args[1..])
            .env("LAYERCACHE_LOG", "warn")
            .env_remove("LAYERCACHE_REMOTE")
            .output()
            .expect("run layercache")
    }

    /// The record file of layer `k`: `<root>/r<k>.json`.
    pub fn rec(&self, k: usize) -> String {
        self.root
            .join(format!("r{k}.json"))
            .to_string_lossy()
            .into_owned()
    }

    /// `lookup l<k> --record r<k>.json [--base-record r<k-1>.json]` of `plan.json`.
    pub fn lookup(&self, k: usize, with_base_record: bool) -> Output {
        let (layer, rec) = (format!("l{k}"), self.rec(k));
        let below = (k > 0).then(|| self.rec(k - 1));
        let mut args = vec!["lookup", layer.as_str(), "--record", rec.as_str()];
        if let (true, Some(b)) = (with_base_record, below.as_ref()) {
            args.extend(["--base-record", b.as_str()]);
        }
        self.run("plan.json", &args)
    }

    /// `put l<k> --from r<k>.json --manifests <root>/<manifests>` of `plan.json`.
    pub fn put(&self, k: usize, manifests: &str) -> Output {
        let (layer, rec) = (format!("l{k}"), self.rec(k));
        let m = self.root.join(manifests).to_string_lossy().into_owned();
        self.run(
            "plan.json",
            &["put", &layer, "--from", &rec, "--manifests", &m],
        )
    }

    /// The sum of every layer's source entries (`row_count`), read from the records.
    pub fn source_entries(&self) -> u64 {
        (0..LAYERS)
            .map(|k| {
                let text = std::fs::read(self.rec(k)).expect("read a record");
                let v: Value = serde_json::from_slice(&text).expect("a record is JSON");
                v["sources"][0]["row_count"].as_u64().expect("row_count")
            })
            .sum()
    }
}

/// A step's exit code and its `--json` output; panics, showing both streams, when stdout is
/// not JSON.
pub fn json_of(o: &Output) -> (i32, Value) {
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap_or(-1), v)
}

/// The entries a step's walks walked (`counters.walk.entries_walked`).
pub fn walked(v: &Value) -> u64 {
    v["counters"]["walk"]["entries_walked"]
        .as_u64()
        .unwrap_or_else(|| panic!("no counters.walk.entries_walked in {v}"))
}
