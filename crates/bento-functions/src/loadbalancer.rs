//! The LoadBalancer: an onion service that scales across boxes
//! (`functions/loadbalancer/`; see docs/functions/loadbalancer.md).
//!
//! [`start`] stores and invokes the front function on a box and hands it
//! the replica boxes, the replica function and the content; the front
//! starts replicas on those boxes over Tor, publishes one onion service and
//! forwards its streams to them. `start` reports the public address and
//! follows the front's log (replicas starting and stopping) until told to
//! stop, which stops the front cleanly.
//!
//! [`load`] is a load generator through a SOCKS proxy: N streams at a
//! time, again and again for a while, each response checked to be complete
//! (and byte-identical to a file, if one is expected).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bento_client::{ClientError, Connection, Target};
use bytes::Bytes;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::{Console, Error};

/// The front function's source.
pub const FRONT: &str = include_str!("../../../functions/loadbalancer/front.py");
/// The front function's manifest.
pub const FRONT_MANIFEST: &str = include_str!("../../../functions/loadbalancer/front.toml");
/// The replica function's source (the front stores it at the replica boxes).
pub const REPLICA: &str = include_str!("../../../functions/loadbalancer/replica.py");
/// The replica function's manifest.
pub const REPLICA_MANIFEST: &str = include_str!("../../../functions/loadbalancer/replica.toml");

/// The most content the front and its replicas keep (front.py's MAX_CONTENT).
pub const MAX_CONTENT: u64 = 1024 * 1024;
/// The front's wall-clock limit (front.toml), and the margin it keeps at
/// the end to finish its streams and stop its replicas.
pub const FRONT_WALL: Duration = Duration::from_secs(300);
/// See [`FRONT_WALL`].
pub const DRAIN_MARGIN: Duration = Duration::from_secs(30);
/// The page served without `--content`.
const DEFAULT_PAGE: &str = "<!doctype html>\n<title>Bento LoadBalancer</title>\n<p>Served by a replica of a Bento LoadBalancer.</p>\n";
/// The longest line of the front's log `start` accepts (a status line is
/// a few hundred bytes).
const MAX_LOG_LINE: usize = 64 * 1024;
/// How long `load` lets Tor take to open a stream before it tries again
/// on a new circuit (a connected circuit takes well under a second).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// The most one response may be, for `load` (a hostile server cannot make
/// it buffer more).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// A load-balanced service to start.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Boxes to run replicas on, ONION:PORT, in the order they are used.
    pub replica_boxes: Vec<String>,
    /// The file every GET is answered with [`None`: a small page].
    pub content: Option<PathBuf>,
    /// Its Content-Type [`None`: from the file's extension].
    pub content_type: Option<String>,
    /// Streams per replica above which another replica starts.
    pub high: f64,
    /// Streams per replica below which (for `grace`) a replica stops.
    pub low: f64,
    /// How long the load must stay below `low` before a replica stops.
    pub grace: Duration,
    /// How long the service takes new streams.
    pub lifetime: Duration,
    /// Bandwidth the front asks for, KiB/s [`None`: the manifest's].
    pub bandwidth: Option<u64>,
    /// Report the front's log lines as they come (JSON) as results,
    /// instead of the address alone.
    pub json: bool,
}

/// A load to generate.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The service: ONION[:PORT] (port 80 if left out).
    pub address: String,
    /// Requests in flight at once, each on its own Tor circuit.
    pub streams: usize,
    /// How long new requests are started.
    pub duration: Duration,
    /// The bytes every body must be [`None`: only check Content-Length].
    pub expect: Option<PathBuf>,
    /// The path requested.
    pub path: String,
    /// Give up on a request after this long.
    pub timeout: Duration,
}

// start

/// One line of the front's log (functions/loadbalancer/front.py).
#[derive(Debug, Deserialize)]
struct Event {
    event: String,
    #[serde(default)]
    t: f64,
    #[serde(default)]
    replicas: usize,
    #[serde(rename = "box")]
    server: Option<String>,
    onion: Option<String>,
    error: Option<String>,
    took: Option<f64>,
    streams: Option<usize>,
    served: Option<u64>,
    refused: Option<u64>,
    abandoned: Option<u64>,
    cut: Option<u64>,
}

/// A box address as the front's `api.bento_box` takes it: HOST:PORT.
fn check_box(address: &str) -> Result<(), Error> {
    let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/')
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !valid {
        return Err(Error::Request(format!(
            "--replica-box {address:?} is not ONION:PORT (e.g. xyz.onion:7878)"
        )));
    }
    Ok(())
}

fn guess_content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "css" => "text/css",
        "js" => "text/javascript",
        "json" => "application/json",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// The front's manifest, with `bandwidth_kib_per_s` added if asked for
/// (`[limits]` is the manifest's last table, so a line appended is in it).
fn front_manifest(bandwidth: Option<u64>) -> Result<String, Error> {
    let Some(kib) = bandwidth else {
        return Ok(FRONT_MANIFEST.to_owned());
    };
    if kib == 0 {
        return Err(Error::Request(
            "--bandwidth must be at least 1 KiB/s".into(),
        ));
    }
    let last_table = FRONT_MANIFEST
        .lines()
        .rfind(|l| l.trim_start().starts_with('['));
    if last_table != Some("[limits]") {
        return Err(Error::Box(
            "the built-in front manifest does not end with its [limits] table".into(),
        ));
    }
    Ok(format!("{FRONT_MANIFEST}bandwidth_kib_per_s = {kib}\n"))
}

/// The header message the front reads first (front.py's read_config).
fn front_header(args: &StartOptions, content_len: usize, content_type: &str) -> serde_json::Value {
    serde_json::json!({
        "boxes": args.replica_boxes,
        "size": content_len,
        "content_type": content_type,
        "replica": {"source": REPLICA, "manifest": REPLICA_MANIFEST},
        "high": args.high,
        "low": args.low,
        "grace": args.grace.as_secs_f64(),
        "lifetime": args.lifetime.as_secs_f64(),
    })
}

/// Everything `start` checks before contacting a box.
fn check_start(args: &StartOptions) -> Result<(Vec<u8>, String, String), Error> {
    let mut seen = HashSet::new();
    for address in &args.replica_boxes {
        check_box(address)?;
        if !seen.insert(address.as_str()) {
            return Err(Error::Request(format!(
                "{address} is named twice in --replica-box: each replica needs a box of its own"
            )));
        }
    }
    if !(args.high.is_finite() && args.low.is_finite() && args.low >= 0.0 && args.low < args.high) {
        return Err(Error::Request(format!(
            "the watermarks need 0 <= --low < --high (got --low {} --high {}): a replica stops only below --low, and starts only above --high",
            args.low, args.high
        )));
    }
    let most = FRONT_WALL - DRAIN_MARGIN;
    if args.lifetime > most {
        return Err(Error::Request(format!(
            "--lifetime may be at most {} s: the front's wall-clock limit is {} s and it keeps {} s to finish its streams and stop its replicas",
            most.as_secs(),
            FRONT_WALL.as_secs(),
            DRAIN_MARGIN.as_secs()
        )));
    }
    let (content, guessed) = match &args.content {
        Some(path) => {
            let meta = std::fs::metadata(path).map_err(|e| Error::file("read", path, e))?;
            if meta.len() > MAX_CONTENT {
                return Err(Error::Request(format!(
                    "{} is {} bytes; the LoadBalancer serves at most {MAX_CONTENT} bytes (every replica keeps it in memory)",
                    path.display(),
                    meta.len()
                )));
            }
            let data = crate::read_file(path)?;
            (data, guess_content_type(path))
        }
        None => (DEFAULT_PAGE.as_bytes().to_vec(), "text/html; charset=utf-8"),
    };
    let content_type = args
        .content_type
        .clone()
        .unwrap_or_else(|| guessed.to_owned());
    if content_type.is_empty() || content_type.chars().any(|c| c.is_control()) {
        return Err(Error::Request(format!(
            "--content-type {content_type:?} must be a non-empty header value without control characters"
        )));
    }
    let manifest = front_manifest(args.bandwidth)?;
    Ok((content, content_type, manifest))
}

/// One log line, for people, on stderr.
fn describe_event(event: &Event) -> String {
    let server = event.server.as_deref().unwrap_or("-");
    let t = event.t;
    match event.event.as_str() {
        "serving" => format!(
            "[{t:6.1}s] serving at {} with {} replica(s)",
            event.onion.as_deref().unwrap_or("?"),
            event.replicas
        ),
        "replica_started" => format!(
            "[{t:6.1}s] replica started on {server} in {:.1} s; {} replica(s)",
            event.took.unwrap_or_default(),
            event.replicas
        ),
        "replica_failed" => format!(
            "[{t:6.1}s] no replica on {server}: {}; {} replica(s)",
            event.error.as_deref().unwrap_or("?"),
            event.replicas
        ),
        "replica_lost" => format!(
            "[{t:6.1}s] replica on {server} lost: {}; {} replica(s)",
            event.error.as_deref().unwrap_or("?"),
            event.replicas
        ),
        "replica_retired" => format!(
            "[{t:6.1}s] replica on {server} stopped (idle); {} replica(s)",
            event.replicas
        ),
        "status" => format!(
            "[{t:6.1}s] {} stream(s) in progress on {} replica(s); served {}, refused {}, abandoned by the client {}, cut {}",
            event.streams.unwrap_or_default(),
            event.replicas,
            event.served.unwrap_or_default(),
            event.refused.unwrap_or_default(),
            event.abandoned.unwrap_or_default(),
            event.cut.unwrap_or_default()
        ),
        "draining" => format!(
            "[{t:6.1}s] stopping: no new streams; {} in progress finish first",
            event.streams.unwrap_or_default()
        ),
        "stopped" => format!(
            "[{t:6.1}s] stopped; served {}, refused {}, abandoned by the client {}, cut {}",
            event.served.unwrap_or_default(),
            event.refused.unwrap_or_default(),
            event.abandoned.unwrap_or_default(),
            event.cut.unwrap_or_default()
        ),
        other => format!("[{t:6.1}s] {other}"),
    }
}

/// Start the front with `options` on the `target` box and follow its log
/// until it stops. Each message on `stop` is a request to stop: the first
/// stops the front cleanly (it finishes its streams and stops its
/// replicas), the second kills it.
pub async fn start(
    target: &Target,
    options: &StartOptions,
    mut stop: mpsc::UnboundedReceiver<()>,
    console: &dyn Console,
) -> Result<(), Error> {
    let args = options;
    let (content, content_type, manifest) = check_start(args)?;
    let header = front_header(args, content.len(), &content_type);
    console.note(&format!(
        "starting the front on {} with {} replica box(es); {} bytes of {content_type}",
        target.server,
        args.replica_boxes.len(),
        content.len()
    ));
    let (session, mut attachment) = crate::Start {
        filename: "front.py",
        source: FRONT,
        manifest: &manifest,
        entry: "main",
        args: "[]",
    }
    .attach(target)
    .await?;
    let input = attachment.input();
    input.send(Bytes::from(header.to_string())).await?;
    crate::send_all(&input, &content).await?;
    console.note("the front is starting its first replica (this takes a few seconds over Tor)");

    let mut stopping = false;
    let mut text = Vec::new();
    let mut stopped = false;
    let outcome = loop {
        tokio::select! {
            next = attachment.next() => match next {
                Ok(Some(bytes)) => {
                    text.extend_from_slice(&bytes);
                    if text.len() > MAX_LOG_LINE && !text.contains(&b'\n') {
                        break Err(ClientError::Unexpected(format!(
                            "the front sent over {MAX_LOG_LINE} bytes without a line break"
                        )));
                    }
                    while let Some(end) = text.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = text.drain(..=end).collect();
                        let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                        let event: Event = serde_json::from_str(&line).map_err(|e| {
                            Error::Box(format!("the front sent a line that is not its log: {line:?}: {e}"))
                        })?;
                        if args.json {
                            console.out(&line);
                        } else if let ("serving", Some(onion)) = (event.event.as_str(), &event.onion) {
                            console.out(onion);
                        }
                        stopped |= event.event == "stopped";
                        console.note(&describe_event(&event));
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            },
            Some(()) = stop.recv() => {
                if stopping {
                    console.note("killing the front; its replicas end at their own wall-clock limit");
                    let killed = async { Connection::connect(target).await?.kill(&session).await }.await;
                    attachment.close().await;
                    return Err(Error::Function(match killed {
                        Ok(()) => "the front was killed before it stopped cleanly".into(),
                        Err(e) => format!("could not kill the front: {e}"),
                    }));
                }
                stopping = true;
                console.note("stopping: the front finishes the streams in progress and stops its replicas (Ctrl-C again to kill it)");
                input.send(Bytes::from_static(b"stop")).await?;
            }
        }
    };
    attachment.close().await;
    match outcome {
        Ok(()) if stopped => Ok(()),
        Ok(()) => Err(Error::Function(
            "the front ended without its final report".into(),
        )),
        Err(ClientError::Remote { code, message }) => Err(Error::Function(format!(
            "the front failed [{}]: {}",
            code.name(),
            crate::function_error(&message)
        ))),
        Err(other) => Err(Error::Box(format!("lost the front: {other}"))),
    }
}

// ---------------------------------------------------------------------------
// load

/// One finished request.
pub struct Outcome {
    /// When it finished, since the run began.
    pub at: Duration,
    /// From asking to the response's end.
    pub latency: Duration,
    /// The body's length, or why there is no complete response.
    pub result: Result<usize, Failure>,
}

/// Why a request has no complete response.
#[derive(Debug, PartialEq)]
pub enum Failure {
    /// Tor did not reach the service: no stream, so no response at all.
    Unreachable(String),
    /// A stream was opened, but what came back is not the whole response.
    Incomplete(String),
}

impl Failure {
    /// What went wrong.
    pub fn message(&self) -> &str {
        match self {
            Failure::Unreachable(m) | Failure::Incomplete(m) => m,
        }
    }
}

/// `ONION[:PORT]` → (host, port).
fn parse_address(address: &str) -> Result<(String, u16), Error> {
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 =
                port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                    Error::Request(format!("{address:?}: the port must be 1-65535"))
                })?;
            (host, port)
        }
        None => (address, 80),
    };
    if host.is_empty() || host.len() > 255 || host.contains(|c: char| c.is_whitespace() || c == '/')
    {
        return Err(Error::Request(format!(
            "{address:?} is not ONION[:PORT] (e.g. xyz.onion or xyz.onion:80)"
        )));
    }
    Ok((host.to_owned(), port))
}

/// What `load` checks every response against.
struct Check {
    request: Vec<u8>,
    expect: Option<Vec<u8>>,
}

/// Check one response: status 200, a Content-Length, a body that long (and
/// equal to the expected bytes). Returns the body's length.
fn check_response(response: &[u8], check: &Check) -> Result<usize, String> {
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("incomplete: {} bytes and no end of headers", response.len()))?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/") || code != "200" {
        return Err(format!("status {status:?}"));
    }
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .ok_or("no Content-Length")?;
    let body = &response[head_end + 4..];
    if body.len() != length {
        return Err(format!("incomplete: {} of {length} body bytes", body.len()));
    }
    if let Some(expect) = &check.expect
        && body != expect.as_slice()
    {
        return Err(format!(
            "the body ({} bytes) differs from --expect ({} bytes)",
            body.len(),
            expect.len()
        ));
    }
    Ok(length)
}

async fn one_request(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    isolation: &str,
    check: &Check,
) -> Result<usize, Failure> {
    let connect = bento_tor::socks5_connect(proxy, host, port, Some(("bento-lb-load", isolation)));
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| {
            Failure::Unreachable(format!(
                "Tor did not reach {host}:{port} in {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    let incomplete = Failure::Incomplete;
    stream
        .write_all(&check.request)
        .await
        .map_err(|e| incomplete(format!("send: {e}")))?;
    let mut response = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| incomplete(format!("receive after {} bytes: {e}", response.len())))?;
        if n == 0 {
            break;
        }
        if response.len() + n > MAX_RESPONSE {
            return Err(incomplete(format!("response over {MAX_RESPONSE} bytes")));
        }
        response.extend_from_slice(&buf[..n]);
    }
    check_response(&response, check).map_err(incomplete)
}

/// One complete response before the load starts. A freshly published
/// service is not always found at once (its descriptor is still reaching
/// the directories): Tor failures are tried again, on a new circuit, until
/// `limit`; an incomplete answer is an error at once.
async fn warm_up(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    check: &Check,
    limit: Duration,
    console: &dyn Console,
) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    for attempt in 0.. {
        let isolation = format!("warm-up-{attempt}-{}", std::process::id());
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, one_request(proxy, host, port, &isolation, check)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(Failure::Unreachable(e))) if Instant::now() < deadline => {
                console.note(&format!("not reached yet ({e}); trying again"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Err(failure)) => {
                return Err(Error::Box(format!(
                    "the service gave no complete response: {}",
                    failure.message()
                )));
            }
            Err(_) => break,
        }
    }
    Err(Error::Box(format!(
        "the service gave no complete response in {} s",
        limit.as_secs()
    )))
}

/// What a load run saw: every request's outcome.
pub struct LoadRun {
    /// Every finished request, in the order they finished.
    pub outcomes: Vec<Outcome>,
    /// From the first request of the load to the last one's end.
    pub elapsed: Duration,
}

/// Generate load on an onion web service through `target.socks`: keep
/// `options.streams` requests in flight for `options.duration`, each
/// response checked to be complete.
pub async fn load(
    target: &Target,
    options: &LoadOptions,
    console: &dyn Console,
) -> Result<LoadRun, Error> {
    let args = options;
    let socks = target.socks.as_deref().ok_or_else(|| Error::Request(
        "bento lb load reaches the service through Tor: give --socks (a tor SocksPort, e.g. 127.0.0.1:9050)".into(),
    ))?;
    let proxy: SocketAddr = socks
        .parse()
        .map_err(|_| Error::Request(format!("--socks {socks:?} is not IP:PORT")))?;
    let (host, port) = parse_address(&args.address)?;
    if args.streams == 0 || args.streams > 256 {
        return Err(Error::Request("--streams must be 1-256".into()));
    }
    if !args.path.starts_with('/')
        || args
            .path
            .contains(|c: char| c.is_whitespace() || c.is_control())
    {
        return Err(Error::Request(format!(
            "--path {:?} must start with / and have no spaces",
            args.path
        )));
    }
    let expect = match &args.expect {
        Some(path) => Some(crate::read_file(path)?),
        None => None,
    };
    let check = Arc::new(Check {
        request: format!("GET {} HTTP/1.0\r\nHost: {host}\r\n\r\n", args.path).into_bytes(),
        expect,
    });
    // One request first, not counted: it fetches the service's descriptor
    // once, instead of every worker's circuit asking for it at the same
    // moment (which a small or busy Tor network answers slowly).
    console.note(&format!(
        "reaching {host}:{port} once before the load starts"
    ));
    warm_up(proxy, &host, port, &check, args.timeout, console).await?;
    console.note(&format!(
        "{} stream(s) at a time to {host}:{port} for {} s",
        args.streams,
        args.duration.as_secs()
    ));
    let began = Instant::now();
    let until = began + args.duration;
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.streams {
        let (sender, check, host) = (sender.clone(), check.clone(), host.clone());
        let timeout = args.timeout;
        workers.spawn(async move {
            // Each worker is its own client: its own circuit to the service,
            // and a new one after the service could not be reached.
            let mut circuit = 0;
            while Instant::now() < until {
                let isolation = format!("worker-{worker}-{circuit}-{}", std::process::id());
                let asked = Instant::now();
                let result = tokio::time::timeout(
                    timeout,
                    one_request(proxy, &host, port, &isolation, &check),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::Incomplete(format!(
                        "no complete response in {} s",
                        timeout.as_secs()
                    )))
                });
                let done = Instant::now();
                let failed = result.is_err();
                if matches!(result, Err(Failure::Unreachable(_))) {
                    circuit += 1;
                }
                let _ = sender.send(Outcome {
                    at: done - began,
                    latency: done - asked,
                    result,
                });
                if failed {
                    // Not a tight loop against a service that refuses.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
    drop(sender);
    let mut outcomes = Vec::new();
    let mut last_report = Instant::now();
    while let Some(outcome) = receiver.recv().await {
        outcomes.push(outcome);
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let ok = outcomes.iter().filter(|o| o.result.is_ok()).count();
            console.note(&format!(
                "[{:5.1}s] {ok} complete, {} failed",
                began.elapsed().as_secs_f64(),
                outcomes.len() - ok
            ));
        }
    }
    while workers.join_next().await.is_some() {}
    let elapsed = began.elapsed();
    Ok(LoadRun { outcomes, elapsed })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::python_source;

    #[test]
    fn the_limits_agree_with_front_py_and_its_manifest() {
        assert_eq!(python_source::int(FRONT, "MAX_CONTENT"), MAX_CONTENT);
        assert_eq!(
            python_source::manifest_int(FRONT_MANIFEST, "wall_ms"),
            FRONT_WALL.as_millis() as u64
        );
        // The header keys the client sends, as front.py reads them.
        for key in [
            "boxes",
            "size",
            "content_type",
            "replica",
            "high",
            "low",
            "grace",
            "lifetime",
        ] {
            let read = FRONT.contains(&format!("[\"{key}\"]"))
                || FRONT.contains(&format!(".get(\"{key}\""));
            assert!(read, "front.py does not read {key}");
        }
    }

    fn check(expect: Option<&[u8]>) -> Check {
        Check {
            request: Vec::new(),
            expect: expect.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn a_response_is_complete_only_with_its_whole_body() {
        let whole = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(check_response(whole, &check(None)), Ok(5));
        assert_eq!(check_response(whole, &check(Some(b"hello"))), Ok(5));
        assert!(check_response(whole, &check(Some(b"world"))).is_err());
        let short = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhel";
        assert_eq!(
            check_response(short, &check(None)),
            Err("incomplete: 3 of 5 body bytes".to_owned())
        );
        assert!(check_response(b"HTTP/1.0 200 OK\r\nContent-", &check(None)).is_err());
        assert!(
            check_response(
                b"HTTP/1.0 503 Busy\r\nContent-Length: 0\r\n\r\n",
                &check(None)
            )
            .is_err()
        );
        assert!(check_response(b"HTTP/1.0 200 OK\r\n\r\nhello", &check(None)).is_err());
    }

    #[test]
    fn addresses_and_boxes_are_checked_before_anything_is_sent() {
        assert_eq!(
            parse_address("abc.onion").unwrap(),
            ("abc.onion".into(), 80)
        );
        assert_eq!(
            parse_address("abc.onion:8080").unwrap(),
            ("abc.onion".into(), 8080)
        );
        assert!(parse_address("abc.onion:0").is_err());
        assert!(parse_address("abc.onion:http").is_err());
        assert!(parse_address(":80").is_err());
        assert!(check_box("abc.onion:7878").is_ok());
        assert!(check_box("abc.onion").is_err());
        assert!(check_box("abc.onion:99999").is_err());
        assert!(check_box("a b.onion:7878").is_err());
    }

    #[test]
    fn the_front_manifest_gets_a_bandwidth_only_when_asked() {
        assert_eq!(front_manifest(None).unwrap(), FRONT_MANIFEST);
        let m = front_manifest(Some(4096)).unwrap();
        assert!(m.ends_with("bandwidth_kib_per_s = 4096\n"));
        assert!(front_manifest(Some(0)).is_err());
    }
}
