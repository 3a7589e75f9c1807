//! Integration tests against a real tor process (Debian's `tor` must be
//! installed). Everything listens on and talks to 127.0.0.0/8 only. The
//! tests over a whole private Tor network are in `bento-testnet`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bento_testnet::TestnetConfig;
use bento_tor::{OnionKey, TorControl, TorError};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain tor with DisableNetwork 1, stopped (SIGTERM by PID) on drop.
struct PlainTor {
    child: Child,
    control: String,
    socks: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for PlainTor {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tor_binary() -> PathBuf {
    TestnetConfig::new("/nonexistent").tor_binary
}

async fn start_plain_tor() -> PlainTor {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let (cport, sport) = (free_port(), free_port());
    let torrc = dir.path().join("torrc");
    std::fs::write(
        &torrc,
        format!(
            "DataDirectory {d}\nDisableNetwork 1\nControlPort 127.0.0.1:{cport}\n\
             CookieAuthentication 1\nSocksPort 127.0.0.1:{sport}\nLog notice file {d}/notice.log\n\
             GeoIPFile {e}\nGeoIPv6File {e}\n__OwningControllerProcess {pid}\n",
            d = data.display(),
            e = empty.display(),
            pid = std::process::id()
        ),
    )
    .unwrap();
    let child = Command::new(tor_binary())
        .arg("--defaults-torrc")
        .arg(&empty)
        .arg("-f")
        .arg(&torrc)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tor = PlainTor {
        child,
        control: format!("127.0.0.1:{cport}"),
        socks: format!("127.0.0.1:{sport}").parse().unwrap(),
        _dir: dir,
    };
    // Wait for the ControlPort.
    let start = Instant::now();
    while tokio::net::TcpStream::connect(&tor.control).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "tor did not open its ControlPort"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tor
}

#[tokio::test]
async fn control_port_commands() {
    let tor = start_plain_tor().await;
    let mut c = TorControl::connect(&tor.control).await.unwrap();
    let version = c.getinfo("version").await.unwrap();
    assert!(version.starts_with("0."), "{version}");
    // Multi-line (250+key= … .) form.
    let config = c.getinfo("config-text").await.unwrap();
    assert!(config.contains("DisableNetwork 1"), "{config}");
    assert!(config.lines().count() > 3, "{config}");
    // DisableNetwork 1 keeps tor from opening its SocksPort (checked against
    // a real listener in bento-testnet's `testnet_end_to_end`).
    let listeners = c.socks_listeners().await.unwrap();
    assert!(
        listeners.is_empty() || listeners == vec![tor.socks],
        "{listeners:?}"
    );
    let progress = c.bootstrap_progress().await.unwrap();
    assert!(progress <= 100);

    // Errors leave the connection usable.
    let e = c.getinfo("no/such/key").await.unwrap_err();
    assert!(matches!(e, TorError::Command { code: 552, .. }), "{e}");
    assert!(c.getinfo("bad key").await.is_err());

    let target: SocketAddr = "127.0.0.2:9".parse().unwrap();
    let kept = c
        .add_onion(&OnionKey::New, &[(80, target)], &[])
        .await
        .unwrap();
    assert_eq!(kept.service_id.len(), 56);
    let key = kept.private_key.clone().expect("tor returns the key");
    assert!(key.starts_with("ED25519-V3:"), "{key}");
    let onions = c.getinfo("onions/current").await.unwrap();
    assert!(onions.contains(&kept.service_id), "{onions}");
    c.del_onion(&kept.service_id).await.unwrap();

    // Same key again -> same id; no key returned.
    let again = c
        .add_onion(
            &OnionKey::Existing(key),
            &[(80, target), (81, target)],
            &["Detach"],
        )
        .await
        .unwrap();
    assert_eq!(again.service_id, kept.service_id);
    assert_eq!(again.private_key, None);
    c.del_onion(&again.onion_address()).await.unwrap();

    let discard = c
        .add_onion(&OnionKey::New, &[(80, target)], &["DiscardPK"])
        .await
        .unwrap();
    assert_eq!(discard.private_key, None);

    // Not Detach: gone when the connection closes.
    drop(c);
    let mut c2 = TorControl::connect(&tor.control).await.unwrap();
    let mut gone = false;
    for _ in 0..50 {
        let cur = c2.getinfo("onions/current").await.unwrap();
        let det = c2.getinfo("onions/detached").await.unwrap();
        if !cur.contains(&discard.service_id) && !det.contains(&discard.service_id) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "non-detached service outlived its connection");

    let e = c2.del_onion(&"a".repeat(56)).await.unwrap_err();
    assert!(matches!(e, TorError::Command { .. }), "{e}");
    assert!(c2.add_onion(&OnionKey::New, &[], &[]).await.is_err());
    assert!(
        c2.add_onion(&OnionKey::New, &[(80, target)], &["Bad Flag"])
            .await
            .is_err()
    );
    assert!(c2.getinfo("version").await.is_ok());
}

#[tokio::test]
async fn connect_errors_name_the_address() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let e = TorControl::connect(&addr).await.unwrap_err();
    assert!(e.to_string().contains(&addr), "{e}");
}
