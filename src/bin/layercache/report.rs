//! `report`: every layer of a plan with the cache's answer for it now — text by default,
//! `--json`, or one self-contained HTML page (`--html FILE`). The cache is opened without
//! pruning, so a version whose outputs are gone shows as "outputs missing".

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use layercache::{Cache, build_report, escape_bytes};

use crate::build::load_plan;
use crate::output::{DbArgs, emit};

/// Arguments of `layercache report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub out: DbArgs,
    /// The plan file (JSON) describing the build's layers.
    #[arg(long, value_name = "PLAN")]
    plan: PathBuf,
    /// Also write the report as one self-contained HTML page (inline SVG and CSS, no script,
    /// nothing fetched) to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

/// `layercache report`.
pub fn report(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let plan = load_plan(&args.plan)?;
    let cache = Cache::open(plan.cache_config(&args.out.db))?;
    let report = build_report(&cache, plan.build())?;
    if let Some(path) = &args.html {
        let title = format!(
            "layercache report: {}",
            escape_bytes(args.plan.as_os_str().as_encoded_bytes())
        );
        std::fs::write(path, report.to_html(&title))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    emit(args.out.json, &report, |r, out| {
        r.write_text(out)?;
        if let Some(path) = &args.html {
            writeln!(
                out,
                "HTML report: {}",
                escape_bytes(path.as_os_str().as_encoded_bytes())
            )?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
