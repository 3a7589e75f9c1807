//! `bento lb`: placeholder wiring; the real command replaces this file.

use std::process::ExitCode;

use bento_client::Target;

#[derive(Debug, clap::Subcommand)]
pub enum LbCommand {}

pub async fn run(_target: &Target, _args: LbCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("bento lb is not built yet")
}
