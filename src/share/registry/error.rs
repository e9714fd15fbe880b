//! Errors of the registry layer. Every variant names the registry (or the local file) it is
//! about and says what to do. No variant ever carries a credential: messages that come from the
//! protocol client are passed through [`Redactor`] before they are kept.

use std::path::PathBuf;
use std::time::Duration;

/// An error talking to a registry, or reading or writing what travels through it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The remote is not `HOST[:PORT]/REPOSITORY`.
    #[error(
        "invalid remote {target:?}: {detail} (expected HOST[:PORT]/REPOSITORY, e.g. 127.0.0.1:5000/layercache)"
    )]
    InvalidTarget {
        /// The remote as given.
        target: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Plain HTTP was asked for a registry that is not on a loopback address.
    #[error(
        "refusing plain HTTP to registry {registry}: it is not a loopback address; use HTTPS, or allow plain HTTP explicitly (insecure) if the network is trusted"
    )]
    InsecureRefused {
        /// The registry (`host[:port]`).
        registry: String,
    },
    /// A credentials file could not be read or parsed.
    #[error("cannot use the registry credentials in {}: {detail}", path.display())]
    Credentials {
        /// The file (auth.json or docker config.json).
        path: PathBuf,
        /// What is wrong (never the credential itself).
        detail: String,
    },
    /// The registry refused the credentials (or wants some and none were found).
    #[error(
        "registry {registry} refused access to {repository} ({what}) with {}: check the user and password or token (`skopeo login {registry}` or `docker login {registry}`), and that it may {what} this repository",
        match credentials_from { Some(p) => format!("the credentials from {}", p.display()), None => "no credentials (none found in REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json or ~/.docker/config.json)".to_string() }
    )]
    Unauthorized {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// What was attempted (`pull`, `push`).
        what: &'static str,
        /// Where the credentials came from, if any were used.
        credentials_from: Option<PathBuf>,
    },
    /// The registry could not be reached.
    #[error(
        "registry {registry} is unreachable ({what}): {detail}; check that it runs and the address is right"
    )]
    Unreachable {
        /// The registry.
        registry: String,
        /// The operation.
        what: String,
        /// The transport error.
        detail: String,
    },
    /// A request did not finish within the timeout.
    #[error(
        "registry {registry} did not answer within {after:?} ({what}); it may be down or overloaded"
    )]
    Timeout {
        /// The registry.
        registry: String,
        /// The operation.
        what: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The registry answered with an error.
    #[error("registry {registry} failed to {what}: {detail}")]
    Registry {
        /// The registry.
        registry: String,
        /// The operation.
        what: String,
        /// The registry's answer.
        detail: String,
    },
    /// What a tag points at is not an entry for the layer and input digest asked for (a
    /// forged or damaged artifact); it is never used.
    #[error(
        "registry {registry}: {reference} is not a layercache entry for layer {layer:?} with input digest {input_digest}: {detail}; it was not used (delete the tag if it is not yours)"
    )]
    Untrusted {
        /// The registry.
        registry: String,
        /// `repository:tag`.
        reference: String,
        /// The layer asked for.
        layer: String,
        /// The input digest asked for, hex.
        input_digest: String,
        /// What did not match.
        detail: String,
    },
    /// Trusted keys are set and the entry is not signed by one of them, or is not what was
    /// signed (see [`super::Untrusted`]); it is never used and nothing of it is downloaded.
    #[error(
        "registry {registry}: the entry {reference} for layer {layer:?} with input digest {input_digest} is not trusted: {why}; it was not used"
    )]
    NotTrusted {
        /// The registry.
        registry: String,
        /// `repository:tag`.
        reference: String,
        /// The layer asked for.
        layer: String,
        /// The input digest asked for, hex.
        input_digest: String,
        /// Why (boxed: keeps the error small).
        why: Box<super::Untrusted>,
    },
    /// A signing key could not be read or used.
    #[error(transparent)]
    Key(#[from] super::KeyError),
    /// A downloaded blob did not have the digest or size it is addressed by.
    #[error(
        "blob {digest} from registry {registry} does not match its digest: {detail}; nothing was written (the registry's copy is damaged or was tampered with)"
    )]
    BlobMismatch {
        /// The registry.
        registry: String,
        /// The digest the blob was asked by.
        digest: String,
        /// Expected against received.
        detail: String,
    },
    /// An entry to push is malformed (bad digest, missing blob, bad record).
    #[error("cannot push layer {layer:?}: {detail}")]
    InvalidEntry {
        /// The layer.
        layer: String,
        /// What is wrong.
        detail: String,
    },
    /// A local file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The private runtime that drives the protocol client could not start.
    #[error("cannot start the registry client's runtime: {0}")]
    Runtime(std::io::Error),
}

impl RemoteError {
    /// True when the registry cannot serve the rest of this run: it cannot be set up, reached
    /// or authenticated to, timed out, or failed as a service (so asking it again for the next
    /// layer would cost another timeout and tell nothing new). False for what concerns one
    /// entry or this machine only — an entry that is untrusted, not trusted or invalid, a blob
    /// that did not verify, a trusted key that cannot be read, a local I/O error — after which
    /// the registry may still serve the next layer.
    pub fn ends_the_run(&self) -> bool {
        !matches!(
            self,
            RemoteError::Untrusted { .. }
                | RemoteError::NotTrusted { .. }
                | RemoteError::Key(_)
                | RemoteError::BlobMismatch { .. }
                | RemoteError::InvalidEntry { .. }
                | RemoteError::Io { .. }
        )
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RemoteError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Removes known secrets from text that came from elsewhere (the protocol client's errors,
/// a registry's answer) before it goes into an error.
#[derive(Default)]
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub(crate) fn new(secrets: Vec<String>) -> Self {
        Redactor {
            secrets: secrets.into_iter().filter(|s| s.len() >= 3).collect(),
        }
    }

    pub(crate) fn clean(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "<redacted>");
            }
        }
        out
    }
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_gives_up_on_a_registry_that_cannot_serve_it_not_on_one_bad_entry() {
        let unreachable = RemoteError::Unreachable {
            registry: "r".into(),
            what: "find".into(),
            detail: "refused".into(),
        };
        let timeout = RemoteError::Timeout {
            registry: "r".into(),
            what: "find".into(),
            after: Duration::from_secs(1),
        };
        let failed = RemoteError::Registry {
            registry: "r".into(),
            what: "find".into(),
            detail: "500".into(),
        };
        for e in [unreachable, timeout, failed] {
            assert!(e.ends_the_run(), "{e}");
        }
        let bad_entry = RemoteError::InvalidEntry {
            layer: "l".into(),
            detail: "bad digest".into(),
        };
        let local_io = RemoteError::io("read", "/x", std::io::Error::other("eio"));
        for e in [bad_entry, local_io] {
            assert!(!e.ends_the_run(), "{e}");
        }
    }
}
