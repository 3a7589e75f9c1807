//! The research prototype's protocol, driven by a client written from its
//! description (issue 6 / docs/legacy.md), not from the server's code.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{FAST_MANIFEST, TestBox, fast_policy};

const STORE: u8 = 0;
const EXECUTE: u8 = 1;
const OPEN: u8 = 2;
const CLOSE: u8 = 3;
const FUNCTION_ERR: u8 = 4;
const ERROR: u8 = 5;
const OUTPUT: u8 = 6;
const INPUT: u8 = 7;

/// What the server sends: a response to Store/Execute, or a function message.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Response {
        kind: u8,
        error: bool,
        payload: Vec<u8>,
    },
    Message {
        kind: u8,
        id: String,
        data: Vec<u8>,
    },
}

struct Client {
    stream: TcpStream,
}

impl Client {
    fn connect(bx: &TestBox) -> Self {
        let stream = TcpStream::connect(bx.legacy_addr.as_ref().expect("--legacy-listen")).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Self { stream }
    }

    fn request(&mut self, kind: u8, body: &[u8]) {
        let mut frame = vec![kind];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        self.stream.write_all(&frame).unwrap();
    }

    /// A response (`type, error, length, payload`), whatever its type.
    fn read_response(&mut self, kind: u8) -> Reply {
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).unwrap();
        Reply::Response {
            kind,
            error: head[0] != 0,
            payload,
        }
    }

    fn read(&mut self) -> Reply {
        let mut kind = [0u8; 1];
        self.stream.read_exact(&mut kind).unwrap();
        match kind[0] {
            STORE | EXECUTE => self.read_response(kind[0]),
            _ => {
                let mut len = [0u8; 4];
                self.stream.read_exact(&mut len).unwrap();
                let len = u32::from_be_bytes(len) as usize;
                let mut body = vec![0u8; len];
                self.stream.read_exact(&mut body).unwrap();
                let id = String::from_utf8(body[..36].to_vec()).unwrap();
                Reply::Message {
                    kind: kind[0],
                    id,
                    data: body[36..].to_vec(),
                }
            }
        }
    }

    fn response(&mut self) -> Result<String, String> {
        match self.read() {
            Reply::Response {
                error: false,
                payload,
                ..
            } => Ok(String::from_utf8(payload).unwrap()),
            Reply::Response {
                error: true,
                payload,
                ..
            } => Err(String::from_utf8(payload).unwrap()),
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn store(&mut self, name: &str, code: &str) -> Result<String, String> {
        self.request(
            STORE,
            serde_json::json!({"name": name, "code": code})
                .to_string()
                .as_bytes(),
        );
        self.response()
    }

    fn execute(&mut self, call: &str, token: &str) -> Result<String, String> {
        self.request(
            EXECUTE,
            serde_json::json!({"call": call, "token": token})
                .to_string()
                .as_bytes(),
        );
        self.response()
    }

    fn input(&mut self, id: &str, data: &[u8]) {
        let mut body = id.as_bytes().to_vec();
        body.extend_from_slice(data);
        self.request(INPUT, &body);
    }

    /// Function messages until `function dead`: (kind, data) each.
    fn messages_until_dead(&mut self, id: &str) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            match self.read() {
                Reply::Message {
                    kind,
                    id: got,
                    data,
                } => {
                    assert_eq!(got, id);
                    if kind == FUNCTION_ERR {
                        assert_eq!(data, b"function dead");
                        return out;
                    }
                    out.push((kind, data));
                }
                other => panic!("expected a function message, got {other:?}"),
            }
        }
    }

    /// The box still serves a fresh prototype function on this connection.
    fn assert_serves_hello(&mut self) {
        let id = self.start("def hello():\n    api.send('hello')\n", "hello()");
        assert_eq!(
            self.messages_until_dead(&id),
            vec![(OUTPUT, b"hello".to_vec())]
        );
    }

    /// Store `code`, execute `call`, open it: the instance id.
    fn start(&mut self, code: &str, call: &str) -> String {
        let token = self.store("test", code).unwrap();
        let id = self.execute(call, &token).unwrap();
        assert_eq!(id.len(), 36);
        self.request(OPEN, id.as_bytes());
        id
    }
}

fn legacy_box(args: &[&str]) -> TestBox {
    let mut all = vec!["--legacy-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    TestBox::start(&all)
}

/// A legacy box whose prototype functions run under [`FAST_MANIFEST`]
/// (the prototype's protocol cannot carry a manifest; the operator sets one).
fn fast_legacy_box() -> (TestBox, tempfile::TempDir) {
    legacy_box_with_manifest(FAST_MANIFEST)
}

/// A legacy box under [`fast_policy`] whose prototype functions run under
/// `manifest`; keep the directory as long as the box.
fn legacy_box_with_manifest(manifest: &str) -> (TestBox, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.toml");
    std::fs::write(&path, manifest).unwrap();
    let manifest = path.display().to_string();
    let bx = TestBox::with_policy(
        &fast_policy(),
        &[
            "--legacy-listen",
            "127.0.0.1:0",
            "--legacy-manifest",
            &manifest,
        ],
    );
    (bx, dir)
}

#[test]
fn hello_and_a_return_value_arrive_as_outputs_before_function_dead() {
    let bx = legacy_box(&[]);
    let mut client = Client::connect(&bx);
    let id = client.start(
        "def hello():\n    n = api.send('hello')\n    api.send(str(n))\n",
        "hello()",
    );
    assert_eq!(
        client.messages_until_dead(&id),
        vec![(OUTPUT, b"hello".to_vec()), (OUTPUT, b"5".to_vec())]
    );
    let id = client.start("def add(a, b):\n    return a + b\n", "add(9, 10)");
    assert_eq!(
        client.messages_until_dead(&id),
        vec![(OUTPUT, b"19".to_vec())]
    );
}

#[test]
fn an_echo_loop_runs_until_stop() {
    let bx = legacy_box(&[]);
    let mut client = Client::connect(&bx);
    let code = "def echo():\n    while True:\n        m = api.recv()\n        if m == b'stop':\n            return\n        api.send(m)\n";
    let id = client.start(code, "echo()");
    for word in [&b"a"[..], b"bb", b"ccc"] {
        client.input(&id, word);
        assert_eq!(
            client.read(),
            Reply::Message {
                kind: OUTPUT,
                id: id.clone(),
                data: word.to_vec()
            }
        );
    }
    client.input(&id, b"stop");
    assert!(client.messages_until_dead(&id).is_empty());
}

#[test]
fn a_hundred_megabytes_from_one_send_arrive_as_one_output() {
    let (bx, _manifest) = fast_legacy_box();
    let mut client = Client::connect(&bx);
    let id = client.start("def big():\n    api.send(b'x' * 100_000_000)\n", "big()");
    let messages = client.messages_until_dead(&id);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0, OUTPUT);
    assert_eq!(messages[0].1.len(), 100_000_000);
    assert!(messages[0].1.iter().all(|&b| b == b'x'));
}

#[test]
fn an_exception_arrives_as_an_error_with_its_traceback() {
    let bx = legacy_box(&[]);
    let mut client = Client::connect(&bx);
    let id = client.start(
        "def bad():\n    api.send('before')\n    raise ValueError('boom')\n",
        "bad()",
    );
    let messages = client.messages_until_dead(&id);
    assert_eq!(messages[0], (OUTPUT, b"before".to_vec()));
    assert_eq!(messages[1].0, ERROR);
    let text = String::from_utf8(messages[1].1.clone()).unwrap();
    assert!(text.contains("ValueError: boom"), "{text}");
    assert!(text.contains("test.py\", line 3, in bad"), "{text}");
}

#[test]
fn output_produced_while_closed_is_delivered_on_reopen_exactly_once() {
    let bx = legacy_box(&[]);
    let mut client = Client::connect(&bx);
    let code = "import time\ndef count(n):\n    for i in range(n):\n        api.send(str(i))\n        if i % 100 == 0:\n            time.sleep(0.01)\n";
    let id = client.start(code, "count(2000)");
    let mut numbers = Vec::new();
    while numbers.len() < 50 {
        match client.read() {
            Reply::Message {
                kind: OUTPUT, data, ..
            } => numbers.push(String::from_utf8(data).unwrap()),
            other => panic!("{other:?}"),
        }
    }
    client.request(CLOSE, id.as_bytes());
    std::thread::sleep(Duration::from_millis(500));
    client.request(OPEN, id.as_bytes());
    for (kind, data) in client.messages_until_dead(&id) {
        assert_eq!(kind, OUTPUT);
        numbers.push(String::from_utf8(data).unwrap());
    }
    let expected: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
    assert_eq!(numbers, expected);
}

#[test]
fn the_instance_id_alone_opens_the_instance_from_another_connection() {
    let bx = legacy_box(&[]);
    let mut first = Client::connect(&bx);
    let token = first
        .store("test", "def f():\n    api.send(api.recv())\n")
        .unwrap();
    let id = first.execute("f()", &token).unwrap();
    let mut second = Client::connect(&bx);
    second.request(OPEN, id.as_bytes());
    second.input(&id, b"bearer");
    assert_eq!(
        second.messages_until_dead(&id),
        vec![(OUTPUT, b"bearer".to_vec())]
    );
}

#[test]
fn bad_requests_get_error_responses_and_the_connection_keeps_working() {
    let bx = legacy_box(&[]);
    let mut client = Client::connect(&bx);
    client.request(STORE, b"{not json");
    assert!(
        client
            .response()
            .unwrap_err()
            .starts_with("invalid request")
    );
    client.request(EXECUTE, b"[]");
    assert!(
        client
            .response()
            .unwrap_err()
            .starts_with("invalid request")
    );
    client.request(0x9, b"whatever");
    let mut kind = [0u8; 1];
    client.stream.read_exact(&mut kind).unwrap();
    assert_eq!(
        kind[0], 0x9,
        "the error response carries the request's type"
    );
    match client.read_response(kind[0]) {
        Reply::Message { .. } => panic!("expected a response"),
        Reply::Response { error, payload, .. } => {
            assert!(error);
            assert_eq!(payload, b"invalid request");
        }
    }
    assert_eq!(
        client.execute("f()", "no-such-token").unwrap_err(),
        "invalid token"
    );
    assert_eq!(
        client.execute("f()", "../../../etc/passwd").unwrap_err(),
        "invalid token"
    );
    assert_eq!(
        client.execute("f()", &"0".repeat(64)).unwrap_err(),
        "invalid token"
    );
    let err = client.store("../../x", "def f(:\n").unwrap_err();
    assert!(err.contains("SyntaxError"), "{err}");
    // Still serving on the same connection.
    let id = client.start("def ok():\n    api.send('ok')\n", "ok()");
    assert_eq!(
        client.messages_until_dead(&id),
        vec![(OUTPUT, b"ok".to_vec())]
    );
}

#[test]
fn an_oversized_request_is_refused_and_the_connection_closed() {
    let bx = legacy_box(&[]);
    let mut client = Client::connect(&bx);
    client
        .stream
        .write_all(&[STORE, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    let err = client.response().unwrap_err();
    assert!(err.starts_with("request too large"), "{err}");
    let mut rest = Vec::new();
    client.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn capabilities_that_cannot_be_declared_fail_with_a_clear_error() {
    let bx = legacy_box(&[]);
    let mut client = Client::connect(&bx);
    let id = client.start(
        "def fetch():\n    return api.http_get('http://example.com')\n",
        "fetch()",
    );
    let messages = client.messages_until_dead(&id);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0, ERROR);
    let text = String::from_utf8(messages[0].1.clone()).unwrap();
    assert!(text.contains("api.http_get is not available"), "{text}");
    assert!(text.contains("manifest"), "{text}");
}

#[test]
fn the_same_limits_apply_as_natively() {
    let bx = legacy_box(&["--cpu-ms", "500"]);
    let mut client = Client::connect(&bx);
    let id = client.start("def spin():\n    while True:\n        pass\n", "spin()");
    let messages = client.messages_until_dead(&id);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0, ERROR);
    assert!(String::from_utf8_lossy(&messages[0].1).contains("CPU time limit exceeded"));
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn many_connections_leak_no_descriptors() {
    let bx = legacy_box(&[]);
    {
        // Warm up: the first store starts lazily initialised parts.
        let mut client = Client::connect(&bx);
        let id = client.start("def f():\n    api.send('x')\n", "f()");
        client.messages_until_dead(&id);
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = open_fds(bx.pid());
    for round in 0..30 {
        let mut client = Client::connect(&bx);
        let token = client
            .store("test", "def f(n):\n    api.send(str(n))\n")
            .unwrap();
        let id = client.execute(&format!("f({round})"), &token).unwrap();
        if round % 3 == 0 {
            // Leave without opening; the instance finishes unread.
            continue;
        }
        client.request(OPEN, id.as_bytes());
        if round % 3 == 1 {
            client.messages_until_dead(&id);
        }
        // round % 3 == 2: drop the connection while streaming.
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = open_fds(bx.pid());
    assert!(
        after <= before + 2,
        "descriptors before {before}, after {after}"
    );
}

/// A prototype function that calls the host's `begin-message` itself, so
/// that it can announce any length and then write any amount.
const LYING_SENDER: &str = "import os\nfrom wit_world.imports import session\ndef lie(announced, written):\n    session.begin_message(announced)\n    data = memoryview(b'y' * written)\n    while data:\n        data = data[os.write(1, data):]\n";

#[test]
fn a_function_announcing_an_impossible_message_length_fails_cleanly_and_the_box_serves_on() {
    let bx = legacy_box(&[]);
    let mut client = Client::connect(&bx);
    // 2**64 - 1 overflowed the frame length; 1 GiB written as nothing
    // became 1 GiB of zero padding after the instance ended.
    for (call, error) in [
        ("lie(2**64 - 1, 0)", "a message is at most"),
        ("lie(1 << 30, 0)", "after writing 0 of the 1073741824 bytes"),
        ("lie(10, 4)", "after writing 4 of the 10 bytes"),
    ] {
        let id = client.start(LYING_SENDER, call);
        let messages = client.messages_until_dead(&id);
        let errors: Vec<String> = messages
            .iter()
            .filter(|(kind, _)| *kind == ERROR)
            .map(|(_, data)| String::from_utf8_lossy(data).into_owned())
            .collect();
        assert!(
            errors.len() == 1 && errors[0].contains(error),
            "{call}: {errors:?}"
        );
        // What the function wrote arrives, as a frame of its true length.
        let output: usize = messages
            .iter()
            .filter(|(kind, _)| *kind == OUTPUT)
            .map(|(_, data)| data.len())
            .sum();
        assert_eq!(output, if call == "lie(10, 4)" { 4 } else { 0 }, "{call}");
    }
    client.assert_serves_hello();
}

/// The payload bytes of the Output frames that arrive (a frame cut short
/// included), and whether `function dead` arrived before the stream ended.
fn output_until_eof(client: &mut Client) -> (Vec<u8>, bool) {
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 5];
        if client.stream.read_exact(&mut head).is_err() {
            return (payload, false);
        }
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = Vec::new();
        let mut piece = vec![0u8; 64 * 1024];
        while body.len() < len {
            let want = piece.len().min(len - body.len());
            match client.stream.read(&mut piece[..want]) {
                Ok(0) | Err(_) => {
                    if head[0] == OUTPUT {
                        payload.extend_from_slice(body.get(36..).unwrap_or_default());
                    }
                    return (payload, false);
                }
                Ok(n) => body.extend_from_slice(&piece[..n]),
            }
        }
        if head[0] == FUNCTION_ERR && body.ends_with(b"function dead") {
            return (payload, true);
        }
        if head[0] == OUTPUT {
            payload.extend_from_slice(body.get(36..).unwrap_or_default());
        }
    }
}

#[test]
fn an_unfinished_output_frame_ends_the_connection_and_is_never_padded() {
    let bx = legacy_box(&[]);
    let kib = 1024;
    // Beyond half the 1 MiB output buffer the box has framed the message,
    // so the frame's length is the function's announcement. 700 KiB of an
    // announced 1 MiB, and of an announced 1 GiB: padding either would hand
    // the client zeros that look like data.
    for announced in [1024 * kib, 1 << 30] {
        let mut client = Client::connect(&bx);
        let id = client.start(LYING_SENDER, &format!("lie({announced}, {})", 700 * kib));
        let (payload, dead) = output_until_eof(&mut client);
        assert!(!dead, "the stream ends mid-frame");
        assert!(payload.len() <= 700 * kib, "{} bytes", payload.len());
        assert!(
            payload.iter().all(|b| *b == b'y'),
            "only the function's own bytes"
        );
        // How the instance ended waits for the next Open.
        let mut again = Client::connect(&bx);
        again.request(OPEN, id.as_bytes());
        let messages = again.messages_until_dead(&id);
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert_eq!(messages[0].0, ERROR);
        let text = String::from_utf8_lossy(&messages[0].1);
        assert!(
            text.contains(&format!(
                "after writing {} of the {announced} bytes",
                700 * kib
            )),
            "{text}"
        );
        again.assert_serves_hello();
    }
}

#[test]
fn a_slow_reader_of_one_big_send_gets_only_real_bytes_then_the_wall_limit_on_reopen() {
    // A prototype client reading one 128 MiB send slower than the
    // function's 2 s wall-clock limit allows.
    let (bx, _manifest) = legacy_box_with_manifest(
        "version = 1\n[limits]\nmemory_mib = 256\nwall_ms = 2000\nbandwidth_kib_per_s = 100000000\n",
    );
    let mut client = Client::connect(&bx);
    let id = client.start(
        "def big(n):\n    api.send(b'x' * n)\n",
        &format!("big({})", 128 << 20),
    );
    let mut payload = Vec::new();
    let mut head = [0u8; 5];
    client.stream.read_exact(&mut head).unwrap();
    assert_eq!(head[0], OUTPUT);
    assert_eq!(
        u32::from_be_bytes(head[1..5].try_into().unwrap()),
        36 + (128 << 20),
        "one frame announces the whole send"
    );
    let mut piece = vec![0u8; 64 * 1024];
    let started = std::time::Instant::now();
    let mut paused = false;
    let ended = loop {
        match client.stream.read(&mut piece) {
            Ok(0) | Err(_) => break true,
            Ok(n) => payload.extend_from_slice(&piece[..n]),
        }
        if payload.len() >= 36 + (128 << 20) {
            break false;
        }
        // Quickly through 80 MiB, then not at all until the limit has
        // struck, then quickly through what is left. When it strikes the
        // function has written more than is missing (which the box used to
        // pad with zeros) but not all: what it wrote beyond what was read
        // is bounded by the box's output buffer and the socket buffers
        // (loopback autotuning here: up to 32 MiB received, 4 MiB sent).
        if !paused && payload.len() > 80 << 20 {
            paused = true;
            std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
        }
    };
    assert!(
        ended,
        "the frame cannot be finished in time: the stream ends"
    );
    let data = payload.get(36..).unwrap_or_default();
    assert!(data.len() < 128 << 20, "{} bytes", data.len());
    assert!(data.iter().all(|b| *b == b'x'), "no padding, ever");
    let mut again = Client::connect(&bx);
    again.request(OPEN, id.as_bytes());
    let messages = again.messages_until_dead(&id);
    let errors: Vec<String> = messages
        .iter()
        .filter(|(kind, _)| *kind == ERROR)
        .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("wall")),
        "the Error names the wall-clock limit: {messages:?}"
    );
    again.assert_serves_hello();
}
