//! `bento browse`: the Browser's arguments (the client is
//! [`bento_functions::browser`]).

use std::path::PathBuf;
use std::process::ExitCode;

use bento_client::Target;
use bento_functions::browser;
use clap::Args;

use crate::terminal::Terminal;

/// Options of `bento browse`.
#[derive(Debug, Clone, Args)]
pub struct BrowseArgs {
    /// The page to fetch (at the box): an http:// or https:// URL.
    pub url: String,
    /// Pad the transfer up to the next multiple of this many bytes: 1000000,
    /// 1MB, 1MiB, 512KiB, 64kB … (at most 4MiB). Everyone using the same pad
    /// makes pages harder to tell apart.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = crate::units::parse_size)]
    pub pad: u64,
    /// Directory to unpack into (created; must be empty if it exists):
    /// index.html and res/ with the resources.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Most resources to fetch besides the page (at most 256); the rest are
    /// listed as skipped.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_resources: u32,
    /// Most bytes of page and resources together, before compression (at
    /// most 16MiB); resources beyond it are listed as skipped.
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = crate::units::parse_size)]
    pub max_bytes: u64,
    /// Destination rule the function asks the box for, in Tor exit-policy
    /// syntax (repeatable); replaces the manifest's `accept *:80`,
    /// `accept *:443`. Example: --destination "accept 127.0.0.1:8080".
    #[arg(long = "destination", value_name = "RULE")]
    pub destinations: Vec<String>,
    /// Carry the request and the page inside constant-rate cover traffic
    /// (the Cover function; see docs/functions/cover.md): this many cells
    /// per second each way, for exactly --cover-duration whatever the
    /// page's size, paced on the wire by the box's `constant` defense. The
    /// page must fit in the flow, or nothing is saved.
    #[arg(long, value_name = "CELLS_PER_S")]
    pub cover_rate: Option<f64>,
    /// With --cover-rate: bytes per cell, 64 to 65536.
    #[arg(long, value_name = "SIZE", default_value = "512", value_parser = crate::units::parse_size, requires = "cover_rate")]
    pub cover_cell_size: u64,
    /// With --cover-rate: how long the flow lasts (30s, 2m …).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::units::parse_duration, requires = "cover_rate")]
    pub cover_duration: std::time::Duration,
    /// With --cover-rate: write the flow's bytes and cells per second, both
    /// ways, as CSV to this file (the columns of `bento cover --report`).
    #[arg(long, value_name = "FILE", requires = "cover_rate")]
    pub cover_report: Option<PathBuf>,
    /// Shape the session against traffic analysis with this defense
    /// (front, tamaraw, regulator, constant), as `bento run --defense`
    /// does: the box shapes the page's way, this client pads the
    /// request's way (docs/policy.md#shaping says which a box allows).
    #[arg(long, value_name = "DEFENSE", value_parser = crate::parse_defense, conflicts_with = "cover_rate")]
    pub defense: Option<bento_client::Defense>,
}

/// `bento browse`.
pub async fn run(target: &Target, args: BrowseArgs) -> ExitCode {
    let options = browser::BrowseOptions {
        url: args.url,
        pad: args.pad,
        out: args.out,
        max_resources: args.max_resources,
        max_bytes: args.max_bytes,
        destinations: args.destinations,
        cover: args.cover_rate.map(|rate| browser::CoverFlow {
            rate,
            cell_size: args.cover_cell_size,
            duration: args.cover_duration,
            report: args.cover_report,
        }),
        defense: args.defense,
    };
    crate::exit::status(browser::run(target, &options, &Terminal).await)
}
