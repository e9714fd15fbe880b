//! `lookup` and `put`: the cache for shell-driven builders. Each run is one process: it opens
//! the cache (pruning entries whose outputs are gone), loads the plan, and asks the library.
//!
//! Many of these processes share one cache: a lookup reads a snapshot and never waits (its
//! optional writes are skipped while another process writes); a put waits for the write lock up
//! to `--wait` seconds. SIGINT/SIGTERM are checked between steps (`signals`). Names from the
//! plan and the manifests file (layer names, layer types) are printed escaped in text output,
//! as paths are, so they cannot forge lines or drive the terminal; JSON keeps them exact.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use layercache::Plan;
use layercache::{
    Cache, Descriptor, Error, HitSource, Lookup, LookupMode, LookupRecord, LyingRow, MissReason,
    Outcome, RemoteAnswer, RemoteFailure, Session, SessionCounters, VersionRecord, escape_bytes,
};
use serde::Serialize;

use crate::output::{DbArgs, ReportFailed, WaitArgs, emit};
use crate::progress::Display;
use crate::remote::{Link, RemoteArgs, RemoteJson};
use crate::signals;

/// What `lookup` and `put` share: the cache, the plan, the layer, the output form.
#[derive(clap::Args)]
pub struct LayerArgs {
    #[command(flatten)]
    out: DbArgs,
    /// The plan file (JSON) describing the build's layers.
    #[arg(long, value_name = "PLAN")]
    plan: PathBuf,
    /// The layer, by its name in the plan.
    #[arg(value_name = "LAYER")]
    layer: String,
    #[command(flatten)]
    wait: WaitArgs,
}

/// Arguments of `layercache lookup`.
#[derive(clap::Args)]
pub struct LookupArgs {
    #[command(flatten)]
    target: LayerArgs,
    /// Report every reason the layer misses, not only the first.
    #[arg(long)]
    explain: bool,
    /// Distrust the stat data: read every file whatever its stat, report the stored rows whose
    /// stat matched while the content differed ("lying rows"), and clear their stat data so no
    /// later walk reuses them. Implies --explain. Costs a full read of every source.
    #[arg(long, conflicts_with = "record")]
    verify: bool,
    /// Write what this lookup saw (definition, builder, base hash, SOURCE_DATE_EPOCH,
    /// build_only, each source's Merkle root and row count, the input digest) to FILE, as JSON,
    /// for `layercache put --from FILE` after the build: the put then refuses, naming what
    /// changed, if an input differs from what this lookup saw. Every source is walked, even
    /// after a miss. With --remote, a remote hit writes no record (there is nothing to put)
    /// and removes one left at FILE.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// The lookup record of this build's step of LAYER's built base (its `lookup --record
    /// FILE`, into which its `put --from FILE` wrote what it stored): when the base layer's
    /// pointer and that version are still what the record says, the base is taken as this
    /// build's result for it and its sources (and those of every layer below it) are not
    /// walked again. Otherwise the bases are walked as without it. Pass only the record of
    /// this build's own step of the base: it vouches that the build uses that base version.
    #[arg(long, value_name = "FILE")]
    base_record: Option<PathBuf>,
    /// On a local miss, ask this shared cache (see `layercache push`).
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Arguments of `layercache put`.
#[derive(clap::Args)]
pub struct PutArgs {
    #[command(flatten)]
    target: LayerArgs,
    /// JSON object: layer type (e.g. "tar", "squashfs") → OCI descriptor of its output. `{}`
    /// only for a build_only layer.
    #[arg(long, value_name = "FILE")]
    manifests: PathBuf,
    /// The record of this build's lookup (`layercache lookup --record FILE`): the put compares
    /// the inputs with what that lookup saw and refuses (exit 2, nothing recorded), naming what
    /// changed, when they differ.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "inputs_as_of_now"
    )]
    from: Option<PathBuf>,
    /// Record the inputs as they are now, with no lookup to compare against: right only when
    /// nothing can have changed since the build read them. Without it, a put needs --from.
    #[arg(long, conflicts_with = "from")]
    inputs_as_of_now: bool,
}

/// Loads the plan; a build that does not validate is reported with the plan's path.
pub fn load_plan(path: &Path) -> anyhow::Result<Plan> {
    match Plan::load(path) {
        Ok(p) => Ok(p),
        // These errors already name the file.
        Err(e @ (Error::Parse { .. } | Error::WrongFileType { .. } | Error::TooLarge { .. })) => {
            Err(e.into())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("plan file {}", path.display()))),
    }
}

/// Loads the plan and opens the cache (created if missing; nothing is pruned: a version whose
/// outputs are gone is a miss at its hit check, and `gc --oci-layout` drops it).
fn open(t: &LayerArgs, interrupt: Arc<AtomicBool>) -> anyhow::Result<(Plan, Cache)> {
    let plan = load_plan(&t.plan)?;
    let mut config = plan.cache_config(&t.out.db);
    config.write_wait = t.wait.duration();
    config.interrupt = Some(interrupt);
    let cache = Cache::open(config)?;
    Ok((plan, cache))
}

const NOTHING_RECORDED: &str = "nothing was recorded";

/// `layercache lookup`: exit 0 on a hit, 1 on a miss.
pub fn lookup(args: LookupArgs, interrupt: Arc<AtomicBool>) -> anyhow::Result<ExitCode> {
    let t = &args.target;
    let (plan, cache) = open(t, interrupt)?;
    signals::check(NOTHING_RECORDED)?;
    let mut session = cache.session(plan.build())?;
    if let Some(path) = &args.base_record {
        let base = match &plan.build().layer(&t.layer)?.base {
            layercache::Base::Built { layer } => layer.clone(),
            _ => anyhow::bail!(
                "--base-record: layer {} is not built on another layer",
                escape_bytes(t.layer.as_bytes())
            ),
        };
        session.trust_base_record(&LookupRecord::read_for(path, &base)?)?;
    }
    let mut link = Link::open(&args.remote)?;
    // --verify answers from the local cache only (it is about this cache's rows).
    let remote = link
        .as_ref()
        .and_then(Link::remote)
        .filter(|_| !args.verify);
    let shown = Display::start(
        &format!("lookup {}", escape_bytes(t.layer.as_bytes())),
        Some(cache.progress()),
    );
    let answered = match remote {
        Some(remote) => ask_remote(&args, &mut session, remote)?,
        None => ask_local(&args, &mut session, link.as_ref())?,
    };
    shown.finish();
    signals::check(NOTHING_RECORDED)?;
    if let (Some(l), Some(f)) = (link.as_mut(), answered.failure.as_ref()) {
        l.failed(f);
    }
    print_lookup(&args, &answered, &session.counters(), link.as_ref())?;
    Ok(if answered.result.is_hit() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What a lookup answered, and what the registry said.
struct Answered {
    result: Lookup,
    source: Option<HitSource>,
    failure: Option<RemoteFailure>,
    answer: Option<RemoteAnswer>,
}

fn not_cacheable(layer: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "layer {} is not cacheable: there is nothing to record for a put",
        escape_bytes(layer.as_bytes())
    )
}

/// A local miss asks the registry; a remote hit is recorded locally (as pulled), so the lookup
/// observes what it walks for that put.
fn ask_remote(
    args: &LookupArgs,
    session: &mut Session<'_>,
    remote: &layercache::Remote,
) -> anyhow::Result<Answered> {
    let layer = &args.target.layer;
    let r = session.lookup_remote(layer, args.explain, remote)?;
    if let Some(path) = &args.record {
        match (r.source, r.record()) {
            // Recorded from the registry: nothing to put, so no record, and none left from an
            // earlier lookup for a put to use by mistake.
            (Some(HitSource::Remote), _) => remove_record(path)?,
            (_, Some(rec)) => rec.write(path)?,
            (_, None) => return Err(not_cacheable(layer)),
        }
    }
    Ok(Answered {
        result: r.lookup,
        source: r.source,
        failure: r.failure,
        answer: Some(r.answer),
    })
}

/// Without --record, one process, one question: nothing is kept, so no source is walked once
/// the answer is known. With --record, every source is walked and what was seen goes to the
/// record file for the put.
fn ask_local(
    args: &LookupArgs,
    session: &mut Session<'_>,
    link: Option<&Link>,
) -> anyhow::Result<Answered> {
    let layer = &args.target.layer;
    let mode = LookupMode {
        explain: args.explain || args.verify,
        observe: false,
        verify: args.verify,
    };
    let result = match &args.record {
        Some(path) => {
            let l = session.lookup_for_build(layer, mode)?;
            match l.record() {
                Some(rec) => rec.write(path)?,
                None => return Err(not_cacheable(layer)),
            }
            l.into_lookup()
        }
        None => session.lookup_with(layer, mode)?,
    };
    Ok(Answered {
        source: result.is_hit().then_some(HitSource::Local),
        failure: None,
        answer: link.map(|l| l.not_asked("--verify answers from the local cache only")),
        result,
    })
}

/// Prints a lookup's answer: `--json`, or text (with --explain, a miss also says what the
/// registry answered).
fn print_lookup(
    args: &LookupArgs,
    a: &Answered,
    counters: &SessionCounters,
    link: Option<&Link>,
) -> anyhow::Result<()> {
    let result = &a.result;
    let value = LookupJson::new(
        result,
        counters,
        a.source,
        RemoteJson::of(link, a.answer.as_ref(), a.failure.as_ref()),
    );
    let hit_line = crate::remote::hit_line(&result.layer, a.source, link);
    let remote_line = match (link, &a.answer) {
        (Some(l), Some(answer)) if args.explain && !result.is_hit() => {
            Some(answer.describe(&l.name, &result.layer))
        }
        _ => None,
    };
    emit(args.target.out.json, &value, |_, out| {
        write_lookup_text(out, result, &hit_line)?;
        if let Some(line) = &remote_line {
            writeln!(out, "{line}")?;
        }
        Ok(())
    })
}

/// Removes a lookup record left at `path` (a remote hit writes none); nothing there is fine.
fn remove_record(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "cannot remove the lookup record {} left by an earlier lookup (this lookup was a \
             remote hit: there is nothing to put)",
            path.display()
        ))),
    }
}

/// `lookup --json`: the answer, why, the entry of a hit, the work counters, the rows caught
/// lying, where a hit came from and what the registry said.
#[derive(Serialize)]
struct LookupJson<'a> {
    layer: &'a str,
    hit: bool,
    reasons: &'a [MissReason],
    entry: Option<HitJson<'a>>,
    counters: &'a SessionCounters,
    lying_rows: &'a [LyingRow],
    source: Option<HitSource>,
    remote: Option<RemoteJson<'a>>,
}

/// The `"entry"` of a hit in `lookup --json`.
#[derive(Serialize)]
struct HitJson<'a> {
    manifests: &'a BTreeMap<String, Descriptor>,
    build_only: bool,
    source_date_epoch: Option<i64>,
    created_unix_ms: u64,
}

impl<'a> LookupJson<'a> {
    fn new(
        result: &'a Lookup,
        counters: &'a SessionCounters,
        source: Option<HitSource>,
        remote: Option<RemoteJson<'a>>,
    ) -> Self {
        let entry = match &result.outcome {
            Outcome::Hit(e) => Some(HitJson {
                manifests: &e.manifests,
                build_only: e.record.build_only,
                source_date_epoch: e.record.source_date_epoch,
                created_unix_ms: e.record.created_unix_ms,
            }),
            Outcome::Miss(_) => None,
        };
        LookupJson {
            layer: &result.layer,
            hit: result.is_hit(),
            reasons: result.reasons(),
            entry,
            counters,
            lying_rows: &result.lying_rows,
            source,
            remote,
        }
    }
}

/// `put --json`: what was recorded.
#[derive(Serialize)]
struct PutJson<'a> {
    layer: &'a str,
    /// Whether the lookup this put made itself hit (null with `--from`: that lookup ran in
    /// another process).
    was_hit: Option<bool>,
    imports: usize,
    overlay_dirs: usize,
    rows: u64,
    manifests: &'a BTreeMap<String, Descriptor>,
    counters: SessionCounters,
}

impl<'a> PutJson<'a> {
    fn new(
        record: &'a VersionRecord,
        was_hit: Option<bool>,
        manifests: &'a BTreeMap<String, Descriptor>,
        counters: SessionCounters,
    ) -> Self {
        PutJson {
            layer: &record.name,
            was_hit,
            imports: record.imports.len(),
            overlay_dirs: record.overlay_dirs.len(),
            rows: record
                .imports
                .iter()
                .chain(&record.overlay_dirs)
                .map(|s| s.rows)
                .sum(),
            manifests,
            counters,
        }
    }

    /// The text line of a put.
    fn text(&self) -> String {
        let types: Vec<String> = self
            .manifests
            .keys()
            .map(|k| escape_bytes(k.as_bytes()))
            .collect();
        format!(
            "{}: recorded ({} import(s), {} overlay_dir(s), {} row(s); manifests: {})",
            escape_bytes(self.layer.as_bytes()),
            self.imports,
            self.overlay_dirs,
            self.rows,
            if types.is_empty() {
                "none".to_string()
            } else {
                types.join(", ")
            }
        )
    }
}

fn write_lookup_text(out: &mut impl Write, result: &Lookup, hit_line: &str) -> std::io::Result<()> {
    for l in &result.lying_rows {
        writeln!(
            out,
            "stat data lied (matched, content differed; cleared): {} {}",
            escape_bytes(l.source.as_bytes()),
            l.path
        )?;
    }
    match &result.outcome {
        Outcome::Hit(e) => {
            writeln!(out, "{hit_line}")?;
            for (layer_type, d) in &e.manifests {
                writeln!(
                    out,
                    "  {} {} {} ({} bytes)",
                    escape_bytes(layer_type.as_bytes()),
                    escape_bytes(d.media_type().to_string().as_bytes()),
                    escape_bytes(d.digest().to_string().as_bytes()),
                    d.size()
                )?;
            }
        }
        Outcome::Miss(reasons) => {
            writeln!(out, "{}: miss", escape_bytes(result.layer.as_bytes()))?;
            for r in reasons {
                // One block per reason: a diff's lines end with a newline already.
                let text = r.to_string();
                out.write_all(text.as_bytes())?;
                if !text.ends_with('\n') {
                    writeln!(out)?;
                }
            }
        }
    }
    Ok(())
}

/// `layercache put`: records a layer with its output manifests.
pub fn put(args: PutArgs, interrupt: Arc<AtomicBool>) -> anyhow::Result<ExitCode> {
    let t = &args.target;
    let manifests = layercache::read_manifests(&args.manifests)?;
    let (plan, cache) = open(t, interrupt)?;
    signals::check(NOTHING_RECORDED)?;
    let mut session = cache.session(plan.build())?;
    let shown = Display::start(
        &format!("put {}", escape_bytes(t.layer.as_bytes())),
        Some(cache.progress()),
    );
    // With --from, the put is checked against what the builder's lookup saw (its record).
    // With --inputs-as-of-now, this process looks up again (observing every source) and puts
    // what it sees now: a change during the build cannot be seen then.
    let (record, was_hit) = match &args.from {
        Some(from) => (put_from(&mut session, from, &t.layer, &manifests)?, None),
        None => {
            let seen = session.lookup(&t.layer)?;
            signals::check(NOTHING_RECORDED)?;
            let record = session
                .put(&seen, &manifests)
                .with_context(|| cannot_record(&t.layer))?;
            (record, Some(seen.is_hit()))
        }
    };
    shown.finish();
    let recorded = format!(
        "layer {} was recorded before stopping",
        escape_bytes(record.name.as_bytes())
    );
    // Returning drops the session and closes the cache cleanly.
    signals::check(&recorded)?;
    let value = PutJson::new(&record, was_hit, &manifests, session.counters());
    // The entry is committed: a failed report must not read as "nothing recorded".
    emit(t.out.json, &value, |v, out| writeln!(out, "{}", v.text())).map_err(|source| {
        ReportFailed {
            layer: record.name.clone(),
            source,
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn cannot_record(layer: &str) -> String {
    format!("cannot record layer {}", escape_bytes(layer.as_bytes()))
}

/// `put --from`: the put checked against the builder's lookup record; its result goes back
/// into the record, for the lookups of the layers built on this one (`lookup --base-record
/// FILE`; without it they walk this layer again).
fn put_from(
    session: &mut Session<'_>,
    from: &Path,
    layer: &str,
    manifests: &BTreeMap<String, Descriptor>,
) -> anyhow::Result<VersionRecord> {
    let seen = LookupRecord::read_for(from, layer)?;
    signals::check(NOTHING_RECORDED)?;
    let record = session
        .put_recorded(&seen, manifests)
        .with_context(|| cannot_record(layer))?;
    match session.record_after_put(&seen) {
        Ok(Some(r)) => {
            if let Err(e) = r.write(from) {
                tracing::warn!("{e}: the layers built on this one walk it again");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("{e}: the layers built on this one walk it again"),
    }
    Ok(record)
}
