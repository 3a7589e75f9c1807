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

/// Longest a SOCKS handshake with the local tor may take (circuit building
/// and, for onion services, descriptor lookup happen inside it) unless the
/// function asks for less.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// A stream to `host:port` through tor's SocksPort `socks`, opened by
/// `until` (the function's own timeout, if it gave one) and by `deadline`
/// (its instance's wall-clock limit); on failure, why, as
/// `"kind: message"` for Python.
pub(crate) fn tor_connect(
    socks: SocketAddr,
    isolation: &str,
    host: &str,
    port: u16,
    until: Option<Instant>,
    deadline: Instant,
) -> Result<TcpStream, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.len() > 255 {
        return Err("invalid: the host name must be 1-255 bytes".into());
    }
    // Tor exits refuse private addresses by default; refusing them here
    // too keeps a box whose own relay is an exit from being reached
    // through itself.
    let literal = host.parse::<IpAddr>().ok();
    if literal.is_some_and(is_private_or_local) || host.eq_ignore_ascii_case("localhost") {
        return Err(format!(
            "refused: {host} is a private or local address; Tor streams go only to public addresses and onion services"
        ));
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err("timeout: the instance's wall-clock limit has passed".into());
    }
    // A function that cannot afford to block long (one loop serving many
    // streams) bounds the wait itself; an elapsed timeout of its own is
    // reported like tor's slowness, as "timeout".
    let asked = until.map_or(HANDSHAKE_TIMEOUT, |u| {
        u.saturating_duration_since(Instant::now())
    });
    let timeout = remaining.min(HANDSHAKE_TIMEOUT).min(asked);
    if timeout.is_zero() {
        return Err(format!(
            "timeout: Tor did not connect to {host}:{port} in time"
        ));
    }
    // The timeouts set below bound every step, so a tor that goes quiet
    // at any point is reported as slow, not as broken.
    let io = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!("timeout: Tor did not connect to {host}:{port} in time")
        } else {
            format!("io: the box's tor SocksPort failed: {e}")
        }
    };
    let mut stream = TcpStream::connect_timeout(&socks, timeout.min(Duration::from_secs(5)))
        .map_err(|e| format!("io: cannot reach the box's tor SocksPort: {e}"))?;
    stream.set_nodelay(true).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;

    // Greeting: username/password only, so the isolation always applies.
    stream.write_all(&[5, 1, 2]).map_err(io)?;
    let mut reply = [0u8; 2];
    stream.read_exact(&mut reply).map_err(io)?;
    if reply != [5, 2] {
        return Err("io: the box's tor does not accept SOCKS5 username authentication".into());
    }
    let user = isolation.as_bytes();
    let mut auth = vec![1, u8::try_from(user.len()).unwrap_or(u8::MAX)];
    auth.extend_from_slice(&user[..user.len().min(255)]);
    auth.extend_from_slice(&[1, b'x']);
    stream.write_all(&auth).map_err(io)?;
    stream.read_exact(&mut reply).map_err(io)?;
    if reply[1] != 0 {
        return Err("io: the box's tor refused the SOCKS credentials".into());
    }

    let mut request = vec![5, 1, 0];
    match literal {
        Some(IpAddr::V4(v4)) => {
            request.push(1);
            request.extend_from_slice(&v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            request.push(4);
            request.extend_from_slice(&v6.octets());
        }
        None => {
            request.push(3);
            request.push(u8::try_from(host.len()).unwrap_or(u8::MAX));
            request.extend_from_slice(host.as_bytes());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).map_err(io)?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).map_err(io)?;
    if head[1] != 0 {
        return Err(format!(
            "io: Tor could not connect to {host}:{port}: {}",
            socks_reply(head[1])
        ));
    }
    let skip = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).map_err(io)?;
            usize::from(len[0]) + 2
        }
        other => return Err(format!("io: bad SOCKS reply address type {other}")),
    };
    let mut bound = vec![0u8; skip];
    stream.read_exact(&mut bound).map_err(io)?;
    stream.set_read_timeout(None).map_err(io)?;
    stream.set_write_timeout(None).map_err(io)?;
    Ok(stream)
}

/// SOCKS5 reply codes, with tor's meanings for the ones it uses.
fn socks_reply(code: u8) -> &'static str {
    match code {
        1 => "general failure (for an onion service: it may be unreachable or not yet published)",
        2 => "not allowed by the exit's policy",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "timed out",
        7 => "command not supported",
        8 => "address type not supported",
        // tor's extended errors for onion services (ExtendedErrors).
        0xf0 => "onion service descriptor not found",
        0xf1 => "onion service descriptor is invalid",
        0xf2 => "onion service introduction failed",
        0xf3 => "onion service rendezvous failed",
        0xf4 => "onion service needs client authorization",
        0xf5 => "onion service client authorization is wrong",
        0xf6 => "bad onion address",
        0xf7 => "onion service introduction timed out",
        _ => "unknown SOCKS error",
    }
}

/// A fresh isolation token for one instance.
pub(crate) fn isolation_token() -> String {
    let mut bytes = [0u8; 16];
    // Without randomness every instance would share circuits; a fixed
    // fallback still works, only less isolated.
    let _ = getrandom::fill(&mut bytes);
    format!("bento-{}", hex::encode(bytes))
}
