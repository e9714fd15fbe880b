//! Shared plumbing: the `--db`/`--json` options, JSON-or-text reports on stdout, logging to
//! stderr, a panic as one error line, errors to exit code 2, quiet exit on a closed pipe.

use std::io::{self, BufWriter, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// How long a command waits for another process's write lock (`--wait`).
#[derive(clap::Args)]
pub struct WaitArgs {
    /// How long to wait for another layercache process's write transaction (a put, or the
    /// creation or migration of the file) before failing; 0 fails at once. A lookup never
    /// waits for its optional writes (stat refresh, pruning): it skips them.
    #[arg(long = "wait", value_name = "SECONDS", default_value_t = layercache::DEFAULT_WRITE_WAIT.as_secs())]
    pub secs: u64,
}

impl WaitArgs {
    /// The wait as a duration.
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.secs)
    }
}

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

/// Sends panic reports to the debug log instead of stderr, once, at start. Every command runs
/// under [`guarded`], and the library turns a panic inside the database into an error naming the file
/// (`layercache::store::guard`), so a panic always ends as one error line; its location is in
/// the log with `LAYERCACHE_LOG=debug`.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| tracing::debug!("{info}")));
}

/// Runs a command, turning a panic that escapes the library into a one-line error: for a
/// command that reads the cache `db`, a panic is a damaged file whose pages made the database panic
/// outside the library's own guard (its read path trusts page contents); for any other, a bug.
pub fn guarded(
    db: Option<&Path>,
    f: impl FnOnce() -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(match db {
            Some(db) => anyhow::anyhow!(
                "cache database {} is damaged: reading it failed inside the database ({msg}); \
                 `layercache check --db {}` lists what is wrong; move it away (the next build \
                 then creates a new cache) or restore it from a backup",
                db.display(),
                db.display()
            ),
            None => anyhow::anyhow!(
                "internal error ({msg}); please report it with the output of the same command \
                 run with LAYERCACHE_LOG=debug"
            ),
        })
    })
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

/// The exit status of `put` when the layer was recorded but its report could not be written
/// (stdout full, closed or gone): the cache changed, the caller did not hear about it.
pub const EXIT_RECORDED_REPORT_FAILED: u8 = 3;

/// A put that committed, whose report then could not be written.
#[derive(Debug)]
pub struct ReportFailed {
    /// The layer that was recorded.
    pub layer: String,
    /// Why writing the report failed.
    pub source: anyhow::Error,
}

impl std::fmt::Display for ReportFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "layer {} was recorded in the cache, but writing the report failed: {}",
            layercache::escape_bytes(self.layer.as_bytes()),
            message(&self.source)
        )
    }
}

impl std::error::Error for ReportFailed {}

/// Turns a command's result into the process exit code; errors print on stderr. Exit 2 for an
/// error (nothing recorded), 3 for a put recorded whose report failed, 128 + N after signal N.
pub fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(i) = e.downcast_ref::<crate::signals::Interrupted>() {
                eprintln!("layercache: {i}");
                return ExitCode::from(128u8.saturating_add(i.signal as u8));
            }
            // The library stopped waiting for the write lock because a signal arrived.
            if let (Some(layercache::Error::Interrupted { .. }), Some(signal)) = (
                e.downcast_ref::<layercache::Error>(),
                crate::signals::received(),
            ) {
                let i = crate::signals::Interrupted {
                    signal,
                    outcome: "nothing was recorded".into(),
                };
                eprintln!("layercache: {i}");
                return ExitCode::from(128u8.saturating_add(signal as u8));
            }
            if let Some(r) = e.downcast_ref::<ReportFailed>() {
                eprintln!("layercache: error: {r}");
                return ExitCode::from(EXIT_RECORDED_REPORT_FAILED);
            }
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("layercache: error: {}", message(&e));
            ExitCode::from(2)
        }
    }
}
