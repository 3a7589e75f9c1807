//! Tiny loopback HTTP(S) servers for the tests. Nothing here leaves
//! 127.0.0.1.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// What a server does with one connection.
pub enum Reply {
    /// Write these bytes and close.
    Bytes(Vec<u8>),
    /// Say nothing; hold the connection open for a while.
    Hang(Duration),
}

/// A full response with a `Content-Length`.
pub fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    Reply::Bytes(bytes)
}

/// A response written exactly as given (for chunked and close-delimited
/// bodies).
pub fn raw(bytes: &[u8]) -> Reply {
    Reply::Bytes(bytes.to_vec())
}

/// A redirect.
pub fn redirect(status: &str, location: &str) -> Reply {
    response(status, &[("Location", location)], b"")
}

/// A loopback listener that has not started serving yet.
pub struct Server {
    listener: TcpListener,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Server {
    pub fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        Self { listener, port }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The rule accepting exactly this server.
    pub fn rule(&self) -> String {
        format!("accept 127.0.0.1:{}", self.port)
    }

    /// Panic if anything has connected so far.
    pub fn assert_no_connection(&self) {
        self.listener.set_nonblocking(true).unwrap();
        match self.listener.accept() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept failed: {e}"),
            Ok((_, peer)) => panic!("unexpected connection from {peer}"),
        }
    }

    /// Answer one connection per reply, in order; each request (head and
    /// body, lossily as text) arrives on the returned channel.
    pub fn serve(self, replies: Vec<Reply>) -> mpsc::Receiver<String> {
        self.serve_with(replies, |stream| Box::new(stream))
    }

    /// Like [`Server::serve`], over TLS.
    pub fn serve_tls(
        self,
        config: Arc<rustls::ServerConfig>,
        replies: Vec<Reply>,
    ) -> mpsc::Receiver<String> {
        self.serve_with(replies, move |stream| {
            let conn = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
            Box::new(rustls::StreamOwned::new(conn, stream))
        })
    }

    fn serve_with(
        self,
        replies: Vec<Reply>,
        wrap: impl Fn(TcpStream) -> Box<dyn ReadWrite> + Send + 'static,
    ) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for reply in replies {
                let Ok((stream, _)) = self.listener.accept() else {
                    return;
                };
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut stream = wrap(stream);
                let Ok(request) = read_request(&mut *stream) else {
                    continue;
                };
                let _ = tx.send(request);
                match reply {
                    Reply::Bytes(bytes) => {
                        let _ = stream.write_all(&bytes);
                        let _ = stream.flush();
                    }
                    Reply::Hang(time) => thread::sleep(time),
                }
                stream.close();
            }
        });
        rx
    }
}

/// A stream the servers can close politely.
pub trait ReadWrite: Read + Write + Send {
    fn close(&mut self);
}

impl ReadWrite for TcpStream {
    fn close(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl ReadWrite for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}

fn read_request(stream: &mut dyn ReadWrite) -> io::Result<String> {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        data.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&data).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(head + &String::from_utf8_lossy(&body))
}

/// A private CA and a `localhost`/127.0.0.1 server certificate it signed:
/// the CA as PEM (for the client) and the server's TLS configuration.
pub fn private_ca_and_server() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Bento test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();

    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    (ca_cert.pem(), Arc::new(config))
}
