//! Registry credentials, found where the container ecosystem keeps them.
//!
//! Files are searched in this order, and the first that has an entry for the registry wins:
//! the explicit `auth_file` of [`super::RemoteOptions`], `$REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json` (podman, skopeo, buildah), then
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`. An entry is
//! `auths.<key>.auth` = base64 of `user:password` (basic auth, which the protocol client also
//! uses to obtain bearer tokens from a token service), or `auths.<key>.registrytoken` (a bearer
//! token used as is). `<key>` is the registry (`host[:port]`, optionally with `https://` and a
//! path, as docker writes it) or `host[:port]/repository-prefix` (podman's narrower form); the
//! longest match wins. Credential helpers (`credsStore`, `credHelpers`) are not run.
//!
//! A credential is never logged or put into an error: errors name the file only.

use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::secrets::RegistryAuth;

use super::error::RemoteError;

/// Credentials for one registry and where they came from.
pub(crate) struct Credentials {
    pub(crate) auth: RegistryAuth,
    pub(crate) source: Option<PathBuf>,
    /// The secret strings, so that errors can be scrubbed of them.
    pub(crate) secrets: Vec<String>,
}

impl Credentials {
    fn anonymous() -> Self {
        Credentials {
            auth: RegistryAuth::Anonymous,
            source: None,
            secrets: Vec::new(),
        }
    }
}

/// The files searched, in order. An explicit file must exist.
fn candidate_files(explicit: Option<&Path>) -> Vec<(PathBuf, bool)> {
    let mut files = Vec::new();
    if let Some(p) = explicit {
        files.push((p.to_path_buf(), true));
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = env("REGISTRY_AUTH_FILE") {
        files.push((PathBuf::from(p), false));
    }
    if let Some(d) = env("XDG_RUNTIME_DIR") {
        files.push((PathBuf::from(d).join("containers/auth.json"), false));
    }
    if let Some(d) = env("DOCKER_CONFIG") {
        files.push((PathBuf::from(d).join("config.json"), false));
    } else if let Some(h) = env("HOME") {
        files.push((PathBuf::from(h).join(".docker/config.json"), false));
    }
    files
}

/// Finds the credentials for `registry` (`host[:port]`) and `repository`.
pub(crate) fn find(
    registry: &str,
    repository: &str,
    explicit: Option<&Path>,
) -> Result<Credentials, RemoteError> {
    for (path, required) in candidate_files(explicit) {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) => return Err(RemoteError::io("cannot read credentials file", path, e)),
        };
        if let Some(c) = from_file(&path, &bytes, registry, repository)? {
            return Ok(c);
        }
    }
    Ok(Credentials::anonymous())
}

/// Normalizes an `auths` key: drops a scheme and a docker-style `/v1/` or `/v2/` suffix.
fn normalize_key(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.trim_end_matches('/');
    k.strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k)
}

/// How well `key` matches: `None` when it does not, else its length (longest wins).
fn key_match(key: &str, registry: &str, repository: &str) -> Option<usize> {
    let key = normalize_key(key);
    if key == registry {
        return Some(key.len());
    }
    let rest = key.strip_prefix(registry)?.strip_prefix('/')?;
    let ok = repository == rest
        || repository
            .strip_prefix(rest)
            .is_some_and(|r| r.starts_with('/'));
    ok.then_some(key.len())
}

fn from_file(
    path: &Path,
    bytes: &[u8],
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, RemoteError> {
    let bad = |detail: String| RemoteError::Credentials {
        path: path.to_path_buf(),
        detail,
    };
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let best = auths
        .iter()
        .filter_map(|(k, v)| key_match(k, registry, repository).map(|n| (n, k, v)))
        .max_by_key(|(n, _, _)| *n);
    let Some((_, key, entry)) = best else {
        return Ok(None);
    };
    if let Some(token) = entry
        .get("registrytoken")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
    {
        return Ok(Some(Credentials {
            auth: RegistryAuth::Bearer(token.to_string()),
            source: Some(path.to_path_buf()),
            secrets: vec![token.to_string()],
        }));
    }
    let Some(encoded) = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
    else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad(format!("auths.{key:?}.auth is not valid base64")))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| bad(format!("auths.{key:?}.auth is not UTF-8 once decoded")))?;
    let Some((user, password)) = decoded.split_once(':') else {
        return Err(bad(format!(
            "auths.{key:?}.auth does not decode to user:password"
        )));
    };
    Ok(Some(Credentials {
        auth: RegistryAuth::Basic(user.to_string(), password.to_string()),
        source: Some(path.to_path_buf()),
        secrets: vec![password.to_string(), encoded.to_string()],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_registry_and_repository_prefixes() {
        assert_eq!(
            key_match("127.0.0.1:5000", "127.0.0.1:5000", "a/b"),
            Some(14)
        );
        assert!(key_match("https://127.0.0.1:5000/v1/", "127.0.0.1:5000", "a").is_some());
        assert!(key_match("127.0.0.1:5000/a", "127.0.0.1:5000", "a/b").is_some());
        assert!(key_match("127.0.0.1:5000/ab", "127.0.0.1:5000", "a/b").is_none());
        assert!(key_match("127.0.0.1:50001", "127.0.0.1:5000", "a").is_none());
    }

    #[test]
    fn basic_credentials_decode_and_are_listed_as_secrets() {
        let file = br#"{"auths":{"r:1":{"auth":"dXNlcjpwYTpzcw=="}}}"#;
        let c = from_file(Path::new("x.json"), file, "r:1", "repo")
            .ok()
            .flatten();
        let Some(c) = c else {
            panic!("no credentials found")
        };
        assert_eq!(c.auth, RegistryAuth::Basic("user".into(), "pa:ss".into()));
        assert!(c.secrets.contains(&"pa:ss".to_string()));
    }

    #[test]
    fn a_bad_entry_names_the_file_not_the_value() {
        let file = br#"{"auths":{"r:1":{"auth":"%%%secret%%%"}}}"#;
        let err = match from_file(Path::new("x.json"), file, "r:1", "repo") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted bad base64"),
        };
        assert!(err.contains("x.json"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
