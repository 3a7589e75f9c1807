//! One HTTP(S) exchange with a checked destination at every hop.
//!
//! Built on `ureq` with redirects turned off (this module follows them
//! itself, so every hop's URL is validated), no proxy, no connection reuse,
//! and a resolver that is [`resolve_checked`]: ureq asks the resolver for
//! every connection, IP-literal hosts included, and connects only to the
//! addresses it returns.

use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use url::Url;

use crate::check::{destination, remaining};
use crate::{DestinationCheck, EgressError, resolve_checked};

/// Redirects followed unless [`HttpLimits::max_redirects`] says otherwise.
pub const DEFAULT_MAX_REDIRECTS: u32 = 5;

/// Response body size allowed unless [`HttpLimits::max_response_bytes`]
/// says otherwise (16 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// Bytes read from the response body at a time (each read is one call of
/// the throttle).
const CHUNK_BYTES: usize = 16 * 1024;

/// The `User-Agent` sent unless the request sets one.
const USER_AGENT: &str = "bento";

/// Request headers dropped when a redirect leaves the origin (scheme, host
/// and port) of the previous hop: they carry credentials or name the host.
const ORIGIN_BOUND_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie", "host"];

/// Request headers dropped when a redirect turns the request into a GET
/// without a body.
const BODY_HEADERS: &[&str] = &["content-type", "content-encoding", "content-language"];

/// Request headers the client sets itself (message framing); a request's
/// own values are ignored.
const FRAMING_HEADERS: &[&str] = &["content-length", "transfer-encoding", "connection"];

/// One HTTP request as a function asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method, e.g. `GET` (an HTTP token; case is kept).
    pub method: String,
    /// An absolute `http` or `https` URL.
    pub url: String,
    /// Request headers, in order. A name given more than once is sent once
    /// with the values joined (`; ` for `Cookie`, `, ` otherwise).
    /// `Content-Length`, `Transfer-Encoding` and `Connection` are set by the
    /// client and ignored here.
    pub headers: Vec<(String, String)>,
    /// The request body (sent with a `Content-Length`), empty for none.
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// A `GET` of `url` without headers.
    pub fn get(url: impl Into<String>) -> Self {
        Self {
            method: "GET".to_owned(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

/// Bounds on one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Redirects followed at most; one more fails with
    /// [`EgressError::TooManyRedirects`] (so with 0, any redirect fails).
    pub max_redirects: u32,
    /// Largest response body accepted; a larger one fails with
    /// [`EgressError::TooLarge`] without being read past the limit.
    pub max_response_bytes: u64,
    /// When everything (lookups, connects, TLS, sending, the whole body)
    /// must be done by; past it the exchange fails with
    /// [`EgressError::Timeout`].
    pub deadline: Instant,
}

impl HttpLimits {
    /// The default limits ([`DEFAULT_MAX_REDIRECTS`],
    /// [`DEFAULT_MAX_RESPONSE_BYTES`]) with `deadline`.
    pub fn new(deadline: Instant) -> Self {
        Self {
            max_redirects: DEFAULT_MAX_REDIRECTS,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            deadline,
        }
    }
}

/// The final response of an exchange (after redirects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code; any code, 4xx and 5xx included, is a response.
    pub status: u16,
    /// Response headers, names lower-cased, values of a repeated name kept
    /// in order.
    pub headers: Vec<(String, String)>,
    /// The body, decoded from chunked transfer encoding if it was used
    /// (content encodings such as gzip are left as they are).
    pub body: Vec<u8>,
    /// The URL that gave this response, after any redirects.
    pub url: String,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Which servers HTTPS trusts: the Mozilla roots (`webpki-roots`), plus
/// optional extra trust anchors (an operator's or a test's private CA).
#[derive(Clone)]
pub struct TlsSettings {
    /// The client configuration, or why it could not be built (reported
    /// by the first HTTPS request rather than a panic).
    config: Result<Arc<ClientConfig>, String>,
    /// How many extra trust anchors were added.
    extra_roots: usize,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("extra_roots", &self.extra_roots)
            .field("usable", &self.config.is_ok())
            .finish()
    }
}

fn mozilla_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("the TLS configuration is unusable: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            config: client_config(mozilla_roots()),
            extra_roots: 0,
        }
    }
}

impl TlsSettings {
    /// The Mozilla roots plus every certificate in `pem` (one or more
    /// `-----BEGIN CERTIFICATE-----` blocks) as extra trust anchors.
    pub fn with_extra_roots_pem(pem: &[u8]) -> Result<Self, EgressError> {
        let mut roots = mozilla_roots();
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert =
                cert.map_err(|e| EgressError::Tls(format!("extra trust anchors: bad PEM: {e}")))?;
            roots.add(cert).map_err(|e| {
                EgressError::Tls(format!("extra trust anchors: unusable certificate: {e}"))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(EgressError::Tls(
                "extra trust anchors: no certificate found in the PEM data".to_owned(),
            ));
        }
        Ok(Self {
            config: Ok(client_config(roots).map_err(EgressError::Tls)?),
            extra_roots: added,
        })
    }

    fn config(&self) -> Result<Arc<ClientConfig>, EgressError> {
        self.config.clone().map_err(EgressError::Tls)
    }
}

/// ureq's resolver: [`resolve_checked`], remembering its error so that the
/// caller gets the [`EgressError`] rather than ureq's wrapping of it.
struct CheckedResolver {
    check: Arc<DestinationCheck>,
    deadline: Instant,
    error: Arc<Mutex<Option<EgressError>>>,
}

impl ureq::Resolver for CheckedResolver {
    fn resolve(&self, netloc: &str) -> io::Result<Vec<SocketAddr>> {
        let parsed = netloc
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
        let result = match parsed {
            Some((host, port)) => resolve_checked(&self.check, host, port, self.deadline),
            None => Err(EgressError::InvalidRequest(format!(
                "cannot tell host and port apart in {netloc:?}"
            ))),
        };
        result.map_err(|e| {
            let message = e.to_string();
            *self.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
            io::Error::other(message)
        })
    }
}

/// `url` without a password, for error messages.
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        // Fails only for URLs that cannot have a password at all.
        let _ = url.set_password(None);
    }
    url.to_string()
}

/// Parse an absolute URL and require `http` or `https` with a host.
fn http_url(text: &str) -> Result<Url, EgressError> {
    let url = Url::parse(text).map_err(|e| EgressError::InvalidUrl {
        url: text.chars().take(200).collect(),
        reason: e.to_string(),
    })?;
    require_http(&url)?;
    Ok(url)
}

fn require_http(url: &Url) -> Result<(), EgressError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(EgressError::InvalidUrl {
            url: redacted(url),
            reason: format!(
                "only http and https URLs are supported, not {}",
                url.scheme()
            ),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(EgressError::InvalidUrl {
            url: redacted(url),
            reason: "the URL has no host".to_owned(),
        });
    }
    Ok(())
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The request headers as sent: validated, framing headers dropped,
/// repeated names joined.
fn request_headers(headers: &[(String, String)]) -> Result<Vec<(String, String)>, EgressError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        if !is_token(name) {
            return Err(EgressError::InvalidRequest(format!(
                "{name:?} is not a valid header name"
            )));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(EgressError::InvalidRequest(format!(
                "the value of header {name} contains a line break or NUL"
            )));
        }
        let lower = name.to_ascii_lowercase();
        if FRAMING_HEADERS.contains(&lower.as_str()) {
            continue;
        }
        match out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, existing)) => {
                existing.push_str(if lower == "cookie" { "; " } else { ", " });
                existing.push_str(value);
            }
            None => out.push((name.clone(), value.clone())),
        }
    }
    Ok(out)
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Every error in a chain, `io::Error` payloads included (an `io::Error`'s
/// own `source()` skips its payload).
fn error_chain<'a>(
    top: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut chain = Vec::new();
    let mut next = Some(top);
    while let Some(e) = next {
        chain.push(e);
        if let Some(payload) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            chain.push(payload);
        }
        next = e.source();
    }
    chain
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    error_chain(e).iter().any(|e| {
        e.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            )
        })
    })
}

fn tls_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    error_chain(e)
        .iter()
        .find_map(|e| e.downcast_ref::<rustls::Error>())
        .map(ToString::to_string)
}

/// ureq's transport error in words, without the URL it carries.
fn describe(t: &ureq::Transport) -> String {
    let mut parts: Vec<String> = t.message().map(str::to_owned).into_iter().collect();
    let mut source = std::error::Error::source(t);
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    if parts.is_empty() {
        t.kind().to_string()
    } else {
        parts.join(": ")
    }
}

fn transport_error(
    t: &ureq::Transport,
    resolver_error: &Mutex<Option<EgressError>>,
    url: &Url,
    max_redirects: u32,
) -> EgressError {
    if let Some(e) = resolver_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        return e;
    }
    if is_timeout(t) {
        return EgressError::Timeout;
    }
    if let Some(reason) = tls_error(t) {
        return EgressError::Tls(reason);
    }
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or_default();
    let reason = describe(t);
    match t.kind() {
        ureq::ErrorKind::Dns => EgressError::Resolve {
            host: host.to_owned(),
            reason,
        },
        ureq::ErrorKind::ConnectionFailed => EgressError::Connect {
            destination: destination(host, port),
            reason,
        },
        ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => EgressError::InvalidUrl {
            url: redacted(url),
            reason,
        },
        ureq::ErrorKind::TooManyRedirects => EgressError::TooManyRedirects { max: max_redirects },
        _ => EgressError::Http(reason),
    }
}

fn body_read_error(e: &io::Error) -> EgressError {
    if is_timeout(e) {
        return EgressError::Timeout;
    }
    if let Some(reason) = tls_error(e) {
        return EgressError::Tls(reason);
    }
    EgressError::Http(format!("reading the response body failed: {e}"))
}

/// Response headers, names lower-cased, grouped by name in order of first
/// appearance.
fn response_headers(response: &ureq::Response) -> Vec<(String, String)> {
    let mut names = response.headers_names();
    let mut seen = Vec::with_capacity(names.len());
    names.retain(|n| {
        let new = !seen.contains(n);
        seen.push(n.clone());
        new
    });
    names
        .iter()
        .flat_map(|name| {
            response
                .all(name)
                .into_iter()
                .map(move |value| (name.clone(), value.to_owned()))
        })
        .collect()
}

fn read_body(
    response: ureq::Response,
    method: &str,
    limits: &HttpLimits,
    throttle: &mut dyn FnMut(usize) -> Result<(), EgressError>,
) -> Result<Vec<u8>, EgressError> {
    let limit = limits.max_response_bytes;
    let bodiless = method.eq_ignore_ascii_case("HEAD") || matches!(response.status(), 204 | 304);
    let declared = response
        .header("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    if !bodiless && declared.is_some_and(|n| n > limit) {
        return Err(EgressError::TooLarge { limit });
    }
    let mut reader = response.into_reader();
    let mut body = Vec::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        remaining(limits.deadline)?;
        let room = limit.saturating_sub(u64::try_from(body.len()).unwrap_or(u64::MAX));
        // Ask for one byte past the limit at most: enough to tell that the
        // body is too large without buffering beyond it.
        let want = usize::try_from(room.saturating_add(1))
            .unwrap_or(CHUNK_BYTES)
            .min(CHUNK_BYTES);
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(body_read_error(&e)),
        };
        if u64::try_from(n).unwrap_or(u64::MAX) > room {
            return Err(EgressError::TooLarge { limit });
        }
        throttle(n)?;
        body.extend_from_slice(&buf[..n]);
    }
    Ok(body)
}

/// Perform one HTTP(S) exchange on behalf of a function.
///
/// Only `http` and `https` URLs. Redirects (301, 302, 303, 307, 308 with a
/// `Location`) are followed up to [`HttpLimits::max_redirects`], each hop's
/// destination checked like the first (a redirect to a refused address
/// fails with [`EgressError::Refused`] before anything connects to it).
/// 303, and 301/302 of a `POST`, become a `GET` without body; credentials
/// (`Authorization`, `Cookie`) are not carried to another origin.
///
/// The body is read in chunks of at most 16 KiB; `throttle(n)` is called
/// before each chunk of `n` bytes is taken, and may block (bandwidth
/// limiting) or return an error, which aborts the exchange with that
/// error. A body larger than [`HttpLimits::max_response_bytes`] fails with
/// [`EgressError::TooLarge`]. Any status, 4xx and 5xx included, is a
/// response, not an error. No proxy is used, whatever the environment says.
pub fn http_request(
    check: &DestinationCheck,
    tls: &TlsSettings,
    request: &HttpRequest,
    limits: &HttpLimits,
    throttle: &mut dyn FnMut(usize) -> Result<(), EgressError>,
) -> Result<HttpResponse, EgressError> {
    if !is_token(&request.method) {
        return Err(EgressError::InvalidRequest(format!(
            "{:?} is not a valid HTTP method",
            request.method
        )));
    }
    let mut url = http_url(&request.url)?;
    let mut headers = request_headers(&request.headers)?;
    let mut method = request.method.clone();
    let mut body: &[u8] = &request.body;

    let resolver_error = Arc::new(Mutex::new(None));
    let mut builder = ureq::AgentBuilder::new()
        .try_proxy_from_env(false)
        .redirects(0)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .no_delay(true)
        .user_agent(USER_AGENT)
        .resolver(CheckedResolver {
            check: Arc::new(check.clone()),
            deadline: limits.deadline,
            error: Arc::clone(&resolver_error),
        });
    if let Ok(config) = &tls.config {
        builder = builder.tls_config(Arc::clone(config));
    }
    let agent = builder.build();

    let mut redirects = 0u32;
    loop {
        if url.scheme() == "https" {
            // Never fall back to ureq's own TLS settings.
            tls.config()?;
        }
        let left = remaining(limits.deadline)?;
        let mut call = agent.request_url(&method, &url).timeout(left);
        for (name, value) in &headers {
            call = call.set(name, value);
        }
        *resolver_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let bodiless_method = matches!(
            method.to_ascii_uppercase().as_str(),
            "GET" | "HEAD" | "DELETE" | "OPTIONS" | "TRACE"
        );
        let result = if body.is_empty() && bodiless_method {
            call.call()
        } else {
            call.send_bytes(body)
        };
        let response = match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(t)) => {
                return Err(transport_error(
                    &t,
                    &resolver_error,
                    &url,
                    limits.max_redirects,
                ));
            }
        };
        let status = response.status();
        let location = response.header("location").map(str::to_owned);
        if let (301 | 302 | 303 | 307 | 308, Some(location)) = (status, location) {
            if redirects >= limits.max_redirects {
                return Err(EgressError::TooManyRedirects {
                    max: limits.max_redirects,
                });
            }
            redirects += 1;
            let next = url.join(&location).map_err(|e| EgressError::InvalidUrl {
                url: location.chars().take(200).collect(),
                reason: format!("bad redirect location from {}: {e}", redacted(&url)),
            })?;
            require_http(&next)?;
            let is_head = method.eq_ignore_ascii_case("HEAD");
            let is_post = method.eq_ignore_ascii_case("POST");
            if (status == 303 && !is_head) || (matches!(status, 301 | 302) && is_post) {
                method = "GET".to_owned();
                body = &[];
                headers.retain(|(n, _)| !BODY_HEADERS.contains(&n.to_ascii_lowercase().as_str()));
            }
            if !same_origin(&url, &next) {
                headers.retain(|(n, _)| {
                    !ORIGIN_BOUND_HEADERS.contains(&n.to_ascii_lowercase().as_str())
                });
            }
            tracing::debug!(status, "following a redirect");
            url = next;
            continue;
        }
        let response_headers = response_headers(&response);
        let body = read_body(response, &method, limits, throttle)?;
        return Ok(HttpResponse {
            status,
            headers: response_headers,
            body,
            url: url.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Reply, Server, private_ca_and_server, raw, redirect, response};
    use bento_policy::ExitPolicy;
    use std::time::Duration;

    /// Grant and policy both accepting exactly these rules.
    fn both(rules: &[String]) -> DestinationCheck {
        let rules = ExitPolicy::parse(rules).unwrap();
        DestinationCheck::new(rules.clone(), rules, Vec::new())
    }

    fn limits() -> HttpLimits {
        HttpLimits::new(Instant::now() + Duration::from_secs(10))
    }

    fn no_throttle() -> impl FnMut(usize) -> Result<(), EgressError> {
        |_| Ok(())
    }

    fn get(check: &DestinationCheck, url: &str) -> Result<HttpResponse, EgressError> {
        http_request(
            check,
            &TlsSettings::default(),
            &HttpRequest::get(url),
            &limits(),
            &mut no_throttle(),
        )
    }

    #[test]
    fn an_http_get_of_an_allowed_server_returns_status_headers_and_body() {
        let server = Server::bind();
        let check = both(&[server.rule()]);
        let url = server.url("/path?q=1");
        let requests = server.serve(vec![response(
            "200 OK",
            &[
                ("X-Thing", "one"),
                ("Content-Type", "text/plain"),
                ("X-Thing", "two"),
            ],
            b"hello",
        )]);
        let mut request = HttpRequest::get(&url);
        request.headers = vec![
            ("X-Custom".to_owned(), "yes".to_owned()),
            ("Accept".to_owned(), "text/plain".to_owned()),
            ("Accept".to_owned(), "text/html".to_owned()),
            ("Content-Length".to_owned(), "999".to_owned()),
        ];
        let resp = http_request(
            &check,
            &TlsSettings::default(),
            &request,
            &limits(),
            &mut no_throttle(),
        )
        .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"hello");
        assert_eq!(resp.url, url);
        assert_eq!(resp.header("content-type"), Some("text/plain"));
        let things: Vec<&str> = resp
            .headers
            .iter()
            .filter(|(n, _)| n == "x-thing")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(things, ["one", "two"]);
        let seen = requests.recv().unwrap();
        assert!(seen.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains("X-Custom: yes\r\n"), "{seen}");
        assert!(seen.contains("Accept: text/plain, text/html\r\n"), "{seen}");
        assert!(seen.contains("User-Agent: bento\r\n"), "{seen}");
        // Not `contains("999")`: the server's port may hold those digits.
        assert!(
            !seen.to_ascii_lowercase().contains("content-length: 999"),
            "framing headers are the client's: {seen}"
        );
    }

    #[test]
    fn a_name_is_resolved_and_checked_like_a_literal() {
        let server = Server::bind();
        let check = both(&[server.rule()]);
        let url = format!("http://localhost:{}/", server.port);
        let _requests = server.serve(vec![response("200 OK", &[], b"named")]);
        let resp = get(&check, &url).unwrap();
        assert_eq!(resp.body, b"named");
    }

    #[test]
    fn a_request_to_a_refused_destination_is_refused_before_connecting() {
        let server = Server::bind();
        let check = DestinationCheck::new(
            ExitPolicy::parse(&[server.rule()]).unwrap(),
            ExitPolicy::parse(&["accept *:*"]).unwrap(),
            Vec::new(),
        );
        let err = get(&check, &server.url("/")).unwrap_err();
        assert_eq!(
            err,
            EgressError::Refused {
                destination: format!("127.0.0.1:{}", server.port),
                reason: format!(
                    "by the box policy: 127.0.0.1 is a private, local or own address and no rule names 127.0.0.1:{} explicitly",
                    server.port
                ),
            }
        );
        let err = get(&check, &format!("http://localhost:{}/", server.port)).unwrap_err();
        assert!(matches!(err, EgressError::Refused { .. }), "{err}");
        server.assert_no_connection();
    }

    #[test]
    fn an_ipv6_literal_url_is_checked_too() {
        let check = both(&["accept *:*".to_owned()]);
        let err = get(&check, "http://[::1]:9/").unwrap_err();
        assert!(
            matches!(&err, EgressError::Refused { destination, .. } if destination == "[::1]:9"),
            "{err}"
        );
    }

    #[test]
    fn a_redirect_to_a_refused_loopback_port_is_refused_and_that_server_sees_no_connection() {
        let allowed = Server::bind();
        let refused = Server::bind();
        let check = both(&[allowed.rule()]);
        let url = allowed.url("/");
        let _requests = allowed.serve(vec![
            redirect("302 Found", &refused.url("/secret")),
            redirect(
                "301 Moved Permanently",
                &format!("http://localhost:{}/", refused.port),
            ),
        ]);
        for _ in 0..2 {
            let err = get(&check, &url).unwrap_err();
            assert!(
                matches!(&err, EgressError::Refused { destination, .. }
                    if destination.ends_with(&format!(":{}", refused.port))),
                "{err}"
            );
        }
        refused.assert_no_connection();
    }

    #[test]
    fn redirects_are_followed_with_the_usual_method_rules_and_the_final_url_reported() {
        let first = Server::bind();
        let second = Server::bind();
        let check = both(&[first.rule(), second.rule()]);
        let start = first.url("/start");
        let final_url = second.url("/final");
        let first_requests = first.serve(vec![
            redirect("307 Temporary Redirect", "/again"),
            redirect("303 See Other", &final_url),
        ]);
        let second_requests = second.serve(vec![response("200 OK", &[], b"done")]);
        let request = HttpRequest {
            method: "POST".to_owned(),
            url: start,
            headers: vec![
                ("Content-Type".to_owned(), "text/plain".to_owned()),
                ("Authorization".to_owned(), "Bearer sekrit".to_owned()),
            ],
            body: b"payload".to_vec(),
        };
        let resp = http_request(
            &check,
            &TlsSettings::default(),
            &request,
            &limits(),
            &mut no_throttle(),
        )
        .unwrap();
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"done"[..]));
        assert_eq!(resp.url, final_url);

        let one = first_requests.recv().unwrap();
        assert!(one.starts_with("POST /start "), "{one}");
        assert!(one.ends_with("payload"), "{one}");
        let two = first_requests.recv().unwrap();
        assert!(
            two.starts_with("POST /again "),
            "307 keeps the method: {two}"
        );
        assert!(two.ends_with("payload"), "307 keeps the body: {two}");
        assert!(two.contains("Authorization: Bearer sekrit"), "{two}");
        let three = second_requests.recv().unwrap();
        assert!(three.starts_with("GET /final "), "303 becomes GET: {three}");
        assert!(three.ends_with("\r\n\r\n"), "without body: {three}");
        assert!(!three.contains("Content-Type"), "{three}");
        assert!(
            !three.contains("sekrit"),
            "credentials stay with their origin: {three}"
        );
    }

    #[test]
    fn a_redirect_chain_longer_than_the_limit_fails_with_too_many_redirects() {
        let server = Server::bind();
        let check = both(&[server.rule()]);
        let url = server.url("/0");
        let _requests = server.serve(vec![
            redirect("302 Found", "/1"),
            redirect("302 Found", "/2"),
            redirect("302 Found", "/3"),
            // A chain as long as the limit is fine:
            redirect("302 Found", "/1"),
            redirect("302 Found", "/2"),
            response("200 OK", &[], b"end"),
        ]);
        let limits = HttpLimits {
            max_redirects: 2,
            ..limits()
        };
        let run = || {
            http_request(
                &check,
                &TlsSettings::default(),
                &HttpRequest::get(&url),
                &limits,
                &mut no_throttle(),
            )
        };
        let err = run().unwrap_err();
        assert_eq!(err, EgressError::TooManyRedirects { max: 2 });
        assert_eq!(err.to_string(), "too many redirects (more than 2)");
        assert_eq!(run().unwrap().body, b"end");
    }

    #[test]
    fn a_redirect_to_another_scheme_is_an_invalid_url() {
        let server = Server::bind();
        let check = both(&[server.rule()]);
        let url = server.url("/");
        let _requests = server.serve(vec![redirect("302 Found", "file:///etc/passwd")]);
        let err = get(&check, &url).unwrap_err();
        assert!(matches!(err, EgressError::InvalidUrl { .. }), "{err}");
    }

    #[test]
    fn a_body_over_the_limit_fails_with_too_large() {
        let server = Server::bind();
        let check = both(&[server.rule()]);
        let url = server.url("/");
        let big = vec![b'x'; 100_000];
        let mut close_delimited = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        close_delimited.extend_from_slice(&big);
        let _requests = server.serve(vec![
            response("200 OK", &[], &big),
            raw(&close_delimited),
            response("200 OK", &[], &big[..50_000]),
        ]);
        let limits = HttpLimits {
            max_response_bytes: 50_000,
            ..limits()
        };
        let run = |delivered: &mut usize| {
            http_request(
                &check,
                &TlsSettings::default(),
                &HttpRequest::get(&url),
                &limits,
                &mut |n| {
                    *delivered += n;
                    Ok(())
                },
            )
        };
        // Declared too large: refused before reading any of it.
        let mut delivered = 0;
        let err = run(&mut delivered).unwrap_err();
        assert_eq!(err, EgressError::TooLarge { limit: 50_000 });
        assert_eq!(delivered, 0);
        // Undeclared: reading stops at the limit.
        let mut delivered = 0;
        let err = run(&mut delivered).unwrap_err();
        assert_eq!(err, EgressError::TooLarge { limit: 50_000 });
        assert!(delivered <= 50_000, "{delivered}");
        assert_eq!(
            err.to_string(),
            "the response body is larger than the limit of 50000 bytes"
        );
        // Exactly at the limit is fine.
        let mut delivered = 0;
        assert_eq!(run(&mut delivered).unwrap().body.len(), 50_000);
        assert_eq!(delivered, 50_000);
    }

    #[test]
    fn chunked_and_close_delimited_bodies_are_decoded() {
        let server = Server::bind();
        let check = both(&[server.rule()]);
        let url = server.url("/");
        let _requests = server.serve(vec![
            raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"),
            raw(b"HTTP/1.0 200 OK\r\n\r\nuntil the end"),
        ]);
        assert_eq!(get(&check, &url).unwrap().body, b"hello, world");
        assert_eq!(get(&check, &url).unwrap().body, b"until the end");
    }

    #[test]
    fn a_malformed_response_or_a_cut_body_is_an_http_error_not_an_invalid_request() {
        let server = Server::bind();
        let check = both(&[server.rule()]);
        let url = server.url("/");
        let _requests = server.serve(vec![
            raw(b"this is not HTTP\r\n\r\n"),
            raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"),
        ]);
        for _ in 0..2 {
            let err = get(&check, &url).unwrap_err();
            assert!(matches!(err, EgressError::Http(_)), "{err}");
        }
    }

    #[test]
    fn the_throttle_sees_every_body_byte_and_its_error_aborts_the_request() {
        let server = Server::bind();
        let check = both(&[server.rule()]);
        let url = server.url("/");
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let _requests = server.serve(vec![
            response("200 OK", &[], &body),
            response("200 OK", &[], &body),
        ]);
        let mut calls = Vec::new();
        let resp = http_request(
            &check,
            &TlsSettings::default(),
            &HttpRequest::get(&url),
            &limits(),
            &mut |n| {
                calls.push(n);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(resp.body, body);
        assert_eq!(calls.iter().sum::<usize>(), body.len());
        assert!(calls.len() > 1 && calls.iter().all(|&n| n > 0 && n <= CHUNK_BYTES));

        let mut calls = 0;
        let err = http_request(
            &check,
            &TlsSettings::default(),
            &HttpRequest::get(&url),
            &limits(),
            &mut |_| {
                calls += 1;
                if calls == 2 {
                    Err(EgressError::Stopped)
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert_eq!(err, EgressError::Stopped);
        assert_eq!(calls, 2);
    }

    #[test]
    fn error_statuses_are_responses_not_errors() {
        let server = Server::bind();
        let check = both(&[server.rule()]);
        let url = server.url("/");
        let _requests = server.serve(vec![
            response("404 Not Found", &[], b"nope"),
            response("503 Service Unavailable", &[], b"later"),
            response("302 Found", &[], b"no location"),
        ]);
        let resp = get(&check, &url).unwrap();
        assert_eq!((resp.status, resp.body.as_slice()), (404, &b"nope"[..]));
        assert_eq!(get(&check, &url).unwrap().status, 503);
        // A redirect without a Location cannot be followed: it is the response.
        let resp = get(&check, &url).unwrap();
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (302, &b"no location"[..])
        );
    }

    #[test]
    fn non_http_urls_are_invalid() {
        let check = both(&["accept *:*".to_owned()]);
        for url in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "not a url",
            "http://",
            "/relative",
            "gopher://127.0.0.1:70/",
        ] {
            let err = get(&check, url).unwrap_err();
            assert!(
                matches!(err, EgressError::InvalidUrl { .. }),
                "{url}: {err}"
            );
        }
        let err = get(&check, "ftp://user:hunter2@example.com/").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("only http and https"), "{err}");
    }

    #[test]
    fn bad_methods_and_header_injection_are_refused_before_connecting() {
        let server = Server::bind();
        let check = both(&[server.rule()]);
        let base = HttpRequest::get(server.url("/"));
        let bad = [
            HttpRequest {
                method: "GET / HTTP/1.1\r\nX:".to_owned(),
                ..base.clone()
            },
            HttpRequest {
                method: String::new(),
                ..base.clone()
            },
            HttpRequest {
                headers: vec![("X-A".to_owned(), "b\r\nHost: evil".to_owned())],
                ..base.clone()
            },
            HttpRequest {
                headers: vec![("Bad Name".to_owned(), "v".to_owned())],
                ..base.clone()
            },
        ];
        for request in bad {
            let err = http_request(
                &check,
                &TlsSettings::default(),
                &request,
                &limits(),
                &mut no_throttle(),
            )
            .unwrap_err();
            assert!(matches!(err, EgressError::InvalidRequest(_)), "{err}");
        }
        server.assert_no_connection();
    }

    #[test]
    fn a_silent_server_times_out_at_the_deadline() {
        let server = Server::bind();
        let check = both(&[server.rule()]);
        let url = server.url("/");
        let _requests = server.serve(vec![Reply::Hang(Duration::from_secs(5))]);
        let started = Instant::now();
        let limits = HttpLimits::new(started + Duration::from_millis(300));
        let err = http_request(
            &check,
            &TlsSettings::default(),
            &HttpRequest::get(&url),
            &limits,
            &mut no_throttle(),
        )
        .unwrap_err();
        assert_eq!(err, EgressError::Timeout);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn https_to_a_local_server_works_with_a_private_ca_as_an_extra_root() {
        let (ca_pem, server_config) = private_ca_and_server();
        let server = Server::bind();
        let check = both(&[server.rule()]);
        let url = format!("https://localhost:{}/secure", server.port);
        let requests = server.serve_tls(server_config, vec![response("200 OK", &[], b"over tls")]);
        let tls = TlsSettings::with_extra_roots_pem(ca_pem.as_bytes()).unwrap();
        let resp = http_request(
            &check,
            &tls,
            &HttpRequest::get(&url),
            &limits(),
            &mut no_throttle(),
        )
        .unwrap();
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"over tls"[..]));
        assert!(requests.recv().unwrap().starts_with("GET /secure "));
    }

    #[test]
    fn https_to_a_server_no_trusted_root_vouches_for_fails_with_a_tls_error() {
        let (_, server_config) = private_ca_and_server();
        let server = Server::bind();
        let check = both(&[server.rule()]);
        let url = format!("https://localhost:{}/", server.port);
        let _requests = server.serve_tls(server_config, vec![response("200 OK", &[], b"")]);
        let err = get(&check, &url).unwrap_err();
        assert!(
            matches!(&err, EgressError::Tls(reason) if reason.contains("certificate")),
            "{err}"
        );
    }

    #[test]
    fn extra_roots_must_be_certificates() {
        for pem in [
            &b""[..],
            b"hello",
            b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        ] {
            let err = TlsSettings::with_extra_roots_pem(pem).unwrap_err();
            assert!(matches!(err, EgressError::Tls(_)), "{err}");
        }
    }
}
