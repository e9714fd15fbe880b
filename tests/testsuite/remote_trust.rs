//! Trust by key, through the real binary and the reference registry on 127.0.0.1 (the CNCF
//! distribution server): entries signed at push with `--sign-key`, verified at every remote hit
//! with `--trust-key`; the signature checked with Debian's `minisign`; every forgery refused
//! with its reason and nothing changed; key rotation; a lookup record bound to its database.
//! No mocks: forged entries are written into the real registry over its HTTP API.

use crate::common_machine::Machine;
use crate::registry;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use layercache::testing::remote::{
    ANNOTATION_SIGNATURE, LocalBlob, OCI_MANIFEST_MEDIA_TYPE, Remote, RemoteEntry, RemoteOptions,
    entry_tag,
};
use registry::{Registry, http, image_blobs, run, tools_available};
use serde_json::{Value, json};

const REPO: &str = "layercache/trusted";

/// A machine with two layers on scratch, `l1` importing `src/a` and `l2` `src/b`; its lookups
/// give the registry 5 s.
fn machine(dir: PathBuf) -> Machine {
    let files = [("src/a/one.txt", "one\n"), ("src/b/two.txt", "two\n")];
    let plan = json!({
        "oci_layout": "oci",
        "layers": {
            "l1": {"definition": {"run": "one"}, "base": {"type": "scratch"},
                   "imports": [{"key": "a", "path": "src/a"}]},
            "l2": {"definition": {"run": "two"}, "base": {"type": "scratch"},
                   "imports": [{"key": "b", "path": "src/b"}]},
        }
    });
    let mut m = Machine::at(dir, &files, &plan);
    m.lookup_flags = &["--remote-timeout", "5"];
    m.output_noise = 50_000;
    m
}

impl Machine {
    /// `push --json` of `layers` with `extra` flags: per-layer statuses.
    fn push(&self, remote: &str, extra: &[&str], layers: &[&str]) -> Vec<String> {
        let mut args = vec![
            "push",
            "--json",
            "--remote",
            remote,
            "--remote-timeout",
            "5",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(layers);
        let o = self.out(&args);
        assert_eq!(o.status.code(), Some(0), "push: {o:?}");
        let v: Value = serde_json::from_slice(&o.stdout).expect("push JSON");
        v["push"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                format!(
                    "{}={}",
                    r["layer"].as_str().unwrap_or("?"),
                    r["status"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    /// Every file under this machine's layout and its database, with their bytes.
    fn state(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        out.insert(self.db(), std::fs::read(self.db()).expect("db"));
        for e in walkdir::WalkDir::new(self.layout()).sort_by_file_name() {
            let e = e.expect("walk");
            if e.file_type().is_file() {
                out.insert(
                    e.path().to_path_buf(),
                    std::fs::read(e.path()).expect("read"),
                );
            }
        }
        out
    }
}

/// Makes a key pair with the binary: (secret key, public key) paths.
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let sk = dir.join(format!("{name}.key"));
    let pk = dir.join(format!("{name}.pub"));
    let o = Command::new(env!("CARGO_BIN_EXE_layercache"))
        .arg("keygen")
        .arg("--secret-key")
        .arg(&sk)
        .arg("--public-key")
        .arg(&pk)
        .arg("--json")
        .output()
        .expect("keygen");
    assert!(o.status.success(), "keygen: {o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).expect("keygen JSON");
    assert_eq!(v["key_id"].as_str().map(str::len), Some(16), "{v}");
    // The key material is never printed.
    let secret = std::fs::read_to_string(&sk).expect("secret key");
    let material = secret.lines().nth(1).expect("key line");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!printed.contains(material), "keygen printed the secret key");
    (sk, pk)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The raw manifest under `tag`.
fn get_manifest(reg: &Registry, tag: &str) -> Vec<u8> {
    let (status, body) = http(
        &reg.addr,
        "GET",
        &format!("/v2/{REPO}/manifests/{tag}"),
        &[("Accept", OCI_MANIFEST_MEDIA_TYPE)],
        None,
    )
    .expect("GET manifest");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    body
}

fn put_manifest(reg: &Registry, tag: &str, body: &[u8]) {
    let (status, resp) = http(
        &reg.addr,
        "PUT",
        &format!("/v2/{REPO}/manifests/{tag}"),
        &[("Content-Type", OCI_MANIFEST_MEDIA_TYPE)],
        Some(body),
    )
    .expect("PUT manifest");
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&resp));
}

fn get_blob(reg: &Registry, digest: &str) -> Vec<u8> {
    let (status, body) = http(
        &reg.addr,
        "GET",
        &format!("/v2/{REPO}/blobs/{digest}"),
        &[],
        None,
    )
    .expect("GET blob");
    assert_eq!(status, 200);
    body
}

/// The tag of `layer` as A pushed it (from `push --json`).
fn tag_of(a: &Machine, remote: &str, layer: &str) -> String {
    let o = a.out(&["push", "--json", "--remote", remote, layer]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("push JSON");
    v["push"][0]["tag"].as_str().expect("tag").to_string()
}

/// The input digest an entry's manifest names.
fn input_digest_of(manifest: &[u8]) -> [u8; 32] {
    let m: Value = serde_json::from_slice(manifest).expect("manifest JSON");
    let hex = m["annotations"][layercache::testing::remote::ANNOTATION_INPUT_DIGEST]
        .as_str()
        .expect("input digest");
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

fn setup() -> Option<(Registry, tempfile::TempDir, Machine, Machine, String)> {
    if !tools_available(&["umoci", "minisign"]) {
        return None;
    }
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = machine(tmp.path().join("machine-a"));
    let b = machine(tmp.path().join("elsewhere/machine-b"));
    let remote = format!("{}/{REPO}", reg.addr);
    Some((reg, tmp, a, b, remote))
}

/// The `remote_untrusted` reason of a lookup (the last reason), if any.
fn untrusted_why(v: &Value) -> Option<String> {
    let reasons = v["reasons"].as_array()?;
    let last = reasons.last()?;
    (last["reason"] == "remote_untrusted").then(|| last["why"].as_str().unwrap_or("?").to_string())
}

#[test]
fn a_signed_push_is_a_remote_hit_where_its_key_is_trusted_and_minisign_verifies_it() {
    let Some((reg, tmp, a, b, remote)) = setup() else {
        return;
    };
    let (sk, pk) = keygen(tmp.path(), "ci");
    a.build("l1", "");
    assert_eq!(
        a.push(&remote, &["--sign-key", s(&sk)], &["l1"]),
        ["l1=pushed"]
    );
    // Pushing again with the same key: already there (the entry is signed by it).
    assert_eq!(
        a.push(&remote, &["--sign-key", s(&sk)], &["l1"]),
        ["l1=already_there"]
    );

    // The signature is a standard minisign signature over the config blob.
    let tag = tag_of(&a, &remote, "l1");
    let manifest: Value = serde_json::from_slice(&get_manifest(&reg, &tag)).expect("JSON");
    let sig = manifest["annotations"][ANNOTATION_SIGNATURE]
        .as_str()
        .expect("signature annotation");
    let config = get_blob(&reg, manifest["config"]["digest"].as_str().expect("digest"));
    let envelope: Value = serde_json::from_slice(&config).expect("envelope");
    assert_eq!(envelope["layer"], "l1");
    // What verification reads: the config blob (already fetched to find the entry).
    eprintln!(
        "signed config blob: {} bytes, {} blobs listed",
        config.len(),
        envelope["blobs"].as_array().map_or(0, Vec::len)
    );
    assert_eq!(
        envelope["blobs"].as_array().map(Vec::len),
        manifest["layers"].as_array().map(Vec::len),
        "the signed envelope lists every blob"
    );
    let cfg = tmp.path().join("config.json");
    std::fs::write(&cfg, &config).expect("write");
    std::fs::write(tmp.path().join("config.json.minisig"), sig).expect("write");
    let o = Command::new("minisign")
        .arg("-Vm")
        .arg(&cfg)
        .arg("-p")
        .arg(&pk)
        .output()
        .expect("minisign");
    assert!(o.status.success(), "minisign -V: {o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("layercache entry for layer l1"),
        "{o:?}"
    );
    // The reference tool refuses the same signature over other bytes.
    std::fs::write(&cfg, [config.as_slice(), b" "].concat()).expect("write");
    let o = Command::new("minisign")
        .arg("-Vm")
        .arg(&cfg)
        .arg("-p")
        .arg(&pk)
        .output()
        .expect("minisign");
    assert!(!o.status.success(), "minisign accepted other bytes");

    // B trusts the key (from $LAYERCACHE_TRUST_KEYS): a remote hit.
    let o = b
        .cmd(&["lookup", "--json", "--remote", &remote, "l1"])
        .env("LAYERCACHE_TRUST_KEYS", &pk)
        .output()
        .expect("lookup");
    let v: Value = serde_json::from_slice(&o.stdout).expect("lookup JSON");
    assert_eq!(o.status.code(), Some(0), "{v} {o:?}");
    assert_eq!(v["source"], "remote", "{v}");
    assert_eq!(b.lookup("l1", &[]).0, 0, "recorded locally");

    // A trusted key others can change is an error, never a fall-back to trusting anyone.
    let loose = tmp.path().join("loose.pub");
    std::fs::copy(&pk, &loose).expect("copy");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    a.build("l2", "");
    a.push(&remote, &["--sign-key", s(&sk)], &["l2"]);
    let (code, _, err) = b.lookup("l2", &["--remote", &remote, "--trust-key", s(&loose)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("chmod 644"), "{err}");
    // A secret key others can read is refused at push.
    std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = a.out(&["push", "--remote", &remote, "--sign-key", s(&sk)]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("chmod 600"),
        "{o:?}"
    );
    drop(reg);
}

#[test]
fn every_forgery_is_refused_with_its_reason_and_changes_nothing() {
    let Some((reg, tmp, a, b, remote)) = setup() else {
        return;
    };
    let (sk, pk) = keygen(tmp.path(), "ci");
    let (other_sk, _) = keygen(tmp.path(), "intruder");
    a.build("l1", "");
    a.build("l2", "");
    assert_eq!(
        a.push(&remote, &["--sign-key", s(&sk)], &[]),
        ["l1=pushed", "l2=pushed"]
    );
    let tag1 = tag_of(&a, &remote, "l1");
    let tag2 = tag_of(&a, &remote, "l2");
    let signed1 = get_manifest(&reg, &tag1);
    let signed2 = get_manifest(&reg, &tag2);
    let m1: Value = serde_json::from_slice(&signed1).expect("JSON");
    let m2: Value = serde_json::from_slice(&signed2).expect("JSON");

    // B's cache exists (a plain local lookup made it); what it holds is compared after each
    // refused lookup.
    assert_eq!(b.lookup("l1", &[]).0, 1);
    let before = b.state();
    let trust = ["--remote", remote.as_str(), "--trust-key", s(&pk)];
    let refused = |what: &str, want: &str| {
        let (code, v, err) = b.lookup("l1", &trust);
        assert_eq!(code, 1, "{what}: {v} {err}");
        assert_eq!(untrusted_why(&v).as_deref(), Some(want), "{what}: {v}");
        assert_eq!(v["reasons"][0]["reason"], "not_cached", "{what}: {v}");
        assert!(err.contains("not trusted"), "{what}: {err}");
        assert!(
            b.state() == before,
            "{what}: the layout or the database changed"
        );
    };

    // 1. Unsigned: the signed manifest without its signature.
    let mut m = m1.clone();
    m["annotations"]
        .as_object_mut()
        .expect("annotations")
        .remove(ANNOTATION_SIGNATURE);
    put_manifest(&reg, &tag1, &serde_json::to_vec(&m).expect("JSON"));
    refused("unsigned", "unsigned");

    // 2. Signed by another key (a push with it replaces the entry).
    put_manifest(&reg, &tag1, &signed1);
    assert_eq!(
        a.push(&remote, &["--sign-key", s(&other_sk)], &["l1"]),
        ["l1=pushed"],
        "an entry this key did not sign is replaced"
    );
    refused("other key", "unknown_key");

    // 3. Tampered record: another record pushed with the original signature attached.
    let input1 = input_digest_of(&signed1);
    let found = {
        let r = Remote::new(&remote, RemoteOptions::default()).expect("remote");
        r.find_entry("l1", &input1).expect("find").expect("there")
    };
    let mut record: Value = serde_json::from_slice(&found.record).expect("record");
    record["builder"] = "evil 1.0".into();
    let blobs = found
        .blobs
        .iter()
        .map(|d| LocalBlob {
            descriptor: d.clone(),
            path: a
                .layout()
                .join("blobs/sha256")
                .join(d.digest().to_string().trim_start_matches("sha256:")),
        })
        .collect();
    let r = Remote::new(&remote, RemoteOptions::default()).expect("remote");
    r.push_entry(&RemoteEntry {
        layer: "l1".into(),
        input_digest: input1,
        record: serde_json::to_vec(&record).expect("JSON"),
        blobs,
    })
    .expect("push forged record");
    let mut m: Value = serde_json::from_slice(&get_manifest(&reg, &tag1)).expect("JSON");
    m["annotations"][ANNOTATION_SIGNATURE] = m1["annotations"][ANNOTATION_SIGNATURE].clone();
    let tampered_record = serde_json::to_vec(&m).expect("JSON");
    put_manifest(&reg, &tag1, &tampered_record);
    refused("tampered record", "bad_signature");

    // 4. Tampered descriptor: the signed entry with one carried blob's media type changed.
    let mut m = m1.clone();
    m["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
    put_manifest(&reg, &tag1, &serde_json::to_vec(&m).expect("JSON"));
    refused("tampered descriptor", "outputs_differ");

    // 5. A signature replayed from another entry (l2's) onto l1's forged record.
    let mut m: Value = serde_json::from_slice(&tampered_record).expect("JSON");
    m["annotations"][ANNOTATION_SIGNATURE] = m2["annotations"][ANNOTATION_SIGNATURE].clone();
    put_manifest(&reg, &tag1, &serde_json::to_vec(&m).expect("JSON"));
    refused("replayed signature", "bad_signature");

    // 6. The whole signed entry of another layer under l1's tag.
    put_manifest(&reg, &tag1, &signed2);
    refused("signature for another layer", "replayed");

    // Without trusted keys the same entry is refused too (it names another layer), as before.
    let (code, v, _) = b.lookup("l1", &["--remote", &remote]);
    assert_eq!(code, 1, "{v}");
    assert!(b.state() == before);

    // The real signed entry again: a remote hit.
    put_manifest(&reg, &tag1, &signed1);
    let (code, v, err) = b.lookup("l1", &trust);
    assert_eq!(
        (code, v["source"].clone()),
        (0, json!("remote")),
        "{v} {err}"
    );
    assert_eq!(
        entry_tag("l1", &input1),
        tag1,
        "the tag rule is the library's"
    );
    drop(reg);
}

#[test]
fn two_trusted_keys_at_once_rotate_the_signing_key() {
    let Some((reg, tmp, a, b, remote)) = setup() else {
        return;
    };
    let (old_sk, old_pk) = keygen(tmp.path(), "old");
    // The new key is made by the reference tool (no password): its files work as they are.
    let (new_sk, new_pk) = (tmp.path().join("new.key"), tmp.path().join("new.pub"));
    run(Command::new("minisign")
        .args(["-G", "-W", "-s"])
        .arg(&new_sk)
        .arg("-p")
        .arg(&new_pk));
    a.build("l1", "");
    a.build("l2", "");
    assert_eq!(
        a.push(&remote, &["--sign-key", s(&old_sk)], &["l1"]),
        ["l1=pushed"]
    );
    assert_eq!(
        a.push(&remote, &["--sign-key", s(&new_sk)], &["l2"]),
        ["l2=pushed"]
    );
    let c = machine(tmp.path().join("machine-c"));
    // C trusts only the new key: l1 (old key) is refused, l2 taken.
    let only_new = ["--remote", remote.as_str(), "--trust-key", s(&new_pk)];
    let (code, v, _) = c.lookup("l1", &only_new);
    assert_eq!(
        (code, untrusted_why(&v).as_deref()),
        (1, Some("unknown_key")),
        "{v}"
    );
    assert_eq!(c.lookup("l2", &only_new).1["source"], "remote");
    // B trusts both during the rotation (repeated --trust-key): both are hits.
    let both = [
        "--remote",
        remote.as_str(),
        "--trust-key",
        s(&old_pk),
        "--trust-key",
        s(&new_pk),
    ];
    for l in ["l1", "l2"] {
        let (code, v, err) = b.lookup(l, &both);
        assert_eq!(
            (code, v["source"].clone()),
            (0, json!("remote")),
            "{l}: {v} {err}"
        );
    }
    // Re-signing l1 with the new key (push replaces what it did not sign): C takes it now.
    assert_eq!(
        a.push(&remote, &["--sign-key", s(&new_sk)], &["l1"]),
        ["l1=pushed"]
    );
    let (code, v, err) = c.lookup("l1", &only_new);
    assert_eq!(
        (code, v["source"].clone()),
        (0, json!("remote")),
        "{v} {err}"
    );
    // `pull` verifies the same way.
    let d = machine(tmp.path().join("machine-d"));
    let o = d.out(&[
        "pull",
        "--json",
        "--remote",
        &remote,
        "--trust-key",
        s(&old_pk),
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).expect("pull JSON");
    let statuses: Vec<&str> = v["pull"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        statuses,
        ["miss", "miss"],
        "signed by the new key only: {v}"
    );
    drop(reg);
}

/// The lookup record is bound to its database: an edited walk log with its checksum
/// recomputed, a record of another cache, and a record of the old format are refused by `put
/// --from`, and nothing is recorded; the untouched record is put.
#[test]
fn an_edited_lookup_record_with_its_checksum_recomputed_is_refused() {
    if !tools_available(&["umoci"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = machine(tmp.path().join("machine-a"));
    let b = machine(tmp.path().join("machine-b"));
    let rec = a.dir.join("l1.lookup.json");
    let o = a.out(&["lookup", "--record", s(&rec), "l1"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let text = std::fs::read_to_string(&rec).expect("record");
    let v: Value = serde_json::from_str(&text).expect("record JSON");
    assert_eq!(v["version"], 2);
    assert!(v["mac"].as_str().is_some_and(|m| m.len() == 64), "{v}");

    // A fake build's output and its manifests file.
    let image = format!("{}:l1", a.layout().display());
    run(Command::new("umoci").args(["new", "--image", &image]));
    let desc = image_blobs(&a.layout(), "l1")[0].0.clone();
    let manifests = a.dir.join("manifests.json");
    std::fs::write(&manifests, json!({ "tar": desc }).to_string()).expect("manifests");
    let put = |m: &Machine, from: &Path| {
        m.out(&["put", "--manifests", s(&manifests), "--from", s(from), "l1"])
    };

    // Edit the walk log (one byte of a logged row) and recompute its checksum.
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut edited = v.clone();
    let walk = &mut edited["sources"][0]["walk"];
    let mut log = b64
        .decode(walk["log"].as_str().expect("log"))
        .expect("base64");
    let last = log.len() - 1;
    log[last] ^= 1;
    walk["blake3"] = blake3::hash(&log).to_hex().to_string().into();
    walk["log"] = b64.encode(&log).into();
    let forged = a.dir.join("forged.json");
    std::fs::write(&forged, serde_json::to_vec_pretty(&edited).expect("JSON")).expect("write");
    let before = std::fs::read(a.db()).expect("db");
    let o = put(&a, &forged);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("was not made by a lookup of the cache"),
        "{err}"
    );
    assert!(
        std::fs::read(a.db()).expect("db") == before,
        "the database changed"
    );

    // A record without a MAC, and one of the old format: refused, saying why.
    let mut no_mac = v.clone();
    no_mac.as_object_mut().expect("object").remove("mac");
    std::fs::write(&forged, serde_json::to_vec(&no_mac).expect("JSON")).expect("write");
    assert_eq!(put(&a, &forged).status.code(), Some(2));
    no_mac["version"] = 1.into();
    std::fs::write(&forged, serde_json::to_vec(&no_mac).expect("JSON")).expect("write");
    let o = put(&a, &forged);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("format version 1"),
        "{o:?}"
    );

    // The untouched record, used with another cache (B's database, same plan and sources):
    // refused. With its own cache: recorded, and a hit.
    assert_eq!(b.lookup("l1", &[]).0, 1);
    let o = put(&b, &rec);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("was not made by a lookup of the cache"),
        "{o:?}"
    );
    let o = put(&a, &rec);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(a.lookup("l1", &[]).0, 0);
}

/// A hostile registry: a tiny HTTP/1.1 server on loopback whose answers a test chooses per
/// request path. Serves until dropped (or for two minutes at most), one connection at a time.
struct Hostile {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// What the hostile registry answers to one request.
enum Reply {
    /// 200 with this content type and body.
    Body(&'static str, Vec<u8>),
    /// 200 with this content type, a declared length of `declared` bytes, and that many bytes
    /// sent (a huge manifest).
    Huge(&'static str, u64),
    /// 307 to this URL.
    Redirect(String),
    /// 404.
    NotFound,
}

impl Hostile {
    fn serve(ip: &str, route: impl Fn(&str) -> Reply + Send + 'static) -> Hostile {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind loopback");
        let addr = listener.local_addr().expect("addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let end = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while !stopped.load(Ordering::SeqCst) && std::time::Instant::now() < end {
                let mut conn = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        continue;
                    }
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                let reply = if path == "/v2/" {
                    Reply::Body("application/json", b"{}".to_vec())
                } else {
                    route(&path)
                };
                let _ = match reply {
                    Reply::Body(ct, body) => conn
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|()| conn.write_all(&body)),
                    Reply::Huge(ct, declared) => {
                        let mut r = conn.write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
                            )
                            .as_bytes(),
                        );
                        let chunk = vec![b' '; 1 << 16];
                        let mut sent = 0u64;
                        while r.is_ok() && sent < declared {
                            let n = chunk.len().min((declared - sent) as usize);
                            r = conn.write_all(&chunk[..n]);
                            sent += n as u64;
                        }
                        r
                    }
                    Reply::Redirect(to) => conn.write_all(
                        format!(
                            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    ),
                    Reply::NotFound => conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    ),
                };
            }
        });
        Hostile {
            addr,
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `f` on a thread and fails the test if it has not returned within `secs` (a hang).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("the client hung on a hostile registry")
}

/// Every file under `dir`, relative.
fn files_under(dir: &Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| !e.file_type().is_dir())
        .map(|e| {
            e.path()
                .strip_prefix(dir)
                .unwrap_or(e.path())
                .display()
                .to_string()
        })
        .collect()
}

/// A hostile registry (wrong content types, a huge manifest, a config and a blob longer than
/// their descriptors, redirects to another host and in a loop, a digest naming a path outside
/// the layout) gets a clear error for each: never a hang, never a file anywhere but a
/// verified blob in `blobs/sha256/` (here: none at all), and with trusted keys an unsigned
/// entry from it is refused before any blob is asked for.
#[test]
fn a_hostile_registry_gets_a_clear_error_never_a_hang_or_a_file_outside_the_layout() {
    let input = [7u8; 32];
    let input_hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
    let envelope = json!({"layercache_entry": 1, "layer": "x", "input_digest": input_hex,
                          "record": {}})
    .to_string()
    .into_bytes();
    let config_digest = format!("sha256:{}", sha256_hex(&envelope));
    let blob = b"the real blob".to_vec();
    let blob_digest = format!("sha256:{}", sha256_hex(&blob));
    let manifest = |config_size: usize, layer_digest: &str, layer_size: usize| {
        json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": "application/vnd.layercache.entry.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/octet-stream", "digest": layer_digest,
                        "size": layer_size}],
            "annotations": {"dev.layercache.layer": "x",
                            "dev.layercache.input-digest": input_hex},
        })
        .to_string()
        .into_bytes()
    };
    let good = manifest(envelope.len(), &blob_digest, blob.len());
    let tmp = tempfile::tempdir().expect("tempdir");

    // Another loopback host serving wrong bytes for every blob (the target of redirects).
    let elsewhere = Hostile::serve("127.0.0.2", |_| {
        Reply::Body("application/octet-stream", vec![b'x'; 4096])
    });
    let elsewhere_addr = elsewhere.addr.clone();

    /// What a case must end in: an error finding the entry, an error fetching its blobs, or
    /// the verified blob in the layout and nothing else.
    #[derive(PartialEq, Debug)]
    enum Want {
        FindFails,
        FetchFails,
        Fetched,
    }
    use Want::*;
    type Case = (&'static str, Box<dyn Fn(&str) -> Reply + Send>, Want);
    let cases: Vec<Case> = vec![
        (
            "an HTML page as the manifest",
            Box::new(|p: &str| {
                if p.contains("/manifests/") {
                    Reply::Body("text/html", b"<html><body>hello</body></html>".to_vec())
                } else {
                    Reply::NotFound
                }
            }),
            FindFails,
        ),
        (
            // Content types are not trusted either way: the bytes are checked, and these are
            // the right bytes.
            "the right manifest and blobs served as text/html",
            Box::new({
                let good = good.clone();
                let envelope = envelope.clone();
                let config_digest = config_digest.clone();
                let blob = blob.clone();
                move |p: &str| {
                    if p.contains("/manifests/") {
                        Reply::Body("text/html", good.clone())
                    } else if p.ends_with(&config_digest) {
                        Reply::Body("text/html", envelope.clone())
                    } else if p.contains("/blobs/") {
                        Reply::Body("text/html", blob.clone())
                    } else {
                        Reply::NotFound
                    }
                }
            }),
            Fetched,
        ),
        (
            "a manifest of 64 MiB",
            Box::new(|p: &str| {
                if p.contains("/manifests/") {
                    Reply::Huge(OCI_MANIFEST_MEDIA_TYPE, 64 << 20)
                } else {
                    Reply::NotFound
                }
            }),
            FindFails,
        ),
        (
            "a config longer than its descriptor",
            Box::new({
                let good = good.clone();
                let envelope = envelope.clone();
                move |p: &str| {
                    if p.contains("/manifests/") {
                        Reply::Body(OCI_MANIFEST_MEDIA_TYPE, good.clone())
                    } else if p.contains("/blobs/") {
                        Reply::Body(
                            "application/octet-stream",
                            [envelope.clone(), vec![b' '; 1 << 20]].concat(),
                        )
                    } else {
                        Reply::NotFound
                    }
                }
            }),
            FindFails,
        ),
        (
            "a blob longer than its descriptor",
            Box::new({
                let good = good.clone();
                let envelope = envelope.clone();
                let config_digest = config_digest.clone();
                let blob = blob.clone();
                move |p: &str| {
                    if p.contains("/manifests/") {
                        Reply::Body(OCI_MANIFEST_MEDIA_TYPE, good.clone())
                    } else if p.ends_with(&config_digest) {
                        Reply::Body("application/octet-stream", envelope.clone())
                    } else if p.contains("/blobs/") {
                        Reply::Body(
                            "application/octet-stream",
                            [blob.clone(), vec![0; 1 << 20]].concat(),
                        )
                    } else {
                        Reply::NotFound
                    }
                }
            }),
            FetchFails,
        ),
        (
            "a blob redirected to another host that serves other bytes",
            Box::new({
                let good = good.clone();
                let envelope = envelope.clone();
                let config_digest = config_digest.clone();
                let elsewhere = elsewhere_addr.clone();
                move |p: &str| {
                    if p.contains("/manifests/") {
                        Reply::Body(OCI_MANIFEST_MEDIA_TYPE, good.clone())
                    } else if p.ends_with(&config_digest) {
                        Reply::Body("application/octet-stream", envelope.clone())
                    } else if p.contains("/blobs/") {
                        Reply::Redirect(format!("http://{elsewhere}/storage/blob"))
                    } else {
                        Reply::NotFound
                    }
                }
            }),
            FetchFails,
        ),
        (
            "a blob redirected in a loop",
            Box::new({
                let good = good.clone();
                let envelope = envelope.clone();
                let config_digest = config_digest.clone();
                move |p: &str| {
                    if p.contains("/manifests/") {
                        Reply::Body(OCI_MANIFEST_MEDIA_TYPE, good.clone())
                    } else if p.ends_with(&config_digest) {
                        Reply::Body("application/octet-stream", envelope.clone())
                    } else {
                        Reply::Redirect(p.to_string())
                    }
                }
            }),
            FetchFails,
        ),
        (
            "a blob digest naming a path outside the layout",
            Box::new({
                let bad = manifest(
                    envelope.len(),
                    &format!("sha256:../../../../{}", "a".repeat(52)),
                    3,
                );
                move |p: &str| {
                    if p.contains("/manifests/") {
                        Reply::Body(OCI_MANIFEST_MEDIA_TYPE, bad.clone())
                    } else {
                        Reply::NotFound
                    }
                }
            }),
            FindFails,
        ),
    ];
    for (what, route, want) in cases {
        let server = Hostile::serve("127.0.0.1", route);
        let root = tmp.path().join(what.replace(' ', "_"));
        let layout = root.join("oci");
        std::fs::create_dir_all(&layout).expect("mkdir");
        let target = format!("{}/hostile/repo", server.addr);
        let l = layout.clone();
        let result = within(60, move || {
            let r = Remote::new(
                &target,
                RemoteOptions {
                    timeout: std::time::Duration::from_secs(3),
                    ..RemoteOptions::default()
                },
            )
            .expect("client");
            match r.find_entry("x", &input) {
                Ok(Some(found)) => r
                    .fetch_blobs(&found, &l)
                    .map(|_| "fetched")
                    .map_err(|e| e.to_string()),
                Ok(None) => Ok("not found"),
                Err(e) => Err(format!("find: {e}")),
            }
        });
        let got = match &result {
            Ok(_) => Fetched,
            Err(e) if e.starts_with("find: ") => FindFails,
            Err(_) => FetchFails,
        };
        assert_eq!(got, want, "{what}: {result:?}");
        let files = files_under(&root);
        if let Err(err) = &result {
            assert!(
                err.contains(&server.addr),
                "{what}: the error names the registry: {err}"
            );
            assert_eq!(files, Vec::<String>::new(), "{what}: {err}");
        } else {
            let hex = blob_digest.trim_start_matches("sha256:");
            assert_eq!(files, [format!("oci/blobs/sha256/{hex}")], "{what}");
        }
        eprintln!("{what}: {result:?}");
    }

    // With a trusted key, the well-formed but unsigned entry is refused before any blob is
    // fetched (the server would answer every blob with the right bytes).
    let server = Hostile::serve("127.0.0.1", {
        let good = good.clone();
        move |p: &str| {
            if p.contains("/manifests/") {
                Reply::Body(OCI_MANIFEST_MEDIA_TYPE, good.clone())
            } else if p.ends_with(&config_digest) {
                Reply::Body("application/octet-stream", envelope.clone())
            } else if p.contains("/blobs/") {
                Reply::Body("application/octet-stream", blob.clone())
            } else {
                Reply::NotFound
            }
        }
    });
    let (_, pk) = keygen(tmp.path(), "trusted");
    let keys = layercache::testing::remote::TrustedKeys::from_files(&[pk]).expect("keys");
    let target = format!("{}/hostile/repo", server.addr);
    let err = within(60, move || {
        let mut r = Remote::new(&target, RemoteOptions::default()).expect("client");
        let untrusted = r.find_entry("x", &input).map(|f| f.is_some());
        r.set_trusted_keys(Some(keys));
        (
            untrusted,
            r.find_entry("x", &input)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        )
    });
    assert!(
        matches!(err.0, Ok(true)),
        "without keys the entry is found: {:?}",
        err.0
    );
    let e = err.1.expect_err("unsigned entry taken");
    assert!(e.contains("is not trusted: it is not signed"), "{e}");
    drop(elsewhere);
}
