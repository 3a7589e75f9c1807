//! `bento boxes`: the Bento boxes announced in the current Tor consensus,
//! each asked over Tor what it offers.
//!
//! Relays announce boxes in their ContactInfo (`bento:ONION.onion:PORT`,
//! `bento_tor::discovery`); the local tor's ControlPort gives the relays
//! of its consensus and their descriptors. Every announced onion is then
//! dialed through tor's SocksPort and asked for its status (public policy,
//! protocol version) and its attestation. A relay's claim is never trusted:
//! an onion that is not a box, or a box whose evidence is for another
//! onion, is shown as such, and one that does not answer in `--timeout` as
//! unreachable. Nothing about the user is sent to any box: the probe is a
//! handshake, a status request and an attestation with a fresh nonce.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bento_client::{ClientError, Connection, Requirement, Target, TeeKind};
use bento_policy::Capability;
use bento_tor::{AnnouncingRelay, TorControl};
use clap::Args;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::exit::EXIT_REQUEST;
use crate::{TargetArgs, terminal, units};

/// Boxes probed at once: each probe builds a rendezvous circuit, and a
/// client that opens hundreds at once gets slow for everything else.
const MAX_PARALLEL_PROBES: usize = 16;

/// Options of `bento boxes`.
#[derive(Debug, Clone, Args)]
pub struct BoxesArgs {
    /// The local tor's ControlPort (cookie authentication), which must
    /// keep relays' server descriptors: torrc `FetchUselessDescriptors 1`.
    #[arg(long, env = "BENTO_TOR_CONTROL", default_value = "127.0.0.1:9051")]
    pub tor_control: String,
    /// Only boxes that offer this capability (connect, http, storage, time,
    /// service, tor_connect, onion_service); repeat for boxes that offer
    /// all of them.
    #[arg(long = "capability", value_name = "NAME", value_parser = parse_capability)]
    pub capabilities: Vec<Capability>,
    /// Only boxes beside relays with the Exit flag.
    #[arg(long)]
    pub exit: bool,
    /// How long each box may take to answer (through Tor), e.g. 30s, 2m.
    #[arg(long, default_value = "60s", value_parser = units::parse_duration)]
    pub timeout: Duration,
    /// Machine-readable output: a JSON array, one object per announcement.
    #[arg(long)]
    pub json: bool,
}

fn parse_capability(name: &str) -> Result<Capability, String> {
    serde_json::from_value(Value::String(name.to_string())).map_err(|_| {
        format!(
            "unknown capability {name:?} (expected connect, http, storage, time, service, \
             tor_connect or onion_service)"
        )
    })
}

/// What probing one announcement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
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
    fn name(self) -> &'static str {
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
struct Listed {
    relay: AnnouncingRelay,
    verdict: Verdict,
    /// Why, for everything but a box.
    detail: Option<String>,
    /// The box's status object and attestation kind.
    status: Option<Value>,
    attestation: Option<&'static str>,
}

impl Listed {
    fn offers(&self, capability: Capability) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s["policy"]["capabilities"].as_array())
            .is_some_and(|caps| caps.iter().any(|c| c.as_str() == Some(capability.name())))
    }

    fn to_json(&self) -> Value {
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

    fn to_line(&self) -> String {
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

/// `bento boxes`.
pub async fn run(args: BoxesArgs, target: &TargetArgs) -> anyhow::Result<ExitCode> {
    let requirement = match target.attest.requirement() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(EXIT_REQUEST));
        }
    };
    let mut control = TorControl::connect(&args.tor_control)
        .await
        .with_context(|| format!("cannot use tor's ControlPort {}", args.tor_control))?;
    let relays = control.announcing_relays().await?;
    let socks = match &target.socks {
        Some(socks) => socks.clone(),
        None => control
            .socks_listeners()
            .await?
            .first()
            .map(ToString::to_string)
            .context("tor has no SocksPort to reach the boxes through (torrc: SocksPort 9050, or --socks)")?,
    };
    drop(control);

    let probes = Arc::new(Semaphore::new(MAX_PARALLEL_PROBES));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, relay) in relays.into_iter().enumerate() {
        let probes = probes.clone();
        let socks = socks.clone();
        let requirement = requirement.clone();
        let timeout = args.timeout;
        tasks.spawn(async move {
            let _permit = probes.acquire_owned().await;
            (index, probe(relay, &socks, &requirement, timeout).await)
        });
    }
    let mut listed = Vec::new();
    while let Some(done) = tasks.join_next().await {
        listed.push(done.context("a probe task failed")?);
    }
    listed.sort_by_key(|(index, _)| *index);
    let filtering = args.exit || !args.capabilities.is_empty();
    let shown: Vec<Listed> = listed
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| {
            !filtering
                || (l.verdict == Verdict::Box
                    && (!args.exit || l.relay.is_exit())
                    && args.capabilities.iter().all(|c| l.offers(*c)))
        })
        .collect();
    let unattested_boxes = shown
        .iter()
        .filter(|l| l.verdict == Verdict::Box && l.attestation == Some(TeeKind::None.name()))
        .count();

    if args.json {
        let out: Vec<Value> = shown.iter().map(Listed::to_json).collect();
        terminal::print(&serde_json::to_string_pretty(&out)?);
    } else {
        let boxes = shown.iter().filter(|l| l.verdict == Verdict::Box).count();
        for l in &shown {
            terminal::print(&l.to_line());
        }
        eprintln!(
            "{boxes} box(es) answering of {} announcement(s) shown{}",
            shown.len(),
            if filtering {
                " (filtered: only answering boxes that match)"
            } else {
                ""
            }
        );
    }
    if let Some(warning) = unattested_warning(
        unattested_boxes,
        &requirement,
        target.attest.allow_unattested,
    ) {
        eprintln!("{warning}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The one-line warning every client command prints about an unattested
/// box, here for the boxes listed that prove no TEE: `None` when there are
/// none, when the user stated a requirement (such boxes are then listed as
/// `attestation_failed`), or with `--allow-unattested`.
fn unattested_warning(
    unattested: usize,
    requirement: &Requirement,
    allow_unattested: bool,
) -> Option<String> {
    if unattested == 0 || allow_unattested || *requirement != Requirement::default() {
        return None;
    }
    Some(format!(
        "warning: {unattested} box(es) answering prove no TEE (attestation none): their operators \
         can read your functions, arguments, input and output (--require-tee to refuse them, \
         --allow-unattested to silence)"
    ))
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
    fn unattested_boxes_are_warned_about_unless_allowed_or_a_tee_is_required() {
        let none = Requirement::default();
        let warning = unattested_warning(2, &none, false).unwrap();
        assert!(warning.starts_with("warning: 2 box(es)"), "{warning}");
        assert!(warning.contains("--allow-unattested"), "{warning}");
        assert_eq!(unattested_warning(2, &none, true), None);
        assert_eq!(unattested_warning(0, &none, false), None);
        let tee = Requirement {
            tee: bento_client::TeeRequirement::AnyTee,
            measurement: None,
        };
        assert_eq!(unattested_warning(2, &tee, false), None);
    }

    #[test]
    fn capability_names_are_the_policy_names() {
        assert_eq!(parse_capability("http"), Ok(Capability::Http));
        assert_eq!(parse_capability("tor_connect"), Ok(Capability::TorConnect));
        assert!(parse_capability("htp").is_err());
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
