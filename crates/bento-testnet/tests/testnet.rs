//! Integration tests over a private Tor network on loopback (Debian's `tor`
//! and `tor-gencert` must be installed). Everything listens on and talks to
//! 127.0.0.0/8 only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bento_testnet::{Testnet, TestnetConfig};
use bento_tor::{OnionKey, TorControl, TorError, socks5_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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
