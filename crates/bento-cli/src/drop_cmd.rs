//! `bento drop put|get`: anonymous drop-off and pick-up with the Dropbox
//! function (functions/dropbox/).

use std::process::ExitCode;

use bento_client::Target;
use clap::Subcommand;

/// `bento drop …`.
#[derive(Debug, Subcommand)]
pub enum DropCommand {}

pub async fn run(_target: &Target, command: DropCommand) -> anyhow::Result<ExitCode> {
    match command {}
}
