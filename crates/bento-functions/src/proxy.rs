//! The Proxy: a local HTTP proxy whose requests the caching Proxy
//! function (`functions/proxy/`) fetches at a box, answering repeated
//! requests from its bounded cache (docs/functions/proxy.md).
//!
//! [`run`] stores the function, invokes it once and keeps its session;
//! every request a local client (a browser, curl) sends is parsed here and
//! passed to the function on a service channel of its own, as one line of
//! JSON; the function answers with one line of JSON (status, headers,
//! length) and the body, which is relayed as an HTTP/1.1 response. When the
//! instance ends (its lifetime is up, or it failed) a new one is started and
//! the user is told; its cache starts empty.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bento_client::{ChannelReader, ChannelWriter, ClientError, Connection, Target};
use bento_protocol::{ErrorCode, ErrorKind, InvokeToken, ServiceToken, SessionToken};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::{Console, Error, SharedConsole};

/// The function's source.
pub const SOURCE: &str = include_str!("../../../functions/proxy/proxy.py");
/// The function's manifest; [`manifest`] fits it to what a box grants.
pub const MANIFEST: &str = include_str!("../../../functions/proxy/proxy.toml");

const MIB: u64 = 1024 * 1024;
/// The function's ceilings (see proxy.py): the cache must fit its memory
/// next to a response being fetched ...
pub const MAX_CACHE: u64 = 48 * MIB;
/// ... the box reads at most 16 MiB of one response ...
pub const MAX_RESPONSE: u64 = 16 * MIB;
/// ... and the cache holds at most this many responses.
pub const MAX_ENTRIES: u32 = 100_000;
/// The manifest's wall-clock limit, and (see [`MARGIN`]) the margin before it at which an
/// instance stops taking requests so that those under way can finish.
pub const WALL: Duration = Duration::from_secs(300);
/// See [`WALL`].
pub const MARGIN: Duration = Duration::from_secs(30);
/// Requests passed to the function at once (its manifest grants 16
/// channels; an onion fetch uses one more for its Tor stream). Further
/// requests wait here rather than being refused by the box.
const IN_FLIGHT: usize = 8;
/// Largest request head a local client may send.
const MAX_HEAD: usize = 64 * 1024;
/// How long a kept-alive local connection may sit idle.
const IDLE: Duration = Duration::from_secs(60);
/// How long a request waits for an instance (at start-up, or while the
/// next one starts).
const WAIT_FOR_INSTANCE: Duration = Duration::from_secs(180);
/// Instances that fail in a row before `bento proxy` gives up.
const MAX_FAILURES: u32 = 3;
/// Request headers passed to the function (it forwards the first four to
/// the origin; the last two ask for a fresh copy). Nothing else about the
/// local client leaves this machine.
const FORWARDED: [&str; 6] = [
    "accept",
    "accept-language",
    "cookie",
    "authorization",
    "cache-control",
    "pragma",
];

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Where the local HTTP proxy listens.
    pub listen: SocketAddr,
    /// Most bytes the box's cache holds.
    pub cache_size: u64,
    /// Most responses the cache holds.
    pub max_entries: u32,
    /// Largest response that is cached.
    pub max_object: u64,
    /// Largest response that is relayed at all.
    pub max_response: u64,
    /// How long each instance serves before a new one replaces it.
    pub lifetime: Duration,
    /// Destination rules replacing the manifest's (none: keep them).
    pub destinations: Vec<String>,
    /// Do not ask for `tor_connect`.
    pub no_onion: bool,
    /// Report every request and the function's own lines.
    pub verbose: bool,
}

/// The manifest for what the box grants: without `http` (and its
/// destinations) or `tor_connect` if the box does not offer them.
pub fn manifest(http: bool, onion: bool, destinations: &[String]) -> Result<String, Error> {
    let mut capabilities = vec!["service"];
    if http {
        capabilities.push("http");
    }
    if onion {
        capabilities.push("tor_connect");
    }
    let mut out = String::new();
    let (mut saw_capabilities, mut saw_destinations) = (false, false);
    for line in MANIFEST.lines() {
        if line.starts_with("capabilities") {
            out.push_str(&format!(
                "capabilities = {}\n",
                serde_json::to_string(&capabilities).map_err(|e| Error::Request(e.to_string()))?
            ));
            saw_capabilities = true;
        } else if line.starts_with("destinations") {
            saw_destinations = true;
            if !http {
                continue;
            }
            if destinations.is_empty() {
                out.push_str(line);
                out.push('\n');
            } else {
                out.push_str(&format!(
                    "destinations = {}\n",
                    serde_json::to_string(destinations)
                        .map_err(|e| Error::Request(e.to_string()))?
                ));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !saw_capabilities || !saw_destinations {
        return Err(Error::Box(
            "the built-in manifest lacks its capabilities or destinations line".into(),
        ));
    }
    Ok(out)
}

/// The instance requests are sent to, as the supervisor publishes it.
#[derive(Debug, Clone, Default)]
struct Instance {
    /// Counts the instances started; a request that failed on one waits
    /// for the next.
    generation: u64,
    service: Option<ServiceToken>,
    session: Option<SessionToken>,
    /// Set when `bento proxy` gives up.
    failed: Option<String>,
}

/// What the function sends first on a channel.
#[derive(Debug, Deserialize)]
struct AnswerHead {
    status: u16,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    length: u64,
}

/// A request from the local client, parsed.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the local connection stays open after the answer.
    fn keep_alive(&self) -> bool {
        let connection = self
            .header("connection")
            .or_else(|| self.header("proxy-connection"))
            .unwrap_or_default()
            .to_ascii_lowercase();
        if self.http10 {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        }
    }
}

/// A request that cannot be handled, with the HTTP answer it gets.
#[derive(Debug)]
struct Refusal {
    status: u16,
    reason: &'static str,
    message: String,
    extra: Vec<(String, String)>,
}

fn refuse(status: u16, reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason,
        message: message.into(),
        extra: Vec::new(),
    }
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parse a request head (without the blank line that ends it).
fn parse_head(head: &[u8]) -> Result<Request, Refusal> {
    let text = std::str::from_utf8(head)
        .map_err(|_| refuse(400, "Bad Request", "the request head is not valid UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(refuse(
            400,
            "Bad Request",
            format!(
                "malformed request line {:?}: expected METHOD TARGET HTTP/1.1",
                truncate(line)
            ),
        ));
    };
    if !is_token(method) {
        return Err(refuse(
            400,
            "Bad Request",
            format!("malformed method {:?}", truncate(method)),
        ));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => {
            return Err(refuse(
                505,
                "HTTP Version Not Supported",
                format!("{:?} is not HTTP/1.0 or HTTP/1.1", truncate(version)),
            ));
        }
    };
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(refuse(400, "Bad Request", "malformed request target"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(refuse(
                400,
                "Bad Request",
                format!("malformed header line {:?}", truncate(line)),
            ));
        };
        if !is_token(name) {
            return Err(refuse(
                400,
                "Bad Request",
                format!("malformed header name {:?}", truncate(name)),
            ));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(refuse(
                400,
                "Bad Request",
                format!("control characters in header {name}"),
            ));
        }
        headers.push((name.to_owned(), value.to_owned()));
    }
    Ok(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        http10,
        headers,
    })
}

fn truncate(text: &str) -> String {
    text.chars().take(100).collect()
}

/// Whether `url` is an absolute http(s) URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
    else {
        return Err(format!(
            "{:?} is not an http:// or https:// URL",
            truncate(url)
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("{:?} has no host", truncate(url)));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{:?} contains spaces or control characters",
            truncate(url)
        ));
    }
    Ok(())
}

/// What to do with a request.
#[derive(Debug)]
enum Action {
    /// Ask the function (`fetch` or `stats`).
    Function { line: Vec<u8>, head_only: bool },
    /// Answer here with this help text.
    Help,
}

const HELP: &str = "This is bento proxy, an HTTP proxy whose requests a Bento box fetches and caches.\n\
Use it as your HTTP proxy (curl -x http://HOST:PORT http://example.org/), or put\n\
the URL after the proxy's own (curl http://HOST:PORT/https://example.org/).\n\
GET http://HOST:PORT/bento/stats shows the cache's counters. See docs/functions/proxy.md.\n";

/// Decide what a request means; the function's request line if it goes to
/// the box.
fn route(request: &Request) -> Result<Action, Refusal> {
    if request.method == "CONNECT" {
        return Err(refuse(
            501,
            "Not Implemented",
            "CONNECT (a TLS tunnel) is not supported: what goes through a tunnel cannot be cached. \
             Ask for https:// URLs in full instead (curl http://PROXY/https://example.org/): \
             the box fetches them over TLS, and the hop to the box crosses Tor",
        ));
    }
    if request.method != "GET" && request.method != "HEAD" {
        let mut refusal = refuse(
            405,
            "Method Not Allowed",
            format!(
                "{} is not proxied: this is a read-only caching proxy (GET and HEAD only)",
                request.method
            ),
        );
        refusal.extra.push(("Allow".into(), "GET, HEAD".into()));
        return Err(refusal);
    }
    if request.header("transfer-encoding").is_some()
        || request
            .header("content-length")
            .is_some_and(|l| l.trim() != "0")
    {
        return Err(refuse(
            400,
            "Bad Request",
            "a GET or HEAD request with a body is not proxied",
        ));
    }
    let head_only = request.method == "HEAD";
    let url = if let Some(path) = request.target.strip_prefix('/') {
        if path == "bento/stats" {
            return Ok(Action::Function {
                line: b"{\"op\":\"stats\"}\n".to_vec(),
                head_only,
            });
        }
        let lower = path.to_ascii_lowercase();
        if !lower.starts_with("http://") && !lower.starts_with("https://") {
            return Ok(Action::Help);
        }
        path
    } else {
        request.target.as_str()
    };
    check_url(url).map_err(|e| refuse(400, "Bad Request", e))?;
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .filter(|(n, _)| FORWARDED.iter().any(|f| n.eq_ignore_ascii_case(f)))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let line = serde_json::json!({
        "op": "fetch",
        "method": request.method,
        "url": url,
        "headers": headers,
    });
    let mut line = serde_json::to_vec(&line)
        .map_err(|e| refuse(500, "Internal Server Error", e.to_string()))?;
    line.push(b'\n');
    Ok(Action::Function { line, head_only })
}

/// An HTTP response made here (errors, help).
async fn answer_here(
    stream: &mut TcpStream,
    status: u16,
    reason: &str,
    extra: &[(String, String)],
    body: &str,
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

/// Answer here and close the connection without losing the answer: a
/// client may still be sending (a body this side did not read, the rest of
/// an oversized head); closing with unread input would make the kernel
/// reset the connection and the client might never see the answer.
async fn answer_and_close(stream: &mut TcpStream, refusal: &Refusal) {
    let body = format!("bento proxy: {}\n", refusal.message);
    if answer_here(
        stream,
        refusal.status,
        refusal.reason,
        &refusal.extra,
        &body,
        false,
    )
    .await
    .is_err()
    {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 16 * 1024];
        let mut drained = 0usize;
        while drained < 1024 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// Why a channel exchange failed before the answer's head.
enum Failure {
    /// Try again on the next instance (this one ended).
    NextInstance(String),
    /// Try again shortly (a connection or the channel limit).
    Soon(String),
}

/// The open channel with the answer's head read.
struct Answer {
    head: AnswerHead,
    /// Body bytes that came with the head.
    start: Vec<u8>,
    reader: ChannelReader,
    /// Kept until the body is read: closing it would tell the box this
    /// client left.
    _writer: ChannelWriter,
}

fn classify(error: ClientError) -> Failure {
    match error {
        ClientError::Remote { code, message } => {
            let text = format!("[{}] {}", code.name(), message.trim_end());
            if code == ErrorCode::ChannelLimit || code.kind() == ErrorKind::Busy {
                Failure::Soon(text)
            } else {
                Failure::NextInstance(text)
            }
        }
        other => Failure::Soon(other.to_string()),
    }
}

/// Open a channel, send the request line, read the answer's head.
async fn exchange_once(
    target: &Target,
    service: &ServiceToken,
    line: &[u8],
) -> Result<Answer, Failure> {
    let channel = Connection::connect(target)
        .await
        .map_err(classify)?
        .connect_service(service)
        .await
        .map_err(classify)?;
    let (mut reader, mut writer) = channel.into_split();
    writer.send(line).await.map_err(classify)?;
    writer.end_input().await.map_err(classify)?;
    let mut received = Vec::new();
    loop {
        if let Some(end) = received.iter().position(|&b| b == b'\n') {
            let head: AnswerHead = serde_json::from_slice(&received[..end]).map_err(|e| {
                Failure::NextInstance(format!("the function's answer is malformed: {e}"))
            })?;
            let mut start = received.split_off(end + 1);
            // Nothing has reached the local client yet: if the connection
            // to the box breaks before the body starts (seen now and then on
            // a fresh Tor circuit), the request can still be sent again.
            if start.is_empty() && head.length > 0 {
                match reader.next().await {
                    Ok(Some(data)) => start = data.to_vec(),
                    Ok(None) => {}
                    Err(e) => return Err(classify(e)),
                }
            }
            return Ok(Answer {
                head,
                start,
                reader,
                _writer: writer,
            });
        }
        if received.len() > MAX_HEAD * 16 {
            return Err(Failure::NextInstance(
                "the function's answer head is too long".into(),
            ));
        }
        match reader.next().await {
            Ok(Some(data)) => received.extend_from_slice(&data),
            Ok(None) => {
                return Err(Failure::NextInstance(
                    "the function closed the channel without an answer".into(),
                ));
            }
            Err(e) => return Err(classify(e)),
        }
    }
}

/// The current instance's service token, waiting for one if needed.
async fn current(
    instance: &mut watch::Receiver<Instance>,
    newer_than: Option<u64>,
) -> Result<(u64, ServiceToken), String> {
    let wait = instance.wait_for(|i| {
        i.failed.is_some() || (i.service.is_some() && newer_than.is_none_or(|g| i.generation > g))
    });
    match tokio::time::timeout(WAIT_FOR_INSTANCE, wait).await {
        Ok(Ok(i)) => match (&i.failed, &i.service) {
            (Some(why), _) => Err(why.clone()),
            (None, Some(service)) => Ok((i.generation, service.clone())),
            (None, None) => Err("no proxy instance is running".into()),
        },
        Ok(Err(_)) => Err("bento proxy is shutting down".into()),
        Err(_) => Err(format!(
            "no proxy instance was running at the box for {} s",
            WAIT_FOR_INSTANCE.as_secs()
        )),
    }
}

/// Send a request to the function, on the next instance if the current one
/// ends first (GET and HEAD may be repeated safely); at most 3 tries.
async fn exchange(
    target: &Target,
    instance: &mut watch::Receiver<Instance>,
    line: &[u8],
    verbose: bool,
    console: &dyn Console,
) -> Result<Answer, String> {
    let mut newer_than = None;
    let mut last = String::new();
    for attempt in 1..=3 {
        if attempt > 1 && verbose {
            console.note(&format!(
                "bento proxy: retrying a request (attempt {attempt} of 3): {last}"
            ));
        }
        let (generation, service) = current(instance, newer_than).await?;
        match exchange_once(target, &service, line).await {
            Ok(answer) => return Ok(answer),
            Err(Failure::NextInstance(why)) => {
                newer_than = Some(generation);
                last = why;
            }
            Err(Failure::Soon(why)) => {
                newer_than = None;
                last = why;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Err(last)
}

/// Relay the function's answer as an HTTP/1.1 response.
async fn relay(
    stream: &mut TcpStream,
    answer: Answer,
    head_only: bool,
    keep_alive: bool,
) -> Result<u64, String> {
    let Answer {
        head,
        start,
        mut reader,
        _writer,
    } = answer;
    if head.length > MAX_RESPONSE + MIB || (head_only && head.length != 0) {
        return Err("the function announced an impossible length".into());
    }
    let reason: String = head
        .reason
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    let mut out = format!("HTTP/1.1 {} {}\r\n", head.status, reason.trim());
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        // Framing is this side's: a HEAD answer keeps the origin's
        // Content-Length (what a GET would bring), others get the length.
        if !is_token(name)
            || value.bytes().any(|b| b.is_ascii_control() && b != b'\t')
            || lower == "connection"
            || lower == "keep-alive"
            || lower == "transfer-encoding"
            || (lower == "content-length" && !head_only)
        {
            continue;
        }
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !head_only {
        out.push_str(&format!("Content-Length: {}\r\n", head.length));
    }
    out.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    stream
        .write_all(out.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut sent = 0u64;
    let mut pending = Some(bytes::Bytes::from(start));
    loop {
        let data = match pending.take() {
            Some(data) => data,
            None => match reader.next().await {
                Ok(Some(data)) => data,
                Ok(None) => break,
                Err(e) => return Err(format!("the answer was cut off: {e}")),
            },
        };
        if sent + data.len() as u64 > head.length {
            return Err("the function sent more than it announced".into());
        }
        stream.write_all(&data).await.map_err(|e| e.to_string())?;
        sent += data.len() as u64;
    }
    if sent != head.length {
        return Err(format!(
            "the answer was cut off after {sent} of {} bytes",
            head.length
        ));
    }
    stream.flush().await.map_err(|e| e.to_string())?;
    Ok(sent)
}

/// Read one request head from the local client; `None` when it closed
/// the connection or stayed idle.
async fn read_head(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Option<Vec<u8>>, Refusal> {
    loop {
        // Only the first MAX_HEAD bytes (and the terminator) are searched:
        // a head that came in one piece is bounded like one read in many.
        let searched = &buffer[..buffer.len().min(MAX_HEAD + 4)];
        if let Some(end) = searched.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buffer[..end].to_vec();
            buffer.drain(..end + 4);
            return Ok(Some(head));
        }
        if buffer.len() > MAX_HEAD {
            return Err(refuse(
                431,
                "Request Header Fields Too Large",
                format!("the request head is over {MAX_HEAD} bytes"),
            ));
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(IDLE, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => {
                if buffer.iter().all(|b| b.is_ascii_whitespace()) {
                    return Ok(None);
                }
                return Err(refuse(
                    400,
                    "Bad Request",
                    "the request head ended before its blank line",
                ));
            }
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Shared by every local connection.
struct Shared {
    target: Target,
    instance: watch::Receiver<Instance>,
    in_flight: Semaphore,
    verbose: bool,
    console: SharedConsole,
}

/// Serve one local connection: requests until it closes (or asks to).
async fn serve_local(shared: Arc<Shared>, mut stream: TcpStream) {
    let console = &*shared.console;
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::new();
    loop {
        let head = match read_head(&mut stream, &mut buffer).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(r) => {
                answer_and_close(&mut stream, &r).await;
                return;
            }
        };
        let request = match parse_head(&head) {
            Ok(request) => request,
            Err(r) => {
                answer_and_close(&mut stream, &r).await;
                return;
            }
        };
        let keep_alive = request.keep_alive();
        let started = Instant::now();
        let (line, head_only) = match route(&request) {
            Ok(Action::Function { line, head_only }) => (line, head_only),
            Ok(Action::Help) => {
                if answer_here(&mut stream, 200, "OK", &[], HELP, keep_alive)
                    .await
                    .is_err()
                    || !keep_alive
                {
                    return;
                }
                continue;
            }
            Err(r) => {
                if shared.verbose {
                    console.note(&format!(
                        "{} {} -> {} (answered here)",
                        request.method,
                        truncate(&request.target),
                        r.status
                    ));
                }
                // A request with a body that was not read cannot be
                // followed by another on the same connection.
                answer_and_close(&mut stream, &r).await;
                return;
            }
        };
        let answer = {
            let Ok(_permit) = shared.in_flight.acquire().await else {
                return;
            };
            let mut instance = shared.instance.clone();
            exchange(
                &shared.target,
                &mut instance,
                &line,
                shared.verbose,
                console,
            )
            .await
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(why) => {
                if shared.verbose {
                    console.note(&format!(
                        "{} {} -> 502 ({why})",
                        request.method,
                        truncate(&request.target)
                    ));
                }
                let body = format!("bento proxy: the box did not answer: {why}\n");
                let _ = answer_here(&mut stream, 502, "Bad Gateway", &[], &body, false).await;
                return;
            }
        };
        let status = answer.head.status;
        let cache = answer
            .head
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-bento-cache"))
            .map_or("-".to_owned(), |(_, v)| v.clone());
        let relayed = relay(&mut stream, answer, head_only, keep_alive).await;
        if shared.verbose {
            match &relayed {
                Ok(bytes) => console.note(&format!(
                    "{} {} -> {status} {cache}, {bytes} bytes, {:.2} s",
                    request.method,
                    truncate(&request.target),
                    started.elapsed().as_secs_f64()
                )),
                Err(e) => console.note(&format!(
                    "{} {} -> {status}, relaying failed: {e}",
                    request.method,
                    truncate(&request.target)
                )),
            }
        }
        if relayed.is_err() || !keep_alive {
            return;
        }
    }
}

/// Keep an instance running: start one, follow its session, start the next
/// when it ends. Returns why it gave up (and tells waiting requests).
async fn supervise(
    target: Target,
    invoke: InvokeToken,
    call: String,
    verbose: bool,
    publish: watch::Sender<Instance>,
    console: SharedConsole,
) -> String {
    let why = keep_running(&target, &invoke, &call, verbose, &publish, &*console).await;
    publish.send_modify(|i| i.failed = Some(why.clone()));
    why
}

async fn keep_running(
    target: &Target,
    invoke: &InvokeToken,
    call: &str,
    verbose: bool,
    publish: &watch::Sender<Instance>,
    console: &dyn Console,
) -> String {
    let mut failures = 0;
    let mut generation = 0;
    loop {
        let started = async {
            let (session, service) = Connection::connect(target)
                .await?
                .invoke_service(invoke, "main", call)
                .await?;
            let attachment = Connection::connect(target)
                .await?
                .attach(&session, None)
                .await?;
            Ok::<_, ClientError>((session, service, attachment))
        }
        .await;
        let (session, service, mut attachment) = match started {
            Ok((session, Some(service), attachment)) => (session, service, attachment),
            Ok((_, None, _)) => return "the box did not grant the proxy a service token".into(),
            Err(e) => {
                failures += 1;
                let why = format!("could not start the proxy at the box: {e}");
                if failures >= MAX_FAILURES {
                    return why;
                }
                console.note(&format!("bento proxy: {why}; trying again"));
                tokio::time::sleep(Duration::from_secs(2 * u64::from(failures))).await;
                continue;
            }
        };
        generation += 1;
        publish.send_modify(|i| {
            i.generation = generation;
            i.service = Some(service);
            i.session = Some(session);
        });
        let begun = Instant::now();
        let ended = loop {
            match attachment.next().await {
                Ok(Some(data)) => {
                    if verbose {
                        console.note(&format!(
                            "box: {}",
                            String::from_utf8_lossy(&data).trim_end()
                        ));
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        attachment.close().await;
        publish.send_modify(|i| {
            i.service = None;
            i.session = None;
        });
        let why = match ended {
            Ok(()) => {
                failures = 0;
                format!(
                    "the proxy instance ended after {} s (its lifetime)",
                    begun.elapsed().as_secs()
                )
            }
            Err(ClientError::Remote {
                code: ErrorCode::LimitWallTime,
                ..
            }) => {
                failures = 0;
                "the proxy instance reached its wall-clock limit".to_owned()
            }
            Err(ClientError::Remote { code, message }) => {
                failures += 1;
                format!(
                    "the proxy instance failed: [{}] {}",
                    code.name(),
                    message.trim_end()
                )
            }
            Err(e) => {
                failures += 1;
                format!("lost the proxy instance's session: {e}")
            }
        };
        if failures >= MAX_FAILURES {
            return why;
        }
        console.note(&format!(
            "bento proxy: {why}; starting a new one (its cache starts empty)"
        ));
    }
}

impl ProxyOptions {
    /// Check the options against the function's ceilings, before anything
    /// is sent.
    pub fn check(&self) -> Result<(), Error> {
        if self.cache_size > MAX_CACHE {
            return Err(Error::Request(format!(
                "--cache-size may be at most {MAX_CACHE} bytes (48MiB): the cache lives in the function's 128 MiB of memory"
            )));
        }
        if self.max_response == 0 || self.max_response > MAX_RESPONSE {
            return Err(Error::Request(format!(
                "--max-response must be from 1 byte to {MAX_RESPONSE} bytes (16MiB)"
            )));
        }
        if self.max_object > MAX_RESPONSE {
            return Err(Error::Request(format!(
                "--max-object may be at most {MAX_RESPONSE} bytes (16MiB)"
            )));
        }
        if self.max_entries > MAX_ENTRIES {
            return Err(Error::Request(format!(
                "--max-entries may be at most {MAX_ENTRIES}"
            )));
        }
        if self.lifetime > WALL - MARGIN {
            return Err(Error::Request(format!(
                "--lifetime may be at most {} s: the function's wall-clock limit is {} s",
                (WALL - MARGIN).as_secs(),
                WALL.as_secs()
            )));
        }
        Ok(())
    }
}

/// Run the proxy until a message on `stop` (or until it gives up, when
/// instances keep failing): listen locally, store the function at the
/// box with what the box grants, and keep an instance running.
pub async fn run(
    target: &Target,
    options: &ProxyOptions,
    mut stop: mpsc::UnboundedReceiver<()>,
    console: SharedConsole,
) -> Result<(), Error> {
    let args = options;
    args.check()?;
    // Listen first: a port in use is the user's to fix, before the box does any work.
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::Request(format!("cannot listen on {}: {e}", args.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Request(format!("cannot listen on {}: {e}", args.listen)))?;
    if !local.ip().is_loopback() {
        console.note(&format!(
            "bento proxy: warning: listening on {local}, not a loopback address: anyone who can reach it can use your proxy (and its cache)"
        ));
    }

    console.note(&format!(
        "bento proxy: starting the proxy at {}",
        target.server
    ));
    // A request to stop while the box is asked is obeyed at once.
    let prepared = async {
        let mut conn = Connection::connect(target).await?;
        let status = conn.status().await?;
        let offered: Vec<String> = status["policy"]["capabilities"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let offers = |c: &str| offered.iter().any(|o| o == c);
        if !offers("service") {
            return Err(Error::Box(
                "this box does not grant the `service` capability, which the proxy needs".into(),
            ));
        }
        let http = offers("http");
        let onion = offers("tor_connect") && !args.no_onion;
        if !http && !args.destinations.is_empty() {
            return Err(Error::Request(
                "--destination given, but this box does not grant `http` (exit fetching is the box operator's choice)".into(),
            ));
        }
        if !http && !onion {
            return Err(Error::Box(
                "this box grants neither `http` nor `tor_connect`: the proxy could fetch nothing there".into(),
            ));
        }
        if !http {
            console.note(
                "bento proxy: this box does not grant `http` (exit fetching is the operator's choice): only .onion sites will work",
            );
        }
        if !onion {
            console.note(&format!(
                "bento proxy: {}: .onion sites will be answered 502",
                if args.no_onion {
                    "--no-onion"
                } else {
                    "this box does not grant `tor_connect`"
                }
            ));
        }
        let manifest = manifest(http, onion, &args.destinations)?;
        let (_, invoke) = conn
            .store_with_manifest("proxy.py", SOURCE, &manifest)
            .await?;
        Ok(invoke)
    };
    let invoke = tokio::select! {
        prepared = prepared => prepared?,
        _ = stop.recv() => return Ok(()),
    };
    let call = serde_json::json!([
        args.cache_size,
        args.max_entries,
        args.max_object,
        args.max_response,
        args.lifetime.as_secs()
    ])
    .to_string();

    let (publish, instance) = watch::channel(Instance::default());
    let mut supervisor = tokio::spawn(supervise(
        target.clone(),
        invoke,
        call,
        args.verbose,
        publish,
        console.clone(),
    ));
    // Wait for the first instance, so that "listening" means "working";
    // a request to stop meanwhile is obeyed at once.
    let mut first = instance.clone();
    let stopped_early = tokio::select! {
        first = current(&mut first, None) => match first {
            Ok(_) => false,
            Err(why) => {
                supervisor.abort();
                return Err(Error::Box(why));
            }
        },
        _ = stop.recv() => true,
    };
    let mut latest = instance.clone();
    console.note(&format!(
        "bento proxy: listening on {local}: use it as an HTTP proxy (curl -x http://{local} http://…), \
         or ask for http://{local}/https://… ; cache {} bytes, {} entries; Ctrl-C stops it",
        args.cache_size, args.max_entries
    ));
    let shared = Arc::new(Shared {
        target: target.clone(),
        instance,
        in_flight: Semaphore::new(IN_FLIGHT),
        verbose: args.verbose,
        console: console.clone(),
    });
    let result = if stopped_early {
        Ok(())
    } else {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_local(shared.clone(), stream));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        console.note(&format!("bento proxy: accepting a local connection failed: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                gave_up = &mut supervisor => {
                    let why = gave_up.unwrap_or_else(|e| format!("the supervisor failed: {e}"));
                    break Err(Error::Function(format!("{why}; giving up")));
                }
                _ = stop.recv() => break Ok(()),
            }
        }
    };
    // Stop the instance now rather than at its lifetime's end: it would
    // hold the cache (and a slot at the box) for nobody.
    let session = latest.borrow_and_update().session.clone();
    supervisor.abort();
    if let Some(session) = session {
        let killed = tokio::time::timeout(Duration::from_secs(30), async {
            Connection::connect(target).await?.kill(&session).await
        })
        .await;
        match killed {
            Ok(Ok(())) => console.note("bento proxy: stopped the proxy at the box"),
            Ok(Err(e)) => console.note(&format!(
                "bento proxy: could not stop the proxy at the box: {e}"
            )),
            Err(_) => console.note("bento proxy: the box did not confirm the stop in time"),
        }
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::python_source;

    #[test]
    fn the_limits_agree_with_proxy_py_and_its_manifest() {
        assert_eq!(python_source::int(SOURCE, "MIB"), MIB);
        assert_eq!(python_source::int(SOURCE, "MAX_RESPONSE"), MAX_RESPONSE);
        assert_eq!(
            python_source::manifest_int(MANIFEST, "wall_ms"),
            WALL.as_millis() as u64
        );
        // The cache and a response being fetched fit the function's memory.
        let memory = python_source::manifest_int(MANIFEST, "memory_mib") * MIB;
        assert!(MAX_CACHE + MAX_RESPONSE < memory);
        // main()'s own bounds on the cache.
        assert!(SOURCE.contains(&format!("_whole(max_bytes, 0, {} * MIB, ", MAX_CACHE / MIB)));
        assert!(SOURCE.contains(&format!("_whole(max_entries, 0, {MAX_ENTRIES}, ")));
        // The channels the client keeps busy, plus one per onion fetch's
        // Tor stream, fit the manifest's channels.
        assert!(2 * IN_FLIGHT as u64 <= python_source::manifest_int(MANIFEST, "channels"));
        // The function forwards the first four headers the client passes.
        let forwarded: Vec<String> = FORWARDED[..4].iter().map(|h| format!("\"{h}\"")).collect();
        assert!(SOURCE.contains(&format!("FORWARDED = ({})", forwarded.join(", "))));
    }

    fn admitted(manifest: &str, policy: &str) -> bool {
        let manifest = bento_policy::Manifest::from_toml(manifest).unwrap();
        let policy = bento_policy::BoxPolicy::from_toml(policy).unwrap();
        bento_policy::admit(&manifest, &policy, &[]).is_ok()
    }

    #[test]
    fn the_onion_only_manifest_fits_the_default_policy_and_the_full_one_needs_http() {
        let default = bento_policy::DEFAULT_POLICY_TOML;
        let onion_only = manifest(false, true, &[]).unwrap();
        assert!(onion_only.contains("capabilities = [\"service\",\"tor_connect\"]"));
        assert!(!onion_only.lines().any(|l| l.starts_with("destinations")));
        assert!(admitted(&onion_only, default));
        let full = manifest(true, true, &[]).unwrap();
        assert!(!admitted(&full, default), "http is the operator's choice");
        let with_http = default.replace(
            "capabilities = [\"storage\"",
            "capabilities = [\"http\", \"storage\"",
        );
        assert!(admitted(&full, &with_http));
        let local = manifest(true, false, &["accept 127.0.0.1:8080".into()]).unwrap();
        assert!(local.contains("destinations = [\"accept 127.0.0.1:8080\"]"));
        assert!(local.contains("capabilities = [\"service\",\"http\"]"));
    }

    fn route_of(head: &str) -> Result<Action, Refusal> {
        route(&parse_head(head.as_bytes())?)
    }

    #[test]
    fn requests_are_routed_or_refused_with_the_right_status() {
        let Ok(Action::Function { line, head_only }) = route_of(
            "GET http://example.org/a?b HTTP/1.1\r\nHost: example.org\r\nUser-Agent: x\r\nAccept: text/html",
        ) else {
            panic!("an absolute GET goes to the function");
        };
        assert!(!head_only);
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(json["url"], "http://example.org/a?b");
        assert_eq!(
            json["headers"],
            serde_json::json!([["Accept", "text/html"]])
        );
        let Ok(Action::Function { line, head_only }) =
            route_of("HEAD /https://example.org/ HTTP/1.0")
        else {
            panic!("a URL after the proxy's own goes to the function");
        };
        assert!(head_only);
        assert!(
            String::from_utf8(line)
                .unwrap()
                .contains("https://example.org/")
        );
        assert!(matches!(
            route_of("GET /bento/stats HTTP/1.1"),
            Ok(Action::Function { .. })
        ));
        assert!(matches!(route_of("GET / HTTP/1.1"), Ok(Action::Help)));
        for (head, status) in [
            ("CONNECT example.org:443 HTTP/1.1", 501),
            (
                "POST http://example.org/ HTTP/1.1\r\nContent-Length: 3",
                405,
            ),
            ("GET http://example.org/ HTTP/1.1\r\nContent-Length: 3", 400),
            ("GET ftp://example.org/ HTTP/1.1", 400),
            ("GET http:///x HTTP/1.1", 400),
            ("GET http://example.org/ HTTP/2.0", 505),
            ("GET  http://example.org/ HTTP/1.1", 400),
            ("GET http://example.org/ HTTP/1.1\r\nbad header", 400),
            ("GET http://example.org/ HTTP/1.1\r\nBad Name: x", 400),
            ("hello", 400),
        ] {
            match route_of(head) {
                Err(r) => assert_eq!(r.status, status, "{head:?}: {}", r.message),
                Ok(a) => panic!("{head:?} was accepted: {a:?}"),
            }
        }
    }

    #[test]
    fn keep_alive_follows_the_http_version_and_connection_header() {
        let keep = |head: &str| parse_head(head.as_bytes()).unwrap().keep_alive();
        assert!(keep("GET / HTTP/1.1"));
        assert!(!keep("GET / HTTP/1.1\r\nConnection: close"));
        assert!(!keep("GET / HTTP/1.0"));
        assert!(keep("GET / HTTP/1.0\r\nProxy-Connection: Keep-Alive"));
    }
}
