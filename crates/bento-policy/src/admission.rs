//! Admission: does a manifest fit a box policy? One pure function, used at
//! store time by the box and offline by `bento policy check`.

use std::collections::BTreeSet;
use std::net::IpAddr;

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

/// What an admitted function gets: exactly what its manifest declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Resources granted (the manifest's requests).
    pub resources: Resources,
    /// Capabilities granted (the manifest's).
    pub capabilities: BTreeSet<Capability>,
    /// The manifest's destinations; at run time a destination must pass
    /// these *and* the box policy's rules.
    pub destinations: ExitPolicy,
}

impl Grant {
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
        Ok(Grant {
            resources,
            capabilities: manifest.capabilities.clone(),
            destinations: manifest.destinations.clone(),
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
