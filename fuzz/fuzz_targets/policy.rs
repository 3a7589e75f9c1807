//! The operator's box policy parser (`BoxPolicy::from_toml`), including its
//! destination rules in Tor exit-policy syntax.
//!
//! Checked beyond "no panic": every destination rule it accepts prints (the
//! form `bento policy` shows) as text that parses back to the same rule;
//! a function without a manifest is admitted under any valid policy, and
//! the limits it then runs under can be computed.
#![no_main]

use bento_policy::{BoxPolicy, DestinationRule, Manifest, admit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match BoxPolicy::from_toml(text) {
        Ok(policy) => {
            for rule in policy.destinations.rules() {
                let printed = rule.to_string();
                assert_eq!(
                    printed.parse::<DestinationRule>().as_ref(),
                    Ok(rule),
                    "{printed}"
                );
            }
            let grant = admit(&Manifest::minimum(), &policy, &[])
                .expect("the minimum manifest fits every valid policy");
            let _ = grant.instance_limits();
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
