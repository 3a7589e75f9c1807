//! Bento over a real private Tor network (Debian's tor on 127.0.0.0/8):
//! boxes published as onion services, functions' Tor capabilities. One
//! network serves every test here; it is started once, by the CLI's own
//! `bento testnet up`, and its processes exit with this test process.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bento_client::{ClientError, Connection, Target};
use bento_protocol::ErrorCode;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{BENTO, TestBox, runtime};

/// The running network, as `bento testnet status --json` reports it.
pub(crate) struct Net {
    pub(crate) socks: String,
    pub(crate) boxes: Vec<String>,
    /// The network as an Arti configuration fragment (`--tor-network`).
    #[cfg_attr(not(feature = "embedded-tor"), allow(dead_code))]
    pub(crate) arti_config: std::path::PathBuf,
}

pub(crate) fn net() -> &'static Net {
    static NET: OnceLock<Net> = OnceLock::new();
    NET.get_or_init(|| {
        remove_networks_of_dead_runs();
        let dir = std::env::temp_dir().join(format!("bento-test-tor-{}", std::process::id()));
        let policy = dir.with_extension("policy.toml");
        // Room for the tests' functions, nothing more.
        std::fs::write(&policy, bento_policy::DEFAULT_POLICY_TOML).unwrap();
        let up = Command::new(BENTO)
            .args(["testnet", "up", "--boxes", "2", "--owner-pid"])
            .arg(std::process::id().to_string())
            .arg("--dir")
            .arg(&dir)
            .arg("--policy")
            .arg(&policy)
            .arg("--runtime")
            .arg(runtime())
            .output()
            .unwrap();
        assert!(
            up.status.success(),
            "bento testnet up failed:\n{}",
            String::from_utf8_lossy(&up.stderr)
        );
        let status = Command::new(BENTO)
            .args(["testnet", "status", "--json", "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        Net {
            socks: json["socks"].as_str().unwrap().to_owned(),
            boxes: json["boxes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["onion"].as_str().unwrap().to_owned())
                .collect(),
            arti_config: json["arti_config"].as_str().unwrap().into(),
        }
    })
}

/// Earlier runs' networks died with their test process; their files stay
/// in the temporary directory until removed here.
fn remove_networks_of_dead_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("bento-test-tor-") else {
            continue;
        };
        let pid = rest.split('.').next().unwrap_or_default();
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let path = entry.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
}

pub(crate) fn onion_box(index: usize) -> Target {
    let net = net();
    Target {
        server: net.boxes[index].clone(),
        socks: Some(net.socks.clone()),
        dialer: None,
    }
}

async fn connect(target: &Target) -> Connection {
    Connection::connect(target).await.unwrap()
}

async fn read_to_end(
    target: &Target,
    session: &bento_protocol::SessionToken,
) -> (Vec<u8>, Result<(), ClientError>) {
    let mut attachment = connect(target).await.attach(session, None).await.unwrap();
    let mut out = Vec::new();
    let result = loop {
        match attachment.next().await {
            Ok(Some(data)) => out.extend_from_slice(&data),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    attachment.close().await;
    (out, result)
}

/// Stores `source` (under `manifest`, the default one if `None`), runs
/// its `main` once and returns its whole output and how it ended.
async fn run_once(
    target: &Target,
    name: &str,
    source: &str,
    manifest: Option<&str>,
) -> (Vec<u8>, Result<(), ClientError>) {
    let mut conn = connect(target).await;
    let (_, token) = match manifest {
        Some(manifest) => conn.store_with_manifest(name, source, manifest).await,
        None => conn.store(name, source).await,
    }
    .unwrap();
    let session = conn.invoke(&token, "main", "[]").await.unwrap();
    read_to_end(target, &session).await
}

/// A function that publishes an onion service on port 80 and echoes (in
/// upper case) on every stream to it.
const ONION_ECHO: &str = r#"
def main():
    api.send(api.onion_service(80))
    while True:
        channel = api.accept()
        while True:
            data = channel.recv()
            if not data:
                break
            channel.send(data.upper())
        channel.close()
"#;
const ONION_MANIFEST: &str =
    "version = 1\ncapabilities = [\"onion_service\"]\n[limits]\nwall_ms = 240000\n";

/// Start ONION_ECHO on `target`; returns its session and onion address.
async fn start_onion_echo(target: &Target) -> (bento_protocol::SessionToken, String) {
    let mut conn = connect(target).await;
    let (_, token) = conn
        .store_with_manifest("echo.py", ONION_ECHO, ONION_MANIFEST)
        .await
        .unwrap();
    let session = conn.invoke(&token, "main", "[]").await.unwrap();
    let mut attachment = connect(target).await.attach(&session, None).await.unwrap();
    let address = attachment.next().await.unwrap().expect("the onion address");
    attachment.detach().await.unwrap();
    (session, String::from_utf8(address.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_through_an_onion_box_survives_detach_and_re_attach() {
    let target = onion_box(0);
    let mut conn = connect(&target).await;
    let (_, token) = conn
        .store(
            "steps.py",
            "def main():\n    api.send('first half;')\n    api.send(api.recv().upper())\n",
        )
        .await
        .unwrap();
    let session = conn.invoke(&token, "main", "[]").await.unwrap();
    let mut first = connect(&target).await.attach(&session, None).await.unwrap();
    assert_eq!(first.next().await.unwrap().unwrap(), "first half;");
    let offset = first.detach().await.unwrap();
    assert_eq!(offset, 11);

    let mut second = connect(&target).await.attach(&session, None).await.unwrap();
    second
        .input()
        .send(Bytes::from_static(b"second half"))
        .await
        .unwrap();
    let mut rest = Vec::new();
    while let Some(data) = second.next().await.unwrap() {
        rest.extend_from_slice(&data);
    }
    assert_eq!(
        rest, b"SECOND HALF",
        "nothing lost or repeated across the detach"
    );
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_reaches_a_service_function_on_another_box_over_tor() {
    let (service_session, address) = start_onion_echo(&onion_box(1)).await;
    let caller = onion_box(0);
    let mut conn = connect(&caller).await;
    let (_, token) = conn
        .store_with_manifest(
            "caller.py",
            "def main(onion):\n    s = api.tor_connect(onion, 80)\n    s.send(b'hello from another box')\n    api.send(s.recv_exactly(22))\n    s.close()\n",
            "version = 1\ncapabilities = [\"tor_connect\"]\n[limits]\nwall_ms = 120000\n",
        )
        .await
        .unwrap();
    let session = conn
        .invoke(&token, "main", &serde_json::json!([address]).to_string())
        .await
        .unwrap();
    let (out, result) = read_to_end(&caller, &session).await;
    result.unwrap();
    assert_eq!(out, b"HELLO FROM ANOTHER BOX");
    connect(&onion_box(1))
        .await
        .kill(&service_session)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_functions_onion_service_is_reachable_while_it_runs_and_gone_after_kill() {
    let target = onion_box(1);
    let (session, address) = start_onion_echo(&target).await;
    let socks: std::net::SocketAddr = net().socks.parse().unwrap();
    let host = address.trim_end_matches(".onion").to_owned() + ".onion";

    // An outside Tor client reaches it (the first lookup may race the
    // descriptor reaching the HSDirs: retry briefly).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match bento_tor::socks5_connect(socks, &host, 80, None).await {
            Ok(stream) => break stream,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the function's onion service is unreachable: {e}"),
        }
    };
    stream.write_all(b"ping").await.unwrap();
    let mut reply = [0u8; 4];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"PING");
    drop(stream);

    connect(&target).await.kill(&session).await.unwrap();
    let (_, result) = read_to_end(&target, &session).await;
    assert!(
        matches!(
            result,
            Err(ClientError::Remote {
                code: ErrorCode::Killed,
                ..
            })
        ),
        "{result:?}"
    );
    // Gone: new streams fail once tor has removed the service.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(30),
            bento_tor::socks5_connect(socks, &host, 80, Some(("fresh", "circuit"))),
        )
        .await;
        match attempt {
            Ok(Err(_)) | Err(_) => break,
            Ok(Ok(mut stream)) => {
                // A stream that opens must at least no longer reach the
                // function.
                let _ = stream.write_all(b"ping").await;
                let mut buf = [0u8; 4];
                if stream.read_exact(&mut buf).await.is_err() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the onion service still answers after its function was killed"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tor_streams_never_go_to_private_addresses_and_need_the_capability() {
    let target = onion_box(0);
    let probe = "def main():\n    for host in ['127.0.0.1', 'localhost', '10.0.0.1', '::1']:\n        try:\n            api.tor_connect(host, 9051)\n            api.send('reached %s\\n' % host)\n        except api.DestinationRefused:\n            api.send('refused %s\\n' % host)\n";
    let manifest = "version = 1\ncapabilities = [\"tor_connect\"]\n";
    let (out, result) = run_once(&target, "probe.py", probe, Some(manifest)).await;
    result.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "refused 127.0.0.1\nrefused localhost\nrefused 10.0.0.1\nrefused ::1\n"
    );
    let plain = "def main():\n    api.tor_connect('example.com', 80)\n";
    let (_, result) = run_once(&target, "plain.py", plain, None).await;
    let Err(ClientError::Remote { code, message }) = result else {
        panic!("expected a failure, got {result:?}")
    };
    assert_eq!(code, ErrorCode::FunctionException);
    assert!(
        message.contains("needs the `tor_connect` capability"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tor_connect_tor_never_answers_ends_at_its_timeout_and_the_next_user_is_served() {
    // A SocksPort that takes connections and never says a word: what a
    // function sees while tor keeps trying an onion service whose host has
    // gone, which the real network cannot be made to do on demand.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let socks = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let bx = TestBox::start(&["--tor-control", &control_port(), "--tor-socks", &socks]);
    let target = bx.target();
    let source = "def main():\n    for bad in (-1, float('inf')):\n        try:\n            api.tor_connect('example.com', 80, timeout=bad)\n        except ValueError as e:\n            api.send('invalid %s: %s\\n' % (bad, e))\n    try:\n        api.tor_connect('example.com', 80, timeout=0.5)\n    except TimeoutError as e:\n        api.send('timeout: %s\\n' % e)\n    api.send('still running')\n";
    let manifest = "version = 1\ncapabilities = [\"tor_connect\"]\n[limits]\nwall_ms = 60000\n";
    let (out, result) = run_once(&target, "patient.py", source, Some(manifest)).await;
    result.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "invalid -1: a timeout must be a finite, non-negative number of seconds\n\
         invalid inf: a timeout must be a finite, non-negative number of seconds\n\
         timeout: Tor did not connect to example.com:80 in time\n\
         still running"
    );
    let next = "def main():\n    api.send('next user')\n";
    let (out, result) = run_once(&target, "next.py", next, None).await;
    result.unwrap();
    assert_eq!(out, b"next user");
}

/// A ControlPort of the network (a relay's), for boxes started by tests.
pub(crate) fn control_port() -> String {
    net();
    let dir = std::env::temp_dir().join(format!("bento-test-tor-{}", std::process::id()));
    let status = Command::new(BENTO)
        .args(["testnet", "status", "--json", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let node = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["role"] == "exit")
        .expect("an exit relay");
    format!("127.0.0.1:{}", node["control_port"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boxs_onion_address_survives_a_restart_and_shows_in_status() {
    net();
    let control = control_port();
    let mut bx = crate::harness::TestBox::start(&["--tor-control", &control]);
    let status = bx.connect().await.status().await.unwrap();
    let first = status["onion"]
        .as_str()
        .expect("an onion address")
        .to_owned();
    assert!(first.ends_with(".onion:7878"), "{first}");
    let key = bx.data_dir().join("onion-service.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the key is private to the box");
    bx.kill9_and_restart();
    let status = bx.connect().await.status().await.unwrap();
    assert_eq!(status["onion"].as_str(), Some(first.as_str()));
    // And it is reachable through Tor under that address.
    let target = Target {
        server: first.clone(),
        socks: Some(net().socks.clone()),
        dialer: None,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Connection::connect(&target).await {
            Ok(mut conn) => {
                assert_eq!(
                    conn.status().await.unwrap()["onion"].as_str(),
                    Some(first.as_str())
                );
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the restarted box is unreachable at its old address: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_create_more_onion_services_than_granted() {
    let target = onion_box(0);
    let source = "def main():\n    api.send(api.onion_service(80) + '\\n')\n    try:\n        api.onion_service(81)\n    except api.ChannelLimit as e:\n        api.send('limit: %s' % e)\n";
    let manifest = "version = 1\ncapabilities = [\"onion_service\"]\n[limits]\nonion_services = 1\nwall_ms = 120000\n";
    let (out, result) = run_once(&target, "two.py", source, Some(manifest)).await;
    result.unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.lines().next().unwrap().ends_with(".onion"), "{out}");
    assert!(
        out.contains("limit: this function may create at most 1 onion services"),
        "{out}"
    );
}

/// Stored on a second box by the caller below: greets, then serves one
/// channel, then says it is done.
const REMOTE_GREETER: &str = r#"
def main(greeting):
    api.send(greeting + ":" + api.recv().decode())
    channel = api.accept()
    channel.send(channel.recv().upper())
    channel.close()
    api.send(";done")
"#;

/// Uses the second box through `api.bento_box`: store, invoke, attach,
/// detach, a service channel, re-attach to the end, and the errors.
const REMOTE_CALLER: &str = r#"
import json

def read(session, size):
    data = b""
    while len(data) < size:
        data += session.recv(timeout=60)
    return data

def main(address, source, manifest):
    box = api.bento_box(address)
    token = box.store(source, manifest, "greeter.py")
    session, service = box.invoke(token, "hi")
    first = box.attach(session)
    first.send(b"there")
    greeting = read(first, 8)
    first.detach()
    channel = box.connect(service)
    channel.send(b"shout")
    # wait() takes remote channels and sessions: ready once their box
    # answers, and once the session ends.
    woken = [api.wait([channel], timeout=60) == [channel]]
    reply = channel.recv(timeout=60)
    channel.close()
    last = box.attach(session)
    rest = b""
    while True:
        woken.append(api.wait([last], timeout=60) == [last])
        data = last.recv(timeout=60)
        if not data:
            break
        rest += data
    errors = []
    for call in (lambda: box.invoke("00" * 32), lambda: box.connect(service), lambda: box.store("def main(:", "", "bad.py")):
        try:
            call()
            errors.append("no error")
        except api.RemoteError as e:
            errors.append(e.code)
    try:
        api.bento_box("no-port.onion")
    except ValueError as e:
        errors.append("ValueError")
    api.send(json.dumps([greeting.decode(), reply.decode(), rest.decode(), all(woken), errors]))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_stores_invokes_and_talks_to_functions_on_another_box() {
    let caller = onion_box(0);
    let mut conn = connect(&caller).await;
    let (_, token) = conn
        .store_with_manifest(
            "caller.py",
            REMOTE_CALLER,
            "version = 1\ncapabilities = [\"tor_connect\"]\n[limits]\nwall_ms = 180000\n",
        )
        .await
        .unwrap();
    let args = serde_json::json!([
        net().boxes[1],
        REMOTE_GREETER,
        "version = 1\ncapabilities = [\"service\"]\n[limits]\nwall_ms = 120000\n"
    ]);
    let session = conn
        .invoke(&token, "main", &args.to_string())
        .await
        .unwrap();
    let (out, result) = read_to_end(&caller, &session).await;
    assert!(
        result.is_ok(),
        "{result:?}: {}",
        String::from_utf8_lossy(&out)
    );
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        report,
        serde_json::json!([
            "hi:there",
            "SHOUT",
            ";done",
            true,
            [
                "unknown_invoke_token",
                "unknown_service",
                "invalid_function",
                "ValueError"
            ]
        ])
    );
}

/// The tests that drive the private network hard (boxes of their own, load,
/// many circuits) take turns: on two cores, several at once make tor's
/// circuits time out.
pub(crate) fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A box of its own on the network (so a test may stop it), with `policy`
/// (TOML; the default policy if `None`), published as an onion service by
/// a relay's tor; returned with its onion address once a Bento client
/// reaches it through Tor.
pub(crate) async fn onion_test_box_async(policy: Option<&str>) -> (TestBox, String) {
    let control = control_port();
    let bx = match policy {
        Some(policy) => TestBox::with_policy(policy, &["--tor-control", &control]),
        None => TestBox::start(&["--tor-control", &control]),
    };
    let status = bx.connect().await.status().await.unwrap();
    let onion = status["onion"]
        .as_str()
        .expect("an onion address")
        .to_owned();
    let target = Target {
        server: onion.clone(),
        socks: Some(net().socks.clone()),
        dialer: None,
    };
    // A fresh descriptor is not always found at once, and on a busy network
    // a circuit sometimes hangs: each try is bounded.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let tried = tokio::time::timeout(Duration::from_secs(30), async {
            Connection::connect(&target).await?.status().await
        })
        .await;
        match tried {
            Ok(Ok(_)) => return (bx, onion),
            Ok(Err(e)) => eprintln!("{onion} not reachable yet: {e}"),
            Err(_) => eprintln!("{onion} not reachable yet: no answer in 30 s"),
        }
        assert!(Instant::now() < deadline, "{onion} never became reachable");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// [`onion_test_box_async`] for tests without a runtime of their own.
pub(crate) fn onion_test_box(policy: Option<&str>) -> (TestBox, String) {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(onion_test_box_async(policy))
}
