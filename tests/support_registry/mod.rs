//! A real OCI registry for tests: the CNCF distribution server (`docker-registry serve`) on
//! 127.0.0.1 with a free port, a temporary storage directory and a config file, optionally
//! with htpasswd basic auth; and real OCI layouts made by `umoci`.
//!
//! When a tool is missing (`.ci/install-deps` installs them), a test is skipped with a message,
//! except in CI (`CI` set), where it fails.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `tool` is on the PATH.
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(tool);
            f.is_file()
        })
    })
}

/// `true` when every tool is there; otherwise fails in CI and says why it skips elsewhere.
pub fn tools_available(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "registry test needs {} (run .ci/install-deps)",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// A running registry; killed when dropped.
pub struct Registry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Storage, config and log.
    pub dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

impl Registry {
    /// Starts a registry without auth; `None` (after saying why) when the tools are missing.
    pub fn start() -> Option<Registry> {
        Self::start_inner(None)
    }

    /// Starts a registry that requires basic auth for `user` with `password` (bcrypt).
    pub fn start_with_htpasswd(user: &str, password: &str) -> Option<Registry> {
        Self::start_inner(Some((user, password)))
    }

    fn start_inner(auth: Option<(&str, &str)>) -> Option<Registry> {
        let mut tools = vec!["docker-registry"];
        if auth.is_some() {
            tools.push("htpasswd");
        }
        if !tools_available(&tools) {
            return None;
        }
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match Self::try_start(auth) {
                Ok(r) => return Some(r),
                Err(e) => last_err = e,
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }

    fn try_start(auth: Option<(&str, &str)>) -> Result<Registry, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((user, password)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .map_err(|e| format!("htpasswd: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "htpasswd failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).map_err(|e| e.to_string())?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: layercache-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("registry.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawn docker-registry: {e}"))?;
        let mut reg = Registry {
            child: Some(child),
            addr,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(child) = reg.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(reg.dir.path().join("registry.log"))
                    .unwrap_or_default();
                return Err(format!("exited with {status}: {log}"));
            }
            if let Ok((status, _)) = http(&reg.addr, "GET", "/v2/", &[], None)
                && (status == 200 || status == 401)
            {
                return Ok(reg);
            }
            if Instant::now() > deadline {
                return Err("not answering /v2/ after 15 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The storage directory (`docker/registry/v2/...` below it).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file holding a blob's bytes in the registry's storage.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Kills the registry and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal HTTP/1.0 request to 127.0.0.1 (for checks and for forging manifests in tests):
/// returns the status and the body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    assert!(sock.ip().is_loopback(), "tests talk to 127.0.0.1 only");
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    if let Some(b) = body {
        s.write_all(b)?;
    }
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(resp.len());
    let head = String::from_utf8_lossy(&resp[..text_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp.get(text_end + 4..).unwrap_or_default().to_vec();
    Ok((status, body))
}

/// Runs a command and panics with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes an OCI layout at `layout` with image `tag` holding `files` (name, content), one
/// `umoci insert` per file, so the image has one layer per file. Returns every blob of the
/// image (manifest, config, layers) as (descriptor JSON, path).
pub fn umoci_layout(layout: &Path, tag: &str, files: &[(&str, Vec<u8>)]) {
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    for (name, content) in files {
        umoci_insert(layout, tag, name, content);
    }
}

/// `umoci insert` of one file `/name` holding `content` into image `tag` of `layout` (a new
/// layer; the tag moves to the new manifest). Rootless unless run as root.
pub fn umoci_insert(layout: &Path, tag: &str, name: &str, content: &[u8]) {
    let src = tempfile::tempdir().expect("tempdir");
    let file = src.path().join(name);
    std::fs::write(&file, content).expect("write source file");
    let image = format!("{}:{tag}", layout.display());
    let mut cmd = Command::new("umoci");
    cmd.args(["insert", "--image", &image]);
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        cmd.arg("--rootless");
    }
    cmd.arg(&file).arg(format!("/{name}"));
    run(&mut cmd);
}

/// The blobs of image `tag` in `layout`: the manifest, its config and its layers, as
/// (descriptor, path of the blob).
pub fn image_blobs(layout: &Path, tag: &str) -> Vec<(serde_json::Value, PathBuf)> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index JSON");
    let manifest_desc = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tagged manifest")
        .clone();
    let path_of = |d: &serde_json::Value| {
        let digest = d["digest"].as_str().expect("digest");
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        layout.join("blobs/sha256").join(hex)
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path_of(&manifest_desc)).expect("manifest"))
            .expect("manifest JSON");
    let mut out = vec![(manifest_desc.clone(), path_of(&manifest_desc))];
    out.push((manifest["config"].clone(), path_of(&manifest["config"])));
    for l in manifest["layers"].as_array().expect("layers") {
        out.push((l.clone(), path_of(l)));
    }
    out
}

/// Pseudo-random bytes (xorshift), so that layers do not compress away.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `sha256:HEX` of a file's bytes.
pub fn sha256_file(p: &Path) -> String {
    use sha2::Digest as _;
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let d = sha2::Sha256::digest(&bytes);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}
