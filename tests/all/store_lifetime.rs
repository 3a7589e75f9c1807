//! Stored functions' lifetimes, renewal, deletion and deduplication; what
//! `Status` tells anyone versus what the operator's metrics endpoint
//! tells; owner-only data at rest; per-event logs at debug level only.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bento_client::ClientError;
use bento_protocol::{ErrorCode, InvokeToken};

use crate::harness::{BENTO, TestBox, runtime};

const HELLO: &str = "def main(name):\n    api.send('hello ' + name)\n";

fn remote_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Remote { code, .. }) => code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

/// Invoke `token` with `["x"]` and read the whole output.
async fn run_stored(bx: &TestBox, token: &InvokeToken) -> Result<Vec<u8>, ClientError> {
    let session = bx.connect().await.invoke(token, "main", "[\"x\"]").await?;
    let (output, result) = bx.read_all(&session).await;
    result.map(|()| output)
}

/// Names of the files in `dir`.
fn files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A policy whose stored functions live at most an hour, by default too.
fn one_hour_policy() -> String {
    bento_policy::DEFAULT_POLICY_TOML
        .replace(
            "max_function_lifetime_h = 720 ",
            "max_function_lifetime_h = 1 ",
        )
        .replace(
            "default_function_lifetime_h = 168 ",
            "default_function_lifetime_h = 1 ",
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_is_gone_once_its_lifetime_ends_and_its_space_is_free() {
    let bx = TestBox::start(&[]);
    let stored = bx
        .connect()
        .await
        .store_for("hello.py", HELLO, "", Some(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(stored.lifetime, Duration::from_secs(2));
    assert_eq!(
        run_stored(&bx, &stored.invoke_token).await.unwrap(),
        b"hello x"
    );
    assert!(bx.metric("bento_stored_bytes").await > 0.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while bx.metric("bento_expirations_total").await < 1.0 {
        assert!(Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        remote_code(run_stored(&bx, &stored.invoke_token).await),
        ErrorCode::UnknownInvokeToken
    );
    assert_eq!(bx.metric("bento_stored_bytes").await, 0.0);
    let functions = bx.data_dir().join("functions");
    assert!(files(&functions.join("records")).is_empty());
    assert!(files(&functions.join("blobs")).is_empty());
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_whose_lifetime_ends_while_the_box_is_down_is_gone_after_restart() {
    let mut bx = TestBox::start(&[]);
    let short = bx
        .connect()
        .await
        .store_for("hello.py", HELLO, "", Some(Duration::from_secs(2)))
        .await
        .unwrap()
        .invoke_token;
    let long = bx
        .connect()
        .await
        .store_for("other.py", HELLO, "", None)
        .await
        .unwrap()
        .invoke_token;
    bx.kill9_and_restart_after(Duration::from_secs(3));
    assert_eq!(
        remote_code(run_stored(&bx, &short).await),
        ErrorCode::UnknownInvokeToken
    );
    assert_eq!(run_stored(&bx, &long).await.unwrap(), b"hello x");
    let functions = bx.data_dir().join("functions");
    assert_eq!(files(&functions.join("records")).len(), 1);
    assert_eq!(files(&functions.join("blobs")).len(), 1);
    assert_eq!(bx.metric("bento_stored_functions").await, 1.0);
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_function_past_its_first_lifetime() {
    let bx = TestBox::start(&[]);
    let mut conn = bx.connect().await;
    let token = conn
        .store_for("hello.py", HELLO, "", Some(Duration::from_secs(2)))
        .await
        .unwrap()
        .invoke_token;
    let granted = conn
        .renew(&token, Some(Duration::from_secs(600)))
        .await
        .unwrap();
    assert_eq!(granted, Duration::from_secs(600));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(run_stored(&bx, &token).await.unwrap(), b"hello x");
    assert_eq!(bx.metric("bento_renewals_total").await, 1.0);
    assert_eq!(bx.metric("bento_expirations_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_the_store_with_identical_uploads_no_longer_blocks_everyone() {
    // 1 MiB of stored functions; each upload is ~300 KiB, uploaded ten
    // times: without deduplication the fourth would be storage_full.
    let bx = TestBox::start(&["--max-stored-mib", "1"]);
    let big = format!("{HELLO}#{}\n", "x".repeat(300_000));
    let mut tokens = Vec::new();
    for _ in 0..10 {
        let stored = bx
            .connect()
            .await
            .store_for("big.py", &big, "", None)
            .await
            .unwrap();
        tokens.push(stored.invoke_token);
    }
    assert_eq!(bx.metric("bento_stored_functions").await, 10.0);
    assert_eq!(bx.metric("bento_stored_function_contents").await, 1.0);
    // Each store has its own token.
    for (i, a) in tokens.iter().enumerate() {
        assert!(tokens[i + 1..].iter().all(|b| a != b));
    }
    // Someone else's different function still fits.
    bx.assert_serves_hello().await;
    // Deleting one uploader's copy leaves the others' in place.
    bx.connect().await.delete(&tokens[0]).await.unwrap();
    assert_eq!(
        remote_code(run_stored(&bx, &tokens[0]).await),
        ErrorCode::UnknownInvokeToken
    );
    assert_eq!(run_stored(&bx, &tokens[1]).await.unwrap(), b"hello x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_or_renew_with_a_wrong_token_fails_and_loses_nothing() {
    let bx = TestBox::start(&[]);
    let mut conn = bx.connect().await;
    let token = conn
        .store_for("hello.py", HELLO, "", None)
        .await
        .unwrap()
        .invoke_token;
    let stranger = InvokeToken::generate().unwrap();
    assert_eq!(
        remote_code(conn.delete(&stranger).await),
        ErrorCode::UnknownInvokeToken
    );
    assert_eq!(
        remote_code(conn.renew(&stranger, None).await),
        ErrorCode::UnknownInvokeToken
    );
    // The connection is still usable after the refusals, and nothing was lost.
    assert_eq!(run_stored(&bx, &token).await.unwrap(), b"hello x");
    conn.delete(&token).await.unwrap();
    // Deleted is deleted: no second delete, no renewal, no invoke.
    assert_eq!(
        remote_code(conn.delete(&token).await),
        ErrorCode::UnknownInvokeToken
    );
    assert_eq!(
        remote_code(conn.renew(&token, None).await),
        ErrorCode::UnknownInvokeToken
    );
    assert_eq!(
        remote_code(run_stored(&bx, &token).await),
        ErrorCode::UnknownInvokeToken
    );
    assert_eq!(bx.metric("bento_deletions_total").await, 1.0);
    assert_eq!(
        bx.metric("bento_errors_total{code=\"unknown_invoke_token\"}")
            .await,
        5.0
    );
    bx.assert_serves_hello().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifetime_beyond_the_policy_is_refused_and_the_default_comes_from_the_policy() {
    let bx = TestBox::with_policy(&one_hour_policy(), &[]);
    let mut conn = bx.connect().await;
    let status = conn.status().await.unwrap();
    assert_eq!(status["stored_functions"]["max_lifetime_s"], 3600);
    assert_eq!(status["stored_functions"]["default_lifetime_s"], 3600);
    assert_eq!(
        remote_code(
            conn.store_for("hello.py", HELLO, "", Some(Duration::from_secs(3601)))
                .await
        ),
        ErrorCode::InvalidLifetime
    );
    let stored = conn.store_for("hello.py", HELLO, "", None).await.unwrap();
    assert_eq!(stored.lifetime, Duration::from_secs(3600));
    assert_eq!(
        remote_code(
            conn.renew(&stored.invoke_token, Some(Duration::from_secs(7200)))
                .await
        ),
        ErrorCode::InvalidLifetime
    );
    // The refused renewal changed nothing.
    assert_eq!(
        run_stored(&bx, &stored.invoke_token).await.unwrap(),
        b"hello x"
    );
    // A client that predates lifetimes gets the default, and no lifetime
    // field it would not understand.
    let (_, old) = conn.store("hello.py", HELLO).await.unwrap();
    assert_eq!(run_stored(&bx, &old).await.unwrap(), b"hello x");
}

fn bento_cli(bx: &TestBox, args: &[&str]) -> std::process::Output {
    Command::new(BENTO)
        .args(args)
        .env("BENTO_SERVER", &bx.addr)
        .env_remove("BENTO_SOCKS")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn the_cli_stores_for_a_lifetime_renews_and_deletes() {
    let bx = TestBox::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.py");
    std::fs::write(&file, HELLO).unwrap();
    let file = file.display().to_string();
    let out = bento_cli(&bx, &["store", &file, "--lifetime", "1h", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let stored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stored["lifetime_s"], 3600);
    let token = stored["invoke_token"].as_str().unwrap().to_owned();
    let out = bento_cli(&bx, &["renew", &token, "--lifetime", "2d"]);
    assert!(out.status.success(), "{out:?}");
    let renewed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(renewed["lifetime_s"], 2 * 86_400);
    let out = bento_cli(&bx, &["renew", &token, "--lifetime", "1000d"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_lifetime"));
    let out = bento_cli(&bx, &["delete", &token]);
    assert!(out.status.success(), "{out:?}");
    let out = bento_cli(&bx, &["delete", &token]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_invoke_token"));
}

/// Every key anywhere in a JSON value.
fn keys(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                keys(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_buckets_only_while_the_operator_scrapes_exact_figures() {
    let bx = TestBox::start(&["--max-instances", "1"]);
    let mut conn = bx.connect().await;
    assert_eq!(conn.status().await.unwrap()["load"], "low");
    let token = conn
        .store(
            "wait.py",
            "def main():\n    api.send('up')\n    api.recv()\n",
        )
        .await
        .unwrap()
        .1;
    let session = conn.invoke(&token, "main", "[]").await.unwrap();
    let mut attachment = bx.connect().await.attach(&session, None).await.unwrap();
    assert_eq!(attachment.next().await.unwrap().unwrap(), "up");

    // One instance of at most one runs: the box is full, and says only that.
    let status = conn.status().await.unwrap();
    assert_eq!(status["load"], "full", "{status}");
    assert_eq!(status["stored_functions"]["fits_largest_upload"], true);
    let mut all = Vec::new();
    keys(&status, &mut all);
    for exact in [
        "running", "sessions", "reserved", "count", "bytes", "live", "restarts",
    ] {
        assert!(
            !all.iter().any(|k| k == exact),
            "status carries the exact {exact:?}: {status}"
        );
    }

    // The operator's endpoint: Prometheus text, exact figures.
    let mut raw = std::net::TcpStream::connect(&bx.metrics_addr).unwrap();
    raw.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    raw.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("Content-Type: text/plain; version=0.0.4"),
        "{text}"
    );
    assert!(text.contains("\n# TYPE bento_sessions gauge\n"), "{text}");
    assert!(
        text.contains("\n# TYPE bento_invocations_total counter\n"),
        "{text}"
    );
    let metrics = bx.metrics().await;
    assert_eq!(metrics["bento_sessions"], 1.0, "{metrics:?}");
    assert_eq!(metrics["bento_instances_running"], 1.0);
    assert_eq!(metrics["bento_instances_max"], 1.0);
    assert_eq!(metrics["bento_invocations_total"], 1.0);
    assert_eq!(metrics["bento_stores_total"], 1.0);
    assert_eq!(metrics["bento_stored_functions"], 1.0);
    assert!(metrics["bento_stored_bytes"] > 0.0);
    assert!(metrics["bento_output_buffer_reserved_bytes"] > 0.0);

    // A refused invocation is counted by its code.
    let refused = bx.connect().await.invoke(&token, "main", "[]").await;
    assert_eq!(remote_code(refused), ErrorCode::TooManyInstances);
    assert_eq!(
        bx.metric("bento_errors_total{code=\"too_many_instances\"}")
            .await,
        1.0
    );

    // Other paths and methods get no figures.
    let mut raw = std::net::TcpStream::connect(&bx.metrics_addr).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    raw.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(!text.contains("bento_sessions"), "{text}");

    attachment.input().end().await.unwrap();
    while attachment.next().await.unwrap().is_some() {}
    attachment.close().await;
    bx.assert_serves_hello().await;
}

#[test]
fn serve_refuses_a_metrics_address_that_is_not_loopback() {
    let dir = tempfile::tempdir().unwrap();
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:9100"] {
        let out = Command::new(BENTO)
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics", addr])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--runtime")
            .arg(runtime())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{addr}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not a loopback address"), "{stderr}");
    }
}

/// Mode bits of everything under `dir` (`dir` included), not following links.
fn modes(dir: &Path, out: &mut Vec<(String, bool, u32)>) {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    out.push((
        dir.display().to_string(),
        meta.is_dir(),
        meta.permissions().mode() & 0o7777,
    ));
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            modes(&entry.unwrap().path(), out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_owner_only_and_modes_of_an_older_box_are_fixed_at_start() {
    let mut bx = TestBox::start(&[]);
    let token = bx.store(HELLO).await;
    let data = bx.data_dir().to_owned();
    let functions = data.join("functions");
    // What an older box, or a careless umask, left behind.
    let mut found = Vec::new();
    modes(&functions, &mut found);
    for (path, is_dir, _) in &found {
        let mode = if *is_dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let storage_root = data.join("instance-storage");
    std::fs::create_dir_all(&storage_root).unwrap();
    std::fs::set_permissions(&storage_root, std::fs::Permissions::from_mode(0o755)).unwrap();
    // An operator's own file in the data directory is not the box's to change.
    let notes = data.join("operator-notes.txt");
    std::fs::write(&notes, "mine").unwrap();
    std::fs::set_permissions(&notes, std::fs::Permissions::from_mode(0o640)).unwrap();

    bx.kill9_and_restart();
    bx.store("def main():\n    pass\n").await;
    let mut found = Vec::new();
    modes(&functions, &mut found);
    modes(&storage_root, &mut found);
    assert!(found.len() >= 5, "{found:?}");
    for (path, is_dir, mode) in found {
        let wanted = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, wanted, "{path} is {mode:o}");
    }
    let data_mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o7777;
    assert_eq!(data_mode, 0o700);
    let notes_mode = std::fs::metadata(&notes).unwrap().permissions().mode() & 0o7777;
    assert_eq!(notes_mode, 0o640);
    assert_eq!(run_stored(&bx, &token).await.unwrap(), b"hello x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_box_makes_its_instance_storage_owner_only_whatever_the_umask() {
    // The workers create instance-storage/ when they jail themselves, after
    // the start-up fix of the data directory's modes: it must be born
    // owner-only (under the usual umask 022 it used to be 0755).
    let bx = TestBox::start(&[]);
    bx.assert_serves_hello().await;
    let storage_root = bx.data_dir().join("instance-storage");
    let mode = std::fs::metadata(&storage_root)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o700, "{} is {mode:o}", storage_root.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_default_log_level_a_box_logs_no_timeline_of_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BENTO)
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--runtime")
        .arg(runtime())
        .env_remove("BENTO_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let addr = loop {
        let line = line_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the box starts");
        let found = line
            .contains("bento box listening")
            .then(|| line.split(" addr=").nth(1))
            .flatten()
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned);
        log.push(line);
        if let Some(addr) = found {
            break addr;
        }
    };
    let target = bento_client::Target {
        server: addr,
        socks: None,
        dialer: None,
    };
    let mut conn = bento_client::Connection::connect(&target).await.unwrap();
    let stored = conn.store_for("hello.py", HELLO, "", None).await.unwrap();
    conn.renew(&stored.invoke_token, None).await.unwrap();
    let session = conn
        .invoke(&stored.invoke_token, "main", "[\"arg-61c2\"]")
        .await
        .unwrap();
    let mut attachment = bento_client::Connection::connect(&target)
        .await
        .unwrap()
        .attach(&session, None)
        .await
        .unwrap();
    while attachment.next().await.unwrap().is_some() {}
    attachment.close().await;
    let mut conn = bento_client::Connection::connect(&target).await.unwrap();
    conn.delete(&stored.invoke_token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = child.kill();
    let _ = child.wait();
    log.extend(line_rx.try_iter());
    let log = log.join("\n");
    for event in [
        "stored a function",
        "started a session",
        "renewed",
        "deleted",
    ] {
        assert!(!log.contains(event), "{event:?} is logged: {log}");
    }
    for secret in [
        stored.invoke_token.to_hex(),
        session.to_hex(),
        "arg-61c2".to_owned(),
    ] {
        assert!(!log.contains(&secret), "a secret is logged: {log}");
    }
}
