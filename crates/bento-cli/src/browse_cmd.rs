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

// ---------------------------------------------------------------------------
// zlib inflate (RFC 1950/1951): the Python function compresses with zlib,
// and the client has no compression library. Bounded output; every length,
// distance and code is checked, so a hostile box gets an error, not a panic.

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u32,
    count: u32,
}

impl Bits<'_> {
    fn bits(&mut self, n: u32) -> anyhow::Result<u32> {
        while self.count < n {
            let byte = *self
                .data
                .get(self.pos)
                .context("the compressed bundle is truncated")?;
            self.pos += 1;
            self.buf |= u32::from(byte) << self.count;
            self.count += 8;
        }
        let value = self.buf & ((1u32 << n) - 1);
        self.buf = if n == 32 { 0 } else { self.buf >> n };
        self.count -= n;
        Ok(value)
    }

    fn align(&mut self) {
        self.buf = 0;
        self.count = 0;
    }
}

struct Huffman {
    counts: [u16; 16],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> anyhow::Result<Self> {
        let mut counts = [0u16; 16];
        for &len in lengths {
            counts[usize::from(len)] += 1;
        }
        counts[0] = 0;
        let mut left: i32 = 1;
        for &count in &counts[1..] {
            left = (left << 1) - i32::from(count);
            if left < 0 {
                bail!("the compressed bundle has an invalid Huffman code");
            }
        }
        let mut offsets = [0u16; 16];
        for len in 1..15 {
            offsets[len + 1] = offsets[len] + counts[len];
        }
        let mut symbols = vec![0u16; lengths.len()];
        for (symbol, &len) in lengths.iter().enumerate() {
            if len != 0 {
                let slot = &mut offsets[usize::from(len)];
                symbols[usize::from(*slot)] = symbol as u16;
                *slot += 1;
            }
        }
        Ok(Self { counts, symbols })
    }

    fn decode(&self, bits: &mut Bits<'_>) -> anyhow::Result<usize> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= bits.bits(1)? as i32;
            let count = i32::from(self.counts[len]);
            if code - first < count {
                let at = usize::try_from(index + code - first).unwrap_or(usize::MAX);
                return self
                    .symbols
                    .get(at)
                    .map(|&s| usize::from(s))
                    .context("the compressed bundle has an invalid code");
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        bail!("the compressed bundle has an invalid code")
    }
}

const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
const CODE_LENGTH_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

fn inflate_block(
    bits: &mut Bits<'_>,
    lit: &Huffman,
    dist: &Huffman,
    out: &mut Vec<u8>,
    max: usize,
) -> anyhow::Result<()> {
    loop {
        let symbol = lit.decode(bits)?;
        if symbol < 256 {
            if out.len() >= max {
                bail!("the bundle inflates to more than {max} bytes");
            }
            out.push(symbol as u8);
        } else if symbol == 256 {
            return Ok(());
        } else {
            let i = symbol - 257;
            let (Some(&base), Some(&extra)) = (LENGTH_BASE.get(i), LENGTH_EXTRA.get(i)) else {
                bail!("the compressed bundle has an invalid length code");
            };
            let length = usize::from(base) + bits.bits(u32::from(extra))? as usize;
            let d = dist.decode(bits)?;
            let (Some(&base), Some(&extra)) = (DIST_BASE.get(d), DIST_EXTRA.get(d)) else {
                bail!("the compressed bundle has an invalid distance code");
            };
            let distance = usize::from(base) + bits.bits(u32::from(extra))? as usize;
            if distance > out.len() {
                bail!("the compressed bundle refers before its start");
            }
            if out.len() + length > max {
                bail!("the bundle inflates to more than {max} bytes");
            }
            let from = out.len() - distance;
            for k in 0..length {
                let byte = out[from + k];
                out.push(byte);
            }
        }
    }
}

/// Inflate a zlib stream (checking its Adler-32) into at most `max` bytes.
fn inflate_zlib(data: &[u8], max: usize) -> anyhow::Result<Vec<u8>> {
    let (Some(&cmf), Some(&flg)) = (data.first(), data.get(1)) else {
        bail!("the compressed bundle is truncated");
    };
    if cmf & 0x0f != 8 || (u16::from(cmf) << 8 | u16::from(flg)) % 31 != 0 || flg & 0x20 != 0 {
        bail!("the bundle is not a zlib stream");
    }
    let mut bits = Bits {
        data,
        pos: 2,
        buf: 0,
        count: 0,
    };
    let mut out = Vec::new();
    loop {
        let last = bits.bits(1)? == 1;
        match bits.bits(2)? {
            0 => {
                bits.align();
                let header = data
                    .get(bits.pos..bits.pos + 4)
                    .context("the compressed bundle is truncated")?;
                let len = usize::from(u16::from_le_bytes([header[0], header[1]]));
                let nlen = u16::from_le_bytes([header[2], header[3]]);
                if len as u16 != !nlen {
                    bail!("the compressed bundle has a bad stored block");
                }
                bits.pos += 4;
                let block = data
                    .get(bits.pos..bits.pos + len)
                    .context("the compressed bundle is truncated")?;
                if out.len() + len > max {
                    bail!("the bundle inflates to more than {max} bytes");
                }
                out.extend_from_slice(block);
                bits.pos += len;
            }
            1 => {
                let mut lengths = [0u8; 288];
                lengths[..144].fill(8);
                lengths[144..256].fill(9);
                lengths[256..280].fill(7);
                lengths[280..].fill(8);
                let lit = Huffman::new(&lengths)?;
                let dist = Huffman::new(&[5u8; 30])?;
                inflate_block(&mut bits, &lit, &dist, &mut out, max)?;
            }
            2 => {
                let nlen = bits.bits(5)? as usize + 257;
                let ndist = bits.bits(5)? as usize + 1;
                let ncode = bits.bits(4)? as usize + 4;
                if nlen > 286 || ndist > 30 {
                    bail!("the compressed bundle has a bad dynamic block");
                }
                let mut code_lengths = [0u8; 19];
                for &slot in &CODE_LENGTH_ORDER[..ncode] {
                    code_lengths[slot] = bits.bits(3)? as u8;
                }
                let code = Huffman::new(&code_lengths)?;
                let mut lengths = vec![0u8; nlen + ndist];
                let mut i = 0;
                while i < nlen + ndist {
                    let symbol = code.decode(&mut bits)?;
                    let (value, repeat) = match symbol {
                        0..=15 => (symbol as u8, 1),
                        16 => {
                            let Some(&previous) = i.checked_sub(1).and_then(|p| lengths.get(p))
                            else {
                                bail!("the compressed bundle repeats a length before the first");
                            };
                            (previous, 3 + bits.bits(2)? as usize)
                        }
                        17 => (0, 3 + bits.bits(3)? as usize),
                        _ => (0, 11 + bits.bits(7)? as usize),
                    };
                    if i + repeat > nlen + ndist {
                        bail!("the compressed bundle has too many code lengths");
                    }
                    lengths[i..i + repeat].fill(value);
                    i += repeat;
                }
                if lengths[256] == 0 {
                    bail!("the compressed bundle has no end-of-block code");
                }
                let lit = Huffman::new(&lengths[..nlen])?;
                let dist = Huffman::new(&lengths[nlen..])?;
                inflate_block(&mut bits, &lit, &dist, &mut out, max)?;
            }
            _ => bail!("the compressed bundle has an invalid block type"),
        }
        if last {
            break;
        }
    }
    bits.align();
    let trailer = data
        .get(bits.pos..bits.pos + 4)
        .context("the compressed bundle has no checksum")?;
    let expected = u32::from_be_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in out.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    if (b << 16 | a) != expected {
        bail!("the bundle's checksum does not match (corrupted in transit?)");
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
