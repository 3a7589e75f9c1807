//! Sealed uploads end to end on loopback (kind `none`, the same code path a
//! TEE runs): the function, arguments, input and output are sealed between
//! the client and the worker, and the server process relays ciphertext
//! only; tampering gives typed errors and the box serves the next user.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bento_attest::{Binding, EvidenceSource, NoTee, SessionKeys};
use bento_client::{ClientError, Connection, Requirement, SealedSessionToken, Target};
use bento_protocol::{ErrorCode, Frame, FrameDecoder, PROTOCOL_VERSION};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::attest::fake_box;
use crate::harness::{BENTO, TestBox};

/// A `--worker-wrapper` that copies everything the server and its worker
/// say to each other into `PREFIX.to-worker` and `PREFIX.from-worker`.
const RECORDER: &str = r#"
import os, subprocess, sys, threading
prefix = sys.argv[1]
worker = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
def pump(src, dst, path):
    with open(path, "ab", buffering=0) as log:
        while True:
            data = os.read(src, 65536)
            if not data:
                break
            log.write(data)
            while data:
                data = data[os.write(dst, data):]
    os.close(dst)
threads = [
    threading.Thread(target=pump, args=(0, worker.stdin.fileno(), prefix + ".to-worker")),
    threading.Thread(target=pump, args=(worker.stdout.fileno(), 1, prefix + ".from-worker")),
]
for t in threads:
    t.start()
sys.exit(worker.wait())
"#;

/// A box whose server↔worker pipe is recorded; the recordings' prefix.
fn recorded_box() -> (TestBox, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("recorder.py");
    std::fs::write(&script, RECORDER).unwrap();
    let prefix = dir.path().join("ipc").display().to_string();
    let wrapper = format!("python3 {} {prefix}", script.display());
    let bx = TestBox::start(&["--worker-wrapper", &wrapper]);
    (bx, dir, prefix)
}

/// Every file under `dir`, concatenated.
fn read_tree(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(read_tree(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    let hex_needle = hex::encode(needle);
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
        || haystack
            .windows(hex_needle.len())
            .any(|w| w == hex_needle.as_bytes())
}

/// The worker's channel key, from evidence this client verified.
async fn channel_key(target: &Target) -> [u8; 32] {
    let (_, verified) = Connection::connect_attested(target, &Requirement::default())
        .await
        .unwrap();
    assert_ne!(
        verified.channel_key, [0; 32],
        "the box offers a sealed channel"
    );
    verified.channel_key
}

const ECHO: &str = "def main(arg):\n    while True:\n        m = api.recv()\n        if not m:\n            return\n        api.send(m)\n";

async fn sealed_session(bx: &TestBox, key: &[u8; 32], source: &str) -> SealedSessionToken {
    let mut conn = bx.connect().await;
    let stored = conn
        .store_sealed(key, "f.py", source, "", None)
        .await
        .unwrap();
    conn.invoke_sealed(key, &stored.invoke_token, "main", "[\"a\"]")
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_process_relays_a_sealed_session_without_seeing_source_arguments_input_or_output()
 {
    let (bx, _dir, ipc) = recorded_box();
    let key = channel_key(&bx.target()).await;
    // Each marker appears in exactly one place: the source (a comment), the
    // arguments, the input; the output marker is built at run time, so it
    // is not in the source.
    let source = "# SRC-7c1f0d\ndef main(arg):\n    msg = api.recv()\n    api.send(('OUT-' + 'e4a09b ' + arg + ' ').encode() + msg)\n";
    let mut conn = bx.connect().await;
    let stored = conn
        .store_sealed(&key, "secret.py", source, "", None)
        .await
        .unwrap();
    let (token, _) = conn
        .invoke_sealed(&key, &stored.invoke_token, "main", "[\"ARG-93ab2c\"]")
        .await
        .unwrap();
    let attachment = bx
        .connect()
        .await
        .attach_sealed(&token, None)
        .await
        .unwrap();
    attachment
        .input()
        .send(Bytes::from_static(b"IN-55d2f1"))
        .await
        .unwrap();
    let out = attachment.read_to_end().await.unwrap();
    assert_eq!(out, b"OUT-e4a09b ARG-93ab2c IN-55d2f1");

    // Control: a plain session's markers do show up in the same recording,
    // so the recorder sees what the server and worker exchange.
    let (plain, result) = bx
        .run(
            "# PLAIN-SRC-11aa\ndef main(a):\n    api.send('PLAIN-' + 'OUT-22bb ' + a)\n",
            "[\"PLAIN-ARG-33cc\"]",
        )
        .await;
    result.unwrap();
    assert_eq!(plain, b"PLAIN-OUT-22bb PLAIN-ARG-33cc");
    // The worker's pipe is written asynchronously by the recorder.
    let to_worker_path = format!("{ipc}.to-worker");
    let from_worker_path = format!("{ipc}.from-worker");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let to = std::fs::read(&to_worker_path).unwrap_or_default();
        let from = std::fs::read(&from_worker_path).unwrap_or_default();
        if contains(&to, "PLAIN-SRC-11aa") && contains(&from, "PLAIN-OUT-22bb") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the recorder did not see the plain session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let to_worker = std::fs::read(&to_worker_path).unwrap();
    let from_worker = std::fs::read(&from_worker_path).unwrap();
    let data = read_tree(bx.data_dir());
    let log = bx.log();
    for marker in ["SRC-7c1f0d", "ARG-93ab2c", "IN-55d2f1", "OUT-e4a09b"] {
        assert!(!contains(&to_worker, marker), "{marker} sent to the worker");
        assert!(!contains(&from_worker, marker), "{marker} from the worker");
        assert!(!contains(&data, marker), "{marker} in the data directory");
        assert!(!log.contains(marker), "{marker} in the server's log");
    }
    assert!(!contains(&data, "secret.py"), "the file name is sealed too");

    // The server process's memory: the plain session's source is there
    // (so the scan reads it), the sealed session's plaintext is not.
    let memory = process_memory(bx.pid());
    assert!(
        memory.windows(14).any(|w| w == b"PLAIN-SRC-11aa"),
        "the scan did not find the plain source in the server's memory"
    );
    for marker in ["SRC-7c1f0d", "ARG-93ab2c", "IN-55d2f1", "OUT-e4a09b"] {
        assert!(
            !memory.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{marker} in the server's memory"
        );
    }
}

/// Every readable, private mapping of process `pid` (heap, stacks,
/// anonymous memory), read through /proc (the test is its parent, so it
/// may). Files mapped from disk (the binary, libraries) are skipped.
fn process_memory(pid: u32) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut out = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(range), Some(perms)) = (fields.first(), fields.get(1)) else {
            continue;
        };
        let path = fields.get(5).copied().unwrap_or("");
        if !perms.starts_with("rw") || path.starts_with('/') || path == "[vvar]" {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut offset = start;
        let mut chunk = vec![0u8; 1 << 20];
        while offset < end {
            let len = usize::try_from((end - offset).min(chunk.len() as u64)).unwrap();
            match mem.read_at(&mut chunk[..len], offset) {
                Ok(n) if n > 0 => out.extend_from_slice(&chunk[..n]),
                _ => break,
            }
            offset += len as u64;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_output_streams_past_the_buffer_and_resumes_exactly_after_a_detach() {
    let bx = TestBox::start(&[]);
    let key = channel_key(&bx.target()).await;
    // 3 MiB in 16 KiB messages: many times the minimum output buffer, so
    // the worker waits for credit that the box returns as records are
    // acknowledged (record overhead included).
    let source =
        "def main(arg):\n    for i in range(192):\n        api.send(bytes([i % 251]) * 16384)\n";
    let token = sealed_session(&bx, &key, source).await;
    let mut first = bx
        .connect()
        .await
        .attach_sealed(&token, None)
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < 1024 * 1024 {
        out.extend_from_slice(&first.next().await.unwrap().unwrap());
    }
    first.detach().await.unwrap();
    // Another connection, as another process would: the token is all it
    // needs, and the stream resumes at the acknowledged record boundary.
    let token = SealedSessionToken::from_hex(&token.to_hex()).unwrap();
    let rest = bx
        .connect()
        .await
        .attach_sealed(&token, None)
        .await
        .unwrap()
        .read_to_end()
        .await
        .unwrap();
    out.extend_from_slice(&rest);
    let expected: Vec<u8> = (0..192u32)
        .flat_map(|i| std::iter::repeat_n((i % 251) as u8, 16384))
        .collect();
    assert_eq!(out.len(), expected.len());
    assert!(out == expected, "output lost, repeated or reordered");
    bx.assert_serves_hello().await;
}

/// Attach to a sealed session as a hostile relay would: raw frames, with
/// input records made by hand from the session's secret.
async fn raw_input(bx: &TestBox, token: &SealedSessionToken, records: Vec<Vec<u8>>) -> ClientError {
    let mut attachment = bx
        .connect()
        .await
        .attach(&token.session, None)
        .await
        .unwrap();
    let input = attachment.input();
    for record in records {
        input.send(Bytes::from(record)).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, attachment.next()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => panic!("the session ended normally"),
            Ok(Err(e)) => return e,
            Err(_) => panic!("no refusal"),
        }
    }
}

fn keys_of(token: &SealedSessionToken) -> SessionKeys {
    let secret: [u8; 32] = hex::decode(&token.to_hex()[64..])
        .unwrap()
        .try_into()
        .unwrap();
    SessionKeys::from_secret(&secret)
}

fn assert_sealed_rejected(error: ClientError, case: &str) {
    match error {
        ClientError::Remote {
            code: ErrorCode::SealedRejected,
            ..
        } => {}
        other => panic!("{case}: expected sealed_rejected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_replayed_reordered_or_moved_input_ends_the_session_with_sealed_rejected() {
    let bx = TestBox::start(&[]);
    let key = channel_key(&bx.target()).await;

    let token = sealed_session(&bx, &key, ECHO).await;
    let mut flipped = keys_of(&token).seal_input(10, b"x");
    flipped[12] ^= 1;
    assert_sealed_rejected(raw_input(&bx, &token, vec![flipped]).await, "bit flip");

    let token = sealed_session(&bx, &key, ECHO).await;
    let record = keys_of(&token).seal_input(10, b"once");
    assert_sealed_rejected(
        raw_input(&bx, &token, vec![record.clone(), record]).await,
        "replay",
    );

    let token = sealed_session(&bx, &key, ECHO).await;
    let keys = keys_of(&token);
    assert_sealed_rejected(
        raw_input(
            &bx,
            &token,
            vec![keys.seal_input(20, b"b"), keys.seal_input(15, b"a")],
        )
        .await,
        "reorder",
    );

    let other = sealed_session(&bx, &key, ECHO).await;
    let token = sealed_session(&bx, &key, ECHO).await;
    assert_sealed_rejected(
        raw_input(&bx, &token, vec![keys_of(&other).seal_input(10, b"moved")]).await,
        "moved from another session",
    );

    // The sessions that were not tampered with work, and so does the box.
    let attachment = bx
        .connect()
        .await
        .attach_sealed(&other, None)
        .await
        .unwrap();
    let input = attachment.input();
    input.send(Bytes::from_static(b"fine")).await.unwrap();
    input.end().await.unwrap();
    assert_eq!(attachment.read_to_end().await.unwrap(), b"fine");
    bx.assert_serves_hello().await;
}

/// A relay between client and box that flips one bit of the first
/// non-empty `Output` frame.
async fn flipping_relay(box_addr: String) -> Target {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let upstream = TcpStream::connect(&box_addr).await.unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let (mut box_read, mut box_write) = upstream.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_read, &mut box_write).await;
        });
        let mut buf = BytesMut::new();
        let mut decoder = FrameDecoder::default();
        let mut flipped = false;
        loop {
            while let Ok(Some(frame)) = decoder.decode(&mut buf) {
                let frame = match frame {
                    Frame::Output { data } if !flipped && !data.is_empty() => {
                        flipped = true;
                        let mut data = data.to_vec();
                        let last = data.len() - 1;
                        data[last] ^= 0x80;
                        Frame::Output { data: data.into() }
                    }
                    other => other,
                };
                if client_write.write_all(&frame.to_bytes()).await.is_err() {
                    return;
                }
            }
            if box_read.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        }
    });
    Target {
        server: addr.to_string(),
        socks: None,
        dialer: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_output_record_is_refused_by_the_client_with_a_typed_error() {
    let bx = TestBox::start(&[]);
    let key = channel_key(&bx.target()).await;
    let token = sealed_session(
        &bx,
        &key,
        "def main(arg):\n    api.send('first')\n    api.send('second')\n",
    )
    .await;
    let relay = flipping_relay(bx.addr.clone()).await;
    let mut attachment = Connection::connect(&relay)
        .await
        .unwrap()
        .attach_sealed(&token, None)
        .await
        .unwrap();
    match attachment.next().await {
        Err(ClientError::Sealed(bento_client::SealError::Tampered)) => {}
        other => panic!("expected a sealed-data error, got {other:?}"),
    }
    attachment.close().await;
    // Nothing was acknowledged past the bad record: read directly, the
    // session's output is intact.
    let out = bx
        .connect()
        .await
        .attach_sealed(&token, None)
        .await
        .unwrap()
        .read_to_end()
        .await
        .unwrap();
    assert_eq!(out, b"firstsecond");
    bx.assert_serves_hello().await;
}

/// Send `frame` on a fresh connection; the box's reply.
async fn raw_request(bx: &TestBox, frame: Frame) -> Frame {
    let mut stream = TcpStream::connect(&bx.addr).await.unwrap();
    let mut bytes = Frame::Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
    }
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(&frame.to_bytes());
    stream.write_all(&bytes).await.unwrap();
    let mut buf = BytesMut::new();
    let mut decoder = FrameDecoder::default();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        if let Some(frame) = decoder.decode(&mut buf).unwrap() {
            frames.push(frame);
            continue;
        }
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "{frames:?}");
    }
    frames.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_envelopes_and_swapped_manifests_are_refused_with_sealed_rejected() {
    let bx = TestBox::start(&[]);
    let key = channel_key(&bx.target()).await;
    let function = bento_attest::SealedFunction {
        filename: "f.py".into(),
        source: ECHO.into(),
    };
    let (envelope, _) = bento_attest::seal_function(&key, &function, "").unwrap();
    let mut flipped = envelope.clone();
    flipped[40] ^= 4;
    for (case, manifest, envelope) in [
        ("bit flip", "", flipped),
        // The box pairs the source with another manifest than the user's.
        (
            "another manifest",
            "version = 1\n[limits]\nmemory_mib = 64\n",
            envelope.clone(),
        ),
    ] {
        let reply = raw_request(
            &bx,
            Frame::SealedStore {
                manifest: manifest.into(),
                lifetime_s: 0,
                envelope: envelope.into(),
            },
        )
        .await;
        assert!(
            matches!(
                reply,
                Frame::Error {
                    code: ErrorCode::SealedRejected,
                    ..
                }
            ),
            "{case}: {reply:?}"
        );
    }
    assert!(!bx.log().contains("stored a function"), "{}", bx.log());

    // A call envelope that does not open: the session ends at once.
    let stored = bx
        .connect()
        .await
        .store_sealed(&key, "f.py", ECHO, "", None)
        .await
        .unwrap();
    let (call, _) = bento_attest::seal_call(
        &key,
        &bento_attest::SealedCall {
            entry: "main".into(),
            args_json: "[]".into(),
        },
    )
    .unwrap();
    let mut call = call;
    call[50] ^= 1;
    let Frame::Invoked { session_token, .. } = raw_request(
        &bx,
        Frame::SealedInvoke {
            invoke_token: stored.invoke_token.clone(),
            envelope: call.into(),
        },
    )
    .await
    else {
        panic!("a sealed invoke is answered before the worker opens it");
    };
    let result = bx.read_all(&session_token).await.1;
    match result {
        Err(ClientError::Remote {
            code: ErrorCode::SealedRejected,
            ..
        }) => {}
        other => panic!("expected sealed_rejected, got {other:?}"),
    }
    // A plain Invoke of a sealed function would hand the box the arguments.
    let refused = bx
        .connect()
        .await
        .invoke(&stored.invoke_token, "main", "[]")
        .await;
    assert!(
        matches!(
            refused,
            Err(ClientError::Remote {
                code: ErrorCode::InvalidArguments,
                ..
            })
        ),
        "{refused:?}"
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_and_a_traceback_come_back_sealed_and_the_client_opens_them() {
    let (bx, _dir, ipc) = recorded_box();
    let key = channel_key(&bx.target()).await;
    let mut conn = bx.connect().await;
    let refused = conn
        .store_sealed(&key, "bad.py", "def main(:\n    SYNTAX-4d4d\n", "", None)
        .await;
    match refused {
        Err(ClientError::Remote {
            code: ErrorCode::InvalidFunction,
            message,
        }) => assert!(message.contains("SyntaxError"), "{message}"),
        other => panic!("expected invalid_function, got {other:?}"),
    }
    let token = sealed_session(
        &bx,
        &key,
        "def main(arg):\n    raise ValueError('TRACE-' + '5e5e ' + arg)\n",
    )
    .await;
    let result = bx
        .connect()
        .await
        .attach_sealed(&token, None)
        .await
        .unwrap()
        .read_to_end()
        .await;
    match result {
        Err(ClientError::Remote {
            code: ErrorCode::FunctionException,
            message,
        }) => assert!(message.contains("ValueError: TRACE-5e5e a"), "{message}"),
        other => panic!("expected function_exception, got {other:?}"),
    }
    let from_worker = std::fs::read(format!("{ipc}.from-worker")).unwrap_or_default();
    for marker in ["SYNTAX-4d4d", "TRACE-5e5e"] {
        assert!(!contains(&from_worker, marker), "{marker} from the worker");
        assert!(!bx.log().contains(marker), "{marker} in the log");
    }
}

fn bento(addr: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BENTO)
        .args(args)
        .env("BENTO_SERVER", addr)
        .env_remove("BENTO_SOCKS")
        .env_remove("BENTO_REQUIRE_TEE")
        .env_remove("BENTO_EXPECT_MEASUREMENT")
        .env_remove("BENTO_ALLOW_UNATTESTED")
        .env_remove("BENTO_SEALED")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut input, stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn bento_run_store_invoke_and_attach_work_sealed_and_say_once_that_the_operator_can_read_everything()
 {
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("greet.py");
    std::fs::write(
        &file,
        "def main(name):\n    api.send('hello ' + name + ', ' + api.recv().decode())\n",
    )
    .unwrap();
    let file = file.display().to_string();
    let out = bento(
        &bx.addr,
        &["--sealed", "run", &file, "--", "world"],
        b"from stdin",
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(text(&out.stdout), "hello world, from stdin");
    assert_eq!(
        stderr
            .matches("no TEE proves: its operator can read")
            .count(),
        1,
        "{stderr}"
    );
    assert!(
        !stderr.contains("warning: the box is not attested"),
        "{stderr}"
    );

    let stored = bento(
        &bx.addr,
        &["--sealed", "--allow-unattested", "store", &file],
        b"",
    );
    assert!(stored.status.success(), "{}", text(&stored.stderr));
    assert!(
        !text(&stored.stderr).contains("warning"),
        "{}",
        text(&stored.stderr)
    );
    let invoke_token = text(&stored.stdout).trim().to_owned();
    let invoked = bento(
        &bx.addr,
        &["--sealed", "invoke", &invoke_token, "--", "again"],
        b"",
    );
    assert!(invoked.status.success(), "{}", text(&invoked.stderr));
    let session = text(&invoked.stdout).trim().to_owned();
    assert_eq!(
        session.len(),
        128,
        "a sealed session token carries its secret"
    );
    let attached = bento(&bx.addr, &["attach", &session], b"later");
    assert!(attached.status.success(), "{}", text(&attached.stderr));
    assert_eq!(text(&attached.stdout), "hello again, later");

    // Without --sealed the box would get the arguments: it refuses.
    let plain = bento(&bx.addr, &["invoke", &invoke_token, "--", "x"], b"");
    assert_eq!(plain.status.code(), Some(2), "{}", text(&plain.stderr));
    assert!(text(&plain.stderr).contains("sealed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_whose_evidence_binds_another_channel_key_is_refused_before_upload() {
    // The evidence names one key but its report data binds another: a
    // host that swaps in a key it holds is caught by the binding check.
    let (target, fake) = fake_box(|nonce| {
        let binding = Binding {
            nonce,
            onion_identity: [0; 32],
            channel_key: [9; 32],
        };
        let mut evidence = NoTee.evidence(&binding, &[]).unwrap();
        evidence.channel_key = [7; 32];
        Frame::Attested {
            evidence: evidence.encode().into(),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.py");
    std::fs::write(&file, "def main(): pass\n").unwrap();
    let file = file.display().to_string();
    let server = target.server.clone();
    let out = tokio::task::spawn_blocking(move || bento(&server, &["--sealed", "run", &file], b""))
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("box refused"), "{stderr}");
    assert!(stderr.contains("nothing was sent"), "{stderr}");
    fake.await.unwrap();

    // A box that offers no sealed channel (all-zero key) is refused too.
    let (target, fake) = fake_box(|nonce| {
        let binding = Binding {
            nonce,
            onion_identity: [0; 32],
            channel_key: [0; 32],
        };
        Frame::Attested {
            evidence: NoTee.evidence(&binding, &[]).unwrap().encode().into(),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.py");
    std::fs::write(&file, "def main(): pass\n").unwrap();
    let file = file.display().to_string();
    let server = target.server.clone();
    let out = tokio::task::spawn_blocking(move || bento(&server, &["--sealed", "run", &file], b""))
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("offers no sealed channel"), "{stderr}");
    fake.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_function_over_the_upload_limit_is_refused_and_the_box_serves_on() {
    let bx = TestBox::start(&[]);
    let key = channel_key(&bx.target()).await;
    // The box sees only the envelope: at most the upload limit (1 MiB by
    // default) + 255 (file name) + 8 (two lengths) + 49 (overhead) bytes.
    // With a 6-byte file name the largest source is limit + 249 bytes.
    let body = "\ndef main(a): api.send('ok')\n";
    let source_of = |len: usize| format!("#{}{body}", "x".repeat(len - 1 - body.len()));
    let largest = 1024 * 1024 + 255 + 8 - 8 - "big.py".len();
    let refused = bx
        .connect()
        .await
        .store_sealed(&key, "big.py", &source_of(largest + 1), "", None)
        .await;
    match refused {
        Err(ClientError::Remote {
            code: ErrorCode::InvalidFunction,
            message,
        }) => assert!(message.contains("accepts at most"), "{message}"),
        other => panic!("expected invalid_function, got {other:?}"),
    }
    assert!(!bx.log().contains("stored a function"), "{}", bx.log());
    let stored = bx
        .connect()
        .await
        .store_sealed(&key, "big.py", &source_of(largest), "", None)
        .await
        .unwrap();
    let (token, _) = bx
        .connect()
        .await
        .invoke_sealed(&key, &stored.invoke_token, "main", "[1]")
        .await
        .unwrap();
    let out = bx
        .connect()
        .await
        .attach_sealed(&token, None)
        .await
        .unwrap()
        .read_to_end()
        .await
        .unwrap();
    assert_eq!(out, b"ok");
    bx.assert_serves_hello().await;
}

#[test]
fn every_worker_of_a_box_holds_the_same_channel_key_and_a_sealed_session_can_be_killed() {
    let bx = TestBox::start(&["--workers", "3"]);
    let attest = bento(&bx.addr, &["attest"], b"");
    let stdout = text(&attest.stdout);
    assert!(attest.status.success(), "{}", text(&attest.stderr));
    assert!(stdout.contains("sealed-channel key"), "{stdout}");
    assert!(
        !stdout.contains(&format!("sealed-channel key {} ", "0".repeat(64))),
        "three workers, one key: {stdout}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wait.py");
    std::fs::write(&file, "def main():\n    api.recv()\n").unwrap();
    let file = file.display().to_string();
    let stored = bento(
        &bx.addr,
        &["--sealed", "--allow-unattested", "store", &file],
        b"",
    );
    assert!(stored.status.success(), "{}", text(&stored.stderr));
    let invoke_token = text(&stored.stdout).trim().to_owned();
    // Invocations land on different workers; every one opens the function.
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let invoked = bento(
            &bx.addr,
            &["--sealed", "--allow-unattested", "invoke", &invoke_token],
            b"",
        );
        assert!(invoked.status.success(), "{}", text(&invoked.stderr));
        sessions.push(text(&invoked.stdout).trim().to_owned());
    }
    for session in &sessions {
        let killed = bento(&bx.addr, &["--allow-unattested", "kill", session], b"");
        assert!(killed.status.success(), "{}", text(&killed.stderr));
        let attached = bento(&bx.addr, &["--allow-unattested", "attach", session], b"");
        assert_eq!(
            attached.status.code(),
            Some(1),
            "{}",
            text(&attached.stderr)
        );
        assert!(
            text(&attached.stderr).contains("killed"),
            "{}",
            text(&attached.stderr)
        );
    }
}

#[test]
fn commands_that_cannot_seal_refuse_sealed_instead_of_sending_in_the_clear() {
    let bx = TestBox::start(&[]);
    for args in [
        vec!["--sealed", "connect", &"ab".repeat(32)],
        vec![
            "--sealed",
            "browse",
            "http://127.0.0.1:1/",
            "--out",
            "/nonexistent/page",
        ],
    ] {
        let out = bento(&bx.addr, &args, b"");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("refuses --sealed"), "{args:?}: {stderr}");
    }
    assert!(!bx.log().contains("stored a function"), "{}", bx.log());
}
