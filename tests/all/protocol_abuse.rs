//! Malformed, oversized and stalled input on the wire.

use std::time::Duration;

use bento_protocol::{ErrorCode, Frame, FrameDecoder, PROTOCOL_VERSION};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::TestBox;

/// Send `bytes`, then read until the box closes; returns the frames it sent.
async fn exchange(bx: &TestBox, bytes: &[u8]) -> Vec<Frame> {
    let mut stream = TcpStream::connect(&bx.addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut buf = BytesMut::new();
    let read_all = async {
        loop {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the box closes the connection");
    let mut decoder = FrameDecoder::default();
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        frames.push(frame);
    }
    frames
}

fn hello() -> Vec<u8> {
    Frame::Hello {
        min_version: 1,
        max_version: PROTOCOL_VERSION,
    }
    .to_bytes()
    .to_vec()
}

fn last_error(frames: &[Frame]) -> ErrorCode {
    match frames.last() {
        Some(Frame::Error { code, .. }) => *code,
        other => panic!("expected an error frame last, got {other:?} in {frames:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_get_an_error_frame_and_a_close() {
    let bx = TestBox::start(&[]);
    let frames = exchange(&bx, b"GET / HTTP/1.1\r\nHost: box\r\n\r\n").await;
    assert_eq!(last_error(&frames), ErrorCode::FrameTooLarge);
    let frames = exchange(&bx, &[0, 0, 0, 3, 0x01, b'N', b'O']).await;
    assert_eq!(last_error(&frames), ErrorCode::MalformedFrame);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_declaring_four_gib_is_refused_without_waiting_for_it() {
    let bx = TestBox::start(&[]);
    let mut bytes = hello();
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x10]);
    let frames = exchange(&bx, &bytes).await;
    assert!(
        matches!(frames.first(), Some(Frame::Welcome { .. })),
        "{frames:?}"
    );
    assert_eq!(last_error(&frames), ErrorCode::FrameTooLarge);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_frame_followed_by_silence_times_out() {
    let bx = TestBox::start(&["--read-timeout-secs", "1"]);
    let mut bytes = hello();
    bytes.extend_from_slice(&[0, 0, 0, 100, 0x10, 1, 2]); // 93 bytes never come
    let frames = exchange(&bx, &bytes).await;
    assert_eq!(last_error(&frames), ErrorCode::Timeout);
    // Also in the attached state, where idling is allowed but stalling
    // inside a frame is not.
    let token = bx.store("def main():\n    api.recv()\n").await;
    let session = bx.invoke(&token, "[]").await;
    let mut bytes = hello();
    bytes.extend_from_slice(
        &Frame::Attach {
            session_token: session.clone(),
            resume_from: None,
        }
        .to_bytes(),
    );
    bytes.extend_from_slice(&[0, 0, 0, 50, 0x21, 1]);
    let frames = exchange(&bx, &bytes).await;
    assert_eq!(last_error(&frames), ErrorCode::Timeout);
    bx.connect().await.kill(&session).await.unwrap();
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_ordering_mistakes_get_typed_errors() {
    let bx = TestBox::start(&[]);
    let frames = exchange(
        &bx,
        &Frame::Hello {
            min_version: 7,
            max_version: 9,
        }
        .to_bytes(),
    )
    .await;
    assert_eq!(last_error(&frames), ErrorCode::UnsupportedVersion);
    let frames = exchange(&bx, &Frame::StatusRequest.to_bytes()).await;
    assert_eq!(last_error(&frames), ErrorCode::UnexpectedFrame);
    let mut bytes = hello();
    bytes.extend_from_slice(&Frame::End.to_bytes());
    let frames = exchange(&bx, &bytes).await;
    assert_eq!(last_error(&frames), ErrorCode::UnexpectedFrame);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_like_file_names_are_refused() {
    let bx = TestBox::start(&[]);
    for name in ["../../etc/passwd", "/abs.py", ".hidden.py", "a/b.py", ""] {
        let err = bx.connect().await.store(name, "x = 1").await.unwrap_err();
        assert!(
            matches!(
                err,
                bento_client::ClientError::Remote {
                    code: ErrorCode::InvalidFunction,
                    ..
                }
            ),
            "{name}: {err}"
        );
    }
    bx.assert_serves_hello().await;
}
