//! `dump`, `stats`, `check`, `compact`. (Being written: see issue 4.)

use std::process::ExitCode;

/// Arguments of `layercache dump`.
#[derive(clap::Args)]
pub struct DumpArgs {}
/// Arguments of `layercache stats`.
#[derive(clap::Args)]
pub struct StatsArgs {}
/// Arguments of `layercache check`.
#[derive(clap::Args)]
pub struct CheckArgs {}
/// Arguments of `layercache compact`.
#[derive(clap::Args)]
pub struct CompactArgs {}

pub fn dump(_: DumpArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("dump is not implemented yet")
}
pub fn stats(_: StatsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("stats is not implemented yet")
}
pub fn check(_: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("check is not implemented yet")
}
pub fn compact(_: CompactArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("compact is not implemented yet")
}
