//! A function's manifest (`Manifest::from_toml`), uploaded by anonymous
//! users, and its admission against the default box policy (`admit`).
//!
//! Checked beyond "no panic": accepted destination rules print as text that
//! parses back to the same rule, and admission either grants exactly the
//! capabilities asked for or names at least one violation.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use bento_policy::{BoxPolicy, DestinationRule, Manifest, admit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = Manifest::from_toml(text) else {
        return;
    };
    for rule in manifest.destinations.rules() {
        let printed = rule.to_string();
        assert_eq!(
            printed.parse::<DestinationRule>().as_ref(),
            Ok(rule),
            "{printed}"
        );
    }
    let own = [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))];
    match admit(&manifest, &BoxPolicy::default(), &own) {
        Ok(grant) => {
            assert_eq!(grant.capabilities, manifest.capabilities);
            let _ = grant.instance_limits();
        }
        Err(violations) => assert!(!violations.is_empty()),
    }
});
