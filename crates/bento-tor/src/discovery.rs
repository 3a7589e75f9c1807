//! Finding Bento boxes where Tor clients already look: relays' descriptors.
//!
//! A relay operator who runs a box beside the relay announces it in the
//! relay's `ContactInfo` as one more field of the ContactInfo Information
//! Sharing Specification (CIISS: space-separated `key:value` fields):
//!
//! ```text
//! ContactInfo email:op[]example.org ciissversion:2 bento:ONION.onion:7878
//! ```
//!
//! [`announcements`] reads those fields; [`TorControl::announcing_relays`]
//! lists the relays of the current consensus that carry one, from the local
//! tor's copy of the relays' server descriptors (the consensus and
//! microdescriptors do not carry ContactInfo). Nothing here contacts a box:
//! whether the onion really is a box is for the caller to find out.

use std::fmt;

use crate::{TorControl, TorError};

/// The CIISS field name of a box announcement.
pub const CONTACT_FIELD: &str = "bento";

/// At most this many announcements are taken from one relay: a hostile
/// relay could otherwise list thousands of onions and make every client
/// that lists boxes dial them all.
pub const MAX_ANNOUNCEMENTS_PER_RELAY: usize = 4;

/// Length of a v3 onion address without `.onion`.
const ONION_V3_LEN: usize = 56;

/// A box announced by a relay: its onion address and virtual port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Announcement {
    onion: String,
    port: u16,
}

/// Why a `bento` field of a ContactInfo is not an announcement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnouncementError {
    /// The value has no `:PORT`.
    #[error("{entry:?}: no port (expected bento:ONION.onion:PORT)")]
    MissingPort {
        /// The field as the relay published it.
        entry: String,
    },
    /// The port is not a number in 1..=65535.
    #[error("{entry:?}: the port is not a number in 1..=65535")]
    BadPort {
        /// The field as the relay published it.
        entry: String,
    },
    /// The host is not a v3 onion address.
    #[error("{entry:?}: not a v3 onion address (56 base32 characters, then .onion)")]
    NotAnOnion {
        /// The field as the relay published it.
        entry: String,
    },
    /// The relay announces more boxes than a client will look at.
    #[error(
        "{entry:?}: more than {MAX_ANNOUNCEMENTS_PER_RELAY} bento fields in one ContactInfo; the rest are ignored"
    )]
    TooMany {
        /// The first field left out.
        entry: String,
    },
}

impl Announcement {
    /// An announcement of `onion` (`xyz….onion`, lower case) on `port`.
    pub fn new(onion: &str, port: u16) -> Result<Self, AnnouncementError> {
        let entry = format!("{onion}:{port}");
        if port == 0 {
            return Err(AnnouncementError::BadPort { entry });
        }
        if !is_v3_onion(onion) {
            return Err(AnnouncementError::NotAnOnion { entry });
        }
        Ok(Announcement {
            onion: onion.to_string(),
            port,
        })
    }

    /// Parses the value of a `bento` field, `ONION.onion:PORT`.
    pub fn parse(value: &str) -> Result<Self, AnnouncementError> {
        let entry = value.to_string();
        let (host, port) =
            value
                .rsplit_once(':')
                .ok_or_else(|| AnnouncementError::MissingPort {
                    entry: entry.clone(),
                })?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| AnnouncementError::BadPort {
                entry: entry.clone(),
            })?;
        if !is_v3_onion(host) {
            return Err(AnnouncementError::NotAnOnion { entry });
        }
        Ok(Announcement {
            onion: host.to_string(),
            port,
        })
    }

    /// The onion address, `xyz….onion`.
    pub fn onion(&self) -> &str {
        &self.onion
    }

    /// The virtual port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `xyz….onion:PORT`, what a client dials.
    pub fn server(&self) -> String {
        format!("{}:{}", self.onion, self.port)
    }

    /// The ContactInfo field announcing it, `bento:xyz….onion:PORT`.
    pub fn contact_field(&self) -> String {
        format!("{CONTACT_FIELD}:{}", self.server())
    }
}

impl fmt::Display for Announcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.server())
    }
}

fn is_v3_onion(host: &str) -> bool {
    host.strip_suffix(".onion").is_some_and(|name| {
        name.len() == ONION_V3_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    })
}

/// The box announcements in a ContactInfo: every whitespace-separated
/// `bento:VALUE` field (CIISS syntax; `bento=VALUE` is read the same way),
/// valid or not, at most [`MAX_ANNOUNCEMENTS_PER_RELAY`] of them plus one
/// [`AnnouncementError::TooMany`] when there are more. Other fields and
/// free text are ignored.
pub fn announcements(contact: &str) -> Vec<Result<Announcement, AnnouncementError>> {
    let mut found = Vec::new();
    for field in contact.split_whitespace() {
        let Some(value) = field
            .strip_prefix(CONTACT_FIELD)
            .and_then(|rest| rest.strip_prefix([':', '=']))
        else {
            continue;
        };
        if found.len() == MAX_ANNOUNCEMENTS_PER_RELAY {
            found.push(Err(AnnouncementError::TooMany {
                entry: value.to_string(),
            }));
            break;
        }
        found.push(Announcement::parse(value));
    }
    found
}

/// Whether a ContactInfo carries a valid announcement of `target`.
pub fn announces(contact: &str, target: &Announcement) -> bool {
    announcements(contact)
        .iter()
        .any(|a| a.as_ref().is_ok_and(|a| a == target))
}

/// What a relay's server descriptor says that discovery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayDescriptor {
    /// The relay's nickname.
    pub nickname: String,
    /// Its identity fingerprint, 40 upper-case hex digits.
    pub fingerprint: String,
    /// When the descriptor was published (`YYYY-MM-DD HH:MM:SS`, UTC).
    pub published: String,
    /// Its ContactInfo, if any.
    pub contact: Option<String>,
}

/// Parses concatenated server descriptors (`GETINFO desc/all-recent`),
/// keeping the newest descriptor of each relay. Descriptors without a
/// `router` line or a valid fingerprint are skipped.
pub fn parse_server_descriptors(text: &str) -> Vec<RelayDescriptor> {
    let mut relays: Vec<RelayDescriptor> = Vec::new();
    let mut current: Option<RelayDescriptor> = None;
    let finish = |d: Option<RelayDescriptor>, relays: &mut Vec<RelayDescriptor>| {
        let Some(d) = d else { return };
        if d.fingerprint.len() != 40 {
            return;
        }
        match relays.iter_mut().find(|r| r.fingerprint == d.fingerprint) {
            Some(old) if old.published < d.published => *old = d,
            Some(_) => {}
            None => relays.push(d),
        }
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("router ") {
            finish(current.take(), &mut relays);
            current = Some(RelayDescriptor {
                nickname: rest.split(' ').next().unwrap_or_default().to_string(),
                fingerprint: String::new(),
                published: String::new(),
                contact: None,
            });
        } else if let Some(d) = current.as_mut() {
            if let Some(rest) = line.strip_prefix("fingerprint ") {
                let hex: String = rest.split_whitespace().collect();
                if hex.len() == 40 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    d.fingerprint = hex.to_ascii_uppercase();
                }
            } else if let Some(rest) = line.strip_prefix("published ") {
                d.published = rest.trim().to_string();
            } else if let Some(rest) = line.strip_prefix("contact ") {
                d.contact = Some(rest.to_string());
            }
        }
    }
    finish(current, &mut relays);
    relays
}

/// The flags in a router status entry (`GETINFO ns/id/…`): its `s` line.
pub fn parse_status_flags(entry: &str) -> Vec<String> {
    entry
        .lines()
        .find_map(|l| l.strip_prefix("s "))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// A relay in the current consensus whose ContactInfo has `bento` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncingRelay {
    /// The relay's nickname.
    pub nickname: String,
    /// Its identity fingerprint (hex).
    pub fingerprint: String,
    /// Its consensus flags (`Exit`, `Fast`, `Guard`, …).
    pub flags: Vec<String>,
    /// One `bento` field: a box to try, or why it is not one.
    pub announcement: Result<Announcement, AnnouncementError>,
}

impl AnnouncingRelay {
    /// Whether the consensus gives the relay the Exit flag.
    pub fn is_exit(&self) -> bool {
        self.flags.iter().any(|f| f == "Exit")
    }
}

/// Whether a tor with these options keeps full server descriptors (which
/// carry ContactInfo): relays and directory caches do, clients only with
/// `UseMicrodescriptors 0` or `FetchUselessDescriptors 1`.
fn keeps_server_descriptors(
    is_relay: bool,
    use_microdescriptors: Option<&str>,
    fetch_useless: Option<&str>,
) -> bool {
    is_relay || use_microdescriptors == Some("0") || fetch_useless == Some("1")
}

impl TorControl {
    /// The relays of the current consensus that announce boxes, one entry
    /// per `bento` field, from the server descriptors this tor holds.
    ///
    /// Fails with [`TorError::NoServerDescriptors`] when this tor only
    /// fetches microdescriptors (a client's default), saying what to add to
    /// its torrc. A relay whose descriptor is known but which is not in the
    /// current consensus is left out.
    pub async fn announcing_relays(&mut self) -> Result<Vec<AnnouncingRelay>, TorError> {
        let is_relay = self.getinfo("fingerprint").await.is_ok();
        let micro = self.getconf("UseMicrodescriptors").await?;
        let useless = self.getconf("FetchUselessDescriptors").await?;
        if !keeps_server_descriptors(is_relay, micro.as_deref(), useless.as_deref()) {
            return Err(TorError::NoServerDescriptors {
                addr: self.addr().to_string(),
            });
        }
        let descriptors = self.getinfo("desc/all-recent").await?;
        let mut found = Vec::new();
        for relay in parse_server_descriptors(&descriptors) {
            let Some(contact) = relay.contact.as_deref() else {
                continue;
            };
            let fields = announcements(contact);
            if fields.is_empty() {
                continue;
            }
            let flags = match self.getinfo(&format!("ns/id/{}", relay.fingerprint)).await {
                Ok(entry) => parse_status_flags(&entry),
                // 552: not in the current consensus (gone, or not yet).
                Err(TorError::Command { code: 552, .. }) => continue,
                Err(e) => return Err(e),
            };
            for announcement in fields {
                found.push(AnnouncingRelay {
                    nickname: relay.nickname.clone(),
                    fingerprint: relay.fingerprint.clone(),
                    flags: flags.clone(),
                    announcement,
                });
            }
        }
        found.sort_by(|a, b| a.nickname.cmp(&b.nickname));
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ONION: &str = "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx.onion";

    #[test]
    fn a_ciiss_contact_info_yields_its_bento_fields_and_nothing_else() {
        let contact = format!(
            "email:op[]example.org url:https://example.org ciissversion:2 bento:{ONION}:7878 \
             bentobox:x bento={ONION}:80"
        );
        let found = announcements(&contact);
        assert_eq!(
            found,
            vec![
                Ok(Announcement::new(ONION, 7878).unwrap()),
                Ok(Announcement::new(ONION, 80).unwrap()),
            ]
        );
        assert_eq!(
            found[0].as_ref().unwrap().contact_field(),
            format!("bento:{ONION}:7878")
        );
        assert!(announcements("Random Person <nobody AT example dot com>").is_empty());
        let ours = Announcement::new(ONION, 7878).unwrap();
        assert!(announces(&contact, &ours));
        assert!(!announces(
            &contact,
            &Announcement::new(ONION, 7879).unwrap()
        ));
    }

    #[test]
    fn malformed_bento_fields_are_reported_not_dropped() {
        let short = "abc.onion";
        let contact =
            format!("bento:{ONION} bento:{ONION}:0 bento:{ONION}:99999 bento:{short}:80 bento:");
        let found = announcements(&contact);
        assert!(matches!(
            found[0],
            Err(AnnouncementError::MissingPort { .. })
        ));
        assert!(matches!(found[1], Err(AnnouncementError::BadPort { .. })));
        assert!(matches!(found[2], Err(AnnouncementError::BadPort { .. })));
        assert!(matches!(
            found[3],
            Err(AnnouncementError::NotAnOnion { .. })
        ));
        assert_eq!(found.len(), MAX_ANNOUNCEMENTS_PER_RELAY + 1);
        let upper = ONION.to_ascii_uppercase().replace(".ONION", ".onion");
        assert!(matches!(
            Announcement::parse(&format!("{upper}:80")),
            Err(AnnouncementError::NotAnOnion { .. })
        ));
    }

    #[test]
    fn a_relay_announcing_too_many_boxes_is_cut_at_the_limit() {
        let contact = vec![format!("bento:{ONION}:80"); 1000].join(" ");
        let found = announcements(&contact);
        assert_eq!(found.len(), MAX_ANNOUNCEMENTS_PER_RELAY + 1);
        assert!(
            found[..MAX_ANNOUNCEMENTS_PER_RELAY]
                .iter()
                .all(Result::is_ok)
        );
        assert!(matches!(
            found[MAX_ANNOUNCEMENTS_PER_RELAY],
            Err(AnnouncementError::TooMany { .. })
        ));
    }

    #[test]
    fn server_descriptors_keep_the_newest_per_relay() {
        let text = format!(
            "router relay1 127.0.0.1 5000 0 0\n\
             published 2026-01-01 00:00:00\n\
             fingerprint AAAA AAAA AAAA AAAA AAAA AAAA AAAA AAAA AAAA AAAA\n\
             contact old\n\
             router-signature\n\
             router relay2 127.0.0.1 5001 0 0\n\
             published 2026-01-01 00:00:00\n\
             fingerprint bbbb bbbb bbbb bbbb bbbb bbbb bbbb bbbb bbbb bbbb\n\
             router relay1 127.0.0.1 5000 0 0\n\
             published 2026-01-02 00:00:00\n\
             fingerprint AAAA AAAA AAAA AAAA AAAA AAAA AAAA AAAA AAAA AAAA\n\
             contact me bento:{ONION}:7878\n\
             router broken 127.0.0.1 5002 0 0\n\
             fingerprint XYZ\n"
        );
        let relays = parse_server_descriptors(&text);
        assert_eq!(relays.len(), 2);
        assert_eq!(relays[0].nickname, "relay1");
        assert_eq!(relays[0].fingerprint, "A".repeat(40));
        assert_eq!(
            relays[0].contact.as_deref(),
            Some(format!("me bento:{ONION}:7878").as_str())
        );
        assert_eq!(relays[1].fingerprint, "B".repeat(40));
        assert_eq!(relays[1].contact, None);
    }

    #[test]
    fn status_flags_come_from_the_s_line() {
        let entry = "r exit0 qqqq rrrr 2026-01-01 00:00:00 127.0.0.1 5000 0\n\
                     s Exit Fast Running Valid\nw Bandwidth=1000\n";
        let flags = parse_status_flags(entry);
        assert_eq!(flags, ["Exit", "Fast", "Running", "Valid"]);
        assert!(parse_status_flags("r x").is_empty());
    }

    #[test]
    fn only_tors_that_keep_server_descriptors_can_list_boxes() {
        assert!(keeps_server_descriptors(true, Some("auto"), Some("0")));
        assert!(keeps_server_descriptors(false, Some("0"), Some("0")));
        assert!(keeps_server_descriptors(false, Some("auto"), Some("1")));
        assert!(!keeps_server_descriptors(false, Some("auto"), Some("0")));
        assert!(!keeps_server_descriptors(false, None, None));
    }
}
