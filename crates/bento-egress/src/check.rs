//! Destination checks, checked name resolution and TCP connect.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bento_policy::{Action, ExitPolicy};

use crate::EgressError;

/// Longest host name accepted (DNS limit).
const MAX_HOST_LEN: usize = 253;

/// The rules a function's outbound destination must pass: its grant's and
/// the box policy's, both of them, plus the box's own addresses (which, like
/// private ones, only an explicit rule opens).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationCheck {
    /// The function's rules, from its admitted manifest.
    pub grant: ExitPolicy,
    /// The operator's rules, from the box policy.
    pub policy: ExitPolicy,
    /// The box's own addresses.
    pub own: Vec<IpAddr>,
}

impl DestinationCheck {
    /// A check from both rule lists and the box's own addresses.
    pub fn new(grant: ExitPolicy, policy: ExitPolicy, own: Vec<IpAddr>) -> Self {
        Self { grant, policy, own }
    }

    /// Allow `ip:port` only if both the grant and the policy accept it.
    ///
    /// The error is [`EgressError::Refused`], naming which list refused and
    /// by which rule.
    pub fn check(&self, ip: IpAddr, port: u16) -> Result<(), EgressError> {
        match self.refusal(ip, port) {
            None => Ok(()),
            Some(reason) => Err(EgressError::Refused {
                destination: SocketAddr::new(ip, port).to_string(),
                reason,
            }),
        }
    }

    /// Why `ip:port` is refused, as the continuation of "refused …", or
    /// `None` if it is allowed.
    fn refusal(&self, ip: IpAddr, port: u16) -> Option<String> {
        let grant = self.grant.decide(ip, port, &self.own);
        let policy = self.policy.decide(ip, port, &self.own);
        match (grant.allowed, policy.allowed) {
            (true, true) => None,
            (false, true) => Some(format!("by the function's grant: {}", grant.reason)),
            (true, false) => Some(format!("by the box policy: {}", policy.reason)),
            (false, false) => Some(format!(
                "by the function's grant: {}; and by the box policy: {}",
                grant.reason, policy.reason
            )),
        }
    }
}

/// `host:port` the way a person writes it (IPv6 literals bracketed).
pub(crate) fn destination(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An IP literal, bare or (IPv6) bracketed.
fn ip_literal(host: &str) -> Option<IpAddr> {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    inner.parse().ok()
}

/// Time left until `deadline`, or `Timeout` if none is.
pub(crate) fn remaining(deadline: Instant) -> Result<Duration, EgressError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(EgressError::Timeout)
    } else {
        Ok(left)
    }
}

/// Resolve a name with the system resolver on a helper thread, waiting no
/// longer than `deadline` (a lookup still running then is abandoned).
fn lookup(host: &str, port: u16, deadline: Instant) -> Result<Vec<IpAddr>, EgressError> {
    let resolve_error = |reason: String| EgressError::Resolve {
        host: host.to_owned(),
        reason,
    };
    if host.is_empty() {
        return Err(resolve_error("the host name is empty".to_owned()));
    }
    if host.len() > MAX_HOST_LEN {
        return Err(resolve_error(format!(
            "the host name is longer than {MAX_HOST_LEN} characters"
        )));
    }
    if host.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(resolve_error(
            "the host name contains spaces or control characters".to_owned(),
        ));
    }
    let wait = remaining(deadline)?;
    let (tx, rx) = mpsc::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("bento-resolve".to_owned())
        .spawn(move || {
            let result = (name.as_str(), port)
                .to_socket_addrs()
                .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>());
            // The receiver may have given up at the deadline; nothing to do.
            let _ = tx.send(result);
        })
        .map_err(|e| resolve_error(format!("could not start the lookup: {e}")))?;
    match rx.recv_timeout(wait) {
        Ok(Ok(ips)) => {
            let mut unique = Vec::with_capacity(ips.len());
            for ip in ips {
                if !unique.contains(&ip) {
                    unique.push(ip);
                }
            }
            if unique.is_empty() {
                Err(resolve_error("the name has no addresses".to_owned()))
            } else {
                Ok(unique)
            }
        }
        Ok(Err(e)) => Err(resolve_error(e.to_string())),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(EgressError::Timeout),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(resolve_error(
            "the lookup ended without an answer".to_owned(),
        )),
    }
}

/// Resolve `host` and keep only the addresses `check` allows.
///
/// IP literals (IPv6 bracketed or bare) are used as they are; names go to
/// the system resolver on a helper thread, abandoned at `deadline`
/// ([`EgressError::Timeout`]). If no address passes, the error is
/// [`EgressError::Refused`], naming the host, what it resolved to and why
/// each address was refused.
///
/// This is the anti-DNS-rebinding point: connect only to the returned,
/// already-checked addresses, never to the name again.
pub fn resolve_checked(
    check: &DestinationCheck,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, EgressError> {
    if let Some(ip) = ip_literal(host) {
        return match check.refusal(ip, port) {
            None => Ok(vec![SocketAddr::new(ip, port)]),
            Some(reason) => {
                // Destinations are the function's business: not logged.
                tracing::debug!("egress destination refused");
                Err(EgressError::Refused {
                    destination: SocketAddr::new(ip, port).to_string(),
                    reason,
                })
            }
        };
    }
    // No lookup for a port no rule could accept: a function must not be
    // able to make the box's resolver look up arbitrary names (a channel
    // out, through DNS) for destinations it could never reach anyway.
    for (list, rules) in [
        ("the function's grant", &check.grant),
        ("the box policy", &check.policy),
    ] {
        let port_open = rules
            .rules()
            .iter()
            .any(|r| r.action == Action::Accept && (r.ports.0..=r.ports.1).contains(&port));
        if !port_open {
            return Err(EgressError::Refused {
                destination: destination(host, port),
                reason: format!(
                    "by {list}: no rule accepts port {port} (the name was not looked up)"
                ),
            });
        }
    }
    let ips = lookup(host, port, deadline)?;
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    for ip in &ips {
        match check.refusal(*ip, port) {
            None => allowed.push(SocketAddr::new(*ip, port)),
            Some(reason) => refused.push((*ip, reason)),
        }
    }
    if !allowed.is_empty() {
        return Ok(allowed);
    }
    let reason = if let [(ip, why)] = refused.as_slice() {
        format!("because {host} resolved to {ip}, which is refused {why}")
    } else {
        let resolved: Vec<String> = ips.iter().map(ToString::to_string).collect();
        let why: Vec<String> = refused
            .iter()
            .map(|(ip, why)| format!("{ip} is refused {why}"))
            .collect();
        format!(
            "because {host} resolved to {} and none of them may be reached: {}",
            resolved.join(", "),
            why.join("; ")
        )
    };
    tracing::debug!("egress destination refused");
    Err(EgressError::Refused {
        destination: destination(host, port),
        reason,
    })
}

/// Resolve `host` with [`resolve_checked`] and open a TCP connection to the
/// first allowed address that answers, trying each in turn; the time left
/// until `deadline` is shared among the addresses still to try. The stream
/// has `TCP_NODELAY` set.
pub fn connect(
    check: &DestinationCheck,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<TcpStream, EgressError> {
    let addrs = resolve_checked(check, host, port, deadline)?;
    let mut failures = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let left = remaining(deadline)?;
        let untried = u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        let timeout = (left / untried).max(Duration::from_millis(1));
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(|e| EgressError::Connect {
                    destination: destination(host, port),
                    reason: format!("setting TCP_NODELAY failed: {e}"),
                })?;
                return Ok(stream);
            }
            Err(e) => {
                tracing::debug!(error = %e, "egress connect failed");
                failures.push(format!("{addr}: {e}"));
            }
        }
    }
    if Instant::now() >= deadline {
        return Err(EgressError::Timeout);
    }
    Err(EgressError::Connect {
        destination: destination(host, port),
        reason: failures.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn rules(rules: &[&str]) -> ExitPolicy {
        ExitPolicy::parse(rules).unwrap()
    }

    fn check(grant: &[&str], policy: &[&str]) -> DestinationCheck {
        DestinationCheck::new(rules(grant), rules(policy), Vec::new())
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn an_ip_literal_is_allowed_only_when_both_lists_accept_it() {
        let both = check(&["accept 93.184.216.34:443"], &["accept *:*"]);
        let ip: IpAddr = "93.184.216.34".parse().unwrap();
        assert_eq!(both.check(ip, 443), Ok(()));
        assert!(matches!(
            both.check(ip, 80),
            Err(EgressError::Refused { .. })
        ));
        let grant_only = check(&["accept *:*"], &["reject *:*"]);
        assert!(grant_only.check(ip, 443).is_err());
        let policy_only = check(&[], &["accept *:*"]);
        assert!(policy_only.check(ip, 443).is_err());
    }

    #[test]
    fn a_refusal_names_the_list_and_the_rule_that_refused() {
        let c = check(&["accept *:*"], &["reject *:*"]);
        let err = c.check("93.184.216.34".parse().unwrap(), 22).unwrap_err();
        assert_eq!(
            err.to_string(),
            "connection to 93.184.216.34:22 refused by the box policy: rejected by rule `reject *:*`"
        );
        let c = check(&["accept 1.1.1.1:53"], &["accept *:*"]);
        let err = c.check("93.184.216.34".parse().unwrap(), 22).unwrap_err();
        assert_eq!(
            err.to_string(),
            "connection to 93.184.216.34:22 refused by the function's grant: no rule accepts 93.184.216.34:22"
        );
        let c = check(&["reject *:22"], &["reject *:*"]);
        let err = c.check("93.184.216.34".parse().unwrap(), 22).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("grant: rejected by rule `reject *:22`"),
            "{text}"
        );
        assert!(
            text.contains("box policy: rejected by rule `reject *:*`"),
            "{text}"
        );
    }

    #[test]
    fn ip_literals_are_checked_without_a_lookup_and_ipv6_may_be_bracketed() {
        let c = check(&["accept [2001:db8::1]:443"], &["accept *:*"]);
        let expected: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        for host in ["[2001:db8::1]", "2001:db8::1"] {
            assert_eq!(
                resolve_checked(&c, host, 443, soon()).unwrap(),
                vec![expected],
                "{host}"
            );
        }
        let err = resolve_checked(&c, "2001:db8::2", 443, soon()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "connection to [2001:db8::2]:443 refused by the function's grant: no rule accepts [2001:db8::2]:443"
        );
        // A literal needs no lookup, so even a passed deadline is fine.
        assert!(resolve_checked(&c, "[2001:db8::1]", 443, Instant::now()).is_ok());
    }

    #[test]
    fn loopback_link_local_and_private_addresses_are_refused_under_a_wildcard_accept() {
        let c = check(&["accept *:*"], &["accept *:*"]);
        for host in [
            "::1",
            "[::1]",
            "169.254.169.254",
            "10.0.0.1",
            "127.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            let started = Instant::now();
            let err = connect(&c, host, 80, soon()).unwrap_err();
            assert!(matches!(err, EgressError::Refused { .. }), "{host}: {err}");
            assert!(
                err.to_string().contains("private, local or own address"),
                "{host}: {err}"
            );
            // Refused by the check, not after a connection attempt.
            assert!(started.elapsed() < Duration::from_secs(1), "{host}");
        }
    }

    #[test]
    fn ipv6_forms_carrying_a_loopback_or_private_ipv4_are_refused_under_a_wildcard_accept() {
        let c = check(&["accept *:*"], &["accept *:*"]);
        for host in [
            "::127.0.0.1",                 // IPv4-compatible
            "::ffff:0:10.0.0.1",           // IPv4-translated
            "2001:0:5db8:d822::80ff:fffe", // Teredo, client 127.0.0.1
            "2001:0:c0a8:101::a247:2bdd",  // Teredo, server 192.168.1.1
            "64:ff9b::169.254.169.254",    // NAT64
            "2002:7f00:1::1",              // 6to4
        ] {
            let err = resolve_checked(&c, host, 80, soon()).unwrap_err();
            assert!(
                err.to_string().contains("private, local or own address"),
                "{host}: {err}"
            );
        }
        // The same forms around a public address pass.
        for host in ["::93.184.216.34", "2001:0:5db8:d822::a247:2bdd"] {
            assert!(resolve_checked(&c, host, 80, soon()).is_ok(), "{host}");
        }
    }

    #[test]
    fn the_boxs_own_address_is_refused_under_a_wildcard_accept() {
        let own: IpAddr = "198.51.100.7".parse().unwrap();
        let c = DestinationCheck::new(rules(&["accept *:*"]), rules(&["accept *:*"]), vec![own]);
        let err = c.check(own, 9001).unwrap_err();
        assert!(err.to_string().contains("own address"), "{err}");
    }

    #[test]
    fn localhost_is_refused_when_only_a_different_port_is_accepted() {
        let c = check(
            &["accept 127.0.0.1:8080", "accept *:8081"],
            &["accept 127.0.0.1:8080", "accept *:8081"],
        );
        let err = resolve_checked(&c, "localhost", 8081, soon()).unwrap_err();
        let EgressError::Refused {
            destination,
            reason,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(destination, "localhost:8081");
        assert!(reason.contains("localhost resolved to"), "{reason}");
        assert!(reason.contains("127.0.0.1"), "{reason}");
    }

    #[test]
    fn a_name_is_not_even_looked_up_for_a_port_no_rule_accepts() {
        let c = check(&["accept 127.0.0.1:8080"], &["accept *:*"]);
        // An unresolvable name: a lookup would fail with Resolve instead.
        let err = resolve_checked(&c, "no-such-host.invalid", 8081, soon()).unwrap_err();
        let EgressError::Refused { reason, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(
            reason,
            "by the function's grant: no rule accepts port 8081 (the name was not looked up)"
        );
    }

    #[test]
    fn localhost_is_allowed_when_the_grant_and_the_policy_accept_its_loopback_port() {
        let c = check(
            &["accept 127.0.0.1:8080"],
            &["accept 127.0.0.1:8080", "reject *:*"],
        );
        let addrs = resolve_checked(&c, "localhost", 8080, soon()).unwrap();
        // Whatever else localhost resolves to (::1) is filtered out.
        assert_eq!(addrs, vec!["127.0.0.1:8080".parse().unwrap()]);
    }

    #[test]
    fn localhost_is_refused_when_only_the_grant_accepts_it() {
        let c = check(&["accept 127.0.0.1:8080"], &["accept *:*"]);
        let err = resolve_checked(&c, "localhost", 8080, soon()).unwrap_err();
        assert!(matches!(err, EgressError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("by the box policy"), "{err}");
    }

    #[test]
    fn a_name_lookup_whose_deadline_has_passed_times_out() {
        let c = check(&["accept 127.0.0.1:8080"], &["accept 127.0.0.1:8080"]);
        let err = resolve_checked(&c, "localhost", 8080, Instant::now()).unwrap_err();
        assert_eq!(err, EgressError::Timeout);
    }

    #[test]
    fn malformed_names_fail_to_resolve_without_a_lookup() {
        let c = check(&["accept *:*"], &["accept *:*"]);
        for host in ["", "bad name", "a\nb", &"a".repeat(300)] {
            let err = resolve_checked(&c, host, 80, soon()).unwrap_err();
            assert!(
                matches!(err, EgressError::Resolve { .. }),
                "{host:?}: {err}"
            );
        }
    }

    #[test]
    fn connect_reaches_an_allowed_local_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let rule = format!("accept 127.0.0.1:{port}");
        let c = check(&[&rule], &[&rule]);
        for host in ["127.0.0.1", "localhost"] {
            let stream = connect(&c, host, port, soon()).unwrap();
            assert!(stream.nodelay().unwrap());
            let (accepted, _) = listener.accept().unwrap();
            assert_eq!(
                accepted.peer_addr().unwrap(),
                stream.local_addr().unwrap(),
                "{host}"
            );
        }
    }

    #[test]
    fn connect_to_an_allowed_port_nobody_listens_on_fails_with_connect() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let rule = format!("accept 127.0.0.1:{port}");
        let c = check(&[&rule], &[&rule]);
        let err = connect(&c, "127.0.0.1", port, soon()).unwrap_err();
        assert!(matches!(err, EgressError::Connect { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("could not connect to 127.0.0.1:{port}: "))
        );
    }
}
