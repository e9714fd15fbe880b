//! `layercache import-stacker --db FILE --plan PLAN STACKER_CACHE`: adopt a stacker cache
//! (`.stacker/build.cache`), importing each layer of the plan whose inputs still match what
//! stacker recorded (`layercache::stacker_import`). The stacker file is read and checked
//! before the database is opened, so a damaged one changes nothing.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use layercache::{
    Cache, ImportOptions, ImportStatus, StackerCache, escape_bytes, import_stacker_cache,
};

use crate::output::{DbArgs, emit};
use crate::progress::Display;
use crate::signals;

/// Arguments of `layercache import-stacker`.
#[derive(clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    out: DbArgs,
    /// The plan file (JSON) describing the build's layers; each layer's `definition` is
    /// compared with the stackerfile layer stacker recorded.
    #[arg(long, value_name = "PLAN")]
    plan: PathBuf,
    /// The stackerfile's directory (stacker made relative import paths and overlay dir
    /// sources absolute against it); default: the directory holding STACKER_CACHE's
    /// directory (`.stacker` beside the stackerfile).
    #[arg(long, value_name = "DIR")]
    stackerfile_dir: Option<PathBuf>,
    #[command(flatten)]
    wait: crate::output::WaitArgs,
    /// stacker's cache file (`<stacker_dir>/build.cache`, formats 12 to 16); only read.
    #[arg(value_name = "STACKER_CACHE")]
    stacker_cache: PathBuf,
}

pub fn import(args: ImportArgs, interrupt: Arc<AtomicBool>) -> anyhow::Result<ExitCode> {
    // Read and checked whole before the database is opened: a damaged file changes nothing.
    let stacker = StackerCache::read(&args.stacker_cache)?;
    let plan = crate::build::load_plan(&args.plan)?;
    let mut options = ImportOptions::for_cache_file(&args.stacker_cache);
    if let Some(dir) = &args.stackerfile_dir {
        options.stackerfile_dir = std::path::absolute(dir)?;
    }
    let mut config = plan.cache_config(&args.out.db);
    config.write_wait = args.wait.duration();
    config.interrupt = Some(interrupt);
    let cache = Cache::open(config)?;
    signals::check("nothing was imported")?;
    let shown = Display::start(
        &format!("import-stacker {}", args.stacker_cache.display()),
        Some(cache.progress()),
    );
    let report = import_stacker_cache(&cache, plan.build(), &stacker, &options);
    shown.finish();
    let report = report?;
    drop(cache);
    emit(args.out.json, &report, |r, out| {
        writeln!(
            out,
            "stacker cache {} (format {}): {} of {} layer(s) imported",
            r.stacker_cache.display(),
            r.format,
            r.imported(),
            r.layers.len()
        )?;
        for l in &r.layers {
            let name = escape_bytes(l.layer.as_bytes());
            match &l.status {
                ImportStatus::Imported { manifests } => {
                    let types: Vec<String> = manifests
                        .iter()
                        .map(|m| escape_bytes(m.as_bytes()))
                        .collect();
                    let types = if types.is_empty() {
                        "none (build-only)".to_string()
                    } else {
                        types.join(", ")
                    };
                    writeln!(out, "{name}: imported (manifests: {types})")?;
                }
                ImportStatus::AlreadyCached => writeln!(out, "{name}: already cached")?,
                // The reason escapes the names and paths it quotes.
                ImportStatus::Skipped { why } => writeln!(out, "{name}: skipped: {why}")?,
            }
        }
        if !r.not_in_build.is_empty() {
            writeln!(
                out,
                "{} stacker layer(s) not in the plan, left alone",
                r.not_in_build.len()
            )?;
        }
        Ok(())
    })?;
    signals::check("the layers reported were imported")?;
    Ok(ExitCode::SUCCESS)
}
