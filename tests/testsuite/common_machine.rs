//! One machine of a shared-cache test (`remote_cache`, `remote_trust`): its own directory,
//! database, OCI layout (made by umoci) and copy of the sources, driven through the real
//! binary with nothing from the environment's registry settings. Each topic says which
//! sources and plan its machines have; this module only lays them out and runs the steps.

use crate::registry::{image_blobs, noise, run};

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{Value, json};

/// One machine: its own directory, database, OCI layout and copy of the sources.
pub struct Machine {
    /// Its directory: `src/`, `oci/`, `cache.redb`, `plan.json`.
    pub dir: PathBuf,
    /// Flags every [`Machine::lookup`] passes before the caller's.
    pub lookup_flags: &'static [&'static str],
    /// Bytes of noise in each fake build's output file.
    pub output_noise: usize,
}

impl Machine {
    /// A machine at `dir` with the source files `files` (path under `dir`, content), an empty
    /// OCI layout `oci` and the plan `plan`.
    pub fn at(dir: PathBuf, files: &[(&str, &str)], plan: &Value) -> Machine {
        for (rel, content) in files {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().expect("a file under dir")).expect("mkdir");
            std::fs::write(p, content).expect("write");
        }
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(dir.join("oci")));
        let m = Machine {
            dir,
            lookup_flags: &[],
            output_noise: 200_000,
        };
        m.write_plan(plan);
        m
    }

    /// Replaces `plan.json`.
    pub fn write_plan(&self, plan: &Value) {
        std::fs::write(self.dir.join("plan.json"), plan.to_string()).expect("plan");
    }

    /// The OCI layout.
    pub fn layout(&self) -> PathBuf {
        self.dir.join("oci")
    }

    /// The database.
    pub fn db(&self) -> PathBuf {
        self.dir.join("cache.redb")
    }

    /// Runs the binary with `--db` and `--plan` of this machine, after `args`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_layercache"));
        c.args(args)
            .arg("--db")
            .arg(self.db())
            .arg("--plan")
            .arg(self.dir.join("plan.json"))
            .env_remove("LAYERCACHE_REMOTE")
            .env_remove("LAYERCACHE_TRUST_KEYS")
            .env_remove("LAYERCACHE_SIGN_KEY_PASSWORD")
            .env_remove("REGISTRY_AUTH_FILE")
            .env("HOME", &self.dir)
            .env("XDG_RUNTIME_DIR", &self.dir);
        c
    }

    /// [`Machine::cmd`], run to its end.
    pub fn out(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run layercache")
    }

    /// `lookup --json` of a layer, with [`Machine::lookup_flags`] and `extra`: (exit code,
    /// JSON, stderr).
    pub fn lookup(&self, layer: &str, extra: &[&str]) -> (i32, Value, String) {
        let mut args = vec!["lookup", "--json"];
        args.extend_from_slice(self.lookup_flags);
        args.extend_from_slice(extra);
        args.push(layer);
        let o = self.out(&args);
        let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        (
            o.status.code().unwrap_or(-1),
            v,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// A fake build of `layer`: an image tagged `layer` in this machine's layout holding one
    /// file whose content depends on `content`, then `put --inputs-as-of-now` with its layer
    /// descriptor, which it returns.
    pub fn build(&self, layer: &str, content: &str) -> Value {
        let image = format!("{}:{layer}", self.layout().display());
        run(Command::new("umoci").args(["new", "--image", &image]));
        let f = self.dir.join(format!("out-{layer}.bin"));
        let mut bytes = format!("{layer} {content}\n").into_bytes();
        bytes.extend(noise(
            self.output_noise,
            content.len() as u64 + layer.len() as u64,
        ));
        std::fs::write(&f, bytes).expect("write output");
        let mut c = Command::new("umoci");
        c.args(["insert", "--image", &image]);
        // SAFETY: geteuid(2) takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            c.arg("--rootless");
        }
        run(c.arg(&f).arg("/out.bin"));
        let desc = image_blobs(&self.layout(), layer)[0].0.clone();
        let m = self.dir.join(format!("manifests-{layer}.json"));
        std::fs::write(&m, json!({ "tar": desc }).to_string()).expect("manifests");
        let o = self.out(&[
            "put",
            "--manifests",
            m.to_str().expect("utf-8"),
            "--inputs-as-of-now",
            layer,
        ]);
        assert!(o.status.success(), "put {layer}: {o:?}");
        desc
    }
}
