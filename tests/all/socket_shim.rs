//! Research-prototype functions written with `socket` run unchanged: the
//! runtime's `socket` module opens its connections with `api.connect`, so
//! the box checks every destination and counts every connection as for
//! `api.connect`, and anything the module lacks fails naming itself.

use crate::capabilities::{manifest, policy};
use crate::harness::TestBox;
use crate::local_servers::LocalServer;

fn text(output: &[u8]) -> String {
    String::from_utf8_lossy(output).into_owned()
}

fn allow(server: &LocalServer) -> Vec<String> {
    vec![format!("accept 127.0.0.1:{}", server.port)]
}

fn args(server: &LocalServer) -> String {
    serde_json::json!(["127.0.0.1", server.port]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prototype_style_socket_code_talks_to_a_granted_destination_unchanged() {
    let echo = LocalServer::echo();
    let rules = allow(&echo);
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    // Both ways the prototype's functions open connections.
    let source = r#"
import socket

def main(host, port):
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"first line\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    api.send(data)

    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.settimeout(5)
    t.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t.connect((host, port))
    with t:
        t.send("second line\n".encode())
        api.send(t.makefile("rb").readline())
        api.send("peer %s:%d timeout %s\n" % (t.getpeername() + (t.gettimeout(),)))
"#;
    let (output, result) = bx
        .run_with_manifest(source, &manifest(&["connect"], &rules, ""), &args(&echo))
        .await;
    result.unwrap();
    assert_eq!(
        text(&output),
        format!(
            "first line\nsecond line\npeer 127.0.0.1:{} timeout 5.0\n",
            echo.port
        )
    );
    assert_eq!(echo.accepted(), 2);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_to_a_destination_the_rules_refuse_contacts_nothing_and_says_why() {
    let allowed = LocalServer::echo();
    let other = LocalServer::echo();
    let rules = allow(&allowed);
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    let source = r#"
import socket

def main(host, port):
    try:
        socket.create_connection((host, port))
    except PermissionError as e:
        api.send("%s: %s" % (type(e).__name__, e))
"#;
    let (output, result) = bx
        .run_with_manifest(source, &manifest(&["connect"], &rules, ""), &args(&other))
        .await;
    result.unwrap();
    let out = text(&output);
    assert!(out.starts_with("DestinationRefused: "), "{out}");
    assert!(out.contains(&format!("127.0.0.1:{}", other.port)), "{out}");
    assert_eq!(
        other.accepted(),
        0,
        "a refused destination is never contacted"
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_connect_capability_a_socket_names_the_capability_it_needs() {
    let echo = LocalServer::echo();
    let rules = allow(&echo);
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    let source = r#"
import socket

def main(host, port):
    socket.create_connection((host, port))
"#;
    let (output, result) = bx
        .run_with_manifest(source, &manifest(&[], &[], ""), &args(&echo))
        .await;
    let error = result.unwrap_err().to_string();
    assert!(error.contains("PermissionError"), "{error}");
    assert!(error.contains("`connect` capability"), "{error}");
    assert!(output.is_empty());
    assert_eq!(echo.accepted(), 0);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_calls_the_sandbox_does_not_provide_fail_naming_themselves() {
    let echo = LocalServer::echo();
    let rules = allow(&echo);
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    let source = r#"
import socket

def attempt(what, call):
    try:
        call()
        api.send("%s: no error\n" % what)
    except (OSError, AttributeError, ValueError) as e:
        api.send("%s: %s: %s\n" % (what, type(e).__name__, e))

def main(host, port):
    s = socket.socket()
    attempt("bind", lambda: s.bind(("127.0.0.1", 0)))
    attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    attempt("getaddrinfo", lambda: socket.getaddrinfo("example.org", 80))
    attempt("keepalive", lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
    attempt("send before connect", lambda: s.send(b"x"))
    s.connect((host, port))
    attempt("half close", lambda: s.shutdown(socket.SHUT_WR))
    attempt("connect twice", lambda: s.connect((host, port)))
    s.close()
    attempt("recv after close", lambda: s.recv(1))
"#;
    let (output, result) = bx
        .run_with_manifest(source, &manifest(&["connect"], &rules, ""), &args(&echo))
        .await;
    result.unwrap();
    let out = text(&output);
    let line = |what: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{what}: ")))
            .unwrap_or_else(|| panic!("no {what} line in {out}"))
            .to_owned()
    };
    assert!(line("bind").contains("Unsupported: [Errno "), "{out}");
    assert!(line("udp").contains("socket type 2"), "{out}");
    assert!(
        line("getaddrinfo").contains("AttributeError: socket.getaddrinfo is not provided"),
        "{out}"
    );
    assert!(line("keepalive").contains("setsockopt(1, 9)"), "{out}");
    assert!(
        line("send before connect").contains("not connected"),
        "{out}"
    );
    assert!(line("half close").contains("shutdown(1)"), "{out}");
    assert!(line("connect twice").contains("already connected"), "{out}");
    assert!(line("recv after close").contains("closed"), "{out}");
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_timeout_raises_socket_timeout_and_a_silent_server_costs_nothing_more() {
    let silent = LocalServer::silent();
    let rules = allow(&silent);
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    let source = r#"
import socket

def main(host, port):
    s = socket.create_connection((host, port), timeout=0.5)
    try:
        s.recv(10)
        api.send("data?")
    except socket.timeout as e:
        api.send("timeout: %s\n" % e)
    s.setblocking(False)
    try:
        s.recv(10)
    except BlockingIOError:
        api.send("would block\n")
"#;
    let (output, result) = bx
        .run_with_manifest(source, &manifest(&["connect"], &rules, ""), &args(&silent))
        .await;
    result.unwrap();
    assert_eq!(text(&output), "timeout: timed out\nwould block\n");
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_beyond_the_channels_grant_are_refused_and_the_next_user_is_served() {
    let echo = LocalServer::echo();
    let rules = allow(&echo);
    let bx = TestBox::with_policy(&policy(&rules), &[]);
    let source = r#"
import socket

def main(host, port):
    held = []
    try:
        for _ in range(10):
            held.append(socket.create_connection((host, port)))
    except api.ChannelLimit as e:
        api.send("%d open, then: %s" % (len(held), e))
"#;
    let (output, result) = bx
        .run_with_manifest(
            source,
            &manifest(&["connect"], &rules, "channels = 2"),
            &args(&echo),
        )
        .await;
    result.unwrap();
    let out = text(&output);
    assert!(out.starts_with("2 open, then: "), "{out}");
    assert!(out.contains("at most 2"), "{out}");
    bx.assert_serves_hello().await;
}
