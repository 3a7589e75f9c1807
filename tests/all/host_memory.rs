//! Host memory a function can make grow is counted against its
//! `memory_mib` (issue 11, item 7): staged capability bodies, capability
//! results waiting to be read, and the input windows of service channels.
//! A function that tries to go beyond its grant through any of them is
//! stopped with the memory limit (or, for a channel, the channel is
//! refused), and the box serves the next user.
//!
//! The Python runtime itself takes about 15 MiB of a 64 MiB instance; each
//! function first hoards 40 MiB of linear memory, so that a small host
//! buffer still fits and a 15-16 MiB one does not. Both sizes are within
//! every other limit (a staged body may be 16 MiB, an HTTP body half the
//! instance's memory), so only the memory accounting tells them apart.

use bento_protocol::ErrorCode;
use bytes::Bytes;

use crate::capabilities::{manifest, policy};
use crate::harness::{TestBox, code, message};
use crate::local_servers::LocalServer;

const MIB: usize = 1 << 20;

/// Hoards `hoard` MiB, says so, then stages an `mib` MiB body that it never
/// writes: the staging buffer is reserved from the `stage` call on.
const STAGE: &str = r#"
from wit_world.imports import capabilities
def main(hoard, mib):
    kept = [bytearray(1 << 20) for _ in range(hoard)]
    api.send("hoarded")
    capabilities.stage(mib << 20)
"#;

fn assert_stopped_for_memory(result: &Result<(), bento_client::ClientError>) {
    assert_eq!(code(result), ErrorCode::LimitMemory, "{result:?}");
    assert!(message(result).contains("64 MiB"), "{}", message(result));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_body_beyond_the_memory_grant_stops_the_instance_for_memory() {
    let bx = TestBox::start(&["--memory-mib", "64"]);
    let limits = "version = 1\n[limits]\nmemory_mib = 64\n";
    let (output, result) = bx.run_with_manifest(STAGE, limits, "[40, 1]").await;
    assert_eq!(output, b"hoarded");
    result.expect("a 1 MiB staged body fits beside the hoard");
    let (output, result) = bx.run_with_manifest(STAGE, limits, "[40, 16]").await;
    assert_eq!(output, b"hoarded", "the hoard itself fits");
    assert_stopped_for_memory(&result);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_body_left_unread_beyond_the_memory_grant_stops_the_instance_for_memory() {
    let big = LocalServer::http("200 OK", String::new(), vec![b'b'; 15 * MIB]);
    let small = LocalServer::http("200 OK", String::new(), vec![b's'; MIB]);
    let rules = vec![
        format!("accept 127.0.0.1:{}", big.port),
        format!("accept 127.0.0.1:{}", small.port),
    ];
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    // The raw import leaves the body pending in the host, unread: before
    // the body was counted, this held 15 MiB outside the instance's limit.
    let source = r#"
from wit_world.imports import capabilities
def main(hoard, url):
    kept = [bytearray(1 << 20) for _ in range(hoard)]
    api.send("hoarded")
    capabilities.stage(0)
    meta = capabilities.http_request("GET", url, "[]", None)
    api.send(" fetched")
"#;
    let grant = manifest(&["http"], &rules, "memory_mib = 64");
    let args = |port: u16| format!("[40, \"http://127.0.0.1:{port}/\"]");
    let (output, result) = bx
        .run_with_manifest(source, &grant, &args(small.port))
        .await;
    result.expect("a 1 MiB body fits beside the hoard");
    assert_eq!(output, b"hoarded fetched");
    let (output, result) = bx.run_with_manifest(source, &grant, &args(big.port)).await;
    assert_eq!(output, b"hoarded", "the body never reached the function");
    assert_stopped_for_memory(&result);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_channels_beyond_the_memory_grant_are_refused_and_the_service_goes_on() {
    // The grant allows 48 channels but a 24 MiB instance has room for the
    // 1 MiB input windows of only a few once the runtime is loaded.
    let bx = TestBox::with_policy(&policy(&[]).replace("channels = 8", "channels = 64"), &[]);
    let source = r#"
def main():
    api.send("ready")
    api.recv()
    api.send("still serving")
"#;
    let token = bx
        .try_store_with_manifest(
            source,
            "version = 1\ncapabilities = [\"service\"]\n[limits]\nmemory_mib = 24\nchannels = 48\n",
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
    assert_eq!(owner.next().await.unwrap().unwrap(), "ready");
    let mut open = Vec::new();
    let refused = loop {
        match bx.connect().await.connect_service(&service).await {
            Ok(channel) => open.push(channel),
            Err(e) => break e,
        }
        assert!(open.len() < 48, "every channel the grant allows was opened");
    };
    assert!(
        matches!(
            refused,
            bento_client::ClientError::Remote {
                code: ErrorCode::ChannelLimit,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(!open.is_empty(), "a channel fits in 24 MiB");
    drop(open);
    owner
        .input()
        .send(Bytes::from_static(b"done"))
        .await
        .unwrap();
    assert_eq!(owner.next().await.unwrap().unwrap(), "still serving");
    assert!(owner.next().await.unwrap().is_none());
    owner.close().await;
    bx.assert_serves_hello().await;
}
