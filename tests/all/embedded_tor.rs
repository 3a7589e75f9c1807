//! The embedded Tor client (`bento --tor embedded`, Arti) against the
//! private Tor network: no SocksPort, no local tor on the client's side.
//! Built only with the `embedded-tor` feature (`scripts/test-embedded-tor.sh`).

use std::process::Command;
use std::time::Instant;

use crate::harness::BENTO;
use crate::tor::net;

/// `bento` as a client of the private network through Arti alone: no
/// SOCKS proxy anywhere in its environment, Arti's state and cache in
/// `home`'s XDG directories.
fn embedded_bento(home: &std::path::Path, server: &str) -> Command {
    let mut cmd = Command::new(BENTO);
    cmd.env_remove("BENTO_SOCKS")
        .env_remove("BENTO_TOR")
        .env_remove("BENTO_LOG")
        .env("HOME", home)
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .args(["--tor", "embedded", "--tor-network"])
        .arg(&net().arti_config)
        .args(["--server", server]);
    cmd
}

#[test]
fn hello_world_runs_on_an_onion_box_through_the_embedded_client() {
    let net = net();
    let home = tempfile::tempdir().unwrap();
    let hello = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../functions/examples/hello.py"
    );
    let started = Instant::now();
    let out = embedded_bento(home.path(), &net.boxes[0])
        .args(["run", hello, "--allow-unattested", "--", "arti"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "bento --tor embedded run: {:.1} s\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "exit {:?}:\n{stderr}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello arti\n");
    // Progress was shown, and the box's address was not.
    assert!(stderr.contains("[tor] bootstrapping: "), "{stderr}");
    assert!(stderr.contains("[tor] bootstrapped in "), "{stderr}");
    let onion = net.boxes[0].split(':').next().unwrap();
    assert!(
        !stderr.contains(onion),
        "the onion address was printed:\n{stderr}"
    );
    // Arti kept its state and cache in the user's directories, in ones of
    // the private network's own.
    for kind in ["state", "cache"] {
        let networks = home.path().join(kind).join("bento/arti-networks");
        let entries: Vec<_> = std::fs::read_dir(&networks)
            .unwrap_or_else(|e| panic!("{}: {e}", networks.display()))
            .collect();
        assert_eq!(entries.len(), 1, "{}", networks.display());
    }
    assert!(!home.path().join("state/bento/arti").exists());

    // Another command, another box: the cached directory makes the second
    // bootstrap quicker.
    let started = Instant::now();
    let out = embedded_bento(home.path(), &net.boxes[1])
        .args(["status"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "bento --tor embedded status (warm cache): {:.1} s\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "exit {:?}:\n{stderr}", out.status);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(status["onion"].as_str(), Some(net.boxes[1].as_str()));
}

#[test]
fn flags_that_contradict_the_embedded_client_are_refused_before_tor_starts() {
    let home = tempfile::tempdir().unwrap();
    let out = embedded_bento(home.path(), "x.onion:7878")
        .args(["--socks", "127.0.0.1:9", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("drop --socks"));
    let bad = home.path().join("bad.toml");
    std::fs::write(&bad, "[tor_network]\nauthorities = 3\n").unwrap();
    let out = Command::new(BENTO)
        .env("HOME", home.path())
        .env_remove("BENTO_SOCKS")
        .args(["--tor", "embedded", "--tor-network"])
        .arg(&bad)
        .args(["--server", "x.onion:7878", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml"), "{stderr}");
}
