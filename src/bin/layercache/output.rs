//! Shared plumbing: the `--db`/`--json` options, JSON-or-text reports on stdout, logging to
//! stderr, errors to exit code 2, quiet exit on a closed pipe.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// The options of every command that reads or writes a cache and prints a report.
#[derive(clap::Args)]
pub struct DbArgs {
    /// The cache database file.
    #[arg(long, value_name = "FILE", env = "LAYERCACHE_DB")]
    pub db: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Prints one report to stdout: pretty JSON with `--json`, else its text form.
pub fn emit<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T, &mut BufWriter<io::StdoutLock<'static>>) -> io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = BufWriter::new(io::stdout().lock());
    if json {
        serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::from)?;
        writeln!(out)?;
    } else {
        text(value, &mut out)?;
    }
    out.flush()?;
    Ok(())
}

/// Logs (tracing) go to stderr; `RUST_LOG`-style filtering via `LAYERCACHE_LOG` (default info).
pub fn init_logging() {
    let level = std::env::var("LAYERCACHE_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .without_time()
        .try_init();
}

/// True when an error is a write to a closed pipe (`| head`): exit quietly.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes, joined by `: `, leaving out a cause whose text the message before
/// it already contains (the library's errors name their cause themselves).
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Turns a command's result into the process exit code; errors print on stderr, exit 2.
pub fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layercache: error: {}", message(&e));
            ExitCode::from(2)
        }
    }
}
