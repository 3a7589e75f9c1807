//! `bento drop put|get`: the Dropbox's arguments (the client is
//! [`bento_functions::dropbox`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bento_client::Target;
use bento_functions::dropbox;
use clap::Subcommand;

use crate::exit;

/// `bento drop …`.
#[derive(Debug, Subcommand)]
pub enum DropCommand {
    /// Leave a file at the box; prints the pick-up token.
    Put {
        /// The file.
        file: PathBuf,
        /// Pick-ups allowed before the file is deleted.
        #[arg(long, default_value_t = 1)]
        max_gets: u32,
        /// How long the file waits for pick-ups: e.g. 90s, 4m (at most
        /// 280 s: the Dropbox's wall-clock limit is 5 min).
        #[arg(long, default_value = "4m", value_parser = crate::units::parse_seconds)]
        expires: Duration,
        /// Stop once this many bytes were served in all (0: no budget).
        #[arg(long, default_value_t = 0)]
        max_bytes: u64,
    },
    /// Pick up a file with its pick-up token.
    Get {
        /// The pick-up token from `bento drop put` (SERVICE_TOKEN@BOX).
        token: String,
        /// Where to write the file (refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
    },
}

pub async fn run(target: &Target, command: DropCommand) -> ExitCode {
    match command {
        DropCommand::Put {
            file,
            max_gets,
            expires,
            max_bytes,
        } => {
            let options = dropbox::PutOptions {
                max_gets,
                expires,
                max_bytes,
            };
            match dropbox::put(target, &file, options).await {
                Ok(dropped) => {
                    eprintln!(
                        "{}; it waits {} s for up to {max_gets} pick-up(s). Watch or stop it: bento attach|kill {}",
                        dropped.confirmation,
                        expires.as_secs(),
                        dropped.session.to_hex()
                    );
                    crate::terminal::print(&dropped.pickup_token(&target.server));
                    ExitCode::SUCCESS
                }
                Err(e) => exit::fail(&e),
            }
        }
        DropCommand::Get { token, out } => match dropbox::get(target, &token, &out).await {
            Ok(bytes) => {
                eprintln!("saved {bytes} bytes to {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => exit::fail(&e),
        },
    }
}
