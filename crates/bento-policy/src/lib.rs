//! What a Bento box allows, and what a function asks for.
//!
//! - [`BoxPolicy`]: the operator's policy (TOML): ceilings per instance,
//!   box-wide caps, the capabilities functions may be granted, and outbound
//!   destination rules in Tor exit-policy syntax ([`ExitPolicy`]).
//! - [`Manifest`]: what a function asks for (TOML next to its source); no
//!   manifest means the minimum (session I/O only, small limits).
//! - [`admit`]: the one pure function that decides whether a manifest fits
//!   a policy, listing every violation in words, or returns the [`Grant`]:
//!   exactly what the manifest declared. The grant is the one type the
//!   server completes, the worker pipe carries and the sandbox enforces.
//! - [`InstanceLimits`]: what the sandbox enforces on one instance.

mod admission;
mod box_policy;
mod exit_policy;
mod shaping;

pub use admission::{
    DEFAULT_CHANNELS, DEFAULT_STORAGE_KIB, Grant, HTTP_MAX_RESPONSE_BYTES, StorageGrant, Violation,
    admit,
};
pub use box_policy::{
    BoxCaps, BoxPolicy, Capability, DEFAULT_POLICY_TOML, MAX_PREWARM_PER_WORKER, Manifest,
    PolicyError, ResourceRequest, Resources, SCHEMA_VERSION,
};
pub use exit_policy::{
    Action, AddrPattern, Decision, DestinationRule, ExitPolicy, RuleParseError, embedded_ipv4,
    is_private_or_local,
};
pub use shaping::{DEFAULT_MAX_PADDING_MIB, Defense, DefenseRefused, ShapingPolicy};

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One mebibyte, for readable limits.
pub const MIB: u64 = 1024 * 1024;

/// Limits enforced on one function instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceLimits {
    /// Maximum memory of the instance, in bytes: its linear memory and the
    /// host buffers it can make grow, counted together by the sandbox.
    pub memory_bytes: u64,
    /// Maximum CPU time the instance may consume (wasm and host calls made
    /// on its behalf), in milliseconds.
    pub cpu_ms: u64,
    /// Maximum wall-clock lifetime of the instance, in milliseconds,
    /// including time spent blocked in `api.recv()` or on backpressure.
    pub wall_ms: u64,
    /// Output the box buffers for the session while the client is not
    /// reading it; when full, the function's `api.send()` blocks.
    pub output_buffer_bytes: u64,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 128 * MIB,
            cpu_ms: 10_000,
            wall_ms: 300_000,
            output_buffer_bytes: 4 * MIB,
        }
    }
}

impl InstanceLimits {
    /// The CPU limit as a [`Duration`].
    pub fn cpu(&self) -> Duration {
        Duration::from_millis(self.cpu_ms)
    }

    /// The wall-clock limit as a [`Duration`].
    pub fn wall(&self) -> Duration {
        Duration::from_millis(self.wall_ms)
    }
}

/// Which instance limit was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Limit {
    /// Memory ([`InstanceLimits::memory_bytes`]).
    Memory,
    /// CPU time ([`InstanceLimits::cpu_ms`]).
    Cpu,
    /// Wall-clock time ([`InstanceLimits::wall_ms`]).
    WallTime,
    /// The wasm call stack (deep recursion).
    Stack,
}

impl Limit {
    /// Short human-readable name, as shown to clients.
    pub fn describe(self) -> &'static str {
        match self {
            Limit::Memory => "memory limit",
            Limit::Cpu => "CPU time limit",
            Limit::WallTime => "wall-clock time limit",
            Limit::Stack => "call stack limit",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_match_the_documented_values() {
        let limits = InstanceLimits::default();
        assert_eq!(limits.memory_bytes, 128 * MIB);
        assert_eq!(limits.cpu(), Duration::from_secs(10));
        assert_eq!(limits.wall(), Duration::from_secs(300));
    }

    #[test]
    fn unknown_limit_keys_are_rejected() {
        let err = serde_json::from_str::<InstanceLimits>(
            r#"{"memory_bytes":1,"cpu_ms":1,"wall_ms":1,"output_buffer_bytes":1,"disk":1}"#,
        );
        assert!(err.is_err());
    }
}
