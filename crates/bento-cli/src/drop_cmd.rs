//! `bento drop put|get`: anonymous drop-off and pick-up with the Dropbox
//! function (`functions/dropbox/`, docs/functions/dropbox.md).
//!
//! `put` stores the function on the box, starts it, hands it the file and
//! detaches, leaving it running; it prints a pick-up token
//! `SERVICE_TOKEN@BOX` that anyone can use with `get`, from anywhere (over
//! Tor with `--socks`). The token is the only way to the file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bento_client::{ClientError, Connection, Target};
use bento_protocol::{ErrorCode, ServiceToken};
use bytes::Bytes;
use clap::Subcommand;

pub(crate) const SOURCE: &str = include_str!("../../../functions/dropbox/dropbox.py");
pub(crate) const MANIFEST: &str = include_str!("../../../functions/dropbox/dropbox.toml");

/// The largest file the Dropbox's manifest can hold: its 1024 KiB storage
/// quota, less each 1 MiB chunk's key and per-entry overhead.
pub(crate) const MAX_FILE: u64 = 1024 * 1024 - (64 + 16);

/// The Dropbox's wall-clock limit (its manifest's `wall_ms`), and the
/// longest expiry that leaves it time to delete the file and end cleanly.
const WALL: Duration = Duration::from_secs(300);
pub(crate) const MAX_EXPIRES: Duration = Duration::from_secs(280);

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
        #[arg(long, default_value = "4m", value_parser = parse_duration)]
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

/// A duration: a whole number with `s` (the default), `m`, `h` or `d`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 5m, 1h or 7d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    let secs = value
        .checked_mul(unit_secs)
        .ok_or_else(|| format!("{text:?} is too long"))?;
    if secs == 0 {
        return Err("the duration must be at least 1 s".into());
    }
    Ok(Duration::from_secs(secs))
}

pub async fn run(target: &Target, command: DropCommand) -> anyhow::Result<ExitCode> {
    match command {
        DropCommand::Put {
            file,
            max_gets,
            expires,
            max_bytes,
        } => put(target, &file, max_gets, expires, max_bytes).await,
        DropCommand::Get { token, out } => get(target, &token, &out).await,
    }
}

async fn put(
    target: &Target,
    file: &PathBuf,
    max_gets: u32,
    expires: Duration,
    max_bytes: u64,
) -> anyhow::Result<ExitCode> {
    if max_gets == 0 {
        bail!("--max-gets must be at least 1");
    }
    if expires > MAX_EXPIRES {
        bail!(
            "--expires may be at most {} s: the Dropbox's manifest gives it {} s of wall-clock time in all (see docs/functions/dropbox.md)",
            MAX_EXPIRES.as_secs(),
            WALL.as_secs()
        );
    }
    let data = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    if data.len() as u64 > MAX_FILE {
        bail!(
            "{} is {} bytes; the Dropbox holds at most {MAX_FILE} bytes (its storage quota; see docs/functions/dropbox.md)",
            file.display(),
            data.len()
        );
    }
    let args = serde_json::json!([max_gets, expires.as_secs(), max_bytes]).to_string();
    let started = async {
        let mut conn = Connection::connect(target).await?;
        let (_, token) = conn
            .store_with_manifest("dropbox.py", SOURCE, MANIFEST)
            .await?;
        conn.invoke_service(&token, "main", &args).await
    }
    .await;
    let (session, service) = match started {
        Ok((session, Some(service))) => (session, service),
        Ok((_, None)) => bail!("the box did not grant the Dropbox a service token"),
        Err(e) => return Ok(crate::commands::report(&e)),
    };
    let mut attachment = Connection::connect(target)
        .await?
        .attach(&session, None)
        .await?;
    let input = attachment.input();
    for chunk in data.chunks(bento_protocol::MAX_DATA_LEN) {
        input.send(Bytes::copy_from_slice(chunk)).await?;
    }
    input.end().await?;
    let mut reply = Vec::new();
    while !reply.ends_with(b"\n") {
        match attachment.next().await {
            Ok(Some(bytes)) => reply.extend_from_slice(&bytes),
            Ok(None) => bail!("the Dropbox ended before confirming the drop"),
            Err(e) => return Ok(crate::commands::report(&e)),
        }
    }
    attachment.detach().await?;
    let reply = String::from_utf8_lossy(&reply);
    eprintln!(
        "{}; it waits {} s for up to {max_gets} pick-up(s). Watch or stop it: bento attach|kill {}",
        reply.trim(),
        expires.as_secs(),
        session.to_hex()
    );
    #[allow(clippy::print_stdout)]
    {
        println!("{}@{}", service.to_hex(), target.server);
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(target: &Target, token: &str, out: &PathBuf) -> anyhow::Result<ExitCode> {
    let (service, server) = token
        .trim()
        .split_once('@')
        .context("a pick-up token looks like SERVICE_TOKEN@BOX (as printed by `bento drop put`)")?;
    let service = ServiceToken::from_hex(service)?;
    if out.exists() {
        bail!("{} exists; not overwriting it", out.display());
    }
    let target = Target {
        server: server.to_owned(),
        socks: target.socks.clone(),
    };
    let received = async {
        let mut channel = Connection::connect(&target)
            .await?
            .connect_service(&service)
            .await?;
        channel.read_to_end().await
    }
    .await;
    let data = match received {
        Ok(data) => data,
        Err(ClientError::Remote {
            code: ErrorCode::UnknownService,
            ..
        }) => {
            eprintln!(
                "error: nothing to pick up: the drop expired, was picked up as often as allowed, or never existed"
            );
            return Ok(ExitCode::from(crate::commands::EXIT_REQUEST));
        }
        Err(e) => return Ok(crate::commands::report(&e)),
    };
    let temp = out.with_extension("part");
    std::fs::write(&temp, &data).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, out).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("saved {} bytes to {}", data.len(), out.display());
    Ok(ExitCode::SUCCESS)
}
