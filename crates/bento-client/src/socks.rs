//! Reaching a box through a SOCKS5 proxy (Tor's SocksPort). A destination
//! name is sent as a name, so the proxy resolves it: Tor needs this for
//! `.onion` addresses, and it keeps DNS off the client.

use tokio::net::TcpStream;

use crate::ClientError;

fn socks_error(message: impl Into<String>) -> ClientError {
    ClientError::Socks(message.into())
}

/// Connect to `target` (`host:port`) through the SOCKS5 proxy at `proxy`
/// (`host:port`; a name is resolved locally: it is the proxy's address, not
/// the destination). The handshake itself is `bento_tor`'s, the one SOCKS5
/// client of the project.
pub(crate) async fn connect(proxy: &str, target: &str) -> Result<TcpStream, ClientError> {
    let (host, port) = crate::transport::split_host_port(target)?;
    let proxy_addr = tokio::net::lookup_host(proxy)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            socks_error(format!(
                "cannot reach the proxy at {proxy}: no such address"
            ))
        })?;
    bento_tor::socks5_connect(proxy_addr, host, port, None)
        .await
        .map_err(|e| socks_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot SOCKS5 server that records the request and relays to an
    /// echo of fixed bytes.
    #[tokio::test]
    async fn the_destination_is_sent_as_a_name_for_the_proxy_to_resolve() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut greet = [0u8; 3];
            s.read_exact(&mut greet).await.unwrap();
            s.write_all(&[5, 0]).await.unwrap();
            let mut head = [0u8; 5];
            s.read_exact(&mut head).await.unwrap();
            let mut rest = vec![0u8; head[4] as usize + 2];
            s.read_exact(&mut rest).await.unwrap();
            s.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await.unwrap();
            s.write_all(b"hi").await.unwrap();
            (head, rest)
        });
        let mut stream = connect(&proxy, "abcdefghij.onion:80").await.unwrap();
        let mut hi = [0u8; 2];
        stream.read_exact(&mut hi).await.unwrap();
        assert_eq!(&hi, b"hi");
        let (head, rest) = server.await.unwrap();
        assert_eq!(head[3], 3, "address type must be a domain name");
        assert_eq!(&rest[..rest.len() - 2], b"abcdefghij.onion");
        assert_eq!(&rest[rest.len() - 2..], &80u16.to_be_bytes());
    }

    #[tokio::test]
    async fn a_refusing_proxy_gives_a_readable_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut greet = [0u8; 3];
            s.read_exact(&mut greet).await.unwrap();
            s.write_all(&[5, 0]).await.unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(&[5, 4, 0, 1, 0, 0, 0, 0, 0, 0]).await.unwrap();
        });
        let err = connect(&proxy, "x.onion:80").await.unwrap_err();
        assert!(err.to_string().contains("host unreachable"), "{err}");
    }
}
