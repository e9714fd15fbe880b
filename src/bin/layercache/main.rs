//! `layercache`: the command-line face of the library, for shell-driven builders and for people
//! debugging a cache. A thin shell: every decision is made by the library.
//!
//! Exit codes: `lookup` 0 hit, 1 miss; `check` 0 clean, 1 problems; 2 on any error, with nothing
//! recorded (message on stderr); 3 when `put` recorded the layer but could not write its
//! report; 130 / 143 after SIGINT / SIGTERM (the database closed cleanly). Data goes to stdout
//! (human text, or JSON with `--json`); logs go to stderr.

mod build;
mod debug;
mod gc;
mod generate;
mod import;
mod migrate;
mod output;
mod progress;
mod remote;
mod report;
mod signals;
mod trust;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use output::guarded;

#[derive(Parser)]
#[command(
    name = "layercache",
    version,
    about = "Build cache for layered image builders",
    after_help = "Environment:\n  \
        LAYERCACHE_DB      the cache database file, when --db is not given\n  \
        LAYERCACHE_REMOTE  the shared cache (REGISTRY/REPO), when --remote is not given\n  \
        LAYERCACHE_TRUST_KEYS  ':'-separated minisign public keys, when no --trust-key is given\n  \
        LAYERCACHE_SIGN_KEY_PASSWORD  the password of a protected --sign-key\n  \
        LAYERCACHE_LOG     log level on stderr: error, warn, info (default), debug, trace\n\n\
        Exit codes:\n  \
        0    lookup: hit; put: recorded; other commands: done (check: clean)\n  \
        1    lookup: miss; check: problems found\n  \
        2    error: nothing was recorded (the message on stderr says why; for put also: an\n       \
        input changed since the lookup record, {} manifests for a layer that is not\n       \
        build-only)\n  \
        3    put: the layer WAS recorded, but writing its report to stdout failed\n  \
        130  interrupted by SIGINT, 143 by SIGTERM: the step stopped between transactions and\n       \
        the database was closed cleanly (a second signal stops at once)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Show no progress on stderr (`lookup`, `put`, `gc`, `migrate` show it by default when
    /// stderr is a terminal).
    #[arg(long, global = true)]
    quiet: bool,
    /// Show progress on stderr even when it is not a terminal (as plain lines, at most one a
    /// second).
    #[arg(long, global = true, conflicts_with = "quiet")]
    progress: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Is the cached output of LAYER reusable? Exit 0 on a hit, 1 on a miss. Creates the
    /// cache if it is missing.
    Lookup(build::LookupArgs),
    /// Record LAYER with its output manifests, checked against the record of the build's
    /// lookup (--from FILE, from `lookup --record FILE`), or with the inputs as they are now
    /// (--inputs-as-of-now). Creates the cache if it is missing.
    Put(build::PutArgs),
    /// Push every layer that hits locally to a shared cache in an OCI registry: its record and
    /// its output blobs from the plan's oci_layout.
    Push(remote::ShareArgs),
    /// For each layer (bases first) that misses locally, take it from the shared cache: its
    /// blobs into the plan's oci_layout, its record from this machine's walk.
    Pull(remote::ShareArgs),
    /// Make a minisign key pair for signed shared entries: the secret key for `push
    /// --sign-key` (mode 0600), the public key for `--trust-key`.
    Keygen(trust::KeygenArgs),
    /// Adopt a stacker cache (`.stacker/build.cache`, formats 12 to 16): import each layer of
    /// the plan whose inputs still match what stacker recorded, with stacker's outputs, so it
    /// hits; report every other layer with why it was skipped. The stacker file is only read.
    ImportStacker(import::ImportArgs),
    /// Show what is stored: all entries, one entry, or its per-path rows. Opens the file
    /// read-only: works while a build holds it.
    Dump(debug::DumpArgs),
    /// Entries, rows, file size and reclaimable space.
    Stats(debug::StatsArgs),
    /// Verify the database: its integrity, every record decodes, summaries agree with rows.
    /// Tells a file that was not closed cleanly (`--repair` repairs it) from a damaged one.
    Check(debug::CheckArgs),
    /// Reclaim free space in the database file (no build may hold it).
    Compact(output::DbArgs),
    /// Upgrade the database schema in place.
    Migrate(migrate::MigrateArgs),
    /// Every layer of a plan with the cache's answer now (hit, miss, not cached, outputs
    /// missing), its first reason, changed paths, versions, last use, size and lookup time; as
    /// text, --json, or a self-contained HTML page (--html FILE). Does not prune.
    Report(report::ReportArgs),
    /// Drop old versions (by count, age, size; least recently used first) and report or delete
    /// the output blobs nothing references any more.
    Gc(gc::GcArgs),
    /// Print a shell completion script to stdout.
    Completions(generate::CompletionsArgs),
    /// Print the man page (roff) to stdout.
    Man,
}

fn main() -> ExitCode {
    output::init_logging();
    output::log_panics();
    let cli = Cli::parse();
    progress::set_when(progress::When::from_flags(cli.quiet, cli.progress));
    let result = match cli.cmd {
        // Build steps handle SIGINT/SIGTERM (see `signals`); the read-only commands keep the
        // default action, since a killed reader leaves nothing to repair.
        Cmd::Lookup(a) => guarded(None, || build::lookup(a, signals::install())),
        Cmd::Put(a) => guarded(None, || build::put(a, signals::install())),
        Cmd::Push(a) => guarded(None, || remote::push(a)),
        Cmd::Pull(a) => guarded(None, || remote::pull(a)),
        Cmd::Keygen(a) => guarded(None, || trust::keygen(&a)),
        Cmd::ImportStacker(a) => guarded(None, || import::import(a, signals::install())),
        Cmd::Dump(a) => guarded(Some(&a.out.db), || debug::dump(&a)),
        Cmd::Stats(a) => guarded(Some(&a.out.db), || debug::stats(&a)),
        Cmd::Check(a) => guarded(Some(&a.out.db), || debug::check(&a)),
        // The maintenance commands that write run one transaction: a first SIGINT/SIGTERM lets
        // it finish (or never start), closes the database cleanly and exits 130/143 saying so.
        Cmd::Compact(a) => guarded(Some(&a.db), || {
            signals::install();
            debug::compact(&a)
        }),
        Cmd::Migrate(a) => guarded(None, || {
            signals::install();
            migrate::migrate(a)
        }),
        Cmd::Report(a) => guarded(Some(&a.out.db), || report::report(&a)),
        Cmd::Gc(a) => guarded(None, || gc::gc(a, signals::install())),
        Cmd::Completions(a) => guarded(None, || generate::completions(&a)),
        Cmd::Man => guarded(None, generate::man),
    };
    output::finish(result)
}
