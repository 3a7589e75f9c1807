//! Capabilities and the policy: every attack a hostile function might try
//! against the operator (reaching loopback, the LAN, the box itself,
//! exceeding quotas and limits), each refused with a clear error, and each
//! followed by a fresh hello-world to show the box still serves the next
//! user. All traffic stays on 127.0.0.1: the "allowed" destinations are
//! local servers that the test policy accepts explicitly.

use std::time::{Duration, Instant};

use bento_protocol::ErrorCode;
use bytes::Bytes;

use crate::harness::{TestBox, code, message};
use crate::local_servers::LocalServer;

/// A policy granting every non-Tor capability, with `destinations` as its
/// rules and generous ceilings.
pub(crate) fn policy(destinations: &[String]) -> String {
    let rules: Vec<String> = destinations.iter().map(|r| format!("{r:?}")).collect();
    format!(
        r#"version = 1
capabilities = ["connect", "http", "storage", "time", "service"]
destinations = [{}]
[instance]
memory_mib = 128
cpu_ms = 10000
wall_ms = 60000
output_buffer_kib = 4096
storage_kib = 1024
bandwidth_kib_per_s = 100000
channels = 8
[box]
max_instances = 64
max_buffered_mib = 512
max_upload_kib = 1024
max_stored_mib = 64
max_storage_mib = 64
bandwidth_kib_per_s = 1000000
"#,
        rules.join(", ")
    )
}

pub(crate) fn manifest(capabilities: &[&str], destinations: &[String], limits: &str) -> String {
    let caps: Vec<String> = capabilities.iter().map(|c| format!("{c:?}")).collect();
    let rules: Vec<String> = destinations.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "version = 1\ncapabilities = [{}]\ndestinations = [{}]\n[limits]\n{limits}\n",
        caps.join(", "),
        rules.join(", ")
    )
}

fn text(output: &[u8]) -> String {
    String::from_utf8_lossy(output).into_owned()
}

/// Tries each destination and reports, one line each, "ok" or the
/// exception's class name.
const PROBE: &str = r#"
def main(targets):
    for host, port in targets:
        try:
            s = api.connect(host, port)
            s.send(b"ping")
            api.send("ok %s:%d %r\n" % (host, port, s.recv(4)))
            s.close()
        except Exception as e:
            api.send("%s %s:%d %s\n" % (type(e).__name__, host, port, e))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_without_a_grant_cannot_reach_anything_or_use_any_capability() {
    let bx = TestBox::start(&[]);
    let source = r#"
def main():
    for name in ["connect", "http_get", "http_request", "storage", "sleep", "time", "accept"]:
        try:
            getattr(api, name)
            api.send("has %s\n" % name)
        except AttributeError as e:
            api.send("no %s: %s\n" % (name, e))
"#;
    let (output, result) = bx.run(source, "[]").await;
    result.unwrap();
    let output = text(&output);
    assert!(!output.contains("has "), "{output}");
    assert!(
        output.contains("no connect: api.connect is not available to this function (it needs the `connect` capability)"),
        "{output}"
    );
    assert!(output.contains("no storage:"), "{output}");
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_granted_one_port_reaches_exactly_that_port_and_nothing_else_names_included() {
    let allowed = LocalServer::echo();
    let forbidden = LocalServer::echo();
    let rule = format!("accept 127.0.0.1:{}", allowed.port);
    let bx = TestBox::with_policy(&policy(std::slice::from_ref(&rule)), &[]);
    let box_port: u16 = bx.addr.rsplit(':').next().unwrap().parse().unwrap();
    let targets = serde_json::json!([
        ["127.0.0.1", allowed.port],
        ["localhost", allowed.port],
        ["127.0.0.1", forbidden.port],
        ["localhost", forbidden.port],
        ["127.0.0.1", box_port],
        ["::1", allowed.port],
        ["10.0.0.1", 80],
        ["169.254.169.254", 80],
        ["127.0.0.1", 9051],
    ]);
    let (output, result) = bx
        .run_with_manifest(
            PROBE,
            &manifest(&["connect"], &[rule], ""),
            &serde_json::json!([targets]).to_string(),
        )
        .await;
    result.unwrap();
    let output = text(&output);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 9, "{output}");
    assert!(lines[0].starts_with("ok 127.0.0.1:"), "{output}");
    assert!(
        lines[1].starts_with("ok localhost:"),
        "a name that resolves to the accepted address is allowed: {output}"
    );
    for line in &lines[2..] {
        assert!(line.starts_with("DestinationRefused"), "{line}\n{output}");
    }
    assert!(
        lines[3].contains("the name was not looked up"),
        "no lookup for a port no rule accepts: {}",
        lines[3]
    );
    assert_eq!(
        forbidden.accepted(),
        0,
        "a refused destination is never contacted"
    );
    assert_eq!(allowed.accepted(), 2);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_rules_never_open_loopback_private_link_local_or_the_box_itself() {
    let server = LocalServer::echo();
    let everything = vec!["accept *:*".to_string()];
    let bx = TestBox::with_policy(&policy(&everything), &[]);
    let box_port: u16 = bx.addr.rsplit(':').next().unwrap().parse().unwrap();
    let targets = serde_json::json!([
        ["127.0.0.1", server.port],
        ["localhost", server.port],
        ["127.0.0.1", box_port],
        ["::1", server.port],
        ["10.0.0.1", 80],
        ["192.168.1.1", 80],
        ["169.254.169.254", 80],
        ["::ffff:127.0.0.1", server.port],
    ]);
    let (output, result) = bx
        .run_with_manifest(
            PROBE,
            &manifest(&["connect"], &everything, ""),
            &serde_json::json!([targets]).to_string(),
        )
        .await;
    result.unwrap();
    let output = text(&output);
    assert_eq!(output.lines().count(), 8, "{output}");
    for line in output.lines() {
        assert!(line.starts_with("DestinationRefused"), "{line}\n{output}");
    }
    assert_eq!(server.accepted(), 0);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reaches_an_allowed_server_and_a_redirect_to_loopback_is_refused() {
    let forbidden = LocalServer::http("200 OK", String::new(), b"secret".to_vec());
    let redirecting = LocalServer::redirect(format!("http://127.0.0.1:{}/admin", forbidden.port));
    let page = LocalServer::http(
        "200 OK",
        "Content-Type: text/plain\r\n".into(),
        b"hello from the origin".to_vec(),
    );
    let rules = vec![
        format!("accept 127.0.0.1:{}", page.port),
        format!("accept 127.0.0.1:{}", redirecting.port),
    ];
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    let source = r#"
def main(page, redirecting):
    r = api.http_get(page)
    api.send("%d %s %s\n" % (r.status, r.headers["content-type"], r.text))
    try:
        api.http_get(redirecting)
        api.send("followed the redirect\n")
    except api.DestinationRefused as e:
        api.send("refused: %s\n" % e)
"#;
    let args = serde_json::json!([
        format!("http://127.0.0.1:{}/", page.port),
        format!("http://127.0.0.1:{}/", redirecting.port),
    ]);
    let (output, result) = bx
        .run_with_manifest(source, &manifest(&["http"], &rules, ""), &args.to_string())
        .await;
    result.unwrap();
    let output = text(&output);
    assert!(
        output.starts_with("200 text/plain hello from the origin\n"),
        "{output}"
    );
    assert!(
        output.contains("refused: connection to 127.0.0.1:"),
        "{output}"
    );
    assert_eq!(redirecting.accepted(), 1);
    assert_eq!(
        forbidden.accepted(),
        0,
        "the redirect target was never contacted"
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_asking_for_more_than_the_policy_is_refused_at_store_with_every_reason() {
    let bx = TestBox::start(&[]);
    let greedy = "version = 1\ncapabilities = [\"connect\", \"http\"]\ndestinations = [\"accept 10.0.0.1:80\"]\n[limits]\nmemory_mib = 512\nstorage_kib = 999999\n";
    let err = bx
        .try_store_with_manifest("def main():\n    pass\n", greedy)
        .await
        .unwrap_err();
    let result = Err(err);
    assert_eq!(code(&result), ErrorCode::ManifestRejected);
    let reasons = message(&result);
    for expected in [
        "asks for 512 MiB memory per instance; this box allows 128 MiB",
        "asks for 999999 KiB storage per instance; this box allows 1024 KiB",
        "asks for the `connect` capability; this box does not grant it",
        "asks for the `http` capability; this box does not grant it",
        "asks to reach `accept 10.0.0.1:80`",
    ] {
        assert!(
            reasons.contains(expected),
            "missing {expected:?} in:\n{reasons}"
        );
    }
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_boxs_own_port_cannot_even_be_asked_for_under_the_default_policy() {
    let bx = TestBox::start(&[]);
    let box_port = bx.addr.rsplit(':').next().unwrap().to_string();
    let wants_box = format!(
        "version = 1\ncapabilities = [\"connect\"]\ndestinations = [\"accept 127.0.0.1:{box_port}\"]\n"
    );
    let result = bx
        .try_store_with_manifest("def main():\n    pass\n", &wants_box)
        .await
        .map(|_| ());
    assert_eq!(code(&result), ErrorCode::ManifestRejected);
    assert!(
        message(&result).contains(&format!("this box refuses 127.0.0.1:{box_port}")),
        "{}",
        message(&result)
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_the_storage_quota_raises_quota_exceeded_and_keeps_the_old_data() {
    let bx = TestBox::with_policy(&policy(&[]), &[]);
    let source = r#"
def main():
    api.storage.put("a", b"x" * 1000)
    try:
        api.storage.put("b", b"y" * 2000)
        api.send("stored beyond the quota\n")
    except api.QuotaExceeded as e:
        api.send("quota: %s\n" % e)
    api.send("%d %r %r\n" % (len(api.storage.get("a")), api.storage.get("b"), api.storage.usage()))
"#;
    let (output, result) = bx
        .run_with_manifest(
            source,
            &manifest(&["storage"], &[], "storage_kib = 2"),
            "[]",
        )
        .await;
    result.unwrap();
    let output = text(&output);
    assert!(
        output.starts_with("quota: storage quota exceeded"),
        "{output}"
    );
    assert!(output.ends_with("1000 None (1065, 2048)\n"), "{output}");
    bx.assert_serves_hello().await;
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_is_not_plaintext_on_disk_and_is_gone_when_the_instance_ends() {
    let bx = TestBox::with_policy(&policy(&[]), &[]);
    let source = r#"
def main():
    api.storage.put("diary-key-NEEDLE", b"PLAINTEXT-NEEDLE " * 100)
    api.send("stored")
    api.recv()
    api.send(api.storage.get("diary-key-NEEDLE")[:17])
"#;
    let token = bx
        .try_store_with_manifest(source, &manifest(&["storage"], &[], "storage_kib = 64"))
        .await
        .unwrap();
    let session = bx.invoke(&token, "[]").await;
    let mut attachment = bx.connect().await.attach(&session, None).await.unwrap();
    assert_eq!(attachment.next().await.unwrap().unwrap(), "stored");
    let storage_root = bx.data_dir().join("instance-storage");
    let files = files_under(&storage_root);
    assert!(
        !files.is_empty(),
        "the instance's storage is on disk while it runs"
    );
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let name = file.display().to_string();
        assert!(
            !name.contains("NEEDLE"),
            "a file name reveals the key: {name}"
        );
        assert!(
            !bytes.windows(6).any(|w| w == b"NEEDLE"),
            "plaintext on disk in {name}"
        );
    }
    attachment
        .input()
        .send(Bytes::from_static(b"go"))
        .await
        .unwrap();
    let mut rest = Vec::new();
    while let Some(data) = attachment.next().await.unwrap() {
        rest.extend_from_slice(&data);
    }
    assert_eq!(rest, b"PLAINTEXT-NEEDLE ");
    attachment.close().await;
    // The worker deletes the directory as the instance ends, just before
    // the box reports the end.
    assert!(
        files_under(&storage_root).is_empty(),
        "storage survives its instance: {:?}",
        files_under(&storage_root)
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_more_connections_than_granted_raises_channel_limit() {
    let server = LocalServer::echo();
    let rules = vec![format!("accept 127.0.0.1:{}", server.port)];
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    let source = r#"
def main(port):
    held = [api.connect("127.0.0.1", port) for _ in range(2)]
    try:
        api.connect("127.0.0.1", port)
        api.send("a third connection\n")
    except api.ChannelLimit as e:
        api.send("limit: %s\n" % e)
    held.pop().close()
    api.connect("127.0.0.1", port)
    api.send("a slot was freed\n")
"#;
    let (output, result) = bx
        .run_with_manifest(
            source,
            &manifest(&["connect"], &rules, "channels = 2"),
            &format!("[{}]", server.port),
        )
        .await;
    result.unwrap();
    let output = text(&output);
    assert_eq!(
        output,
        "limit: this function may have at most 2 channels and connections open at once\na slot was freed\n"
    );
    assert_eq!(server.accepted(), 3);
    bx.assert_serves_hello().await;
}

/// The Dropbox pattern: the invoker drops data on the primary channel;
/// holders of the service token pick it up.
const DROPBOX: &str = r#"
def main(pickups):
    data = api.recv()
    api.send("holding %d bytes" % len(data))
    for _ in range(pickups):
        channel = api.accept()
        channel.send(data)
        channel.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropbox_hands_its_data_to_a_second_client_holding_the_service_token() {
    let bx = TestBox::start(&[]);
    let token = bx
        .try_store_with_manifest(DROPBOX, "version = 1\ncapabilities = [\"service\"]\n")
        .await
        .unwrap();
    let (session, service) = bx
        .connect()
        .await
        .invoke_service(&token, "main", "[1]")
        .await
        .unwrap();
    let service = service.expect("a service function gets a service token");
    let mut owner = bx.connect().await.attach(&session, None).await.unwrap();
    let file: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    owner.input().send(Bytes::from(file.clone())).await.unwrap();
    assert_eq!(owner.next().await.unwrap().unwrap(), "holding 300000 bytes");

    let mut pickup = bx
        .connect()
        .await
        .connect_service(&service)
        .await
        .unwrap_or_else(|e| panic!("pick-up refused: {e:?}"));
    assert_eq!(pickup.read_to_end().await.unwrap(), file);
    assert!(
        owner.next().await.unwrap().is_none(),
        "the dropbox ends after its pick-up"
    );
    owner.close().await;

    let gone = bx
        .connect()
        .await
        .connect_service(&service)
        .await
        .unwrap_err();
    assert!(
        matches!(
            gone,
            bento_client::ClientError::Remote {
                code: ErrorCode::UnknownService,
                ..
            }
        ),
        "{gone:?}"
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_more_service_channels_than_granted_is_refused_with_channel_limit() {
    let bx = TestBox::start(&[]);
    let source = r#"
def main():
    first = api.accept()
    api.send("accepted one")
    first.send(first.recv())
    api.recv()
"#;
    let token = bx
        .try_store_with_manifest(
            source,
            "version = 1\ncapabilities = [\"service\"]\n[limits]\nchannels = 1\n",
        )
        .await
        .unwrap();
    let (session, service) = bx
        .connect()
        .await
        .invoke_service(&token, "main", "[]")
        .await
        .unwrap();
    let service = service.unwrap();
    let mut owner = bx.connect().await.attach(&session, None).await.unwrap();
    let mut first = bx.connect().await.connect_service(&service).await.unwrap();
    assert_eq!(owner.next().await.unwrap().unwrap(), "accepted one");
    let second = bx
        .connect()
        .await
        .connect_service(&service)
        .await
        .unwrap_err();
    assert!(
        matches!(
            second,
            bento_client::ClientError::Remote {
                code: ErrorCode::ChannelLimit,
                ..
            }
        ),
        "{second:?}"
    );
    // The first channel still works.
    first.send(b"still here").await.unwrap();
    assert_eq!(first.next().await.unwrap().unwrap(), "still here");
    owner
        .input()
        .send(Bytes::from_static(b"done"))
        .await
        .unwrap();
    assert!(owner.next().await.unwrap().is_none());
    owner.close().await;
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_over_its_bandwidth_is_slowed_down_not_killed_and_loses_nothing() {
    // 48 KiB/s with a 1 s burst: sending 160 KiB takes about 2.3 s of
    // throttling. The test checks the outcome, not the time (the benchmark
    // reports the measured rate).
    let bx = TestBox::with_policy(&policy(&[]), &[]);
    let source =
        "def main():\n    for i in range(160):\n        api.send(bytes([i % 256]) * 1024)\n";
    let started = Instant::now();
    let (output, result) = bx
        .run_with_manifest(
            source,
            &manifest(&[], &[], "bandwidth_kib_per_s = 48\ncpu_ms = 2000"),
            "[]",
        )
        .await;
    result.unwrap();
    assert_eq!(output.len(), 160 * 1024);
    assert!(
        output
            .chunks(1024)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == (i % 256) as u8))
    );
    eprintln!(
        "throttled session: 160 KiB at a 48 KiB/s limit took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_uses_no_cpu_time() {
    let bx = TestBox::with_policy(&policy(&[]), &["--cpu-ms", "300"]);
    let source = "def main():\n    t = api.time()\n    api.sleep(1.0)\n    api.send('%.1f' % (api.time() - t))\n";
    let (output, result) = bx
        .run_with_manifest(source, &manifest(&["time"], &[], ""), "[]")
        .await;
    result.unwrap();
    let slept: f64 = text(&output).parse().unwrap();
    assert!(slept >= 1.0, "{slept}");
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_function_is_still_stopped_by_its_wall_clock_limit_and_by_kill() {
    let bx = TestBox::with_policy(&policy(&[]), &[]);
    let (_, result) = bx
        .run_with_manifest(
            "def main():\n    api.sleep(3600)\n",
            &manifest(&["time"], &[], "wall_ms = 500"),
            "[]",
        )
        .await;
    assert_eq!(code(&result), ErrorCode::LimitWallTime);
    let token = bx
        .try_store_with_manifest(
            "def main():\n    api.sleep(3600)\n",
            &manifest(&["time"], &[], ""),
        )
        .await
        .unwrap();
    let session = bx.invoke(&token, "[]").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    bx.connect().await.kill(&session).await.unwrap();
    let (_, result) = bx.read_all(&session).await;
    assert_eq!(code(&result), ErrorCode::Killed);
    bx.assert_serves_hello().await;
}

/// Store `source` as a service function, invoke it and open one channel.
async fn start_service_and_connect(
    bx: &TestBox,
    source: &str,
) -> (bento_protocol::SessionToken, bento_client::Channel) {
    let token = bx
        .try_store_with_manifest(source, "version = 1\ncapabilities = [\"service\"]\n")
        .await
        .unwrap();
    let (session, service) = bx
        .connect()
        .await
        .invoke_service(&token, "main", "[]")
        .await
        .unwrap();
    let channel = bx
        .connect()
        .await
        .connect_service(&service.expect("a service token"))
        .await
        .unwrap();
    (session, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_client_learns_that_the_service_failed_but_never_sees_its_traceback() {
    let bx = TestBox::start(&[]);
    let source = r#"
def main():
    channel = api.accept()
    secret = "the invoker's secret"
    raise RuntimeError(secret)
"#;
    let (session, mut channel) = start_service_and_connect(&bx, source).await;
    let err = channel.next().await.unwrap_err();
    match &err {
        bento_client::ClientError::Remote { code, message } => {
            assert_eq!(*code, ErrorCode::FunctionException);
            assert!(!message.contains("secret"), "{message}");
        }
        other => panic!("expected the service's failure, got {other:?}"),
    }
    let (_, result) = bx.read_all(&session).await;
    assert!(
        message(&result).contains("the invoker's secret"),
        "the invoker gets the traceback"
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_client_learns_of_a_policy_refusal_by_its_code_but_never_sees_the_traceback() {
    let bx = TestBox::start(&[]);
    // `connect` is not granted: the raw binding is refused by the host
    // (its `Err`, unconverted), and the function's own exception raised
    // from that refusal ends it.
    let source = r#"
from componentize_py_types import Err
from wit_world.imports import capabilities
def main():
    channel = api.accept()
    try:
        capabilities.connect("127.0.0.1", 9)
    except Err as e:
        raise RuntimeError("the invoker's secret") from e
"#;
    let (session, mut channel) = start_service_and_connect(&bx, source).await;
    let err = channel.next().await.unwrap_err();
    match &err {
        bento_client::ClientError::Remote { code, message } => {
            assert_eq!(*code, ErrorCode::PolicyRefused);
            assert!(!message.contains("secret"), "{message}");
        }
        other => panic!("expected the service's refusal, got {other:?}"),
    }
    let (_, result) = bx.read_all(&session).await;
    assert_eq!(code(&result), ErrorCode::PolicyRefused, "{result:?}");
    assert!(
        message(&result).contains("the invoker's secret"),
        "the invoker gets the traceback: {result:?}"
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_inside_a_with_block_reaches_the_channel_client_as_a_failure() {
    let bx = TestBox::start(&[]);
    let source = "def main():\n    with api.accept() as channel:\n        channel.send(b'partial')\n        raise RuntimeError('boom')\n";
    let (_, mut channel) = start_service_and_connect(&bx, source).await;
    assert_eq!(channel.next().await.unwrap().unwrap(), "partial");
    let err = channel.next().await.unwrap_err();
    assert!(
        matches!(
            err,
            bento_client::ClientError::Remote {
                code: ErrorCode::FunctionException,
                ..
            }
        ),
        "{err:?}"
    );
    bx.assert_serves_hello().await;
}

/// `api.wait` over two connections to an echo server and the service's
/// channels: what is ready comes back, what is not does not, and a zero
/// timeout still takes what is there.
const WAITER: &str = r#"
import json

def main(port):
    a = api.connect("127.0.0.1", port)
    b = api.connect("127.0.0.1", port)
    out = [len(api.wait([a, b], timeout=0.2))]
    try:
        a.recv(timeout=0)
        out.append("data")
    except TimeoutError:
        out.append("timeout")
    b.send(b"x")
    out.append([s is b for s in api.wait([a, b], timeout=30)])
    out.append(b.recv(timeout=0).decode())
    api.send("ready\n")
    out.append(api.wait([a], timeout=30, accept=True) == [api.NEW_CHANNEL])
    channel = api.accept(timeout=0)
    out.append(api.wait([a, channel], timeout=30) == [channel])
    out.append(channel.recv().decode())
    a.close()
    try:
        api.wait([a, b])
    except api.StreamClosed:
        out.append("closed")
    api.send(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_exactly_the_streams_and_channels_that_are_ready() {
    let server = LocalServer::echo();
    let rules = vec![format!("accept 127.0.0.1:{}", server.port)];
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    let token = bx
        .try_store_with_manifest(WAITER, &manifest(&["connect", "service"], &rules, ""))
        .await
        .unwrap();
    let (session, service) = bx
        .connect()
        .await
        .invoke_service(&token, "main", &format!("[{}]", server.port))
        .await
        .unwrap();
    let mut attachment = bx.connect().await.attach(&session, None).await.unwrap();
    let mut output = Vec::new();
    while !output.ends_with(b"ready\n") {
        output.extend_from_slice(&attachment.next().await.unwrap().expect("more output"));
    }
    let mut channel = bx
        .connect()
        .await
        .connect_service(&service.expect("a service token"))
        .await
        .unwrap();
    channel.send(b"hi").await.unwrap();
    while let Some(data) = attachment.next().await.unwrap() {
        output.extend_from_slice(&data);
    }
    let report: serde_json::Value = serde_json::from_slice(&output[b"ready\n".len()..]).unwrap();
    assert_eq!(
        report,
        serde_json::json!([0, "timeout", [true], "x", true, true, "hi", "closed"])
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_quiet_streams_uses_no_cpu_time() {
    let server = LocalServer::echo();
    let rules = vec![format!("accept 127.0.0.1:{}", server.port)];
    let bx = TestBox::with_policy(&policy(&rules), &["--cpu-ms", "300"]);
    let source = "def main(port):\n    a = api.connect('127.0.0.1', port)\n    for _ in range(4):\n        api.wait([a], timeout=0.5)\n    api.send('waited')\n";
    let (output, result) = bx
        .run_with_manifest(
            source,
            &manifest(&["connect"], &rules, ""),
            &format!("[{}]", server.port),
        )
        .await;
    result.unwrap();
    assert_eq!(text(&output), "waited");
    bx.assert_serves_hello().await;
}

/// Each way a function can leave a refusal by the box's rules uncaught:
/// through `api`, through the `requests` shim (which re-raises it as
/// `requests.ConnectionError`), and through the raw bindings, past the
/// runtime's own classes.
const UNCAUGHT_REFUSALS: &[(&str, &str)] = &[
    (
        "api.connect",
        "def main(port):\n    api.connect('127.0.0.1', port)\n",
    ),
    (
        "requests",
        "import requests\ndef main(port):\n    requests.get('http://127.0.0.1:%d/' % port, timeout=5)\n",
    ),
    (
        "the raw binding",
        "from wit_world.imports import capabilities\ndef main(port):\n    capabilities.connect('127.0.0.1', port)\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaught_policy_refusal_ends_the_session_with_the_policy_refused_code() {
    let allowed = LocalServer::echo();
    let forbidden = LocalServer::echo();
    let rule = format!("accept 127.0.0.1:{}", allowed.port);
    let bx = TestBox::with_policy(&policy(std::slice::from_ref(&rule)), &[]);
    let grant = manifest(&["connect", "http"], std::slice::from_ref(&rule), "");
    let args = format!("[{}]", forbidden.port);
    for (how, source) in UNCAUGHT_REFUSALS {
        let (output, result) = bx.run_with_manifest(source, &grant, &args).await;
        assert!(output.is_empty(), "{how}: {output:?}");
        assert_eq!(code(&result), ErrorCode::PolicyRefused, "{how}: {result:?}");
        assert!(
            message(&result).starts_with("Traceback"),
            "{how}: the traceback is still the message: {result:?}"
        );
    }

    // A capability the function was never granted, asked for through the
    // raw binding (`api` has no such attribute): refused by the host too.
    let (_, result) = bx
        .run_with_manifest(UNCAUGHT_REFUSALS[2].1, &manifest(&[], &[], ""), &args)
        .await;
    assert_eq!(code(&result), ErrorCode::PolicyRefused, "{result:?}");

    // A refusal the function handled, then failing for its own reasons,
    // is an ordinary exception.
    let handled = "def main(port):\n    try:\n        api.connect('127.0.0.1', port)\n    except api.PolicyRefused:\n        raise ValueError('no way through')\n";
    let (_, result) = bx.run_with_manifest(handled, &grant, &args).await;
    assert_eq!(code(&result), ErrorCode::FunctionException, "{result:?}");

    assert_eq!(
        forbidden.accepted(),
        0,
        "a refused destination is never contacted"
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_error_kind_raises_its_own_exception_class_through_api_and_the_raw_bindings() {
    let allowed = LocalServer::echo();
    let forbidden = LocalServer::echo();
    let rule = format!("accept 127.0.0.1:{}", allowed.port);
    let bx = TestBox::with_policy(&policy(std::slice::from_ref(&rule)), &[]);
    // One call per kind a function can provoke on its own; each line is the
    // class the runtime raised and whether it is the builtin code written
    // for ordinary Python catches.
    let source = r#"
from wit_world.imports import capabilities
from componentize_py_types import Err
def report(what, call, builtin):
    try:
        call()
        api.send("%s: no error\n" % what)
    except api.BentoError as e:
        api.send("%s: %s %s %s\n" % (what, type(e).__name__, e.kind, isinstance(e, builtin)))
def main(allowed, forbidden):
    report("refused", lambda: api.connect("127.0.0.1", forbidden), PermissionError)
    report("invalid", lambda: api.sleep(-1), ValueError)
    stream = api.connect("127.0.0.1", allowed)
    report("timeout", lambda: stream.recv(10, timeout=0), TimeoutError)
    stream.close()
    report("closed", lambda: stream.send(b"x"), ConnectionError)
    report("quota", lambda: api.storage.put("k", b"x" * 4096), OSError)
    kept = []
    report("channels", lambda: [kept.append(api.connect("127.0.0.1", allowed)) for _ in range(64)], OSError)
    # The raw binding: a record with a typed kind, no text to parse.
    try:
        capabilities.sleep(float("nan"))
    except Err as e:
        api.send("raw: %s\n" % e.value.kind.name)
    # Every kind the WIT world defines has its own class.
    from bento import errors
    from wit_world.imports.types import ErrorKind
    unmapped = [k.name for k in ErrorKind if errors.CLASSES.get(k, errors.BentoError) is errors.BentoError]
    api.send("unmapped: %s\n" % unmapped)
"#;
    let grant = manifest(
        &["connect", "time", "storage"],
        std::slice::from_ref(&rule),
        "storage_kib = 2",
    );
    let args = format!("[{}, {}]", allowed.port, forbidden.port);
    let (output, result) = bx.run_with_manifest(source, &grant, &args).await;
    result.unwrap();
    assert_eq!(
        text(&output),
        "refused: DestinationRefused refused True\n\
         invalid: InvalidArgument invalid-argument True\n\
         timeout: Timeout timeout True\n\
         closed: StreamClosed closed True\n\
         quota: QuotaExceeded quota-exceeded True\n\
         channels: ChannelLimit channel-limit True\n\
         raw: INVALID_ARGUMENT\n\
         unmapped: []\n"
    );
    bx.assert_serves_hello().await;
}
