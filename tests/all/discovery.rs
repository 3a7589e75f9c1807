//! `bento boxes` on a private Tor network: relays announce boxes in their
//! ContactInfo, and the listing asks every announced onion over Tor what it
//! is. One network serves every test here (started once, by
//! `bento testnet up --announce`): three relays announce real boxes (one
//! beside an exit; one box grants `http`), one relay lies (its onion is a
//! plain TCP echo), one announces a malformed entry and one an onion that
//! nobody publishes.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bento_client::{Connection, Target};
use bento_tor::{OnionKey, TorControl};
use serde_json::Value;

use crate::harness::{BENTO, runtime};

/// An onion address in the right form that no service publishes.
const NOBODYS_ONION: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaad.onion:7878";

struct DiscoveryNet {
    /// The client tor's ControlPort, `127.0.0.1:PORT`.
    control: String,
    /// The client tor's SocksPort.
    socks: String,
    /// The boxes' onions (`x.onion:7878`) by the nickname of their relay.
    boxes: Vec<(String, String)>,
    /// The lying relay's onion (an echo server, not a box).
    lie: String,
}

fn net() -> &'static DiscoveryNet {
    static NET: OnceLock<DiscoveryNet> = OnceLock::new();
    NET.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("bento-test-tor-{}.discovery", std::process::id()));
        let http_policy = dir.with_extension("discovery-http-policy.toml");
        let plain_policy = dir.with_extension("discovery-policy.toml");
        let plain = bento_policy::DEFAULT_POLICY_TOML;
        let with_http = plain.replace(
            "capabilities = [\"storage\"",
            "capabilities = [\"http\", \"storage\"",
        );
        assert_ne!(
            with_http, plain,
            "the default policy's capabilities line moved"
        );
        std::fs::write(&http_policy, with_http).unwrap();
        std::fs::write(&plain_policy, plain).unwrap();
        let up = Command::new(BENTO)
            .args(["testnet", "up", "--boxes", "3", "--announce", "--owner-pid"])
            .arg(std::process::id().to_string())
            .arg("--dir")
            .arg(&dir)
            .arg("--policy")
            .arg(&http_policy)
            .arg("--policy")
            .arg(&plain_policy)
            .arg("--runtime")
            .arg(runtime())
            .output()
            .unwrap();
        assert!(
            up.status.success(),
            "bento testnet up --announce failed:\n{}",
            String::from_utf8_lossy(&up.stderr)
        );
        let state = bento_testnet::Testnet::load(&dir).unwrap();
        let client = state
            .nodes
            .iter()
            .find(|n| n.role == bento_testnet::NodeRole::Client)
            .unwrap();
        let boxes: Vec<(String, String)> = state
            .box_hosts()
            .iter()
            .zip(&state.boxes)
            .map(|(host, entry)| (host.nickname.clone(), entry.onion.clone()))
            .collect();
        let lie = liars(&state);
        let net = DiscoveryNet {
            control: client.control_addr().to_string(),
            socks: client.socks_addr().unwrap().to_string(),
            boxes,
            lie,
        };
        wait_until_listed(&net);
        net
    })
}

/// Starts the echo onion on auth0 and makes auth1 announce it, auth2 a
/// malformed entry and exit1 an onion nobody publishes. The echo server
/// and the onion live as long as this test process (a thread of its own).
fn liars(state: &bento_testnet::TestnetState) -> String {
    let node = |name: &str| state.node(name).unwrap().clone();
    let (auth0, auth1, auth2, exit1) = (node("auth0"), node("auth1"), node("auth2"), node("exit1"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let target = echo.local_addr().unwrap();
            let mut control = TorControl::connect(&auth0.control_addr().to_string())
                .await
                .unwrap();
            let service = control
                .add_onion(&OnionKey::New, &[(80, target)], &["DiscardPK"])
                .await
                .unwrap();
            control
                .wait_for_descriptor_upload(&service.service_id, Duration::from_secs(120))
                .await
                .unwrap();
            let lie = format!("{}:80", service.onion_address());
            auth1
                .set_contact_info(&format!("auth1@test.invalid ciissversion:2 bento:{lie}"))
                .await
                .unwrap();
            auth2
                .set_contact_info("bento:not-a-box.onion:80")
                .await
                .unwrap();
            exit1
                .set_contact_info(&format!("bento:{NOBODYS_ONION}"))
                .await
                .unwrap();
            tx.send(lie).unwrap();
            // Echo whatever comes, for as long as the tests run; `control`
            // stays open so the onion stays published.
            loop {
                let Ok((mut stream, _)) = echo.accept().await else {
                    break;
                };
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
            drop(control);
        });
    });
    rx.recv_timeout(Duration::from_secs(180)).unwrap()
}

/// `bento boxes ARGS --json` against the network's client tor.
fn boxes(args: &[&str]) -> Vec<Value> {
    let net = net();
    boxes_via(&net.control, args)
}

fn boxes_via(control: &str, args: &[&str]) -> Vec<Value> {
    let out = Command::new(BENTO)
        .args([
            "boxes",
            "--json",
            "--timeout",
            "90s",
            "--tor-control",
            control,
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bento boxes failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The relays' new descriptors reach the client with a later consensus:
/// wait (bounded) until all six announcements are listed.
fn wait_until_listed(net: &DiscoveryNet) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let listed = boxes_via(&net.control, &[]);
        if listed.len() == net.boxes.len() + 3 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every announcement reached the client: {listed:#?}"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

fn by_relay<'a>(listed: &'a [Value], nickname: &str) -> &'a Value {
    listed
        .iter()
        .find(|entry| entry["relay"]["nickname"] == nickname)
        .unwrap_or_else(|| panic!("{nickname} not listed: {listed:#?}"))
}

#[test]
fn every_announced_box_is_listed_with_what_it_offers() {
    let net = net();
    let listed = boxes(&[]);
    for (relay, onion) in &net.boxes {
        let entry = by_relay(&listed, relay);
        assert_eq!(entry["state"], "box", "{entry:#}");
        assert_eq!(entry["announced"], onion.as_str());
        assert_eq!(
            entry["protocol_version"],
            u64::from(bento_protocol::PROTOCOL_VERSION)
        );
        assert_eq!(entry["attestation"], "none");
        assert!(entry["software"].as_str().unwrap().starts_with("bento "));
        assert!(entry["policy"]["instance"]["memory_mib"].is_u64());
    }
    let http: Vec<bool> = net
        .boxes
        .iter()
        .map(|(relay, _)| {
            by_relay(&listed, relay)["capabilities"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "http")
        })
        .collect();
    assert_eq!(http, [true, false, false], "only box0's policy grants http");
    assert_eq!(by_relay(&listed, "exit0")["relay"]["exit"], true);
    assert_eq!(by_relay(&listed, "middle0")["relay"]["exit"], false);
}

#[test]
fn a_relay_announcing_an_onion_that_is_not_a_box_is_shown_as_such_and_listing_goes_on() {
    let net = net();
    let listed = boxes(&[]);
    let lie = by_relay(&listed, "auth1");
    assert_eq!(lie["state"], "not_a_box", "{lie:#}");
    assert_eq!(lie["announced"], net.lie.as_str());
    assert!(lie["capabilities"].is_null());
    let malformed = by_relay(&listed, "auth2");
    assert_eq!(malformed["state"], "malformed", "{malformed:#}");
    assert!(
        malformed["detail"]
            .as_str()
            .unwrap()
            .contains("not-a-box.onion"),
        "{malformed:#}"
    );
    let nobody = by_relay(&listed, "exit1");
    assert_eq!(nobody["state"], "unreachable", "{nobody:#}");
    assert_eq!(nobody["announced"], NOBODYS_ONION);

    // The probes of the liars cost the real boxes nothing: the next user
    // is served.
    let (_, onion) = &net.boxes[1];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let target = Target {
            server: onion.clone(),
            socks: Some(net.socks.clone()),
            dialer: None,
        };
        Connection::connect(&target).await.unwrap().status().await
    });
    assert_eq!(status.unwrap()["onion"], onion.as_str());
}

#[test]
fn filters_keep_only_answering_boxes_that_match() {
    let net = net();
    let nicknames = |listed: Vec<Value>| -> Vec<String> {
        let mut names: Vec<String> = listed
            .iter()
            .map(|e| e["relay"]["nickname"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    // exit1 has the Exit flag too, but announces nothing that answers.
    assert_eq!(nicknames(boxes(&["--exit"])), ["exit0"]);
    let http_relay = &net.boxes[0].0;
    assert_eq!(
        nicknames(boxes(&["--capability", "http"])),
        std::slice::from_ref(http_relay)
    );
    assert_eq!(
        nicknames(boxes(&["--capability", "tor_connect"])).len(),
        3,
        "every real box offers tor_connect; the liars none"
    );
    assert!(boxes(&["--capability", "http", "--exit"]).is_empty());
    assert!(boxes(&["--capability", "connect"]).is_empty());
}

#[test]
fn an_unknown_capability_is_refused_as_a_bad_request() {
    let out = Command::new(BENTO)
        .args([
            "boxes",
            "--capability",
            "htp",
            "--tor-control",
            "127.0.0.1:9",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown capability"));
}

#[test]
fn the_text_listing_names_each_verdict() {
    let net = net();
    let out = Command::new(BENTO)
        .args(["boxes", "--timeout", "90s", "--tor-control", &net.control])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.contains("  box: bento ")).count(),
        3,
        "{text}"
    );
    assert!(text.contains("not_a_box"), "{text}");
    assert!(text.contains("malformed"), "{text}");
    assert!(text.contains("unreachable"), "{text}");
    assert!(text.contains("[Exit]"), "{text}");
}

#[test]
fn a_tee_requirement_shows_boxes_without_one_as_failing_it() {
    let net = net();
    let listed = boxes(&["--require-tee"]);
    for (relay, _) in &net.boxes {
        let entry = by_relay(&listed, relay);
        assert_eq!(entry["state"], "attestation_failed", "{entry:#}");
        assert!(entry["capabilities"].is_null(), "{entry:#}");
    }
    assert_eq!(by_relay(&listed, "auth1")["state"], "not_a_box");
}
