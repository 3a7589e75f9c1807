//! `bento proxy`: placeholder wiring; the real command replaces this file.

use std::process::ExitCode;

use bento_client::Target;

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {}

pub async fn run(_target: &Target, _args: ProxyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("bento proxy is not built yet")
}
