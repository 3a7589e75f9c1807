//! `bento browse`: fetch a page and its resources at a box, padded (the
//! Browser function, functions/browser/). Work in progress.

use std::process::ExitCode;

use bento_client::Target;
use clap::Args;

/// Options of `bento browse`.
#[derive(Debug, Clone, Args)]
pub struct BrowseArgs {
    /// The page to fetch (at the box).
    pub url: String,
}

pub async fn run(_target: &Target, _args: BrowseArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("bento browse is not implemented yet")
}
