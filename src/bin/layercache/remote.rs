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
use layercache::{FetchReport, MissReason, Plan, PushReport, Remote, RemoteOptions};
use serde::Serialize;

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
    /// rest of the run when the library says so ([`RemoteFailure::ends_the_run`]).
    pub fn failed(&mut self, f: &RemoteFailure) {
        if f.ends_the_run() {
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
    let cache = Cache::open(plan.cache_config(&args.out.db))?;
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
            rows.push(PushRow::Failed {
                layer,
                detail: "registry unavailable".to_string(),
            });
            continue;
        };
        let outcome = session
            .push_layer(&layer, remote)
            .with_context(|| format!("cannot push layer {layer:?}"))?;
        rows.push(match outcome {
            PushOutcome::Pushed(report) => PushRow::Pushed { layer, report },
            PushOutcome::AlreadyThere { tag } => PushRow::AlreadyThere { layer, tag },
            PushOutcome::Skipped(reasons) => PushRow::Skipped { layer, reasons },
            PushOutcome::Unusable(why) => {
                local_errors += 1;
                eprintln!(
                    "layercache: error: cannot push layer {}: {why}",
                    escape_bytes(layer.as_bytes())
                );
                PushRow::Error { layer, detail: why }
            }
            PushOutcome::Failed(f) => {
                link.failed(&f);
                PushRow::Failed {
                    layer,
                    detail: f.to_string(),
                }
            }
            other => anyhow::bail!("cannot push layer {layer:?}: unexpected outcome {other:?}"),
        });
    }
    let code = report(&args, &link, ShareRows::Push(rows))?;
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
            let status = if local.is_hit() {
                PullStatus::Local
            } else {
                PullStatus::Miss
            };
            rows.push(PullRow {
                layer,
                status,
                fetched: None,
                remote: None,
                failure: None,
            });
            continue;
        };
        let r = session
            .lookup_remote(&layer, false, remote)
            .with_context(|| format!("cannot pull layer {layer:?}"))?;
        if let Some(f) = &r.failure {
            link.failed(f);
        }
        let status = match r.source {
            Some(HitSource::Local) => PullStatus::Local,
            Some(HitSource::Remote) => PullStatus::Pulled,
            None => PullStatus::Miss,
        };
        rows.push(PullRow {
            layer,
            status,
            fetched: r.fetched,
            remote: Some(r.answer),
            failure: r.failure.as_ref().map(ToString::to_string),
        });
    }
    report(&args, &link, ShareRows::Pull(rows))
}

/// One layer of `push --json` (`"status"`: `pushed`, `already_there`, `skipped`, `error`,
/// `failed`).
#[derive(Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum PushRow {
    /// Pushed: the tag, the manifest digest and what was uploaded.
    Pushed {
        layer: String,
        #[serde(flatten)]
        report: PushReport,
    },
    /// The registry had this entry already.
    AlreadyThere { layer: String, tag: String },
    /// Not pushed: the layer misses locally, for these reasons.
    Skipped {
        layer: String,
        reasons: Vec<MissReason>,
    },
    /// Not pushed for a local reason (exit 2).
    Error { layer: String, detail: String },
    /// Not pushed: the registry failed (exit unchanged).
    Failed { layer: String, detail: String },
}

impl PushRow {
    fn text(&self) -> String {
        let (layer, status) = match self {
            PushRow::Pushed { layer, .. } => (layer, "pushed"),
            PushRow::AlreadyThere { layer, .. } => (layer, "already there"),
            PushRow::Skipped { layer, .. } => (layer, "skipped"),
            PushRow::Error { layer, detail } => {
                return format!("{}: error: {detail}", escape_bytes(layer.as_bytes()));
            }
            PushRow::Failed { layer, .. } => (layer, "failed"),
        };
        format!("{}: {status}", escape_bytes(layer.as_bytes()))
    }
}

/// What `pull` did with one layer.
#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum PullStatus {
    /// It hit locally: nothing fetched.
    Local,
    /// It missed locally and was pulled from the registry.
    Pulled,
    /// It missed, locally and remotely.
    Miss,
}

/// One layer of `pull --json`.
#[derive(Serialize)]
struct PullRow {
    layer: String,
    status: PullStatus,
    /// What the fetch moved, for a pulled layer.
    fetched: Option<FetchReport>,
    /// What the registry answered (null when it was not usable in this run).
    remote: Option<RemoteAnswer>,
    /// The failure warned about, if any (never a credential: the errors carry none).
    failure: Option<String>,
}

/// The rows of `push --json` or `pull --json`, under the command's name.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum ShareRows {
    Push(Vec<PushRow>),
    Pull(Vec<PullRow>),
}

/// `push --json` / `pull --json`: `{"remote": REGISTRY/REPO, "push"|"pull": [row, …]}`.
#[derive(Serialize)]
struct ShareReport<'a> {
    remote: &'a str,
    #[serde(flatten)]
    rows: ShareRows,
}

fn report(args: &ShareArgs, link: &Link, rows: ShareRows) -> anyhow::Result<ExitCode> {
    let value = ShareReport {
        remote: &link.name,
        rows,
    };
    emit(args.out.json, &value, |v, out| {
        let lines: Vec<String> = match &v.rows {
            ShareRows::Push(rows) => rows.iter().map(PushRow::text).collect(),
            ShareRows::Pull(rows) => rows
                .iter()
                .map(|r| {
                    let status = match r.status {
                        PullStatus::Local => "local",
                        PullStatus::Pulled => "pulled",
                        PullStatus::Miss => "miss",
                    };
                    format!("{}: {status}", escape_bytes(r.layer.as_bytes()))
                })
                .collect(),
        };
        for line in lines {
            writeln!(out, "{line}")?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The `"remote"` of `lookup --json`: what the registry answered (`"answer"`: `not_asked`,
/// `no_entry`, `taken`, `refused`, `unreachable`, with the `input_digest` asked for and `why`),
/// the registry's name, and the failure it warned about.
#[derive(Serialize)]
pub struct RemoteJson<'a> {
    #[serde(flatten)]
    answer: Option<&'a RemoteAnswer>,
    name: &'a str,
    failure: Option<String>,
}

impl<'a> RemoteJson<'a> {
    /// `None` without a remote.
    pub fn of(
        link: Option<&'a Link>,
        answer: Option<&'a RemoteAnswer>,
        failure: Option<&RemoteFailure>,
    ) -> Option<Self> {
        link.map(|l| RemoteJson {
            answer,
            name: &l.name,
            failure: failure.map(ToString::to_string),
        })
    }
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
