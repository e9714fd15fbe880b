//! `migrate`. (Being written: see issue 5.)

use std::process::ExitCode;

/// Arguments of `layercache migrate`.
#[derive(clap::Args)]
pub struct MigrateArgs {}

pub fn migrate(_: MigrateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("migrate is not implemented yet")
}
