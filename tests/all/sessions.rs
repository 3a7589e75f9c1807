//! Sessions: output delivery, detach/re-attach, backpressure, persistence.

use std::time::Duration;

use bento_client::ClientError;
use bento_protocol::{ErrorCode, InvokeToken, SessionToken};
use sha2::{Digest, Sha256};

use crate::harness::{FAST_MANIFEST, TestBox, code, message};

/// 100 MiB in 1 MiB chunks, each starting with its index, so loss,
/// duplication and reordering all change the checksum.
const HUNDRED_MIB: &str = r#"
import struct
def main(chunks):
    body = bytes(range(256)) * 4096
    for i in range(chunks):
        api.send(struct.pack(">I", i) + body[4:])
"#;

fn expected_digest(chunks: u32) -> Vec<u8> {
    let body: Vec<u8> = (0..=255u8).cycle().take(1024 * 1024).collect();
    let mut hasher = Sha256::new();
    for i in 0..chunks {
        hasher.update(i.to_be_bytes());
        hasher.update(&body[4..]);
    }
    hasher.finalize().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_of_output_arrives_complete_and_in_order() {
    let bx = TestBox::fast(&[]);
    let (output, result) = bx
        .run_with_manifest(HUNDRED_MIB, FAST_MANIFEST, "[100]")
        .await;
    result.unwrap();
    assert_eq!(output.len(), 100 * 1024 * 1024);
    assert_eq!(Sha256::digest(&output).to_vec(), expected_digest(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detach_right_after_the_last_byte_of_a_finished_function_succeeds() {
    // The function has ended and its End is on the wire, unread, when the
    // client detaches: the acknowledgement lets the box forget the session
    // before it sees the Detach. Nothing is lost, so the detach succeeds.
    let bx = TestBox::start(&[]);
    let token = bx.store("def main():\n    api.send(b'all of it')\n").await;
    for _ in 0..5 {
        let session = bx.invoke(&token, "[]").await;
        let mut attachment = bx.connect().await.attach(&session, None).await.unwrap();
        let data = attachment.next().await.unwrap().expect("the output");
        assert_eq!(&data[..], b"all of it");
        // Let the function end and its End arrive.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(attachment.detach().await.unwrap(), 9);
    }
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_survive_a_detach_halfway_and_a_re_attach() {
    let bx = TestBox::fast(&[]);
    let token = bx.store_fast(HUNDRED_MIB).await;
    let session = bx.invoke(&token, "[100]").await;
    let mut hasher = Sha256::new();
    let mut received = 0u64;

    let mut first = bx.connect().await.attach(&session, None).await.unwrap();
    while received < 50 * 1024 * 1024 {
        let data = first.next().await.unwrap().expect("output before the end");
        received += data.len() as u64;
        hasher.update(&data);
    }
    let offset = first.detach().await.unwrap();
    assert_eq!(offset, received);

    // While detached the function keeps running until the buffer is full.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut second = bx.connect().await.attach(&session, None).await.unwrap();
    assert_eq!(
        second.offset(),
        received,
        "resumes exactly where the client stopped reading"
    );
    while let Some(data) = second.next().await.unwrap() {
        received += data.len() as u64;
        hasher.update(&data);
    }
    second.close().await;
    assert_eq!(received, 100 * 1024 * 1024);
    assert_eq!(hasher.finalize().to_vec(), expected_digest(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_sent_but_never_acknowledged_is_sent_again_after_a_dropped_connection() {
    let bx = TestBox::start(&[]);
    let token = bx
        .store("def main():\n    for i in range(10):\n        api.send(str(i))\n    api.recv()\n")
        .await;
    let session = bx.invoke(&token, "[]").await;
    // Read from a raw attachment and vanish without acknowledging.
    {
        let mut attachment = bx.connect().await.attach(&session, None).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 10 {
            got.extend_from_slice(&attachment.next().await.unwrap().unwrap());
        }
        assert_eq!(got, b"0123456789");
        // Dropped here: the first next() acknowledged some chunks, the last
        // ones were never acknowledged.
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Re-attach from the start of what the box still holds, then resume
    // from an explicit offset within it.
    let attachment = bx.connect().await.attach(&session, None).await.unwrap();
    let held_from = attachment.offset();
    assert!(held_from <= 10, "{held_from}");
    attachment.close().await;
    let mut attachment = bx
        .connect()
        .await
        .attach(&session, Some(held_from))
        .await
        .unwrap();
    let input = attachment.input();
    let mut tail = Vec::new();
    while (tail.len() as u64) < 10 - held_from {
        tail.extend_from_slice(&attachment.next().await.unwrap().unwrap());
    }
    assert_eq!(tail, &b"0123456789"[held_from as usize..]);
    input
        .send(bytes::Bytes::from_static(b"done"))
        .await
        .unwrap();
    assert!(attachment.next().await.unwrap().is_none());
    attachment.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_output_buffer_blocks_the_function_without_losing_or_killing_it() {
    // 64 KiB of buffer, 2 MiB of output, nobody attached for a while.
    let bx = TestBox::start(&["--output-buffer-kib", "64"]);
    let token = bx
        .store("def main():\n    for i in range(2048):\n        api.send(i.to_bytes(2, 'big') * 512)\n")
        .await;
    let session = bx.invoke(&token, "[]").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        bx.metric("bento_instances_running").await,
        1.0,
        "the blocked function is alive"
    );
    let (output, result) = bx.read_all(&session).await;
    result.unwrap();
    assert_eq!(output.len(), 2048 * 1024);
    for (i, chunk) in output.chunks(1024).enumerate() {
        assert_eq!(&chunk[..2], &(i as u16).to_be_bytes(), "chunk {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_session_stays_attachable_until_its_output_is_read() {
    let bx = TestBox::start(&[]);
    let token = bx.store("def main():\n    api.send('kept')\n").await;
    let session = bx.invoke(&token, "[]").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (output, result) = bx.read_all(&session).await;
    result.unwrap();
    assert_eq!(output, b"kept");
    // Read to the end and acknowledged: the box forgets it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = bx.connect().await.attach(&session, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Remote {
                code: ErrorCode::UnknownSession,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_finished_sessions_expire_after_the_retention_time() {
    let bx = TestBox::start(&["--session-retention-secs", "1"]);
    let token = bx.store("def main():\n    api.send('never read')\n").await;
    let session = bx.invoke(&token, "[]").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = bx.connect().await.attach(&session, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Remote {
                code: ErrorCode::UnknownSession,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(bx.metric("bento_sessions").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_functions_survive_kill_9_of_the_box() {
    let mut bx = TestBox::start(&[]);
    let token = bx
        .store("def main(x):\n    api.send('still here ' + x)\n")
        .await;
    let old_workers = bx.worker_pids();
    assert!(!old_workers.is_empty());
    bx.kill9_and_restart();
    // Workers never outlive their server: they exit when its pipe closes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while old_workers
        .iter()
        .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "workers {old_workers:?} outlived their server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let session = bx.invoke(&token, "[\"after restart\"]").await;
    let (output, result) = bx.read_all(&session).await;
    result.unwrap();
    assert_eq!(output, b"still here after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tokens_get_typed_errors_and_the_box_keeps_serving() {
    let bx = TestBox::start(&[]);
    let mut conn = bx.connect().await;
    let err = conn
        .invoke(&InvokeToken::generate().unwrap(), "main", "[]")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Remote {
                code: ErrorCode::UnknownInvokeToken,
                ..
            }
        ),
        "{err}"
    );
    let err = conn
        .kill(&SessionToken::generate().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Remote {
                code: ErrorCode::UnknownSession,
                ..
            }
        ),
        "{err}"
    );
    let err = bx
        .connect()
        .await
        .attach(&SessionToken::generate().unwrap(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Remote {
                code: ErrorCode::UnknownSession,
                ..
            }
        ),
        "{err}"
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_returns_each_message_and_an_empty_bytes_at_end_of_input() {
    let bx = TestBox::start(&[]);
    let token = bx
        .store(
            "def main():\n    api.send(repr(api.poll()))\n    got = []\n    while True:\n        m = api.recv()\n        got.append(m)\n        if not m:\n            break\n    api.send(repr(got))\n",
        )
        .await;
    let session = bx.invoke(&token, "[]").await;
    let mut attachment = bx.connect().await.attach(&session, None).await.unwrap();
    let first = attachment.next().await.unwrap().unwrap();
    assert_eq!(first, "False");
    let input = attachment.input();
    input.send(bytes::Bytes::from_static(b"one")).await.unwrap();
    input
        .send(bytes::Bytes::from(vec![b'x'; 3 * 1024 * 1024]))
        .await
        .unwrap();
    input.end().await.unwrap();
    let mut rest = Vec::new();
    while let Some(data) = attachment.next().await.unwrap() {
        rest.extend_from_slice(&data);
    }
    attachment.close().await;
    let expected = format!(
        "[b'one', b'{x}', b'{x}', b'{x}', b'']",
        x = "x".repeat(1024 * 1024)
    );
    assert_eq!(String::from_utf8(rest).unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_and_syntax_errors_reach_the_client_as_python_tracebacks() {
    let bx = TestBox::start(&[]);
    let (output, result) = bx
        .run("def helper(x):\n    raise ValueError('bad ' + x)\n\ndef main(x):\n    api.send('before')\n    helper(x)\n", "[\"input\"]")
        .await;
    assert_eq!(
        output, b"before",
        "output sent before the exception is delivered"
    );
    assert_eq!(code(&result), ErrorCode::FunctionException);
    let traceback = message(&result);
    assert!(
        traceback.contains("Traceback (most recent call last)"),
        "{traceback}"
    );
    assert!(
        traceback.contains("File \"test.py\", line 2, in helper"),
        "{traceback}"
    );
    assert!(traceback.contains("ValueError: bad input"), "{traceback}");
    assert!(
        !traceback.contains("bento_runtime"),
        "runner frames are hidden: {traceback}"
    );

    let err = bx
        .connect()
        .await
        .store("test.py", "def main(:\n    pass\n")
        .await
        .unwrap_err();
    let ClientError::Remote { code, message } = err else {
        panic!("{err}")
    };
    assert_eq!(code, ErrorCode::InvalidFunction);
    assert!(message.contains("SyntaxError"), "{message}");
    assert!(message.contains("line 1"), "{message}");
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_point_is_selectable_and_a_missing_one_is_reported() {
    let bx = TestBox::start(&[]);
    let token = bx
        .store("def main():\n    api.send('main')\n\ndef other(a, b):\n    api.send(str(a + b))\n")
        .await;
    let session = bx
        .connect()
        .await
        .invoke(&token, "other", "[9, 10]")
        .await
        .unwrap();
    let (output, result) = bx.read_all(&session).await;
    result.unwrap();
    assert_eq!(output, b"19");
    let session = bx
        .connect()
        .await
        .invoke(&token, "nope", "[]")
        .await
        .unwrap();
    let (_, result) = bx.read_all(&session).await;
    assert_eq!(code(&result), ErrorCode::FunctionException);
    assert!(
        message(&result).contains("no function named 'nope'"),
        "{}",
        message(&result)
    );
    let err = bx
        .connect()
        .await
        .invoke(&token, "main", "{\"not\": \"a list\"}")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Remote {
                code: ErrorCode::InvalidArguments,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_stdlib_modules_are_importable() {
    let bx = TestBox::start(&[]);
    let modules = [
        "json",
        "zlib",
        "hashlib",
        "base64",
        "struct",
        "re",
        "random",
        "time",
        "datetime",
        "collections",
        "itertools",
        "functools",
        "math",
        "io",
        "dataclasses",
        "typing",
        "string",
        "heapq",
        "bisect",
        "uuid",
        "html",
        "urllib.parse",
        "textwrap",
        "enum",
        "copy",
        "operator",
        "statistics",
        "fractions",
        "decimal",
        "binascii",
        "hmac",
        "secrets",
        "gzip",
        "csv",
        "array",
        "contextlib",
        "html.parser",
        "difflib",
        "pprint",
        "unicodedata",
        "ipaddress",
        "calendar",
        "codecs",
        "abc",
    ];
    let source = format!(
        "import importlib\ndef main():\n    for name in {modules:?}:\n        importlib.import_module(name)\n    import zlib, hashlib, json\n    api.send(json.dumps([zlib.crc32(b'bento'), hashlib.sha256(b'bento').hexdigest()[:8]]))\n"
    );
    let (output, result) = bx.run(&source, "[]").await;
    result.unwrap();
    let expected = format!(
        "[{}, \"{}\"]",
        crc32(b"bento"),
        &hex::encode(Sha256::digest(b"bento"))[..8]
    );
    assert_eq!(String::from_utf8(output).unwrap(), expected);
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_have_no_filesystem_environment_or_sockets() {
    let bx = TestBox::start(&[]);
    let source = r#"
import os
def main():
    found = []
    # `socket` is the runtime's shim over api.connect: without the connect
    # capability it connects nowhere.
    no_socket = lambda: __import__('socket').create_connection(('127.0.0.1', 9))
    for attempt in (lambda: open('/etc/passwd').read(), lambda: os.listdir('/'), no_socket):
        try:
            attempt()
            found.append('allowed')
        except Exception as e:
            found.append(type(e).__name__)
    found.append(repr(dict(os.environ)))
    api.send(' '.join(found))
"#;
    let (output, result) = bx.run(source, "[]").await;
    result.unwrap();
    let text = String::from_utf8(output).unwrap();
    assert!(!text.contains("allowed"), "{text}");
    assert!(text.ends_with("{}"), "no environment: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_status_contain_no_tokens_arguments_or_sources() {
    let bx = TestBox::start(&[]);
    let secret_arg = "argument-7f3a9c";
    let secret_source = "def main(x):\n    api.send('source-5e1b2d ' + x)\n";
    let mut conn = bx.connect().await;
    let (function_id, token) = conn.store("test.py", secret_source).await.unwrap();
    let session = conn
        .invoke(&token, "main", &format!("[\"{secret_arg}\"]"))
        .await
        .unwrap();
    let (output, result) = bx.read_all(&session).await;
    result.unwrap();
    assert_eq!(output, format!("source-5e1b2d {secret_arg}").as_bytes());
    let status = bx.connect().await.status().await.unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = bx.log();
    assert!(
        log.contains("stored a function"),
        "the log is captured: {log}"
    );
    for (what, needle) in [
        ("invoke token", token.to_hex()),
        ("session token", session.to_hex()),
        ("function id", function_id.to_hex()),
        ("argument", secret_arg.to_string()),
        ("source", "source-5e1b2d".to_string()),
    ] {
        assert!(!log.contains(&needle), "the log leaks the {what}: {log}");
        assert!(
            !status.contains(&needle),
            "status leaks the {what}: {status}"
        );
    }
    // No client port appears in the log (only the box's own listen and
    // metrics addresses).
    let own = [bx.addr.clone(), bx.metrics_addr.clone()];
    for line in log.lines() {
        if let Some(pos) = line.find("127.0.0.1:") {
            assert!(
                own.iter().any(|own| line[pos..].starts_with(own)),
                "a peer address is logged: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printed_lines_reach_the_client_while_the_function_waits_for_input() {
    let bx = TestBox::start(&[]);
    let token = bx
        .store("def main():\n    print('what is your name?')\n    name = api.recv()\n    print('hello', name.decode())\n")
        .await;
    let session = bx.invoke(&token, "[]").await;
    let mut attachment = bx.connect().await.attach(&session, None).await.unwrap();
    let mut prompt = Vec::new();
    while !prompt.ends_with(b"\n") {
        prompt.extend_from_slice(
            &attachment
                .next()
                .await
                .unwrap()
                .expect("the prompt before the end"),
        );
    }
    assert_eq!(prompt, b"what is your name?\n");
    attachment
        .input()
        .send(bytes::Bytes::from_static(b"bento"))
        .await
        .unwrap();
    let mut rest = Vec::new();
    while let Some(data) = attachment.next().await.unwrap() {
        rest.extend_from_slice(&data);
    }
    attachment.close().await;
    assert_eq!(rest, b"hello bento\n");
}
