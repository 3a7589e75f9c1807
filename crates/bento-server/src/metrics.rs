//! Exact figures for the operator: counters and gauges in the Prometheus
//! text format, served over plain HTTP on a loopback address only.
//!
//! Clients get coarse buckets in `Status` (`BoxState::status_json`);
//! exact counts of sessions, instances and stores would let anyone watch
//! another user's activity, so they are here, where only the operator can
//! read them. Nothing here is per user: every figure is a box-wide total.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bento_protocol::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the endpoint serves: every figure, rendered when scraped
/// (`BoxState::metrics_text`).
pub(crate) type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Longest request head the endpoint reads; a scraper's is a few hundred
/// bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more wait for the listener's backlog.
const MAX_SCRAPES: usize = 8;

/// A metrics address that is not loopback.
#[derive(Debug, thiserror::Error)]
#[error(
    "the metrics endpoint {0} is not a loopback address: its exact figures are for the operator only (use 127.0.0.1:PORT or [::1]:PORT)"
)]
pub struct NotLoopback(pub SocketAddr);

/// Refuse a metrics address anyone but the box's own host could reach.
pub fn check_loopback(addr: SocketAddr) -> Result<SocketAddr, NotLoopback> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(NotLoopback(addr))
    }
}

/// Counters of what happened since the box started.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Functions stored.
    pub(crate) stores: AtomicU64,
    /// Sessions started.
    pub(crate) invocations: AtomicU64,
    /// Stored functions renewed.
    pub(crate) renewals: AtomicU64,
    /// Stored functions deleted by a client.
    pub(crate) deletions: AtomicU64,
    /// Stored functions removed because their lifetime ended.
    pub(crate) expirations: AtomicU64,
    /// Error frames sent, by position in [`ErrorCode::ALL`]; the last slot
    /// counts codes this version does not know.
    errors: [AtomicU64; ErrorCode::ALL.len() + 1],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            stores: AtomicU64::new(0),
            invocations: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            deletions: AtomicU64::new(0),
            expirations: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Metrics {
    /// Count one error frame sent to a client.
    pub(crate) fn count_error(&self, code: ErrorCode) {
        let slot = ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .unwrap_or(ErrorCode::ALL.len());
        if let Some(counter) = self.errors.get(slot) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Metrics {
    /// Write the error counters, one sample per error code name.
    pub(crate) fn write_error_counts(&self, out: &mut String) {
        let name = "bento_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Error frames sent to clients, by error code name."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        let names = ErrorCode::ALL
            .iter()
            .map(|c| c.name())
            .chain(std::iter::once("unknown"));
        for (code, counter) in names.zip(&self.errors) {
            let _ = writeln!(
                out,
                "{name}{{code=\"{code}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
    }
}

/// Write one sample with its help and type lines.
pub(crate) fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// Serve `GET /metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, render: Render) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _ = answer(stream, &*render).await;
            drop(permit);
        });
    }
}

/// Read one request head (bounded in size and time) and answer it.
async fn answer(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let (status, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => ("200 OK", render()),
        (Some(b"GET"), _) => ("404 Not Found", "only /metrics is served here\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "only GET /metrics is served here\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Fetch `http://addr/metrics` and parse its samples, for tools and tests
/// on the operator's side: `name` or `name{labels}` → value. Comment lines
/// are skipped; a line that is not `key value` is an error.
pub async fn scrape(addr: SocketAddr) -> std::io::Result<std::collections::BTreeMap<String, f64>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("no end of the response head".into()))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(invalid(format!("the endpoint answered {head:?}")));
    }
    let mut samples = std::collections::BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| invalid(format!("not a sample: {line:?}")))?;
        let value: f64 = value
            .parse()
            .map_err(|_| invalid(format!("not a number: {line:?}")))?;
        samples.insert(key.to_owned(), value);
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_may_serve_metrics() {
        for ok in ["127.0.0.1:9100", "[::1]:9100", "127.0.0.2:1"] {
            assert!(check_loopback(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "0.0.0.0:9100",
            "[::]:9100",
            "192.168.1.2:9100",
            "[2001:db8::1]:1",
        ] {
            assert!(check_loopback(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_error_code_has_its_own_counter() {
        let m = Metrics::default();
        m.count_error(ErrorCode::StorageFull);
        m.count_error(ErrorCode::StorageFull);
        m.count_error(ErrorCode::from_u16(9999));
        let slot = |code| ErrorCode::ALL.iter().position(|c| *c == code).unwrap();
        assert_eq!(
            m.errors[slot(ErrorCode::StorageFull)].load(Ordering::Relaxed),
            2
        );
        assert_eq!(m.errors[ErrorCode::ALL.len()].load(Ordering::Relaxed), 1);
        assert_eq!(
            m.errors[slot(ErrorCode::Internal)].load(Ordering::Relaxed),
            0
        );
    }
}
