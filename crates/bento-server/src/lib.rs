//! The Bento box server.
//!
//! Accepts client connections speaking the wire protocol
//! ([`bento_protocol`]), stores functions persistently in its data directory
//! ([`function_store`]), runs each invocation as a fresh instance in a
//! sandbox worker process ([`bento_worker::WorkerPool`]), and keeps sessions
//! whose output survives detach and re-attach ([`session`]). It enforces the
//! box-wide caps: concurrent instances, reserved output-buffer bytes, stored
//! function bytes, upload size.
//!
//! Anonymity: nothing here records client addresses, tokens, function
//! arguments or sources in logs or status; stored functions are filed under
//! the hash of their invoke token, so the data directory holds no usable
//! capability.

mod box_ops;
mod connection;
pub mod function_store;
mod legacy;
mod onion;
mod own_addresses;
pub mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bento_policy::{BoxPolicy, MIB};
use bento_worker::{WorkerPool, WorkerPoolConfig};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::function_store::{FunctionStore, StoreError};
use crate::session::{GlobalCounters, ServiceTable, SessionTable};

/// How often finished sessions are expired and overdue ones checked.
const JANITOR_PERIOD: Duration = Duration::from_secs(1);
/// How long past its wall-clock limit a running session may stay before the
/// box concludes its worker is not enforcing limits.
const WALL_LIMIT_GRACE: Duration = Duration::from_secs(5);

/// Server configuration; [`ServerConfig::new`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data directory (stored functions, instance storage).
    pub data_dir: PathBuf,
    /// The operator's policy: per-instance ceilings, box-wide caps,
    /// grantable capabilities, destination rules.
    pub policy: BoxPolicy,
    /// The manifest (TOML) functions stored through the research
    /// prototype's protocol run under, since that protocol cannot carry
    /// one; empty for the minimum.
    pub legacy_manifest: String,
    /// Extra PEM trust anchors for functions' HTTPS requests.
    pub http_extra_roots_pem: Option<String>,
    /// How long a finished session stays attachable (default 10 min).
    pub session_retention: Duration,
    /// How long a client may idle between requests or stall inside a frame
    /// (default 30 s).
    pub read_timeout: Duration,
    /// Most client connections at once (default 4096).
    pub max_connections: usize,
    /// Worker processes.
    pub workers: WorkerPoolConfig,
    /// Where to serve the research prototype's protocol too, if anywhere.
    pub legacy_listen: Option<SocketAddr>,
    /// The local tor's ControlPort: publish the box as an onion service
    /// and serve functions' Tor capabilities.
    pub tor_control: Option<String>,
    /// tor's SocksPort for functions' `tor_connect` (default: asked from
    /// tor).
    pub tor_socks: Option<SocketAddr>,
    /// The box's onion service port (default 7878).
    pub onion_port: u16,
}

/// Where instances' encrypted storage lives inside a data directory: the
/// one place a (jailed) worker may write.
pub fn instance_storage_root(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("instance-storage")
}

impl ServerConfig {
    /// Defaults for a data directory and a worker pool.
    pub fn new(data_dir: PathBuf, workers: WorkerPoolConfig) -> Self {
        Self {
            data_dir,
            policy: BoxPolicy::default(),
            legacy_manifest: String::new(),
            http_extra_roots_pem: None,
            session_retention: Duration::from_secs(600),
            read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            workers,
            legacy_listen: None,
            tor_control: None,
            tor_socks: None,
            onion_port: 7878,
        }
    }

    /// Most instances running at once.
    pub fn max_instances(&self) -> u64 {
        self.policy.caps.max_instances
    }

    /// Most output-buffer bytes all live sessions together may reserve.
    pub fn max_buffered_bytes(&self) -> u64 {
        self.policy.caps.max_buffered_mib.saturating_mul(MIB)
    }

    /// Largest function source accepted, bytes.
    pub fn max_source_bytes(&self) -> usize {
        usize::try_from(self.policy.caps.max_upload_kib.saturating_mul(1024)).unwrap_or(usize::MAX)
    }

    /// Most bytes of stored functions.
    pub fn max_stored_bytes(&self) -> u64 {
        self.policy.caps.max_stored_mib.saturating_mul(MIB)
    }

    /// Most instance-storage bytes all instances together may reserve.
    pub fn max_storage_bytes(&self) -> u64 {
        self.policy.caps.max_storage_mib.saturating_mul(MIB)
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data directory could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The workers could not be started.
    #[error(transparent)]
    Pool(#[from] bento_worker::PoolError),
    /// The listener failed.
    #[error("listener: {0}")]
    Listen(#[from] std::io::Error),
    /// The box could not publish itself through tor.
    #[error("tor: {0}")]
    Tor(#[from] onion::OnionError),
}

/// Everything connections share.
pub(crate) struct BoxState {
    pub(crate) config: ServerConfig,
    pub(crate) store: FunctionStore,
    pub(crate) sessions: SessionTable,
    pub(crate) pool: WorkerPool,
    pub(crate) counters: Arc<GlobalCounters>,
    /// Client connections open at once, over all listeners.
    pub(crate) connection_permits: Arc<Semaphore>,
    /// Running instances that offer a service, by service token.
    pub(crate) services: ServiceTable,
    /// The box's own addresses, never reachable through a wildcard rule.
    pub(crate) own_addresses: Vec<std::net::IpAddr>,
    /// Where instances' encrypted storage directories are created.
    pub(crate) storage_root: PathBuf,
    /// The box's tor, when it has one.
    pub(crate) tor: Option<Arc<onion::TorBox>>,
}

impl BoxState {
    /// Box-wide figures only: nothing about any user or session.
    pub(crate) fn status_json(&self) -> String {
        let pool = self.pool.stats();
        let (functions, stored_bytes) = self.store.usage();
        serde_json::json!({
            "software": format!("bento {}", env!("CARGO_PKG_VERSION")),
            "protocol_version": bento_protocol::PROTOCOL_VERSION,
            "workers": {
                "configured": pool.workers,
                "live": pool.live_workers,
                "restarts": pool.restarts,
            },
            "instances": {
                "running": self.counters.running_instances.load(Ordering::Relaxed),
                "max": self.config.max_instances(),
            },
            "sessions": self.sessions.len(),
            "onion": self.tor.as_ref().map(|t| t.onion_address.clone()),
            "output_buffer_bytes": {
                "reserved": self.counters.reserved_buffer_bytes.load(Ordering::Relaxed),
                "max": self.config.max_buffered_bytes(),
            },
            "instance_storage_bytes": {
                "reserved": self.counters.reserved_storage_bytes.load(Ordering::Relaxed),
                "max": self.config.max_storage_bytes(),
            },
            "stored_functions": { "count": functions, "bytes": stored_bytes, "max_bytes": self.config.max_stored_bytes() },
            // What function authors may ask for (the policy is public).
            "policy": {
                "capabilities": self.config.policy.capabilities.iter().map(|c| c.name()).collect::<Vec<_>>(),
                "instance": self.config.policy.instance,
                "destinations": self.config.policy.destinations.rules().iter().map(ToString::to_string).collect::<Vec<_>>(),
            },
        })
        .to_string()
    }
}

/// A started box: workers up, data directory open, listener bound.
pub struct Server {
    state: Arc<BoxState>,
    listener: TcpListener,
    legacy_listener: Option<TcpListener>,
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
        let store = FunctionStore::open(&config.data_dir, config.max_stored_bytes())?;
        // Storage of instances that were running when the box last stopped
        // is unreadable (its keys died with them): remove it.
        let storage_root = instance_storage_root(&config.data_dir);
        match bento_storage::remove_leftovers(&storage_root) {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "removed storage left by instances of an earlier run"),
            Err(e) => tracing::warn!(error = %e, "cannot remove old instance storage"),
        }
        let config_max_connections = config.max_connections;
        let pool = WorkerPool::start(config.workers.clone()).await?;
        let listener = TcpListener::bind(listen).await?;
        let legacy_listener = match config.legacy_listen {
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
            state: Arc::new(BoxState {
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
            ));
        }
        let janitor_state = state.clone();
        tokio::spawn(async move {
            let retention = janitor_state.config.session_retention;
            loop {
                tokio::time::sleep(JANITOR_PERIOD).await;
                janitor_state.services.purge();
                let expired = janitor_state.sessions.expire(retention);
                if expired > 0 {
                    tracing::info!(expired, "expired finished sessions nobody read");
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
        accept_loop(self.listener, state, connection::handle_connection).await;
        Ok(())
    }
}

/// Accept connections on `listener` and run `handle` for each, within the
/// box-wide connection cap (shared by all listeners). Never returns.
async fn accept_loop<F, Fut>(listener: TcpListener, state: Arc<BoxState>, handle: F)
where
    F: Fn(tokio::net::TcpStream, Arc<BoxState>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
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
            // Over the connection cap: close at once rather than queue.
            drop(stream);
            continue;
        };
        let connection = handle(stream, state.clone());
        tokio::spawn(async move {
            connection.await;
            drop(permit);
        });
    }
}
