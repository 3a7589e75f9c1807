//! An async client for tor's ControlPort.
//!
//! One reader task owns the read half of the connection: replies to commands
//! go to the (single) pending command, asynchronous `650` events are handled
//! apart (today: `HS_DESC UPLOADED` is recorded so that
//! [`TorControl::wait_for_descriptor_upload`] can wait for it). Commands are
//! serialized by `&mut self`, so a connection serves any number of commands.
//!
//! Dropping a [`TorControl`] closes the connection; onion services added
//! without the `Detach` flag disappear with it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::TorError;

/// How long one command may wait for its reply.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to the ControlPort may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest reply line we accept (tor's are far shorter).
const MAX_LINE: usize = 1 << 20;

/// Which key an onion service gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnionKey {
    /// Let tor generate a fresh ed25519 key (`NEW:ED25519-V3`).
    New,
    /// An existing key, as tor returns it: `"ED25519-V3:<base64>"`.
    Existing(String),
}

/// An onion service added with [`TorControl::add_onion`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnionService {
    /// The service id: 56 base32 characters, without `.onion`.
    pub service_id: String,
    /// The private key (`"ED25519-V3:<base64>"`) if tor returned one (not
    /// with `DiscardPK`, not for an [`OnionKey::Existing`] key).
    pub private_key: Option<String>,
    /// Whether tor's proof-of-work defense is on for the service (added
    /// with [`TorControl::add_onion_defended`] on a tor that has it).
    pub pow_defense: bool,
}

/// The first tor version whose ADD_ONION takes `PoWDefensesEnabled`
/// (onion-service proof of work, proposal 327).
pub const POW_MIN_VERSION: (u32, u32, u32) = (0, 4, 8);

impl OnionService {
    /// `"<service_id>.onion"`.
    pub fn onion_address(&self) -> String {
        format!("{}.onion", self.service_id)
    }
}

/// One line of a reply; `data` holds the body of a `+` (data) line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplyLine {
    pub(crate) text: String,
    pub(crate) data: Option<String>,
}

/// A complete reply (or event): status code and its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) code: u16,
    pub(crate) lines: Vec<ReplyLine>,
}

impl Reply {
    /// Text of the last line (tor's message for an error).
    fn message(&self) -> String {
        self.lines
            .last()
            .map(|l| l.text.clone())
            .unwrap_or_default()
    }
}

/// Assembles reply lines (`NNN-`, `NNN+` … `.`, `NNN `) into [`Reply`]s.
#[derive(Debug, Default)]
pub(crate) struct ReplyParser {
    lines: Vec<ReplyLine>,
    code: Option<u16>,
    data: Option<(String, Vec<String>)>,
}

impl ReplyParser {
    /// Feeds one line (without CRLF). Returns a reply when it is complete.
    pub(crate) fn feed(&mut self, line: &str) -> Result<Option<Reply>, String> {
        if let Some((text, mut body)) = self.data.take() {
            if line == "." {
                self.lines.push(ReplyLine {
                    text,
                    data: Some(body.join("\n")),
                });
            } else {
                let unescaped = line.strip_prefix('.').unwrap_or(line);
                body.push(unescaped.to_string());
                self.data = Some((text, body));
            }
            return Ok(None);
        }
        let (Some(code), Some(sep)) = (line.get(..3), line.get(3..4)) else {
            return Err(format!("short reply line {line:?}"));
        };
        let code: u16 = code
            .parse()
            .map_err(|_| format!("bad status code in {line:?}"))?;
        self.code = Some(code);
        let text = line.get(4..).unwrap_or("").to_string();
        match sep {
            "-" => {
                self.lines.push(ReplyLine { text, data: None });
                Ok(None)
            }
            "+" => {
                self.data = Some((text, Vec::new()));
                Ok(None)
            }
            " " => {
                self.lines.push(ReplyLine { text, data: None });
                let lines = std::mem::take(&mut self.lines);
                self.code = None;
                Ok(Some(Reply { code, lines }))
            }
            _ => Err(format!("bad separator in {line:?}")),
        }
    }
}

/// What the reader task shares with the client.
#[derive(Debug, Default)]
struct Shared {
    uploaded: Mutex<HashSet<String>>,
    closed: AtomicBool,
    notify: Notify,
}

/// A connection to tor's ControlPort, authenticated.
#[derive(Debug)]
pub struct TorControl {
    addr: String,
    writer: OwnedWriteHalf,
    replies: mpsc::UnboundedReceiver<Reply>,
    shared: Arc<Shared>,
    hs_events: bool,
    /// Whether tor takes `PoWDefensesEnabled` in ADD_ONION; asked once.
    pow_supported: Option<bool>,
    /// Set when a reply timed out: a late reply would be taken for the
    /// next command's, so the connection is not used again.
    desynced: bool,
    reader: JoinHandle<()>,
}

impl Drop for TorControl {
    fn drop(&mut self) {
        self.reader.abort();
        // The aborted reader never reports the end: do it here, so waiters
        // on `closed` (e.g. a reconnecting supervisor) learn of it.
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.notify.notify_waiters();
    }
}

impl TorControl {
    /// Connects to a ControlPort (e.g. `"127.0.0.1:9051"`), sends
    /// `PROTOCOLINFO 1`, and authenticates: `NULL` if offered, else with the
    /// 32-byte cookie read from `COOKIEFILE`. Errors name the address and
    /// the step.
    pub async fn connect(addr: &str) -> Result<Self, TorError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| TorError::Timeout {
                what: format!("TCP connect to tor ControlPort {addr}"),
                secs: CONNECT_TIMEOUT.as_secs_f64(),
            })?
            .map_err(|e| TorError::io(format!("connecting to tor ControlPort {addr}"), e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| TorError::io(format!("TCP_NODELAY on {addr}"), e))?;
        let (read, writer) = stream.into_split();
        let (tx, replies) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(read_loop(read, tx, shared.clone(), addr.to_string()));
        let mut control = TorControl {
            addr: addr.to_string(),
            writer,
            replies,
            shared,
            hs_events: false,
            pow_supported: None,
            desynced: false,
            reader,
        };
        control.authenticate().await?;
        Ok(control)
    }

    /// The address this connection was made to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn authenticate(&mut self) -> Result<(), TorError> {
        let auth_err = |addr: &str, step: &str, detail: String| TorError::Auth {
            addr: addr.to_string(),
            step: step.to_string(),
            detail,
        };
        let reply = self.command("PROTOCOLINFO 1").await?;
        let info =
            parse_protocolinfo(&reply).map_err(|d| auth_err(&self.addr, "PROTOCOLINFO", d))?;
        let cmd = if info.methods.iter().any(|m| m == "NULL") {
            "AUTHENTICATE".to_string()
        } else if info.methods.iter().any(|m| m == "COOKIE") {
            let path = info.cookie_file.ok_or_else(|| {
                auth_err(
                    &self.addr,
                    "PROTOCOLINFO",
                    "COOKIE offered without COOKIEFILE".into(),
                )
            })?;
            let cookie = tokio::fs::read(&path)
                .await
                .map_err(|e| auth_err(&self.addr, "reading the cookie", format!("{path}: {e}")))?;
            if cookie.len() != 32 {
                return Err(auth_err(
                    &self.addr,
                    "reading the cookie",
                    format!("{path}: {} bytes, expected 32", cookie.len()),
                ));
            }
            format!("AUTHENTICATE {}", hex::encode(cookie))
        } else {
            return Err(auth_err(
                &self.addr,
                "PROTOCOLINFO",
                format!(
                    "no supported method (offered: {}; supported: NULL, COOKIE)",
                    info.methods.join(",")
                ),
            ));
        };
        match self.command(&cmd).await {
            Ok(_) => Ok(()),
            Err(TorError::Command { code, message, .. }) => Err(auth_err(
                &self.addr,
                "AUTHENTICATE",
                format!("{code} {message}"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Sends one command line and returns its (successful, 2xx) reply.
    pub(crate) async fn command(&mut self, cmd: &str) -> Result<Reply, TorError> {
        let verb = cmd.split(' ').next().unwrap_or("").to_string();
        if cmd.contains(['\r', '\n']) {
            return Err(TorError::Invalid {
                what: format!("control command {verb}"),
                detail: "contains a line break".into(),
            });
        }
        if self.desynced {
            return Err(TorError::Protocol {
                addr: self.addr.clone(),
                step: verb,
                detail: "an earlier command timed out; reconnect".into(),
            });
        }
        let mut line = Vec::with_capacity(cmd.len() + 2);
        line.extend_from_slice(cmd.as_bytes());
        line.extend_from_slice(b"\r\n");
        self.writer
            .write_all(&line)
            .await
            .map_err(|e| TorError::io(format!("tor control {}: sending {verb}", self.addr), e))?;
        let reply = tokio::time::timeout(COMMAND_TIMEOUT, self.replies.recv())
            .await
            .map_err(|_| {
                self.desynced = true;
                // Unusable from now on: as good as closed for whoever
                // waits to reconnect.
                self.shared.closed.store(true, Ordering::SeqCst);
                self.shared.notify.notify_waiters();
                TorError::Timeout {
                    what: format!("reply to {verb} from tor control {}", self.addr),
                    secs: COMMAND_TIMEOUT.as_secs_f64(),
                }
            })?
            .ok_or_else(|| TorError::Closed {
                addr: self.addr.clone(),
            })?;
        if (200..300).contains(&reply.code) {
            Ok(reply)
        } else {
            Err(TorError::Command {
                addr: self.addr.clone(),
                command: verb,
                code: reply.code,
                message: reply.message(),
            })
        }
    }

    /// `GETINFO key`: the value (single-line `250-key=value` or the body of
    /// a multi-line `250+key=` … `.` reply).
    pub async fn getinfo(&mut self, key: &str) -> Result<String, TorError> {
        check_token("GETINFO key", key)?;
        let reply = self.command(&format!("GETINFO {key}")).await?;
        getinfo_value(&reply, key).ok_or_else(|| TorError::Protocol {
            addr: self.addr.clone(),
            step: format!("GETINFO {key}"),
            detail: format!("no {key}= in reply {:?}", reply.lines),
        })
    }

    /// `GETCONF key`: the option's current value, `None` when it is unset
    /// (tor answers `250 key` without `=`). Quoted values are unescaped.
    pub async fn getconf(&mut self, key: &str) -> Result<Option<String>, TorError> {
        check_token("GETCONF key", key)?;
        let reply = self.command(&format!("GETCONF {key}")).await?;
        getconf_value(&reply, key).map_err(|detail| TorError::Protocol {
            addr: self.addr.clone(),
            step: format!("GETCONF {key}"),
            detail,
        })
    }

    /// `SETCONF key="value"`: changes an option of the running tor (not
    /// its torrc). The value is quoted, so it may hold spaces; line breaks
    /// are refused.
    pub async fn setconf(&mut self, key: &str, value: &str) -> Result<(), TorError> {
        check_token("SETCONF key", key)?;
        if value.chars().any(char::is_control) {
            return Err(TorError::Invalid {
                what: format!("SETCONF {key} value"),
                detail: "contains control characters".into(),
            });
        }
        let quoted = value.replace('\\', "\\\\").replace('"', "\\\"");
        self.command(&format!("SETCONF {key}=\"{quoted}\"")).await?;
        Ok(())
    }

    /// `ADD_ONION`: `ports` maps virtual ports to local targets; `flags`
    /// e.g. `["DiscardPK"]`, `["Detach"]`. Returns the service id and the
    /// private key if tor returned one.
    pub async fn add_onion(
        &mut self,
        key: &OnionKey,
        ports: &[(u16, SocketAddr)],
        flags: &[&str],
    ) -> Result<OnionService, TorError> {
        self.add_onion_with(key, ports, flags, false).await
    }

    /// Like [`add_onion`](Self::add_onion), with tor's proof-of-work
    /// defense against introduction floods (`PoWDefensesEnabled=1`) where
    /// this tor has it: version at least [`POW_MIN_VERSION`], and built
    /// with the PoW module. Without it the service is added all the same,
    /// undefended ([`OnionService::pow_defense`] says which), and a warning
    /// is logged once per connection.
    pub async fn add_onion_defended(
        &mut self,
        key: &OnionKey,
        ports: &[(u16, SocketAddr)],
        flags: &[&str],
    ) -> Result<OnionService, TorError> {
        if self.pow_supported().await? {
            match self.add_onion_with(key, ports, flags, true).await {
                // A tor built without the PoW module refuses the keyword.
                Err(TorError::Command { code, message, .. }) if message.contains("PoW") => {
                    tracing::warn!(
                        code,
                        %message,
                        "tor refuses the onion-service proof-of-work defense; publishing without it"
                    );
                    self.pow_supported = Some(false);
                }
                other => return other,
            }
        }
        self.add_onion_with(key, ports, flags, false).await
    }

    /// Whether this tor's ADD_ONION takes `PoWDefensesEnabled`, judged by
    /// `GETINFO version` (asked once per connection).
    pub async fn pow_supported(&mut self) -> Result<bool, TorError> {
        if let Some(known) = self.pow_supported {
            return Ok(known);
        }
        let version = self.getinfo("version").await?;
        let supported = parse_version(&version).is_some_and(|v| v >= POW_MIN_VERSION);
        if !supported {
            tracing::warn!(
                %version,
                "this tor is older than 0.4.8: onion services get no proof-of-work defense"
            );
        }
        self.pow_supported = Some(supported);
        Ok(supported)
    }

    /// A future that ends when this connection is closed (tor went away,
    /// the connection was dropped, or a command timed out and left it
    /// unusable). It does not borrow the connection.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            loop {
                let notified = shared.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if shared.closed.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        }
    }

    async fn add_onion_with(
        &mut self,
        key: &OnionKey,
        ports: &[(u16, SocketAddr)],
        flags: &[&str],
        pow: bool,
    ) -> Result<OnionService, TorError> {
        if ports.is_empty() {
            return Err(TorError::Invalid {
                what: "ADD_ONION ports".into(),
                detail: "at least one port is needed".into(),
            });
        }
        let key_arg = match key {
            OnionKey::New => "NEW:ED25519-V3".to_string(),
            OnionKey::Existing(k) => {
                check_token("ADD_ONION key", k)?;
                if !k.contains(':') {
                    return Err(TorError::Invalid {
                        what: "ADD_ONION key".into(),
                        detail: "expected TYPE:BLOB, e.g. ED25519-V3:<base64>".into(),
                    });
                }
                k.clone()
            }
        };
        let mut cmd = format!("ADD_ONION {key_arg}");
        if !flags.is_empty() {
            for f in flags {
                if f.is_empty() || !f.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(TorError::Invalid {
                        what: "ADD_ONION flag".into(),
                        detail: format!("{f:?} is not a plain word"),
                    });
                }
            }
            cmd.push_str(&format!(" Flags={}", flags.join(",")));
        }
        if pow {
            // Tor's defaults for the queue (rate 250/s, burst 2500) suit a
            // box: clients solve puzzles only while the service is flooded.
            cmd.push_str(" PoWDefensesEnabled=1");
        }
        for (virt, target) in ports {
            cmd.push_str(&format!(" Port={virt},{target}"));
        }
        // Events on before the service exists, so its upload is not missed.
        self.enable_hs_events().await?;
        let reply = self.command(&cmd).await?;
        let mut service = parse_add_onion(&reply).map_err(|detail| TorError::Protocol {
            addr: self.addr.clone(),
            step: "ADD_ONION".into(),
            detail,
        })?;
        service.pow_defense = pow;
        Ok(service)
    }

    /// `DEL_ONION service_id` (without `.onion`).
    pub async fn del_onion(&mut self, service_id: &str) -> Result<(), TorError> {
        let id = service_id.strip_suffix(".onion").unwrap_or(service_id);
        check_token("service id", id)?;
        self.command(&format!("DEL_ONION {id}")).await?;
        if let Ok(mut set) = self.shared.uploaded.lock() {
            set.remove(id);
        }
        Ok(())
    }

    async fn enable_hs_events(&mut self) -> Result<(), TorError> {
        if !self.hs_events {
            self.command("SETEVENTS HS_DESC").await?;
            self.hs_events = true;
        }
        Ok(())
    }

    /// Waits until tor reports `HS_DESC UPLOADED <service_id>` (to at least
    /// one HSDir). Uploads seen on this connection since the service was
    /// added count, so calling this after [`add_onion`](Self::add_onion)
    /// never misses the event.
    pub async fn wait_for_descriptor_upload(
        &mut self,
        service_id: &str,
        timeout: Duration,
    ) -> Result<(), TorError> {
        self.enable_hs_events().await?;
        self.descriptor_upload(service_id, timeout).await
    }

    /// Like [`wait_for_descriptor_upload`](Self::wait_for_descriptor_upload)
    /// for a service added on this connection, but without borrowing it:
    /// the returned future can wait (seconds) while the connection serves
    /// other commands. `add_onion` has already subscribed to the events.
    pub fn descriptor_upload(
        &self,
        service_id: &str,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<(), TorError>> + Send + 'static {
        let id = service_id
            .strip_suffix(".onion")
            .unwrap_or(service_id)
            .to_owned();
        let shared = self.shared.clone();
        let addr = self.addr.clone();
        async move {
            let wait = async {
                loop {
                    let notified = shared.notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if shared
                        .uploaded
                        .lock()
                        .map(|s| s.contains(&id))
                        .unwrap_or(false)
                    {
                        return Ok(());
                    }
                    if shared.closed.load(Ordering::SeqCst) {
                        return Err(TorError::Closed { addr: addr.clone() });
                    }
                    notified.await;
                }
            };
            tokio::time::timeout(timeout, wait)
                .await
                .map_err(|_| TorError::Timeout {
                    what: format!("HS_DESC UPLOADED for {id} from tor control {addr}"),
                    secs: timeout.as_secs_f64(),
                })?
        }
    }

    /// The SocksPort listeners (`GETINFO net/listeners/socks`); Unix-socket
    /// listeners are left out.
    pub async fn socks_listeners(&mut self) -> Result<Vec<SocketAddr>, TorError> {
        let value = self.getinfo("net/listeners/socks").await?;
        parse_listeners(&value).map_err(|detail| TorError::Protocol {
            addr: self.addr.clone(),
            step: "GETINFO net/listeners/socks".into(),
            detail,
        })
    }

    /// `SIGNAL name`, e.g. `"NEWNYM"` (new circuits for new streams) or
    /// `"RELOAD"` (like SIGHUP: re-read the torrc and retry directory
    /// downloads at once).
    pub async fn signal(&mut self, name: &str) -> Result<(), TorError> {
        check_token("SIGNAL name", name)?;
        self.command(&format!("SIGNAL {name}")).await?;
        Ok(())
    }

    /// Bootstrap progress 0..=100 (`GETINFO status/bootstrap-phase`).
    pub async fn bootstrap_progress(&mut self) -> Result<u8, TorError> {
        let value = self.getinfo("status/bootstrap-phase").await?;
        parse_bootstrap(&value).ok_or_else(|| TorError::Protocol {
            addr: self.addr.clone(),
            step: "GETINFO status/bootstrap-phase".into(),
            detail: format!("no PROGRESS= in {value:?}"),
        })
    }
}

/// Rejects empty strings and anything with spaces or control characters.
fn check_token(what: &str, s: &str) -> Result<(), TorError> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TorError::Invalid {
            what: what.into(),
            detail: format!("{s:?} is empty or contains spaces/control characters"),
        });
    }
    Ok(())
}

async fn read_loop(
    read: OwnedReadHalf,
    tx: mpsc::UnboundedSender<Reply>,
    shared: Arc<Shared>,
    addr: String,
) {
    let mut reader = BufReader::new(read);
    let mut parser = ReplyParser::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(%addr, error = %e, "tor control read failed");
                break;
            }
        };
        if n == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\r', '\n']);
        match parser.feed(line) {
            Ok(None) => {}
            Ok(Some(reply)) if reply.code == 650 => handle_event(&shared, &reply),
            Ok(Some(reply)) => {
                if tx.send(reply).is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "tor control protocol error");
                break;
            }
        }
    }
    shared.closed.store(true, Ordering::SeqCst);
    shared.notify.notify_waiters();
}

fn handle_event(shared: &Shared, event: &Reply) {
    let Some(first) = event.lines.first() else {
        return;
    };
    tracing::trace!(event = %first.text, "tor event");
    if let Some(id) = parse_hs_desc_uploaded(&first.text) {
        if let Ok(mut set) = shared.uploaded.lock() {
            set.insert(id.to_string());
        }
        shared.notify.notify_waiters();
    }
}

/// `HS_DESC UPLOADED <id> ...` → `Some(id)`.
pub(crate) fn parse_hs_desc_uploaded(text: &str) -> Option<&str> {
    let mut words = text.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("HS_DESC"), Some("UPLOADED"), Some(id)) => Some(id),
        _ => None,
    }
}

/// What PROTOCOLINFO says about authentication.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProtocolInfo {
    pub(crate) methods: Vec<String>,
    pub(crate) cookie_file: Option<String>,
}

pub(crate) fn parse_protocolinfo(reply: &Reply) -> Result<ProtocolInfo, String> {
    let auth = reply
        .lines
        .iter()
        .find_map(|l| l.text.strip_prefix("AUTH "))
        .ok_or_else(|| format!("no AUTH line in {:?}", reply.lines))?;
    let mut methods = Vec::new();
    let mut cookie_file = None;
    let mut rest = auth.trim_start();
    while !rest.is_empty() {
        if let Some(v) = rest.strip_prefix("METHODS=") {
            let end = v.find(' ').unwrap_or(v.len());
            methods = v[..end].split(',').map(str::to_string).collect();
            rest = v[end..].trim_start();
        } else if let Some(v) = rest.strip_prefix("COOKIEFILE=") {
            let (s, after) = parse_quoted(v)?;
            cookie_file = Some(s);
            rest = after.trim_start();
        } else {
            // Unknown keyword: skip one (possibly quoted) token.
            let end = rest.find(' ').unwrap_or(rest.len());
            rest = rest[end..].trim_start();
        }
    }
    Ok(ProtocolInfo {
        methods,
        cookie_file,
    })
}

/// Parses a control-protocol quoted string at the start of `s`; returns it
/// unescaped and the rest after the closing quote.
pub(crate) fn parse_quoted(s: &str) -> Result<(String, &str), String> {
    let body = s
        .strip_prefix('"')
        .ok_or_else(|| format!("expected a quoted string at {s:?}"))?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, 't')) => out.push('\t'),
                Some((_, e)) => out.push(e),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(format!("unterminated quoted string {s:?}"))
}

/// The value in a `GETCONF key` reply: `key=value`, `key="quoted"` or a
/// bare `key` (unset).
pub(crate) fn getconf_value(reply: &Reply, key: &str) -> Result<Option<String>, String> {
    for line in &reply.lines {
        if line.text.eq_ignore_ascii_case(key) {
            return Ok(None);
        }
        let Some((name, value)) = line.text.split_once('=') else {
            continue;
        };
        if !name.eq_ignore_ascii_case(key) {
            continue;
        }
        if value.starts_with('"') {
            return parse_quoted(value).map(|(v, _)| Some(v));
        }
        return Ok(Some(value.to_string()));
    }
    Err(format!("no {key} in reply {:?}", reply.lines))
}

pub(crate) fn getinfo_value(reply: &Reply, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    reply.lines.iter().find_map(|l| {
        let v = l.text.strip_prefix(&prefix)?;
        Some(match &l.data {
            Some(d) => d.clone(),
            None => v.to_string(),
        })
    })
}

pub(crate) fn parse_add_onion(reply: &Reply) -> Result<OnionService, String> {
    let mut service_id = None;
    let mut private_key = None;
    for l in &reply.lines {
        if let Some(v) = l.text.strip_prefix("ServiceID=") {
            service_id = Some(v.to_string());
        } else if let Some(v) = l.text.strip_prefix("PrivateKey=") {
            private_key = Some(v.to_string());
        }
    }
    let service_id = service_id.ok_or_else(|| format!("no ServiceID in {:?}", reply.lines))?;
    if service_id.len() != 56
        || !service_id
            .chars()
            .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
    {
        return Err(format!("ServiceID {service_id:?} is not a v3 onion id"));
    }
    Ok(OnionService {
        service_id,
        private_key,
        pow_defense: false,
    })
}

/// `"0.4.9.11"`, `"0.4.8.1-alpha (git-…)"` → `(0, 4, 9)` / `(0, 4, 8)`.
pub(crate) fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Some((a, b, c)),
        _ => None,
    }
}

pub(crate) fn parse_listeners(value: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        let (item, after) = if rest.starts_with('"') {
            parse_quoted(rest)?
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            (rest[..end].to_string(), &rest[end..])
        };
        rest = after.trim_start();
        if item.starts_with("unix:") {
            continue;
        }
        let addr = item
            .parse::<SocketAddr>()
            .map_err(|e| format!("listener {item:?}: {e}"))?;
        out.push(addr);
    }
    Ok(out)
}

pub(crate) fn parse_bootstrap(value: &str) -> Option<u8> {
    value
        .split(' ')
        .find_map(|w| w.strip_prefix("PROGRESS="))
        .and_then(|p| p.parse::<u8>().ok())
        .map(|p| p.min(100))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse_all(lines: &[&str]) -> Vec<Reply> {
        let mut p = ReplyParser::default();
        lines
            .iter()
            .filter_map(|l| p.feed(l).unwrap())
            .collect::<Vec<_>>()
    }

    #[test]
    fn getconf_values_are_read_plain_quoted_or_unset() {
        let r = parse_all(&["250 UseMicrodescriptors=auto"]);
        assert_eq!(
            getconf_value(&r[0], "UseMicrodescriptors")
                .unwrap()
                .as_deref(),
            Some("auto")
        );
        let r = parse_all(&["250 ContactInfo=\"a b \\\"c\\\"\""]);
        assert_eq!(
            getconf_value(&r[0], "ContactInfo").unwrap().as_deref(),
            Some("a b \"c\"")
        );
        let r = parse_all(&["250 ContactInfo"]);
        assert_eq!(getconf_value(&r[0], "ContactInfo").unwrap(), None);
        let r = parse_all(&["250 Nickname=x"]);
        assert!(getconf_value(&r[0], "ContactInfo").is_err());
    }

    #[test]
    fn single_and_multi_line_getinfo() {
        let r = parse_all(&["250-version=0.4.9.11", "250 OK"]);
        assert_eq!(r.len(), 1);
        assert_eq!(getinfo_value(&r[0], "version").unwrap(), "0.4.9.11");

        let r = parse_all(&["250+config-text=", "SocksPort 0", "..dot", ".", "250 OK"]);
        assert_eq!(r.len(), 1);
        assert_eq!(
            getinfo_value(&r[0], "config-text").unwrap(),
            "SocksPort 0\n.dot"
        );
    }

    #[test]
    fn events_and_replies_interleave() {
        let r = parse_all(&[
            "650 HS_DESC UPLOADED abc UNKNOWN $X",
            "250-status/bootstrap-phase=NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY=\"Done\"",
            "250 OK",
        ]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].code, 650);
        assert_eq!(parse_hs_desc_uploaded(&r[0].lines[0].text), Some("abc"));
        let v = getinfo_value(&r[1], "status/bootstrap-phase").unwrap();
        assert_eq!(parse_bootstrap(&v), Some(100));
        assert_eq!(parse_hs_desc_uploaded("HS_DESC REQUESTED abc"), None);
    }

    #[test]
    fn protocolinfo_cookie() {
        let r = parse_all(&[
            "250-PROTOCOLINFO 1",
            r#"250-AUTH METHODS=COOKIE,SAFECOOKIE COOKIEFILE="/tmp/a \"b\"\\c/control_auth_cookie""#,
            "250-VERSION Tor=\"0.4.9.11\"",
            "250 OK",
        ]);
        let info = parse_protocolinfo(&r[0]).unwrap();
        assert_eq!(info.methods, vec!["COOKIE", "SAFECOOKIE"]);
        assert_eq!(
            info.cookie_file.as_deref(),
            Some(r#"/tmp/a "b"\c/control_auth_cookie"#)
        );
        let r = parse_all(&["250-PROTOCOLINFO 1", "250-AUTH METHODS=NULL", "250 OK"]);
        assert_eq!(
            parse_protocolinfo(&r[0]).unwrap(),
            ProtocolInfo {
                methods: vec!["NULL".into()],
                cookie_file: None
            }
        );
    }

    #[test]
    fn add_onion_reply() {
        let id = "a".repeat(56);
        let r = parse_all(&[
            &format!("250-ServiceID={id}"),
            "250-PrivateKey=ED25519-V3:abcd",
            "250 OK",
        ]);
        let s = parse_add_onion(&r[0]).unwrap();
        assert_eq!(s.service_id, id);
        assert_eq!(s.private_key.as_deref(), Some("ED25519-V3:abcd"));
        assert_eq!(s.onion_address(), format!("{id}.onion"));
        let r = parse_all(&["250-ServiceID=short", "250 OK"]);
        assert!(parse_add_onion(&r[0]).is_err());
    }

    #[test]
    fn versions_parse_to_their_first_three_numbers() {
        assert_eq!(parse_version("0.4.9.11"), Some((0, 4, 9)));
        assert_eq!(parse_version("0.4.8.1-alpha (git-abc)"), Some((0, 4, 8)));
        assert_eq!(parse_version("0.4.7.16"), Some((0, 4, 7)));
        assert!(parse_version("0.4.7.16").unwrap() < POW_MIN_VERSION);
        assert!(parse_version("0.4.10.0").unwrap() > POW_MIN_VERSION);
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn listeners() {
        assert_eq!(
            parse_listeners(r#""127.0.0.1:9050" "unix:/run/x" "[::1]:9050""#).unwrap(),
            vec![
                "127.0.0.1:9050".parse::<SocketAddr>().unwrap(),
                "[::1]:9050".parse().unwrap()
            ]
        );
        assert_eq!(parse_listeners("").unwrap(), vec![]);
    }

    #[test]
    fn malformed_lines() {
        let mut p = ReplyParser::default();
        assert!(p.feed("25").is_err());
        assert!(p.feed("abc OK").is_err());
        assert!(p.feed("250*OK").is_err());
        assert!(parse_quoted("\"open").is_err());
    }

    #[test]
    fn error_reply_message() {
        let r = parse_all(&["552 Unrecognized key \"x\""]);
        assert_eq!(r[0].code, 552);
        assert_eq!(r[0].message(), "Unrecognized key \"x\"");
    }
}
