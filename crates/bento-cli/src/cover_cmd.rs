//! `bento cover`: the Cover function's arguments (the client is
//! [`bento_functions::cover`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bento_client::Target;
use bento_functions::{Error, cover};
use clap::Args;

use crate::exit;
use crate::terminal::{Terminal, print};

/// Options of `bento cover`.
#[derive(Debug, Clone, Args)]
pub struct CoverArgs {
    /// Cells per second, each way (at most 1000; fractions allowed).
    #[arg(long, value_name = "CELLS_PER_S", default_value_t = 10.0)]
    pub rate: f64,
    /// Bytes per cell, header included: 64 to 65536 (512, 4KiB, …).
    #[arg(long, value_name = "SIZE", default_value = "512", value_parser = crate::units::parse_size)]
    pub cell_size: u64,
    /// How long the flow lasts: 30s, 2m, 1500ms … The flow carries
    /// round(rate × duration) cells each way.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::units::parse_duration)]
    pub duration: Duration,
    /// Real data to carry (a file, or - for stdin): it goes to the box in
    /// the client's cells and comes back in the box's cells (the function
    /// echoes it), checked byte for byte. It may fill at most half the
    /// flow's cells, so the echo has time to come back.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Print the bytes and cells per interval, both ways, as CSV on stdout
    /// (the summary then goes to stderr).
    #[arg(long)]
    pub report: bool,
    /// The report's interval: 1s, 250ms …
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::units::parse_duration)]
    pub interval: Duration,
}

/// `--data`: a file, or `-` for stdin.
fn read_data(path: &Path) -> Result<Vec<u8>, Error> {
    if path.as_os_str() == "-" {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut data).map_err(|error| {
            Error::File {
                action: "read",
                path: "stdin".into(),
                error,
            }
        })?;
        Ok(data)
    } else {
        std::fs::read(path).map_err(|error| Error::File {
            action: "read",
            path: path.to_owned(),
            error,
        })
    }
}

/// `bento cover`.
pub async fn run(target: &Target, args: CoverArgs) -> ExitCode {
    let data = match args.data.as_deref().map(read_data).transpose() {
        Ok(data) => data,
        Err(e) => return exit::fail(&e),
    };
    let options = cover::CoverOptions {
        rate: args.rate,
        cell_size: args.cell_size,
        duration: args.duration,
        data,
        interval: args.interval,
    };
    match cover::run(target, &options, &Terminal).await {
        Ok(covered) => {
            if args.report {
                print(covered.report.csv().trim_end());
                eprintln!("{}", covered.summary);
            } else {
                print(&covered.summary);
            }
            ExitCode::SUCCESS
        }
        Err(e) => exit::fail(&e),
    }
}
