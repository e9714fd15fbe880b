//! `dump`, `stats`, `check`, `compact`: thin shells over `layercache::inspect`.
//!
//! Everything is written with `writeln!` to a locked, buffered stdout and every I/O error is
//! propagated, so output to a closed pipe (`| head`) ends the command quietly
//! (`output::finish` treats a broken pipe as success) instead of panicking like `println!`.

use std::io::{self, BufWriter, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use layercache::inspect::{self, Inspector, RowSelection};

/// Arguments of `layercache dump`.
#[derive(clap::Args)]
pub struct DumpArgs {
    /// The cache database file (opened read-only: works while a build holds it).
    #[arg(long, value_name = "FILE")]
    db: PathBuf,
    /// Print JSON instead of text (with --files: JSON Lines, one object per row).
    #[arg(long)]
    json: bool,
    /// Show this layer's entry in full (definition, base, manifests, sources).
    #[arg(value_name = "LAYER")]
    layer: Option<String>,
    /// Print LAYER's stored per-path rows instead, streamed in key order.
    #[arg(long, requires = "layer")]
    files: bool,
    /// With --files: only this source (`import:KEY`, `overlay:KEY`, or a bare KEY).
    #[arg(value_name = "SOURCE", requires = "files")]
    source: Option<String>,
}

/// Arguments of `layercache stats`.
#[derive(clap::Args)]
pub struct StatsArgs {
    /// The cache database file.
    #[arg(long, value_name = "FILE")]
    db: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also ask redb for its exact free-space accounting. Needs a brief writable open, so it
    /// fails while a build holds the file (plain `stats` never does).
    #[arg(long)]
    exact: bool,
}

/// Arguments of `layercache check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The cache database file.
    #[arg(long, value_name = "FILE")]
    db: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `layercache compact`.
#[derive(clap::Args)]
pub struct CompactArgs {
    /// The cache database file (no build may hold it).
    #[arg(long, value_name = "FILE")]
    db: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// A library error as one line: its `Display` already names the file and what to do (and
/// includes the underlying cause, which `{:#}` would otherwise print twice).
/// A damaged file (truncated, overwritten) gets a message saying so.
fn lib(e: layercache::Error) -> anyhow::Error {
    match inspect::damaged_file_message(&e) {
        Some(m) => anyhow::anyhow!("{m}"),
        None => anyhow::anyhow!("{e}"),
    }
}

/// Prints one report to stdout: JSON with `--json`, else its text form.
fn emit<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T, &mut BufWriter<io::StdoutLock<'static>>) -> io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = BufWriter::new(io::stdout().lock());
    if json {
        write_json(&mut out, value)?;
    } else {
        text(value, &mut out)?;
    }
    out.flush()?;
    Ok(())
}

fn write_json(out: &mut impl Write, v: &impl serde::Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, v).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Runs a command, turning a panic inside redb into a one-line error. redb's read path trusts
/// page contents, so a damaged page can make it panic (an index out of bounds) instead of
/// returning an error; a person dumping a damaged file must get a message, not a backtrace.
fn guarded(db: &Path, f: impl FnOnce() -> anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.unwrap_or_else(|payload| {
        Err(anyhow::anyhow!(
            "cache database {} is damaged: reading it failed inside redb ({}); `layercache check \
             --db {}` lists what is wrong; move it away (the next build then creates a new \
             cache) or restore it from a backup",
            db.display(),
            inspect::panic_message(payload.as_ref()),
            db.display()
        ))
    })
}

pub fn dump(a: DumpArgs) -> anyhow::Result<ExitCode> {
    let db = a.db.clone();
    guarded(&db, || dump_inner(a))
}

fn dump_inner(a: DumpArgs) -> anyhow::Result<ExitCode> {
    let ins = Inspector::open(&a.db).map_err(lib)?;
    let mut out = BufWriter::new(io::stdout().lock());
    let Some(layer) = a.layer else {
        let listing = ins.list().map_err(lib)?;
        if a.json {
            write_json(&mut out, &listing)?;
        } else {
            listing.write_text(&mut out)?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    };
    let Some(record) = ins.record(&layer).map_err(lib)? else {
        anyhow::bail!(
            "{} has no entry for layer {layer:?}; `layercache dump --db {}` lists the cached layers",
            a.db.display(),
            a.db.display()
        );
    };
    if !a.files {
        if let Some(detail) = ins.entry(&layer).map_err(lib)? {
            if a.json {
                write_json(&mut out, &detail)?;
            } else {
                detail.write_text(&mut out)?;
            }
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let which = match &a.source {
        None => RowSelection::All,
        Some(s) => RowSelection::Source(
            Inspector::resolve_source(&record, s)
                .map_err(|e| anyhow::anyhow!("{}, layer {layer:?}: {e}", a.db.display()))?,
        ),
    };
    let mut damaged = 0u64;
    let mut current: Option<String> = None;
    for item in ins.rows(&layer, &which).map_err(lib)? {
        let row = match item {
            Ok(r) => r,
            Err(e) => {
                damaged += 1;
                eprintln!("layercache: {e}");
                continue;
            }
        };
        if a.json {
            serde_json::to_writer(&mut out, &row).map_err(io::Error::from)?;
            writeln!(out)?;
            continue;
        }
        if current.as_deref() != Some(row.source.as_str()) {
            writeln!(
                out,
                "== {}",
                layercache::escape_bytes(row.source.as_bytes())
            )?;
            current = Some(row.source.clone());
        }
        row.write_text(&mut out)?;
    }
    out.flush()?;
    if damaged > 0 {
        eprintln!(
            "layercache: {damaged} row(s) could not be decoded; `layercache check --db {}` lists \
             every problem",
            a.db.display()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn stats(a: StatsArgs) -> anyhow::Result<ExitCode> {
    let db = a.db.clone();
    guarded(&db, || stats_inner(a))
}

fn stats_inner(a: StatsArgs) -> anyhow::Result<ExitCode> {
    let stats = if a.exact {
        inspect::stats_exact(&a.db).map_err(lib)?
    } else {
        Inspector::open(&a.db)
            .and_then(|i| i.stats())
            .map_err(lib)?
    };
    emit(a.json, &stats, |v, out| v.write_text(out))?;
    Ok(ExitCode::SUCCESS)
}

pub fn check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let db = a.db.clone();
    guarded(&db, || check_inner(a))
}

fn check_inner(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let report = inspect::check(&a.db).map_err(lib)?;
    emit(a.json, &report, |v, out| v.write_text(out))?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn compact(a: CompactArgs) -> anyhow::Result<ExitCode> {
    let db = a.db.clone();
    guarded(&db, || compact_inner(a))
}

fn compact_inner(a: CompactArgs) -> anyhow::Result<ExitCode> {
    let report = inspect::compact(&a.db).map_err(lib)?;
    emit(a.json, &report, |v, out| v.write_text(out))?;
    Ok(ExitCode::SUCCESS)
}
