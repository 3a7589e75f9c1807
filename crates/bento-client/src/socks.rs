//! A minimal SOCKS5 client (RFC 1928, CONNECT, no authentication) that
//! always sends the destination as a name, so the proxy resolves it: Tor
//! needs this for `.onion` addresses, and it keeps DNS off the client.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ClientError;

fn socks_error(message: impl Into<String>) -> ClientError {
    ClientError::Socks(message.into())
}

fn reply_text(code: u8) -> &'static str {
    match code {
        1 => "general failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown error",
    }
}

/// Connect to `target` (`host:port`) through the SOCKS5 proxy at `proxy`.
pub(crate) async fn connect(proxy: &str, target: &str) -> Result<TcpStream, ClientError> {
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| socks_error(format!("server {target:?} is not host:port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .map_err(|_| socks_error(format!("bad port in {target:?}")))?;
    let host_len =
        u8::try_from(host.len()).map_err(|_| socks_error("host name longer than 255 bytes"))?;

    let mut stream = TcpStream::connect(proxy)
        .await
        .map_err(|e| socks_error(format!("cannot reach the proxy at {proxy}: {e}")))?;
    stream.set_nodelay(true)?;
    stream.write_all(&[5, 1, 0]).await?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await?;
    if choice != [5, 0] {
        return Err(socks_error(
            "the proxy requires authentication Bento does not offer",
        ));
    }
    let mut request = vec![5, 1, 0, 3, host_len];
    request.extend_from_slice(host.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(socks_error("not a SOCKS5 proxy"));
    }
    if head[1] != 0 {
        return Err(socks_error(format!(
            "cannot reach {target}: {}",
            reply_text(head[1])
        )));
    }
    let skip = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            usize::from(len[0]) + 2
        }
        other => return Err(socks_error(format!("bad address type {other} in reply"))),
    };
    let mut bound = vec![0u8; skip];
    stream.read_exact(&mut bound).await?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
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
