//! The operator's box policy and the function manifest (TOML), parsed into
//! typed models: unknown keys are errors, every rule is parsed once.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::exit_policy::{ExitPolicy, RuleParseError};
use crate::shaping::{Defense, ShapingPolicy};

/// The schema version both files carry.
pub const SCHEMA_VERSION: u32 = 1;

/// A capability a function can ask for beyond its session channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Capability {
    /// `api.connect(host, port)`: TCP streams to allowed destinations.
    Connect,
    /// `api.http_get` / `api.http_request` to allowed destinations.
    Http,
    /// `api.storage`: encrypted instance-scoped storage.
    Storage,
    /// `api.sleep` and `api.time`.
    Time,
    /// `api.accept()`: other clients reach the instance with its service token.
    Service,
    /// `api.tor_connect`: streams over Tor.
    TorConnect,
    /// `api.onion_service`: ephemeral onion services.
    OnionService,
}

impl Capability {
    /// The name used in TOML files.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Connect => "connect",
            Capability::Http => "http",
            Capability::Storage => "storage",
            Capability::Time => "time",
            Capability::Service => "service",
            Capability::TorConnect => "tor_connect",
            Capability::OnionService => "onion_service",
        }
    }

    /// Capabilities that need the box's own Tor connection.
    pub fn needs_tor(self) -> bool {
        matches!(self, Capability::TorConnect | Capability::OnionService)
    }

    /// Capabilities whose streams count towards the `channels` limit.
    pub fn opens_channels(self) -> bool {
        matches!(
            self,
            Capability::Connect
                | Capability::Service
                | Capability::TorConnect
                | Capability::OnionService
        )
    }

    /// Capabilities that reach destinations and so need destination rules.
    pub fn uses_destinations(self) -> bool {
        matches!(self, Capability::Connect | Capability::Http)
    }
}

/// Resources one instance may use. In a box policy these are ceilings; in
/// a manifest, what the function asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory (linear memory and host buffers), MiB.
    pub memory_mib: u64,
    /// CPU time per invocation, ms.
    pub cpu_ms: u64,
    /// Wall-clock time per invocation, ms.
    pub wall_ms: u64,
    /// Output buffered for the session while its client is away, KiB.
    pub output_buffer_kib: u64,
    /// Instance storage quota, KiB.
    pub storage_kib: u64,
    /// Bandwidth of all the instance's traffic, KiB/s.
    pub bandwidth_kib_per_s: u64,
    /// Concurrent service channels and outbound connections.
    pub channels: u64,
    /// Ephemeral onion services an instance may create (optional in a
    /// policy file: 2).
    #[serde(default = "default_onion_services")]
    pub onion_services: u64,
}

fn default_onion_services() -> u64 {
    2
}

fn default_max_onion_services() -> u64 {
    64
}

fn default_prewarm_per_worker() -> u64 {
    4
}

/// Most instances a worker may keep ready (each reserves address space and
/// memory whether or not it is ever used).
pub const MAX_PREWARM_PER_WORKER: u64 = 64;

fn default_max_function_lifetime_h() -> u64 {
    30 * 24
}

fn default_default_function_lifetime_h() -> u64 {
    7 * 24
}

fn default_max_connections() -> u64 {
    4096
}

impl Resources {
    /// What a function without a manifest gets: session I/O, small limits.
    pub fn minimum() -> Self {
        Self {
            memory_mib: 64,
            cpu_ms: 5_000,
            wall_ms: 60_000,
            output_buffer_kib: 1024,
            storage_kib: 0,
            bandwidth_kib_per_s: 1024,
            channels: 0,
            onion_services: 0,
        }
    }

    /// Each resource with its name, unit and value, for messages.
    pub fn entries(&self) -> [(&'static str, &'static str, u64); 8] {
        [
            ("memory per instance", "MiB", self.memory_mib),
            ("CPU time per invocation", "ms", self.cpu_ms),
            ("wall-clock time per invocation", "ms", self.wall_ms),
            ("buffered output per session", "KiB", self.output_buffer_kib),
            ("storage per instance", "KiB", self.storage_kib),
            ("bandwidth per session", "KiB/s", self.bandwidth_kib_per_s),
            ("concurrent channels and connections", "", self.channels),
            ("onion services per instance", "", self.onion_services),
        ]
    }
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            memory_mib: 128,
            cpu_ms: 10_000,
            wall_ms: 300_000,
            output_buffer_kib: 4096,
            storage_kib: 1024,
            bandwidth_kib_per_s: 1024,
            channels: 16,
            onion_services: 2,
        }
    }
}

/// Box-wide caps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxCaps {
    /// Instances running at once.
    pub max_instances: u64,
    /// Output buffer all sessions together may reserve, MiB.
    pub max_buffered_mib: u64,
    /// Largest function upload, KiB.
    pub max_upload_kib: u64,
    /// Stored functions in all, MiB.
    pub max_stored_mib: u64,
    /// Instance storage in all, MiB.
    pub max_storage_mib: u64,
    /// Bandwidth of all functions together, KiB/s.
    pub bandwidth_kib_per_s: u64,
    /// Functions' onion services alive at once, over all instances
    /// (optional in a policy file: 64).
    #[serde(default = "default_max_onion_services")]
    pub max_onion_services: u64,
    /// Longest lifetime a client may give a stored function, hours
    /// (optional in a policy file: 720, 30 days). Renewal may extend it by
    /// at most this much from the moment of renewal.
    #[serde(default = "default_max_function_lifetime_h")]
    pub max_function_lifetime_h: u64,
    /// Lifetime of a stored function whose client did not choose one,
    /// hours (optional in a policy file: 168, 7 days); at most
    /// `max_function_lifetime_h`.
    #[serde(default = "default_default_function_lifetime_h")]
    pub default_function_lifetime_h: u64,
    /// Fresh instances each sandbox worker keeps instantiated ahead of
    /// demand, so that an invocation need not wait for one (optional in a
    /// policy file: 4; 0 turns it off). Each holds its own memory mapping
    /// and a few hundred KiB.
    #[serde(default = "default_prewarm_per_worker")]
    pub prewarm_per_worker: u64,
    /// Client connections open at once, over all listeners (optional in a
    /// policy file: 4096; `bento serve --max-connections` overrides it).
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
}

impl Default for BoxCaps {
    fn default() -> Self {
        Self {
            max_instances: 1024,
            max_buffered_mib: 4096,
            max_upload_kib: 1024,
            max_stored_mib: 1024,
            max_storage_mib: 1024,
            bandwidth_kib_per_s: 10_240,
            max_onion_services: 64,
            max_function_lifetime_h: default_max_function_lifetime_h(),
            default_function_lifetime_h: default_default_function_lifetime_h(),
            prewarm_per_worker: default_prewarm_per_worker(),
            max_connections: default_max_connections(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: u32,
    #[serde(default)]
    capabilities: BTreeSet<Capability>,
    #[serde(default)]
    destinations: Vec<String>,
    instance: Resources,
    #[serde(rename = "box")]
    caps: BoxCaps,
    #[serde(default)]
    shaping: ShapingPolicy,
}

/// The operator's box policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxPolicy {
    /// Ceilings for one instance.
    pub instance: Resources,
    /// Box-wide caps.
    pub caps: BoxCaps,
    /// Capabilities functions may be granted at all.
    pub capabilities: BTreeSet<Capability>,
    /// Where functions may connect (also bounded by each manifest).
    pub destinations: ExitPolicy,
    /// Traffic-analysis defenses sessions may ask for, and their bounds.
    pub shaping: ShapingPolicy,
}

/// A policy or manifest file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not valid TOML, or keys/values that do not fit the schema.
    #[error("{what} is not valid: {message}")]
    Syntax {
        /// "box policy" or "manifest".
        what: &'static str,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A schema version this Bento does not know.
    #[error("{what} has version {found}; this Bento understands version {SCHEMA_VERSION}")]
    Version {
        /// "box policy" or "manifest".
        what: &'static str,
        /// The version found.
        found: u32,
    },
    /// A destination rule that does not parse.
    #[error("{what}: {error}")]
    Rule {
        /// "box policy" or "manifest".
        what: &'static str,
        /// The rule error.
        error: RuleParseError,
    },
}

/// Parse a TOML file of either kind and check its schema version.
fn parse_versioned<T: serde::de::DeserializeOwned>(
    what: &'static str,
    text: &str,
    version: impl Fn(&T) -> u32,
) -> Result<T, PolicyError> {
    let file: T = toml::from_str(text).map_err(|e| PolicyError::Syntax {
        what,
        message: e.to_string(),
    })?;
    match version(&file) {
        SCHEMA_VERSION => Ok(file),
        found => Err(PolicyError::Version { what, found }),
    }
}

/// The default box policy, with every key documented (`bento policy default`).
pub const DEFAULT_POLICY_TOML: &str = r#"# Bento box policy (see docs/policy.md). Every key in [instance] and [box]
# is required but onion_services, max_onion_services, the two
# *_function_lifetime_h keys and max_connections; capabilities and
# destinations default to none.
version = 1

# Capabilities functions may be granted at all. A function gets only what its
# manifest asks for, and only if it is listed here.
#   connect, http   - outbound connections / HTTP(S) to `destinations`
#   storage         - encrypted instance-scoped storage
#   time            - api.sleep() and api.time()
#   service         - other clients reach the instance with its service token
#   tor_connect     - streams over Tor;  onion_service - ephemeral onion services
# Exit fetching (connect, http) is the operator's choice: off by default.
capabilities = ["storage", "time", "service", "tor_connect", "onion_service"]

# Where functions may connect, in Tor exit-policy syntax; first match wins,
# no match means reject. Private, loopback, link-local and the box's own
# addresses are rejected unless a rule names them explicitly.
destinations = ["reject *:*"]

# Ceilings for one function instance; a manifest may ask for up to these.
[instance]
memory_mib = 128            # linear memory + host buffers
cpu_ms = 10000              # CPU time per invocation
wall_ms = 300000            # wall-clock time per invocation
output_buffer_kib = 4096    # output kept while the client is away
storage_kib = 1024          # api.storage quota
bandwidth_kib_per_s = 1024  # all of one session's traffic
channels = 16               # concurrent service channels + connections
onion_services = 2          # api.onion_service() services per instance

# Caps for the whole box.
[box]
max_instances = 1024        # instances running at once
max_buffered_mib = 4096     # output buffers of all sessions together
max_upload_kib = 1024       # largest function source
max_stored_mib = 1024       # all stored functions
max_storage_mib = 1024      # all instance storage
bandwidth_kib_per_s = 10240 # all functions' traffic together
max_onion_services = 64     # functions' onion services alive at once
max_function_lifetime_h = 720     # longest lifetime a store may ask for (30 days)
default_function_lifetime_h = 168 # lifetime when the store asks for none (7 days)
prewarm_per_worker = 4      # fresh instances each worker keeps ready (0: none)
max_connections = 4096      # client connections open at once

# Traffic-analysis defenses the box shapes a session's output with when the
# client asks for one at invoke (docs/policy.md#shaping). Optional section.
[shaping]
defenses = ["front", "tamaraw", "regulator", "constant"]  # [] turns it off
max_padding_mib = 64        # padding one attachment may send
"#;

impl BoxPolicy {
    /// Parse a policy file.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        const WHAT: &str = "box policy";
        let file: PolicyFile = parse_versioned(WHAT, text, |f: &PolicyFile| f.version)?;
        // A ceiling of 0 would make every function without an explicit ask
        // get 0, which nothing can run on.
        for (what, _, value) in file.instance.entries() {
            let may_be_zero = matches!(
                what,
                "storage per instance"
                    | "concurrent channels and connections"
                    | "onion services per instance"
            );
            if value == 0 && !may_be_zero {
                return Err(PolicyError::Syntax {
                    what: WHAT,
                    message: format!("[instance] {what} is 0; it must be at least 1"),
                });
            }
        }
        if file.caps.max_connections == 0 {
            return Err(PolicyError::Syntax {
                what: WHAT,
                message: "[box] max_connections is 0; it must be at least 1".into(),
            });
        }
        if file.caps.max_function_lifetime_h == 0 {
            return Err(PolicyError::Syntax {
                what: WHAT,
                message: "[box] max_function_lifetime_h is 0; it must be at least 1".into(),
            });
        }
        if !(1..=file.caps.max_function_lifetime_h).contains(&file.caps.default_function_lifetime_h)
        {
            return Err(PolicyError::Syntax {
                what: WHAT,
                message: format!(
                    "[box] default_function_lifetime_h is {}; it must be between 1 and max_function_lifetime_h ({})",
                    file.caps.default_function_lifetime_h, file.caps.max_function_lifetime_h
                ),
            });
        }
        if file.caps.prewarm_per_worker > MAX_PREWARM_PER_WORKER {
            return Err(PolicyError::Syntax {
                what: WHAT,
                message: format!(
                    "[box] prewarm_per_worker is {}; it must be at most {MAX_PREWARM_PER_WORKER}",
                    file.caps.prewarm_per_worker
                ),
            });
        }
        let destinations = ExitPolicy::parse(&file.destinations)
            .map_err(|error| PolicyError::Rule { what: WHAT, error })?;
        Ok(Self {
            instance: file.instance,
            caps: file.caps,
            capabilities: file.capabilities,
            destinations,
            shaping: file.shaping,
        })
    }
}

impl Default for BoxPolicy {
    fn default() -> Self {
        // The documented default text is the single source of truth.
        Self::from_toml(DEFAULT_POLICY_TOML).unwrap_or_else(|_| Self {
            instance: Resources::default(),
            caps: BoxCaps::default(),
            capabilities: BTreeSet::new(),
            destinations: ExitPolicy::default(),
            shaping: ShapingPolicy::default(),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    version: u32,
    #[serde(default)]
    capabilities: BTreeSet<Capability>,
    #[serde(default)]
    destinations: Vec<String>,
    #[serde(default)]
    limits: ResourceRequest,
    #[serde(default)]
    defense: Option<Defense>,
}

/// What a manifest asks for, per resource; a key left out gets the
/// minimum, lowered to the box's ceiling if that is lower (see
/// [`ResourceRequest::resolve`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequest {
    /// Memory (linear memory and host buffers), MiB.
    pub memory_mib: Option<u64>,
    /// CPU time per invocation, ms.
    pub cpu_ms: Option<u64>,
    /// Wall-clock time per invocation, ms.
    pub wall_ms: Option<u64>,
    /// Output buffered while the client is away, KiB.
    pub output_buffer_kib: Option<u64>,
    /// Storage quota, KiB.
    pub storage_kib: Option<u64>,
    /// Bandwidth of all traffic, KiB/s.
    pub bandwidth_kib_per_s: Option<u64>,
    /// Concurrent service channels and outbound connections.
    pub channels: Option<u64>,
    /// Ephemeral onion services.
    pub onion_services: Option<u64>,
}

impl ResourceRequest {
    /// The explicit requests, in the order of [`Resources::entries`].
    pub fn entries(&self) -> [Option<u64>; 8] {
        [
            self.memory_mib,
            self.cpu_ms,
            self.wall_ms,
            self.output_buffer_kib,
            self.storage_kib,
            self.bandwidth_kib_per_s,
            self.channels,
            self.onion_services,
        ]
    }

    /// What this request amounts to under `ceiling`: each explicit value as
    /// asked (admission checks it fits), each missing one the minimum or
    /// the ceiling, whichever is lower.
    pub fn resolve(&self, ceiling: &Resources) -> Resources {
        let min = Resources::minimum();
        let pick =
            |asked: Option<u64>, minimum: u64, ceiling: u64| asked.unwrap_or(minimum.min(ceiling));
        Resources {
            memory_mib: pick(self.memory_mib, min.memory_mib, ceiling.memory_mib),
            cpu_ms: pick(self.cpu_ms, min.cpu_ms, ceiling.cpu_ms),
            wall_ms: pick(self.wall_ms, min.wall_ms, ceiling.wall_ms),
            output_buffer_kib: pick(
                self.output_buffer_kib,
                min.output_buffer_kib,
                ceiling.output_buffer_kib,
            ),
            storage_kib: pick(self.storage_kib, min.storage_kib, ceiling.storage_kib),
            bandwidth_kib_per_s: pick(
                self.bandwidth_kib_per_s,
                min.bandwidth_kib_per_s,
                ceiling.bandwidth_kib_per_s,
            ),
            channels: pick(self.channels, min.channels, ceiling.channels),
            onion_services: pick(
                self.onion_services,
                min.onion_services,
                ceiling.onion_services,
            ),
        }
    }
}

/// What a function asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Resources it asks for (missing keys: the minimum).
    pub limits: ResourceRequest,
    /// Capabilities it uses.
    pub capabilities: BTreeSet<Capability>,
    /// Destinations it needs.
    pub destinations: ExitPolicy,
    /// The traffic-analysis defense every session of it is shaped with
    /// (`defense = "front"`), if any; the box's `[shaping]` policy must
    /// allow it, and an invoke that names a defense must name this one.
    pub defense: Option<Defense>,
}

impl Manifest {
    /// The manifest of a function that has none: session I/O only, small limits.
    pub fn minimum() -> Self {
        Self {
            limits: ResourceRequest::default(),
            capabilities: BTreeSet::new(),
            destinations: ExitPolicy::default(),
            defense: None,
        }
    }

    /// Parse a manifest; an empty text is the minimum manifest.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        const WHAT: &str = "manifest";
        if text.trim().is_empty() {
            return Ok(Self::minimum());
        }
        let file: ManifestFile = parse_versioned(WHAT, text, |f: &ManifestFile| f.version)?;
        Ok(Self {
            limits: file.limits,
            capabilities: file.capabilities,
            destinations: ExitPolicy::parse(&file.destinations)
                .map_err(|error| PolicyError::Rule { what: WHAT, error })?,
            defense: file.defense,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_default_policy_parses() {
        let policy = BoxPolicy::from_toml(DEFAULT_POLICY_TOML).unwrap();
        assert_eq!(policy.instance, Resources::default());
        assert_eq!(policy.caps, BoxCaps::default());
        assert!(
            !policy.capabilities.contains(&Capability::Connect),
            "exit fetching is opt-in"
        );
        assert!(
            !policy
                .destinations
                .decide("93.184.216.34".parse().unwrap(), 443, &[])
                .allowed
        );
    }

    #[test]
    fn the_connection_cap_is_a_policy_key_that_older_policies_may_leave_out() {
        let line = "max_connections = 4096      # client connections open at once\n";
        assert!(DEFAULT_POLICY_TOML.contains(line));
        let older = BoxPolicy::from_toml(&DEFAULT_POLICY_TOML.replace(line, "")).unwrap();
        assert_eq!(older.caps.max_connections, 4096);
        let set = BoxPolicy::from_toml(&DEFAULT_POLICY_TOML.replace(line, "max_connections = 7\n"))
            .unwrap();
        assert_eq!(set.caps.max_connections, 7);
        let err = BoxPolicy::from_toml(&DEFAULT_POLICY_TOML.replace(line, "max_connections = 0\n"))
            .unwrap_err();
        assert!(err.to_string().contains("max_connections is 0"), "{err}");
    }

    #[test]
    fn a_manifest_may_name_a_defense_and_an_unknown_one_is_an_error() {
        assert_eq!(Manifest::minimum().defense, None);
        let m = Manifest::from_toml("version = 1\ndefense = \"front\"\n").unwrap();
        assert_eq!(m.defense, Some(Defense::Front));
        let err = Manifest::from_toml("version = 1\ndefense = \"walls\"\n").unwrap_err();
        assert!(err.to_string().contains("walls"), "{err}");
    }

    #[test]
    fn unknown_keys_and_versions_are_errors() {
        let err = BoxPolicy::from_toml(
            &DEFAULT_POLICY_TOML.replace("channels = 16", "channels = 16\nthreads = 4"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("threads"), "{err}");
        let err = BoxPolicy::from_toml(&DEFAULT_POLICY_TOML.replace("version = 1", "version = 2"))
            .unwrap_err();
        assert!(
            matches!(err, PolicyError::Version { found: 2, .. }),
            "{err}"
        );
        let err = Manifest::from_toml("version = 1\n[limits]\nmemory = 5\n").unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
        let err = Manifest::from_toml("version = 1\ncapabilities = [\"root\"]\n").unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
    }

    #[test]
    fn a_policy_ceiling_nothing_can_run_on_is_refused() {
        let err =
            BoxPolicy::from_toml(&DEFAULT_POLICY_TOML.replace("wall_ms = 300000", "wall_ms = 0"))
                .unwrap_err();
        assert!(
            err.to_string()
                .contains("wall-clock time per invocation is 0"),
            "{err}"
        );
        BoxPolicy::from_toml(&DEFAULT_POLICY_TOML.replace("storage_kib = 1024", "storage_kib = 0"))
            .unwrap();
    }

    #[test]
    fn prewarming_is_optional_in_a_policy_file_and_bounded() {
        let without = DEFAULT_POLICY_TOML.replace(
            "prewarm_per_worker = 4      # fresh instances each worker keeps ready (0: none)\n",
            "",
        );
        assert_ne!(without, DEFAULT_POLICY_TOML, "the default names the key");
        let policy = BoxPolicy::from_toml(&without).unwrap();
        assert_eq!(policy.caps.prewarm_per_worker, 4);
        let off = DEFAULT_POLICY_TOML.replace("prewarm_per_worker = 4 ", "prewarm_per_worker = 0 ");
        assert_eq!(
            BoxPolicy::from_toml(&off).unwrap().caps.prewarm_per_worker,
            0
        );
        let err = BoxPolicy::from_toml(
            &DEFAULT_POLICY_TOML.replace("prewarm_per_worker = 4 ", "prewarm_per_worker = 65 "),
        )
        .unwrap_err();
        assert!(err.to_string().contains("at most 64"), "{err}");
    }

    #[test]
    fn a_missing_or_empty_manifest_is_the_minimum() {
        assert_eq!(Manifest::from_toml("").unwrap(), Manifest::minimum());
        let m = Manifest::from_toml("version = 1\n[limits]\nmemory_mib = 96\n").unwrap();
        let resolved = m.limits.resolve(&Resources::default());
        assert_eq!(resolved.memory_mib, 96);
        assert_eq!(resolved.cpu_ms, Resources::minimum().cpu_ms);
        let low_ceiling = Resources {
            cpu_ms: 500,
            ..Resources::default()
        };
        assert_eq!(
            m.limits.resolve(&low_ceiling).cpu_ms,
            500,
            "an unasked resource never exceeds the ceiling"
        );
        assert!(m.capabilities.is_empty());
    }

    #[test]
    fn bad_destination_rules_name_the_file_and_the_rule() {
        let err = Manifest::from_toml("version = 1\ndestinations = [\"accept example.com:80\"]\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("manifest: bad destination rule"), "{text}");
    }
}
