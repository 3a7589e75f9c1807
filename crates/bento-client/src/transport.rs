//! What carries a connection to a box: a TCP stream (direct, or through a
//! SOCKS5 proxy), or a stream from a [`Dialer`] such as the embedded Tor
//! client. The rest of the client sees one [`Reader`] and one [`Writer`].

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::ClientError;

/// A byte stream to a box that is not a plain TCP stream (an Arti
/// `DataStream`, for one).
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + fmt::Debug {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + fmt::Debug> ByteStream for T {}

/// A boxed error of a [`Dialer`].
pub type DialError = Box<dyn std::error::Error + Send + Sync>;

/// Opens streams to boxes by name, another way than TCP or a SOCKS proxy:
/// the embedded Tor client (`bento-arti`) is one. Set it as
/// [`Target::dialer`](crate::Target::dialer).
#[async_trait::async_trait]
pub trait Dialer: Send + Sync + fmt::Debug {
    /// A stream to `host:port` (a name the dialer resolves itself: an
    /// onion address for Tor).
    async fn dial(&self, host: &str, port: u16) -> Result<Box<dyn ByteStream>, DialError>;
}

/// Split `host:port` (IPv6 literals in brackets) into the host and port.
pub(crate) fn split_host_port(server: &str) -> Result<(&str, u16), ClientError> {
    let (host, port) = server
        .rsplit_once(':')
        .ok_or_else(|| ClientError::BadServer(server.to_owned()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .map_err(|_| ClientError::BadServer(server.to_owned()))?;
    Ok((host, port))
}

/// The receiving half of a connection to a box.
#[derive(Debug)]
pub(crate) enum Reader {
    Tcp(OwnedReadHalf),
    Dialed(tokio::io::ReadHalf<Box<dyn ByteStream>>),
}

/// The sending half of a connection to a box. A dialed stream may buffer
/// (Arti's does, up to a cell): every writer of this crate flushes after
/// the bytes it means to send now (a no-op on TCP).
#[derive(Debug)]
pub(crate) enum Writer {
    Tcp(OwnedWriteHalf),
    Dialed(tokio::io::WriteHalf<Box<dyn ByteStream>>),
}

/// Both halves of a TCP stream, with Nagle off.
pub(crate) fn tcp(stream: tokio::net::TcpStream) -> Result<(Reader, Writer), ClientError> {
    stream.set_nodelay(true)?;
    let (reader, writer) = stream.into_split();
    Ok((Reader::Tcp(reader), Writer::Tcp(writer)))
}

/// Both halves of a dialed stream.
pub(crate) fn dialed(stream: Box<dyn ByteStream>) -> (Reader, Writer) {
    let (reader, writer) = tokio::io::split(stream);
    (Reader::Dialed(reader), Writer::Dialed(writer))
}

impl AsyncRead for Reader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Reader::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            Reader::Dialed(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            Writer::Dialed(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_flush(cx),
            Writer::Dialed(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            Writer::Dialed(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_split_at_the_last_colon() {
        assert_eq!(
            split_host_port("abc.onion:7878").unwrap(),
            ("abc.onion", 7878)
        );
        assert_eq!(split_host_port("[::1]:80").unwrap(), ("::1", 80));
        assert!(split_host_port("abc.onion").is_err());
        assert!(split_host_port("abc.onion:x").is_err());
    }
}
