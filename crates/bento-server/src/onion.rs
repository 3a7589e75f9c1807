//! The box's Tor side: its own onion service, and functions' ephemeral
//! onion services, published through the local tor's ControlPort.
//!
//! Functions never touch the ControlPort: the box issues `ADD_ONION` and
//! `DEL_ONION` on their behalf and nothing else (the paper's "Stem
//! firewall"). None of the services is detached, so tor removes every one
//! of them if the box dies; while the box runs, a function's services are
//! removed as its instance ends, however it ends.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bento_tor::{OnionKey, TorControl};
use bento_worker_contract::{ChannelEvent, INPUT_WINDOW, OnionRequest, SessionEvent};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::session::{OnionPublisher, Session};

/// The box's onion-service key, in its data directory.
pub(crate) const KEY_FILE: &str = "onion-service.key";

/// How long publishing a function's onion service may take before the
/// function is told it failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(60);
/// First wait before reconnecting to a tor that went away; doubled after
/// each failed attempt up to [`MAX_RECONNECT_BACKOFF`].
const FIRST_RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between attempts to reconnect to tor.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);

/// The box's connection to its tor.
pub(crate) struct TorBox {
    control: tokio::sync::Mutex<TorControl>,
    /// How to publish the box's own service again after tor restarts.
    republish: Republish,
    /// tor's SocksPort, for functions' `tor_connect`.
    pub(crate) socks: Option<SocketAddr>,
    /// The box's own onion address, `xyz.onion:PORT`.
    pub(crate) onion_address: String,
    /// Functions' onion services alive now, and the box-wide cap.
    function_services: AtomicU64,
    max_function_services: u64,
}

impl std::fmt::Debug for TorBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorBox").finish_non_exhaustive()
    }
}

/// Errors setting up the box's Tor side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnionError {
    /// tor refused or failed.
    #[error(transparent)]
    Tor(#[from] bento_tor::TorError),
    /// The persisted key could not be read or written.
    #[error("onion service key {path}: {error}")]
    Key {
        /// The key file.
        path: std::path::PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// What it takes to publish the box's own onion service. Not `Debug`:
/// it holds the service's private key.
#[derive(Clone)]
struct Republish {
    control_addr: String,
    key: OnionKey,
    port: (u16, SocketAddr),
}

impl Republish {
    /// Connect to the ControlPort and add the box's service (with tor's
    /// proof-of-work defense where tor has it).
    async fn connect_and_add(
        &self,
    ) -> Result<(TorControl, bento_tor::OnionService), bento_tor::TorError> {
        let mut control = TorControl::connect(&self.control_addr).await?;
        let service = control
            .add_onion_defended(&self.key, &[self.port], &[])
            .await?;
        tracing::info!(
            pow_defense = service.pow_defense,
            "published the box's onion service"
        );
        Ok((control, service))
    }
}

impl TorBox {
    /// Connect to tor's ControlPort and publish the box as an onion service
    /// on `onion_port`, forwarding to `listen`. The service key lives in
    /// `data_dir/onion-service.key`, so the address survives restarts.
    ///
    /// The box stays published: when the control connection ends (tor
    /// restarted), a task reconnects with backoff and publishes the same
    /// service again, for as long as the box runs.
    pub(crate) async fn publish(
        control_addr: &str,
        socks: Option<SocketAddr>,
        data_dir: &Path,
        onion_port: u16,
        listen: SocketAddr,
        max_function_services: u64,
    ) -> Result<Arc<Self>, OnionError> {
        let mut control = TorControl::connect(control_addr).await?;
        let socks = match socks {
            Some(socks) => Some(socks),
            None => control.socks_listeners().await?.into_iter().next(),
        };
        // The first connection only asked for the SocksPort; publishing
        // goes through the same path as every re-publication.
        drop(control);
        let key_path = data_dir.join(KEY_FILE);
        let key = match std::fs::read_to_string(&key_path) {
            Ok(text) => OnionKey::Existing(text.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => OnionKey::New,
            Err(error) => {
                return Err(OnionError::Key {
                    path: key_path,
                    error,
                });
            }
        };
        // A wildcard listener is reached through loopback.
        let target = if listen.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        } else {
            listen
        };
        let mut republish = Republish {
            control_addr: control_addr.to_owned(),
            key,
            port: (onion_port, target),
        };
        let (control, service) = republish.connect_and_add().await?;
        if let Some(private_key) = &service.private_key {
            write_key(&key_path, private_key).map_err(|error| OnionError::Key {
                path: key_path.clone(),
                error,
            })?;
            republish.key = OnionKey::Existing(private_key.clone());
        }
        let closed = control.closed();
        let tor = Arc::new(Self {
            control: tokio::sync::Mutex::new(control),
            republish,
            socks,
            onion_address: format!("{}:{onion_port}", service.onion_address()),
            function_services: AtomicU64::new(0),
            max_function_services,
        });
        tokio::spawn(stay_published(Arc::downgrade(&tor), Box::pin(closed)));
        Ok(tor)
    }

    /// Wait until the box's own descriptor is uploaded (reachable).
    pub(crate) async fn wait_published(&self, timeout: Duration) -> Result<(), OnionError> {
        let id = self
            .onion_address
            .split('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let upload = self.control.lock().await.descriptor_upload(&id, timeout);
        upload.await?;
        Ok(())
    }

    /// Publish a function's onion service; its streams become channels of
    /// `session`. Answers the instance either way.
    async fn serve_function_now(
        self: Arc<Self>,
        session: Arc<Session>,
        request_id: u32,
        request: OnionRequest,
    ) {
        let result = self.clone().add_function_service(&session, request).await;
        if let Some(handle) = session.handle() {
            handle.send(SessionEvent::OnionReply(request_id, result));
        }
    }

    async fn add_function_service(
        self: Arc<Self>,
        session: &Arc<Session>,
        request: OnionRequest,
    ) -> Result<String, String> {
        let taken = self.function_services.fetch_add(1, Ordering::Relaxed);
        if taken >= self.max_function_services {
            self.function_services.fetch_sub(1, Ordering::Relaxed);
            return Err(format!(
                "channels: this box runs at most {} onion services for functions at once; try again later",
                self.max_function_services
            ));
        }
        // From here the slot is released exactly once: by `release` below
        // once the service exists, or right here if it never came to be.
        let (listener, service) = match self.add_listener_service(&request).await {
            Ok(published) => published,
            Err(e) => {
                self.function_services.fetch_sub(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let accept = tokio::spawn(accept_streams(listener, Arc::downgrade(session)));
        let release = Arc::new(Release {
            tor: self.clone(),
            service_id: service.service_id.clone(),
            accept,
            done: std::sync::atomic::AtomicBool::new(false),
        });
        let on_end = release.clone();
        if !session.add_onion_service(Box::new(move || on_end.run())) {
            return Err("stopped: the instance ended".into());
        }
        // Reachable only once the descriptor is out: wait, so the function
        // can hand out an address that works.
        // Waited for without holding the control connection, so other
        // functions' requests go on meanwhile.
        let upload = self
            .control
            .lock()
            .await
            .descriptor_upload(&service.service_id, PUBLISH_TIMEOUT);
        let uploaded = upload.await;
        if let Err(e) = uploaded {
            // Not left half-published: remove it now.
            release.run();
            return Err(format!(
                "timeout: tor did not publish the onion service: {}",
                tor_reason(&e)
            ));
        }
        Ok(service.onion_address())
    }
}

impl OnionPublisher for TorBox {
    fn serve_function(self: Arc<Self>, session: Arc<Session>, request: u32, details: OnionRequest) {
        tokio::spawn(self.serve_function_now(session, request, details));
    }
}

impl TorBox {
    /// A local listener and the onion service (ADD_ONION) forwarding to it.
    async fn add_listener_service(
        &self,
        request: &OnionRequest,
    ) -> Result<(TcpListener, bento_tor::OnionService), String> {
        let listen_error =
            |e: std::io::Error| format!("io: the box cannot listen for the service: {e}");
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(listen_error)?;
        let local = listener.local_addr().map_err(listen_error)?;
        let (key, flags): (OnionKey, &[&str]) = match &request.key {
            Some(key) => (OnionKey::Existing(key.clone()), &[]),
            None => (OnionKey::New, &["DiscardPK"]),
        };
        let service = self
            .control
            .lock()
            .await
            .add_onion_defended(&key, &[(request.port, local)], flags)
            .await
            .map_err(|e| format!("io: tor refused the onion service: {}", tor_reason(&e)))?;
        Ok((listener, service))
    }
}

/// Wait for the control connection to end, then reconnect and publish the
/// box's service again, with backoff while tor is down; forever, until the
/// box (its [`TorBox`]) is gone. Functions' services are not restored:
/// tor dropped them with the connection and their instances were told
/// nothing, so they simply stop being reachable (as when tor restarts
/// under any onion service).
async fn stay_published(
    tor: std::sync::Weak<TorBox>,
    mut closed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    loop {
        closed.await;
        let Some(republish) = tor.upgrade().map(|tor| tor.republish.clone()) else {
            return;
        };
        tracing::warn!("lost the connection to tor's ControlPort; reconnecting");
        let mut backoff = FIRST_RECONNECT_BACKOFF;
        let control = loop {
            tokio::time::sleep(backoff).await;
            if tor.strong_count() == 0 {
                return;
            }
            match republish.connect_and_add().await {
                Ok((control, _)) => break control,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot re-publish the box's onion service yet");
                    backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                }
            }
        };
        let Some(tor) = tor.upgrade() else {
            return;
        };
        let next = control.closed();
        *tor.control.lock().await = control;
        closed = Box::pin(next);
    }
}

/// Removes one function onion service and frees its box-wide slot, once.
struct Release {
    tor: Arc<TorBox>,
    service_id: String,
    accept: tokio::task::JoinHandle<()>,
    done: std::sync::atomic::AtomicBool,
}

impl Release {
    fn run(self: &Arc<Self>) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        self.accept.abort();
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.tor.control.lock().await.del_onion(&me.service_id).await {
                tracing::warn!(error = %e, "cannot remove a function's onion service");
            }
            me.tor.function_services.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// tor's reason, without our ControlPort address (functions need not
/// know where it is).
fn tor_reason(error: &bento_tor::TorError) -> String {
    match error {
        bento_tor::TorError::Command { code, message, .. } => format!("{code} {message}"),
        bento_tor::TorError::Timeout { secs, .. } => {
            format!("no answer from tor within {secs:.0} s")
        }
        bento_tor::TorError::Closed { .. } => "the box lost its connection to tor".into(),
        _ => "tor failed (see the box's log)".into(),
    }
}

fn write_key(path: &Path, key: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("key.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(key.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

/// Each stream to a function's onion service becomes a channel.
async fn accept_streams(listener: TcpListener, session: std::sync::Weak<Session>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let Some(session) = session.upgrade() else {
            return;
        };
        tokio::spawn(bridge(stream, session));
    }
}

/// Carry bytes between one onion stream and its channel until either side
/// closes.
async fn bridge(stream: TcpStream, session: Arc<Session>) {
    let _ = stream.set_nodelay(true);
    let Some(handle) = session.handle().cloned() else {
        return;
    };
    let Some((guard, mut events)) = session.open_channel() else {
        return;
    };
    let channel = guard.id();
    match events.recv().await {
        Some(ChannelEvent::Opened(true)) => {}
        // At the channel limit the stream is simply closed.
        _ => return,
    }
    let (mut reader, mut writer) = stream.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut in_flight = 0u64;
    let mut reading = true;
    loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        tokio::select! {
            event = events.recv() => match event {
                Some(ChannelEvent::Output(data)) => {
                    if writer.write_all(&data).await.is_err() {
                        return;
                    }
                    handle.send(SessionEvent::ChannelCredit(channel, data.len() as u64));
                }
                Some(ChannelEvent::Consumed(n)) => in_flight = in_flight.saturating_sub(n),
                Some(ChannelEvent::Opened(_)) => {}
                Some(ChannelEvent::Closed) | None => {
                    let _ = writer.shutdown().await;
                    return;
                }
            },
            read = reader.read_buf(&mut buf), if reading && in_flight < INPUT_WINDOW => match read {
                Ok(0) | Err(_) => {
                    reading = false;
                    handle.send(SessionEvent::ChannelEnd(channel, false));
                }
                Ok(n) => {
                    in_flight += n as u64;
                    handle.send(SessionEvent::ChannelInput(channel, buf.split().freeze()));
                }
            },
        }
    }
}
