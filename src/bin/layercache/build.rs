//! `lookup` and `put`. (Being written: see issue 3.)

use std::process::ExitCode;

/// Arguments of `layercache lookup`.
#[derive(clap::Args)]
pub struct LookupArgs {}

/// Arguments of `layercache put`.
#[derive(clap::Args)]
pub struct PutArgs {}

pub fn lookup(_: LookupArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("lookup is not implemented yet")
}

pub fn put(_: PutArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("put is not implemented yet")
}
