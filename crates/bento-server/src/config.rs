//! The box's configuration ([`ServerConfig`], with the documented
//! defaults) and the deadlines every connection derives from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bento_policy::{BoxPolicy, MIB};
use bento_pool::WorkerPoolConfig;

/// Instances' encrypted storage, in the data directory.
pub(crate) const INSTANCE_STORAGE_DIR: &str = "instance-storage";

/// The slowest a client may send a frame, bytes per second, on top of the
/// read timeout: a frame must be complete by `read_timeout` after its first
/// byte plus one second per this many bytes received. Legitimate clients
/// over Tor are far faster; a client trickling bytes holds its connection
/// for at most about the read timeout.
pub const MIN_CLIENT_RATE: u64 = 16 * 1024;

/// The deadline of a frame that began at `started` and of which
/// `received` bytes have arrived (see [`MIN_CLIENT_RATE`]).
pub(crate) fn frame_deadline(
    started: std::time::Instant,
    timeout: Duration,
    received: usize,
) -> std::time::Instant {
    let allowance = Duration::from_millis(
        u64::try_from(received)
            .unwrap_or(u64::MAX)
            .saturating_mul(1000)
            / MIN_CLIENT_RATE,
    );
    started + timeout.saturating_add(allowance)
}

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
    /// How long a client may idle between requests, and how long a frame
    /// may take from its first byte (plus 1 s per [`MIN_CLIENT_RATE`] bytes
    /// received) (default 30 s).
    pub read_timeout: Duration,
    /// Most client connections at once, over all listeners (default 4096;
    /// `bento serve` takes it from the policy's `box.max_connections` or
    /// `--max-connections`); beyond it a new connection gets
    /// `too_many_connections` and is closed.
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
    /// Where to serve the operator's metrics (Prometheus text format), if
    /// anywhere; must be a loopback address.
    pub metrics_listen: Option<SocketAddr>,
    /// The worker binary and precompiled runtime whose measurement
    /// (`bento attest measure`) the box states in its attestation evidence;
    /// `None` states none.
    pub measured_files: Option<(PathBuf, PathBuf)>,
    /// Where the box's attestation evidence comes from (default: no TEE).
    pub evidence: EvidenceConfig,
}

/// Where the box's attestation evidence comes from (docs/attestation.md,
/// "Turning it on").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EvidenceConfig {
    /// No TEE: kind `none` evidence, and clients are told plainly that the
    /// operator can read everything.
    #[default]
    NoTee,
    /// The kernel's configfs-tsm inside a TDX or SEV-SNP confidential VM
    /// (the whole box runs in the VM).
    ConfigfsTsm {
        /// `tdx` or `sev-snp`.
        kind: bento_attest::TeeKind,
        /// Shipped with every report so that clients can verify it offline:
        /// SEV-SNP a PEM bundle (VCEK, ASK, ARK; empty: the certificates
        /// the hypervisor attaches to each report), TDX dcap-qvl
        /// `QuoteCollateralV3` JSON.
        collateral: Vec<u8>,
    },
}

/// Where instances' encrypted storage lives inside a data directory: the
/// one place a (jailed) worker may write.
pub fn instance_storage_root(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join(INSTANCE_STORAGE_DIR)
}

/// Where the workers keep the sealed channel's secret key inside a data
/// directory (`bento serve` passes it to every worker; the server process
/// never reads it). Under a TEE it must be a file only the TEE can read.
pub fn channel_key_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join(CHANNEL_KEY_FILE)
}

/// File name of [`channel_key_path`].
const CHANNEL_KEY_FILE: &str = "sealed-channel.key";

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
            metrics_listen: None,
            measured_files: None,
            evidence: EvidenceConfig::NoTee,
        }
    }

    /// Longest lifetime a stored function may be given.
    pub fn max_function_lifetime(&self) -> Duration {
        Duration::from_secs(
            self.policy
                .caps
                .max_function_lifetime_h
                .saturating_mul(3600),
        )
    }

    /// Lifetime of a stored function whose client chose none.
    pub fn default_function_lifetime(&self) -> Duration {
        Duration::from_secs(
            self.policy
                .caps
                .default_function_lifetime_h
                .saturating_mul(3600),
        )
        .min(self.max_function_lifetime())
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
