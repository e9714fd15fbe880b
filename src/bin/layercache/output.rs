//! Shared output plumbing: logging to stderr, errors to exit code 2, quiet exit on a closed
//! pipe.

use std::process::ExitCode;

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

/// Turns a command's result into the process exit code; errors print on stderr, exit 2.
pub fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layercache: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
