//! Traffic-analysis defenses at the box (docs/protocol.md#padding,
//! docs/policy.md#shaping): Padding frames, negotiated so that older clients
//! never see one; sessions shaped by Maybenot defenses chosen at invoke and
//! bounded by policy; the client's own padding; a constant-rate wire while
//! the function stalls; and no trace of the defense outside the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bento_client::{ClientError, Connection, Defense};
use bento_protocol::{
    ErrorCode, Frame, FrameDecoder, FrameType, InvokeToken, PADDING_VERSION, PROTOCOL_VERSION,
    SessionToken,
};
use bento_shaping::CELL_LEN;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::TestBox;

/// A function may sleep (to stall like a slow origin) under this manifest.
const TIME_MANIFEST: &str = "version = 1\ncapabilities = [\"time\"]\n";

/// Sends `n` bytes in 16 KiB pieces.
const BULK: &str = "def main(n):\n    while n > 0:\n        k = min(n, 16384)\n        api.send(b'x' * k)\n        n -= k\n";

/// A raw protocol client: what a client that predates padding (or a
/// hostile one) puts on the wire, and every byte the box sends back.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl Raw {
    /// Connect and say Hello offering `min..=max`; returns the client and
    /// the version the box chose.
    async fn hello(bx: &TestBox, min: u16, max: u16) -> (Self, u16) {
        let stream = TcpStream::connect(&bx.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut raw = Self {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::default(),
        };
        raw.send(&Frame::Hello {
            min_version: min,
            max_version: max,
        })
        .await;
        match raw.recv().await {
            Frame::Welcome { version, .. } => (raw, version),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    async fn send(&mut self, frame: &Frame) {
        self.stream.write_all(&frame.to_bytes()).await.unwrap();
    }

    async fn recv(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Some(frame) = self.decoder.decode(&mut self.buf).unwrap() {
                    return frame;
                }
                assert!(
                    self.stream.read_buf(&mut self.buf).await.unwrap() > 0,
                    "box closed"
                );
            }
        })
        .await
        .expect("the box answers within 60 s")
    }

    async fn invoke(&mut self, token: &InvokeToken, args: &str, defense: Option<&str>) -> Frame {
        self.send(&Frame::Invoke {
            invoke_token: token.clone(),
            entry: "main".into(),
            args_json: args.into(),
            defense: defense.map(str::to_owned),
        })
        .await;
        self.recv().await
    }

    /// Attach and read until End: (output bytes, Padding frames, wire
    /// bytes after Attached, (arrival, bytes) of every read).
    async fn attach_and_read(&mut self, session: &SessionToken) -> Reading {
        self.send(&Frame::Attach {
            session_token: session.clone(),
            resume_from: None,
        })
        .await;
        match self.recv().await {
            Frame::Attached { offset: 0 } => {}
            other => panic!("expected Attached, got {other:?}"),
        }
        let mut reading = Reading::default();
        reading.wire += self.buf.len() as u64;
        loop {
            while let Some(frame) = self.decoder.decode(&mut self.buf).unwrap() {
                match frame {
                    Frame::Output { data } => reading.output += data.len() as u64,
                    Frame::Padding { .. } => reading.padding_frames += 1,
                    Frame::End => {
                        reading.wire -= self.buf.len() as u64;
                        // Everything consumed: the box may forget the session.
                        self.send(&Frame::Ack {
                            offset: reading.output,
                        })
                        .await;
                        return reading;
                    }
                    other => panic!("unexpected {other:?} while attached"),
                }
            }
            let n = tokio::time::timeout(
                Duration::from_secs(120),
                self.stream.read_buf(&mut self.buf),
            )
            .await
            .expect("the shaped stream keeps flowing")
            .unwrap();
            assert!(n > 0, "the box closed before End");
            reading.wire += n as u64;
            reading.reads.push((Instant::now(), n));
        }
    }
}

#[derive(Default)]
struct Reading {
    output: u64,
    padding_frames: u64,
    /// Wire bytes from just after `Attached` up to and including `End`.
    wire: u64,
    reads: Vec<(Instant, usize)>,
}

async fn invoked(frame: Frame) -> SessionToken {
    match frame {
        Frame::Invoked { session_token, .. } => session_token,
        other => panic!("expected Invoked, got {other:?}"),
    }
}

fn refusal(frame: &Frame) -> ErrorCode {
    match frame {
        Frame::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_predates_padding_gets_version_one_and_never_a_padding_frame() {
    let bx = TestBox::fast(&[]);
    let token = bx.store_fast(BULK).await;
    let (mut old, version) = Raw::hello(&bx, 1, 1).await;
    assert_eq!(version, 1);
    let session = invoked(old.invoke(&token, "[100000]", None).await).await;
    let reading = old.attach_and_read(&session).await;
    assert_eq!(reading.output, 100_000);
    assert_eq!(reading.padding_frames, 0);

    // A new client is offered padding.
    let (_, version) = Raw::hello(&bx, 1, PROTOCOL_VERSION).await;
    assert_eq!(version, PADDING_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shaped_session_is_refused_to_a_client_that_cannot_discard_padding() {
    let bx = TestBox::fast(&[]);
    let token = bx.store_fast(BULK).await;
    let (mut new, _) = Raw::hello(&bx, 1, PROTOCOL_VERSION).await;
    let session = invoked(new.invoke(&token, "[1000]", Some("front")).await).await;
    // The session token reached a client that predates padding: it gets a
    // typed refusal, not a frame it cannot decode, nor unshaped output.
    let (mut old, _) = Raw::hello(&bx, 1, 1).await;
    old.send(&Frame::Attach {
        session_token: session.clone(),
        resume_from: None,
    })
    .await;
    assert_eq!(refusal(&old.recv().await), ErrorCode::DefenseRefused);
    // And an old connection cannot ask for a defense at all.
    let (mut old, _) = Raw::hello(&bx, 1, 1).await;
    // (A version 1 box would call this frame malformed; ours refuses it.)
    assert_eq!(
        refusal(&old.invoke(&token, "[1]", Some("front")).await),
        ErrorCode::DefenseRefused
    );
    // The session itself is intact for its rightful client.
    let reading = new.attach_and_read(&session).await;
    assert_eq!(reading.output, 1000);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_forbidden_defense_is_refused_at_invoke_and_the_box_serves_the_next_user() {
    let policy = crate::harness::fast_policy().replace(
        "defenses = [\"front\", \"tamaraw\", \"regulator\", \"constant\"]",
        "defenses = [\"front\"]",
    );
    assert!(policy.contains("defenses = [\"front\"]"));
    let bx = TestBox::with_policy(&policy, &[]);
    let token = bx.store_fast(BULK).await;
    let (mut raw, _) = Raw::hello(&bx, 1, PROTOCOL_VERSION).await;
    for name in [
        "tamaraw",
        "constant",
        "nonsense",
        "FRONT",
        "",
        &"f".repeat(255),
    ] {
        let reply = raw.invoke(&token, "[1]", Some(name)).await;
        assert_eq!(refusal(&reply), ErrorCode::DefenseRefused, "{name:?}");
        if let Frame::Error { message, .. } = &reply {
            assert!(message.len() < 200, "the refusal does not echo a long name");
        }
    }
    // The connection survives a refusal, and nothing was started.
    let session = invoked(raw.invoke(&token, "[5]", Some("front")).await).await;
    assert_eq!(raw.attach_and_read(&session).await.output, 5);

    // The library refuses a defense the box forbids the same way.
    let mut conn = bx.connect().await;
    match conn
        .invoke_with_defense(&token, "main", "[1]", Some(Defense::Regulator))
        .await
    {
        Err(ClientError::Remote {
            code: ErrorCode::DefenseRefused,
            ..
        }) => {}
        other => panic!("expected defense_refused, got {other:?}"),
    }
    bx.assert_serves_hello().await;
}

/// Invoke `main(*args)` under `defense` with a raw client and read it to
/// the end: what the client's socket saw.
async fn shaped_run(bx: &TestBox, token: &InvokeToken, defense: &str, args: &str) -> Reading {
    let (mut raw, _) = Raw::hello(bx, 1, PROTOCOL_VERSION).await;
    let session = invoked(raw.invoke(token, args, Some(defense)).await).await;
    raw.attach_and_read(&session).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_defense_delivers_the_output_exactly_with_its_padding_discarded() {
    let bx = TestBox::fast(&[]);
    let token = bx.store_fast(BULK).await;
    for defense in Defense::ALL {
        // Through the library: padding never reaches the caller.
        let mut conn = bx.connect().await;
        let (session, _) = conn
            .invoke_with_defense(&token, "main", "[50000]", Some(defense))
            .await
            .unwrap();
        let out = bx.connect().await.attach(&session, None).await.unwrap();
        let out = tokio::time::timeout(Duration::from_secs(60), out.read_to_end())
            .await
            .expect("a shaped session ends")
            .unwrap();
        assert_eq!(out.len(), 50_000, "{defense}");
        assert!(out.iter().all(|b| *b == b'x'), "{defense}");
    }
    // On the wire, a defense that pads from the start sends padding.
    let reading = shaped_run(&bx, &token, "constant", "[20000]").await;
    assert_eq!(reading.output, 20_000);
    assert!(reading.padding_frames > 0);
    bx.assert_serves_hello().await;
}

/// The fixed workload for overhead figures: a 1 MB "page" of 20 resources
/// of 50 000 bytes, one every 200 ms (4 s), as a page load trickles in.
const PAGE_SOURCE: &str = "def main():\n    for i in range(20):\n        api.send(b'p' * 50000)\n        api.sleep(0.2)\n";
const PAGE: u64 = 1_000_000;

/// Bandwidth and latency overhead of each defense on the fixed workload
/// above, counted at the client's socket. The figures go to
/// docs/benchmarks.md (run with --nocapture to see them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_defense_pads_within_its_bounds_on_a_one_megabyte_page() {
    let bx = TestBox::fast(&[]);
    let token = bx
        .try_store_with_manifest(PAGE_SOURCE, TIME_MANIFEST)
        .await
        .unwrap();
    let plain = {
        let (mut raw, _) = Raw::hello(&bx, 1, PROTOCOL_VERSION).await;
        let session = invoked(raw.invoke(&token, "[]", None).await).await;
        let started = Instant::now();
        let reading = raw.attach_and_read(&session).await;
        assert_eq!(reading.padding_frames, 0);
        assert_eq!(reading.output, PAGE);
        (reading.wire, started.elapsed())
    };
    eprintln!(
        "shaping overhead, 1 MB page: none: {} wire bytes in {:.2} s",
        plain.0,
        plain.1.as_secs_f64()
    );
    for defense in Defense::ALL {
        let started = Instant::now();
        let reading = shaped_run(&bx, &token, defense.name(), "[]").await;
        let took = started.elapsed();
        assert_eq!(reading.output, PAGE, "{defense}");
        let overhead = reading.wire as f64 / plain.0 as f64 - 1.0;
        eprintln!(
            "shaping overhead, 1 MB page: {defense}: {} wire bytes ({:+.1}%), {} padding frames, {:.2} s",
            reading.wire,
            overhead * 100.0,
            reading.padding_frames,
            took.as_secs_f64()
        );
        // Each defense's padding is bounded by its published budget or
        // rate: FRONT by 1700 cells (0.87 MB), the paced ones by the
        // length of the session; none may triple a page this size.
        assert!(overhead < 2.0, "{defense}: {overhead}");
    }
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_stays_constant_rate_while_the_function_stalls_two_seconds() {
    let bx = TestBox::fast(&[]);
    let source = "def main():\n    api.send(b'a' * 20000)\n    api.sleep(2.0)\n    api.send(b'b' * 20000)\n    api.sleep(1.25)\n";
    let token = bx
        .try_store_with_manifest(source, TIME_MANIFEST)
        .await
        .unwrap();
    let reading = shaped_run(&bx, &token, "constant", "[]").await;
    assert_eq!(reading.output, 40_000);
    // The constant defense sends one cell per 10 ms: 25 600 bytes per
    // 500 ms interval. Counted at this socket, per interval, from the
    // first read on; the last (partial) interval is left out.
    const INTERVAL: Duration = Duration::from_millis(500);
    let rate = (CELL_LEN as u64) * 50;
    let first = reading.reads[0].0;
    let mut counts = vec![0u64; 1];
    for (at, n) in &reading.reads {
        let i = (at.duration_since(first).as_millis() / INTERVAL.as_millis()) as usize;
        if counts.len() <= i {
            counts.resize(i + 1, 0);
        }
        counts[i] += *n as u64;
    }
    // The last interval holds the End and is cut short by it.
    counts.pop();
    eprintln!("constant-rate wire, bytes per 500 ms: {counts:?}");
    // The run lasts about 3.25 s (2 s of stall, 1.25 s of tail, so that
    // the End falls inside an interval); the 40 000 output bytes take
    // 0.8 s of cells.
    assert!(counts.len() >= 5, "{counts:?}");
    // Tolerance: one cell per interval either way (a cell written on one
    // side of an interval's edge is read on the other), and the first
    // interval also holds the Attached reply's leftovers.
    let tolerance = CELL_LEN as u64;
    for (i, count) in counts.iter().enumerate().skip(1) {
        assert!(
            count.abs_diff(rate) <= tolerance,
            "interval {i}: {count} bytes, expected {rate} ± {tolerance}: {counts:?}"
        );
    }
    bx.assert_serves_hello().await;
}

/// Padding frames seen by a [`counting_proxy`], per direction.
#[derive(Default)]
struct PaddingCounts {
    /// Client → box.
    up: AtomicU64,
    /// Box → client.
    down: AtomicU64,
}

/// A proxy in front of `upstream` that counts the Padding frames passing
/// through, each way.
async fn counting_proxy(upstream: String) -> (String, Arc<PaddingCounts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let counts = Arc::new(PaddingCounts::default());
    let counter = counts.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let down_counter = counter.clone();
                let down = tokio::spawn(async move {
                    forward_counting(sr, cw, |n| {
                        down_counter.down.fetch_add(n, Ordering::Relaxed);
                    })
                    .await;
                });
                forward_counting(cr, sw, |n| {
                    counter.up.fetch_add(n, Ordering::Relaxed);
                })
                .await;
                let _ = down.await;
            });
        }
    });
    (addr, counts)
}

/// Copy `from` to `to` frame by frame until either closes, calling `count`
/// with the number of Padding frames (by their type byte) in each read.
async fn forward_counting(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: impl Fn(u64),
) {
    let mut buf = BytesMut::new();
    let mut header = BytesMut::new();
    loop {
        match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        header.extend_from_slice(&buf);
        let mut padding = 0;
        while header.len() >= 5 {
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if header.len() < 4 + len {
                break;
            }
            if header[4] == FrameType::Padding as u8 {
                padding += 1;
            }
            let _ = header.split_to(4 + len);
        }
        count(padding);
        if to.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
    }
    let _ = to.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pads_its_own_direction_and_the_box_discards_it() {
    let bx = TestBox::fast(&[]);
    // Echo each input message until input ends.
    let echo = "def main():\n    while True:\n        m = api.recv()\n        if not m:\n            return\n        api.send(m)\n";
    let token = bx
        .try_store_with_manifest(echo, TIME_MANIFEST)
        .await
        .unwrap();
    let (proxy, padding) = counting_proxy(bx.addr.clone()).await;
    let padding = &padding.up;
    let target = bento_client::Target {
        server: proxy,
        socks: None,
        dialer: None,
    };
    let session = Connection::connect(&target)
        .await
        .unwrap()
        .invoke(&token, "main", "[]")
        .await
        .unwrap();
    let mut attachment = Connection::connect(&target)
        .await
        .unwrap()
        .attach_shaped(&session, None, Some((Defense::Constant, 64 * 1024 * 1024)))
        .await
        .unwrap();
    let input = attachment.input();
    let mut echoed = Vec::new();
    for i in 0..20u8 {
        input.send(bytes::Bytes::from(vec![i; 1000])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    input.end().await.unwrap();
    while let Some(data) = attachment.next().await.unwrap() {
        echoed.extend_from_slice(&data);
    }
    attachment.close().await;
    // Every message came back whole and in order: padding was neither
    // input nor an acknowledgement.
    let expected: Vec<u8> = (0..20u8).flat_map(|i| vec![i; 1000]).collect();
    assert_eq!(echoed, expected);
    // About 1 s at 100 cells/s; at least a third of that, whatever the
    // machine's load.
    let sent = padding.load(Ordering::Relaxed);
    assert!(sent >= 30, "the client sent {sent} padding frames");
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_metrics_and_logs_do_not_name_a_sessions_defense() {
    let bx = TestBox::fast(&[]);
    let slow = "def main():\n    api.send(b'x' * 1000)\n    api.sleep(2.0)\n";
    let token = bx
        .try_store_with_manifest(slow, TIME_MANIFEST)
        .await
        .unwrap();
    let (mut raw, _) = Raw::hello(&bx, 1, PROTOCOL_VERSION).await;
    let before = bx.connect().await.status().await.unwrap();
    let session = invoked(raw.invoke(&token, "[]", Some("tamaraw")).await).await;
    // While the shaped session runs and is attached.
    let reader = tokio::spawn(async move { raw.attach_and_read(&session).await.output });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = bx.connect().await.status().await.unwrap();
    let metrics = bx.metrics().await;
    assert_eq!(reader.await.unwrap(), 1000);
    let log = bx.log();
    let names: Vec<&str> = Defense::ALL.iter().map(|d| d.name()).collect();
    // The status lists the defenses the policy allows, the same before and
    // during the session; apart from that list it names none.
    let allowed = |status: &serde_json::Value| status["policy"]["shaping"].clone();
    assert_eq!(allowed(&before)["defenses"], serde_json::json!(names));
    assert_eq!(allowed(&before), allowed(&during));
    let without_list = |status: &serde_json::Value| {
        let mut status = status.clone();
        status["policy"]
            .as_object_mut()
            .unwrap()
            .remove("shaping")
            .unwrap();
        status
    };
    let (before, during) = (without_list(&before), without_list(&during));
    for text in [
        before.to_string(),
        during.to_string(),
        format!("{metrics:?}"),
    ] {
        for name in &names {
            assert!(!text.contains(name), "{name} in {text}");
        }
        assert!(!text.contains("shap"), "{text}");
    }
    // (The metrics count `defense_refused` errors box-wide; that code
    // names no defense and no session.)
    for text in [before.to_string(), during.to_string()] {
        assert!(!text.contains("defense"), "{text}");
    }
    for name in &names {
        // Whole words only: the log may say "frontend" one day.
        let found = log
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .any(|word| word == *name);
        assert!(!found, "the log names {name}:\n{log}");
    }
    // The shape of the status is the same with and without the session:
    // the same keys, so nothing new appears because of a defense.
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&before), keys(&during));
}

fn bento_cli(bx: &TestBox, args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::harness::BENTO)
        .args(args)
        .env("BENTO_SERVER", &bx.addr)
        .env_remove("BENTO_SOCKS")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bento_run_defense_shapes_a_session_and_a_refused_one_exits_2() {
    let policy = crate::harness::fast_policy().replace(
        "defenses = [\"front\", \"tamaraw\", \"regulator\", \"constant\"]",
        "defenses = [\"front\", \"constant\"]",
    );
    let bx = TestBox::with_policy(&policy, &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.py");
    std::fs::write(&file, "def main(name):\n    api.send('hello ' + name)\n").unwrap();
    let file = file.display().to_string();
    let bx = Arc::new(bx);

    let run = |args: Vec<String>| {
        let bx = bx.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bento_cli(&bx, &args)
        })
    };
    let args = |defense: &str| -> Vec<String> {
        ["run", "--defense", defense, &file, "--", "world"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let out = run(args("constant")).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello world");

    let out = run(args("tamaraw")).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("defense_refused"), "{stderr}");

    let out = run(args("nonsense")).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown defense"), "{stderr}");
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padding_from_a_version_one_client_is_an_unexpected_frame_and_the_box_serves_the_next_user()
{
    let bx = TestBox::fast(&[]);
    let echo = "def main():\n    api.send(api.recv())\n";
    let token = bx.store_fast(echo).await;
    // Outside an attachment, on either version: not a request.
    let (mut raw, _) = Raw::hello(&bx, 1, PROTOCOL_VERSION).await;
    raw.send(&Frame::Padding {
        data: bytes::Bytes::from_static(&[0; 100]),
    })
    .await;
    assert_eq!(refusal(&raw.recv().await), ErrorCode::UnexpectedFrame);
    // While attached on a version 1 connection: it never negotiated it.
    let (mut old, _) = Raw::hello(&bx, 1, 1).await;
    let session = invoked(old.invoke(&token, "[]", None).await).await;
    old.send(&Frame::Attach {
        session_token: session.clone(),
        resume_from: None,
    })
    .await;
    assert!(matches!(old.recv().await, Frame::Attached { .. }));
    old.send(&Frame::Padding {
        data: bytes::Bytes::from_static(&[0; 100]),
    })
    .await;
    assert_eq!(refusal(&old.recv().await), ErrorCode::UnexpectedFrame);
    // While attached on version 2: discarded, the input after it arrives
    // whole, and the session ends normally.
    let (mut new, _) = Raw::hello(&bx, 1, PROTOCOL_VERSION).await;
    new.send(&Frame::Attach {
        session_token: session,
        resume_from: None,
    })
    .await;
    assert!(matches!(new.recv().await, Frame::Attached { .. }));
    for _ in 0..100 {
        new.send(&Frame::Padding {
            data: bytes::Bytes::from(vec![0u8; 64 * 1024]),
        })
        .await;
    }
    new.send(&Frame::Input {
        data: bytes::Bytes::from_static(b"ping"),
    })
    .await;
    assert_eq!(
        new.recv().await,
        Frame::Output {
            data: bytes::Bytes::from_static(b"ping")
        }
    );
    assert_eq!(new.recv().await, Frame::End);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padding_stops_at_the_policys_cap_and_the_output_still_arrives() {
    let policy =
        crate::harness::fast_policy().replace("max_padding_mib = 64 ", "max_padding_mib = 1 ");
    assert!(policy.contains("max_padding_mib = 1 "));
    let bx = TestBox::with_policy(&policy, &[]);
    // Idle long enough for `constant` (49 800 B/s of padding) to pass the
    // 1 MiB cap (after about 20.5 s), then send.
    let idle = "def main():\n    api.sleep(24.0)\n    api.send(b'z' * 5000)\n";
    let token = bx
        .try_store_with_manifest(idle, TIME_MANIFEST)
        .await
        .unwrap();
    let reading = shaped_run(&bx, &token, "constant", "[]").await;
    assert_eq!(reading.output, 5000);
    let padding = reading.padding_frames * CELL_LEN as u64;
    // Data cells may carry a filler frame too; whole padding cells are
    // what the cap counts, and none beyond it went out.
    let cap = 1024 * 1024;
    assert!(
        padding <= cap + 10 * CELL_LEN as u64,
        "{padding} bytes of padding against a cap of {cap}"
    );
    // The cap was reached: padding went on until it, not beyond.
    assert!(padding >= cap - 2 * CELL_LEN as u64, "{padding}");
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regulator_client_pads_in_step_with_what_it_receives() {
    let bx = TestBox::fast(&[]);
    let token = bx
        .try_store_with_manifest(PAGE_SOURCE, TIME_MANIFEST)
        .await
        .unwrap();
    let (proxy, padding) = counting_proxy(bx.addr.clone()).await;
    let padding = &padding.up;
    let target = bento_client::Target {
        server: proxy,
        socks: None,
        dialer: None,
    };
    let session = Connection::connect(&target)
        .await
        .unwrap()
        .invoke(&token, "main", "[]")
        .await
        .unwrap();
    let attachment = Connection::connect(&target)
        .await
        .unwrap()
        .attach_shaped(&session, None, Some((Defense::Regulator, 64 * 1024 * 1024)))
        .await
        .unwrap();
    let out = attachment.read_to_end().await.unwrap();
    assert_eq!(out.len() as u64, PAGE);
    // RegulaTor's client sends one cell per U = 3.95 it receives; the page
    // is ~1970 cells and the client sends nearly nothing real, so about
    // 500 padding cells. At least half that, whatever the timing.
    let sent = padding.load(Ordering::Relaxed);
    assert!(sent >= 250, "the client sent {sent} padding frames");
    eprintln!("regulator client: {sent} padding cells for a {PAGE} B page");
    bx.assert_serves_hello().await;
}

/// `bento browse` against `server`: (exit status, stdout, stderr).
fn browse_at(server: &str, args: &[String]) -> (std::process::ExitStatus, String, String) {
    let out = std::process::Command::new(crate::harness::BENTO)
        .args(["--server", server, "browse"])
        .args(args)
        .env_remove("BENTO_SOCKS")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bento_browse_defense_shapes_both_directions_and_a_forbidden_one_exits_2_and_the_box_serves_the_next_user()
 {
    use crate::browser::{Site, noise, policy, saved_files};
    let site = Site::start();
    let image = noise(60_000, 9);
    site.put(
        "/",
        "text/html",
        "<html><body><img src=\"photo.bin\"></body></html>",
    );
    site.put("/photo.bin", "application/octet-stream", image.clone());
    let rules = vec![site.rule()];
    let bx = TestBox::with_policy(
        &format!("{}[shaping]\ndefenses = [\"constant\"]\n", policy(&rules)),
        &[],
    );
    let (proxy, counts) = counting_proxy(bx.addr.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let args = |out: &str, defense: Option<&str>| -> Vec<String> {
        let mut args = vec![
            site.url("/"),
            "--pad".into(),
            "1".into(),
            "--destination".into(),
            site.rule(),
            "--out".into(),
            dir.path().join(out).display().to_string(),
        ];
        if let Some(defense) = defense {
            args.extend(["--defense".to_owned(), defense.to_owned()]);
        }
        args
    };
    let browse = |args: Vec<String>| {
        let proxy = proxy.clone();
        tokio::task::spawn_blocking(move || browse_at(&proxy, &args))
    };

    // Shaped: the page arrives byte for byte, and both directions carried
    // padding (the box's and this client's own), which neither end kept.
    let (status, stdout, stderr) = browse(args("shaped", Some("constant"))).await.unwrap();
    assert!(status.success(), "{stderr}");
    let files = saved_files(&stdout);
    let photo = files
        .get(&site.url("/photo.bin"))
        .expect("the photo is saved");
    assert_eq!(
        std::fs::read(dir.path().join("shaped").join(photo)).unwrap(),
        image
    );
    let (up, down) = (
        counts.up.load(Ordering::Relaxed),
        counts.down.load(Ordering::Relaxed),
    );
    assert!(down > 0, "the box sent no padding");
    assert!(up > 0, "the client sent no padding");

    // Forbidden by the box's policy: exit 2 with the typed error, nothing
    // saved, no page fetched for it.
    let hits = site.requests();
    let (status, _, stderr) = browse(args("refused", Some("front"))).await.unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("defense_refused"), "{stderr}");
    assert!(!dir.path().join("refused").join("index.html").exists());
    assert_eq!(site.requests(), hits, "a refused session fetched nothing");

    // The next user, unshaped, is served, and sees no padding at all.
    let before = (
        counts.up.load(Ordering::Relaxed),
        counts.down.load(Ordering::Relaxed),
    );
    let (status, stdout, stderr) = browse(args("plain", None)).await.unwrap();
    assert!(status.success(), "{stderr}");
    assert!(saved_files(&stdout).contains_key(&site.url("/photo.bin")));
    assert_eq!(
        (
            counts.up.load(Ordering::Relaxed),
            counts.down.load(Ordering::Relaxed)
        ),
        before,
        "an unshaped browse carries no padding"
    );
    bx.assert_serves_hello().await;
}

/// An HTTP server on 127.0.0.1 whose page `/` references `/slow.bin`,
/// which it answers only after `stall`: an origin that stalls mid-page.
/// Returns its port and the body of `/slow.bin`.
fn stalling_site(stall: Duration) -> (u16, Vec<u8>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let slow = crate::browser::noise(8_000, 41);
    let body = slow.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let body = body.clone();
            std::thread::spawn(move || {
                let Some(request) = crate::local_servers::read_request_head(&mut stream) else {
                    return;
                };
                let line = String::from_utf8_lossy(&request).into_owned();
                let (content_type, body) = if line.contains(" /slow.bin ") {
                    std::thread::sleep(stall);
                    ("application/octet-stream", body)
                } else {
                    (
                        "text/html",
                        b"<html><body><img src=\"slow.bin\"></body></html>".to_vec(),
                    )
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            });
        }
    });
    (port, slow)
}

/// Per connection through the proxy: (arrival, bytes) of every read from
/// the box.
type Arrivals = Arc<std::sync::Mutex<Vec<Vec<(Instant, usize)>>>>;

/// A proxy in front of `upstream` that records when the box's bytes
/// arrive, connection by connection.
async fn recording_proxy(upstream: String) -> (String, Arrivals) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let arrivals: Arrivals = Arc::default();
    let record = arrivals.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return;
            };
            server.set_nodelay(true).unwrap();
            client.set_nodelay(true).unwrap();
            let index = {
                let mut all = record.lock().unwrap();
                all.push(Vec::new());
                all.len() - 1
            };
            let record = record.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            record.lock().unwrap()[index].push((Instant::now(), n));
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = cw.shutdown().await;
                let _ = up.await;
            });
        }
    });
    (addr, arrivals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_covered_browse_keeps_the_wire_constant_rate_while_the_origin_stalls_two_seconds() {
    let (port, slow) = stalling_site(Duration::from_secs(2));
    let rule = format!("accept 127.0.0.1:{port}");
    let bx = TestBox::with_policy(
        &crate::cover::browse_policy(std::slice::from_ref(&rule)),
        &[],
    );
    let (proxy, arrivals) = recording_proxy(bx.addr.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("page");
    // 20 cells of 512 B per second for 6 s: 61 440 bytes, far below what
    // the box's pacing carries, so most of the wire is its padding.
    let args: Vec<String> = [
        format!("http://127.0.0.1:{port}/"),
        "--pad".into(),
        "16KiB".into(),
        "--out".into(),
        out.display().to_string(),
        "--destination".into(),
        rule,
        "--cover-rate".into(),
        "20".into(),
        "--cover-cell-size".into(),
        "512".into(),
        "--cover-duration".into(),
        "6s".into(),
    ]
    .into();
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || browse_at(&proxy, &args))
        .await
        .unwrap();
    assert!(status.success(), "{stdout}{stderr}");
    let files = crate::browser::saved_files(&stdout);
    let saved = files
        .iter()
        .find(|(url, _)| url.ends_with("/slow.bin"))
        .map(|(_, name)| out.join(name))
        .unwrap_or_else(|| panic!("the stalled resource is not saved: {stdout}"));
    assert_eq!(std::fs::read(saved).unwrap(), slow);

    // The attachment is the connection that carried the most.
    let reads = arrivals
        .lock()
        .unwrap()
        .iter()
        .max_by_key(|c| c.iter().map(|(_, n)| n).sum::<usize>())
        .cloned()
        .unwrap();
    // The box's pacing: one cell per 10 ms, 25 600 bytes per 500 ms,
    // counted where the client's socket would see them.
    const INTERVAL: Duration = Duration::from_millis(500);
    let rate = (CELL_LEN as u64) * 50;
    let first = reads[0].0;
    let mut counts = vec![0u64; 1];
    for (at, n) in &reads {
        let i = (at.duration_since(first).as_millis() / INTERVAL.as_millis()) as usize;
        if counts.len() <= i {
            counts.resize(i + 1, 0);
        }
        counts[i] += *n as u64;
    }
    // The last interval holds the End and is cut short by it.
    counts.pop();
    eprintln!("covered browse, wire bytes per 500 ms: {counts:?}");
    // The flow lasts 6 s, the stall 2 s of it.
    assert!(counts.len() >= 10, "{counts:?}");
    // On a quiet machine every interval is within one cell of the rate
    // (25 600 exactly, run alone). This machine also runs other builds and
    // Tor networks, and a writer woken late sends the cells it owes at
    // once (the grid does not drift), so an interval may be a few cells
    // off, and the next makes up for it: the bound is six cells (12%), far
    // from what an unpaced flow shows (measured: 0, 0, 0, then 24 816 and
    // 5 170 per interval). The first interval also holds the Attached
    // reply.
    let tolerance = 6 * CELL_LEN as u64;
    for (i, count) in counts.iter().enumerate().skip(1) {
        assert!(
            count.abs_diff(rate) <= tolerance,
            "interval {i}: {count} bytes, expected {rate} ± {tolerance}: {counts:?}"
        );
    }
    // And no drift: from the second interval on, the bytes so far stay
    // within the same bound of the schedule.
    let mut total = 0u64;
    for (k, count) in counts.iter().skip(1).enumerate() {
        total += count;
        let expected = rate * (k as u64 + 1);
        assert!(
            total.abs_diff(expected) <= tolerance,
            "after {} intervals: {total} bytes, expected {expected} ± {tolerance}: {counts:?}",
            k + 1
        );
    }
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_defense_is_bounded_by_the_policy_at_store_shapes_every_session_and_the_box_serves_the_next_user()
 {
    let policy = crate::harness::fast_policy().replace(
        "defenses = [\"front\", \"tamaraw\", \"regulator\", \"constant\"]",
        "defenses = [\"front\", \"constant\"]",
    );
    let bx = TestBox::with_policy(&policy, &[]);
    let manifest = |defense: &str| format!("{TIME_MANIFEST}defense = \"{defense}\"\n");

    // Forbidden by the policy: refused at store with `defense_refused`,
    // nothing stored. Unknown: a malformed manifest.
    match bx.try_store_with_manifest(BULK, &manifest("tamaraw")).await {
        Err(ClientError::Remote {
            code: ErrorCode::DefenseRefused,
            message,
        }) => assert!(message.contains("manifest"), "{message}"),
        other => panic!("expected defense_refused, got {other:?}"),
    }
    match bx.try_store_with_manifest(BULK, &manifest("walls")).await {
        Err(ClientError::Remote {
            code: ErrorCode::ManifestRejected,
            message,
        }) => assert!(message.contains("walls"), "{message}"),
        other => panic!("expected manifest_rejected, got {other:?}"),
    }

    // Allowed: every session is shaped, whether or not the invoke names
    // the defense, and the output arrives exactly.
    let token = bx
        .try_store_with_manifest(BULK, &manifest("constant"))
        .await
        .unwrap();
    for asked in [None, Some("constant")] {
        let (mut raw, _) = Raw::hello(&bx, 1, PROTOCOL_VERSION).await;
        let session = invoked(raw.invoke(&token, "[20000]", asked).await).await;
        let reading = raw.attach_and_read(&session).await;
        assert_eq!(reading.output, 20_000, "{asked:?}");
        assert!(reading.padding_frames > 0, "{asked:?}: not shaped");
    }
    // An invoke that names another defense (one the policy allows) is
    // refused: the manifest's is never swapped or dropped.
    let (mut raw, _) = Raw::hello(&bx, 1, PROTOCOL_VERSION).await;
    let refused = raw.invoke(&token, "[10]", Some("front")).await;
    assert_eq!(refusal(&refused), ErrorCode::DefenseRefused);

    // The status says which defenses a manifest or invoke may name.
    let status = bx.connect().await.status().await.unwrap();
    assert_eq!(
        status["policy"]["shaping"]["defenses"],
        serde_json::json!(["front", "constant"])
    );

    // The next user, unshaped, is served without padding.
    let plain = bx.store_fast(BULK).await;
    let (mut raw, _) = Raw::hello(&bx, 1, PROTOCOL_VERSION).await;
    let session = invoked(raw.invoke(&plain, "[5000]", None).await).await;
    let reading = raw.attach_and_read(&session).await;
    assert_eq!((reading.output, reading.padding_frames), (5000, 0));
    bx.assert_serves_hello().await;
}

#[test]
fn policy_check_refuses_a_manifest_defense_the_policy_does_not_allow_as_the_box_does() {
    let dir = tempfile::tempdir().unwrap();
    let default = std::process::Command::new(crate::harness::BENTO)
        .args(["policy", "default"])
        .output()
        .unwrap();
    assert!(default.status.success());
    let policy = String::from_utf8(default.stdout).unwrap().replace(
        "defenses = [\"front\", \"tamaraw\", \"regulator\", \"constant\"]",
        "defenses = [\"front\"]",
    );
    assert!(policy.contains("defenses = [\"front\"]"));
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let check = |defense: &str| {
        let manifest = dir.path().join(format!("{defense}.toml"));
        std::fs::write(&manifest, format!("version = 1\ndefense = \"{defense}\"\n")).unwrap();
        std::process::Command::new(crate::harness::BENTO)
            .args(["policy", "check"])
            .arg(&manifest)
            .arg("--policy")
            .arg(&policy_path)
            .output()
            .unwrap()
    };
    let refused = check("constant");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(
            "  - asks for a defense: this box's policy does not allow the defense constant"
        ),
        "{stderr}"
    );
    assert!(check("front").status.success());
}
