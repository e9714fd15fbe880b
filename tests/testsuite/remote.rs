//! The registry layer against a real registry (the CNCF distribution server started on
//! 127.0.0.1), real OCI layouts made by umoci, and skopeo reading what was pushed. No mocks.

use crate::registry;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use layercache::testing::remote::{
    ANNOTATION_INPUT_DIGEST, ANNOTATION_LAYER, FoundEntry, LocalBlob, Remote, RemoteEntry,
    RemoteError, RemoteOptions, entry_tag,
};
use oci_spec::image::Descriptor;
use registry::{
    Registry, http, image_blobs, noise, run, sha256_file, tools_available, umoci_layout,
};

const REPO: &str = "layercache/test";

fn opts() -> RemoteOptions {
    RemoteOptions {
        insecure: false,
        timeout: Duration::from_secs(10),
        auth_file: None,
    }
}

fn remote(reg: &Registry) -> Remote {
    Remote::new(&format!("{}/{REPO}", reg.addr), opts()).expect("remote")
}

/// A umoci layout with two layers and the entry that carries its blobs.
fn layout_entry(dir: &Path, layer: &str, input: [u8; 32]) -> RemoteEntry {
    let layout = dir.join("oci");
    umoci_layout(
        &layout,
        "out",
        &[
            ("big.bin", noise(300_000, input[0] as u64 + 1)),
            ("small.txt", format!("layer {layer}\n").into_bytes()),
        ],
    );
    let blobs: Vec<LocalBlob> = image_blobs(&layout, "out")
        .into_iter()
        .map(|(d, path)| LocalBlob {
            descriptor: serde_json::from_value::<Descriptor>(d).expect("descriptor"),
            path,
        })
        .collect();
    // The library (the outputs rule: what a hit checks and push sends) finds the same blobs
    // from the manifest descriptor.
    let from_lib: Vec<(String, std::path::PathBuf)> =
        layercache::testing::output_blobs(&layout, &blobs[0].descriptor)
            .expect("blobs")
            .into_iter()
            .map(|b| (b.descriptor.digest().to_string(), b.path))
            .collect();
    let digests = |v: &[LocalBlob]| -> Vec<(String, std::path::PathBuf)> {
        v.iter()
            .map(|b| (b.descriptor.digest().to_string(), b.path.clone()))
            .collect()
    };
    assert_eq!(from_lib, digests(&blobs));
    RemoteEntry {
        layer: layer.to_string(),
        input_digest: input,
        record: format!(r#"{{"version":3,"layer":"{layer}","note":"é"}}"#).into_bytes(),
        blobs,
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

fn found(r: &Remote, layer: &str, input: &[u8; 32]) -> FoundEntry {
    match r.find_entry(layer, input) {
        Ok(Some(f)) => f,
        Ok(None) => panic!("entry for {layer} not found"),
        Err(e) => panic!("find_entry: {e}"),
    }
}

#[test]
fn push_find_fetch_round_trip_and_second_push_uploads_only_the_manifest() {
    let Some(reg) = Registry::start() else { return };
    if !tools_available(&["umoci", "skopeo"]) {
        return;
    }
    let a = tempfile::tempdir().unwrap();
    let input = [3u8; 32];
    let entry = layout_entry(a.path(), "base layer/ü", input);
    let r = remote(&reg);

    assert!(
        r.find_entry(&entry.layer, &input).unwrap().is_none(),
        "empty registry"
    );

    let first = r.push_entry(&entry).expect("push");
    // manifest + config + 2 layers of the image, plus the entry record.
    assert_eq!(first.blobs_uploaded, entry.blobs.len() as u64 + 1);
    assert_eq!(first.blobs_skipped, 0);
    assert_eq!(first.tag, entry_tag(&entry.layer, &input));

    // A second push of the same entry: every blob is already there, only the manifest goes.
    let before = r.counters();
    let second = r.push_entry(&entry).expect("second push");
    let after = r.counters();
    assert_eq!(second.blobs_uploaded, 0);
    assert_eq!(second.bytes_uploaded, 0);
    assert_eq!(second.blobs_skipped, entry.blobs.len() as u64 + 1);
    assert_eq!(after.blobs_uploaded, before.blobs_uploaded);
    assert_eq!(after.manifests_pushed, before.manifests_pushed + 1);
    assert_eq!(second.manifest_digest, first.manifest_digest);

    // Another machine: a new client, an empty layout.
    let b = tempfile::tempdir().unwrap();
    let r2 = remote(&reg);
    let f = found(&r2, &entry.layer, &input);
    assert_eq!(f.record, entry.record, "record verbatim");
    assert_eq!(f.manifest_digest, first.manifest_digest);
    let want: Vec<String> = entry
        .blobs
        .iter()
        .map(|b| b.descriptor.digest().to_string())
        .collect();
    let got: Vec<String> = f.blobs.iter().map(|d| d.digest().to_string()).collect();
    assert_eq!(got, want);
    let layout_b = b.path().join("oci");
    std::fs::create_dir_all(&layout_b).unwrap();
    let rep = r2.fetch_blobs(&f, &layout_b).expect("fetch");
    assert_eq!(rep.blobs_downloaded, entry.blobs.len() as u64);
    for d in &want {
        let hex = d.strip_prefix("sha256:").unwrap();
        assert_eq!(&sha256_file(&layout_b.join("blobs/sha256").join(hex)), d);
    }
    assert_eq!(
        files_under(&layout_b.join("blobs/sha256")).len(),
        want.len(),
        "no temp files"
    );
    // Fetching again downloads nothing.
    let again = r2.fetch_blobs(&f, &layout_b).expect("fetch again");
    assert_eq!(
        (again.blobs_downloaded, again.blobs_present),
        (0, want.len() as u64)
    );

    // Another input digest of the same layer is another entry: not found.
    assert!(r2.find_entry(&entry.layer, &[4u8; 32]).unwrap().is_none());

    // The artifact is plain OCI: skopeo reads it.
    let url = format!("docker://{}/{REPO}:{}", reg.addr, first.tag);
    let raw = run(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--raw", &url]));
    let m: serde_json::Value = serde_json::from_str(&raw).expect("manifest JSON");
    assert_eq!(m["annotations"][ANNOTATION_LAYER], entry.layer.as_str());
    assert_eq!(m["annotations"][ANNOTATION_INPUT_DIGEST], "03".repeat(32));
    assert_eq!(
        m["config"]["mediaType"],
        layercache::testing::remote::ENTRY_MEDIA_TYPE
    );
    let config = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        "--config",
        &url,
    ]));
    let config: serde_json::Value = serde_json::from_str(&config).expect("config JSON");
    assert_eq!(config["layer"], entry.layer.as_str());
    assert_eq!(config["record"]["version"], 3);
    // skopeo 1.9's plain `inspect` prints image facts only; it recognizes the artifact by type.
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        (out.status.success() && text.contains(&first.manifest_digest))
            || err.contains(layercache::testing::remote::ENTRY_MEDIA_TYPE),
        "skopeo inspect: {text}{err}"
    );
}

#[test]
fn a_blob_corrupted_in_the_registry_is_refused_and_nothing_is_left() {
    let Some(reg) = Registry::start() else { return };
    if !tools_available(&["umoci"]) {
        return;
    }
    let a = tempfile::tempdir().unwrap();
    let input = [9u8; 32];
    let entry = layout_entry(a.path(), "corrupt", input);
    let r = remote(&reg);
    r.push_entry(&entry).expect("push");

    // Flip bytes of the largest blob in the registry's storage, keeping its size.
    let big = entry
        .blobs
        .iter()
        .max_by_key(|b| b.descriptor.size())
        .unwrap()
        .descriptor
        .digest()
        .to_string();
    let data = reg.blob_data(&big);
    let mut bytes = std::fs::read(&data).expect("blob data in storage");
    for b in bytes.iter_mut().skip(1000).take(16) {
        *b ^= 0xff;
    }
    std::fs::write(&data, &bytes).unwrap();

    let f = found(&r, "corrupt", &input);
    let b = tempfile::tempdir().unwrap();
    let err = r
        .fetch_blobs(&f, b.path())
        .expect_err("corrupt blob accepted");
    let msg = err.to_string();
    assert!(matches!(err, RemoteError::BlobMismatch { .. }), "{msg}");
    assert!(msg.contains(&big) && msg.contains(&reg.addr), "{msg}");
    assert_eq!(
        files_under(&b.path().join("blobs/sha256")),
        Vec::<String>::new()
    );
    assert_eq!(r.counters().blobs_downloaded, 0);
}

#[test]
fn basic_auth_works_and_a_wrong_password_is_named_without_the_password() {
    let password = "correct-Horse-7Q";
    let Some(reg) = Registry::start_with_htpasswd("alice", password) else {
        return;
    };
    if !tools_available(&["umoci"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let auth_file = |pw: &str| {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("alice:{pw}"));
        let p = dir.path().join(format!("auth-{}.json", pw.len()));
        std::fs::write(
            &p,
            format!(
                r#"{{"auths":{{"https://{}/v1/":{{"auth":"{enc}"}}}}}}"#,
                reg.addr
            ),
        )
        .unwrap();
        (p, enc)
    };
    let entry = layout_entry(dir.path(), "authed", [5; 32]);
    let target = format!("{}/{REPO}", reg.addr);

    // Without credentials: refused, and the error says none were found.
    let anon = Remote::new(&target, opts()).unwrap();
    let err = anon
        .push_entry(&entry)
        .expect_err("anonymous push accepted");
    assert!(matches!(err, RemoteError::Unauthorized { .. }), "{err}");

    // The right password works.
    let (good, _) = auth_file(password);
    let r = Remote::new(
        &target,
        RemoteOptions {
            auth_file: Some(good),
            ..opts()
        },
    )
    .unwrap();
    r.push_entry(&entry).expect("push with credentials");
    assert!(r.find_entry("authed", &[5; 32]).unwrap().is_some());

    // A wrong one: a clear error naming the registry; the password is nowhere.
    let wrong = "Wr0ng-Secret-Pw-4242";
    let (bad, enc) = auth_file(wrong);
    let r = Remote::new(
        &target,
        RemoteOptions {
            auth_file: Some(bad.clone()),
            ..opts()
        },
    )
    .unwrap();
    for err in [
        r.push_entry(&entry)
            .expect_err("wrong password accepted (push)"),
        r.find_entry("authed", &[5; 32])
            .expect_err("wrong password accepted (find)"),
    ] {
        let shown = format!("{err} | {err:?} | {r:?}");
        assert!(matches!(err, RemoteError::Unauthorized { .. }), "{shown}");
        assert!(shown.contains(&reg.addr), "{shown}");
        assert!(
            shown.contains(&bad.display().to_string()),
            "names the file: {shown}"
        );
        assert!(
            !shown.contains(wrong) && !shown.contains(&enc),
            "credential leaked: {shown}"
        );
    }
}

#[test]
fn a_stopped_or_silent_registry_fails_within_the_timeout() {
    let Some(mut reg) = Registry::start() else {
        return;
    };
    let target = format!("{}/{REPO}", reg.addr);
    let r = Remote::new(
        &target,
        RemoteOptions {
            timeout: Duration::from_secs(2),
            ..opts()
        },
    )
    .unwrap();
    reg.stop();
    let t = Instant::now();
    let err = r
        .find_entry("x", &[0; 32])
        .expect_err("stopped registry answered");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert!(err.to_string().contains(&reg.addr), "{err}");
    assert!(
        matches!(
            err,
            RemoteError::Unreachable { .. } | RemoteError::Timeout { .. }
        ),
        "{err:?}"
    );

    // A registry that accepts connections and never answers: the timeout ends the wait.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        silent.set_nonblocking(true).unwrap();
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end && held.len() < 8 {
            if let Ok((s, _)) = silent.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let r = Remote::new(
        &format!("{addr}/{REPO}"),
        RemoteOptions {
            timeout: Duration::from_secs(1),
            ..opts()
        },
    )
    .unwrap();
    let t = Instant::now();
    let err = r
        .find_entry("x", &[0; 32])
        .expect_err("silent registry answered");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    assert!(matches!(err, RemoteError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    drop(holder);
}

#[test]
fn a_tag_whose_manifest_names_another_entry_is_not_taken() {
    let Some(reg) = Registry::start() else { return };
    if !tools_available(&["umoci"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let entry = layout_entry(dir.path(), "real", [1; 32]);
    let r = remote(&reg);
    let pushed = r.push_entry(&entry).expect("push");
    let accept = [(
        "Accept",
        layercache::testing::remote::OCI_MANIFEST_MEDIA_TYPE,
    )];
    let (status, manifest) = http(
        &reg.addr,
        "GET",
        &format!("/v2/{REPO}/manifests/{}", pushed.tag),
        &accept,
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    let put = |tag: &str, body: &[u8]| {
        let (status, resp) = http(
            &reg.addr,
            "PUT",
            &format!("/v2/{REPO}/manifests/{tag}"),
            &[(
                "Content-Type",
                layercache::testing::remote::OCI_MANIFEST_MEDIA_TYPE,
            )],
            Some(body),
        )
        .unwrap();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&resp));
    };

    // 1. The real manifest under the tag of another (layer, input digest).
    let other = [2u8; 32];
    put(&entry_tag("forged", &other), &manifest);
    let err = r
        .find_entry("forged", &other)
        .expect_err("forged tag taken");
    assert!(matches!(err, RemoteError::Untrusted { .. }), "{err}");
    assert!(err.to_string().contains(&reg.addr), "{err}");

    // 2. Annotations rewritten to claim that entry, config still naming the real one.
    let mut m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    m["annotations"][ANNOTATION_LAYER] = "forged".into();
    m["annotations"][ANNOTATION_INPUT_DIGEST] = "02".repeat(32).into();
    put(
        &entry_tag("forged", &other),
        &serde_json::to_vec(&m).unwrap(),
    );
    let err = r
        .find_entry("forged", &other)
        .expect_err("forged annotations taken");
    assert!(matches!(err, RemoteError::Untrusted { .. }), "{err}");
    assert!(err.to_string().contains("config"), "{err}");

    // The real entry is still found.
    assert!(r.find_entry("real", &[1; 32]).unwrap().is_some());
}

#[test]
fn plain_http_is_refused_off_loopback_without_insecure() {
    let err = Remote::new("http://192.0.2.1:5000/repo", opts()).expect_err("accepted");
    assert!(matches!(err, RemoteError::InsecureRefused { .. }), "{err}");
    assert!(err.to_string().contains("192.0.2.1:5000"), "{err}");
    // With --insecure it is allowed (nothing is sent until an operation).
    assert!(
        Remote::new(
            "http://192.0.2.1:5000/repo",
            RemoteOptions {
                insecure: true,
                ..opts()
            }
        )
        .is_ok()
    );
}

#[test]
fn a_malformed_entry_is_refused_before_anything_is_sent() {
    // Nothing listens on this port: any request would fail as unreachable, not as invalid.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = Remote::new(&format!("127.0.0.1:{port}/{REPO}"), opts()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    std::fs::write(&blob, b"four").unwrap();
    let descriptor = |digest: &str, size: u64| -> Descriptor {
        serde_json::from_value(serde_json::json!({
            "mediaType": "application/octet-stream", "digest": digest, "size": size
        }))
        .unwrap()
    };
    let good_digest = format!("sha256:{}", "ab".repeat(32));
    let cases = [
        (b"not json".to_vec(), descriptor(&good_digest, 4)),
        (b"{}".to_vec(), descriptor(&good_digest, 5)),
        (
            b"{}".to_vec(),
            descriptor(&format!("sha512:{}", "ab".repeat(64)), 4),
        ),
    ];
    for (record, descriptor) in cases {
        let entry = RemoteEntry {
            layer: "l".into(),
            input_digest: [0; 32],
            record,
            blobs: vec![LocalBlob {
                descriptor,
                path: blob.clone(),
            }],
        };
        let err = r.push_entry(&entry).expect_err("malformed entry pushed");
        assert!(matches!(err, RemoteError::InvalidEntry { .. }), "{err}");
    }
    assert_eq!(r.counters(), Default::default());
}
