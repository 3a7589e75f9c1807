//! Destination rules in Tor exit-policy syntax and semantics.
//!
//! A rule is `accept|reject ADDR[/MASK]:PORT[-PORT]` where `ADDR` is `*`
//! (any address), `*4`, `*6`, an IPv4 address, or a bracketed IPv6 address;
//! `MASK` is a prefix length or (IPv4) a dotted netmask; `PORT` is `*`, a
//! port, or a range. Rules are checked in order and the first match wins;
//! an address no rule matches is rejected.
//!
//! Private, loopback, link-local, multicast and the box's own addresses are
//! rejected unless a rule names them explicitly: a wildcard `accept *:…`
//! never matches them (Tor's `ExitPolicyRejectPrivate`, made the only mode).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Accept or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Allow the destination.
    Accept,
    /// Refuse the destination.
    Reject,
}

/// Which addresses a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrPattern {
    /// `*`: every address.
    Any,
    /// `*4`: every IPv4 address.
    AnyV4,
    /// `*6`: every IPv6 address.
    AnyV6,
    /// A network: address and prefix length.
    Net(IpAddr, u8),
}

impl AddrPattern {
    fn matches(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (AddrPattern::Any, _) => true,
            (AddrPattern::AnyV4, IpAddr::V4(_)) | (AddrPattern::AnyV6, IpAddr::V6(_)) => true,
            (AddrPattern::Net(IpAddr::V4(net), bits), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), bits)
            }
            (AddrPattern::Net(IpAddr::V6(net), bits), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), bits)
            }
            _ => false,
        }
    }

    fn is_wildcard(self) -> bool {
        matches!(
            self,
            AddrPattern::Any | AddrPattern::AnyV4 | AddrPattern::AnyV6
        )
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let full = bits / 8;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// One rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestinationRule {
    /// What a match does.
    pub action: Action,
    /// Addresses covered.
    pub addr: AddrPattern,
    /// Ports covered (inclusive).
    pub ports: (u16, u16),
}

/// A rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad destination rule {rule:?}: {reason}")]
pub struct RuleParseError {
    /// The rule text.
    pub rule: String,
    /// What is wrong.
    pub reason: String,
}

fn parse_error(rule: &str, reason: impl Into<String>) -> RuleParseError {
    RuleParseError {
        rule: rule.to_owned(),
        reason: reason.into(),
    }
}

fn parse_ports(rule: &str, text: &str) -> Result<(u16, u16), RuleParseError> {
    if text == "*" {
        return Ok((1, u16::MAX));
    }
    let port = |p: &str| -> Result<u16, RuleParseError> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(parse_error(rule, format!("{p:?} is not a port (1-65535)"))),
            Ok(n) => Ok(n),
        }
    };
    match text.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                return Err(parse_error(rule, format!("port range {lo}-{hi} is empty")));
            }
            Ok((lo, hi))
        }
        None => {
            let p = port(text)?;
            Ok((p, p))
        }
    }
}

fn parse_mask(rule: &str, mask: &str, max_bits: u8, v4: bool) -> Result<u8, RuleParseError> {
    if let Ok(bits) = mask.parse::<u8>() {
        if bits <= max_bits {
            return Ok(bits);
        }
        return Err(parse_error(
            rule,
            format!("prefix /{bits} is longer than {max_bits} bits"),
        ));
    }
    if let (true, Ok(netmask)) = (v4, Ipv4Addr::from_str(mask)) {
        let value = u32::from(netmask);
        let bits = value.leading_ones();
        if value.checked_shl(bits).unwrap_or(0) == 0 {
            return Ok(u8::try_from(bits).unwrap_or(32));
        }
        return Err(parse_error(
            rule,
            format!("netmask {mask} is not contiguous"),
        ));
    }
    Err(parse_error(rule, format!("bad mask {mask:?}")))
}

fn parse_addr(rule: &str, text: &str) -> Result<AddrPattern, RuleParseError> {
    match text {
        "*" => return Ok(AddrPattern::Any),
        "*4" => return Ok(AddrPattern::AnyV4),
        "*6" => return Ok(AddrPattern::AnyV6),
        _ => {}
    }
    let (addr, mask) = match text.split_once('/') {
        Some((addr, mask)) => (addr, Some(mask)),
        None => (text, None),
    };
    if let Some(inner) = addr.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| parse_error(rule, "unclosed '[' in IPv6 address"))?;
        let ip = Ipv6Addr::from_str(inner)
            .map_err(|_| parse_error(rule, format!("{inner:?} is not an IPv6 address")))?;
        let bits = match mask {
            Some(m) => parse_mask(rule, m, 128, false)?,
            None => 128,
        };
        return Ok(AddrPattern::Net(IpAddr::V6(ip), bits));
    }
    let ip = Ipv4Addr::from_str(addr).map_err(|_| {
        parse_error(
            rule,
            format!(
                "{addr:?} is not an address (use *, *4, *6, a.b.c.d or [v6]; names are not allowed)"
            ),
        )
    })?;
    let bits = match mask {
        Some(m) => parse_mask(rule, m, 32, true)?,
        None => 32,
    };
    Ok(AddrPattern::Net(IpAddr::V4(ip), bits))
}

impl FromStr for DestinationRule {
    type Err = RuleParseError;

    fn from_str(rule: &str) -> Result<Self, Self::Err> {
        let trimmed = rule.trim();
        let (action, rest) = trimmed
            .split_once(char::is_whitespace)
            .ok_or_else(|| parse_error(rule, "expected `accept` or `reject`, then ADDR:PORT"))?;
        let action = match action {
            "accept" => Action::Accept,
            "reject" => Action::Reject,
            other => {
                return Err(parse_error(
                    rule,
                    format!("{other:?} is not `accept` or `reject`"),
                ));
            }
        };
        let target = rest.trim();
        let (addr, ports) = target
            .rsplit_once(':')
            .ok_or_else(|| parse_error(rule, "expected ADDR:PORT"))?;
        Ok(DestinationRule {
            action,
            addr: parse_addr(rule, addr)?,
            ports: parse_ports(rule, ports)?,
        })
    }
}

impl fmt::Display for DestinationRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Accept => "accept",
            Action::Reject => "reject",
        };
        let addr = match self.addr {
            AddrPattern::Any => "*".to_owned(),
            AddrPattern::AnyV4 => "*4".to_owned(),
            AddrPattern::AnyV6 => "*6".to_owned(),
            AddrPattern::Net(IpAddr::V4(ip), 32) => ip.to_string(),
            AddrPattern::Net(IpAddr::V4(ip), bits) => format!("{ip}/{bits}"),
            AddrPattern::Net(IpAddr::V6(ip), 128) => format!("[{ip}]"),
            AddrPattern::Net(IpAddr::V6(ip), bits) => format!("[{ip}]/{bits}"),
        };
        let ports = match self.ports {
            (1, u16::MAX) => "*".to_owned(),
            (lo, hi) if lo == hi => lo.to_string(),
            (lo, hi) => format!("{lo}-{hi}"),
        };
        write!(f, "{action} {addr}:{ports}")
    }
}

/// An ordered list of destination rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitPolicy {
    rules: Vec<DestinationRule>,
}

/// Serialised as its rules in words, the syntax it is parsed from (the
/// worker pipe carries grants as JSON).
impl serde::Serialize for ExitPolicy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.rules.iter().map(ToString::to_string))
    }
}

/// A rule that does not parse is an error, never silently dropped.
impl<'de> serde::Deserialize<'de> for ExitPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rules = Vec::<String>::deserialize(deserializer)?;
        ExitPolicy::parse(&rules).map_err(serde::de::Error::custom)
    }
}

/// The outcome of checking a destination, with the reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the destination may be reached.
    pub allowed: bool,
    /// Why, e.g. "rejected by rule `reject *:25`".
    pub reason: String,
}

/// The IPv4 addresses an IPv6 address carries, for the forms that deliver
/// to (or through) them: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d` (deprecated, still routed by some stacks), IPv4-translated
/// `::ffff:0:a.b.c.d` (SIIT), NAT64 `64:ff9b::/96`, 6to4 `2002::/16`
/// and Teredo `2001::/32` (server in bits 32..64, client in the last 32
/// bits inverted; both are reached). An address of none of these forms
/// carries none.
pub fn embedded_ipv4(v6: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] // IPv4-mapped
        | [0, 0, 0, 0, 0, 0, hi, lo] // IPv4-compatible, :: and ::1 included
        | [0, 0, 0, 0, 0xffff, 0, hi, lo] // IPv4-translated
        | [0x0064, 0xff9b, 0, 0, 0, 0, hi, lo] => [v4(hi, lo), None], // NAT64
        [0x2002, hi, lo, ..] => [v4(hi, lo), None], // 6to4
        [0x2001, 0, server_hi, server_lo, _, _, client_hi, client_lo] => [
            v4(server_hi, server_lo),
            v4(!client_hi, !client_lo),
        ], // Teredo
        _ => [None, None],
    }
}

/// Addresses that are never reachable through a wildcard accept.
pub fn is_private_or_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared (CGNAT)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24 protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15 benchmarking, often internal
                || o[0] >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 1 {
                return true; // local-use NAT64 64:ff9b:1::/48: any IPv4 behind it
            }
            // Forms that carry an IPv4 address onward: judge that address.
            if embedded_ipv4(v6)
                .into_iter()
                .flatten()
                .any(|v4| is_private_or_local(IpAddr::V4(v4)))
            {
                return true;
            }
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        }
    }
}

impl ExitPolicy {
    /// Parse rules, one per string.
    pub fn parse<S: AsRef<str>>(rules: &[S]) -> Result<Self, RuleParseError> {
        let rules = rules
            .iter()
            .map(|r| r.as_ref().parse())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules })
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[DestinationRule] {
        &self.rules
    }

    /// Whether no rule exists (everything is rejected).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decide whether `ip:port` may be reached. `own` lists the box's own
    /// addresses, which (like private ones) only an explicit rule accepts.
    pub fn decide(&self, ip: IpAddr, port: u16, own: &[IpAddr]) -> Decision {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        // The box's own IPv4 addresses are as near inside any IPv6 form
        // that carries them (e.g. NAT64 back to the box).
        let carried = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6),
            IpAddr::V4(_) => [None, None],
        };
        let protected = is_private_or_local(ip)
            || own.contains(&ip)
            || carried
                .into_iter()
                .flatten()
                .any(|v4| own.contains(&IpAddr::V4(v4)));
        for rule in &self.rules {
            if !(rule.addr.matches(ip) && (rule.ports.0..=rule.ports.1).contains(&port)) {
                continue;
            }
            if rule.action == Action::Accept && protected && rule.addr.is_wildcard() {
                // A wildcard never opens private, local or the box's own
                // addresses; keep looking for an explicit rule.
                continue;
            }
            return Decision {
                allowed: rule.action == Action::Accept,
                reason: format!(
                    "{} by rule `{rule}`",
                    if rule.action == Action::Accept {
                        "accepted"
                    } else {
                        "rejected"
                    }
                ),
            };
        }
        let destination = std::net::SocketAddr::new(ip, port);
        Decision {
            allowed: false,
            reason: if protected {
                format!(
                    "{ip} is a private, local or own address and no rule names {destination} explicitly"
                )
            } else {
                format!("no rule accepts {destination}")
            },
        }
    }
}

impl fmt::Display for ExitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules: Vec<String> = self.rules.iter().map(ToString::to_string).collect();
        f.write_str(&rules.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> ExitPolicy {
        ExitPolicy::parse(rules).unwrap()
    }

    fn allowed(p: &ExitPolicy, target: &str) -> bool {
        let (ip, port) = target.rsplit_once(':').unwrap();
        let ip: IpAddr = ip.trim_matches(['[', ']']).parse().unwrap();
        p.decide(ip, port.parse().unwrap(), &[]).allowed
    }

    #[test]
    fn ipv6_prefixes_that_carry_a_private_ipv4_address_are_private() {
        for ip in [
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "2002:c0a8:101::1",
            "64:ff9b:1::1",
        ] {
            assert!(is_private_or_local(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["64:ff9b::5db8:d822", "2002:5db8:d822::1", "2606:4700::1"] {
            assert!(!is_private_or_local(ip.parse().unwrap()), "{ip}");
        }
        assert!(is_private_or_local("198.18.0.1".parse().unwrap()));
        assert!(is_private_or_local("192.0.0.8".parse().unwrap()));
    }

    #[test]
    fn ipv4_compatible_addresses_are_judged_by_the_ipv4_inside() {
        for ip in [
            "::127.0.0.1",
            "::10.1.2.3",
            "::192.168.0.1",
            "::169.254.169.254",
        ] {
            assert!(is_private_or_local(ip.parse().unwrap()), "{ip}");
        }
        assert!(!is_private_or_local("::93.184.216.34".parse().unwrap()));
        let p = policy(&["accept *:*"]);
        assert!(!allowed(&p, "[::127.0.0.1]:80"));
        assert!(allowed(&p, "[::93.184.216.34]:80"));
    }

    #[test]
    fn ipv4_translated_addresses_are_judged_by_the_ipv4_inside() {
        for ip in [
            "::ffff:0:127.0.0.1",
            "::ffff:0:10.0.0.1",
            "::ffff:0:172.16.0.1",
        ] {
            assert!(is_private_or_local(ip.parse().unwrap()), "{ip}");
        }
        assert!(!is_private_or_local(
            "::ffff:0:93.184.216.34".parse().unwrap()
        ));
        let p = policy(&["accept *:*"]);
        assert!(!allowed(&p, "[::ffff:0:127.0.0.1]:80"));
        assert!(allowed(&p, "[::ffff:0:93.184.216.34]:80"));
    }

    #[test]
    fn teredo_addresses_are_judged_by_the_server_and_the_client_ipv4_inside() {
        // Client 127.0.0.1 is stored inverted: 0x80ff:fffe.
        let loopback_client = "2001:0:5db8:d822:0:0:80ff:fffe";
        let private_server = "2001:0:a00:1:0:0:a247:2bdd"; // server 10.0.0.1
        let public_both = "2001:0:5db8:d822:0:0:a247:2bdd"; // client 93.184.212.34
        assert_eq!(
            embedded_ipv4(loopback_client.parse().unwrap()),
            [
                Some(Ipv4Addr::new(93, 184, 216, 34)),
                Some(Ipv4Addr::new(127, 0, 0, 1))
            ]
        );
        assert!(is_private_or_local(loopback_client.parse().unwrap()));
        assert!(is_private_or_local(private_server.parse().unwrap()));
        assert!(!is_private_or_local(public_both.parse().unwrap()));
        let p = policy(&["accept *:*"]);
        assert!(!allowed(&p, &format!("[{loopback_client}]:80")));
        assert!(!allowed(&p, &format!("[{private_server}]:80")));
        assert!(allowed(&p, &format!("[{public_both}]:80")));
    }

    #[test]
    fn the_boxs_own_ipv4_inside_an_ipv6_form_needs_an_explicit_rule() {
        let own: IpAddr = "198.51.100.7".parse().unwrap();
        let p = policy(&["accept *:*"]);
        for ip in [
            "64:ff9b::c633:6407",
            "2002:c633:6407::1",
            "::198.51.100.7",
            "::ffff:0:198.51.100.7",
        ] {
            let decision = p.decide(ip.parse().unwrap(), 7878, &[own]);
            assert!(!decision.allowed, "{ip}");
        }
        assert!(
            p.decide("64:ff9b::5db8:d822".parse().unwrap(), 80, &[own])
                .allowed
        );
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let p = policy(&["reject *:25", "accept *:*"]);
        assert!(!allowed(&p, "93.184.216.34:25"));
        assert!(allowed(&p, "93.184.216.34:443"));
        let p = policy(&["accept *:*", "reject *:25"]);
        assert!(allowed(&p, "93.184.216.34:25"));
    }

    #[test]
    fn nothing_matching_is_rejected() {
        let p = policy(&["accept 93.184.216.34:443"]);
        assert!(!allowed(&p, "93.184.216.34:80"));
        assert!(!allowed(&p, "1.1.1.1:443"));
        assert!(!allowed(&ExitPolicy::default(), "1.1.1.1:443"));
    }

    #[test]
    fn masks_and_port_ranges_follow_tor_syntax() {
        let p = policy(&[
            "accept 198.51.100.0/24:8000-8999",
            "accept 203.0.113.0/255.255.255.128:*",
        ]);
        assert!(allowed(&p, "198.51.100.77:8080"));
        assert!(!allowed(&p, "198.51.101.1:8080"));
        assert!(!allowed(&p, "198.51.100.77:9000"));
        assert!(allowed(&p, "203.0.113.127:1"));
        assert!(!allowed(&p, "203.0.113.128:1"));
        let p = policy(&["accept [2001:db8::]/32:443", "reject *6:*", "accept *4:*"]);
        assert!(allowed(&p, "[2001:db8::1]:443"));
        assert!(!allowed(&p, "[2001:db9::1]:443"));
        assert!(allowed(&p, "8.8.8.8:53"));
    }

    #[test]
    fn wildcards_never_open_private_loopback_or_link_local_addresses() {
        let p = policy(&["accept *:*"]);
        for target in [
            "127.0.0.1:8080",
            "10.0.0.1:80",
            "172.16.5.4:80",
            "192.168.1.1:80",
            "169.254.169.254:80",
            "100.64.0.1:80",
            "0.0.0.0:80",
            "224.0.0.1:80",
            "[::1]:80",
            "[fe80::1]:80",
            "[fd00::1]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(!allowed(&p, target), "{target}");
        }
        assert!(allowed(&p, "93.184.216.34:80"));
    }

    #[test]
    fn an_explicit_rule_opens_a_private_address_and_only_that() {
        let p = policy(&["accept 127.0.0.1:8080", "accept *:*"]);
        assert!(allowed(&p, "127.0.0.1:8080"));
        assert!(!allowed(&p, "127.0.0.1:8081"));
        assert!(!allowed(&p, "127.0.0.2:8080"));
        assert!(
            allowed(&p, "[::ffff:127.0.0.1]:8080"),
            "IPv4-mapped is the same address"
        );
    }

    #[test]
    fn the_boxs_own_addresses_need_an_explicit_rule() {
        let own: IpAddr = "198.51.100.7".parse().unwrap();
        let p = policy(&["accept *:*"]);
        let decision = p.decide(own, 7878, &[own]);
        assert!(!decision.allowed);
        assert!(
            decision.reason.contains("own address"),
            "{}",
            decision.reason
        );
        let p = policy(&["accept 198.51.100.7:80"]);
        assert!(p.decide(own, 80, &[own]).allowed);
    }

    #[test]
    fn decisions_name_the_rule() {
        let p = policy(&["reject 1.2.3.0/24:*", "accept *:*"]);
        let d = p.decide("1.2.3.4".parse().unwrap(), 80, &[]);
        assert_eq!(d.reason, "rejected by rule `reject 1.2.3.0/24:*`");
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        for (rule, reason) in [
            ("allow *:*", "not `accept` or `reject`"),
            ("accept example.com:80", "names are not allowed"),
            ("accept 1.2.3.4", "expected ADDR:PORT"),
            ("accept 1.2.3.4:0", "not a port"),
            ("accept 1.2.3.4:90-80", "is empty"),
            ("accept 1.2.3.4/33:80", "longer than 32"),
            ("accept 1.2.3.4/255.0.255.0:80", "not contiguous"),
            ("accept [::1:80", "unclosed"),
            ("accept", "expected `accept` or `reject`"),
        ] {
            let err = rule.parse::<DestinationRule>().unwrap_err();
            assert!(err.to_string().contains(reason), "{rule}: {err}");
        }
    }

    #[test]
    fn rules_print_as_they_parse() {
        for rule in [
            "accept *:*",
            "reject 10.0.0.0/8:*",
            "accept [::1]:80",
            "accept *4:1000-2000",
        ] {
            assert_eq!(rule.parse::<DestinationRule>().unwrap().to_string(), rule);
        }
    }
}
