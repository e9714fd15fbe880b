//! `layercache`: the command-line face of the library, for shell-driven builders and for people
//! debugging a cache. A thin shell: every decision is made by the library.
//!
//! Exit codes: `lookup` 0 hit, 1 miss; `check` 0 clean, 1 problems; 2 on any error (message on
//! stderr). Data goes to stdout (human text, or JSON with `--json`); logs go to stderr.

mod build;
mod debug;
mod migrate;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "layercache",
    version,
    about = "Build cache for layered image builders"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Is the cached output of LAYER reusable? Exit 0 on a hit, 1 on a miss.
    Lookup(build::LookupArgs),
    /// Record LAYER with its output manifests.
    Put(build::PutArgs),
    /// Show what is stored: all entries, one entry, or its per-path rows.
    Dump(debug::DumpArgs),
    /// Entries, rows, file size and reclaimable space.
    Stats(debug::StatsArgs),
    /// Verify the database: redb integrity, every record decodes, summaries agree with rows.
    Check(debug::CheckArgs),
    /// Reclaim free space in the database file.
    Compact(debug::CompactArgs),
    /// Upgrade the database schema in place.
    Migrate(migrate::MigrateArgs),
}

fn main() -> ExitCode {
    output::init_logging();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Lookup(a) => build::lookup(a),
        Cmd::Put(a) => build::put(a),
        Cmd::Dump(a) => debug::dump(a),
        Cmd::Stats(a) => debug::stats(a),
        Cmd::Check(a) => debug::check(a),
        Cmd::Compact(a) => debug::compact(a),
        Cmd::Migrate(a) => migrate::migrate(a),
    };
    output::finish(result)
}
