//! `tor_connect`: a SOCKS5 connection through the box's tor, with
//! username/password credentials that isolate one instance's circuits from
//! every other instance's (tor's IsolateSOCKSAuth, on by default).
//!
//! Blocking and small on purpose: it runs on the instance's own thread,
//! like every capability call.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bento_policy::is_private_or_local;
use bento_tor::socks::wire;

use crate::host_error::HostError;

/// Longest a SOCKS handshake with the local tor may take (circuit building
/// and, for onion services, descriptor lookup happen inside it) unless the
/// function asks for less.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// A stream to `host:port` through tor's SocksPort `socks`, opened by
/// `until` (the function's own timeout, if it gave one) and by `deadline`
/// (its instance's wall-clock limit); on failure, why, for Python.
pub(crate) fn tor_connect(
    socks: SocketAddr,
    isolation: &str,
    host: &str,
    port: u16,
    until: Option<Instant>,
    deadline: Instant,
) -> Result<TcpStream, HostError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.len() > 255 {
        return Err(HostError::invalid("the host name must be 1-255 bytes"));
    }
    // Tor exits refuse private addresses by default; refusing them here
    // too keeps a box whose own relay is an exit from being reached
    // through itself.
    let literal = host.parse::<IpAddr>().ok();
    if literal.is_some_and(is_private_or_local) || host.eq_ignore_ascii_case("localhost") {
        return Err(HostError::refused(format!(
            "{host} is a private or local address; Tor streams go only to public addresses and onion services"
        )));
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(HostError::timeout(
            "the instance's wall-clock limit has passed",
        ));
    }
    // A function that cannot afford to block long (one loop serving many
    // streams) bounds the wait itself; an elapsed timeout of its own is
    // reported like tor's slowness, as "timeout".
    let asked = until.map_or(HANDSHAKE_TIMEOUT, |u| {
        u.saturating_duration_since(Instant::now())
    });
    let timeout = remaining.min(HANDSHAKE_TIMEOUT).min(asked);
    if timeout.is_zero() {
        return Err(HostError::timeout(format!(
            "Tor did not connect to {host}:{port} in time"
        )));
    }
    // The timeouts set below bound every step, so a tor that goes quiet
    // at any point is reported as slow, not as broken.
    let io = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            HostError::timeout(format!("Tor did not connect to {host}:{port} in time"))
        } else {
            HostError::io(format!("the box's tor SocksPort failed: {e}"))
        }
    };
    let mut stream = TcpStream::connect_timeout(&socks, timeout.min(Duration::from_secs(5)))
        .map_err(|e| HostError::io(format!("cannot reach the box's tor SocksPort: {e}")))?;
    stream.set_nodelay(true).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;

    // Username/password only, so the isolation always applies. The bytes
    // are bento-tor's, the project's one SOCKS5 encoding.
    stream.write_all(&wire::greeting(true)).map_err(io)?;
    let mut reply = [0u8; 2];
    stream.read_exact(&mut reply).map_err(io)?;
    if wire::check_method_choice(reply, true).is_err() {
        return Err(HostError::io(
            "the box's tor does not accept SOCKS5 username authentication",
        ));
    }
    let auth = wire::credentials(isolation, "x")
        .map_err(|e| HostError::io(format!("bad isolation credentials: {e}")))?;
    stream.write_all(&auth).map_err(io)?;
    stream.read_exact(&mut reply).map_err(io)?;
    if wire::check_auth_status(reply).is_err() {
        return Err(HostError::io("the box's tor refused the SOCKS credentials"));
    }
    let request =
        wire::connect_request(host, port).map_err(|e| HostError::invalid(e.to_string()))?;
    stream.write_all(&request).map_err(io)?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).map_err(io)?;
    let skip = match wire::check_reply_head(head) {
        Ok(wire::BoundAddress::Bytes(n)) => n,
        Ok(wire::BoundAddress::NameOfLength) => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).map_err(io)?;
            wire::name_bytes(len[0])
        }
        Err(wire::ReplyError::Refused { code }) => {
            return Err(HostError::io(format!(
                "Tor could not connect to {host}:{port}: {}",
                wire::reply_meaning(code)
            )));
        }
        Err(e) => return Err(HostError::io(e.to_string())),
    };
    let mut bound = vec![0u8; skip];
    stream.read_exact(&mut bound).map_err(io)?;
    stream.set_read_timeout(None).map_err(io)?;
    stream.set_write_timeout(None).map_err(io)?;
    Ok(stream)
}

/// A fresh isolation token for one instance.
pub(crate) fn isolation_token() -> String {
    let mut bytes = [0u8; 16];
    // Without randomness every instance would share circuits; a fixed
    // fallback still works, only less isolated.
    let _ = getrandom::fill(&mut bytes);
    format!("bento-{}", hex::encode(bytes))
}
