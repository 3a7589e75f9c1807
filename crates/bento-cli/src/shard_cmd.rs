//! `bento shard`: placeholder wiring; the real command replaces this file.

use std::process::ExitCode;

use bento_client::Target;

#[derive(Debug, clap::Subcommand)]
pub enum ShardCommand {}

pub async fn run(_target: &Target, _args: ShardCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("bento shard is not built yet")
}
