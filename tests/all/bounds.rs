//! What one anonymous client can hold on a box is bounded (issue 11, items
//! 2 and 3): connections, the time a frame may take, and the output-buffer
//! reservations of sessions nobody reads. Each test checks that the next
//! user is still served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bento_client::ClientError;
use bento_protocol::{ErrorCode, Frame, FrameDecoder, PROTOCOL_VERSION};
use bytes::BytesMut;

use crate::harness::TestBox;

/// Every frame the box sends on `stream` until it closes it.
fn frames_until_closed(stream: &mut TcpStream) -> Vec<Frame> {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = BytesMut::new();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    buf.extend_from_slice(&bytes);
    let mut decoder = FrameDecoder::default();
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        frames.push(frame);
    }
    frames
}

/// Send `bytes` one at a time, `gap` apart, until the box closes the
/// connection (it answers or shuts it); returns how many were sent, or
/// `None` if all were sent and the connection is still open.
fn trickle(stream: &mut TcpStream, bytes: &[u8], gap: Duration) -> Option<usize> {
    stream.set_read_timeout(Some(gap)).unwrap();
    for (sent, byte) in bytes.iter().enumerate() {
        if stream.write_all(std::slice::from_ref(byte)).is_err() {
            return Some(sent);
        }
        let mut peek = [0u8; 1];
        match stream.peek(&mut peek) {
            // The box answered (its timeout error) or closed.
            Ok(_) => return Some(sent + 1),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(sent + 1),
        }
    }
    None
}

fn hello() -> Vec<u8> {
    Frame::Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
    }
    .to_bytes()
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_a_frame_is_disconnected_at_the_frame_deadline() {
    let bx = TestBox::start(&["--read-timeout-secs", "2"]);
    let mut stream = TcpStream::connect(&bx.addr).unwrap();
    stream.write_all(&hello()).unwrap();
    let welcome = {
        let mut buf = BytesMut::new();
        let mut decoder = FrameDecoder::default();
        let mut piece = [0u8; 4096];
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        loop {
            if let Some(frame) = decoder.decode(&mut buf).unwrap() {
                break frame;
            }
            let n = stream.read(&mut piece).unwrap();
            assert!(n > 0, "the box closed before Welcome");
            buf.extend_from_slice(&piece[..n]);
        }
    };
    assert!(matches!(welcome, Frame::Welcome { .. }), "{welcome:?}");
    // A Store frame, one byte every 1.5 s: each read comes well within
    // the 2 s read timeout, which used to restart the timer forever.
    let store = Frame::Store {
        filename: "slow.py".into(),
        source: "def main():\n    pass\n".repeat(20),
        manifest: String::new(),
        lifetime_s: None,
    }
    .to_bytes();
    let sent = trickle(&mut stream, &store, Duration::from_millis(1500));
    let sent = sent.expect("the box kept a trickling client for the whole frame");
    assert!(
        sent < 10,
        "disconnected only after {sent} bytes (15 s at that pace)"
    );
    let frames = frames_until_closed(&mut stream);
    assert!(
        matches!(
            frames.as_slice(),
            [Frame::Error {
                code: ErrorCode::Timeout,
                ..
            }]
        ),
        "{frames:?}"
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prototype_client_trickling_a_request_is_disconnected_at_its_deadline() {
    let bx = TestBox::start(&["--read-timeout-secs", "2", "--legacy-listen", "127.0.0.1:0"]);
    let mut stream = TcpStream::connect(bx.legacy_addr.as_ref().unwrap()).unwrap();
    // A Store request (type 0) announcing 100 bytes, sent a byte at a time.
    let mut request = vec![0u8];
    request.extend_from_slice(&100u32.to_be_bytes());
    request.extend_from_slice(&[b' '; 100]);
    let sent = trickle(&mut stream, &request, Duration::from_millis(1500));
    let sent = sent.expect("the box kept a trickling client for the whole request");
    assert!(
        sent < 10,
        "disconnected only after {sent} bytes (15 s at that pace)"
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused_while_existing_users_are_served() {
    let bx = TestBox::start(&["--max-connections", "3"]);
    let mut user = bx.connect().await;
    // Two idle connections fill the cap.
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&bx.addr).unwrap())
        .collect();
    // Give the box a moment to accept them (they hold their slots from
    // accept on); a refused connection is then told why and closed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let mut extra = TcpStream::connect(&bx.addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut first = [0u8; 1];
        match extra.peek(&mut first) {
            Ok(n) if n > 0 => break frames_until_closed(&mut extra),
            _ if Instant::now() < deadline => {
                // Accepted (a slot was still free): close and try again.
                drop(extra);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("a connection beyond the cap was not refused: {other:?}"),
        }
    };
    assert!(
        matches!(
            refused.as_slice(),
            [Frame::Error {
                code: ErrorCode::TooManyConnections,
                ..
            }]
        ),
        "{refused:?}"
    );
    // The user who was already connected is served as usual.
    let (_, token) = user
        .store("test.py", "def main():\n    api.send('still served')\n")
        .await
        .unwrap();
    let session = user.invoke(&token, "main", "[]").await.unwrap();
    let mut attachment = user.attach(&session, None).await.unwrap();
    let mut output = Vec::new();
    while let Some(data) = attachment.next().await.unwrap() {
        output.extend_from_slice(&data);
    }
    attachment.close().await;
    assert_eq!(output, b"still served");
    // Once the idle connections go, every slot comes back and a new user
    // gets in.
    drop(idle);
    assert_slots_are_freed_and_the_next_user_served(&bx, 3).await;
}

/// Open connections to `bx` (each greeted with `Welcome`) until one is
/// refused with `too_many_connections`; returns how many were let in. The
/// connections let in are held until the end, so the count is the cap
/// (less any connection the caller already holds).
async fn connections_until_refused(bx: &TestBox) -> usize {
    let mut held = Vec::new();
    loop {
        match bento_client::Connection::connect(&bx.target()).await {
            Ok(connection) => held.push(connection),
            Err(ClientError::Remote {
                code: ErrorCode::TooManyConnections,
                ..
            }) => return held.len(),
            Err(e) => panic!("a connection failed for another reason: {e}"),
        }
        assert!(held.len() <= 64, "no cap was enforced");
    }
}

/// The default policy with `[box] max_connections = cap`.
fn policy_with_connection_cap(cap: u64) -> String {
    let line = "max_connections = 4096      # client connections open at once\n";
    assert!(bento_policy::DEFAULT_POLICY_TOML.contains(line));
    bento_policy::DEFAULT_POLICY_TOML.replace(line, &format!("max_connections = {cap}\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policys_connection_cap_is_enforced_and_the_option_overrides_it() {
    let bx = TestBox::with_policy(&policy_with_connection_cap(3), &[]);
    assert_eq!(connections_until_refused(&bx).await, 3);
    assert_slots_are_freed_and_the_next_user_served(&bx, 3).await;
    drop(bx);
    let bx = TestBox::with_policy(&policy_with_connection_cap(3), &["--max-connections", "5"]);
    assert_eq!(connections_until_refused(&bx).await, 5, "the option wins");
    assert_slots_are_freed_and_the_next_user_served(&bx, 5).await;
}

/// The connections `connections_until_refused` held are closed. The box
/// frees a slot when it notices a close, which happens asynchronously: until
/// then a new user may be refused with `too_many_connections` (and nothing
/// else). Every slot comes back, and a new user is served.
async fn assert_slots_are_freed_and_the_next_user_served(bx: &TestBox, cap: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let connect = || async {
        loop {
            match bento_client::Connection::connect(&bx.target()).await {
                Ok(connection) => return connection,
                Err(ClientError::Remote {
                    code: ErrorCode::TooManyConnections,
                    ..
                }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("a new user was not let in after the closes: {e}"),
            }
        }
    };
    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(connect().await);
    }
    drop(held);
    let mut conn = connect().await;
    let (_, token) = conn
        .store(
            "test.py",
            "def main(name):\n    api.send('hello ' + name)\n",
        )
        .await
        .unwrap();
    let session = conn
        .invoke(&token, "main", "[\"next user\"]")
        .await
        .unwrap();
    let output = connect().await.attach(&session, None).await.unwrap();
    assert_eq!(output.read_to_end().await.unwrap(), b"hello next user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sessions_nobody_reads_do_not_lock_out_the_next_user() {
    // Room for four 1 MiB output buffers. Each session used to keep its
    // whole buffer reserved until it expired (10 min), so the fifth
    // invocation whose output nobody read was refused with
    // buffer_cap_reached; now a finished session keeps only its unread
    // bytes (here a few) reserved.
    let bx = TestBox::start(&["--max-buffered-mib", "4"]);
    let token = bx.store("def main(i):\n    api.send(str(i))\n").await;
    let mut conn = bx.connect().await;
    for i in 0..300 {
        // While four are still running the cap is reached for a moment;
        // that must pass as they end.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match conn.invoke(&token, "main", &format!("[{i}]")).await {
                Ok(_) => break,
                Err(ClientError::Remote {
                    code: ErrorCode::BufferCapReached | ErrorCode::TooManyInstances,
                    ..
                }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("invocation {i} was refused: {e}"),
            }
        }
    }
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_that_never_acknowledges_lets_go_when_the_session_expires() {
    let bx = TestBox::start(&["--session-retention-secs", "1"]);
    let token = bx
        .store("def main():\n    api.send('never acknowledged')\n")
        .await;
    let session = bx.invoke(&token, "[]").await;
    // A client that attaches, reads everything and never acknowledges: it
    // used to keep the finished session (and its reserved output) for as
    // long as it stayed connected.
    let mut stream = TcpStream::connect(&bx.addr).unwrap();
    stream.write_all(&hello()).unwrap();
    stream
        .write_all(
            &Frame::Attach {
                session_token: session,
                resume_from: None,
            }
            .to_bytes(),
        )
        .unwrap();
    let frames = frames_until_closed(&mut stream);
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::Output { data } if &data[..] == b"never acknowledged")),
        "{frames:?}"
    );
    assert!(frames.iter().any(|f| matches!(f, Frame::End)), "{frames:?}");
    assert!(
        matches!(
            frames.last(),
            Some(Frame::Error {
                code: ErrorCode::UnknownSession,
                ..
            })
        ),
        "the attachment was not let go at the retention time: {frames:?}"
    );
    bx.assert_serves_hello().await;
}
