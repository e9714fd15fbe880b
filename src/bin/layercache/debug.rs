//! `dump`, `stats`, `check`, `compact`: thin shells over `layercache::inspect`.
//!
//! Everything is written with `writeln!` to a locked, buffered stdout and every I/O error is
//! propagated, so output to a closed pipe (`| head`) ends the command quietly
//! (`output::finish` treats a broken pipe as success) instead of panicking like `println!`.

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use layercache::inspect::{self, Inspector, RowSelection};

use crate::output::{DbArgs, emit};
use crate::signals;

/// Arguments of `layercache dump`.
#[derive(clap::Args)]
pub struct DumpArgs {
    #[command(flatten)]
    pub out: DbArgs,
    /// Show this layer's entry in full (definition, base, manifests, sources).
    #[arg(value_name = "LAYER")]
    layer: Option<String>,
    /// Print LAYER's stored per-path rows instead, streamed in key order (with --json: JSON
    /// Lines, one object per row).
    #[arg(long, requires = "layer")]
    files: bool,
    /// With --files: only this source (`import:KEY`, `overlay:KEY`, or a bare KEY).
    #[arg(value_name = "SOURCE", requires = "files")]
    source: Option<String>,
}

/// Arguments of `layercache stats`.
#[derive(clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub out: DbArgs,
    /// Also ask the database for its exact free-space accounting. Needs a brief writable open, so it
    /// fails while a build holds the file (plain `stats` never does).
    #[arg(long)]
    exact: bool,
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

/// `layercache dump`: the listing, one entry, or (`--files`) its rows; exit 1 if a row does
/// not decode.
pub fn dump(a: &DumpArgs) -> anyhow::Result<ExitCode> {
    let db = &a.out.db;
    let ins = Inspector::open(db).map_err(lib)?;
    let Some(layer) = &a.layer else {
        let listing = ins.list().map_err(lib)?;
        emit(a.out.json, &listing, |v, out| v.write_text(out))?;
        return Ok(ExitCode::SUCCESS);
    };
    let Some(record) = ins.record(layer).map_err(lib)? else {
        anyhow::bail!(
            "{} has no entry for layer {layer:?}; `layercache dump --db {}` lists the cached layers",
            db.display(),
            db.display()
        );
    };
    if !a.files {
        if let Some(detail) = ins.entry(layer).map_err(lib)? {
            emit(a.out.json, &detail, |v, out| v.write_text(out))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = BufWriter::new(io::stdout().lock());
    let which = match &a.source {
        None => RowSelection::All,
        Some(s) => RowSelection::Source(
            Inspector::resolve_source(&record, s)
                .map_err(|e| anyhow::anyhow!("{}, layer {layer:?}: {e}", db.display()))?,
        ),
    };
    let mut damaged = 0u64;
    let mut current: Option<String> = None;
    for item in ins.rows(layer, &which).map_err(lib)? {
        let row = match item {
            Ok(r) => r,
            Err(e) => {
                damaged += 1;
                eprintln!("layercache: {e}");
                continue;
            }
        };
        if a.out.json {
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
            db.display()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `layercache stats`.
pub fn stats(a: &StatsArgs) -> anyhow::Result<ExitCode> {
    let db = &a.out.db;
    let stats = if a.exact {
        inspect::stats_exact(db).map_err(lib)?
    } else {
        Inspector::open(db).and_then(|i| i.stats()).map_err(lib)?
    };
    emit(a.out.json, &stats, |v, out| v.write_text(out))?;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `layercache check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub out: DbArgs,
    /// First repair a file that was not closed cleanly (a build step was killed): the
    /// database's quick repair, which loses nothing committed. Never creates a file; fails
    /// while a build writes.
    #[arg(long)]
    repair: bool,
}

/// `layercache check`: exit 0 when clean, 1 when problems were found (a file that was not
/// closed cleanly is reported as such, never as damage).
pub fn check(a: &CheckArgs) -> anyhow::Result<ExitCode> {
    let repaired = if a.repair {
        inspect::repair(&a.out.db).map_err(lib)?
    } else {
        false
    };
    let mut report = inspect::check(&a.out.db).map_err(lib)?;
    report.repaired = repaired;
    emit(a.out.json, &report, |v, out| v.write_text(out))?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `layercache compact`.
pub fn compact(a: &DbArgs) -> anyhow::Result<ExitCode> {
    signals::check("nothing was changed")?;
    let report = inspect::compact(&a.db).map_err(lib)?;
    emit(a.json, &report, |v, out| v.write_text(out))?;
    signals::check("the compaction had finished")?;
    Ok(ExitCode::SUCCESS)
}
