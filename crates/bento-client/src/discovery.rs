//! Finding Bento boxes: the boxes announced in the current Tor consensus,
//! each asked over Tor what it offers (`bento boxes`).
//!
//! Relays announce boxes in their ContactInfo (`bento:ONION.onion:PORT`,
//! `bento_tor::discovery`); the local tor's ControlPort gives the relays
//! of its consensus and their descriptors. Every announced onion is then
//! dialed through tor's SocksPort and asked for its status (public policy,
//! protocol version) and its attestation. A relay's claim is never trusted:
//! an onion that is not a box, or a box whose evidence is for another
//! onion, is shown as such, and one that does not answer in time as
//! unreachable. Nothing about the user is sent to any box: the probe is a
//! handshake, a status request and an attestation with a fresh nonce.

use std::sync::Arc;
use std::time::Duration;

use bento_policy::Capability;
use bento_tor::{AnnouncingRelay, TorControl, TorError};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::{ClientError, Connection, Requirement, Target};

/// Boxes probed at once: each probe builds a rendezvous circuit, and a
/// client that opens hundreds at once gets slow for everything else.
const MAX_PARALLEL_PROBES: usize = 16;

/// Why the announced boxes could not be listed (a box that does not
/// answer is not an error: it is listed as such).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The local tor's ControlPort cannot be used.
    #[error("cannot use tor's ControlPort {address}")]
    Control {
        /// The ControlPort's address.
        address: String,
        /// Why.
        #[source]
        source: TorError,
    },
    /// Tor did not answer what was asked of it (its relays' descriptors,
    /// its SocksPort).
    #[error(transparent)]
    Tor(#[from] TorError),
    /// Tor has no SocksPort to reach the boxes through, and none was given.
    #[error("tor has no SocksPort to reach the boxes through (torrc: SocksPort 9050, or --socks)")]
    NoSocksPort,
    /// A probe's task failed.
    #[error("a probe task failed")]
    Probe(#[source] tokio::task::JoinError),
}

/// Every relay of the consensus of the tor at `tor_control` that
/// announces a box, in the consensus's order, each with what its onion
/// turned out to be: probed through `socks` (default: tor's own
/// SocksPort), at most `timeout` each, its attestation checked against
/// `requirement`.
pub async fn list_boxes(
    tor_control: &str,
    socks: Option<&str>,
    requirement: &Requirement,
    timeout: Duration,
) -> Result<Vec<Listed>, DiscoveryError> {
    let mut control =
        TorControl::connect(tor_control)
            .await
            .map_err(|source| DiscoveryError::Control {
                address: tor_control.to_owned(),
                source,
            })?;
    let relays = control.announcing_relays().await?;
    let socks = match socks {
        Some(socks) => socks.to_owned(),
        None => control
            .socks_listeners()
            .await?
            .first()
            .map(ToString::to_string)
            .ok_or(DiscoveryError::NoSocksPort)?,
    };
    drop(control);

    let probes = Arc::new(Semaphore::new(MAX_PARALLEL_PROBES));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, relay) in relays.into_iter().enumerate() {
        let probes = probes.clone();
        let socks = socks.clone();
        let requirement = requirement.clone();
        tasks.spawn(async move {
            let _permit = probes.acquire_owned().await;
            (index, probe(relay, &socks, &requirement, timeout).await)
        });
    }
    let mut listed = Vec::new();
    while let Some(done) = tasks.join_next().await {
        listed.push(done.map_err(DiscoveryError::Probe)?);
    }
    listed.sort_by_key(|(index, _)| *index);
    Ok(listed.into_iter().map(|(_, l)| l).collect())
}

/// Which of the listed boxes to show.
#[derive(Debug, Clone, Default)]
pub struct BoxFilter {
    /// Only boxes beside relays with the Exit flag.
    pub exit: bool,
    /// Only boxes that offer all of these.
    pub capabilities: Vec<Capability>,
}

impl BoxFilter {
    /// Whether this filters at all: without one, every announcement is
    /// shown, whatever it turned out to be.
    pub fn filters(&self) -> bool {
        self.exit || !self.capabilities.is_empty()
    }

    /// Whether `listed` is shown: everything when nothing is filtered,
    /// else only answering boxes that match.
    pub fn shows(&self, listed: &Listed) -> bool {
        !self.filters()
            || (listed.verdict == Verdict::Box
                && (!self.exit || listed.relay.is_exit())
                && self.capabilities.iter().all(|c| listed.offers(*c)))
    }
}

/// What probing one announcement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answered as a Bento box and its evidence checks out.
    Box,
    /// The relay's `bento` field is not a valid announcement.
    Malformed,
    /// Tor could not reach the onion, or it did not answer in time.
    Unreachable,
    /// Something answered that does not speak the Bento protocol.
    NotABox,
    /// A Bento box refused our protocol version.
    Incompatible,
    /// It speaks Bento but its attestation fails (e.g. evidence for
    /// another onion: someone else's box relayed under this address).
    AttestationFailed,
}

impl Verdict {
    /// Its name in `bento boxes --json` (`state`).
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Box => "box",
            Verdict::Malformed => "malformed",
            Verdict::Unreachable => "unreachable",
            Verdict::NotABox => "not_a_box",
            Verdict::Incompatible => "incompatible",
            Verdict::AttestationFailed => "attestation_failed",
        }
    }
}

/// One announcement and what its onion turned out to be.
#[derive(Debug)]
pub struct Listed {
    /// The relay that announced it.
    pub relay: AnnouncingRelay,
    /// What it turned out to be.
    pub verdict: Verdict,
    /// Why, for everything but a box.
    pub detail: Option<String>,
    /// The box's status object (`bento status`).
    pub status: Option<Value>,
    /// The kind of TEE the box's attestation proves (`none` for none).
    pub attestation: Option<&'static str>,
}

impl Listed {
    /// Whether the box's policy offers `capability`.
    pub fn offers(&self, capability: Capability) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s["policy"]["capabilities"].as_array())
            .is_some_and(|caps| caps.iter().any(|c| c.as_str() == Some(capability.name())))
    }

    /// The object `bento boxes --json` lists.
    pub fn to_json(&self) -> Value {
        let status = self.status.as_ref();
        json!({
            "relay": {
                "nickname": self.relay.nickname,
                "fingerprint": self.relay.fingerprint,
                "flags": self.relay.flags,
                "exit": self.relay.is_exit(),
            },
            "announced": self.relay.announcement.as_ref().ok().map(|a| a.server()),
            "state": self.verdict.name(),
            "detail": self.detail,
            "software": status.map(|s| s["software"].clone()),
            "protocol_version": status.map(|s| s["protocol_version"].clone()),
            "attestation": self.attestation,
            "load": status.map(|s| s["load"].clone()),
            "capabilities": status.map(|s| s["policy"]["capabilities"].clone()),
            "policy": status.map(|s| s["policy"].clone()),
        })
    }

    /// The line `bento boxes` prints.
    pub fn to_line(&self) -> String {
        let relay = &self.relay;
        let exit = if relay.is_exit() { " [Exit]" } else { "" };
        let announced = match &relay.announcement {
            Ok(a) => a.server(),
            Err(_) => "-".into(),
        };
        let what = match (&self.status, &self.detail) {
            (Some(s), _) => {
                let caps: Vec<&str> = s["policy"]["capabilities"]
                    .as_array()
                    .map(|c| c.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                format!(
                    "box: {}, protocol {}, attestation {}, load {}, capabilities: {}",
                    s["software"].as_str().unwrap_or("?"),
                    s["protocol_version"],
                    self.attestation.unwrap_or("?"),
                    s["load"].as_str().unwrap_or("?"),
                    if caps.is_empty() {
                        "none".into()
                    } else {
                        caps.join(", ")
                    }
                )
            }
            (None, Some(detail)) => format!("{}: {detail}", self.verdict.name()),
            (None, None) => self.verdict.name().into(),
        };
        format!(
            "{} ({}){exit}  {announced}  {what}",
            relay.nickname,
            &relay.fingerprint[..relay.fingerprint.len().min(8)]
        )
    }
}

/// Dial one announced onion and find out what it is.
async fn probe(
    relay: AnnouncingRelay,
    socks: &str,
    requirement: &Requirement,
    timeout: Duration,
) -> Listed {
    let mut listed = Listed {
        verdict: Verdict::Malformed,
        detail: None,
        status: None,
        attestation: None,
        relay,
    };
    let announcement = match &listed.relay.announcement {
        Ok(a) => a.clone(),
        Err(e) => {
            listed.detail = Some(e.to_string());
            return listed;
        }
    };
    let target = Target {
        server: announcement.server(),
        socks: Some(socks.to_string()),
        dialer: None,
    };
    let asked = async {
        let mut conn = Connection::connect(&target)
            .await
            .map_err(|e| (Step::Hello, e))?;
        let status = conn.status().await.map_err(|e| (Step::Status, e))?;
        let verified = conn
            .attest(&target, requirement)
            .await
            .map_err(|e| (Step::Attest, e))?;
        Ok::<_, (Step, ClientError)>((status, verified.kind.name()))
    };
    match tokio::time::timeout(timeout, asked).await {
        Ok(Ok((status, kind))) => {
            listed.verdict = Verdict::Box;
            listed.status = Some(status);
            listed.attestation = Some(kind);
        }
        Ok(Err((step, e))) => {
            listed.verdict = classify(step, &e);
            listed.detail = Some(e.to_string());
        }
        Err(_) => {
            listed.verdict = Verdict::Unreachable;
            listed.detail = Some(format!("no answer in {timeout:?}"));
        }
    }
    listed
}

/// Where in the probe an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Hello,
    Status,
    Attest,
}

/// What an error at `step` says about the onion.
fn classify(step: Step, error: &ClientError) -> Verdict {
    match (step, error) {
        // Tor could not build the stream: the onion is not published, or
        // nothing listens behind it.
        (Step::Hello, ClientError::Socks(_) | ClientError::Io(_)) => Verdict::Unreachable,
        // A Bento box that speaks another version says so in an Error frame.
        (Step::Hello, ClientError::Remote { .. }) => Verdict::Incompatible,
        (Step::Attest, ClientError::Attestation(_)) => Verdict::AttestationFailed,
        // Anything else answered, but not as a box: a wrong frame, bytes
        // that are no frame, or a close after our Hello.
        _ => Verdict::NotABox,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bento_tor::Announcement;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What the SOCKS proxy's far end does once the stream is open.
    #[derive(Clone, Copy)]
    enum FarEnd {
        /// Reads and never answers: an onion that holds the stream open.
        Silent,
        /// Sends back what it gets: an onion that is not a box.
        Echo,
        /// Refuses the stream: tor found nothing behind the onion.
        Refused,
    }

    /// A SOCKS5 proxy on loopback standing in for tor's SocksPort.
    async fn socks_proxy(far_end: FarEnd) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut greet = [0u8; 3];
                    s.read_exact(&mut greet).await?;
                    s.write_all(&[5, 0]).await?;
                    let mut head = [0u8; 5];
                    s.read_exact(&mut head).await?;
                    let mut rest = vec![0u8; head[4] as usize + 2];
                    s.read_exact(&mut rest).await?;
                    let code = if matches!(far_end, FarEnd::Refused) {
                        4
                    } else {
                        0
                    };
                    s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = s.read(&mut buf).await?;
                        if n == 0 {
                            return Ok::<_, std::io::Error>(());
                        }
                        if matches!(far_end, FarEnd::Echo) {
                            s.write_all(&buf[..n]).await?;
                        }
                    }
                });
            }
        });
        addr
    }

    fn announced() -> AnnouncingRelay {
        let onion = format!("{}.onion", "b".repeat(56));
        AnnouncingRelay {
            nickname: "liar".into(),
            fingerprint: "A".repeat(40),
            flags: vec!["Exit".into()],
            announcement: Ok(Announcement::new(&onion, 7878).unwrap()),
        }
    }

    #[tokio::test]
    async fn an_onion_that_holds_the_stream_but_never_answers_is_cut_at_the_timeout() {
        let socks = socks_proxy(FarEnd::Silent).await;
        let timeout = Duration::from_millis(500);
        let listed = probe(announced(), &socks, &Requirement::default(), timeout).await;
        assert_eq!(listed.verdict, Verdict::Unreachable);
        assert_eq!(listed.detail.as_deref(), Some("no answer in 500ms"));
        assert!(listed.status.is_none());
    }

    #[tokio::test]
    async fn an_onion_that_echoes_is_not_a_box_and_one_tor_cannot_reach_is_unreachable() {
        let timeout = Duration::from_secs(30);
        let echo = socks_proxy(FarEnd::Echo).await;
        let listed = probe(announced(), &echo, &Requirement::default(), timeout).await;
        assert_eq!(listed.verdict, Verdict::NotABox, "{listed:?}");
        let refused = socks_proxy(FarEnd::Refused).await;
        let listed = probe(announced(), &refused, &Requirement::default(), timeout).await;
        assert_eq!(listed.verdict, Verdict::Unreachable, "{listed:?}");
    }

    #[test]
    fn a_reply_that_is_not_bento_means_not_a_box() {
        let unexpected = ClientError::Unexpected("Hello".into());
        assert_eq!(classify(Step::Hello, &unexpected), Verdict::NotABox);
        assert_eq!(
            classify(Step::Hello, &ClientError::Closed),
            Verdict::NotABox
        );
        let socks = ClientError::Socks("host unreachable".into());
        assert_eq!(classify(Step::Hello, &socks), Verdict::Unreachable);
        let refused = ClientError::Remote {
            code: bento_protocol::ErrorCode::UnsupportedVersion,
            message: "no".into(),
        };
        assert_eq!(classify(Step::Hello, &refused), Verdict::Incompatible);
    }
}
