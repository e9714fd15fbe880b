//! A cache shared through a real registry (the CNCF distribution server on 127.0.0.1), driven
//! through the real binary: two caches as two machines (different databases, different OCI
//! layouts made by umoci, the same source tree at different absolute paths). No mocks.

use crate::common_machine::Machine;
use crate::registry;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use registry::{Registry, image_blobs, run, sha256_file, tools_available};
use serde_json::{Value, json};
use sha2::Digest as _;

const REPO: &str = "layercache/shared";
const LAYERS: [&str; 3] = ["l1", "l2", "l3"];

/// A machine with three layers `l1` ← `l2` ← `l3`, importing `src/a`, `src/b` and `src/c.txt`.
fn machine(dir: PathBuf) -> Machine {
    let files = [
        ("src/a/one.txt", "one\n"),
        ("src/a/deep/two.txt", "two\n"),
        ("src/b/main.c", "int main(){return 0;}\n"),
        ("src/c.txt", "config\n"),
    ];
    let plan = json!({
        "oci_layout": "oci",
        "layers": {
            "l1": {"definition": {"run": "one"}, "base": {"type": "scratch"},
                   "imports": [{"key": "a", "path": "src/a"}]},
            "l2": {"definition": {"run": "two"}, "base": {"type": "built", "layer": "l1"},
                   "imports": [{"key": "b", "path": "src/b"}]},
            "l3": {"definition": {"run": "three"}, "base": {"type": "built", "layer": "l2"},
                   "imports": [{"key": "c", "path": "src/c.txt"}]},
        }
    });
    Machine::at(dir, &files, &plan)
}

impl Machine {
    /// A machine whose bottom layer `l1` has an import and an overlay dir (`src/ov`, copied by
    /// the builder to `roots/l1/overlay_dirs/ov`), with `l2` and `l3` built on it. `built`:
    /// the builder's copy exists (a machine that builds); otherwise there is no `roots/` at
    /// all (a fresh machine that never built anything).
    fn with_overlay(dir: PathBuf, built: bool) -> Machine {
        let m = machine(dir);
        std::fs::create_dir_all(m.dir.join("src/ov/sub")).expect("mkdir ov");
        std::fs::write(m.dir.join("src/ov/x.txt"), "overlay x\n").expect("write");
        std::fs::write(m.dir.join("src/ov/sub/y.txt"), "overlay y\n").expect("write");
        if built {
            std::fs::create_dir_all(m.dir.join("roots/l1/overlay_dirs/ov")).expect("mkdir copy");
        }
        let plan = json!({
            "oci_layout": "oci",
            "layers": {
                "l1": {"definition": {"run": "one"}, "base": {"type": "scratch"},
                       "imports": [{"key": "a", "path": "src/a"}],
                       "overlay_dirs": [{"key": "ov", "source": "src/ov",
                                         "rootfs_path": "roots/l1/overlay_dirs/ov"}]},
                "l2": {"definition": {"run": "two"}, "base": {"type": "built", "layer": "l1"},
                       "imports": [{"key": "b", "path": "src/b"}]},
                "l3": {"definition": {"run": "three"}, "base": {"type": "built", "layer": "l2"},
                       "imports": [{"key": "c", "path": "src/c.txt"}]},
            }
        });
        m.write_plan(&plan);
        m
    }

    /// `push --json` / `pull --json` of every layer: (exit code, per-layer statuses, stderr).
    fn share(&self, what: &str, remote: &str, extra: &[&str]) -> (i32, Vec<Value>, String) {
        let mut args = vec![what, "--json", "--remote", remote, "--remote-timeout", "3"];
        args.extend_from_slice(extra);
        let o = self.out(&args);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let rows = v[what].as_array().cloned().unwrap_or_default();
        (
            o.status.code().unwrap_or(-1),
            rows,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

fn statuses(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            format!(
                "{}={}",
                r["layer"].as_str().unwrap_or("?"),
                r["status"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// Every blob of `layer`'s image in `from` is in `to`'s layout, with the right content.
fn assert_blobs_arrived(from: &Machine, to: &Machine, layer: &str) {
    for (d, _) in image_blobs(&from.layout(), layer) {
        let digest = d["digest"].as_str().expect("digest").to_string();
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        let there = to.layout().join("blobs/sha256").join(hex);
        assert_eq!(sha256_file(&there), digest, "{layer}: blob {digest}");
    }
}

fn warnings(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.contains("warning")).count()
}

fn two_machines() -> Option<(Registry, tempfile::TempDir, Machine, Machine, String)> {
    if !tools_available(&["umoci", "skopeo"]) {
        return None;
    }
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = machine(tmp.path().join("machine-a"));
    let b = machine(tmp.path().join("elsewhere/machine-b"));
    let remote = format!("{}/{REPO}", reg.addr);
    Some((reg, tmp, a, b, remote))
}

#[test]
fn two_machines_share_a_chain_and_changed_inputs_never_take_a_remote_entry() {
    let Some((reg, _tmp, a, b, remote)) = two_machines() else {
        return;
    };
    // A builds the chain and pushes it.
    assert_eq!(
        a.lookup("l1", &["--remote", &remote]).0,
        1,
        "nothing anywhere yet"
    );
    for l in LAYERS {
        a.build(l, "v1");
    }
    let (code, rows, err) = a.share("push", &remote, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        statuses(&rows),
        ["l1=pushed", "l2=pushed", "l3=pushed"],
        "{err}"
    );
    let (_, rows, _) = a.share("push", &remote, &[]);
    assert_eq!(
        statuses(&rows),
        ["l1=already_there", "l2=already_there", "l3=already_there"]
    );

    // The artifact is plain OCI: skopeo reads it.
    let tag = rows[0]["tag"].as_str().expect("tag");
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{remote}:{tag}"),
    ]));
    let manifest: Value = serde_json::from_str(&raw).expect("manifest JSON");
    assert_eq!(
        manifest["annotations"][layercache::testing::remote::ANNOTATION_LAYER],
        "l1",
        "{raw}"
    );

    // B: every lookup is a remote hit, in separate processes, bases first.
    for l in LAYERS {
        let (code, v, err) = b.lookup(l, &["--remote", &remote]);
        assert_eq!(code, 0, "{l}: {v} {err}");
        assert_eq!(v["source"], "remote", "{l}: {v}");
        assert_eq!(warnings(&err), 0, "{err}");
        assert_blobs_arrived(&a, &b, l);
    }
    // Then local hits, with or without the remote; the registry is not needed.
    for l in LAYERS {
        let (code, v, _) = b.lookup(l, &["--remote", &remote]);
        assert_eq!((code, v["source"].clone()), (0, json!("local")), "{l}");
        assert_eq!(b.lookup(l, &[]).0, 0, "{l}");
    }

    // B with one file of l2 changed: l2 and l3 miss, no remote hit.
    std::fs::write(b.dir.join("src/b/main.c"), "int main(){return 1;}\n").expect("edit");
    for l in ["l2", "l3"] {
        let (code, v, err) = b.lookup(l, &["--remote", &remote]);
        assert_eq!(code, 1, "{l}: {v} {err}");
        assert_eq!(v["source"], Value::Null, "{l}");
    }
    // B builds that version and pushes it; A, with the same change, gets it.
    b.build("l2", "v2");
    b.build("l3", "v2");
    let (_, rows, err) = b.share("push", &remote, &[]);
    assert_eq!(
        statuses(&rows),
        ["l1=already_there", "l2=pushed", "l3=pushed"],
        "{err}"
    );
    std::fs::write(a.dir.join("src/b/main.c"), "int main(){return 1;}\n").expect("edit");
    let (code, rows, err) = a.share("pull", &remote, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        statuses(&rows),
        ["l1=local", "l2=pulled", "l3=pulled"],
        "{err}"
    );
    assert_blobs_arrived(&b, &a, "l2");
    assert_blobs_arrived(&b, &a, "l3");
    for l in LAYERS {
        assert_eq!(a.lookup(l, &[]).0, 0, "{l}");
    }
    drop(reg);
}

/// Issue 26: machine B has its own database and layout and has never built anything (no
/// `roots/` at all). Every layer of a chain whose bottom layer has an overlay dir and an import
/// is a remote hit, blobs verified in B's layout, recorded as pulled; the builder's step
/// `lookup --record --remote` gets the same hit and writes no record; a file changed on B
/// misses and says the registry has no entry for B's input digest; and the next lookups are
/// local hits that do not contact the registry. On A, which built it, the builder's copy is
/// still required (the local rule).
#[test]
fn a_fresh_machine_gets_remote_hits_for_a_chain_on_an_overlay_dir() {
    if !tools_available(&["umoci", "skopeo"]) {
        return;
    }
    let Some(mut reg) = Registry::start() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Machine::with_overlay(tmp.path().join("machine-a"), true);
    let b = Machine::with_overlay(tmp.path().join("elsewhere/machine-b"), false);
    let c = Machine::with_overlay(tmp.path().join("machine-c"), false);
    let remote = format!("{}/{REPO}", reg.addr);
    for l in LAYERS {
        a.build(l, "v1");
    }
    let (code, rows, err) = a.share("push", &remote, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        statuses(&rows),
        ["l1=pushed", "l2=pushed", "l3=pushed"],
        "{err}"
    );
    assert!(!b.dir.join("roots").exists() && !c.dir.join("roots").exists());

    // B: every layer a remote hit, bases first, each in its own process.
    let mut asked = Vec::new();
    for l in LAYERS {
        let (code, v, err) = b.lookup(l, &["--remote", &remote]);
        assert_eq!(code, 0, "{l}: {v} {err}");
        assert_eq!(v["source"], "remote", "{l}: {v}");
        assert_eq!(v["remote"]["answer"], "taken", "{l}: {v}");
        assert_eq!(warnings(&err), 0, "{err}");
        assert_blobs_arrived(&a, &b, l);
        asked.push(v["remote"]["input_digest"].clone());
    }
    let o = Command::new(env!("CARGO_BIN_EXE_layercache"))
        .args(["dump", "--json", "--db"])
        .arg(b.dir.join("cache.redb"))
        .arg("l1")
        .output()
        .expect("dump");
    let dump: Value = serde_json::from_slice(&o.stdout).expect("dump JSON");
    assert_eq!(dump["origin"], "pulled", "{dump}");

    // C, the builder's step: `lookup --record --remote` is the same hit, and writes no record
    // (nothing to put); one left by an earlier lookup is removed.
    let rec = c.dir.join("l.lookup.json");
    for l in LAYERS {
        std::fs::write(&rec, "stale").expect("stale record");
        let (code, v, err) = c.lookup(
            l,
            &[
                "--remote",
                &remote,
                "--record",
                rec.to_str().expect("utf-8"),
            ],
        );
        assert_eq!(
            (code, v["source"].clone()),
            (0, json!("remote")),
            "{l}: {v} {err}"
        );
        assert!(!rec.exists(), "{l}: a remote hit wrote a record");
    }
    // A miss with --record --remote writes the record for `put --from`.
    std::fs::write(c.dir.join("src/c.txt"), "config v2\n").expect("edit");
    let (code, v, _) = c.lookup(
        "l3",
        &[
            "--remote",
            &remote,
            "--record",
            rec.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["remote"]["answer"], "no_entry", "{v}");
    let written: Value =
        serde_json::from_slice(&std::fs::read(&rec).expect("record")).expect("json");
    assert_eq!(written["layer"], "l3", "{written}");

    // B with a file of the overlay dir changed: a miss that says the registry has no entry for
    // B's input digest, which differs from the one it took before; l2 above it is not asked.
    std::fs::write(b.dir.join("src/ov/x.txt"), "overlay x, edited\n").expect("edit");
    let (code, v, err) = b.lookup("l1", &["--remote", &remote, "--explain"]);
    assert_eq!(code, 1, "{v} {err}");
    assert_eq!(v["remote"]["answer"], "no_entry", "{v}");
    assert_ne!(v["remote"]["input_digest"], asked[0], "{v}");
    assert_eq!(
        warnings(&err),
        0,
        "no entry is not a registry failure: {err}"
    );
    let o = b.out(&["lookup", "--remote", &remote, "--explain", "l1"]);
    let text = String::from_utf8_lossy(&o.stdout);
    let digest = v["remote"]["input_digest"].as_str().expect("digest");
    assert!(
        text.contains(&format!(
            "has no entry for layer l1 with input digest {digest}"
        )),
        "{text}"
    );
    let (code, v, _) = b.lookup("l2", &["--remote", &remote]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["remote"]["answer"], "not_asked", "{v}");
    assert!(
        v["remote"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("base layer l1 misses")),
        "{v}"
    );
    std::fs::write(b.dir.join("src/ov/x.txt"), "overlay x\n").expect("restore");

    // A built l1: its builder's copy gone, its local hit is a miss with its reason, and asking
    // the registry does not lift that (the version stays one this machine built).
    std::fs::remove_dir_all(a.dir.join("roots/l1/overlay_dirs/ov")).expect("rm copy");
    for extra in [&[][..], &["--remote", &remote][..]] {
        let (code, v, err) = a.lookup("l1", extra);
        assert_eq!(code, 1, "{extra:?}: {v} {err}");
        assert_eq!(v["reasons"][0]["reason"], "overlay_dir_missing", "{v}");
    }

    // The next lookups on B are local hits that do not contact the registry: it is gone.
    reg.stop();
    for l in LAYERS {
        let (code, v, err) = b.lookup(l, &["--remote", &remote, "--remote-timeout", "2"]);
        assert_eq!(
            (code, v["source"].clone()),
            (0, json!("local")),
            "{l}: {v} {err}"
        );
        assert_eq!(warnings(&err), 0, "{l}: the registry was contacted: {err}");
        assert_eq!(b.lookup(l, &[]).0, 0, "{l}");
    }
    // A pulled version needs its blobs like any other: one of l3's layers gone, no hit.
    let (layer, _) = image_blobs(&a.layout(), "l3")
        .into_iter()
        .max_by_key(|(d, _)| d["size"].as_u64())
        .expect("blobs");
    let hex = layer["digest"]
        .as_str()
        .expect("digest")
        .trim_start_matches("sha256:");
    std::fs::remove_file(b.layout().join("blobs/sha256").join(hex)).expect("rm blob");
    let (code, v, _) = b.lookup("l3", &[]);
    assert_eq!(code, 1, "{v}");
    assert!(v.to_string().contains(hex), "the miss names the blob: {v}");
}

/// A build-only layer's output is its rootfs directory, which no registry carries: on B its
/// pulled version is recorded (its entry was taken, so the layer built on it hits) but is a
/// miss itself until its directory exists — never a hit on an output B does not have.
#[test]
fn a_pulled_build_only_layer_is_recorded_but_no_hit_without_its_rootfs() {
    let Some((_reg, _tmp, a, b, remote)) = two_machines() else {
        return;
    };
    for m in [&a, &b] {
        let plan = json!({
            "oci_layout": "oci",
            "rootfs_dir": "roots",
            "layers": {
                "l1": {"definition": {"run": "one"}, "base": {"type": "scratch"},
                       "imports": [{"key": "a", "path": "src/a"}], "build_only": true},
                "l2": {"definition": {"run": "two"}, "base": {"type": "built", "layer": "l1"},
                       "imports": [{"key": "b", "path": "src/b"}]},
            }
        });
        std::fs::write(m.dir.join("plan.json"), plan.to_string()).expect("plan");
    }
    std::fs::create_dir_all(a.dir.join("roots/l1")).expect("rootfs");
    let empty = a.dir.join("empty.json");
    std::fs::write(&empty, "{}").expect("manifests");
    let o = a.out(&[
        "put",
        "--manifests",
        empty.to_str().expect("utf-8"),
        "--inputs-as-of-now",
        "l1",
    ]);
    assert!(o.status.success(), "{o:?}");
    a.build("l2", "v1");
    let (code, rows, err) = a.share("push", &remote, &[]);
    assert_eq!(
        (code, statuses(&rows)),
        (0, vec!["l1=pushed".to_string(), "l2=pushed".to_string()]),
        "{err}"
    );

    // B's builder has its (empty) rootfs directory, as a builder makes it before it builds.
    std::fs::create_dir_all(b.dir.join("roots")).expect("rootfs_dir");
    let (code, v, err) = b.lookup("l1", &["--remote", &remote]);
    assert_eq!(code, 1, "{v} {err}");
    assert_eq!(v["remote"]["answer"], "taken", "{v}");
    assert_eq!(v["reasons"][0]["reason"], "outputs_missing", "{v}");
    let (code, v, err) = b.lookup("l2", &["--remote", &remote]);
    assert_eq!(
        (code, v["source"].clone()),
        (0, json!("remote")),
        "{v} {err}"
    );
    std::fs::create_dir_all(b.dir.join("roots/l1")).expect("rootfs");
    assert_eq!(b.lookup("l1", &[]).0, 0, "its directory is there now");
}

/// `push` of a layer whose output manifest blob is not an image manifest is a local error:
/// exit 2, the layer named on stderr and `error` in JSON; the other layers are still pushed.
/// A registry failure alone exits 0 (`a_wrong_password_...`).
#[test]
fn a_push_with_an_output_that_is_not_an_image_manifest_exits_2() {
    let Some((_reg, _tmp, a, _b, remote)) = two_machines() else {
        return;
    };
    a.build("l1", "v1");
    a.build("l2", "v1");
    // l2's output descriptor says "image manifest" but names its layer blob.
    let (layer, _) = image_blobs(&a.layout(), "l2")
        .into_iter()
        .max_by_key(|(d, _)| d["size"].as_u64())
        .expect("blobs");
    let bad = json!({"tar": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                             "digest": layer["digest"], "size": layer["size"]}});
    let m = a.dir.join("bad-manifests.json");
    std::fs::write(&m, bad.to_string()).expect("manifests");
    let o = a.out(&[
        "put",
        "--manifests",
        m.to_str().expect("utf-8"),
        "--inputs-as-of-now",
        "l2",
    ]);
    assert!(o.status.success(), "{o:?}");
    let (code, rows, err) = a.share("push", &remote, &[]);
    assert_eq!(code, 2, "{rows:?} {err}");
    assert_eq!(
        statuses(&rows),
        ["l1=pushed", "l2=error", "l3=skipped"],
        "{err}"
    );
    assert!(err.contains("cannot push layer l2"), "{err}");
    assert!(err.contains("not an image manifest"), "{err}");
}

#[test]
fn a_registry_stopped_mid_build_gives_local_answers_with_one_warning() {
    let Some((mut reg, _tmp, a, b, remote)) = two_machines() else {
        return;
    };
    for l in LAYERS {
        a.build(l, "v1");
    }
    assert_eq!(a.share("push", &remote, &["l1"]).1.len(), 1);
    // B takes l1 from the registry, then the registry goes away.
    assert_eq!(b.lookup("l1", &["--remote", &remote]).1["source"], "remote");
    reg.stop();
    let (code, v, err) = b.lookup("l1", &["--remote", &remote, "--remote-timeout", "2"]);
    assert_eq!((code, v["source"].clone()), (0, json!("local")), "{err}");
    assert_eq!(warnings(&err), 0, "a local hit asks nothing: {err}");
    let (code, v, err) = b.lookup("l2", &["--remote", &remote, "--remote-timeout", "2"]);
    assert_eq!(code, 1, "{v} {err}");
    assert_eq!(warnings(&err), 1, "{err}");
    assert_eq!(v["remote"]["answer"], "unreachable", "{v}");
    assert!(
        err.contains(&reg.addr),
        "the warning names the registry: {err}"
    );
    // A whole pull: one warning, every layer answered locally, exit 0.
    let (code, rows, err) = b.share("pull", &remote, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(statuses(&rows), ["l1=local", "l2=miss", "l3=miss"]);
    assert_eq!(warnings(&err), 1, "{err}");
    // $LAYERCACHE_REMOTE is the default remote: the same answer.
    let o = b
        .cmd(&["lookup", "--remote-timeout", "2", "l2"])
        .env("LAYERCACHE_REMOTE", &remote)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(warnings(&String::from_utf8_lossy(&o.stderr)), 1);
    // Building goes on locally.
    b.build("l2", "v1");
    let (code, _, err) = b.lookup("l2", &["--remote", &remote, "--remote-timeout", "2"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_blob_corrupted_in_the_registry_is_refused_and_nothing_is_recorded() {
    let Some((reg, _tmp, a, b, remote)) = two_machines() else {
        return;
    };
    a.build("l1", "v1");
    let (_, rows, err) = a.share("push", &remote, &["l1"]);
    assert_eq!(statuses(&rows), ["l1=pushed"], "{err}");
    // Flip bytes of the biggest blob (the layer holding out.bin) in the registry's storage.
    let (layer_desc, _) = image_blobs(&a.layout(), "l1")
        .into_iter()
        .max_by_key(|(d, _)| d["size"].as_u64())
        .expect("blobs");
    let digest = layer_desc["digest"].as_str().expect("digest").to_string();
    let data = reg.blob_data(&digest);
    let mut bytes = std::fs::read(&data).expect("registry blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).expect("corrupt");

    let (code, v, err) = b.lookup("l1", &["--remote", &remote]);
    assert_eq!(code, 1, "{v} {err}");
    assert_eq!(v["source"], Value::Null);
    assert_eq!(warnings(&err), 1, "{err}");
    assert!(err.contains(&digest), "the warning names the blob: {err}");
    // What the registry said: an entry, refused, and why.
    assert_eq!(v["remote"]["answer"], "refused", "{v}");
    assert!(
        v["remote"]["why"]
            .as_str()
            .is_some_and(|w| w.contains(&digest)),
        "{v}"
    );
    // Nothing recorded, no blob and no partial file left.
    let (code, v, _) = b.lookup("l1", &[]);
    assert_eq!(code, 1);
    assert_eq!(v["reasons"][0]["reason"], "not_cached", "{v}");
    let hex = digest.strip_prefix("sha256:").expect("sha256");
    let names: Vec<String> = std::fs::read_dir(b.layout().join("blobs/sha256"))
        .expect("blobs dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.contains(hex) && !n.contains("partial")),
        "{names:?}"
    );
}

#[test]
fn a_wrong_password_is_a_warning_naming_the_registry_and_never_the_password() {
    if !tools_available(&["umoci", "htpasswd"]) {
        return;
    }
    let Some(reg) = Registry::start_with_htpasswd("builder", "s3cret-Pa55") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = machine(tmp.path().join("a"));
    let b = machine(tmp.path().join("b"));
    let remote = format!("{}/{REPO}", reg.addr);
    let auth = |name: &str, password: &str| {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("builder:{password}"));
        let f = tmp.path().join(name);
        std::fs::write(
            &f,
            json!({"auths": {&reg.addr: {"auth": token}}}).to_string(),
        )
        .expect("auth file");
        (f, token)
    };
    let (wrong, wrong_token) = auth("wrong.json", "not-the-password");
    let (right, _) = auth("right.json", "s3cret-Pa55");
    a.build("l1", "v1");

    let (code, rows, err) = a.share(
        "push",
        &remote,
        &["--auth-file", wrong.to_str().expect("utf-8")],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(statuses(&rows)[0], "l1=failed", "{err}");
    assert_eq!(warnings(&err), 1, "{err}");
    assert!(err.contains(&reg.addr), "{err}");
    for secret in ["not-the-password", &wrong_token, "s3cret"] {
        assert!(!err.contains(secret), "credential printed: {err}");
        assert!(!rows.iter().any(|r| r.to_string().contains(secret)));
    }
    let (_, rows, err) = a.share(
        "push",
        &remote,
        &["--auth-file", right.to_str().expect("utf-8")],
    );
    assert_eq!(statuses(&rows)[0], "l1=pushed", "{err}");

    let (code, v, err) = b.lookup(
        "l1",
        &[
            "--remote",
            &remote,
            "--auth-file",
            wrong.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 1, "{v}");
    assert_eq!(warnings(&err), 1, "{err}");
    assert!(
        !err.contains("not-the-password") && !err.contains(&wrong_token),
        "{err}"
    );
    assert!(!v.to_string().contains(&wrong_token));
    let (code, v, err) = b.lookup(
        "l1",
        &[
            "--remote",
            &remote,
            "--auth-file",
            right.to_str().expect("utf-8"),
        ],
    );
    assert_eq!((code, v["source"].clone()), (0, json!("remote")), "{err}");
}

use crate::treegen;

/// Writes `bytes` as a blob of `layout`; returns its descriptor.
fn put_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).expect("blob");
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// Measured push and pull of the scale benchmark's layer (one import of the generated tree,
/// 10^5 files by default; `LAYERCACHE_BENCH_FILES` to change) on loopback, through the
/// library. Its output is an uncompressed tar of the tree, written by `tar` into a hand-made
/// image. Prints the times; checks the work done (a remote hit, the blobs fetched, then a
/// local hit), never the times.
///
/// `cargo test --release --test testsuite remote_cache:: -- --ignored --nocapture push_and_pull_at_scale`
#[test]
#[ignore = "a measurement (~2 GB of disk, minutes): run it by name"]
fn push_and_pull_at_scale() {
    let files: u64 = std::env::var("LAYERCACHE_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    push_and_pull(files);
}

/// The same on 300 files, run with the suite: what it asserts is the work — a remote hit
/// walks the tree once for the lookup (the digest it asks the registry for comes from that
/// walk, not from a second one) and once for the put that records it, and hashes each file
/// once: the put reuses what the lookup hashed.
#[test]
fn a_remote_hit_walks_the_tree_for_the_lookup_and_the_put_only() {
    push_and_pull(300);
}

/// A pushes a one-layer build of `files` generated files, B pulls it; returns nothing, prints
/// the times, asserts the outcomes and the files hashed on B.
fn push_and_pull(files: u64) {
    use layercache::testing::remote::{Remote, RemoteOptions};
    use layercache::{Build, Cache, CacheConfig, HitSource, Import, LayerInputs, PushOutcome};
    use std::time::{Duration, Instant};

    if !tools_available(&["umoci", "tar"]) {
        return;
    }
    let Some(reg) = Registry::start() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    let stats = treegen::generate(&tree, files, 1).expect("generate");
    println!("tree: {stats:?}");

    let layout_a = tmp.path().join("oci-a");
    let layout_b = tmp.path().join("oci-b");
    for l in [&layout_a, &layout_b] {
        run(Command::new("umoci").args(["init", "--layout"]).arg(l));
    }
    // The layer's output: a tar of the tree, in an image made by hand.
    let tar = tmp.path().join("out.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&tree)
        .arg("."));
    let tar_bytes = std::fs::read(&tar).expect("tar");
    std::fs::remove_file(&tar).expect("rm tar");
    let layer = put_blob(
        &layout_a,
        "application/vnd.oci.image.layer.v1.tar",
        &tar_bytes,
    );
    let config = put_blob(
        &layout_a,
        "application/vnd.oci.image.config.v1+json",
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "config": config, "layers": [layer]});
    let manifest = put_blob(
        &layout_a,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
    drop(tar_bytes);
    let manifests = std::collections::BTreeMap::from([(
        "tar".to_string(),
        serde_json::from_value(manifest).expect("descriptor"),
    )]);

    let mut build = Build::new();
    build.add(
        "monorepo",
        LayerInputs {
            definition: json!({"run": "make"}),
            base: layercache::Base::Scratch,
            imports: vec![Import {
                key: "src".into(),
                path: tree.clone(),
                dest: None,
            }],
            overlay_dirs: Vec::new(),
            source_date_epoch: None,
            build_only: false,
            uncacheable: None,
        },
    );
    let config_of = |name: &str, layout: &Path| CacheConfig {
        db: tmp.path().join(name),
        oci_layout: Some(layout.to_path_buf()),
        rootfs_dir: None,
        ..Default::default()
    };
    let remote = || {
        Remote::new(
            &format!("{}/{REPO}", reg.addr),
            RemoteOptions {
                insecure: false,
                timeout: Duration::from_secs(300),
                auth_file: None,
            },
        )
        .expect("remote")
    };

    // A: build (put), then push.
    let cache_a = Cache::open(config_of("a.redb", &layout_a)).expect("open a");
    let mut s = cache_a.session(&build).expect("session");
    let seen = s.lookup("monorepo").expect("lookup");
    s.put(&seen, &manifests).expect("put");
    let r = remote();
    let mut s = cache_a.session(&build).expect("session");
    let t = Instant::now();
    let pushed = s.push_layer("monorepo", &r).expect("push");
    let push_time = t.elapsed();
    let PushOutcome::Pushed(report) = pushed else {
        panic!("not pushed: {pushed:?}");
    };
    let mut s = cache_a.session(&build).expect("session");
    let t = Instant::now();
    let again = s.push_layer("monorepo", &r).expect("push again");
    let again_time = t.elapsed();
    assert!(
        matches!(again, PushOutcome::AlreadyThere { .. }),
        "{again:?}"
    );

    // B: a remote hit (walk, find, fetch, record), then a local hit.
    let cache_b = Cache::open(config_of("b.redb", &layout_b)).expect("open b");
    let mut s = cache_b.session(&build).expect("session");
    let t = Instant::now();
    let pulled = s.lookup_remote("monorepo", false, &r).expect("pull");
    let pull_time = t.elapsed();
    assert_eq!(
        pulled.source,
        Some(HitSource::Remote),
        "{:?}",
        pulled.failure
    );
    let fetched = pulled.fetched.expect("fetched");
    let pull_hashed = s.counters().walk.files_hashed;
    // B never saw the tree: the lookup hashes every file once; the put that records the
    // remote entry walks it again to check that the tree is still what the lookup saw, but
    // reuses the lookup's digests (its walk log is the put's stat cache), so it reads none.
    assert_eq!(pull_hashed, stats.files, "files hashed on B");
    let mut s = cache_b.session(&build).expect("session");
    let t = Instant::now();
    let local = s.lookup_remote("monorepo", false, &r).expect("local");
    let local_time = t.elapsed();
    assert_eq!(local.source, Some(HitSource::Local));

    println!(
        "files: {files}; output blob {} MiB; push {:.2?} ({} blobs, {} MiB uploaded); \
         push again {:.2?}; pull {:.2?} ({} blobs, {} MiB fetched; {} files hashed on B); \
         then a local hit {:.2?}",
        report.bytes_uploaded >> 20,
        push_time,
        report.blobs_uploaded,
        report.bytes_uploaded >> 20,
        again_time,
        pull_time,
        fetched.blobs_downloaded,
        fetched.bytes_downloaded >> 20,
        pull_hashed,
        local_time,
    );
}
