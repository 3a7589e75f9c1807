//! `bento cover`: placeholder wiring; the real command replaces this file.

use std::process::ExitCode;

use bento_client::Target;

#[derive(Debug, clap::Args)]
pub struct CoverArgs {}

pub async fn run(_target: &Target, _args: CoverArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("bento cover is not built yet")
}
