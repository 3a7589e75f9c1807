//! The Bento box server.
//!
//! Accepts client connections speaking the wire protocol
//! ([`bento_protocol`]), stores functions persistently in its data directory
//! ([`function_store`]), runs each invocation as a fresh instance in a
//! sandbox worker process ([`bento_pool::WorkerPool`]), and keeps sessions
//! whose output survives detach and re-attach ([`session`]). It enforces the
//! box-wide caps: concurrent instances, reserved output-buffer bytes, stored
//! function bytes, upload size.
//!
//! Anonymity: nothing here records client addresses, tokens, function
//! arguments or sources in logs or status; stored functions are filed under
//! the hash of their invoke token, so the data directory holds no usable
//! capability. Clients see only coarse load buckets; exact figures are on
//! the operator's loopback metrics endpoint ([`metrics`]). Per-event log
//! lines ("stored a function", "started a session") are at debug level, so
//! a default log is no timeline of users. Everything in the data directory
//! is owner-only (files 0600, directories 0700), fixed at start-up.

mod attest;
mod box_ops;
mod box_state;
mod config;
mod connection;
pub mod function_store;
mod legacy;
pub mod metrics;
mod onion;
mod own_addresses;
mod refusal;
mod sealed_ops;
pub mod session;
mod shaping;

pub use config::{
    EvidenceConfig, MIN_CLIENT_RATE, ServerConfig, channel_key_path, instance_storage_root,
};
pub use legacy::{
    ExecuteRequest, LegacyDecodeError, LegacyRequest, StoreRequest, decode_legacy_request,
};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bento_pool::WorkerPool;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::box_state::BoxState;
use crate::config::INSTANCE_STORAGE_DIR;
use crate::function_store::{FunctionStore, StoreError};
use crate::metrics::{Metrics, NotLoopback};
use crate::session::{ServiceTable, SessionTable};

/// How often finished sessions are expired and overdue ones checked.
const JANITOR_PERIOD: Duration = Duration::from_secs(1);
/// How long past its wall-clock limit a running session may stay before the
/// box concludes its worker is not enforcing limits.
const WALL_LIMIT_GRACE: Duration = Duration::from_secs(5);

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data directory could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The workers could not be started.
    #[error(transparent)]
    Pool(#[from] bento_pool::PoolError),
    /// The listener failed.
    #[error("listener: {0}")]
    Listen(std::io::Error),
    /// The box could not publish itself through tor.
    #[error("tor: {0}")]
    Tor(onion::OnionError),
    /// The metrics endpoint would be reachable from elsewhere.
    #[error(transparent)]
    Metrics(#[from] NotLoopback),
    /// The box's own attestation evidence cannot be produced, or a client
    /// would refuse it (wrong collateral, a TEE of another kind, no TEE).
    #[error("attestation (--tee): {0}")]
    Attestation(bento_attest::AttestError),
    /// The data directory's permissions could not be made owner-only.
    #[error("cannot make the data directory {path} owner-only: {error}")]
    DataDir {
        /// What could not be changed.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

// The cause is in the message, so it is not also a `source()`
// (docs/design.md, "Errors").
impl From<std::io::Error> for ServerError {
    fn from(error: std::io::Error) -> Self {
        ServerError::Listen(error)
    }
}

impl From<onion::OnionError> for ServerError {
    fn from(error: onion::OnionError) -> Self {
        ServerError::Tor(error)
    }
}

/// A started box: workers up, data directory open, listener bound.
pub struct Server {
    state: Arc<BoxState>,
    listener: TcpListener,
    legacy_listener: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Server {
    /// Open the data directory, start the workers and bind `listen`.
    pub async fn bind(mut config: ServerConfig, listen: SocketAddr) -> Result<Self, ServerError> {
        if config.tor_control.is_none() {
            // No Tor connection to serve them with: refuse Tor capabilities
            // at admission rather than admit functions whose `api` would
            // lack them.
            let before = config.policy.capabilities.len();
            config.policy.capabilities.retain(|c| !c.needs_tor());
            if config.policy.capabilities.len() != before {
                tracing::info!(
                    "tor_connect and onion_service are not granted: this box has no Tor connection (--tor-control)"
                );
            }
        }
        // Checked before anything is bound or written.
        let metrics_listen = config
            .metrics_listen
            .map(metrics::check_loopback)
            .transpose()?;
        // A box whose evidence every client would refuse must not start
        // looking attested: checked before anything is bound or written.
        let attestation =
            attest::BoxAttestation::new(&config.evidence, config.measured_files.clone());
        attestation
            .self_check()
            .await
            .map_err(ServerError::Attestation)?;
        secure_data_dir(&config.data_dir)
            .map_err(|(path, error)| ServerError::DataDir { path, error })?;
        let store = FunctionStore::open(
            &config.data_dir,
            config.max_stored_bytes(),
            config.default_function_lifetime(),
        )?;
        // Storage of instances that were running when the box last stopped
        // is unreadable (its keys died with them): remove it.
        let storage_root = instance_storage_root(&config.data_dir);
        match bento_storage::remove_leftovers(&storage_root) {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "removed storage left by instances of an earlier run"),
            Err(e) => tracing::warn!(error = %e, "cannot remove old instance storage"),
        }
        // Semaphore::new refuses more permits than it can count.
        let config_max_connections = config.max_connections.min(Semaphore::MAX_PERMITS);
        let pool = WorkerPool::start(config.workers.clone()).await?;
        let listener = TcpListener::bind(listen).await?;
        let legacy_listener = match config.legacy_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let metrics_listener = match metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let mut listening = vec![listener.local_addr()?];
        if let Some(legacy) = &legacy_listener {
            listening.push(legacy.local_addr()?);
        }
        let own_addresses = own_addresses::own_addresses(&listening);
        let tor = match &config.tor_control {
            Some(control) => Some(
                onion::TorBox::publish(
                    control,
                    config.tor_socks,
                    &config.data_dir,
                    config.onion_port,
                    listening[0],
                    config.policy.caps.max_onion_services,
                )
                .await?,
            ),
            None => None,
        };
        Ok(Self {
            legacy_listener,
            metrics_listener,
            state: Arc::new(BoxState {
                attestation,
                config,
                store,
                sessions: SessionTable::default(),
                pool,
                counters: Arc::default(),
                connection_permits: Arc::new(Semaphore::new(config_max_connections)),
                services: ServiceTable::default(),
                own_addresses,
                storage_root,
                tor,
                metrics: Metrics::default(),
            }),
            listener,
        })
    }

    /// The address the box listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The box's onion address (`xyz.onion:PORT`), with `--tor-control`.
    pub fn onion_address(&self) -> Option<String> {
        self.state.tor.as_ref().map(|t| t.onion_address.clone())
    }

    /// A future that ends when the box's onion service descriptor is
    /// published (or `timeout` passes); `None` without `--tor-control`.
    /// It does not borrow the server, so it can run beside [`Server::run`].
    pub fn onion_published(
        &self,
        timeout: Duration,
    ) -> Option<impl std::future::Future<Output = Result<(), ServerError>> + Send + 'static> {
        let tor = self.state.tor.clone()?;
        Some(async move {
            tor.wait_published(timeout).await?;
            Ok(())
        })
    }

    /// The address of the operator's metrics endpoint, if enabled.
    pub fn metrics_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.metrics_listener.as_ref().map(TcpListener::local_addr)
    }

    /// The address of the research prototype's protocol, if enabled.
    pub fn legacy_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.legacy_listener.as_ref().map(TcpListener::local_addr)
    }

    /// Serve until the task is dropped.
    pub async fn run(self) -> Result<(), ServerError> {
        let state = self.state;
        if let Some(listener) = self.legacy_listener {
            tokio::spawn(accept_loop(
                listener,
                state.clone(),
                legacy::handle_connection,
                None,
            ));
        }
        if let Some(listener) = self.metrics_listener {
            let box_state = state.clone();
            let render: metrics::Render = Arc::new(move || box_state.metrics_text());
            tokio::spawn(metrics::serve(listener, render));
        }
        let janitor_state = state.clone();
        tokio::spawn(async move {
            let retention = janitor_state.config.session_retention;
            loop {
                tokio::time::sleep(JANITOR_PERIOD).await;
                janitor_state.services.purge();
                let expired = janitor_state.sessions.expire(retention);
                if expired > 0 {
                    // Per event: debug only (a timeline of users otherwise).
                    tracing::debug!(expired, "expired finished sessions nobody read");
                }
                let store_state = janitor_state.clone();
                let removed = tokio::task::spawn_blocking(move || store_state.store.expire()).await;
                match removed {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => {
                        janitor_state
                            .metrics
                            .expirations
                            .fetch_add(n, Ordering::Relaxed);
                        tracing::debug!(n, "removed stored functions whose lifetime ended");
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot remove expired stored functions");
                    }
                    Err(_) => {}
                }
                // The worker enforces wall time; this backstop catches a
                // worker that hangs or stops doing so.
                for session in janitor_state.sessions.overdue(WALL_LIMIT_GRACE) {
                    if let Some(handle) = session.handle() {
                        tracing::warn!(
                            "a session overran its wall-clock limit; killing and replacing its sandbox worker"
                        );
                        handle.kill_worker();
                    }
                }
            }
        });
        let refusal = over_capacity(state.config.max_connections);
        accept_loop(
            self.listener,
            state,
            connection::handle_connection,
            Some(refusal),
        )
        .await;
        Ok(())
    }
}

/// What a connection beyond the cap is told: an `Error` frame for native
/// clients (the prototype's protocol has no frame for it; its clients see
/// the connection closed).
fn over_capacity(max: usize) -> Vec<u8> {
    let frame = bento_protocol::Frame::error(
        bento_protocol::ErrorCode::TooManyConnections,
        format!("the box serves at most {max} connections at once; try again later"),
    );
    let mut out = bytes::BytesMut::new();
    frame.encode(&mut out);
    out.to_vec()
}

/// Connections beyond the cap being told so at once; more are just closed.
const REFUSALS_AT_ONCE: usize = 64;
/// How long telling one connection it is beyond the cap may take.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Close a connection beyond the cap, first sending `refusal` if there is
/// one. The refusal is written, the write side closed, and what the client
/// sent meanwhile drained (closing with unread bytes would reset the
/// connection and could destroy the refusal before the client reads it) —
/// all within [`REFUSAL_TIME`] and for at most [`REFUSALS_AT_ONCE`]
/// connections at a time, so refusing costs the box next to nothing.
fn refuse(stream: tokio::net::TcpStream, refusal: Option<Vec<u8>>, refusing: &Arc<Semaphore>) {
    let (Some(refusal), Ok(permit)) = (refusal, refusing.clone().try_acquire_owned()) else {
        return;
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSAL_TIME, async {
            stream.write_all(&refusal).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await;
        drop(permit);
    });
}

/// What the box keeps in its data directory.
const DATA_DIR_ENTRIES: [&str; 3] = [
    function_store::DIR_NAME,
    INSTANCE_STORAGE_DIR,
    onion::KEY_FILE,
];

/// Make the data directory and what the box keeps in it owner-only
/// (directories 0700, files 0600), creating it if missing. Files and
/// directories a box of an earlier version created 0644/0755 are fixed
/// here. Other entries an operator put there are left as they are (the
/// directory itself being 0700 already closes them to other users).
/// Symbolic links are neither followed nor changed. Returns the path that
/// failed.
fn secure_data_dir(dir: &std::path::Path) -> Result<(), (PathBuf, std::io::Error)> {
    use std::os::unix::fs::PermissionsExt;
    function_store::create_private_dir(dir).map_err(|e| (dir.to_owned(), e))?;
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| (current.clone(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| (current.clone(), e))?;
            let path = entry.path();
            if current == dir
                && !DATA_DIR_ENTRIES
                    .iter()
                    .any(|name| entry.file_name() == *name)
            {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).map_err(|e| (path.clone(), e))?;
            let wanted = if meta.is_dir() {
                pending.push(path.clone());
                0o700
            } else if meta.is_file() {
                0o600
            } else {
                continue;
            };
            if meta.permissions().mode() & 0o7777 != wanted {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(wanted))
                    .map_err(|e| (path.clone(), e))?;
            }
        }
    }
    Ok(())
}

/// Accept connections on `listener` and run `handle` for each, within the
/// box-wide connection cap (shared by all listeners). Never returns.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    state: Arc<BoxState>,
    handle: F,
    refusal: Option<Vec<u8>>,
) where
    F: Fn(tokio::net::TcpStream, Arc<BoxState>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let refusing = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = state.connection_permits.clone().try_acquire_owned() else {
            // Over the connection cap: say so and close rather than queue.
            refuse(stream, refusal.clone(), &refusing);
            continue;
        };
        let connection = handle(stream, state.clone());
        tokio::spawn(async move {
            connection.await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// Each module of this crate and the sibling modules it names
    /// (`crate::NAME`), read from the sources.
    fn module_imports() -> BTreeMap<String, BTreeSet<String>> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut modules = BTreeMap::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                modules.insert(name, std::fs::read_to_string(&path).unwrap());
            }
        }
        let mut imports = BTreeMap::new();
        for (name, text) in &modules {
            let mut named = BTreeSet::new();
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                let word: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let target = if modules.contains_key(&word) {
                    word
                } else {
                    // An item of the crate root itself.
                    "lib".to_owned()
                };
                if target != *name {
                    named.insert(target);
                }
            }
            imports.insert(name.clone(), named);
        }
        imports
    }

    #[test]
    fn the_servers_modules_import_each_other_one_way() {
        let imports = module_imports();
        assert!(imports.len() > 10, "the sources were not found");
        assert!(
            imports["connection"].contains("box_ops"),
            "the reader sees imports"
        );
        // Depth-first search for a path back to where it started.
        fn cycle_from(
            at: &str,
            imports: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            if let Some(start) = path.iter().position(|m| m == at) {
                let mut cycle = path[start..].to_vec();
                cycle.push(at.to_owned());
                return Some(cycle);
            }
            path.push(at.to_owned());
            for next in imports.get(at).into_iter().flatten() {
                if let Some(cycle) = cycle_from(next, imports, path) {
                    return Some(cycle);
                }
            }
            path.pop();
            None
        }
        for module in imports.keys() {
            if let Some(cycle) = cycle_from(module, &imports, &mut Vec::new()) {
                panic!("an import circle: {}", cycle.join(" → "));
            }
        }
    }
}
