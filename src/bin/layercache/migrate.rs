//! `layercache migrate --db FILE [--dry-run] [--json]`: list the pending schema steps, and
//! apply them in one transaction (the library also migrates on every writable open).

use std::io::Write;
use std::process::ExitCode;

use layercache::{Cache, pending_migrations as pending};

use crate::output::DbArgs;

/// Arguments of `layercache migrate`.
#[derive(clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    out: DbArgs,
    /// Only list the steps that would run; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `migrate --dry-run --json`: the file's schema version and the steps that would run.
#[derive(serde::Serialize)]
struct DryRun {
    db: String,
    version: u32,
    target: u32,
    pending: Vec<PendingStep>,
}

/// One step `migrate` would run.
#[derive(serde::Serialize)]
struct PendingStep {
    from: u32,
    to: u32,
    name: &'static str,
}

pub fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let a = &args.out;
    let version = Cache::schema_version_of(&a.db)?;
    let steps = pending(version);
    let mut out = std::io::stdout().lock();
    if args.dry_run {
        if a.json {
            let report = DryRun {
                db: a.db.display().to_string(),
                version,
                target: layercache::SCHEMA_VERSION,
                pending: steps
                    .iter()
                    .map(|s| PendingStep {
                        from: s.from,
                        to: s.to,
                        name: s.name,
                    })
                    .collect(),
            };
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
        } else if steps.is_empty() {
            writeln!(out, "{}: schema v{version}, up to date", a.db.display())?;
        } else {
            writeln!(
                out,
                "{}: schema v{version}, {} pending step(s) to v{}:",
                a.db.display(),
                steps.len(),
                layercache::SCHEMA_VERSION
            )?;
            for s in &steps {
                writeln!(out, "  v{} -> v{}: {}", s.from, s.to, s.name)?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    crate::signals::check("nothing was changed")?;
    let shown = crate::progress::Display::start(&format!("migrate {}", a.db.display()), None);
    // Closed again before a signal is reported, so the file needs no repair.
    let report = Cache::migrate_file(&a.db);
    shown.finish();
    let report = report?;
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else if report.steps.is_empty() {
        writeln!(out, "{}: schema v{}, up to date", a.db.display(), report.to)?;
    } else {
        for s in &report.steps {
            writeln!(
                out,
                "applied v{} -> v{}: {} ({} records)",
                s.from, s.to, s.name, s.records
            )?;
        }
        writeln!(out, "{}: now at schema v{}", a.db.display(), report.to)?;
    }
    crate::signals::check(&format!(
        "the database was left at schema v{} (the migration is one transaction)",
        report.to
    ))?;
    Ok(ExitCode::SUCCESS)
}
