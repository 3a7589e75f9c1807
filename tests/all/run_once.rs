//! `Run`: a function run once without being stored, attached from its
//! first byte on the connection that asked (one round trip).

use bento_client::{ClientError, Connection};
use bento_protocol::ErrorCode;

use crate::harness::TestBox;

const HELLO: &str = "def main(name):\n    api.send('hello ' + name)\n";

/// Files under the box's function store (blobs and records).
fn stored_files(bx: &TestBox) -> usize {
    walk(&bx.data_dir().join("functions"))
}

fn walk(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// The error a refused `Run` answers with.
async fn refusal(
    bx: &TestBox,
    source: &str,
    manifest: &str,
    entry: &str,
    args: &str,
) -> ClientError {
    let conn = Connection::connect(&bx.target()).await.unwrap();
    match conn.run("f.py", source, manifest, entry, args).await {
        Ok(_) => panic!("the run was accepted"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_answers_on_its_own_connection_and_stores_nothing() {
    let bx = TestBox::start(&[]);
    let before = stored_files(&bx);
    let conn = Connection::connect(&bx.target()).await.unwrap();
    let (_session, service, attachment) = conn
        .run("hello.py", HELLO, "", "main", "[\"once\"]")
        .await
        .unwrap();
    assert!(service.is_none(), "no service capability, no service token");
    assert_eq!(attachment.read_to_end().await.unwrap(), b"hello once");
    assert_eq!(
        stored_files(&bx),
        before,
        "a run leaves nothing in the store"
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_refused_for_what_a_store_or_an_invoke_would_refuse_and_the_box_serves_on() {
    let bx = TestBox::start(&["--max-source-kib", "1"]);
    let cases = [
        // Over the policy: the same reasons as a store.
        (
            HELLO.to_owned(),
            "version = 1\n[limits]\nmemory_mib = 100000\n".to_owned(),
            "main",
            "[\"x\"]",
            ErrorCode::ManifestRejected,
        ),
        // Over the upload limit.
        (
            format!("{HELLO}# {}\n", "x".repeat(2048)),
            String::new(),
            "main",
            "[\"x\"]",
            ErrorCode::InvalidFunction,
        ),
        // Not an entry point, not a JSON array.
        (
            HELLO.to_owned(),
            String::new(),
            "main()",
            "[]",
            ErrorCode::InvalidArguments,
        ),
        (
            HELLO.to_owned(),
            String::new(),
            "main",
            "{\"a\": 1}",
            ErrorCode::InvalidArguments,
        ),
    ];
    for (source, manifest, entry, args, expected) in cases {
        match refusal(&bx, &source, &manifest, entry, args).await {
            ClientError::Remote { code, message } => {
                assert_eq!(code, expected, "{message}");
            }
            other => panic!("expected {expected:?}, got {other}"),
        }
    }
    assert_eq!(stored_files(&bx), 0);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_source_that_does_not_compile_ends_with_its_traceback() {
    let bx = TestBox::start(&[]);
    let conn = Connection::connect(&bx.target()).await.unwrap();
    // Not compiled ahead (that is what a store pays for): the syntax error
    // is the session's error.
    let (_, _, attachment) = conn
        .run("broken.py", "def main(:\n    pass\n", "", "main", "[]")
        .await
        .unwrap();
    match attachment.read_to_end().await {
        Err(ClientError::Remote {
            code: ErrorCode::FunctionException,
            message,
        }) => assert!(message.contains("SyntaxError"), "{message}"),
        other => panic!("expected the SyntaxError, got {other:?}"),
    }
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_session_can_be_detached_re_attached_and_killed_by_its_token() {
    let bx = TestBox::start(&[]);
    let conn = Connection::connect(&bx.target()).await.unwrap();
    let echo = "def main():\n    api.send('ready')\n    while True:\n        m = api.recv()\n        if not m:\n            return\n        api.send(m)\n";
    let (session, _, mut attachment) = conn.run("echo.py", echo, "", "main", "[]").await.unwrap();
    assert_eq!(attachment.next().await.unwrap().unwrap(), &b"ready"[..]);
    attachment.detach().await.unwrap();
    let mut again = Connection::connect(&bx.target())
        .await
        .unwrap()
        .attach(&session, None)
        .await
        .unwrap();
    again
        .input()
        .send(bytes::Bytes::from_static(b"ping"))
        .await
        .unwrap();
    assert_eq!(again.next().await.unwrap().unwrap(), &b"ping"[..]);
    Connection::connect(&bx.target())
        .await
        .unwrap()
        .kill(&session)
        .await
        .unwrap();
    match again.next().await {
        Err(ClientError::Remote {
            code: ErrorCode::Killed,
            ..
        }) => {}
        other => panic!("expected killed, got {other:?}"),
    }
    bx.assert_serves_hello().await;
}
