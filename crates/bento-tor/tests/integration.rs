//! Integration tests against real tor processes (Debian's `tor` must be
//! installed). Everything listens on and talks to 127.0.0.0/8 only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bento_tor::{OnionKey, Testnet, TestnetConfig, TorControl, TorError, socks5_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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
    // a real listener in `testnet_end_to_end`).
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

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn echo_via(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    iso: Option<(&str, &str)>,
) -> Result<(), String> {
    echo_via_within(proxy, host, port, iso, Duration::from_secs(20)).await
}

async fn echo_via_within(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    iso: Option<(&str, &str)>,
    limit: Duration,
) -> Result<(), String> {
    let attempt = async {
        let mut s = socks5_connect(proxy, host, port, iso)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"hello bento")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 11];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf == b"hello bento" {
            Ok(())
        } else {
            Err("wrong echo".into())
        }
    };
    tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with(['Z', 'X']))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

fn test_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("bento-tor-testnet")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testnet_end_to_end() {
    let root = test_root();
    std::fs::create_dir_all(&root).unwrap();
    let mut config = TestnetConfig::new(root.join("net"));
    config.boxes = 1;
    config.key_cache = Some(root.join("keys"));
    let t0 = Instant::now();
    let mut steps = Vec::new();
    let net = Testnet::up(config, &mut |s: &str| {
        eprintln!("[{:5.1} s] {s}", t0.elapsed().as_secs_f64());
        steps.push(s.to_string());
    })
    .await
    .unwrap_or_else(|e| panic!("testnet up failed: {e}"));
    let up_secs = t0.elapsed().as_secs_f64();
    eprintln!("TIMING up: {up_secs:.1} s");
    assert!(steps.iter().any(|s| s.contains("generating keys")));

    let state = net.state().clone();
    let dir = state.dir.clone();
    let loaded = Testnet::load(&dir).unwrap();
    assert_eq!(loaded, state);
    assert_eq!(state.nodes.len(), 8);
    let rss: u64 = state.nodes.iter().map(|n| rss_kib(n.pid)).sum();
    eprintln!("MEMORY {} tors: {} MiB RSS", state.nodes.len(), rss / 1024);

    // Exit traffic: client -> 3 hops -> echo on 127.0.0.2.
    let echo = echo_server().await;
    let t = Instant::now();
    echo_via(
        net.socks_addr(),
        &echo.ip().to_string(),
        echo.port(),
        Some(("a", "b")),
    )
    .await
    .unwrap();
    eprintln!(
        "TIMING new stream via exit: {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );

    // Onion service on the box host relay.
    let host = state.box_hosts()[0].clone();
    assert!(host.socks_port.is_some());
    let mut control = TorControl::connect(&host.control_addr().to_string())
        .await
        .unwrap();
    assert_eq!(
        control.socks_listeners().await.unwrap(),
        vec![host.socks_addr().unwrap()]
    );
    let t_add = Instant::now();
    let svc = control
        .add_onion(&OnionKey::New, &[(80, echo)], &["DiscardPK"])
        .await
        .unwrap();
    control
        .wait_for_descriptor_upload(&svc.service_id, Duration::from_secs(30))
        .await
        .unwrap();
    let uploaded = t_add.elapsed().as_secs_f64();
    // The connection still answers commands with events flowing.
    assert_eq!(control.bootstrap_progress().await.unwrap(), 100);
    let onion = svc.onion_address();
    let mut last = String::new();
    let mut reached = None;
    while t_add.elapsed() < Duration::from_secs(60) {
        match echo_via(net.socks_addr(), &onion, 80, None).await {
            Ok(()) => {
                reached = Some(t_add.elapsed().as_secs_f64());
                break;
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reached = reached.unwrap_or_else(|| panic!("onion service not reachable: {last}"));
    eprintln!("TIMING ADD_ONION -> HS_DESC UPLOADED {uploaded:.2} s, -> reachable {reached:.2} s");
    // Also from the box host's own SocksPort.
    echo_via(host.socks_addr().unwrap(), &onion, 80, None)
        .await
        .unwrap();

    control.del_onion(&svc.service_id).await.unwrap();
    let t_del = Instant::now();
    // A stream to a deleted service does not fail fast: the client still
    // has the descriptor and tries the (now dead) introduction points.
    // Count a SOCKS error or no answer within 10 s as unreachable (reaching it took < 2 s).
    let mut unreachable = None;
    while t_del.elapsed() < Duration::from_secs(90) {
        let iso = format!("{:?}", t_del.elapsed());
        if let Err(e) = echo_via_within(
            net.socks_addr(),
            &onion,
            80,
            Some(("fresh", &iso)),
            Duration::from_secs(10),
        )
        .await
        {
            unreachable = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let why = unreachable.expect("onion service still reachable after DEL_ONION");
    eprintln!(
        "TIMING DEL_ONION -> unreachable {:.2} s ({why})",
        t_del.elapsed().as_secs_f64()
    );
    drop(control);

    // Down, as another process would: from the state file.
    let t = Instant::now();
    Testnet::down(&Testnet::load(&dir).unwrap()).unwrap();
    eprintln!("TIMING down: {:.2} s", t.elapsed().as_secs_f64());
    for n in &state.nodes {
        assert!(!alive(n.pid), "{} (pid {}) still alive", n.nickname, n.pid);
    }
    assert!(!dir.join("testnet.json").exists());
    net.shutdown().unwrap();
}

fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&raw).contains(&needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test]
async fn testnet_up_failure_stops_everything() {
    let root = test_root();
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join("net-fail");
    let attempt = || {
        let mut config = TestnetConfig::new(&dir);
        config.key_cache = Some(root.join("keys-fail"));
        // Far too short for a first consensus.
        config.timeout = Duration::from_secs(4);
        config
    };
    // The first attempt may spend its 4 s generating keys (a cold cache on
    // a loaded machine) and fail before any tor has written a log; the
    // second starts from cached keys, so its tors run (and log) for seconds
    // before the timeout.
    let _ = Testnet::up(attempt(), &mut |_| {}).await;
    let err = Testnet::up(attempt(), &mut |_| {}).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TorError::NodeNotReady { .. }), "{msg}");
    assert!(msg.contains("auth0") && msg.contains("notice.log"), "{msg}");
    assert!(msg.contains("[notice]"), "log tail missing: {msg}");
    let dir = std::fs::canonicalize(&dir).unwrap();
    assert!(processes_mentioning(&dir).is_empty());
    assert!(!dir.join("testnet.json").exists());
}

#[tokio::test]
async fn a_defended_onion_service_has_tors_proof_of_work_on() {
    let tor = start_plain_tor().await;
    let mut c = TorControl::connect(&tor.control).await.unwrap();
    // The tor the tests run against (Debian's, 0.4.9) has the PoW module.
    assert!(c.pow_supported().await.unwrap());
    let target: SocketAddr = "127.0.0.2:9".parse().unwrap();
    // tor refuses keywords it does not know (512), so an accepted command
    // with PoWDefensesEnabled=1 means the defense is on.
    let defended = c
        .add_onion_defended(&OnionKey::New, &[(80, target)], &["DiscardPK"])
        .await
        .unwrap();
    assert!(defended.pow_defense);
    let onions = c.getinfo("onions/current").await.unwrap();
    assert!(onions.contains(&defended.service_id), "{onions}");
    // The plain form stays undefended.
    let plain = c
        .add_onion(&OnionKey::New, &[(80, target)], &["DiscardPK"])
        .await
        .unwrap();
    assert!(!plain.pow_defense);
    // An existing key is republished defended with the same id.
    let kept = c
        .add_onion_defended(&OnionKey::New, &[(80, target)], &[])
        .await
        .unwrap();
    let key = kept.private_key.clone().unwrap();
    c.del_onion(&kept.service_id).await.unwrap();
    let again = c
        .add_onion_defended(&OnionKey::Existing(key), &[(80, target)], &[])
        .await
        .unwrap();
    assert_eq!(again.service_id, kept.service_id);
    assert!(again.pow_defense);
}

#[tokio::test]
async fn closed_resolves_when_tor_goes_away() {
    let mut tor = start_plain_tor().await;
    let c = TorControl::connect(&tor.control).await.unwrap();
    let closed = c.closed();
    let _ = Command::new("kill")
        .args(["-TERM", &tor.child.id().to_string()])
        .status();
    let _ = tor.child.wait();
    tokio::time::timeout(Duration::from_secs(30), closed)
        .await
        .expect("closed() did not resolve after tor exited");
}
