//! The remote store: cache entries pushed to, found in and pulled from an OCI registry.
//!
//! This module owns the wire format of a pushed entry, the tag rule and the trust rule. It
//! knows nothing of the cache: it moves an entry record (opaque, versioned JSON) and the
//! output blobs it names between a registry and a local OCI layout. The cache decides what to
//! push and what a found entry means.
//!
//! ## Wire format
//!
//! An entry for (layer, input digest) is a standard OCI image manifest (an "artifact"):
//!
//! * `mediaType` `application/vnd.oci.image.manifest.v1+json`, `artifactType`
//!   [`ENTRY_MEDIA_TYPE`];
//! * `config`: a JSON blob of media type [`ENTRY_MEDIA_TYPE`], the *envelope*
//!   `{"input_digest": HEX, "layer": NAME, "layercache_entry": 1, "record": RECORD}`, where
//!   `RECORD` is the caller's entry record, verbatim;
//! * `layers`: the output blobs, with the descriptors the caller gave (media type, digest,
//!   size, annotations);
//! * `annotations`: [`ANNOTATION_LAYER`] = the layer name, [`ANNOTATION_INPUT_DIGEST`] = the
//!   input digest in hex.
//!
//! Any registry that stores OCI artifacts stores it (checked against distribution 2.8), and
//! `skopeo inspect` reads it. Blobs are deduplicated by the registry: a push asks (`HEAD`)
//! before uploading each blob, so pushing the same outputs again costs one manifest.
//!
//! ## Tag rule
//!
//! The manifest is tagged [`entry_tag`]`(layer, input_digest)`: a readable, sanitized prefix
//! of the layer name and the hex of a keyed blake3 of `layer ‖ 0x00 ‖ input_digest`. Finding
//! an entry is one `GET` of that tag: no listing of the repository.
//!
//! ## Trust rule
//!
//! Without trusted keys, a remote entry is trusted as much as whoever can push to that
//! repository: anyone with push access can publish an entry that a lookup will take as a hit.
//! With trusted keys ([`Remote::set_trusted_keys`]), an entry is used only when one of the keys
//! signed it (see [`sign`]: a minisign signature over the config blob, in the manifest
//! annotation [`ANNOTATION_SIGNATURE`], made by a push with [`Remote::set_signing_key`]);
//! anything else is a [`RemoteError::NotTrusted`] error saying why ([`Untrusted`]), found
//! before a blob is downloaded. In both modes, nothing is taken on faith:
//! [`Remote::find_entry`] uses a manifest only when its annotations *and* its config name
//! exactly the layer and input digest asked for (a tag that points elsewhere, by collision or
//! forgery, is an [`RemoteError::Untrusted`] error), the config's sha256 is checked, blob
//! digests must be `sha256:` with 64 hex digits (so they can only name files under
//! `blobs/sha256/`), and [`Remote::fetch_blobs`] verifies each blob's sha256 and size while it
//! streams, writing it to a temporary file that is renamed into the layout only when both
//! match.
//!
//! ## Transport
//!
//! The protocol is spoken by `oci-client` (the ORAS project's client; TLS by rustls with the
//! `ring` provider, installed as the process default if none is). Its async API is driven by a
//! private current-thread tokio runtime, so this API is synchronous; do not call it from inside
//! another tokio runtime. Plain HTTP is used only for loopback registries (127.0.0.0/8, `::1`,
//! `localhost`) or when [`RemoteOptions::insecure`] says so; every request has a timeout.
//! Credentials come from the files the container tools write (see `remote/auth.rs`); no credential is
//! ever logged or put into an error.

mod auth;
mod error;
pub mod sign;
mod wire;

use std::collections::BTreeSet;
use std::future::Future;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::Descriptor;
use sha2::Digest as _;

pub use error::RemoteError;
pub use sign::{
    ANNOTATION_SIGNATURE, GeneratedKey, KeyError, SigningKey, TrustedKeys, Untrusted,
    generate_keypair,
};
pub use wire::{
    ANNOTATION_INPUT_DIGEST, ANNOTATION_LAYER, ENTRY_MEDIA_TYPE, ENVELOPE_VERSION,
    OCI_MANIFEST_MEDIA_TYPE, TAG_CONTEXT, entry_tag,
};

use crate::path::hex;
use error::Redactor;
use wire::{BlobRef, Envelope, ManifestIn, sha256_hex};

/// Result of this module.
pub type Result<T> = std::result::Result<T, RemoteError>;

/// Size of the reads that feed an upload.
const UPLOAD_CHUNK: usize = 1 << 20;
/// The slowest transfer rate tolerated for a blob upload: its deadline is the timeout plus its
/// size at this rate.
const MIN_UPLOAD_RATE: u64 = 1 << 20;

/// How to reach a registry.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Allow plain HTTP to a registry that is not on a loopback address.
    pub insecure: bool,
    /// Timeout of each request (connect, and each wait for data); a blob upload gets this plus
    /// one second per MiB.
    pub timeout: Duration,
    /// A credentials file (auth.json / docker config.json format) searched before the
    /// standard ones.
    pub auth_file: Option<PathBuf>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            insecure: false,
            timeout: Duration::from_secs(30),
            auth_file: None,
        }
    }
}

/// One output blob of an entry to push: its descriptor and the file holding it (normally
/// `blobs/sha256/<hex>` of a local OCI layout).
#[derive(Debug, Clone)]
pub struct LocalBlob {
    /// The descriptor, pushed as a layer of the artifact (digest must be `sha256:`).
    pub descriptor: Descriptor,
    /// The file with the blob's bytes.
    pub path: PathBuf,
}

/// An entry to push.
#[derive(Debug, Clone)]
pub struct RemoteEntry {
    /// The layer name.
    pub layer: String,
    /// The input digest of the layer evaluation the entry is for.
    pub input_digest: [u8; 32],
    /// The entry record: versioned JSON, carried verbatim.
    pub record: Vec<u8>,
    /// The output blobs.
    pub blobs: Vec<LocalBlob>,
}

/// An entry found in the registry, checked against what was asked for.
#[derive(Debug, Clone)]
pub struct FoundEntry {
    /// The layer name (equal to the one asked for).
    pub layer: String,
    /// The input digest (equal to the one asked for).
    pub input_digest: [u8; 32],
    /// The tag it was found under.
    pub tag: String,
    /// The digest of its manifest.
    pub manifest_digest: String,
    /// The entry record, verbatim as pushed.
    pub record: Vec<u8>,
    /// The output blobs' descriptors (all `sha256:`).
    pub blobs: Vec<Descriptor>,
}

/// What one push did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushReport {
    /// The tag pushed.
    pub tag: String,
    /// The digest of the pushed manifest.
    pub manifest_digest: String,
    /// Blobs uploaded (outputs and the config).
    pub blobs_uploaded: u64,
    /// Blobs the registry already had.
    pub blobs_skipped: u64,
    /// Bytes uploaded in blobs.
    pub bytes_uploaded: u64,
}

/// What one fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FetchReport {
    /// Blobs downloaded and verified.
    pub blobs_downloaded: u64,
    /// Blobs already in the layout.
    pub blobs_present: u64,
    /// Bytes downloaded.
    pub bytes_downloaded: u64,
}

/// Work done by one [`Remote`] since it was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteCounters {
    /// Blob uploads (outputs and configs).
    pub blobs_uploaded: u64,
    /// Blobs not uploaded because the registry had them.
    pub blobs_skipped: u64,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Manifests pushed.
    pub manifests_pushed: u64,
    /// Manifests fetched (found entries, and tags that were not taken).
    pub manifests_fetched: u64,
    /// Blobs downloaded into a layout.
    pub blobs_downloaded: u64,
    /// Bytes downloaded into a layout.
    pub bytes_downloaded: u64,
}

#[derive(Default)]
struct Counters {
    blobs_uploaded: AtomicU64,
    blobs_skipped: AtomicU64,
    bytes_uploaded: AtomicU64,
    manifests_pushed: AtomicU64,
    manifests_fetched: AtomicU64,
    blobs_downloaded: AtomicU64,
    bytes_downloaded: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A repository in a registry, with a synchronous client for it.
pub struct Remote {
    registry: String,
    repository: String,
    timeout: Duration,
    client: Client,
    auth: RegistryAuth,
    auth_source: Option<PathBuf>,
    redactor: Redactor,
    runtime: tokio::runtime::Runtime,
    counters: Counters,
    /// Signs what [`Remote::push_entry`] publishes.
    signer: Option<SigningKey>,
    /// When set, [`Remote::find_entry`] takes only entries signed by one of these keys.
    trust: Option<TrustedKeys>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("registry", &self.registry)
            .field("repository", &self.repository)
            .field("timeout", &self.timeout)
            .field("auth", &self.auth)
            .field("auth_source", &self.auth_source)
            .field("signer", &self.signer)
            .field("trust", &self.trust.as_ref().map(TrustedKeys::key_ids))
            .finish_non_exhaustive()
    }
}

/// Whether `host` (no port, IPv6 without brackets) is a loopback address.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Splits `host[:port]` / `[v6][:port]` and returns the host.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// Whether the scheme asked for: `Some(true)` http, `Some(false)` https, `None` unspecified.
fn parse_target(target: &str) -> Result<(Option<bool>, String, String)> {
    let bad = |detail: &str| RemoteError::InvalidTarget {
        target: target.to_string(),
        detail: detail.to_string(),
    };
    let (scheme, rest) = if let Some(r) = target.strip_prefix("http://") {
        (Some(true), r)
    } else if let Some(r) = target.strip_prefix("https://") {
        (Some(false), r)
    } else {
        (None, target)
    };
    let (registry, repository) = rest
        .split_once('/')
        .ok_or_else(|| bad("no repository after the registry"))?;
    if registry.is_empty() {
        return Err(bad("no registry"));
    }
    if !registry
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return Err(bad("the registry must be HOST or HOST:PORT"));
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
            && c.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
            && c.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
    };
    if repository.len() > 255 || !repository.split('/').all(component_ok) {
        return Err(bad(
            "the repository must be lowercase path components of [a-z0-9._-] (no tag, no digest)",
        ));
    }
    Ok((scheme, registry.to_string(), repository.to_string()))
}

impl Remote {
    /// A client for `target` (`[http://|https://]HOST[:PORT]/REPOSITORY`). Without a scheme,
    /// a loopback registry is spoken to over plain HTTP and any other over HTTPS; plain HTTP to
    /// any other address needs `options.insecure`. Credentials are looked up now (the
    /// auth.json / docker config.json files, see the module doc); nothing is sent until the first operation.
    pub fn new(target: &str, options: RemoteOptions) -> Result<Remote> {
        let (scheme, registry, repository) = parse_target(target)?;
        let loopback = is_loopback(host_of(&registry));
        let http = match scheme {
            Some(true) if !loopback && !options.insecure => {
                return Err(RemoteError::InsecureRefused { registry });
            }
            Some(http) => http,
            None => loopback || options.insecure,
        };
        let creds = auth::find(&registry, &repository, options.auth_file.as_deref())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RemoteError::Runtime)?;
        // reqwest is built without a built-in crypto provider: install ring's unless the
        // embedding program installed one (then this is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: if http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(options.timeout),
            read_timeout: Some(options.timeout),
            use_monolithic_push: true,
            ..ClientConfig::default()
        };
        // Not `Client::new`: on a bad config it silently falls back to defaults (no timeouts).
        let client = runtime
            .block_on(async { Client::try_from(config) })
            .map_err(|e| RemoteError::Registry {
                registry: registry.clone(),
                what: "set up the client".into(),
                detail: chain(&e),
            })?;
        Ok(Remote {
            registry,
            repository,
            timeout: options.timeout,
            client,
            auth: creds.auth,
            auth_source: creds.source,
            redactor: Redactor::new(creds.secrets),
            runtime,
            counters: Counters::default(),
            signer: None,
            trust: None,
        })
    }

    /// Signs every entry [`Remote::push_entry`] publishes with `key` (see [`sign`]); `None`
    /// pushes unsigned entries.
    pub fn set_signing_key(&mut self, key: Option<SigningKey>) {
        self.signer = key;
    }

    /// Makes [`Remote::find_entry`] take only entries signed by one of `keys`; `None` (the
    /// default) takes any entry that checks out (trusting whoever can push).
    pub fn set_trusted_keys(&mut self, keys: Option<TrustedKeys>) {
        self.trust = keys;
    }

    /// The keys entries must be signed by, if any.
    pub fn trusted_keys(&self) -> Option<&TrustedKeys> {
        self.trust.as_ref()
    }

    /// The registry, `host[:port]`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The credentials file in use, if any (never the credentials).
    pub fn auth_source(&self) -> Option<&Path> {
        self.auth_source.as_deref()
    }

    /// Work done so far by this client.
    pub fn counters(&self) -> RemoteCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        RemoteCounters {
            blobs_uploaded: g(&c.blobs_uploaded),
            blobs_skipped: g(&c.blobs_skipped),
            bytes_uploaded: g(&c.bytes_uploaded),
            manifests_pushed: g(&c.manifests_pushed),
            manifests_fetched: g(&c.manifests_fetched),
            blobs_downloaded: g(&c.blobs_downloaded),
            bytes_downloaded: g(&c.bytes_downloaded),
        }
    }

    fn reference(&self, tag: &str) -> Reference {
        Reference::with_tag(
            self.registry.clone(),
            self.repository.clone(),
            tag.to_string(),
        )
    }

    /// Runs one request under `after` (the timeout, unless given), mapping client errors.
    fn run<T, F>(&self, what: &str, op: &'static str, after: Option<Duration>, fut: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        let after = after.unwrap_or(self.timeout);
        let out = self.runtime.block_on(async {
            self.client
                .store_auth_if_needed(&self.registry, &self.auth)
                .await;
            tokio::time::timeout(after, fut).await
        });
        match out {
            Err(_) => Err(RemoteError::Timeout {
                registry: self.registry.clone(),
                what: what.to_string(),
                after,
            }),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.classify(what, op, e)),
        }
    }

    /// Turns a client error into a [`RemoteError`], scrubbed of credentials.
    fn classify(&self, what: &str, op: &'static str, e: OciDistributionError) -> RemoteError {
        let unauthorized = RemoteError::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            what: op,
            credentials_from: self.auth_source.clone(),
        };
        match &e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => return unauthorized,
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| {
                    matches!(x.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)
                }) =>
            {
                return unauthorized;
            }
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => return unauthorized,
            OciDistributionError::RequestError(r)
                if r.status()
                    .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) =>
            {
                return unauthorized;
            }
            OciDistributionError::RequestError(r) if r.is_timeout() => {
                return RemoteError::Timeout {
                    registry: self.registry.clone(),
                    what: what.to_string(),
                    after: self.timeout,
                };
            }
            OciDistributionError::RequestError(r) if r.is_connect() => {
                return RemoteError::Unreachable {
                    registry: self.registry.clone(),
                    what: what.to_string(),
                    detail: self.redactor.clean(&chain(&e)),
                };
            }
            _ => {}
        }
        RemoteError::Registry {
            registry: self.registry.clone(),
            what: what.to_string(),
            detail: self.redactor.clean(&chain(&e)),
        }
    }

    /// Pushes `entry` as an OCI artifact tagged [`entry_tag`]: uploads each blob the registry
    /// does not have yet (asked by `HEAD`), then the config (the envelope with the record),
    /// then the manifest. Pushing the same entry again uploads only the manifest.
    pub fn push_entry(&self, entry: &RemoteEntry) -> Result<PushReport> {
        let invalid = |detail: String| RemoteError::InvalidEntry {
            layer: entry.layer.clone(),
            detail,
        };
        let input_hex = hex(&entry.input_digest);
        let record_text = std::str::from_utf8(&entry.record)
            .map_err(|_| invalid("the entry record is not UTF-8 JSON".into()))?;
        let record = serde_json::value::RawValue::from_string(record_text.to_string())
            .map_err(|e| invalid(format!("the entry record is not JSON: {e}")))?;
        let envelope = Envelope {
            layercache_entry: ENVELOPE_VERSION,
            layer: entry.layer.clone(),
            input_digest: input_hex.clone(),
            record,
            blobs: Some(
                entry
                    .blobs
                    .iter()
                    .map(|b| BlobRef::of(&b.descriptor))
                    .collect(),
            ),
        };
        let config = serde_json::to_vec(&envelope)
            .map_err(|e| invalid(format!("cannot encode the envelope: {e}")))?;
        let config_digest = format!("sha256:{}", hex(&sha2::Sha256::digest(&config)));
        let signature = match &self.signer {
            Some(key) => Some(key.sign(
                &config,
                &format!(
                    "layercache entry for layer {} input digest {input_hex}",
                    crate::path::escape_bytes(entry.layer.as_bytes())
                ),
            )?),
            None => None,
        };

        // Check the blobs before anything is sent.
        for b in &entry.blobs {
            let digest = b.descriptor.digest().to_string();
            if sha256_hex(&digest).is_none() {
                return Err(invalid(format!(
                    "blob {digest} is not a sha256 digest of 64 lowercase hex digits"
                )));
            }
            let meta = std::fs::metadata(&b.path)
                .map_err(|e| RemoteError::io("cannot read blob", &b.path, e))?;
            if meta.len() != b.descriptor.size() {
                return Err(invalid(format!(
                    "blob {digest} at {} has {} bytes, its descriptor says {}",
                    b.path.display(),
                    meta.len(),
                    b.descriptor.size()
                )));
            }
        }

        let tag = entry_tag(&entry.layer, &entry.input_digest);
        let reference = self.reference(&tag);
        let mut report = PushReport {
            tag: tag.clone(),
            manifest_digest: String::new(),
            blobs_uploaded: 0,
            blobs_skipped: 0,
            bytes_uploaded: 0,
        };
        let mut seen = BTreeSet::new();
        for b in &entry.blobs {
            let digest = b.descriptor.digest().to_string();
            if !seen.insert(digest.clone()) {
                continue;
            }
            let what = format!("check blob {digest}");
            if self.run(
                &what,
                "push",
                None,
                self.client.blob_exists(&reference, &digest),
            )? {
                report.blobs_skipped += 1;
                add(&self.counters.blobs_skipped, 1);
                continue;
            }
            let size = b.descriptor.size();
            let stream = file_stream(&b.path)?;
            let what = format!("upload blob {digest}");
            let deadline = self.timeout + Duration::from_secs(size / MIN_UPLOAD_RATE);
            self.run(
                &what,
                "push",
                Some(deadline),
                self.client
                    .push_blob_stream(&reference, stream, &digest, Some(size)),
            )?;
            report.blobs_uploaded += 1;
            report.bytes_uploaded += size;
            add(&self.counters.blobs_uploaded, 1);
            add(&self.counters.bytes_uploaded, size);
        }
        let what = "check the entry record blob";
        if self.run(
            what,
            "push",
            None,
            self.client.blob_exists(&reference, &config_digest),
        )? {
            report.blobs_skipped += 1;
            add(&self.counters.blobs_skipped, 1);
        } else {
            let size = config.len() as u64;
            self.run(
                "upload the entry record blob",
                "push",
                None,
                self.client
                    .push_blob(&reference, config.clone(), &config_digest),
            )?;
            report.blobs_uploaded += 1;
            report.bytes_uploaded += size;
            add(&self.counters.blobs_uploaded, 1);
            add(&self.counters.bytes_uploaded, size);
        }

        let descriptors: Vec<Descriptor> =
            entry.blobs.iter().map(|b| b.descriptor.clone()).collect();
        let manifest = wire::manifest_json(
            &entry.layer,
            &input_hex,
            &config_digest,
            config.len() as u64,
            &descriptors,
            signature.as_deref(),
        )
        .map_err(|e| invalid(format!("cannot encode the manifest: {e}")))?;
        report.manifest_digest = format!("sha256:{}", hex(&sha2::Sha256::digest(&manifest)));
        let content_type = http::HeaderValue::from_static(OCI_MANIFEST_MEDIA_TYPE);
        self.run(
            &format!("push manifest {}:{tag}", self.repository),
            "push",
            None,
            self.client
                .push_manifest_raw(&reference, manifest, content_type),
        )?;
        add(&self.counters.manifests_pushed, 1);
        Ok(report)
    }

    /// Finds the entry for (`layer`, `input_digest`): one `GET` of its tag. `Ok(None)` when
    /// the registry has no such tag. A manifest whose annotations or config do not name
    /// exactly this layer and input digest is refused ([`RemoteError::Untrusted`]); with
    /// trusted keys, so is any entry they did not sign ([`RemoteError::NotTrusted`]).
    pub fn find_entry(&self, layer: &str, input_digest: &[u8; 32]) -> Result<Option<FoundEntry>> {
        self.find_entry_trusting(layer, input_digest, self.trust.as_ref())
    }

    /// The entry a push of (`layer`, `input_digest`) would leave as it is: any entry that
    /// checks out when pushing unsigned, only one signed by the signing key otherwise (an
    /// unsigned entry, or one signed by another key, is replaced by a signed one).
    pub fn existing_entry(
        &self,
        layer: &str,
        input_digest: &[u8; 32],
    ) -> Result<Option<FoundEntry>> {
        let Some(key) = &self.signer else {
            return self.find_entry_trusting(layer, input_digest, None);
        };
        match self.find_entry_trusting(layer, input_digest, Some(&key.public())) {
            Err(RemoteError::NotTrusted { .. }) => Ok(None),
            other => other,
        }
    }

    fn find_entry_trusting(
        &self,
        layer: &str,
        input_digest: &[u8; 32],
        trust: Option<&TrustedKeys>,
    ) -> Result<Option<FoundEntry>> {
        let tag = entry_tag(layer, input_digest);
        let reference = self.reference(&tag);
        let input_hex = hex(input_digest);
        let what = format!("fetch manifest {}:{tag}", self.repository);
        let fetched = self.run(&what, "pull", None, async {
            match self
                .client
                .pull_manifest_raw(&reference, &self.auth, &[OCI_MANIFEST_MEDIA_TYPE])
                .await
            {
                Ok(v) => Ok(Some(v)),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let Some((bytes, manifest_digest)) = fetched else {
            return Ok(None);
        };
        add(&self.counters.manifests_fetched, 1);
        let untrusted = |detail: String| RemoteError::Untrusted {
            registry: self.registry.clone(),
            reference: format!("{}:{tag}", self.repository),
            layer: layer.to_string(),
            input_digest: input_hex.clone(),
            detail,
        };
        if bytes.len() > wire::MAX_MANIFEST_BYTES {
            return Err(untrusted(format!("its manifest has {} bytes", bytes.len())));
        }
        let manifest: ManifestIn = serde_json::from_slice(&bytes)
            .map_err(|e| untrusted(format!("its manifest is not an OCI manifest ({e})")))?;
        if manifest.schema_version != 2
            || manifest
                .media_type
                .as_deref()
                .is_some_and(|m| m != OCI_MANIFEST_MEDIA_TYPE)
        {
            return Err(untrusted(
                "its manifest is not an OCI image manifest".into(),
            ));
        }
        let not_trusted = |why: Untrusted| RemoteError::NotTrusted {
            registry: self.registry.clone(),
            reference: format!("{}:{tag}", self.repository),
            layer: layer.to_string(),
            input_digest: input_hex.clone(),
            why: Box::new(why),
        };
        let named_layer = manifest.annotations.get(ANNOTATION_LAYER);
        let named_digest = manifest.annotations.get(ANNOTATION_INPUT_DIGEST);
        let misnamed = (named_layer.map(String::as_str) != Some(layer)
            || named_digest.map(String::as_str) != Some(input_hex.as_str()))
        .then(|| {
            format!("its annotations name layer {named_layer:?} and input digest {named_digest:?}")
        });
        // Without trusted keys a misnamed manifest is refused at once; with them, its
        // signature is checked first, so that the verdict says whether it is a signed entry
        // of another layer (replayed) or not signed by a trusted key at all.
        if let (None, Some(detail)) = (trust, &misnamed) {
            return Err(untrusted(detail.clone()));
        }
        if manifest.config.media_type().to_string() != ENTRY_MEDIA_TYPE {
            return Err(untrusted(format!(
                "its config has media type {}",
                manifest.config.media_type()
            )));
        }
        let config_digest = manifest.config.digest().to_string();
        if sha256_hex(&config_digest).is_none() || manifest.config.size() > wire::MAX_CONFIG_BYTES {
            return Err(untrusted(format!(
                "its config {config_digest} ({} bytes) is not acceptable",
                manifest.config.size()
            )));
        }
        for b in &manifest.layers {
            if sha256_hex(b.digest().as_ref()).is_none() {
                return Err(untrusted(format!(
                    "blob {} is not addressed by sha256",
                    b.digest()
                )));
            }
        }
        let config = self.pull_small_blob(&reference, &manifest.config)?;
        if let Some(keys) = trust {
            let signature = manifest
                .annotations
                .get(ANNOTATION_SIGNATURE)
                .map(String::as_str);
            keys.verify(&config, signature).map_err(not_trusted)?;
            if let Some(detail) = misnamed {
                return Err(not_trusted(Untrusted::Replayed { detail }));
            }
        }
        let envelope: Envelope = serde_json::from_slice(&config)
            .map_err(|e| untrusted(format!("its config is not an entry envelope ({e})")))?;
        if envelope.layercache_entry != ENVELOPE_VERSION {
            return Err(untrusted(format!(
                "its envelope has version {} (this layercache reads {ENVELOPE_VERSION}); push it again with this version",
                envelope.layercache_entry
            )));
        }
        if envelope.layer != layer || envelope.input_digest != input_hex {
            let detail = format!(
                "its config names layer {:?} and input digest {}",
                envelope.layer, envelope.input_digest
            );
            return Err(match trust {
                Some(_) => not_trusted(Untrusted::Replayed { detail }),
                None => untrusted(detail),
            });
        }
        let carried: Vec<BlobRef> = manifest.layers.iter().map(BlobRef::of).collect();
        let listed = match &envelope.blobs {
            Some(list) if *list != carried => Some(format!(
                "the manifest carries {} blob(s) [{}], the envelope lists {} [{}]",
                carried.len(),
                show_blobs(&carried),
                list.len(),
                show_blobs(list)
            )),
            Some(_) => None,
            None if trust.is_some() => {
                Some("the signed envelope lists no blobs (pushed by an older layercache)".into())
            }
            None => None,
        };
        if let Some(detail) = listed {
            return Err(match trust {
                Some(_) => not_trusted(Untrusted::OutputsDiffer { detail }),
                None => untrusted(detail),
            });
        }
        Ok(Some(FoundEntry {
            layer: layer.to_string(),
            input_digest: *input_digest,
            tag,
            manifest_digest,
            record: envelope.record.get().as_bytes().to_vec(),
            blobs: manifest.layers,
        }))
    }

    /// Downloads a small blob (the config) into memory, verifying its sha256 and size.
    fn pull_small_blob(&self, reference: &Reference, d: &Descriptor) -> Result<Vec<u8>> {
        let digest = d.digest().to_string();
        let desc = oci_descriptor(d);
        // Never more than the descriptor's size in memory, whatever the registry sends.
        let mut capped = Capped {
            buf: Vec::new(),
            cap: d.size(),
        };
        let pulled = self.run(
            &format!("fetch blob {digest}"),
            "pull",
            None,
            self.client.pull_blob(reference, &desc, &mut capped),
        );
        let out = capped.buf;
        let mismatch = |detail: String| RemoteError::BlobMismatch {
            registry: self.registry.clone(),
            digest: digest.clone(),
            detail,
        };
        match pulled {
            Ok(()) => {}
            Err(RemoteError::Registry { detail, .. }) if detail.contains("Digest") => {
                return Err(mismatch(detail));
            }
            Err(e) => return Err(e),
        }
        let got = format!("sha256:{}", hex(&sha2::Sha256::digest(&out)));
        if got != digest || out.len() as u64 != d.size() {
            return Err(mismatch(format!("got {got}, {} bytes", out.len())));
        }
        Ok(out)
    }

    /// Downloads every blob of `found` that `oci_layout` lacks into `blobs/sha256/`. Each is
    /// streamed into a temporary file in that directory while its sha256 and size are
    /// computed; when every blob of the entry has arrived and matched, the files are renamed
    /// to their names. On any error no blob is added and no temporary file is left.
    pub fn fetch_blobs(&self, found: &FoundEntry, oci_layout: &Path) -> Result<FetchReport> {
        let dir = oci_layout.join("blobs").join("sha256");
        let mut report = FetchReport::default();
        let mut seen = BTreeSet::new();
        let reference = self.reference(&found.tag);
        let mut verified = Vec::new();
        for d in &found.blobs {
            let digest = d.digest().to_string();
            let Some(hex_name) = sha256_hex(&digest) else {
                return Err(RemoteError::BlobMismatch {
                    registry: self.registry.clone(),
                    digest,
                    detail: "not a sha256 digest".into(),
                });
            };
            if !seen.insert(digest.clone()) {
                continue;
            }
            let dest = dir.join(hex_name);
            match std::fs::symlink_metadata(&dest) {
                Ok(_) => {
                    report.blobs_present += 1;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RemoteError::io("cannot inspect blob", dest, e)),
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| RemoteError::io("cannot create blob directory", &dir, e))?;
            let (temp, bytes) = self.download(&reference, d, &dir, &dest)?;
            verified.push(temp);
            report.blobs_downloaded += 1;
            report.bytes_downloaded += bytes;
        }
        for temp in verified {
            temp.commit()?;
        }
        add(&self.counters.blobs_downloaded, report.blobs_downloaded);
        add(&self.counters.bytes_downloaded, report.bytes_downloaded);
        Ok(report)
    }

    /// Streams one blob into a temporary file in `dir` and verifies it; the caller renames it
    /// to `dest` by committing the returned file.
    fn download(
        &self,
        reference: &Reference,
        d: &Descriptor,
        dir: &Path,
        dest: &Path,
    ) -> Result<(TempFile, u64)> {
        let digest = d.digest().to_string();
        let expected_size = d.size();
        let what = format!("fetch blob {digest}");
        let mismatch = |detail: String| RemoteError::BlobMismatch {
            registry: self.registry.clone(),
            digest: digest.clone(),
            detail,
        };
        let mut temp = TempFile::create(dir, dest)?;
        let desc = oci_descriptor(d);
        let mut stream = self
            .run(
                &what,
                "pull",
                None,
                self.client.pull_blob_stream(reference, &desc),
            )?
            .stream;
        let mut hasher = sha2::Sha256::new();
        let mut received: u64 = 0;
        loop {
            let next = self
                .runtime
                .block_on(async { tokio::time::timeout(self.timeout, stream.next()).await });
            let chunk = match next {
                Err(_) => {
                    return Err(RemoteError::Timeout {
                        registry: self.registry.clone(),
                        what,
                        after: self.timeout,
                    });
                }
                Ok(None) => break,
                Ok(Some(Ok(chunk))) => chunk,
                Ok(Some(Err(e))) => {
                    // The client verifies the digest too and reports a mismatch as an error at
                    // the end of the stream: say which check failed.
                    let got = format!("sha256:{}", hex(&hasher.clone().finalize()));
                    if received == expected_size && got != digest {
                        return Err(mismatch(format!("received {received} bytes with {got}")));
                    }
                    return Err(RemoteError::Registry {
                        registry: self.registry.clone(),
                        what,
                        detail: self.redactor.clean(&chain(&e)),
                    });
                }
            };
            received += chunk.len() as u64;
            if received > expected_size {
                return Err(mismatch(format!(
                    "more than the {expected_size} bytes of its descriptor"
                )));
            }
            hasher.update(&chunk);
            temp.write_all(&chunk)?;
        }
        let got = format!("sha256:{}", hex(&hasher.finalize()));
        if received != expected_size || got != digest {
            return Err(mismatch(format!(
                "received {received} bytes with {got}, expected {expected_size} bytes"
            )));
        }
        temp.sync()?;
        Ok((temp, received))
    }
}

/// Blobs for a message: `sha256:HEX12… (SIZE bytes, TYPE)`, comma-separated.
fn show_blobs(list: &[BlobRef]) -> String {
    list.iter()
        .map(|b| {
            let digest: String = b.digest.chars().take(19).collect();
            let media_type: String = b.media_type.chars().take(80).collect();
            format!(
                "{} ({} bytes, {})",
                crate::path::escape_bytes(digest.as_bytes()),
                b.size,
                crate::path::escape_bytes(media_type.as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the registry said the manifest (or the whole repository) does not exist.
fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code: 404, .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        }),
        _ => false,
    }
}

/// The client's descriptor type for one of ours.
fn oci_descriptor(d: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type().to_string(),
        digest: d.digest().to_string(),
        size: i64::try_from(d.size()).unwrap_or(i64::MAX),
        ..OciDescriptor::default()
    }
}

/// An error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// A stream of a file's bytes in chunks, read synchronously (the runtime is ours alone).
fn file_stream(
    path: &Path,
) -> Result<
    impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, OciDistributionError>>
    + Send
    + 'static,
> {
    let file =
        std::fs::File::open(path).map_err(|e| RemoteError::io("cannot open blob", path, e))?;
    Ok(futures_util::stream::unfold(
        Some(file),
        |state| async move {
            let mut file = state?;
            let mut buf = vec![0u8; UPLOAD_CHUNK];
            match file.read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(OciDistributionError::IoError(e)), None)),
            }
        },
    ))
}

/// An in-memory sink that refuses to hold more than `cap` bytes.
struct Capped {
    buf: Vec<u8>,
    cap: u64,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if (self.buf.len() + data.len()) as u64 > self.cap {
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "more than the {} bytes of its descriptor",
                self.cap
            ))));
        }
        self.buf.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A temporary file beside its destination, removed unless committed.
struct TempFile {
    path: PathBuf,
    dest: PathBuf,
    file: Option<std::fs::File>,
}

impl TempFile {
    fn create(dir: &Path, dest: &Path) -> Result<TempFile> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dir.join(format!(
            ".{name}.partial-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| RemoteError::io("cannot create temporary blob", &path, e))?;
        Ok(TempFile {
            path,
            dest: dest.to_path_buf(),
            file: Some(file),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        match self.file.as_mut() {
            Some(f) => f
                .write_all(bytes)
                .map_err(|e| RemoteError::io("cannot write temporary blob", &self.path, e)),
            None => Ok(()),
        }
    }

    /// Flushes the content to disk and closes the file.
    fn sync(&mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all()
                .map_err(|e| RemoteError::io("cannot sync temporary blob", &self.path, e))?;
        }
        Ok(())
    }

    /// Renames into place (after [`TempFile::sync`]).
    fn commit(mut self) -> Result<()> {
        self.sync()?;
        std::fs::rename(&self.path, &self.dest)
            .map_err(|e| RemoteError::io("cannot rename blob into place", &self.dest, e))?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.file = None;
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_plain_http_is_loopback_only() {
        assert!(parse_target("127.0.0.1:5000/a/b").is_ok());
        assert!(parse_target("127.0.0.1:5000").is_err());
        assert!(parse_target("127.0.0.1:5000/A").is_err());
        assert!(parse_target("127.0.0.1:5000/a:tag").is_err());
        assert!(is_loopback(host_of("127.3.0.1:80")));
        assert!(is_loopback(host_of("[::1]:5000")));
        assert!(is_loopback(host_of("localhost:5000")));
        assert!(!is_loopback(host_of("10.0.0.1:5000")));
        let refused = Remote::new("http://registry.example:5000/a", RemoteOptions::default());
        assert!(matches!(refused, Err(RemoteError::InsecureRefused { .. })));
    }
}
