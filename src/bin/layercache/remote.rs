//! `push`, `pull` and the remote half of `lookup`: a cache shared through an OCI registry.
//!
//! Owns: the remote options (`--remote`/`$LAYERCACHE_REMOTE`, `--insecure`, `--auth-file`,
//! `--remote-timeout`), the one warning a run prints when the registry cannot help, and the
//! order `pull` visits layers in (bases first).
//!
//! Must never: turn a registry problem into a failed build. A registry that is down, slow,
//! refuses or serves something wrong gives the local answer, exit codes unchanged, and ONE
//! warning line on stderr per run (the rest are in `--json`); once it is unreachable, this run
//! stops asking it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use layercache::{Cache, HitSource, PushOutcome, RemoteAnswer, RemoteFailure, escape_bytes};
use layercache::{Plan, Remote, RemoteError, RemoteOptions};
use serde_json::json;

use crate::build::load_plan;
use crate::output::{DbArgs, emit};

/// How to reach the registry that shares the cache.
#[derive(clap::Args, Clone)]
pub struct RemoteArgs {
    /// The shared cache: REGISTRY/REPOSITORY (e.g. 127.0.0.1:5000/layercache). Plain HTTP only
    /// to loopback addresses unless --insecure.
    #[arg(long, value_name = "REGISTRY/REPO", env = "LAYERCACHE_REMOTE")]
    pub remote: Option<String>,
    /// Allow plain HTTP to a registry that is not on a loopback address.
    #[arg(long)]
    pub insecure: bool,
    /// Registry credentials file (auth.json / docker config.json format), searched before
    /// $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json and ~/.docker/config.json.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Timeout of each registry request, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub remote_timeout: u64,
    #[command(flatten)]
    pub trust: crate::trust::TrustArgs,
}

/// Arguments of `push` and `pull`.
#[derive(clap::Args)]
pub struct ShareArgs {
    #[command(flatten)]
    out: DbArgs,
    /// The plan file (JSON) describing the build's layers; its `oci_layout` holds the blobs.
    #[arg(long, value_name = "PLAN")]
    plan: PathBuf,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    sign: crate::trust::SignArgs,
    /// The layers (default: every layer of the plan). `pull` also takes their built bases.
    #[arg(value_name = "LAYER")]
    layers: Vec<String>,
}

/// A registry this run talks to, and whether it has already warned or given up.
pub struct Link {
    /// The client; `None` once the registry is known unreachable.
    remote: Option<Remote>,
    /// `REGISTRY/REPO` for messages.
    pub name: String,
    warned: bool,
    /// Why the client is `None`: it could not be set up, or it was given up on.
    dropped: Option<String>,
}

impl Link {
    /// Connects (nothing is sent yet). A remote that cannot be set up gives a link that only
    /// warns, so a lookup still answers locally; a trusted key that cannot be read is an error
    /// (never a silent fall-back to trusting whoever can push).
    pub fn open(args: &RemoteArgs) -> anyhow::Result<Option<Link>> {
        let Some(target) = args.remote.as_deref() else {
            return Ok(None);
        };
        let trust = args.trust.load()?;
        let options = RemoteOptions {
            insecure: args.insecure,
            timeout: Duration::from_secs(args.remote_timeout.max(1)),
            auth_file: args.auth_file.clone(),
        };
        let mut link = Link {
            remote: None,
            name: target.to_string(),
            warned: false,
            dropped: None,
        };
        match Remote::new(target, options) {
            Ok(mut r) => {
                link.name = format!("{}/{}", r.registry(), r.repository());
                r.set_trusted_keys(trust);
                link.remote = Some(r);
            }
            Err(e) => {
                link.dropped = Some(e.to_string());
                link.warn(&e.to_string());
            }
        }
        Ok(Some(link))
    }

    /// What a lookup says of the registry when it was not asked: why the client is gone, or
    /// `why` (the lookup answered from the local cache only).
    pub fn not_asked(&self, why: &str) -> RemoteAnswer {
        RemoteAnswer::NotAsked {
            why: match &self.dropped {
                Some(d) if self.remote.is_none() => format!("it is not usable in this run: {d}"),
                _ => why.to_string(),
            },
        }
    }

    /// The client, unless the registry is known unreachable.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// Reports a failure: the first one of the run on stderr; the registry is dropped for the
    /// rest of the run when it cannot be reached or refuses access.
    pub fn failed(&mut self, f: &RemoteFailure) {
        if let RemoteFailure::Registry(e) = f
            && !matches!(
                e,
                RemoteError::Untrusted { .. }
                    | RemoteError::NotTrusted { .. }
                    | RemoteError::Key(_)
                    | RemoteError::BlobMismatch { .. }
                    | RemoteError::InvalidEntry { .. }
                    | RemoteError::Io { .. }
            )
        {
            self.remote = None;
            self.dropped = Some(f.to_string());
        }
        self.warn(&f.to_string());
    }

    fn warn(&mut self, text: &str) {
        if !self.warned {
            self.warned = true;
            eprintln!(
                "layercache: warning: remote cache {}: {text}; answering from the local cache",
                self.name
            );
        }
    }
}

/// The JSON of a failure (never a credential: the errors carry none).
pub fn failure_json(f: Option<&RemoteFailure>) -> serde_json::Value {
    f.map_or(serde_json::Value::Null, |f| json!(f.to_string()))
}

/// Opens what `push` and `pull` need: the plan (with an OCI layout), the cache, the registry.
fn open(args: &ShareArgs) -> anyhow::Result<(Plan, Cache, Link)> {
    let plan = load_plan(&args.plan)?;
    if plan.oci_layout().is_none() {
        anyhow::bail!(
            "plan file {} names no oci_layout: push and pull move output blobs to and from it",
            args.plan.display()
        );
    }
    let Some(link) = Link::open(&args.remote)? else {
        anyhow::bail!("no remote cache: give --remote REGISTRY/REPO or set LAYERCACHE_REMOTE");
    };
    let (cache, _pruned) = Cache::open(plan.cache_config(&args.out.db))?;
    Ok((plan, cache, link))
}

/// `layercache push`: pushes every layer that hits locally. Exit 0 when every failure was the
/// registry's (one warning, `failed` per layer); exit 2 when any layer failed for a local
/// reason (`error`: its inputs match a stored version but its outputs are not all here or not
/// readable), after trying every layer, each such layer named on stderr.
pub fn push(args: ShareArgs) -> anyhow::Result<ExitCode> {
    let key = args.sign.load()?;
    let (plan, cache, mut link) = open(&args)?;
    if let Some(r) = link.remote.as_mut() {
        r.set_signing_key(key);
    }
    let mut session = cache.session(plan.build())?;
    let mut rows = Vec::new();
    let mut local_errors = 0usize;
    for layer in plan.build().build_order(&args.layers, false)? {
        let Some(remote) = link.remote() else {
            rows.push(
                json!({"layer": layer, "status": "failed", "detail": "registry unavailable"}),
            );
            continue;
        };
        let outcome = session
            .push_layer(&layer, remote)
            .with_context(|| format!("cannot push layer {layer:?}"))?;
        rows.push(match outcome {
            PushOutcome::Pushed(r) => json!({
                "layer": layer, "status": "pushed", "tag": r.tag,
                "manifest_digest": r.manifest_digest, "blobs_uploaded": r.blobs_uploaded,
                "blobs_skipped": r.blobs_skipped, "bytes_uploaded": r.bytes_uploaded,
            }),
            PushOutcome::AlreadyThere { tag } => {
                json!({"layer": layer, "status": "already_there", "tag": tag})
            }
            PushOutcome::Skipped(reasons) => json!({
                "layer": layer, "status": "skipped",
                "reasons": serde_json::to_value(&reasons)?,
            }),
            PushOutcome::Unusable(why) => {
                local_errors += 1;
                eprintln!(
                    "layercache: error: cannot push layer {}: {why}",
                    escape_bytes(layer.as_bytes())
                );
                json!({"layer": layer, "status": "error", "detail": why})
            }
            PushOutcome::Failed(f) => {
                link.failed(&f);
                json!({"layer": layer, "status": "failed", "detail": f.to_string()})
            }
            other => anyhow::bail!("cannot push layer {layer:?}: unexpected outcome {other:?}"),
        });
    }
    let code = report(&args, &link, "push", rows)?;
    Ok(if local_errors > 0 {
        ExitCode::from(2)
    } else {
        code
    })
}

/// `layercache pull`: for each layer in build order, a local hit does nothing and a local miss
/// asks the registry. Exit 0 unless a local error.
pub fn pull(args: ShareArgs) -> anyhow::Result<ExitCode> {
    if args.sign.sign_key.is_some() {
        anyhow::bail!(
            "--sign-key signs what `push` publishes; `pull` and `lookup --remote` check \
             signatures with --trust-key PUBLIC_KEY"
        );
    }
    let (plan, cache, mut link) = open(&args)?;
    let mut session = cache.session(plan.build())?;
    let mut rows = Vec::new();
    for layer in plan.build().build_order(&args.layers, true)? {
        let Some(remote) = link.remote() else {
            let local = session.lookup(&layer)?;
            let status = if local.is_hit() { "local" } else { "miss" };
            rows.push(json!({"layer": layer, "status": status}));
            continue;
        };
        let r = session
            .lookup_remote(&layer, false, remote)
            .with_context(|| format!("cannot pull layer {layer:?}"))?;
        if let Some(f) = &r.failure {
            link.failed(f);
        }
        let status = match r.source {
            Some(HitSource::Local) => "local",
            Some(HitSource::Remote) => "pulled",
            None => "miss",
        };
        rows.push(json!({
            "layer": layer, "status": status,
            "fetched": r.fetched.map(|f| json!({
                "blobs_downloaded": f.blobs_downloaded, "blobs_present": f.blobs_present,
                "bytes_downloaded": f.bytes_downloaded,
            })),
            "remote": serde_json::to_value(&r.answer)?,
            "failure": failure_json(r.failure.as_ref()),
        }));
    }
    report(&args, &link, "pull", rows)
}

fn report(
    args: &ShareArgs,
    link: &Link,
    what: &str,
    rows: Vec<serde_json::Value>,
) -> anyhow::Result<ExitCode> {
    let value = json!({"remote": link.name, what: rows});
    emit(args.out.json, &value, |_, out| {
        for r in &rows {
            let layer = escape_bytes(r["layer"].as_str().unwrap_or_default().as_bytes());
            let status = r["status"].as_str().unwrap_or_default().replace('_', " ");
            match r["detail"].as_str().filter(|_| status == "error") {
                Some(detail) => writeln!(out, "{layer}: {status}: {detail}")?,
                None => writeln!(out, "{layer}: {status}")?,
            }
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The JSON `lookup` adds for the remote: where a hit came from, and what the registry
/// answered (`"answer"`: `not_asked`, `no_entry`, `taken`, `refused`, `unreachable`, with the
/// `input_digest` asked for and `why`) and the failure it warned about.
pub fn lookup_json(
    link: Option<&Link>,
    source: Option<HitSource>,
    answer: Option<&RemoteAnswer>,
    failure: Option<&RemoteFailure>,
) -> (serde_json::Value, serde_json::Value) {
    let source = serde_json::to_value(source).unwrap_or_default();
    let remote = link.map_or(serde_json::Value::Null, |l| {
        let mut v = serde_json::to_value(answer).unwrap_or_default();
        if !v.is_object() {
            v = json!({});
        }
        v["name"] = json!(l.name);
        v["failure"] = failure_json(failure);
        v
    });
    (source, remote)
}

/// The text line of a lookup's hit.
pub fn hit_line(layer: &str, source: Option<HitSource>, link: Option<&Link>) -> String {
    match (source, link) {
        (Some(HitSource::Remote), Some(l)) => format!(
            "{}: hit (from remote {})",
            layercache::escape_bytes(layer.as_bytes()),
            l.name
        ),
        _ => format!("{}: hit", layercache::escape_bytes(layer.as_bytes())),
    }
}
