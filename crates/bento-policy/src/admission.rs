//! Admission: does a manifest fit a box policy? One pure function, used at
//! store time by the box and offline by `bento policy check`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::box_policy::{BoxPolicy, Capability, Manifest, Resources};
use crate::exit_policy::{Action, AddrPattern, ExitPolicy};
use crate::{InstanceLimits, MIB};

/// Channels granted to a function that uses `connect`, `service` or Tor
/// streams without saying how many it needs.
pub const DEFAULT_CHANNELS: u64 = 4;

/// Storage quota of a function that uses `storage` without saying how much.
pub const DEFAULT_STORAGE_KIB: u64 = 256;

/// One way a manifest exceeds a policy, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Largest HTTP response body a function may receive (and never more than
/// half its memory, which has to hold it).
pub const HTTP_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// What an admitted function gets: exactly what its manifest declared, and
/// what the box adds to enforce it. The one grant type: [`admit`] makes it,
/// the server completes it when it starts an instance (storage, the
/// worker's bandwidth share, trust anchors, the SocksPort), the worker pipe
/// carries it, and the sandbox enforces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Resources granted (the manifest's requests).
    pub resources: Resources,
    /// Capabilities granted (the manifest's).
    pub capabilities: BTreeSet<Capability>,
    /// The manifest's destinations; at run time a destination must pass
    /// these *and* [`Grant::policy_destinations`].
    pub destinations: ExitPolicy,
    /// The box policy's destination rules; empty unless the function
    /// reaches out (`connect` or `http`).
    pub policy_destinations: ExitPolicy,
    /// The box's own addresses, never reachable through a wildcard; empty
    /// unless the function reaches out.
    pub own_addresses: Vec<IpAddr>,
    /// Encrypted storage: the directory to create and the quota (set by
    /// the box for an instance granted `storage`).
    pub storage: Option<StorageGrant>,
    /// This worker's share of the box-wide bandwidth, bytes per second
    /// (set by the box).
    pub box_bandwidth_bytes_per_s: u64,
    /// Extra PEM trust anchors for HTTPS (the operator's choice).
    pub http_extra_roots_pem: Option<String>,
    /// The box's tor SocksPort, for `tor_connect`.
    pub tor_socks: Option<SocketAddr>,
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

/// A grant of nothing: no capability, no resource (store-time checks and
/// instances not yet bound to an invocation).
impl Default for Grant {
    fn default() -> Self {
        Self {
            resources: Resources {
                memory_mib: 0,
                cpu_ms: 0,
                wall_ms: 0,
                output_buffer_kib: 0,
                storage_kib: 0,
                bandwidth_kib_per_s: 0,
                channels: 0,
                onion_services: 0,
            },
            capabilities: BTreeSet::new(),
            destinations: ExitPolicy::default(),
            policy_destinations: ExitPolicy::default(),
            own_addresses: Vec::new(),
            storage: None,
            box_bandwidth_bytes_per_s: 0,
            http_extra_roots_pem: None,
            tor_socks: None,
        }
    }
}

impl Grant {
    /// Whether `capability` was granted.
    pub fn has(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }

    /// Whether the function may reach destinations (`connect` or `http`).
    pub fn reaches_out(&self) -> bool {
        self.capabilities.iter().any(|c| c.uses_destinations())
    }

    /// All of the instance's traffic, bytes per second.
    pub fn bandwidth_bytes_per_s(&self) -> u64 {
        self.resources.bandwidth_kib_per_s.saturating_mul(1024)
    }

    /// Largest HTTP response body: [`HTTP_MAX_RESPONSE_BYTES`], and never
    /// more than half the instance's memory.
    pub fn http_max_response_bytes(&self) -> u64 {
        HTTP_MAX_RESPONSE_BYTES.min(self.resources.memory_mib.saturating_mul(MIB) / 2)
    }

    /// The limits the sandbox enforces for this grant.
    pub fn instance_limits(&self) -> InstanceLimits {
        InstanceLimits {
            memory_bytes: self.resources.memory_mib.saturating_mul(MIB),
            cpu_ms: self.resources.cpu_ms,
            wall_ms: self.resources.wall_ms,
            output_buffer_bytes: self.resources.output_buffer_kib.saturating_mul(1024),
        }
    }
}

fn amount(value: u64, unit: &str) -> String {
    if unit.is_empty() {
        value.to_string()
    } else {
        format!("{value} {unit}")
    }
}

/// A representative address of a manifest rule's network, for checking it
/// against the policy: the network address itself.
fn representative(addr: AddrPattern) -> Option<IpAddr> {
    match addr {
        AddrPattern::Net(ip, _) => Some(ip),
        _ => None,
    }
}

/// Check `manifest` against `policy`. Returns the grant, or every violation.
///
/// `own` lists the box's own addresses (which a policy only opens
/// explicitly). Destination checks are per manifest rule: an `accept` for a
/// single address is checked exactly; for a wider network, its first
/// address and lowest port are checked (the run-time check applies both
/// rule lists to every actual destination in any case).
pub fn admit(
    manifest: &Manifest,
    policy: &BoxPolicy,
    own: &[IpAddr],
) -> Result<Grant, Vec<Violation>> {
    let mut violations = Vec::new();
    for (asked, (what, unit, allowed)) in manifest
        .limits
        .entries()
        .into_iter()
        .zip(policy.instance.entries())
    {
        let Some(asked) = asked else { continue };
        // Storage, channels and onion services may be zero; nothing else
        // can run on zero.
        let may_be_zero = matches!(
            what,
            "storage per instance"
                | "concurrent channels and connections"
                | "onion services per instance"
        );
        if asked == 0 && !may_be_zero {
            violations.push(Violation(format!(
                "asks for 0 {unit} {what}; a function needs at least 1"
            )));
        }
        if asked > allowed {
            violations.push(Violation(format!(
                "asks for {} {what}; this box allows {}",
                amount(asked, unit),
                amount(allowed, unit)
            )));
        }
    }
    for capability in &manifest.capabilities {
        if !policy.capabilities.contains(capability) {
            violations.push(Violation(format!(
                "asks for the `{}` capability; this box does not grant it",
                capability.name()
            )));
        }
    }
    let reaches_out = manifest.capabilities.iter().any(|c| c.uses_destinations());
    if reaches_out && manifest.destinations.is_empty() {
        violations.push(Violation(
            "asks for `connect` or `http` but declares no destinations".into(),
        ));
    }
    if !reaches_out && !manifest.destinations.is_empty() {
        violations.push(Violation(
            "declares destinations but asks for neither `connect` nor `http`".into(),
        ));
    }
    for rule in manifest.destinations.rules() {
        if rule.action != Action::Accept {
            continue;
        }
        let Some(ip) = representative(rule.addr) else {
            // A wildcard request is bounded by the policy at run time.
            continue;
        };
        let decision = policy.destinations.decide(ip, rule.ports.0, own);
        if !decision.allowed {
            violations.push(Violation(format!(
                "asks to reach `{rule}`; this box refuses {ip}:{} ({})",
                rule.ports.0, decision.reason
            )));
        }
    }
    if violations.is_empty() {
        let mut resources = manifest.limits.resolve(&policy.instance);
        let opens_channels = manifest.capabilities.iter().any(|c| c.opens_channels());
        if manifest.limits.channels.is_none() && opens_channels {
            // A function that connects or serves needs a channel or few;
            // the minimum (0) would make the capability useless.
            resources.channels = DEFAULT_CHANNELS.min(policy.instance.channels);
        }
        if manifest.limits.onion_services.is_none()
            && manifest.capabilities.contains(&Capability::OnionService)
        {
            resources.onion_services = 1.min(policy.instance.onion_services);
        }
        if manifest.limits.storage_kib.is_none()
            && manifest.capabilities.contains(&Capability::Storage)
        {
            // Likewise storage: the minimum quota is 0.
            resources.storage_kib = DEFAULT_STORAGE_KIB.min(policy.instance.storage_kib);
        }
        // Rules and own addresses matter only to a function that reaches
        // out; every other instance is spared carrying them.
        Ok(Grant {
            resources,
            capabilities: manifest.capabilities.clone(),
            destinations: manifest.destinations.clone(),
            policy_destinations: if reaches_out {
                policy.destinations.clone()
            } else {
                ExitPolicy::default()
            },
            own_addresses: if reaches_out {
                own.to_vec()
            } else {
                Vec::new()
            },
            ..Grant::default()
        })
    } else {
        Err(violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::box_policy::DEFAULT_POLICY_TOML;

    fn policy_with(extra: &str) -> BoxPolicy {
        let text = DEFAULT_POLICY_TOML.replace(
            "capabilities = [\"storage\", \"time\", \"service\", \"tor_connect\", \"onion_service\"]\n",
            "",
        );
        let text = text.replace("destinations = [\"reject *:*\"]\n", "");
        BoxPolicy::from_toml(&format!("{extra}\n{text}")).unwrap()
    }

    #[test]
    fn the_minimum_manifest_fits_the_default_policy() {
        let grant = admit(&Manifest::minimum(), &BoxPolicy::default(), &[]).unwrap();
        assert!(grant.capabilities.is_empty());
        assert_eq!(grant.instance_limits().memory_bytes, 64 * MIB);
    }

    #[test]
    fn limits_from_huge_granted_resources_saturate_instead_of_overflowing() {
        let mut grant = admit(&Manifest::minimum(), &BoxPolicy::default(), &[]).unwrap();
        grant.resources.memory_mib = u64::MAX / 2;
        grant.resources.output_buffer_kib = u64::MAX / 2;
        let limits = grant.instance_limits();
        assert_eq!(limits.memory_bytes, u64::MAX);
        assert_eq!(limits.output_buffer_bytes, u64::MAX);
    }

    #[test]
    fn a_grant_crosses_the_worker_pipe_unchanged() {
        let policy = policy_with(
            "capabilities = [\"connect\", \"storage\"]\ndestinations = [\"reject *:25\", \"accept *:*\"]",
        );
        let manifest = Manifest::from_toml(
            "version = 1\ncapabilities = [\"connect\", \"storage\"]\ndestinations = [\"accept 192.0.2.0/24:443\", \"accept [2001:db8::1]:80-81\"]\n",
        )
        .unwrap();
        let own: Vec<IpAddr> = vec!["192.0.2.7".parse().unwrap()];
        let mut grant = admit(&manifest, &policy, &own).unwrap();
        assert_eq!(grant.policy_destinations, policy.destinations);
        assert_eq!(grant.own_addresses, own);
        grant.storage = Some(StorageGrant {
            dir: "/var/lib/bento/storage/x".into(),
            quota_bytes: 1 << 20,
        });
        grant.tor_socks = Some("127.0.0.1:9050".parse().unwrap());
        let json = serde_json::to_string(&grant).unwrap();
        assert_eq!(serde_json::from_str::<Grant>(&json).unwrap(), grant);
        let bad = json.replace("accept 192.0.2.0/24:443", "accept nowhere");
        assert!(
            serde_json::from_str::<Grant>(&bad).is_err(),
            "a rule that does not parse is refused, not dropped"
        );
    }

    #[test]
    fn a_function_that_does_not_reach_out_carries_no_rules_or_addresses() {
        let own: Vec<IpAddr> = vec!["192.0.2.7".parse().unwrap()];
        let grant = admit(&Manifest::minimum(), &BoxPolicy::default(), &own).unwrap();
        assert!(!grant.reaches_out());
        assert!(grant.policy_destinations.rules().is_empty());
        assert!(grant.own_addresses.is_empty());
    }

    #[test]
    fn an_http_response_never_gets_more_than_half_the_memory() {
        let mut grant = Grant::default();
        grant.resources.memory_mib = 8;
        assert_eq!(grant.http_max_response_bytes(), 4 * MIB);
        grant.resources.memory_mib = 1024;
        assert_eq!(grant.http_max_response_bytes(), HTTP_MAX_RESPONSE_BYTES);
    }

    #[test]
    fn every_violation_is_listed_in_words() {
        let manifest = Manifest::from_toml(
            "version = 1\ncapabilities = [\"connect\", \"storage\"]\n[limits]\nmemory_mib = 512\ncpu_ms = 60000\n",
        )
        .unwrap();
        let violations = admit(&manifest, &BoxPolicy::default(), &[]).unwrap_err();
        let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(
                &"asks for 512 MiB memory per instance; this box allows 128 MiB".to_string()
            ),
            "{text:?}"
        );
        assert!(
            text.contains(
                &"asks for 60000 ms CPU time per invocation; this box allows 10000 ms".to_string()
            ),
            "{text:?}"
        );
        assert!(
            text.contains(
                &"asks for the `connect` capability; this box does not grant it".to_string()
            ),
            "{text:?}"
        );
        assert!(
            text.contains(&"asks for `connect` or `http` but declares no destinations".to_string()),
            "{text:?}"
        );
        assert_eq!(text.len(), 4, "storage is granted by default: {text:?}");
    }

    #[test]
    fn a_granted_manifest_gets_exactly_what_it_declared() {
        let policy = policy_with(
            "capabilities = [\"connect\", \"time\"]\ndestinations = [\"accept 127.0.0.1:8080\"]",
        );
        let manifest = Manifest::from_toml(
            "version = 1\ncapabilities = [\"connect\"]\ndestinations = [\"accept 127.0.0.1:8080\"]\n[limits]\nmemory_mib = 32\n",
        )
        .unwrap();
        let grant = admit(&manifest, &policy, &[]).unwrap();
        assert_eq!(
            grant.capabilities.iter().copied().collect::<Vec<_>>(),
            vec![Capability::Connect]
        );
        assert_eq!(
            grant.resources.memory_mib, 32,
            "never more than asked, even if the policy allows more"
        );
        assert!(!grant.capabilities.contains(&Capability::Time));
    }

    #[test]
    fn zero_limits_that_nothing_can_run_on_are_violations() {
        let manifest =
            Manifest::from_toml("version = 1\n[limits]\nwall_ms = 0\nstorage_kib = 0\n").unwrap();
        let violations = admit(&manifest, &BoxPolicy::default(), &[]).unwrap_err();
        assert_eq!(
            violations,
            vec![Violation(
                "asks for 0 ms wall-clock time per invocation; a function needs at least 1".into()
            )]
        );
    }

    #[test]
    fn storage_and_channels_get_a_useful_default_when_their_capability_is_asked_for() {
        let manifest =
            Manifest::from_toml("version = 1\ncapabilities = [\"storage\", \"service\"]\n")
                .unwrap();
        let grant = admit(&manifest, &BoxPolicy::default(), &[]).unwrap();
        assert_eq!(grant.resources.storage_kib, DEFAULT_STORAGE_KIB);
        assert_eq!(grant.resources.channels, DEFAULT_CHANNELS);
        let plain = admit(&Manifest::minimum(), &BoxPolicy::default(), &[]).unwrap();
        assert_eq!(plain.resources.storage_kib, 0);
        assert_eq!(plain.resources.channels, 0);
    }

    #[test]
    fn destinations_the_policy_refuses_are_violations() {
        let policy = policy_with("capabilities = [\"connect\"]\ndestinations = [\"accept *:443\"]");
        let manifest = Manifest::from_toml(
            "version = 1\ncapabilities = [\"connect\"]\ndestinations = [\"accept 10.0.0.1:443\", \"accept 93.184.216.34:443\", \"accept 93.184.216.34:80\"]\n",
        )
        .unwrap();
        let violations = admit(&manifest, &policy, &[]).unwrap_err();
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(
            violations[0].0.contains("10.0.0.1:443"),
            "{}",
            violations[0]
        );
        assert!(violations[0].0.contains("private"), "{}", violations[0]);
        assert!(
            violations[1].0.contains("93.184.216.34:80"),
            "{}",
            violations[1]
        );
    }
}
