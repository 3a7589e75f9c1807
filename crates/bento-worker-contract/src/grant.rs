//! What an instance may do beyond its session channel, as the worker
//! receives it from the server: the admitted manifest's capabilities with
//! everything needed to enforce them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use bento_policy::Capability;
use serde::{Deserialize, Serialize};

/// Capabilities granted to one instance and the limits that go with them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityGrant {
    /// Exactly the manifest's capabilities (admission checked the policy).
    pub capabilities: BTreeSet<Capability>,
    /// The manifest's destination rules (Tor exit-policy syntax).
    pub grant_destinations: Vec<String>,
    /// The box policy's destination rules; a destination must pass both.
    pub policy_destinations: Vec<String>,
    /// The box's own addresses, never reachable through a wildcard.
    pub own_addresses: Vec<IpAddr>,
    /// Encrypted storage: the directory to create and the quota.
    pub storage: Option<StorageGrant>,
    /// All of the instance's traffic, bytes per second.
    pub bandwidth_bytes_per_s: u64,
    /// This worker's share of the box-wide bandwidth, bytes per second.
    pub box_bandwidth_bytes_per_s: u64,
    /// Service channels and outbound connections open at once.
    pub channels: u64,
    /// Largest HTTP response body.
    pub http_max_response_bytes: u64,
    /// Extra PEM trust anchors for HTTPS (the operator's choice).
    pub http_extra_roots_pem: Option<String>,
    /// The box's tor SocksPort, for `tor_connect`.
    #[serde(default)]
    pub tor_socks: Option<std::net::SocketAddr>,
    /// Onion services the instance may create.
    #[serde(default)]
    pub onion_services: u64,
}

/// Where an instance's encrypted storage lives and how big it may get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageGrant {
    /// Directory to create for this instance (removed when it ends).
    pub dir: PathBuf,
    /// Quota in bytes (keys + values).
    pub quota_bytes: u64,
}

impl CapabilityGrant {
    /// Whether `capability` was granted.
    pub fn has(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }
}
