//! A minimal SOCKS5 client (RFC 1928, RFC 1929) for talking through tor.

use std::net::SocketAddr;
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
    // Checked before connecting, so a bad call never reaches the proxy.
    if let Some((u, p)) = isolation {
        wire::credentials(u, p).map_err(err)?;
    }
    let handshake = async {
        let mut s = TcpStream::connect(proxy)
            .await
            .map_err(|e| err(format!("connecting to the proxy: {e}")))?;
        s.set_nodelay(true)
            .map_err(|e| err(format!("setting TCP_NODELAY: {e}")))?;
        s.write_all(&wire::greeting(isolation.is_some()))
            .await
            .map_err(|e| err(format!("sending greeting: {e}")))?;
        let mut reply = [0u8; 2];
        s.read_exact(&mut reply)
            .await
            .map_err(|e| err(format!("reading method choice: {e}")))?;
        wire::check_method_choice(reply, isolation.is_some()).map_err(err)?;
        if let Some((u, p)) = isolation {
            s.write_all(&wire::credentials(u, p).map_err(err)?)
                .await
                .map_err(|e| err(format!("sending credentials: {e}")))?;
            s.read_exact(&mut reply)
                .await
                .map_err(|e| err(format!("reading auth status: {e}")))?;
            wire::check_auth_status(reply).map_err(err)?;
        }
        s.write_all(&wire::connect_request(host, port).map_err(err)?)
            .await
            .map_err(|e| err(format!("sending CONNECT: {e}")))?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head)
            .await
            .map_err(|e| err(format!("reading CONNECT reply: {e}")))?;
        let rest = match wire::check_reply_head(head).map_err(|e| err(e.to_string()))? {
            wire::BoundAddress::Bytes(n) => n,
            wire::BoundAddress::NameOfLength => {
                let mut len = [0u8; 1];
                s.read_exact(&mut len)
                    .await
                    .map_err(|e| err(format!("reading bound address: {e}")))?;
                wire::name_bytes(len[0])
            }
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

/// The bytes of a SOCKS5 CONNECT exchange (RFC 1928, RFC 1929), without
/// any I/O: the one encoding of the protocol, used by [`socks5_connect`]
/// here and by the sandbox's blocking `tor_connect`, so the two clients
/// cannot drift apart.
pub mod wire {
    use std::net::IpAddr;

    const VERSION: u8 = 0x05;
    const NO_AUTH: u8 = 0x00;
    const USERNAME_PASSWORD: u8 = 0x02;
    /// RFC 1929's sub-negotiation version.
    const AUTH_VERSION: u8 = 0x01;
    const CONNECT: u8 = 0x01;
    const IPV4: u8 = 0x01;
    const NAME: u8 = 0x03;
    const IPV6: u8 = 0x04;

    /// A refusal or a malformed answer from the proxy, in words.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum ReplyError {
        /// The proxy answered CONNECT with a failure code.
        #[error("CONNECT failed: {} ({code:#04x})", reply_meaning(*code))]
        Refused {
            /// The SOCKS reply code (tor's extended codes included).
            code: u8,
        },
        /// Not a SOCKS5 answer, or one this client cannot read.
        #[error("{0}")]
        Malformed(String),
    }

    /// The first message: one method offered, username/password when
    /// `credentials` (so tor's stream isolation always applies), else none.
    pub fn greeting(credentials: bool) -> [u8; 3] {
        let method = if credentials {
            USERNAME_PASSWORD
        } else {
            NO_AUTH
        };
        [VERSION, 0x01, method]
    }

    /// The proxy must pick the one method offered.
    pub fn check_method_choice(reply: [u8; 2], credentials: bool) -> Result<(), String> {
        let method = greeting(credentials)[2];
        if reply != [VERSION, method] {
            return Err(format!(
                "proxy refused auth method {method:#04x} (answered {:#04x} {:#04x})",
                reply[0], reply[1]
            ));
        }
        Ok(())
    }

    /// RFC 1929 username/password message; each part 1..=255 bytes.
    pub fn credentials(user: &str, password: &str) -> Result<Vec<u8>, String> {
        let length = |part: &str| {
            u8::try_from(part.len())
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| "isolation username and password must be 1..=255 bytes".to_owned())
        };
        let mut message = vec![AUTH_VERSION, length(user)?];
        message.extend_from_slice(user.as_bytes());
        message.push(length(password)?);
        message.extend_from_slice(password.as_bytes());
        Ok(message)
    }

    /// The answer to [`credentials`]: status 0 means accepted.
    pub fn check_auth_status(reply: [u8; 2]) -> Result<(), String> {
        if reply[1] != 0x00 {
            return Err(format!("authentication refused ({:#04x})", reply[1]));
        }
        Ok(())
    }

    /// CONNECT to `host:port`. An IP literal goes as an address; anything
    /// else as a name for the proxy to resolve (tor needs this for
    /// `.onion`, and it keeps DNS off this machine). `host` is 1..=255
    /// bytes.
    pub fn connect_request(host: &str, port: u16) -> Result<Vec<u8>, String> {
        let mut request = vec![VERSION, CONNECT, 0x00];
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                request.push(IPV4);
                request.extend_from_slice(&ip.octets());
            }
            Ok(IpAddr::V6(ip)) => {
                request.push(IPV6);
                request.extend_from_slice(&ip.octets());
            }
            Err(_) => {
                let length = u8::try_from(host.len())
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| "host name must be 1..=255 bytes".to_owned())?;
                request.push(NAME);
                request.push(length);
                request.extend_from_slice(host.as_bytes());
            }
        }
        request.extend_from_slice(&port.to_be_bytes());
        Ok(request)
    }

    /// What follows the reply's 4-byte head: the bound address and port.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum BoundAddress {
        /// This many more bytes (an address of fixed size, and the port).
        Bytes(usize),
        /// A name: read its length byte, then [`name_bytes`] more.
        NameOfLength,
    }

    /// Check the CONNECT reply's head (version, code, reserved, address
    /// type): success, and how much of the reply is left to read.
    pub fn check_reply_head(head: [u8; 4]) -> Result<BoundAddress, ReplyError> {
        if head[0] != VERSION {
            return Err(ReplyError::Malformed(format!(
                "bad reply version {:#04x}",
                head[0]
            )));
        }
        if head[1] != 0x00 {
            return Err(ReplyError::Refused { code: head[1] });
        }
        match head[3] {
            IPV4 => Ok(BoundAddress::Bytes(4 + 2)),
            IPV6 => Ok(BoundAddress::Bytes(16 + 2)),
            NAME => Ok(BoundAddress::NameOfLength),
            other => Err(ReplyError::Malformed(format!(
                "bad bound address type {other:#04x}"
            ))),
        }
    }

    /// Bytes left after a bound name's length byte: the name and the port.
    pub fn name_bytes(length: u8) -> usize {
        usize::from(length) + 2
    }

    /// RFC 1928 reply codes, with tor's meanings and its onion-service
    /// extensions (0xF0.., tor's `ExtendedErrors`).
    pub fn reply_meaning(code: u8) -> &'static str {
        match code {
            0x01 => {
                "general failure (for an onion service: it may be unreachable or not yet published)"
            }
            0x02 => "not allowed by the exit's policy",
            0x03 => "network unreachable",
            0x04 => "host unreachable",
            0x05 => "connection refused",
            0x06 => "timed out",
            0x07 => "command not supported",
            0x08 => "address type not supported",
            0xF0 => "onion service descriptor not found",
            0xF1 => "onion service descriptor is invalid",
            0xF2 => "onion service introduction failed",
            0xF3 => "onion service rendezvous failed",
            0xF4 => "onion service needs client authorization",
            0xF5 => "onion service client authorization is wrong",
            0xF6 => "bad onion address",
            0xF7 => "onion service introduction timed out",
            _ => "unknown SOCKS error",
        }
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]
        use super::*;

        #[test]
        fn addresses_go_as_addresses_and_names_as_names_for_the_proxy() {
            assert_eq!(
                connect_request("1.2.3.4", 80).unwrap(),
                [5, 1, 0, 1, 1, 2, 3, 4, 0, 80]
            );
            assert_eq!(connect_request("::1", 1).unwrap()[3], IPV6);
            let named = connect_request("example.onion", 443).unwrap();
            assert_eq!(&named[..5], &[5, 1, 0, 3, 13]);
            assert_eq!(&named[5..18], b"example.onion");
            assert_eq!(&named[18..], &443u16.to_be_bytes());
        }

        #[test]
        fn names_and_credentials_outside_one_to_255_bytes_are_refused() {
            assert!(connect_request("", 80).is_err());
            assert!(connect_request(&"a".repeat(256), 80).is_err());
            assert!(connect_request(&"a".repeat(255), 80).is_ok());
            assert!(credentials("", "x").is_err());
            assert!(credentials("u", &"p".repeat(256)).is_err());
            assert_eq!(credentials("u", "pw").unwrap(), [1, 1, b'u', 2, b'p', b'w']);
        }

        #[test]
        fn a_reply_says_what_is_left_to_read_or_why_it_failed() {
            assert_eq!(check_reply_head([5, 0, 0, 1]), Ok(BoundAddress::Bytes(6)));
            assert_eq!(check_reply_head([5, 0, 0, 4]), Ok(BoundAddress::Bytes(18)));
            assert_eq!(
                check_reply_head([5, 0, 0, 3]),
                Ok(BoundAddress::NameOfLength)
            );
            assert_eq!(name_bytes(7), 9);
            let refused = check_reply_head([5, 0xF0, 0, 1]).unwrap_err();
            assert!(
                refused.to_string().contains("descriptor not found"),
                "{refused}"
            );
            assert!(matches!(
                check_reply_head([4, 0, 0, 1]),
                Err(ReplyError::Malformed(_))
            ));
            assert!(matches!(
                check_reply_head([5, 0, 0, 9]),
                Err(ReplyError::Malformed(_))
            ));
        }

        #[test]
        fn the_proxy_must_choose_the_one_method_offered() {
            assert!(check_method_choice([5, 2], true).is_ok());
            assert!(check_method_choice([5, 0], true).is_err());
            assert!(check_method_choice([5, 0], false).is_ok());
            assert!(check_method_choice([5, 0xff], false).is_err());
            assert!(check_auth_status([1, 0]).is_ok());
            assert!(check_auth_status([1, 1]).is_err());
        }
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
