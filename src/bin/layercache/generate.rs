//! `completions SHELL` and `man`: generated from the clap definition of the command line, so
//! there is no hand-written copy to drift from the real options.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::CommandFactory;

use crate::Cli;

/// Arguments of `layercache completions`.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL")]
    shell: clap_complete::Shell,
}

/// Prints the completion script for the shell. It is built in memory first: clap_complete
/// panics on a failed write, and a closed pipe must end the command quietly.
pub fn completions(a: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "layercache", &mut script);
    let mut out = io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the man page, layercache(1), in roff.
pub fn man() -> anyhow::Result<ExitCode> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
