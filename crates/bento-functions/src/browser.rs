//! The Browser: fetch a page and its resources at a box, padded to a
//! multiple of a pad size so its size tells an observer little, and unpack
//! it for offline viewing (`functions/browser/`; see
//! docs/functions/browser.md).
//!
//! The blob the function sends (see functions/browser/browser.py):
//! `b"BNTOBRW1"`, a u64 (big-endian) length `L`, `L` bytes of a zlib stream,
//! zero bytes up to the next multiple of the pad. The zlib stream holds a
//! u32 length `J`, `J` bytes of a JSON index, then every entry's bytes.
//!
//! With a cover flow ([`BrowseOptions::cover`]) the Browser runs inside the
//! Cover function ([`crate::cover`]): see [`covered_source`].

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bento_client::Target;
use flate2::{Decompress, FlushDecompress, Status};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::cover::{self, FlowSpec};
use crate::{Console, Error};

/// The function's source, stored at the box by every browse.
pub const SOURCE: &str = include_str!("../../../functions/browser/browser.py");
/// The function's manifest; [`manifest`] sets its destinations.
pub const MANIFEST: &str = include_str!("../../../functions/browser/browser.toml");
/// What the function's own errors start with in a traceback's last line.
pub(crate) const ERROR_PREFIX: &str = "BrowseError: ";

const MAGIC: &[u8; 8] = b"BNTOBRW1";
const HEADER: usize = 16;
/// The largest blob the function sends (its output buffer): the largest pad.
pub const MAX_BLOB: u64 = 4096 * 1024;
/// Most resources the function will fetch for one page.
pub const MAX_RESOURCES: u32 = 256;
/// Most bytes of page and resources together the function will fetch.
pub const MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Most bytes the client inflates (a box cannot make it write more).
const MAX_INFLATED: usize = 20 * 1024 * 1024;

/// Whether `url` is an http(s) URL with a host (the box checks it fully).
fn check_url(url: &str) -> Result<(), Error> {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"));
    let Some(rest) = rest else {
        return Err(Error::Request(format!(
            "{url:?} is not an http:// or https:// URL"
        )));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(Error::Request(format!("{url:?} has no host")));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Request(format!(
            "{url:?} contains spaces or control characters"
        )));
    }
    Ok(())
}

/// The manifest with its `destinations` line replaced, if rules are given.
pub fn manifest(destinations: &[String]) -> Result<String, Error> {
    if destinations.is_empty() {
        return Ok(MANIFEST.to_owned());
    }
    let rules = serde_json::to_string(destinations).map_err(|e| Error::Request(e.to_string()))?;
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
        return Err(Error::Box(
            "the built-in manifest has no destinations line".into(),
        ));
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
fn unpack_blob(blob: &[u8], pad: u64) -> Result<Bundle, Error> {
    let pad_usize = usize::try_from(pad).map_err(|_| Error::Request("pad too large".into()))?;
    if !blob.len().is_multiple_of(pad_usize) {
        return Err(Error::Box(format!(
            "the box sent {} bytes, which is not a multiple of the pad ({pad} bytes)",
            blob.len()
        )));
    }
    if blob.len() < HEADER || &blob[..8] != MAGIC {
        return Err(Error::Box(
            "the box's answer is not a Browser bundle (wrong magic)".into(),
        ));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&blob[8..16]);
    let len = usize::try_from(u64::from_be_bytes(len_bytes))
        .map_err(|_| Error::Box("the bundle's length header is too large".into()))?;
    let end = HEADER
        .checked_add(len)
        .filter(|&end| end <= blob.len())
        .ok_or_else(|| Error::Box("the bundle's length header exceeds what the box sent".into()))?;
    // Exactly the padding the function adds: less than one pad, all zero.
    if blob.len() - end >= pad_usize {
        return Err(Error::Box(
            "the box sent more than one pad of padding".into(),
        ));
    }
    if blob[end..].iter().any(|&b| b != 0) {
        return Err(Error::Box("the padding is not all zero bytes".into()));
    }
    let container = inflate_zlib(&blob[HEADER..end], MAX_INFLATED)?;
    if container.len() < 4 {
        return Err(Error::Box("the bundle is truncated".into()));
    }
    let mut j = [0u8; 4];
    j.copy_from_slice(&container[..4]);
    let index_end = 4usize
        .checked_add(u32::from_be_bytes(j) as usize)
        .filter(|&e| e <= container.len())
        .ok_or_else(|| Error::Box("the bundle's index length is wrong".into()))?;
    let index: Index = serde_json::from_slice(&container[4..index_end])
        .map_err(|e| Error::Box(format!("the bundle's index: {e}")))?;
    let bodies = container[index_end..].to_vec();
    if index.entries.is_empty() {
        return Err(Error::Box("the bundle holds no page".into()));
    }
    for entry in &index.entries {
        if entry
            .offset
            .checked_add(entry.length)
            .is_none_or(|e| e > bodies.len())
        {
            return Err(Error::Box(format!(
                "the bundle's entry for {} lies outside it",
                entry.url
            )));
        }
        let mut last = 0;
        for &(start, end, target) in &entry.refs {
            if start < last || end < start || end > entry.length || target >= index.entries.len() {
                return Err(Error::Box(format!(
                    "the bundle's references of {} are inconsistent",
                    entry.url
                )));
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

/// The Browser's own error (`BrowseError: …`) or the box's, as the
/// client's error.
fn failure(error: Error) -> Error {
    match error {
        Error::Client(error) => match crate::raised_by_function(&error) {
            Some(message) => Error::Function(format!("the box could not browse: {message}")),
            None => Error::Client(error),
        },
        other => other,
    }
}

/// What to browse and how.
#[derive(Debug, Clone)]
pub struct BrowseOptions {
    /// The page to fetch (at the box): an http:// or https:// URL.
    pub url: String,
    /// Pad the transfer up to the next multiple of this many bytes.
    pub pad: u64,
    /// Directory to unpack into (created; must be empty if it exists).
    pub out: PathBuf,
    /// Most resources to fetch besides the page.
    pub max_resources: u32,
    /// Most bytes of page and resources together, before compression.
    pub max_bytes: u64,
    /// Destination rules replacing the manifest's (none: keep them).
    pub destinations: Vec<String>,
    /// Carry the request and the page inside a cover flow.
    pub cover: Option<CoverFlow>,
    /// Shape the session against traffic analysis with this defense (the
    /// box shapes the page's way, this client pads the request's way), as
    /// `bento run --defense` does.
    pub defense: Option<bento_client::Defense>,
}

/// A cover flow around a browse.
#[derive(Debug, Clone)]
pub struct CoverFlow {
    /// Cells per second, each way.
    pub rate: f64,
    /// Bytes per cell.
    pub cell_size: u64,
    /// How long the flow lasts.
    pub duration: Duration,
    /// Where to write the flow's per-second CSV (`bento cover --report`'s columns).
    pub report: Option<PathBuf>,
}

impl BrowseOptions {
    /// Check everything that can be checked before anything is sent.
    pub fn check(&self) -> Result<(), Error> {
        check_url(&self.url)?;
        if self.pad == 0 || self.pad > MAX_BLOB {
            return Err(Error::Request(format!(
                "--pad must be from 1 byte to {MAX_BLOB} bytes (4MiB), not {}",
                self.pad
            )));
        }
        if self.max_resources > MAX_RESOURCES {
            return Err(Error::Request(format!(
                "--max-resources may be at most {MAX_RESOURCES}"
            )));
        }
        if self.max_bytes > MAX_BYTES {
            return Err(Error::Request(format!(
                "--max-bytes may be at most {MAX_BYTES} bytes (16MiB)"
            )));
        }
        if self.cover.is_some() && self.defense.is_some() {
            return Err(Error::Request(
                "--defense and --cover-rate cannot be combined: a cover flow is shaped by its own rate"
                    .into(),
            ));
        }
        if self.cover.is_some() && self.call().len() > cover::MAX_REQUEST {
            return Err(Error::Request(format!(
                "the request is {} bytes; inside a cover flow it may be at most {} (a shorter URL)",
                self.call().len(),
                cover::MAX_REQUEST
            )));
        }
        if let Ok(mut entries) = std::fs::read_dir(&self.out)
            && entries.next().is_some()
        {
            return Err(Error::Request(format!(
                "--out {} exists and is not empty",
                self.out.display()
            )));
        }
        Ok(())
    }

    /// The function's arguments, `[url, pad, max_resources, max_bytes]`.
    fn call(&self) -> String {
        serde_json::json!([self.url, self.pad, self.max_resources, self.max_bytes]).to_string()
    }
}

/// Browse: fetch the page at the box (inside a cover flow if asked),
/// unpack it under `options.out`, and list what was saved as result lines.
pub async fn run(
    target: &Target,
    options: &BrowseOptions,
    console: &dyn Console,
) -> Result<(), Error> {
    options.check()?;
    let manifest = manifest(&options.destinations)?;
    let (blob, cover) = match &options.cover {
        Some(flow) => {
            let spec = FlowSpec::new(flow.rate, flow.cell_size, flow.duration)
                .map_err(|e| Error::Request(format!("--cover-*: {e}")))?;
            if spec.capacity() < options.pad + 1024 {
                return Err(Error::Request(format!(
                    "the cover flow ({} cells of {} B) carries {} bytes, less than one {}-byte pad \
                     and the request: raise --cover-rate, --cover-cell-size or --cover-duration, or lower --pad",
                    spec.cells,
                    spec.cell,
                    spec.capacity(),
                    options.pad
                )));
            }
            let (blob, line) = fetch_covered(target, options, flow, &manifest, spec, console)
                .await
                .map_err(failure)?;
            (blob, Some(line))
        }
        None => (
            fetch(target, options, &manifest).await.map_err(failure)?,
            None,
        ),
    };
    let bundle = unpack_blob(&blob, options.pad)?;
    let saved = save(&bundle, &options.out)?;
    report(options, &bundle, &saved, blob.len(), console);
    if let Some(cover) = cover {
        console.out(&cover);
    }
    Ok(())
}

/// Store the function, invoke it, read its whole output.
async fn fetch(target: &Target, options: &BrowseOptions, manifest: &str) -> Result<Vec<u8>, Error> {
    let (_, mut attachment) = crate::Start {
        filename: "browser.py",
        source: SOURCE,
        manifest,
        entry: "main",
        args: &options.call(),
    }
    .attach_shaped(target, options.defense, crate::PadOwn::Yes)
    .await?;
    let mut blob = Vec::new();
    let result = loop {
        match attachment.next().await {
            Ok(Some(data)) => {
                if blob.len() + data.len() > MAX_BLOB as usize {
                    break Err(Error::Box(format!(
                        "unexpected reply from the box: the box sent more than {MAX_BLOB} bytes"
                    )));
                }
                blob.extend_from_slice(&data);
            }
            Ok(None) => break Ok(blob),
            Err(e) => break Err(e.into()),
        }
    };
    attachment.close().await;
    result
}

/// The source of the Browser inside a cover flow: the Browser's source,
/// then the Cover's, stored as one function whose entry is the Cover's
/// `browse` (which calls the Browser's `bundle`).
///
/// The two are one Python module at the box, so order matters: cover.py's
/// definitions come last, and its `main` (the echo) replaces the Browser's;
/// `browse` checks that `bundle` is there. The test
/// `the_composed_browser_in_a_cover_flow_has_both_halves_and_only_main_is_replaced`
/// holds this.
pub fn covered_source() -> String {
    compose(&[
        ("functions/browser/browser.py", SOURCE),
        ("functions/cover/cover.py", cover::SOURCE),
    ])
}

/// One Python module from several functions' sources, in order, each
/// after a comment naming it (so a traceback's line leads to its part).
fn compose(parts: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, source) in parts {
        let _ = writeln!(out, "# ---- {name} ----");
        out.push_str(source);
        if !source.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The entry of the composed function (defined in cover.py).
const COVERED_ENTRY: &str = "browse";

/// Browse inside a cover flow (see [`covered_source`]); the request rides
/// in the client's first cells, the blob in the box's. Returns the blob
/// and a line about the flow.
async fn fetch_covered(
    target: &Target,
    options: &BrowseOptions,
    cover_flow: &CoverFlow,
    manifest: &str,
    spec: FlowSpec,
    console: &dyn Console,
) -> Result<(Vec<u8>, String), Error> {
    let source = covered_source();
    let manifest = cover_manifest(manifest, &spec)?;
    let request = options.call();
    console.note(&format!(
        "browse: inside a cover flow of {}",
        cover::describe_spec(&spec)
    ));
    let flow = cover::Flow {
        filename: "browser_cover.py",
        source: &source,
        manifest: &manifest,
        entry: COVERED_ENTRY,
        spec,
        message: Some(request.as_bytes()),
        max_message: MAX_BLOB as usize,
        interval: Duration::from_secs(1),
    };
    let report = cover::run_flow(target, &flow, console)
        .await
        .map_err(|e| match e {
            Error::Client(e) => cover::unpaced(e),
            other => other,
        })?;
    if let Some(path) = &cover_flow.report
        && let Err(e) = std::fs::write(path, report.csv())
    {
        console.note(&format!("browse: cannot write {}: {e}", path.display()));
    }
    let total = report.total();
    report.ended?;
    let [blob] = <[Vec<u8>; 1]>::try_from(report.messages)
        .map_err(|m| Error::Box(format!("the box sent {} messages, not one page", m.len())))?;
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
    Ok((blob, line))
}

/// The Browser's manifest (destinations already set) for the composed
/// function: `time` added, the wall-clock limit of the flow (the fetch
/// happens inside it), CPU time for the fetch plus the flow.
fn cover_manifest(manifest: &str, spec: &FlowSpec) -> Result<String, Error> {
    let limits = |key: &str| -> Result<u64, Error> {
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
            .ok_or_else(|| Error::Box(format!("the built-in manifest has no {key}")))
    };
    let cpu = limits("cpu_ms")? + spec.cpu_ms();
    // The fetches and the flow share one bucket; the flow's figure already
    // has a quarter to spare, and the Browser's 1024 KiB/s is plenty for
    // both at the rates one would use for a page.
    let bandwidth = limits("bandwidth_kib_per_s")?.max(spec.bandwidth_kib_per_s());
    cover::set_manifest_keys(
        manifest,
        &[
            ("capabilities", "[\"http\", \"time\"]".to_owned()),
            ("wall_ms", spec.wall_ms().to_string()),
            ("cpu_ms", cpu.to_string()),
            ("bandwidth_kib_per_s", bandwidth.to_string()),
        ],
    )
}

/// One saved file: its name, size and where it came from.
struct Saved {
    name: String,
    bytes: usize,
    url: String,
}

/// Write every entry under `out`, references rewritten to the local names.
fn save(bundle: &Bundle, out: &Path) -> Result<Vec<Saved>, Error> {
    let names = local_names(&bundle.index);
    let res = out.join("res");
    std::fs::create_dir_all(&res).map_err(|e| Error::file("create", &res, e))?;
    let mut saved = Vec::new();
    for (entry, name) in bundle.index.entries.iter().zip(&names) {
        let body = &bundle.bodies[entry.offset..entry.offset + entry.length];
        let data = rewrite(body, &entry.refs, name, &names);
        let path = out.join(name);
        std::fs::write(&path, &data).map_err(|e| Error::file("write", &path, e))?;
        saved.push(Saved {
            name: name.clone(),
            bytes: data.len(),
            url: entry.url.clone(),
        });
    }
    Ok(saved)
}

fn report(
    options: &BrowseOptions,
    bundle: &Bundle,
    saved: &[Saved],
    transferred: usize,
    console: &dyn Console,
) {
    console.out(&format!(
        "{}: {} files from {} into {}",
        options.url,
        saved.len(),
        bundle.index.url,
        options.out.display()
    ));
    for file in saved {
        console.out(&format!(
            "  {:<28} {:>9} B  {}",
            file.name, file.bytes, file.url
        ));
    }
    for skipped in &bundle.index.skipped {
        console.out(&format!("  skipped {}: {}", skipped.url, skipped.reason));
    }
    console.out(&format!(
        "transferred {transferred} bytes = {} x {} B pad (bundle {} B, padding {} B)",
        transferred as u64 / options.pad.max(1),
        options.pad,
        bundle.bundle_len,
        transferred - bundle.bundle_len
    ));
    console.out(&format!(
        "open {}",
        options.out.join("index.html").display()
    ));
}

/// Inflate a zlib stream (its Adler-32 checked) into at most `max` bytes.
///
/// The output grows only as the stream really produces bytes, and never
/// past `max + 1`: a hostile box's zip bomb costs the client at most `max`
/// bytes of memory, then an error.
fn inflate_zlib(data: &[u8], max: usize) -> Result<Vec<u8>, Error> {
    const STEP: usize = 64 * 1024;
    let limit = max.saturating_add(1);
    let mut inflater = Decompress::new(true);
    let mut out = Vec::new();
    loop {
        if out.len() >= limit {
            return Err(Error::Box(format!(
                "the bundle inflates to more than {max} bytes"
            )));
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
            .map_err(|e| Error::Box(format!("the compressed bundle is corrupt: {e}")))?;
        if status == Status::StreamEnd {
            break;
        }
        // No input taken and no output made although there was room: the
        // stream stops before its end.
        if inflater.total_in() == read && out.len() == written {
            return Err(Error::Box("the compressed bundle is truncated".into()));
        }
    }
    if out.len() > max {
        return Err(Error::Box(format!(
            "the bundle inflates to more than {max} bytes"
        )));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::python_source;

    #[test]
    fn the_bundle_format_and_limits_agree_with_browser_py() {
        assert_eq!(python_source::bytes(SOURCE, "MAGIC"), MAGIC);
        assert_eq!(python_source::int(SOURCE, "HEADER"), HEADER as u64);
        assert_eq!(python_source::int(SOURCE, "MAX_BLOB"), MAX_BLOB);
        assert_eq!(
            python_source::int(SOURCE, "MAX_RESOURCES"),
            u64::from(MAX_RESOURCES)
        );
        assert_eq!(python_source::int(SOURCE, "MAX_BYTES"), MAX_BYTES);
        // The blob is sent whole, so the largest must fit the output buffer.
        assert_eq!(
            python_source::manifest_int(MANIFEST, "output_buffer_kib") * 1024,
            MAX_BLOB
        );
        assert!(SOURCE.contains("class BrowseError"));
        // The client inflates a little more than the function may fetch.
        assert!(MAX_INFLATED as u64 > MAX_BYTES);
    }

    /// Top-level `def`/`class` names of a Python source.
    fn top_level_names(source: &str) -> HashSet<&str> {
        source
            .lines()
            .filter_map(|l| l.strip_prefix("def ").or_else(|| l.strip_prefix("class ")))
            .filter_map(|l| l.split(['(', ':']).next())
            .collect()
    }

    #[test]
    fn the_composed_browser_in_a_cover_flow_has_both_halves_and_only_main_is_replaced() {
        let composed = covered_source();
        let browser_at = composed.find(SOURCE).unwrap();
        let cover_at = composed.find(cover::SOURCE).unwrap();
        assert!(
            browser_at < cover_at,
            "cover.py's browse needs bundle defined first"
        );
        let browser = top_level_names(SOURCE);
        let cover = top_level_names(cover::SOURCE);
        assert!(browser.contains("bundle"));
        assert!(cover.contains(COVERED_ENTRY));
        // The Cover's entry looks the Browser's `bundle` up by name.
        assert!(cover::SOURCE.contains("\"bundle\" not in globals()"));
        let shadowed: HashSet<&str> = browser.intersection(&cover).copied().collect();
        assert_eq!(
            shadowed,
            HashSet::from(["main"]),
            "a name defined in both halves"
        );
        // Each part is marked, so a traceback's line number can be placed.
        assert!(composed.starts_with("# ---- functions/browser/browser.py ----\n"));
        assert!(composed.contains("\n# ---- functions/cover/cover.py ----\n"));
    }

    #[test]
    fn a_request_too_long_for_the_cover_flow_is_refused_before_anything_is_sent() {
        let dir = tempfile_dir();
        let options = |url: String| BrowseOptions {
            url,
            pad: 4096,
            out: dir.clone(),
            max_resources: 0,
            max_bytes: 0,
            destinations: Vec::new(),
            cover: Some(CoverFlow {
                rate: 10.0,
                cell_size: 512,
                duration: Duration::from_secs(10),
                report: None,
            }),
            defense: None,
        };
        let long = format!("http://example.org/{}", "a".repeat(cover::MAX_REQUEST));
        let Err(Error::Request(message)) = options(long.clone()).check() else {
            panic!("a {}-byte URL was accepted for a cover flow", long.len());
        };
        assert!(message.contains("at most 65536"), "{message}");
        assert!(options("http://example.org/".into()).check().is_ok());
        // Without a cover flow the request is not read from cells.
        let plain = BrowseOptions {
            cover: None,
            ..options(long)
        };
        assert!(plain.check().is_ok());
    }

    #[test]
    fn a_defense_inside_a_cover_flow_is_refused_before_anything_is_sent() {
        let options = BrowseOptions {
            url: "http://example.org/".into(),
            pad: 4096,
            out: tempfile_dir(),
            max_resources: 0,
            max_bytes: 0,
            destinations: Vec::new(),
            cover: Some(CoverFlow {
                rate: 10.0,
                cell_size: 512,
                duration: Duration::from_secs(10),
                report: None,
            }),
            defense: Some(bento_client::Defense::Front),
        };
        let Err(Error::Request(message)) = options.check() else {
            panic!("a defense inside a cover flow was accepted");
        };
        assert!(message.contains("--defense"), "{message}");
        let uncovered = BrowseOptions {
            cover: None,
            ..options
        };
        assert!(uncovered.check().is_ok());
    }

    /// A directory that does not exist (so `--out` is acceptable).
    fn tempfile_dir() -> PathBuf {
        std::env::temp_dir().join(format!("bento-functions-test-{}-none", std::process::id()))
    }

    #[test]
    fn the_covered_manifest_adds_time_and_the_flows_limits() {
        let spec = FlowSpec::new(10.0, 512, Duration::from_secs(10)).unwrap();
        let m = cover_manifest(MANIFEST, &spec).unwrap();
        assert!(m.contains("capabilities = [\"http\", \"time\"]\n"), "{m}");
        assert!(
            m.contains(&format!("wall_ms = {}\n", spec.wall_ms())),
            "{m}"
        );
        assert!(
            m.contains(&format!("cpu_ms = {}\n", 10_000 + spec.cpu_ms())),
            "{m}"
        );
        assert!(m.contains("bandwidth_kib_per_s = 1024\n"), "{m}");
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
