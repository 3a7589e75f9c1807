//! A minimal SOCKS5 client (RFC 1928, RFC 1929) for talking through tor.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TorError;

/// How long the whole SOCKS handshake (including tor building a circuit and
/// the exit connecting) may take.
pub const SOCKS_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects to `host:port` through the SOCKS5 proxy `proxy` (a tor
/// SocksPort). `host` may be an IP address, a name or a `.onion` address
/// (names are resolved by tor, never locally). `isolation` sends a
/// username/password, which tor's `IsolateSOCKSAuth` (on by default) uses to
/// put streams with different credentials on different circuits. The
/// returned stream has `TCP_NODELAY` set. The handshake is bounded by
/// [`SOCKS_TIMEOUT`].
pub async fn socks5_connect(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    isolation: Option<(&str, &str)>,
) -> Result<TcpStream, TorError> {
    let target = format!("{host}:{port}");
    let err = |detail: String| TorError::Socks {
        proxy: proxy.to_string(),
        target: target.clone(),
        detail,
    };
    if host.is_empty() || host.len() > 255 {
        return Err(err("host name must be 1..=255 bytes".into()));
    }
    if let Some((u, p)) = isolation
        && (u.is_empty() || u.len() > 255 || p.is_empty() || p.len() > 255)
    {
        return Err(err(
            "isolation username and password must be 1..=255 bytes".into()
        ));
    }
    let handshake = async {
        let mut s = TcpStream::connect(proxy)
            .await
            .map_err(|e| err(format!("connecting to the proxy: {e}")))?;
        s.set_nodelay(true)
            .map_err(|e| err(format!("setting TCP_NODELAY: {e}")))?;
        let method: u8 = if isolation.is_some() { 0x02 } else { 0x00 };
        s.write_all(&[0x05, 0x01, method])
            .await
            .map_err(|e| err(format!("sending greeting: {e}")))?;
        let mut reply = [0u8; 2];
        s.read_exact(&mut reply)
            .await
            .map_err(|e| err(format!("reading method choice: {e}")))?;
        if reply[0] != 0x05 || reply[1] != method {
            return Err(err(format!(
                "proxy refused auth method {method:#04x} (answered {:#04x} {:#04x})",
                reply[0], reply[1]
            )));
        }
        if let Some((u, p)) = isolation {
            let mut msg = vec![0x01, u.len() as u8];
            msg.extend_from_slice(u.as_bytes());
            msg.push(p.len() as u8);
            msg.extend_from_slice(p.as_bytes());
            s.write_all(&msg)
                .await
                .map_err(|e| err(format!("sending credentials: {e}")))?;
            s.read_exact(&mut reply)
                .await
                .map_err(|e| err(format!("reading auth status: {e}")))?;
            if reply[1] != 0x00 {
                return Err(err(format!("authentication refused ({:#04x})", reply[1])));
            }
        }
        let mut req = vec![0x05, 0x01, 0x00];
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                req.push(0x01);
                req.extend_from_slice(&ip.octets());
            }
            Ok(IpAddr::V6(ip)) => {
                req.push(0x04);
                req.extend_from_slice(&ip.octets());
            }
            Err(_) => {
                req.push(0x03);
                req.push(host.len() as u8);
                req.extend_from_slice(host.as_bytes());
            }
        }
        req.extend_from_slice(&port.to_be_bytes());
        s.write_all(&req)
            .await
            .map_err(|e| err(format!("sending CONNECT: {e}")))?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head)
            .await
            .map_err(|e| err(format!("reading CONNECT reply: {e}")))?;
        if head[0] != 0x05 {
            return Err(err(format!("bad reply version {:#04x}", head[0])));
        }
        if head[1] != 0x00 {
            return Err(err(format!(
                "CONNECT failed: {} ({:#04x})",
                reply_meaning(head[1]),
                head[1]
            )));
        }
        let rest = match head[3] {
            0x01 => 4 + 2,
            0x04 => 16 + 2,
            0x03 => {
                let mut len = [0u8; 1];
                s.read_exact(&mut len)
                    .await
                    .map_err(|e| err(format!("reading bound address: {e}")))?;
                usize::from(len[0]) + 2
            }
            other => return Err(err(format!("bad bound address type {other:#04x}"))),
        };
        let mut bound = vec![0u8; rest];
        s.read_exact(&mut bound)
            .await
            .map_err(|e| err(format!("reading bound address: {e}")))?;
        Ok(s)
    };
    tokio::time::timeout(SOCKS_TIMEOUT, handshake)
        .await
        .map_err(|_| err(format!("no answer within {} s", SOCKS_TIMEOUT.as_secs())))?
}

/// RFC 1928 reply codes, plus tor's onion-service extensions (0xF0..).
fn reply_meaning(code: u8) -> &'static str {
    match code {
        0x01 => "general failure",
        0x02 => "not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "TTL expired",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        0xF0 => "onion service descriptor not found",
        0xF1 => "onion service descriptor invalid",
        0xF2 => "onion service introduction failed",
        0xF3 => "onion service rendezvous failed",
        0xF4 => "onion service missing client authorization",
        0xF5 => "onion service wrong client authorization",
        0xF6 => "onion address invalid",
        0xF7 => "onion service introduction timed out",
        _ => "unknown error",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::TcpListener;

    /// A fake SOCKS5 server that checks the request and answers `code`.
    async fn fake_proxy(code: u8, expect_auth: bool) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut g = [0u8; 3];
            s.read_exact(&mut g).await.unwrap();
            if expect_auth {
                assert_eq!(g, [5, 1, 2]);
                s.write_all(&[5, 2]).await.unwrap();
                let mut h = [0u8; 2];
                s.read_exact(&mut h).await.unwrap();
                let mut u = vec![0u8; h[1] as usize];
                s.read_exact(&mut u).await.unwrap();
                assert_eq!(u, b"user");
                let mut pl = [0u8; 1];
                s.read_exact(&mut pl).await.unwrap();
                let mut p = vec![0u8; pl[0] as usize];
                s.read_exact(&mut p).await.unwrap();
                assert_eq!(p, b"pw");
                s.write_all(&[1, 0]).await.unwrap();
            } else {
                assert_eq!(g, [5, 1, 0]);
                s.write_all(&[5, 0]).await.unwrap();
            }
            let mut r = [0u8; 5];
            s.read_exact(&mut r).await.unwrap();
            assert_eq!(&r[..4], &[5, 1, 0, 3]);
            let mut name = vec![0u8; r[4] as usize + 2];
            s.read_exact(&mut name).await.unwrap();
            assert_eq!(&name[..r[4] as usize], b"example.onion");
            s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0])
                .await
                .unwrap();
            s.write_all(b"hi").await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn connects_with_and_without_auth() {
        let p = fake_proxy(0, false).await;
        let mut s = socks5_connect(p, "example.onion", 80, None).await.unwrap();
        assert!(s.nodelay().unwrap());
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hi");
        let p = fake_proxy(0, true).await;
        socks5_connect(p, "example.onion", 80, Some(("user", "pw")))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn reports_failure_code() {
        let p = fake_proxy(0xF0, false).await;
        let e = socks5_connect(p, "example.onion", 80, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("descriptor not found"), "{e}");
    }
}
