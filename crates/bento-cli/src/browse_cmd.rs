//! `bento browse`: fetch a page and its resources at a box, padded to a
//! multiple of a pad size so its size tells an observer little, and unpack
//! it for offline viewing (the Browser function, functions/browser/; see
//! docs/functions/browser.md).
//!
//! The blob the function sends (see functions/browser/browser.py):
//! `b"BNTOBRW1"`, a u64 (big-endian) length `L`, `L` bytes of a zlib stream,
//! zero bytes up to the next multiple of the pad. The zlib stream holds a
//! u32 length `J`, `J` bytes of a JSON index, then every entry's bytes.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use bento_client::{ClientError, Connection, Target};
use bento_protocol::ErrorCode;
use clap::Args;
use flate2::{Decompress, FlushDecompress, Status};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::commands::{EXIT_BOX, EXIT_FUNCTION, EXIT_REQUEST};
use crate::cover_cmd;

/// The function's source and manifest, stored at the box by every browse.
const SOURCE: &str = include_str!("../../../functions/browser/browser.py");
const MANIFEST: &str = include_str!("../../../functions/browser/browser.toml");

const MAGIC: &[u8; 8] = b"BNTOBRW1";
const HEADER: usize = 16;
/// The largest blob the function sends (its output buffer): the largest pad.
pub const MAX_BLOB: u64 = 4096 * 1024;
/// Most resources the function will fetch for one page.
const MAX_RESOURCES: u32 = 256;
/// Most bytes of page and resources together the function will fetch.
const MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Most bytes the client inflates (a box cannot make it write more).
const MAX_INFLATED: usize = 20 * 1024 * 1024;

/// Options of `bento browse`.
#[derive(Debug, Clone, Args)]
pub struct BrowseArgs {
    /// The page to fetch (at the box): an http:// or https:// URL.
    pub url: String,
    /// Pad the transfer up to the next multiple of this many bytes: 1000000,
    /// 1MB, 1MiB, 512KiB, 64kB … (at most 4MiB). Everyone using the same pad
    /// makes pages harder to tell apart.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
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
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = parse_size)]
    pub max_bytes: u64,
    /// Destination rule the function asks the box for, in Tor exit-policy
    /// syntax (repeatable); replaces the manifest's `accept *:80`,
    /// `accept *:443`. Example: --destination "accept 127.0.0.1:8080".
    #[arg(long = "destination", value_name = "RULE")]
    pub destinations: Vec<String>,
    /// Carry the request and the page inside constant-rate cover traffic
    /// (the Cover function; see docs/functions/cover.md): this many cells
    /// per second each way, for exactly --cover-duration whatever the
    /// page's size. The page must fit in the flow, or nothing is saved.
    #[arg(long, value_name = "CELLS_PER_S")]
    pub cover_rate: Option<f64>,
    /// With --cover-rate: bytes per cell, 64 to 65536.
    #[arg(long, value_name = "SIZE", default_value = "512", value_parser = parse_size, requires = "cover_rate")]
    pub cover_cell_size: u64,
    /// With --cover-rate: how long the flow lasts (30s, 2m …).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::cover_cmd::parse_duration, requires = "cover_rate")]
    pub cover_duration: std::time::Duration,
    /// With --cover-rate: write the flow's bytes and cells per second, both
    /// ways, as CSV to this file (the columns of `bento cover --report`).
    #[arg(long, value_name = "FILE", requires = "cover_rate")]
    pub cover_report: Option<PathBuf>,
}

/// A size: a whole number with an optional unit (B, kB/KB/K = 1000,
/// KiB = 1024, MB/M, MiB, GB/G, GiB).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 1MiB, 500kB, 65536)"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "k" | "K" | "kB" | "KB" => 1000,
        "Ki" | "KiB" | "kiB" => 1024,
        "M" | "MB" => 1000 * 1000,
        "Mi" | "MiB" => 1024 * 1024,
        "G" | "GB" => 1000 * 1000 * 1000,
        "Gi" | "GiB" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use B, kB, KiB, MB, MiB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Whether `url` is an http(s) URL with a host (the box checks it fully).
fn check_url(url: &str) -> anyhow::Result<()> {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"));
    let Some(rest) = rest else {
        bail!("{url:?} is not an http:// or https:// URL");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        bail!("{url:?} has no host");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("{url:?} contains spaces or control characters");
    }
    Ok(())
}

/// The manifest with its `destinations` line replaced, if rules are given.
fn manifest(destinations: &[String]) -> anyhow::Result<String> {
    if destinations.is_empty() {
        return Ok(MANIFEST.to_owned());
    }
    let rules = serde_json::to_string(destinations)?;
    let mut replaced = false;
    let mut out = String::new();
    for line in MANIFEST.lines() {
        if !replaced && line.starts_with("destinations") {
            let _ = writeln!(out, "destinations = {rules}");
            replaced = true;
        } else {
            let _ = writeln!(out, "{line}");
        }
    }
    if !replaced {
        bail!("the built-in manifest has no destinations line");
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct Index {
    url: String,
    entries: Vec<Entry>,
    #[serde(default)]
    skipped: Vec<Skipped>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    url: String,
    #[serde(default, rename = "type")]
    content_type: String,
    offset: usize,
    length: usize,
    #[serde(default)]
    refs: Vec<(usize, usize, usize)>,
}

#[derive(Debug, Deserialize)]
struct Skipped {
    url: String,
    reason: String,
}

/// What the box sent, taken apart.
struct Bundle {
    index: Index,
    bodies: Vec<u8>,
    /// Bytes of the compressed bundle with its header (before padding).
    bundle_len: usize,
}

/// Check the blob's length, strip the padding, inflate, read the index.
fn unpack_blob(blob: &[u8], pad: u64) -> anyhow::Result<Bundle> {
    let pad_usize = usize::try_from(pad).context("pad too large")?;
    if !blob.len().is_multiple_of(pad_usize) {
        bail!(
            "the box sent {} bytes, which is not a multiple of the pad ({pad} bytes)",
            blob.len()
        );
    }
    if blob.len() < HEADER || &blob[..8] != MAGIC {
        bail!("the box's answer is not a Browser bundle (wrong magic)");
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&blob[8..16]);
    let len = usize::try_from(u64::from_be_bytes(len_bytes)).context("bundle length")?;
    let end = HEADER
        .checked_add(len)
        .filter(|&end| end <= blob.len())
        .context("the bundle's length header exceeds what the box sent")?;
    // Exactly the padding the function adds: less than one pad, all zero.
    if blob.len() - end >= pad_usize {
        bail!("the box sent more than one pad of padding");
    }
    if blob[end..].iter().any(|&b| b != 0) {
        bail!("the padding is not all zero bytes");
    }
    let container = inflate_zlib(&blob[HEADER..end], MAX_INFLATED)?;
    if container.len() < 4 {
        bail!("the bundle is truncated");
    }
    let mut j = [0u8; 4];
    j.copy_from_slice(&container[..4]);
    let index_end = 4usize
        .checked_add(u32::from_be_bytes(j) as usize)
        .filter(|&e| e <= container.len())
        .context("the bundle's index length is wrong")?;
    let index: Index =
        serde_json::from_slice(&container[4..index_end]).context("the bundle's index")?;
    let bodies = container[index_end..].to_vec();
    if index.entries.is_empty() {
        bail!("the bundle holds no page");
    }
    for entry in &index.entries {
        if entry
            .offset
            .checked_add(entry.length)
            .is_none_or(|e| e > bodies.len())
        {
            bail!("the bundle's entry for {} lies outside it", entry.url);
        }
        let mut last = 0;
        for &(start, end, target) in &entry.refs {
            if start < last || end < start || end > entry.length || target >= index.entries.len() {
                bail!("the bundle's references of {} are inconsistent", entry.url);
            }
            last = end;
        }
    }
    Ok(Bundle {
        index,
        bodies,
        bundle_len: end,
    })
}

/// A file extension for an entry: from its content type if known, else
/// from its URL's path, else `bin`. Only `[a-z0-9]`, so it is a safe name.
fn extension(entry: &Entry) -> String {
    let known = match entry.content_type.as_str() {
        "text/html" | "application/xhtml+xml" => Some("html"),
        "text/css" => Some("css"),
        "text/javascript" | "application/javascript" | "application/x-javascript" => Some("js"),
        "image/png" => Some("png"),
        "image/jpeg" => Some("jpg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        "image/svg+xml" => Some("svg"),
        "image/x-icon" | "image/vnd.microsoft.icon" => Some("ico"),
        "font/woff2" => Some("woff2"),
        "font/woff" => Some("woff"),
        "application/json" => Some("json"),
        _ => None,
    };
    if let Some(ext) = known {
        return ext.to_owned();
    }
    let path = entry
        .url
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default();
    match path.rsplit_once('.') {
        Some((_, ext))
            if !ext.is_empty()
                && ext.len() <= 8
                && ext.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            ext.to_ascii_lowercase()
        }
        _ => "bin".to_owned(),
    }
}

/// Local file names (relative to the output directory): the page is
/// `index.html`, every resource `res/<16 hex digits of SHA-256(url)>.<ext>`.
fn local_names(index: &Index) -> Vec<String> {
    let mut used = HashSet::new();
    index
        .entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            if i == 0 {
                return "index.html".to_owned();
            }
            let hash = hex::encode(Sha256::digest(entry.url.as_bytes()));
            let ext = extension(entry);
            let mut name = format!("res/{}.{ext}", &hash[..16]);
            let mut n = 1;
            while !used.insert(name.clone()) {
                name = format!("res/{}-{n}.{ext}", &hash[..16]);
                n += 1;
            }
            name
        })
        .collect()
}

/// An entry's bytes with its references replaced by local names.
fn rewrite(body: &[u8], refs: &[(usize, usize, usize)], from: &str, names: &[String]) -> Vec<u8> {
    let in_res = from.starts_with("res/");
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    for &(start, end, target) in refs {
        out.extend_from_slice(&body[at..start]);
        let name = names.get(target).map(String::as_str).unwrap_or_default();
        let local = match (in_res, name.strip_prefix("res/")) {
            (true, Some(sibling)) => sibling.to_owned(),
            (true, None) => format!("../{name}"),
            (false, _) => name.to_owned(),
        };
        out.extend_from_slice(local.as_bytes());
        at = end;
    }
    out.extend_from_slice(&body[at..]);
    out
}

/// Exit code and message for a failure the box reported.
fn remote_failure(error: &ClientError) -> (u8, String) {
    match error {
        ClientError::Remote {
            code: ErrorCode::FunctionException,
            message,
        } => {
            let last = crate::cover_cmd::function_error(message);
            (EXIT_FUNCTION, format!("the box could not browse: {last}"))
        }
        ClientError::Remote { code, message } => (
            crate::commands::exit_code_for(*code),
            format!("[{}]: {}", code.name(), message.trim_end()),
        ),
        other => (EXIT_BOX, other.to_string()),
    }
}

/// Store the function, invoke it, read its whole output.
async fn fetch(target: &Target, args: &BrowseArgs, manifest: &str) -> Result<Vec<u8>, ClientError> {
    let mut conn = Connection::connect(target).await?;
    let (_, token) = conn
        .store_with_manifest("browser.py", SOURCE, manifest)
        .await?;
    let call = serde_json::json!([args.url, args.pad, args.max_resources, args.max_bytes]);
    let session = conn.invoke(&token, "main", &call.to_string()).await?;
    let mut attachment = Connection::connect(target)
        .await?
        .attach(&session, None)
        .await?;
    let mut blob = Vec::new();
    let result = loop {
        match attachment.next().await {
            Ok(Some(data)) => {
                if blob.len() + data.len() > MAX_BLOB as usize {
                    break Err(ClientError::Unexpected(format!(
                        "the box sent more than {MAX_BLOB} bytes"
                    )));
                }
                blob.extend_from_slice(&data);
            }
            Ok(None) => break Ok(blob),
            Err(e) => break Err(e),
        }
    };
    attachment.close().await;
    result
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

/// `bento browse`.
pub async fn run(target: &Target, args: BrowseArgs) -> anyhow::Result<ExitCode> {
    if let Err(e) = check_url(&args.url) {
        return Ok(fail(EXIT_REQUEST, &format!("{e:#}")));
    }
    if args.pad == 0 || args.pad > MAX_BLOB {
        return Ok(fail(
            EXIT_REQUEST,
            &format!(
                "--pad must be from 1 byte to {MAX_BLOB} bytes (4MiB), not {}",
                args.pad
            ),
        ));
    }
    if args.max_resources > MAX_RESOURCES {
        return Ok(fail(
            EXIT_REQUEST,
            &format!("--max-resources may be at most {MAX_RESOURCES}"),
        ));
    }
    if args.max_bytes > MAX_BYTES {
        return Ok(fail(
            EXIT_REQUEST,
            &format!("--max-bytes may be at most {MAX_BYTES} bytes (16MiB)"),
        ));
    }
    if let Ok(mut entries) = std::fs::read_dir(&args.out)
        && entries.next().is_some()
    {
        return Ok(fail(
            EXIT_REQUEST,
            &format!("--out {} exists and is not empty", args.out.display()),
        ));
    }
    let manifest = manifest(&args.destinations)?;
    let (blob, cover) = if let Some(rate) = args.cover_rate {
        let spec = match cover_cmd::FlowSpec::new(rate, args.cover_cell_size, args.cover_duration) {
            Ok(spec) => spec,
            Err(e) => return Ok(fail(EXIT_REQUEST, &format!("--cover-*: {e:#}"))),
        };
        if spec.capacity() < args.pad + 1024 {
            return Ok(fail(
                EXIT_REQUEST,
                &format!(
                    "the cover flow ({} cells of {} B) carries {} bytes, less than one {}-byte pad \
                     and the request: raise --cover-rate, --cover-cell-size or --cover-duration, or lower --pad",
                    spec.cells,
                    spec.cell,
                    spec.capacity(),
                    args.pad
                ),
            ));
        }
        match fetch_covered(target, &args, &manifest, spec).await {
            Ok(Ok(covered)) => covered,
            Ok(Err(e)) | Err(cover_cmd::FlowError::Box(e)) => {
                let (code, message) = remote_failure(&e);
                return Ok(fail(code, &message));
            }
            Err(cover_cmd::FlowError::BadCells(message)) => return Ok(fail(EXIT_BOX, &message)),
        }
    } else {
        match fetch(target, &args, &manifest).await {
            Ok(blob) => (blob, None),
            Err(e) => {
                let (code, message) = remote_failure(&e);
                return Ok(fail(code, &message));
            }
        }
    };
    let bundle = match unpack_blob(&blob, args.pad) {
        Ok(bundle) => bundle,
        Err(e) => return Ok(fail(EXIT_BOX, &format!("{e:#}"))),
    };
    let saved = save(&bundle, &args.out)?;
    report(&args, &bundle, &saved, blob.len());
    if let Some(cover) = cover {
        #[allow(clippy::print_stdout)]
        {
            println!("{cover}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Browse inside a cover flow: the Browser's source followed by the
/// Cover's, entry `browse`; the request rides in the client's first cells,
/// the blob in the box's. Returns the blob and a line about the flow, or
/// how the session ended if it failed after the flow.
async fn fetch_covered(
    target: &Target,
    args: &BrowseArgs,
    manifest: &str,
    spec: cover_cmd::FlowSpec,
) -> Result<Result<(Vec<u8>, Option<String>), ClientError>, cover_cmd::FlowError> {
    let source = format!("{SOURCE}\n{}", cover_cmd::SOURCE);
    let manifest = cover_manifest(manifest, &spec)?;
    let request =
        serde_json::json!([args.url, args.pad, args.max_resources, args.max_bytes]).to_string();
    eprintln!(
        "browse: inside a cover flow of {}",
        cover_cmd::describe_spec(&spec)
    );
    let flow = cover_cmd::Flow {
        filename: "browser_cover.py",
        source: &source,
        manifest: &manifest,
        entry: "browse",
        spec,
        message: Some(request.as_bytes()),
        max_message: MAX_BLOB as usize,
        interval: std::time::Duration::from_secs(1),
    };
    let report = cover_cmd::run_flow(target, &flow).await?;
    if let Some(path) = &args.cover_report
        && let Err(e) = std::fs::write(path, report.csv())
    {
        eprintln!("browse: cannot write {}: {e}", path.display());
    }
    if let Err(e) = report.ended {
        return Ok(Err(e));
    }
    let total = report.total();
    let [blob] = <[Vec<u8>; 1]>::try_from(report.messages).map_err(|m| {
        cover_cmd::FlowError::BadCells(format!("the box sent {} messages, not one page", m.len()))
    })?;
    let line = format!(
        "cover: {} cells of {} B each way in {:.2} s; box to client {} B in {} Output frames, client to box {} B \
         (protocol frames with their 5-byte headers)",
        total.down_cells,
        spec.cell,
        report.elapsed.as_secs_f64(),
        total.down_bytes,
        total.down_frames,
        total.up_bytes
    );
    Ok(Ok((blob, Some(line))))
}

/// The Browser's manifest (destinations already set) for the composed
/// function: `time` added, the wall-clock limit of the flow (the fetch
/// happens inside it), CPU time for the fetch plus the flow.
fn cover_manifest(
    manifest: &str,
    spec: &cover_cmd::FlowSpec,
) -> Result<String, cover_cmd::FlowError> {
    let bad = |e: anyhow::Error| cover_cmd::FlowError::BadCells(format!("{e:#}"));
    let limits = |key: &str| -> Result<u64, cover_cmd::FlowError> {
        manifest
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .strip_prefix('=')?
                    .trim()
                    .parse()
                    .ok()
            })
            .ok_or_else(|| bad(anyhow::anyhow!("the built-in manifest has no {key}")))
    };
    let cpu = limits("cpu_ms")? + spec.cpu_ms();
    // The fetches and the flow share one bucket; the flow's figure already
    // has a quarter to spare, and the Browser's 1024 KiB/s is plenty for
    // both at the rates one would use for a page.
    let bandwidth = limits("bandwidth_kib_per_s")?.max(spec.bandwidth_kib_per_s());
    cover_cmd::set_manifest_keys(
        manifest,
        &[
            ("capabilities", "[\"http\", \"time\"]".to_owned()),
            ("wall_ms", spec.wall_ms().to_string()),
            ("cpu_ms", cpu.to_string()),
            ("bandwidth_kib_per_s", bandwidth.to_string()),
        ],
    )
    .map_err(bad)
}

/// One saved file: its name, size and where it came from.
struct Saved {
    name: String,
    bytes: usize,
    url: String,
}

/// Write every entry under `out`, references rewritten to the local names.
fn save(bundle: &Bundle, out: &Path) -> anyhow::Result<Vec<Saved>> {
    let names = local_names(&bundle.index);
    std::fs::create_dir_all(out.join("res"))
        .with_context(|| format!("cannot create {}", out.join("res").display()))?;
    let mut saved = Vec::new();
    for (entry, name) in bundle.index.entries.iter().zip(&names) {
        let body = &bundle.bodies[entry.offset..entry.offset + entry.length];
        let data = rewrite(body, &entry.refs, name, &names);
        let path = out.join(name);
        std::fs::write(&path, &data).with_context(|| format!("cannot write {}", path.display()))?;
        saved.push(Saved {
            name: name.clone(),
            bytes: data.len(),
            url: entry.url.clone(),
        });
    }
    Ok(saved)
}

#[allow(clippy::print_stdout)]
fn report(args: &BrowseArgs, bundle: &Bundle, saved: &[Saved], transferred: usize) {
    println!(
        "{}: {} files from {} into {}",
        args.url,
        saved.len(),
        bundle.index.url,
        args.out.display()
    );
    for file in saved {
        println!("  {:<28} {:>9} B  {}", file.name, file.bytes, file.url);
    }
    for skipped in &bundle.index.skipped {
        println!("  skipped {}: {}", skipped.url, skipped.reason);
    }
    println!(
        "transferred {transferred} bytes = {} x {} B pad (bundle {} B, padding {} B)",
        transferred as u64 / args.pad.max(1),
        args.pad,
        bundle.bundle_len,
        transferred - bundle.bundle_len
    );
    println!("open {}", args.out.join("index.html").display());
}

/// Inflate a zlib stream (its Adler-32 checked) into at most `max` bytes.
///
/// The output grows only as the stream really produces bytes, and never
/// past `max + 1`: a hostile box's zip bomb costs the client at most `max`
/// bytes of memory, then an error.
fn inflate_zlib(data: &[u8], max: usize) -> anyhow::Result<Vec<u8>> {
    const STEP: usize = 64 * 1024;
    let limit = max.saturating_add(1);
    let mut inflater = Decompress::new(true);
    let mut out = Vec::new();
    loop {
        if out.len() >= limit {
            bail!("the bundle inflates to more than {max} bytes");
        }
        if out.len() == out.capacity() {
            out.reserve_exact(out.capacity().max(STEP).min(limit - out.len()));
        }
        let (read, written) = (inflater.total_in(), out.len());
        let input = usize::try_from(read)
            .ok()
            .and_then(|read| data.get(read..))
            .unwrap_or_default();
        let status = inflater
            .decompress_vec(input, &mut out, FlushDecompress::None)
            .map_err(|e| anyhow::anyhow!("the compressed bundle is corrupt: {e}"))?;
        if status == Status::StreamEnd {
            break;
        }
        // No input taken and no output made although there was room: the
        // stream stops before its end.
        if inflater.total_in() == read && out.len() == written {
            bail!("the compressed bundle is truncated");
        }
    }
    if out.len() > max {
        bail!("the bundle inflates to more than {max} bytes");
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("1.5MB").is_err());
        assert!(parse_size("MB").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }

    #[test]
    fn inflate_reads_stored_fixed_and_dynamic_blocks_from_python_zlib() {
        let text = b"hello hello hello bento! ".repeat(3);
        let stored = hex::decode("7801014b00b4ff68656c6c6f2068656c6c6f2068656c6c6f2062656e746f212068656c6c6f2068656c6c6f2068656c6c6f2062656e746f212068656c6c6f2068656c6c6f2068656c6c6f2062656e746f21200d581ae0").unwrap();
        assert_eq!(inflate_zlib(&stored, 1 << 20).unwrap(), text);
        let fixed = hex::decode("78dacb48cdc9c957c840229352f34af2155184889300000d581ae0").unwrap();
        assert_eq!(inflate_zlib(&fixed, 1 << 20).unwrap(), text);
        let dynamic = hex::decode("78da5d500912c430087aabe0ffdf500edb9dd9b4358d0a42301882c06ad783d9d1e2e80f0e5a4b1dfd0157ebabc4224dc1cc6d2253273e9af9828fc635384b9187a0459025ce2cd3dd8089b490fa8c6dc7f1175d81d82328d18245fc14d24d3706f66e738ce45094ac737192515faf70fa5284c2bf8ff806a5da12ed27e5d34ebc42eec2f05a352ab907951098a5").unwrap();
        let out = inflate_zlib(&dynamic, 1 << 20).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&out)),
            "252d3bb44eb28cd2f1834514f32998256929b72d80691c0a47f0e87932de6764"
        );
        assert!(inflate_zlib(&dynamic, 100).is_err(), "the bound holds");
        let mut corrupt = fixed.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(inflate_zlib(&corrupt, 1 << 20).is_err());
        assert!(inflate_zlib(&fixed[..10], 1 << 20).is_err());
    }

    /// A blob as the Browser function frames it: magic, length, the zlib
    /// stream, zero padding to a multiple of `pad`.
    fn blob_of(stream: &[u8], pad: usize) -> Vec<u8> {
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&(stream.len() as u64).to_be_bytes());
        blob.extend_from_slice(stream);
        blob.resize(blob.len().div_ceil(pad) * pad, 0);
        blob
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_zip_bomb_from_a_hostile_box_stops_at_the_inflate_bound() {
        // 1 GiB of zeros compresses to about 1 MiB: the client must give up
        // after MAX_INFLATED bytes, not try to hold the gigabyte.
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            std::io::Write::write_all(&mut encoder, &zeros).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        assert!(
            bomb.len() < MAX_BLOB as usize,
            "fits in what a box may send"
        );
        let Err(error) = unpack_blob(&blob_of(&bomb, 4096), 4096) else {
            panic!("a zip bomb unpacked");
        };
        assert!(
            error
                .to_string()
                .contains(&format!("more than {MAX_INFLATED} bytes")),
            "{error}"
        );

        // Just under the bound still unpacks (then fails on its contents,
        // which are not a bundle index): the bound is exact, not a guess.
        let inflated = inflate_zlib(&zlib(&vec![0u8; MAX_INFLATED]), MAX_INFLATED).unwrap();
        assert_eq!(inflated.len(), MAX_INFLATED);
        assert!(inflate_zlib(&zlib(&vec![0u8; MAX_INFLATED + 1]), MAX_INFLATED).is_err());
    }

    #[test]
    fn a_well_formed_bundle_unpacks_and_a_truncated_one_is_an_error() {
        let index = br#"{"url": "http://a/", "entries": [{"url": "http://a/", "type": "text/html", "offset": 0, "length": 5, "refs": []}]}"#;
        let mut container = (index.len() as u32).to_be_bytes().to_vec();
        container.extend_from_slice(index);
        container.extend_from_slice(b"hello");
        let stream = zlib(&container);
        let bundle = unpack_blob(&blob_of(&stream, 512), 512).unwrap();
        assert_eq!(bundle.bodies, b"hello");
        assert_eq!(bundle.bundle_len, HEADER + stream.len());

        let cut = &stream[..stream.len() / 2];
        let Err(error) = unpack_blob(&blob_of(cut, 512), 512) else {
            panic!("a truncated bundle unpacked");
        };
        assert!(error.to_string().contains("truncated"), "{error}");
    }

    #[test]
    fn urls_are_checked_before_anything_is_sent() {
        assert!(check_url("http://127.0.0.1:8080/").is_ok());
        assert!(check_url("HTTPS://example.org").is_ok());
        assert!(check_url("ftp://example.org/").is_err());
        assert!(check_url("http:///path").is_err());
        assert!(check_url("example.org").is_err());
        assert!(check_url("http://a b/").is_err());
    }

    #[test]
    fn the_manifest_gets_the_given_destinations() {
        let m = manifest(&["accept 127.0.0.1:8080".into()]).unwrap();
        assert!(m.contains("destinations = [\"accept 127.0.0.1:8080\"]"));
        assert!(!m.contains("accept *:80"));
        assert_eq!(manifest(&[]).unwrap(), MANIFEST);
    }
}
