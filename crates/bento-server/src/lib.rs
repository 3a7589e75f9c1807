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
pub mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bento_policy::InstanceLimits;
use bento_worker::{WorkerPool, WorkerPoolConfig};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::function_store::{FunctionStore, StoreError};
use crate::session::{GlobalCounters, SessionTable};

/// How often finished sessions are expired and overdue ones checked.
const JANITOR_PERIOD: Duration = Duration::from_secs(1);
/// How long past its wall-clock limit a running session may stay before the
/// box concludes its worker is not enforcing limits.
const WALL_LIMIT_GRACE: Duration = Duration::from_secs(5);

/// Server configuration; [`ServerConfig::new`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data directory (stored functions).
    pub data_dir: PathBuf,
    /// Limits for every instance.
    pub limits: InstanceLimits,
    /// Most instances running at once (default 1024).
    pub max_instances: u64,
    /// Most output-buffer bytes reserved by all live sessions together
    /// (default 4 GiB; each session reserves `limits.output_buffer_bytes`).
    pub max_buffered_bytes: u64,
    /// Largest function source accepted (default 1 MiB).
    pub max_source_bytes: usize,
    /// Most bytes of stored functions (default 1 GiB).
    pub max_stored_bytes: u64,
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
}

impl ServerConfig {
    /// Defaults for a data directory and a worker pool.
    pub fn new(data_dir: PathBuf, workers: WorkerPoolConfig) -> Self {
        Self {
            data_dir,
            limits: InstanceLimits::default(),
            max_instances: 1024,
            max_buffered_bytes: 4 * 1024 * 1024 * 1024,
            max_source_bytes: 1024 * 1024,
            max_stored_bytes: 1024 * 1024 * 1024,
            session_retention: Duration::from_secs(600),
            read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            workers,
            legacy_listen: None,
        }
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
                "max": self.config.max_instances,
            },
            "sessions": self.sessions.len(),
            "output_buffer_bytes": {
                "reserved": self.counters.reserved_buffer_bytes.load(Ordering::Relaxed),
                "max": self.config.max_buffered_bytes,
            },
            "stored_functions": { "count": functions, "bytes": stored_bytes, "max_bytes": self.config.max_stored_bytes },
            "limits": self.config.limits,
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
    pub async fn bind(config: ServerConfig, listen: SocketAddr) -> Result<Self, ServerError> {
        let store = FunctionStore::open(&config.data_dir, config.max_stored_bytes)?;
        let config_max_connections = config.max_connections;
        let pool = WorkerPool::start(config.workers.clone()).await?;
        let listener = TcpListener::bind(listen).await?;
        let legacy_listener = match config.legacy_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
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
            }),
            listener,
        })
    }

    /// The address the box listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
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
