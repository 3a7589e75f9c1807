//! What every connection of the box shares ([`BoxState`]), and the two
//! views of it: the coarse public status clients get, and the exact
//! figures of the operator's metrics endpoint.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bento_pool::WorkerPool;
use tokio::sync::Semaphore;

use crate::attest;
use crate::config::ServerConfig;
use crate::function_store::FunctionStore;
use crate::metrics::{Metrics, metric};
use crate::onion;
use crate::session::{GlobalCounters, ServiceTable, SessionTable};

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
    /// Counters for the operator's metrics endpoint.
    pub(crate) metrics: Metrics,
    /// Answers `Attest` (kind `none`: this box runs no TEE).
    pub(crate) attestation: attest::BoxAttestation,
}

/// How busy the box is, as clients see it: coarse, so that one user's
/// sessions cannot be told apart from the noise of everyone else's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Every box-wide reservation is under half used.
    Low,
    /// Some box-wide reservation is at least half used.
    High,
    /// An invocation with the minimum limits would be refused now
    /// (instance cap reached, or not even a minimum output buffer left).
    Full,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Low => "low",
            Load::High => "high",
            Load::Full => "full",
        }
    }
}

impl BoxState {
    /// The load bucket clients see.
    fn load(&self) -> Load {
        let running = self.counters.running_instances.load(Ordering::Relaxed);
        let buffered = self.counters.reserved_buffer_bytes.load(Ordering::Relaxed);
        let storage = self.counters.reserved_storage_bytes.load(Ordering::Relaxed);
        let max_instances = self.config.max_instances();
        let max_buffered = self.config.max_buffered_bytes();
        let min_buffer = bento_policy::Resources::minimum()
            .output_buffer_kib
            .saturating_mul(1024);
        if running >= max_instances || max_buffered.saturating_sub(buffered) < min_buffer {
            return Load::Full;
        }
        let at_least_half = |used: u64, max: u64| used.saturating_mul(2) >= max && used > 0;
        // Refusing some starts as overloaded is high load too.
        if self.pool.admission_stats().refused_share > 0.0
            || at_least_half(running, max_instances)
            || at_least_half(buffered, max_buffered)
            || at_least_half(storage, self.config.max_storage_bytes())
        {
            Load::High
        } else {
            Load::Low
        }
    }

    /// What a client needs and no more: the box's limits and coarse
    /// buckets, never exact counts of sessions, instances or stores (those
    /// would let anyone watch another user's activity; the operator has
    /// them on the metrics endpoint).
    pub(crate) fn status_json(&self) -> String {
        let pool = self.pool.stats();
        let largest_upload = self.config.max_source_bytes() as u64;
        serde_json::json!({
            "software": format!("bento {}", env!("CARGO_PKG_VERSION")),
            "protocol_version": bento_protocol::PROTOCOL_VERSION,
            "workers": { "configured": pool.workers },
            "load": self.load().name(),
            "instances": { "max": self.config.max_instances() },
            "onion": self.tor.as_ref().map(|t| t.onion_address.clone()),
            "output_buffer_bytes": { "max": self.config.max_buffered_bytes() },
            "instance_storage_bytes": { "max": self.config.max_storage_bytes() },
            "stored_functions": {
                "max_bytes": self.config.max_stored_bytes(),
                // One bit, not the free space: see function_store.
                "fits_largest_upload": self.store.fits(largest_upload),
                "default_lifetime_s": self.config.default_function_lifetime().as_secs(),
                "max_lifetime_s": self.config.max_function_lifetime().as_secs(),
            },
            // What function authors may ask for (the policy is public).
            "policy": {
                "capabilities": self.config.policy.capabilities.iter().map(|c| c.name()).collect::<Vec<_>>(),
                "instance": self.config.policy.instance,
                "destinations": self.config.policy.destinations.rules().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "shaping": crate::shaping::public_status(&self.config.policy.shaping),
            },
        })
        .to_string()
    }

    /// Every figure for the operator's metrics endpoint, in the Prometheus
    /// text exposition format (0.0.4): exact, box-wide totals.
    pub(crate) fn metrics_text(&self) -> String {
        let mut out = String::new();
        let m = &self.metrics;
        let c = &self.counters;
        let pool = self.pool.stats();
        let store = self.store.usage();
        let admission = self.pool.admission_stats();
        let gauges: [(&str, &str, u64); 15] = [
            (
                "bento_sessions",
                "Sessions the box holds (running or finished and unread).",
                self.sessions.len() as u64,
            ),
            (
                "bento_instances_running",
                "Function instances admitted and not yet ended (counted from the Invoke; bento_pending_starts of them still wait for a worker thread).",
                c.running_instances.load(Ordering::Relaxed),
            ),
            (
                "bento_instances_max",
                "Most instances running at once (box.max_instances).",
                self.config.max_instances(),
            ),
            (
                "bento_output_buffer_reserved_bytes",
                "Output-buffer bytes reserved by sessions.",
                c.reserved_buffer_bytes.load(Ordering::Relaxed),
            ),
            (
                "bento_output_buffer_max_bytes",
                "Most output-buffer bytes all sessions may reserve (box.max_buffered_mib).",
                self.config.max_buffered_bytes(),
            ),
            (
                "bento_instance_storage_reserved_bytes",
                "Instance-storage bytes reserved by running instances.",
                c.reserved_storage_bytes.load(Ordering::Relaxed),
            ),
            (
                "bento_instance_storage_max_bytes",
                "Most instance-storage bytes (box.max_storage_mib).",
                self.config.max_storage_bytes(),
            ),
            (
                "bento_stored_functions",
                "Stored function records (one per Store not deleted or expired).",
                store.records,
            ),
            (
                "bento_stored_function_contents",
                "Distinct stored function contents (records share identical content).",
                store.blobs,
            ),
            (
                "bento_stored_bytes",
                "Bytes of stored functions counted against box.max_stored_mib.",
                store.bytes,
            ),
            (
                "bento_stored_max_bytes",
                "Most bytes of stored functions (box.max_stored_mib).",
                self.config.max_stored_bytes(),
            ),
            (
                "bento_admission_refused_permille",
                "Share of new instances refused as overloaded now, per mille (0 while workers start instances within the target delay).",
                (admission.refused_share * 1000.0).round() as u64,
            ),
            (
                "bento_pending_starts",
                "Instances sent to a worker whose thread has not run yet.",
                admission.pending_starts as u64,
            ),
            (
                "bento_workers_live",
                "Sandbox worker processes alive.",
                pool.live_workers as u64,
            ),
            (
                "bento_connections_open",
                "Client connections open, over all listeners.",
                (self.config.max_connections as u64)
                    .saturating_sub(self.connection_permits.available_permits() as u64),
            ),
        ];
        for (name, help, value) in gauges {
            metric(&mut out, name, "gauge", help, value);
        }
        let counters: [(&str, &str, u64); 6] = [
            (
                "bento_stores_total",
                "Functions stored.",
                m.stores.load(Ordering::Relaxed),
            ),
            (
                "bento_invocations_total",
                "Sessions started.",
                m.invocations.load(Ordering::Relaxed),
            ),
            (
                "bento_renewals_total",
                "Stored functions renewed.",
                m.renewals.load(Ordering::Relaxed),
            ),
            (
                "bento_deletions_total",
                "Stored functions deleted by their holders.",
                m.deletions.load(Ordering::Relaxed),
            ),
            (
                "bento_expirations_total",
                "Stored functions removed when their lifetime ended.",
                m.expirations.load(Ordering::Relaxed),
            ),
            (
                "bento_worker_restarts_total",
                "Sandbox workers replaced after dying.",
                pool.restarts,
            ),
        ];
        for (name, help, value) in counters {
            metric(&mut out, name, "counter", help, value);
        }
        m.write_error_counts(&mut out);
        out
    }
}
