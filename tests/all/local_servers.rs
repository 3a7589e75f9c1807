//! Servers on 127.0.0.1 that functions are (or are not) allowed to reach.
//! Each counts the connections it accepted, so a test can prove that a
//! refused destination was never contacted.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A listening server and how many connections it has accepted.
pub struct LocalServer {
    pub port: u16,
    accepted: Arc<AtomicUsize>,
    /// Client ports of the barrier connections `accepted()` opens, and how
    /// many of them the accept loop has taken.
    probes: Arc<(Mutex<HashSet<u16>>, Condvar)>,
}

impl LocalServer {
    /// Connections accepted so far, every one a client finished opening
    /// before this call included. The kernel completes a connection (the
    /// client's `connect` returns) before the accept loop takes it from the
    /// backlog, so a bare counter can lag behind a function that already
    /// ended; this opens one barrier connection and waits until the loop
    /// has taken it: the backlog is first in, first out, so everything
    /// before it has been counted.
    pub fn accepted(&self) -> usize {
        let (pending, taken) = &*self.probes;
        // Locked before connecting: the accept loop may take the probe at
        // once, and must not judge it before its port is registered.
        let mut pending_now = pending.lock().unwrap();
        let probe = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let probe_port = probe.local_addr().unwrap().port();
        pending_now.insert(probe_port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while pending_now.contains(&probe_port) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the accept loop never took the barrier connection"
            );
            pending_now = taken.wait_timeout(pending_now, left).unwrap().0;
        }
        self.accepted.load(Ordering::SeqCst)
    }

    fn spawn(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let probes = Arc::new((Mutex::new(HashSet::new()), Condvar::new()));
        let counter = accepted.clone();
        let barrier = probes.clone();
        let handle = Arc::new(handle);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let peer_port = stream.peer_addr().map(|a| a.port()).unwrap_or(0);
                let (pending, taken) = &*barrier;
                if pending.lock().unwrap().remove(&peer_port) {
                    taken.notify_all();
                    continue;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let handle = handle.clone();
                std::thread::spawn(move || handle(stream));
            }
        });
        Self {
            port,
            accepted,
            probes,
        }
    }

    /// Echoes every byte back until the client closes.
    pub fn echo() -> Self {
        Self::spawn(|mut stream| {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        })
    }

    /// Answers every HTTP request with `status`, extra header lines and
    /// `body`, then closes.
    pub fn http(status: &'static str, headers: String, body: Vec<u8>) -> Self {
        Self::spawn(move |mut stream| {
            if read_request_head(&mut stream).is_none() {
                return;
            }
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        })
    }

    /// Answers every HTTP request with a JSON description of it: method,
    /// target, headers (names lower-cased) and body.
    pub fn http_echo() -> Self {
        Self::spawn(|mut stream| {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            let head_end = loop {
                if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end;
                }
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            };
            let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
            let mut lines = head.split("\r\n");
            let mut start = lines.next().unwrap_or("").split(' ');
            let (method, target) = (start.next().unwrap_or(""), start.next().unwrap_or(""));
            let headers: serde_json::Map<String, serde_json::Value> = lines
                .filter_map(|line| line.split_once(':'))
                .map(|(k, v)| (k.trim().to_lowercase(), v.trim().into()))
                .collect();
            let length: usize = headers
                .get("content-length")
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = request[head_end + 4..].to_vec();
            while body.len() < length {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => body.extend_from_slice(&buf[..n]),
                }
            }
            let answer = serde_json::json!({
                "method": method,
                "target": target,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            })
            .to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Echo: yes\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                answer.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(answer.as_bytes());
        })
    }

    /// Accepts connections and reads requests but never answers.
    pub fn silent() -> Self {
        Self::spawn(|mut stream| {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    return;
                }
            }
        })
    }

    /// Redirects every request to `location`.
    pub fn redirect(location: String) -> Self {
        Self::http("302 Found", format!("Location: {location}\r\n"), Vec::new())
    }
}

/// Read an HTTP request up to the end of its head (the blank line), for
/// the test servers here and in other modules; `None` if the client went
/// away first.
pub fn read_request_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    Some(request)
}
