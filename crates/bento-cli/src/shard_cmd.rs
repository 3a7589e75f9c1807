//! `bento shard put|get`: the Shard function's arguments (the client is
//! [`bento_functions::shard`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bento_client::Target;
use bento_functions::shard;
use clap::Subcommand;

use crate::exit;
use crate::terminal::{Terminal, print};

/// `bento shard …`.
#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// Split FILE into N shards, any K of which rebuild it, and leave each
    /// in a Dropbox on a different box (placed by the Shard function on the
    /// --server box, over Tor); writes a recovery file.
    ///
    /// Example: bento --server ENTRY.onion:7878 --socks 127.0.0.1:9050
    /// shard put report.pdf --boxes A.onion:7878,B.onion:7878,C.onion:7878 -k 2 -n 3
    Put {
        /// The file (at most K × 1 MiB, less a little: each shard must fit a Dropbox).
        file: PathBuf,
        /// Boxes to hold the shards, ONION:PORT, comma-separated or repeated.
        /// Each shard goes to the next box in the list that takes it; boxes
        /// beyond N are spares for boxes that refuse or cannot be reached.
        #[arg(long, value_delimiter = ',', required = true)]
        boxes: Vec<String>,
        /// Shards needed to rebuild the file.
        #[arg(short = 'k', long = "needed")]
        k: usize,
        /// Shards made [default: the number of boxes].
        #[arg(short = 'n', long = "shards")]
        n: Option<usize>,
        /// Where to write the recovery file [default: FILE.shards].
        #[arg(long)]
        recovery: Option<PathBuf>,
        /// Pick-ups each shard's Dropbox allows (each `get` uses one per
        /// shard it fetches).
        #[arg(long, default_value_t = 3)]
        max_gets: u32,
        /// How long the shards wait for pick-ups: e.g. 90s, 4m (at most 280 s,
        /// the Dropbox's limit under the default box policy).
        #[arg(long, default_value = "4m", value_parser = crate::units::parse_seconds)]
        expires: Duration,
    },
    /// Rebuild a file from any K of its shards, as a recovery file from
    /// `bento shard put` describes them. Only --socks is needed: the boxes
    /// are named in the recovery file.
    Get {
        /// The recovery file.
        recovery: PathBuf,
        /// Where to write the file (refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
    },
}

pub async fn run(target: &Target, command: ShardCommand) -> ExitCode {
    match command {
        ShardCommand::Put {
            file,
            boxes,
            k,
            n,
            recovery,
            max_gets,
            expires,
        } => {
            let options = shard::PutOptions {
                n: n.unwrap_or(boxes.len()),
                boxes,
                k,
                recovery: recovery.unwrap_or_else(|| shard::default_recovery_path(&file)),
                max_gets,
                expires,
            };
            match shard::put(target, &file, &options, &Terminal).await {
                Ok(recovery) => {
                    print(&recovery.display().to_string());
                    ExitCode::SUCCESS
                }
                Err(e) => exit::fail(&e),
            }
        }
        ShardCommand::Get { recovery, out } => {
            let got = shard::get(target, &recovery, &out, &Terminal).await;
            exit::status(got.map(|_| ()))
        }
    }
}
